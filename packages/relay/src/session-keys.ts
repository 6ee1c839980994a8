// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The relay's X25519 session keys. Making a key pair costs about 110 µs of CPU plus the garbage
 * it leaves, a fifth of what a reconnecting client costs the relay, so one pair serves every
 * connection opened within `SESSION_KEY_LIFETIME_MS` instead of one pair per connection. Each
 * connection still has its own session id (the TLS exporter, or in plain loopback mode a hash
 * over the key and the connection's random nonce), so authenticator keys stay per connection.
 * docs/protocol.md, "Handshake".
 *
 * A key also keeps, while it is the current one, the agreements made with it: a queue's key
 * agreement (about 50 µs) is the same on every connection of the period, so a client that
 * reconnects within it is not charged one again. Who can tell a kept agreement from a new one
 * is the subject of `Agreement.kept`.
 * @module
 */

import { agree, generateDhKeyPair, type KeyPair } from '@murmure/queue-crypto';
import type { KeyObject } from 'node:crypto';

import { idKey } from './bytes.js';

/** Longest time one session key pair serves new connections, in ms. */
export const SESSION_KEY_LIFETIME_MS = 60_000;

/**
 * Most agreements one session key keeps (about 130 bytes each: 13 MB at the most); past it the
 * oldest goes first.
 */
export const SESSION_AGREEMENTS_MAX = 100_000;

/** An agreement with a peer's key, or null if the key is unusable (see `agree`). */
export type Agreement = Readonly<{
  secret: Uint8Array | null;
  /**
   * Whether it was kept from an earlier agreement of this key's period rather than made now.
   * A check that fails after a kept agreement must make it again (`SessionKey.agreeAgain`):
   * every failed check then costs one agreement, for a queue whose party connected a moment ago
   * as for one nobody used or that does not exist, and only the holder of a queue's key, whose
   * checks pass, is spared the work (THREATS R8).
   */
  kept: boolean;
}>;

/** A relay session key pair, and the agreements made with it while it is the current one. */
export class SessionKey {
  readonly publicKey: Uint8Array;
  readonly privateKey: KeyObject;
  /** Secrets (latin1 strings, null for an unusable key) by peer key; null once retired. */
  private agreements: Map<string, string | null> | null = new Map();

  constructor(
    pair: KeyPair,
    private readonly max: number = SESSION_AGREEMENTS_MAX,
  ) {
    this.publicKey = pair.publicKey;
    this.privateKey = pair.privateKey;
  }

  /** The agreement with `peer` (a raw X25519 public key), kept or made now and kept. */
  agreement(peer: Uint8Array): Agreement {
    const kept = this.agreements;
    if (kept === null) return { secret: this.agree(peer), kept: false };
    const k = idKey(peer);
    const s = kept.get(k);
    if (s !== undefined) return { secret: s === null ? null : Buffer.from(s, 'latin1'), kept: true };
    const secret = this.agree(peer);
    if (kept.size >= this.max) {
      const oldest = kept.keys().next().value;
      if (oldest !== undefined) kept.delete(oldest);
    }
    kept.set(k, secret === null ? null : Buffer.from(secret.buffer, secret.byteOffset, secret.length).toString('latin1'));
    return { secret, kept: false };
  }

  /** Makes the agreement with `peer` again, as if none were kept, and forgets the result. */
  agreeAgain(peer: Uint8Array): void {
    this.agree(peer);
  }

  /** Number of agreements kept. */
  get size(): number {
    return this.agreements?.size ?? 0;
  }

  /** No longer the current key: forgets the agreements and keeps no more. */
  retire(): void {
    this.agreements = null;
  }

  /** One X25519 agreement with this key (a method of its own so tests can count them). */
  protected agree(peer: Uint8Array): Uint8Array | null {
    return agree(this.privateKey, peer);
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
