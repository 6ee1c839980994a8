// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Fixed-size padding: a 2-byte big-endian length, the content, then `#` (0x23) to the size.
 * Sizes on the wire then say nothing about content. docs/protocol.md, "Blocks and padding".
 * @module
 */

import { ProtocolError } from '../errors.js';

/** The fill byte, `#`. */
export const PAD_BYTE = 0x23;
const PAD_WORD = 0x23232323;

/** Pads `content` to exactly `size` bytes; throws `TOO_LARGE` if it does not fit. */
export function pad(content: Uint8Array, size: number): Uint8Array {
  return padInto(content, new Uint8Array(size));
}

/**
 * Pads `content` into `out`, every byte of which it writes (so `out` may hold old bytes), and
 * returns `out`; throws `TOO_LARGE`, writing nothing, if it does not fit.
 */
export function padInto(content: Uint8Array, out: Uint8Array): Uint8Array {
  const size = out.length;
  if (content.length > size - 2 || content.length > 0xffff) {
    throw new ProtocolError('TOO_LARGE', `content of ${content.length} bytes does not fit a ${size}-byte pad`);
  }
  out[0] = content.length >>> 8;
  out[1] = content.length & 0xff;
  out.set(content, 2);
  out.fill(PAD_BYTE, 2 + content.length);
  return out;
}

/**
 * Checks that every byte of `fill` is the fill byte. Callers with a native byte comparison may
 * pass their own to `unpad` (every block received is checked, so this is on the hot path).
 */
export type FillCheck = (fill: Uint8Array) => boolean;

/** The portable fill check, four bytes at a time. */
export function isPadFill(fill: Uint8Array): boolean {
  const view = new DataView(fill.buffer, fill.byteOffset, fill.byteLength);
  const size = fill.length;
  let i = 0;
  for (; i + 4 <= size; i += 4) if (view.getUint32(i) !== PAD_WORD) return false;
  for (; i < size; i++) if (fill[i] !== PAD_BYTE) return false;
  return true;
}

/** Removes padding made by `pad`; the result is a view into `padded`. */
export function unpad(padded: Uint8Array, size: number, checkFill: FillCheck = isPadFill): Uint8Array {
  if (padded.length !== size) {
    throw new ProtocolError('BAD_LENGTH', `padded data must be ${size} bytes, not ${padded.length}`);
  }
  const len = ((padded[0] as number) << 8) | (padded[1] as number);
  if (len > size - 2) throw new ProtocolError('BAD_PADDING', 'declared length is beyond the padded size');
  if (!checkFill(padded.subarray(2 + len))) throw new ProtocolError('BAD_PADDING', 'padding fill is not #');
  return padded.subarray(2, 2 + len);
}
