// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Byte helpers the relay uses on every command: ids as map keys, and equality.
 * @module
 */

/**
 * Longest arrays `sameBytes` compares in a loop, and `idKey` makes a key of with
 * `String.fromCharCode`: ids and keys (24 and 32 bytes), for which making a Buffer view cost
 * more than that (158 against 195 ns a key, scratch script). A typed array this small
 * lives inside V8's heap, and asking for its `.buffer` moves its bytes out into a buffer of
 * their own, which the collector then has to sweep. Neither way of comparing takes the same time
 * for all inputs; the relay compares nothing secret with it.
 */
const SHORT_ARRAY_MAX = 64;

/** A latin1 string key for an id, for maps. */
export function idKey(id: Uint8Array): string {
  if (id.length <= SHORT_ARRAY_MAX) return String.fromCharCode.apply(null, id as unknown as number[]);
  return Buffer.from(id.buffer, id.byteOffset, id.length).toString('latin1');
}

/** Whether two byte arrays hold the same bytes (not in constant time: for ids and public keys). */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  const n = a.length;
  if (n !== b.length) return false;
  if (n > SHORT_ARRAY_MAX) return Buffer.from(a.buffer, a.byteOffset, n).equals(b);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return false;
  return true;
}
