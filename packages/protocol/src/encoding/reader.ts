// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * A bounds-checked big-endian reader over hostile input. Every method checks the remaining
 * length before it reads and throws `ProtocolError` otherwise.
 * @module
 */

import { ProtocolError } from '../errors.js';

/** Reads fields from a byte array, front to back. */
export class Reader {
  private offset = 0;

  constructor(private readonly bytes: Uint8Array) {}

  /** Bytes not read yet. */
  get remaining(): number {
    return this.bytes.length - this.offset;
  }

  private need(n: number, what: string): void {
    if (this.remaining < n) {
      throw new ProtocolError('TRUNCATED', `input ends inside ${what}`);
    }
  }

  /** One unsigned byte. */
  u8(what = 'a byte'): number {
    this.need(1, what);
    return this.bytes[this.offset++] as number;
  }

  /** A 16-bit big-endian unsigned integer. */
  u16(what = 'a 16-bit integer'): number {
    this.need(2, what);
    const b = this.bytes;
    const v = ((b[this.offset] as number) << 8) | (b[this.offset + 1] as number);
    this.offset += 2;
    return v;
  }

  /** A 64-bit big-endian unsigned integer that must fit in a safe JS integer. */
  u64(what = 'a 64-bit integer'): number {
    const hi = this.u32(what);
    const lo = this.u32(what);
    if (hi > 0x1f_ffff) throw new ProtocolError('BAD_VALUE', `${what} is too large`);
    return hi * 0x1_0000_0000 + lo;
  }

  /** A 32-bit big-endian unsigned integer. */
  u32(what = 'a 32-bit integer'): number {
    this.need(4, what);
    const b = this.bytes;
    const o = this.offset;
    const v = (b[o] as number) * 0x100_0000 + (((b[o + 1] as number) << 16) | ((b[o + 2] as number) << 8) | (b[o + 3] as number));
    this.offset += 4;
    return v;
  }

  /** Exactly `n` bytes (a view, not a copy). */
  bytesN(n: number, what = 'a fixed field'): Uint8Array {
    this.need(n, what);
    const v = this.bytes.subarray(this.offset, this.offset + n);
    this.offset += n;
    return v;
  }

  /** Bytes with a 1-byte length prefix, at most `max` long. */
  shortBytes(max: number, what = 'a short field'): Uint8Array {
    const len = this.u8(what);
    if (len > max) throw new ProtocolError('TOO_LARGE', `${what} is ${len} bytes, the limit is ${max}`);
    return this.bytesN(len, what);
  }

  /** Bytes with a 2-byte length prefix, at most `max` long. */
  longBytes(max: number, what = 'a field'): Uint8Array {
    const len = this.u16(what);
    if (len > max) throw new ProtocolError('TOO_LARGE', `${what} is ${len} bytes, the limit is ${max}`);
    return this.bytesN(len, what);
  }

  /** Everything not read yet. */
  rest(): Uint8Array {
    const v = this.bytes.subarray(this.offset);
    this.offset = this.bytes.length;
    return v;
  }

  /** Throws unless every byte was read. */
  end(what = 'the input'): void {
    if (this.remaining !== 0) {
      throw new ProtocolError('TRAILING', `${this.remaining} bytes left over after ${what}`);
    }
  }
}
