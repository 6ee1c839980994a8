// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Relay protocol versions. A version number is never reused.
 *
 * History:
 * - 1 (2026-11-26): fixed 16,376-byte blocks (16,384 until 2026-11-27, before any release), queues with separate recipient and sender ids,
 *   NEW/KEY/SUB/ACK/GET/OFF/DEL/SEND/LSET/LGET/PING, signatures and session authenticators
 *   bound to the TLS session, relay-to-recipient box.
 * - 2 (2026-11-27): NEW may carry the relay's queue-creation password (the relay's address then
 *   names it: `murmure://FINGERPRINT:PASSWORD@HOST:PORT`).
 * @module
 */

import { ProtocolError } from './errors.js';

/** The first relay protocol version. */
export const V_INITIAL = 1;
/** NEW's optional queue-creation password. */
export const V_CREATE_PASSWORD = 2;
/** Oldest version this code speaks. */
export const RELAY_VERSION_MIN = V_INITIAL;
/** Newest version this code speaks. */
export const RELAY_VERSION_MAX = V_CREATE_PASSWORD;

/** An inclusive range of protocol versions. */
export type VersionRange = Readonly<{ min: number; max: number }>;

/** Our own range. */
export const RELAY_VERSIONS: VersionRange = { min: RELAY_VERSION_MIN, max: RELAY_VERSION_MAX };

/**
 * The highest version both ranges contain. Throws `VERSION_TOO_OLD` when the peer's newest is
 * below our oldest and `VERSION_UNSUPPORTED` when the peer's oldest is above our newest.
 */
export function negotiateVersion(ours: VersionRange, theirs: VersionRange): number {
  if (theirs.max < ours.min) {
    throw new ProtocolError('VERSION_TOO_OLD', `peer speaks versions ${theirs.min}-${theirs.max}, we need at least ${ours.min}`);
  }
  if (theirs.min > ours.max) {
    throw new ProtocolError('VERSION_UNSUPPORTED', `peer needs version ${theirs.min} or newer, we speak up to ${ours.max}`);
  }
  return Math.min(ours.max, theirs.max);
}
