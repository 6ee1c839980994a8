// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The relay's X25519 session keys. Making a key pair costs about 110 µs of CPU plus the garbage
 * it leaves, a fifth of what a reconnecting client costs the relay, so one pair serves every
 * connection opened within `SESSION_KEY_LIFETIME_MS` instead of one pair per connection. Each
 * connection still has its own session id (the TLS exporter, or in plain loopback mode a hash
 * over the key and the connection's random nonce), so authenticator keys stay per connection.
 * docs/protocol.md, "Handshake".
 * @module
 */

import { generateDhKeyPair, type KeyPair } from '@murmure/queue-crypto';

/** Longest time one session key pair serves new connections, in ms. */
export const SESSION_KEY_LIFETIME_MS = 60_000;

/** Hands out the current session key pair, making a new one once the last has served its time. */
export class SessionKeys {
  private pair: KeyPair | null = null;
  private until = 0;

  constructor(
    private readonly lifetimeMs: number = SESSION_KEY_LIFETIME_MS,
    /** Monotonic ms: a clock jump neither keeps a key longer nor makes keys faster. */
    private readonly clock: () => number = () => performance.now(),
  ) {}

  /** The key pair for a connection opening now. */
  current(): KeyPair {
    const now = this.clock();
    if (this.pair === null || now >= this.until) {
      this.pair = generateDhKeyPair();
      this.until = now + this.lifetimeMs;
    }
    return this.pair;
  }
}
