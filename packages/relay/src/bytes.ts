// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Byte helpers the relay uses on every command: ids as map keys, and equality.
 * @module
 */

/** A latin1 string key for an id, for maps. */
export function idKey(id: Uint8Array): string {
  return Buffer.from(id.buffer, id.byteOffset, id.length).toString('latin1');
}

/** Whether two byte arrays hold the same bytes. */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.length).equals(b);
}
