// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * A growable big-endian writer, the counterpart of `Reader`.
 * @module
 */

import { ProtocolError } from '../errors.js';

/**
 * Bytes of a scratch buffer: room for any transmission (a block is 16,376 bytes). A Writer that
 * asks for at most this much writes into a scratch buffer and `finish` copies out the bytes
 * written; asked for more, it allocates its own.
 */
export const WRITER_SCRATCH_BYTES = 16_640;
/** Most scratch buffers kept for reuse: more than Writers are ever alive at once (they nest). */
export const WRITER_SCRATCH_POOL = 8;
const scratchPool: Uint8Array[] = [];
const EMPTY = new Uint8Array(0);

/**
 * Appends fields to a growing byte array. Every message the relay handles is encoded several
 * times (authorised bytes, command, response, transmission): a fresh typed array for each is an
 * allocation outside the heap (~0.8 µs for 256 bytes), so Writers borrow a scratch buffer and
 * give it back at `finish`, which returns a copy, or at `use`, which hands the bytes to a
 * consumer that takes them at once, without a copy. A Writer dropped unfinished (its encoding
 * threw) keeps its buffer; the pool makes another when it runs out.
 */
export class Writer {
  private buf: Uint8Array;
  private len = 0;
  /** Whether `buf` is a borrowed scratch buffer, to give back once nothing more is written to it. */
  private borrowed: boolean;
  /** Whether `buf` is the array `finish` returned: the caller's now, never written or wiped. */
  private handedOut = false;

  constructor(initial = 256) {
    this.borrowed = initial <= WRITER_SCRATCH_BYTES;
    this.buf = this.borrowed ? (scratchPool.pop() ?? new Uint8Array(WRITER_SCRATCH_BYTES)) : new Uint8Array(initial);
  }

  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    // Doubling alone never grows a Writer created with capacity 0.
    let size = Math.max(this.buf.length * 2, 16);
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.giveBack();
    this.buf = next;
    this.handedOut = false;
  }

  /**
   * Returns the borrowed buffer to the pool, wiped of what was written: Writers also encode
   * plaintexts and keys (in the agent, before encryption), which a pooled buffer would otherwise
   * keep reachable until the next Writer overwrites them.
   */
  private giveBack(): void {
    if (!this.borrowed) return;
    this.borrowed = false;
    this.buf.fill(0, 0, this.len);
    if (scratchPool.length < WRITER_SCRATCH_POOL) scratchPool.push(this.buf);
  }

  /** One unsigned byte. */
  u8(v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > 0xff) throw new ProtocolError('BAD_VALUE', 'byte out of range');
    this.room(1);
    this.buf[this.len++] = v;
    return this;
  }

  /** A 16-bit big-endian unsigned integer. */
  u16(v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new ProtocolError('BAD_VALUE', '16-bit integer out of range');
    this.room(2);
    this.buf[this.len++] = v >>> 8;
    this.buf[this.len++] = v & 0xff;
    return this;
  }

  /** A 32-bit big-endian unsigned integer. */
  u32(v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) throw new ProtocolError('BAD_VALUE', '32-bit integer out of range');
    this.room(4);
    this.buf[this.len++] = v >>> 24;
    this.buf[this.len++] = (v >>> 16) & 0xff;
    this.buf[this.len++] = (v >>> 8) & 0xff;
    this.buf[this.len++] = v & 0xff;
    return this;
  }

  /** A 64-bit big-endian unsigned integer from a safe JS integer. */
  u64(v: number): this {
    if (!Number.isSafeInteger(v) || v < 0) throw new ProtocolError('BAD_VALUE', '64-bit integer out of range');
    return this.u32(Math.floor(v / 0x1_0000_0000)).u32(v % 0x1_0000_0000);
  }

  /** Raw bytes, no prefix. */
  bytes(v: Uint8Array): this {
    this.room(v.length);
    this.buf.set(v, this.len);
    this.len += v.length;
    return this;
  }

  /** Exactly `n` bytes; throws if `v` has another length. */
  bytesN(v: Uint8Array, n: number, what = 'a fixed field'): this {
    if (v.length !== n) throw new ProtocolError('BAD_LENGTH', `${what} must be ${n} bytes, not ${v.length}`);
    return this.bytes(v);
  }

  /** Bytes with a 1-byte length prefix. */
  shortBytes(v: Uint8Array, max = 0xff, what = 'a short field'): this {
    if (v.length > max || v.length > 0xff) throw new ProtocolError('TOO_LARGE', `${what} is ${v.length} bytes, the limit is ${Math.min(max, 0xff)}`);
    return this.u8(v.length).bytes(v);
  }

  /** Bytes with a 2-byte length prefix. */
  longBytes(v: Uint8Array, max = 0xffff, what = 'a field'): this {
    if (v.length > max || v.length > 0xffff) throw new ProtocolError('TOO_LARGE', `${what} is ${v.length} bytes, the limit is ${Math.min(max, 0xffff)}`);
    return this.u16(v.length).bytes(v);
  }

  /** Bytes written so far. */
  get length(): number {
    return this.len;
  }

  /**
   * Hands the written bytes to `use` as a view of the Writer's buffer, and returns what it
   * returns: for bytes that are taken at once (by a MAC, a cipher or another Writer) and never
   * kept. No copy is made, so no buffer outside the heap is allocated for them, where `finish`
   * allocates one for any result over 64 bytes, which the collector later has to sweep. The
   * view is valid only while `use` runs: the Writer is done afterwards, its buffer wiped (and
   * given back if it was a scratch buffer), and anything written to it later starts a new one.
   */
  use<T>(use: (bytes: Uint8Array) => T): T {
    try {
      return use(this.buf.subarray(0, this.len));
    } finally {
      // A buffer of its own (past the scratch size) is wiped too: nothing written stays behind.
      // Not the array an earlier `finish` returned, which is the caller's.
      if (this.borrowed) this.giveBack();
      else if (!this.handedOut) this.buf.fill(0, 0, this.len);
      this.handedOut = false;
      this.buf = EMPTY;
      this.len = 0;
    }
  }

  /**
   * The written bytes (a copy sized exactly). The Writer then holds that copy as its own buffer:
   * a later write grows it into a new one, so the bytes returned never change.
   */
  finish(): Uint8Array {
    const out = this.buf.slice(0, this.len);
    this.giveBack();
    this.buf = out;
    this.handedOut = true;
    return out;
  }
}
