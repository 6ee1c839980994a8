// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The relay's X25519 session keys. Making a key pair costs about 110 µs of CPU plus the garbage
 * it leaves, a fifth of what a reconnecting client costs the relay, so one pair serves every
 * connection opened within `SESSION_KEY_LIFETIME_MS` instead of one pair per connection. Each
 * connection still has its own session id (the TLS exporter, or in plain loopback mode a hash
 * over the key and the connection's random nonce), so authenticator keys stay per connection.
 * docs/protocol.md, "Handshake".
 *
 * A key also keeps, while it is the current one, the agreements that checks passed with: a
 * queue's key agreement (about 50 µs) is the same on every connection of the period, so a client
 * that reconnects within it is not charged one again. Who can tell a kept agreement from a new
 * one is the subject of `SessionKey.kept`.
 * @module
 */

import { agree, generateDhKeyPair, type KeyPair } from '@murmure/queue-crypto';
import type { KeyObject } from 'node:crypto';

import { idKey } from './bytes.js';

/** Longest time one session key pair serves new connections, in ms. */
export const SESSION_KEY_LIFETIME_MS = 60_000;

/**
 * Most agreements one session key keeps (about 110 bytes of heap each, measured: 11 MB at the
 * most); past it the oldest goes first.
 */
export const SESSION_AGREEMENTS_MAX = 100_000;

/** A relay session key pair, and the agreements checks passed with while it is the current one. */
export class SessionKey {
  readonly publicKey: Uint8Array;
  readonly privateKey: KeyObject;
  /** Secrets (latin1 strings) by peer key; null once retired. */
  private agreements: Map<string, string> | null = new Map();

  constructor(
    pair: KeyPair,
    private readonly max: number = SESSION_AGREEMENTS_MAX,
  ) {
    this.publicKey = pair.publicKey;
    this.privateKey = pair.privateKey;
  }

  /**
   * The agreement with `peer` (a raw X25519 public key) that a check passed with earlier in this
   * key's period, if it is kept (a copy).
   *
   * Only a passing check keeps one (`keep`): a failed one never changes what is kept, so the
   * checks of a prober, who holds no queue's key, find nothing kept for a queue nobody used, nor
   * for one that does not exist (the dummy key), and cost one agreement each. A check that fails
   * after a kept agreement, on a queue whose holder connected earlier in the period, must make it
   * again (`agree`) to cost the same (THREATS R8).
   */
  kept(peer: Uint8Array): Uint8Array | undefined {
    const s = this.agreements?.get(idKey(peer));
    return s === undefined ? undefined : Buffer.from(s, 'latin1');
  }

  /** Keeps `secret`, the agreement with `peer` that a check has just passed with (not once retired). */
  keep(peer: Uint8Array, secret: Uint8Array): void {
    const kept = this.agreements;
    if (kept === null) return;
    if (kept.size >= this.max) {
      const oldest = kept.keys().next().value;
      if (oldest !== undefined) kept.delete(oldest);
    }
    kept.set(idKey(peer), Buffer.from(secret.buffer, secret.byteOffset, secret.length).toString('latin1'));
  }

  /** One X25519 agreement with this key; null if `peer` is unusable (see `agree`). */
  agree(peer: Uint8Array): Uint8Array | null {
    return agree(this.privateKey, peer);
  }

  /** Number of agreements kept. */
  get size(): number {
    return this.agreements?.size ?? 0;
  }

  /** No longer the current key: forgets the agreements and keeps no more. */
  retire(): void {
    this.agreements = null;
  }
}

/** Hands out the current session key, making a new one once the last has served its time. */
export class SessionKeys {
  private key: SessionKey | null = null;
  private until = 0;

  constructor(
    private readonly lifetimeMs: number = SESSION_KEY_LIFETIME_MS,
    /** Monotonic ms: a clock jump neither keeps a key longer nor makes keys faster. */
    private readonly clock: () => number = () => performance.now(),
  ) {}

  /** The key for a connection opening now. */
  current(): SessionKey {
    const now = this.clock();
    if (this.key === null || now >= this.until) {
      this.key?.retire();
      this.key = new SessionKey(generateDhKeyPair());
      this.until = now + this.lifetimeMs;
    }
    return this.key;
  }
}
