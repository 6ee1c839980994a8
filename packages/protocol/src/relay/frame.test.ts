// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that a block framed by WebSocket fits one TLS record, and that blockFrame writes the
// RFC 6455 header of a block in front of it, in place: the frame is a view of the same memory,
// its payload is the block unchanged, and blocks without the free bytes before them get null;
// and that written blocks given back are reused with no byte of what they held before.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import {
  BLOCK_CAPACITY,
  BLOCK_POOL_SIZE,
  BLOCK_SIZE,
  CLIENT_FRAME_HEADER,
  FRAME_HEADROOM,
  RELAY_FRAME_HEADER,
  TLS_RECORD_PLAINTEXT,
  blockFrame,
  decodeBlock,
  encodeBlock,
  newBlock,
  pad,
  packBlocks,
  recycleBlock,
  toHex,
} from '@murmure/protocol';

test('a block in its WebSocket frame fits one TLS record, from either end', () => {
  assert.equal(BLOCK_SIZE + CLIENT_FRAME_HEADER, TLS_RECORD_PLAINTEXT);
  assert.ok(BLOCK_SIZE + RELAY_FRAME_HEADER <= TLS_RECORD_PLAINTEXT);
  // The 16-bit length form: RFC 6455 asks for the shortest length that holds the payload.
  assert.ok(BLOCK_SIZE > 125 && BLOCK_SIZE < 65_536);
  assert.ok(FRAME_HEADROOM >= CLIENT_FRAME_HEADER && FRAME_HEADROOM >= RELAY_FRAME_HEADER);
});

test('blockFrame writes the header in front of the block: FIN, binary, 16-bit length; a client adds the mask bit and an all-zero key', () => {
  const made = { relay: encodeBlock([Uint8Array.of(1, 2, 3)]), client: encodeBlock([Uint8Array.of(1, 2, 3)]) };
  const before = Uint8Array.from(made.relay);
  const relay = blockFrame(made.relay, 'relay');
  assert.ok(relay !== null);
  assert.equal(relay.length, RELAY_FRAME_HEADER + BLOCK_SIZE);
  assert.equal(toHex(relay.subarray(0, RELAY_FRAME_HEADER)), '827e3ff8');
  const client = blockFrame(made.client, 'client');
  assert.ok(client !== null);
  assert.equal(client.length, CLIENT_FRAME_HEADER + BLOCK_SIZE);
  assert.equal(toHex(client.subarray(0, CLIENT_FRAME_HEADER)), '82fe3ff800000000');
  for (const [frame, block] of [[relay, made.relay], [client, made.client]] as const) {
    // The same memory, not a copy; the payload is the block, unchanged.
    assert.equal(frame.buffer, block.buffer);
    assert.equal(frame.byteOffset + frame.length, block.byteOffset + block.length);
    assert.deepEqual(frame.subarray(frame.length - BLOCK_SIZE), before);
    assert.deepEqual(block, before);
  }
});

test('a block is framed once: a second frame, from either end, would change the bytes of one that may still wait to be written', () => {
  const block = encodeBlock([Uint8Array.of(4, 5, 6)]);
  const first = blockFrame(block, 'relay');
  assert.ok(first !== null);
  const bytes = Uint8Array.from(first);
  assert.equal(blockFrame(block, 'client'), null);
  assert.equal(blockFrame(block, 'relay'), null);
  assert.deepEqual(first, bytes);
});

test('every block the encoders make can be framed in place', () => {
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ minLength: 0, maxLength: 2_000 }), { minLength: 1, maxLength: 20 }), (ts) => {
      for (const block of packBlocks(ts.filter((t) => t.length + 2 <= BLOCK_CAPACITY))) {
        const frame = blockFrame(block, 'client');
        assert.ok(frame !== null);
        assert.deepEqual(frame.subarray(CLIENT_FRAME_HEADER), block);
      }
    }),
  );
});

