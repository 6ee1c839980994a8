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
  if (content.length > size - 2 || content.length > 0xffff) {
    throw new ProtocolError('TOO_LARGE', `content of ${content.length} bytes does not fit a ${size}-byte pad`);
  }
  const out = new Uint8Array(size);
  out[0] = content.length >>> 8;
  out[1] = content.length & 0xff;
  out.set(content, 2);
  out.fill(PAD_BYTE, 2 + content.length);
  return out;
}

/** Removes padding made by `pad`; the result is a view into `padded`. */
export function unpad(padded: Uint8Array, size: number): Uint8Array {
  if (padded.length !== size) {
    throw new ProtocolError('BAD_LENGTH', `padded data must be ${size} bytes, not ${padded.length}`);
  }
  const len = ((padded[0] as number) << 8) | (padded[1] as number);
  if (len > size - 2) throw new ProtocolError('BAD_PADDING', 'declared length is beyond the padded size');
  // Every block is checked, so the fill is compared four bytes at a time.
  const view = new DataView(padded.buffer, padded.byteOffset, padded.byteLength);
  let i = 2 + len;
  for (; i + 4 <= size; i += 4) {
    if (view.getUint32(i) !== PAD_WORD) throw new ProtocolError('BAD_PADDING', 'padding fill is not #');
  }
  for (; i < size; i++) {
    if (padded[i] !== PAD_BYTE) throw new ProtocolError('BAD_PADDING', 'padding fill is not #');
  }
  return padded.subarray(2, 2 + len);
}
