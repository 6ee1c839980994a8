// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * ASCII text fields (relay addresses): anything outside 0x20-0x7e is refused both ways.
 * @module
 */

import { ProtocolError } from '../errors.js';

/** The bytes of printable ASCII text. */
export function asciiBytes(text: string): Uint8Array {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || c > 0x7e) throw new ProtocolError('BAD_VALUE', 'text must be printable ASCII');
    out[i] = c;
  }
  return out;
}

/** Printable ASCII bytes as text. */
export function asciiString(bytes: Uint8Array): string {
  let s = '';
  for (const c of bytes) {
    if (c < 0x20 || c > 0x7e) throw new ProtocolError('BAD_VALUE', 'text must be printable ASCII');
    s += String.fromCharCode(c);
  }
  return s;
}