test('a block without free bytes before it gets null, so it goes through the WebSocket library', () => {
  const padded = pad(Uint8Array.of(7), BLOCK_SIZE);
  assert.equal(blockFrame(padded, 'relay'), null, 'a block made by pad');
  // A view of the same size into memory that holds something else before it.
  const shared = new Uint8Array(BLOCK_SIZE + FRAME_HEADROOM).fill(9);
  assert.equal(blockFrame(shared.subarray(FRAME_HEADROOM), 'client'), null, 'a view into foreign memory');
  assert.ok(shared.every((b) => b === 9), 'and nothing is written');
  const block = newBlock();
  assert.equal(blockFrame(block.subarray(1), 'relay'), null, 'a part of a block');
  assert.equal(blockFrame(Uint8Array.from(block), 'relay'), null, 'a copy of a block');
});

test('a written block given back is reused, and a block encoded into it holds no byte of the one before', () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ minLength: 1, maxLength: 3_000 }), { minLength: 1, maxLength: 5 }),
      fc.array(fc.uint8Array({ minLength: 0, maxLength: 300 }), { minLength: 1, maxLength: 5 }),
      (first, second) => {
        const old = encodeBlock(first);
        assert.ok(blockFrame(old, 'client') !== null);
        recycleBlock(old);
        const reused = encodeBlock(second);
        assert.equal(reused, old, 'the block given back is the next one used');
        // decodeBlock checks that every byte after the content is the pad byte.
        assert.deepEqual(decodeBlock(reused), second, 'it holds the new content and fill, nothing of the old');
        assert.ok(blockFrame(reused, 'relay') !== null, 'and is framed in place again');
      },
    ),
  );
});

test('only a framed block is taken back, once, and the pool keeps at most BLOCK_POOL_SIZE', () => {
  for (let i = 0; i < BLOCK_POOL_SIZE; i++) newBlock(); // the pool starts empty
  const unframed = encodeBlock([Uint8Array.of(1)]);
  recycleBlock(unframed);
  assert.notEqual(newBlock(), unframed, 'a block not yet framed may still be sent: it is not reused');
  // A received client block: a view at the same offset into memory someone else owns.
  const received = new Uint8Array(FRAME_HEADROOM + BLOCK_SIZE).subarray(FRAME_HEADROOM);
  recycleBlock(received);
  assert.notEqual(newBlock(), received, 'a view into foreign memory is not taken');
  const twice = encodeBlock([Uint8Array.of(3)]);
  blockFrame(twice, 'client');
  recycleBlock(twice);
  recycleBlock(twice);
  assert.equal(newBlock(), twice);
  assert.notEqual(newBlock(), twice, 'a block given back twice is in the pool once');
  // A block framed by a client, given back and framed by the relay: its header is the relay's.
  const byClient = encodeBlock([Uint8Array.of(5)]);
  blockFrame(byClient, 'client');
  recycleBlock(byClient);
  const again = encodeBlock([Uint8Array.of(4)]);
  assert.equal(again, byClient);
  const frame = blockFrame(again, 'relay');
  assert.ok(frame !== null && frame.buffer === byClient.buffer);
  assert.deepEqual([...frame.subarray(0, RELAY_FRAME_HEADER)], [0x82, 126, BLOCK_SIZE >>> 8, BLOCK_SIZE & 0xff]);
  assert.deepEqual(frame.subarray(RELAY_FRAME_HEADER), again);
  recycleBlock(pad(Uint8Array.of(7), BLOCK_SIZE));
  const blocks = Array.from({ length: BLOCK_POOL_SIZE + 10 }, () => {
    const b = encodeBlock([Uint8Array.of(2)]);
    blockFrame(b, 'relay');
    return b;
  });
  for (const b of blocks) recycleBlock(b);
  const taken = new Set(Array.from({ length: BLOCK_POOL_SIZE + 10 }, () => newBlock()));
  const reused = blocks.filter((b) => taken.has(b)).length;
  assert.equal(reused, BLOCK_POOL_SIZE, 'the pool held BLOCK_POOL_SIZE of them');
});
