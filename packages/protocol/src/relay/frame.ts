// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * A block in its WebSocket frame (RFC 6455 §5.2), built in place. Every block `encodeBlock`
 * makes has `FRAME_HEADROOM` free bytes before it; a sender writes the frame header there and
 * puts header and block on the wire as one buffer. Given two buffers, Node's TLS layer first
 * copies them into one; given one, it encrypts it as it is, and with `BLOCK_SIZE` chosen so that
 * a framed block fits one TLS record, the reader gets each block whole from one record.
 * @module
 */

import { BLOCK_SIZE } from '../limits.js';

/** Largest plaintext of one TLS record (RFC 8446 §5.1). */
export const TLS_RECORD_PLAINTEXT = 16_384;
/** Header of a block frame from the relay: FIN and opcode, then 126 and a 16-bit length. */
export const RELAY_FRAME_HEADER = 4;
/** Header of a block frame from a client: the same with the mask bit, then a 4-byte masking key. */
export const CLIENT_FRAME_HEADER = 8;
/** Free bytes before each block `newBlock` makes: room for either header. */
export const FRAME_HEADROOM = CLIENT_FRAME_HEADER;

/** Which end sends a frame: a client's frames are masked, the relay's are not. */
export type FrameSender = 'client' | 'relay';

/** Blocks made by `newBlock`, which own the `FRAME_HEADROOM` bytes before them. */
const withHeadroom = new WeakSet<Uint8Array>();
/** Blocks `blockFrame` framed and `recycleBlock` has not taken back. */
const framed = new WeakSet<Uint8Array>();

/** Most written blocks kept for reuse (`recycleBlock`). */
export const BLOCK_POOL_SIZE = 64;
const pool: Uint8Array[] = [];

/**
 * A block of `BLOCK_SIZE` bytes with `FRAME_HEADROOM` free bytes before it: a written one given
 * back, or a new one. Its bytes are not cleared: the caller writes every one (`encodeBlock`).
 */
export function newBlock(): Uint8Array {
  const block = pool.pop() ?? new Uint8Array(FRAME_HEADROOM + BLOCK_SIZE).subarray(FRAME_HEADROOM);
  withHeadroom.add(block);
  return block;
}

/**
 * Gives back a block whose frame the socket has written (its write callback ran without an
 * error): the next `newBlock` reuses it. Every block sent would otherwise be a fresh 16 KiB
 * buffer, and their churn of memory outside the heap makes V8 run full collections many times a
 * second. Only a block `blockFrame` framed is taken, once: a block is sent once, and nothing may
 * hold it after its write.
 */
export function recycleBlock(block: Uint8Array): void {
  if (!framed.delete(block)) return;
  if (pool.length < BLOCK_POOL_SIZE) pool.push(block);
}

/**
 * The WebSocket frame of `block`, its header written into the free bytes before it: one view of
 * header and block. Null for a block that `newBlock` did not make (a sender then hands it to the
 * WebSocket library instead), and for one already framed: a frame may still be
 * waiting to be written, and a second header would change its bytes. A client's frame carries
 * the all-zero masking key (docs/protocol.md, "Transport"), so its payload is the block as it is.
 */
export function blockFrame(block: Uint8Array, from: FrameSender): Uint8Array | null {
  if (block.length !== BLOCK_SIZE || !withHeadroom.delete(block)) return null;
  const header = from === 'client' ? CLIENT_FRAME_HEADER : RELAY_FRAME_HEADER;
  const frame = new Uint8Array(block.buffer, block.byteOffset - header, header + BLOCK_SIZE);
  frame[0] = 0x82; // FIN, opcode 2: one whole binary message
  frame[1] = from === 'client' ? 0x80 | 126 : 126; // the mask bit; 126: a 16-bit length follows
  frame[2] = BLOCK_SIZE >>> 8;
  frame[3] = BLOCK_SIZE & 0xff;
  if (from === 'client') frame.fill(0, 4, CLIENT_FRAME_HEADER);
  framed.add(block);
  return frame;
}

/** The write callback that gives `block` back (`recycleBlock`) once its frame was written without an error. */
export function recycleWhenWritten(block: Uint8Array): (e?: Error | null) => void {
  return (e) => {
    if (e === null || e === undefined) recycleBlock(block);
  };
}
