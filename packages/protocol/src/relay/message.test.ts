// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that the received message inside the relay's box round-trips and that its decoder throws only ProtocolError.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import { MAX_MESSAGE_BODY, ProtocolError, RCV_HEADER_LENGTH, decodeReceivedMessage, encodeReceivedMessage, toHex, useReceivedMessage } from '@murmure/protocol';
import type { ReceivedMessage } from '@murmure/protocol';

function seeded(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed | 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Feeds hostile input to a decoder: ProtocolError is fine, any other exception fails, and a success must re-encode to the very same input. */
function assertRefusedOrCanonical<TIn, TOut>(input: TIn, decode: (i: TIn) => TOut, encode: (x: TOut) => TIn): void {
  let value: TOut;
  try {
    value = decode(input);
  } catch (e) {
    if (ProtocolError.is(e)) return;
    throw new Error(`threw something other than ProtocolError: ${String(e)}`, { cause: e });
  }
  assert.deepEqual(encode(value), input);
}

const body = fc.oneof(
  { arbitrary: fc.uint8Array({ maxLength: 64 }), weight: 4 },
  { arbitrary: fc.tuple(fc.integer({ min: 0, max: MAX_MESSAGE_BODY }), fc.integer()).map(([n, s]) => seeded(n, s)), weight: 1 },
  { arbitrary: fc.integer().map((s) => seeded(MAX_MESSAGE_BODY, s)), weight: 1 },
);
const receivedMessage: fc.Arbitrary<ReceivedMessage> = fc
  .tuple(fc.oneof(fc.maxSafeNat(), fc.constantFrom(0, 2 ** 32, Number.MAX_SAFE_INTEGER)), fc.integer({ min: 0, max: 0xff }), body)
  .map(([receivedAt, flags, b]) => ({ receivedAt, flags, body: b }));

describe('received message round trip', () => {
  test('decodeReceivedMessage(encodeReceivedMessage(m)) equals m', () => {
    fc.assert(
      fc.property(receivedMessage, (m) => {
        const bytes = encodeReceivedMessage(m);
        assert.equal(bytes.length, RCV_HEADER_LENGTH + m.body.length);
        assert.deepEqual(decodeReceivedMessage(bytes), m);
      }),
      { numRuns: 2000 },
    );
  });

  test('useReceivedMessage hands over the bytes of encodeReceivedMessage', () => {
    fc.assert(
      fc.property(receivedMessage, (m) => {
        assert.equal(useReceivedMessage(m, toHex), toHex(encodeReceivedMessage(m)));
      }),
      { numRuns: 500 },
    );
  });

  test('the layout is an 8-byte big-endian time, a flags byte, then the body', () => {
    const bytes = encodeReceivedMessage({ receivedAt: 0x0102_0304_0506, flags: 0x80, body: new Uint8Array([0xaa, 0xbb]) });
    assert.equal(toHex(bytes), '0000010203040506' + '80' + 'aabb');
  });
});

describe('received message edge cases', () => {
  test('fewer than RCV_HEADER_LENGTH bytes is TRUNCATED', () => {
    for (let n = 0; n < RCV_HEADER_LENGTH; n++) {
      assert.throws(() => decodeReceivedMessage(new Uint8Array(n)), (e) => ProtocolError.is(e, 'TRUNCATED'), `${n} bytes`);
    }
    assert.deepEqual(decodeReceivedMessage(new Uint8Array(RCV_HEADER_LENGTH)), { receivedAt: 0, flags: 0, body: new Uint8Array(0) });
  });

  test('a time beyond the safe-integer range is BAD_VALUE both ways', () => {
    const bytes = new Uint8Array(RCV_HEADER_LENGTH);
    bytes[1] = 0x20;
    assert.throws(() => decodeReceivedMessage(bytes), (e) => ProtocolError.is(e, 'BAD_VALUE'));
    assert.throws(() => encodeReceivedMessage({ receivedAt: 2 ** 53, flags: 0, body: new Uint8Array(0) }), (e) => ProtocolError.is(e, 'BAD_VALUE'));
  });

  test('a body over MAX_MESSAGE_BODY is TOO_LARGE on decode', () => {
    const bytes = new Uint8Array(RCV_HEADER_LENGTH + MAX_MESSAGE_BODY + 1);
    assert.throws(() => decodeReceivedMessage(bytes), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.equal(decodeReceivedMessage(bytes.subarray(1)).body.length, MAX_MESSAGE_BODY);
  });
});

describe('received message fuzz', () => {
  test('arbitrary bytes throw only ProtocolError, and what decodes re-encodes the same', () => {
    const candidates = fc.oneof(
      fc.uint8Array({ maxLength: 120 }),
      fc.tuple(fc.integer({ min: MAX_MESSAGE_BODY - 4, max: MAX_MESSAGE_BODY + 20 }), fc.integer()).map(([n, s]) => seeded(n, s)),
    );
    fc.assert(
      fc.property(candidates, (bytes) => assertRefusedOrCanonical(bytes, decodeReceivedMessage, encodeReceivedMessage)),
      { numRuns: 4000 },
    );
  });

  test('valid encodings with bits flipped, truncated or extended throw only ProtocolError', () => {
    const mutatedMsg = fc
      .tuple(receivedMessage.map(encodeReceivedMessage), fc.nat({ max: 16 }), fc.nat({ max: 7 }), fc.integer({ min: -12, max: 12 }))
      .map(([b, at, bit, resize]) => {
        const c = new Uint8Array(Math.max(0, b.length + resize));
        c.set(b.subarray(0, c.length));
        if (at < c.length) c[at] = (c[at] ?? 0) ^ (1 << bit);
        return c;
      });
    fc.assert(
      fc.property(mutatedMsg, (bytes) => assertRefusedOrCanonical(bytes, decodeReceivedMessage, encodeReceivedMessage)),
      { numRuns: 2000 },
    );
  });
});
