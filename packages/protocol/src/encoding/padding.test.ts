// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that pad/unpad round-trip any content to exactly the requested size and that unpad refuses malformed padding with ProtocolError only.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import { BLOCK_SIZE, PAD_BYTE, ProtocolError, pad, padInto, toHex, unpad } from '@murmure/protocol';

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

/** A size and content that fits it (up to the last byte). */
const sizedContent = fc.integer({ min: 2, max: 600 }).chain((size) => fc.tuple(fc.constant(size), fc.uint8Array({ maxLength: size - 2 })));

describe('padding round trip', () => {
  test('unpad(pad(c, size), size) equals c, the result is exactly size bytes, and the fill is #', () => {
    fc.assert(
      fc.property(sizedContent, ([size, content]) => {
        const padded = pad(content, size);
        assert.equal(padded.length, size);
        assert.ok(padded.subarray(2 + content.length).every((b) => b === PAD_BYTE));
        assert.deepEqual(unpad(padded, size), content);
      }),
      { numRuns: 3000 },
    );
  });

  test('block-sized padding round-trips content up to BLOCK_SIZE - 2 bytes', () => {
    for (const n of [0, 1, 100, BLOCK_SIZE - 3, BLOCK_SIZE - 2]) {
      const content = new Uint8Array(n).map((_, i) => i & 0xff);
      const padded = pad(content, BLOCK_SIZE);
      assert.equal(padded.length, BLOCK_SIZE);
      assert.deepEqual(unpad(padded, BLOCK_SIZE), content);
    }
  });

  test('padInto a buffer holding old bytes writes the same bytes as pad, over every byte', () => {
    fc.assert(
      fc.property(sizedContent, fc.integer({ min: 0, max: 255 }), ([size, content], old) => {
        const out = new Uint8Array(size).fill(old);
        assert.equal(padInto(content, out), out);
        assert.deepEqual(out, pad(content, size));
      }),
      { numRuns: 1000 },
    );
  });

  test('the layout is a big-endian length, the content, then # (0x23)', () => {
    assert.equal(PAD_BYTE, 0x23);
    assert.equal(toHex(pad(new Uint8Array([1, 2, 3]), 8)), '0003010203232323');
    assert.equal(toHex(pad(new Uint8Array(0), 4)), '00002323');
  });
});

describe('padding edge cases', () => {
  test('content longer than size - 2 is TOO_LARGE', () => {
    assert.throws(() => pad(new Uint8Array(7), 8), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.throws(() => pad(new Uint8Array(BLOCK_SIZE - 1), BLOCK_SIZE), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.throws(() => pad(new Uint8Array(0x10000), 0x20000), (e) => ProtocolError.is(e, 'TOO_LARGE'));
  });

  test('padInto with content that does not fit is TOO_LARGE and writes nothing', () => {
    const out = new Uint8Array(8).fill(7);
    assert.throws(() => padInto(new Uint8Array(7), out), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.ok(out.every((b) => b === 7));
  });

  test('input of another size is BAD_LENGTH', () => {
    const padded = pad(new Uint8Array([1]), 16);
    assert.throws(() => unpad(padded.subarray(0, 15), 16), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
    assert.throws(() => unpad(new Uint8Array(17), 16), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
  });

  test('a declared length beyond the padded size is BAD_PADDING', () => {
    const padded = pad(new Uint8Array(0), 16);
    padded[1] = 15;
    assert.throws(() => unpad(padded, 16), (e) => ProtocolError.is(e, 'BAD_PADDING'));
    padded[0] = 0xff;
    padded[1] = 0xff;
    assert.throws(() => unpad(padded, 16), (e) => ProtocolError.is(e, 'BAD_PADDING'));
  });

  test('any fill byte other than # is BAD_PADDING', () => {
    fc.assert(
      fc.property(sizedContent.filter(([size, c]) => c.length < size - 2), fc.nat(), fc.integer({ min: 0, max: 0xff }).filter((b) => b !== PAD_BYTE), ([size, content], at, bad) => {
        const padded = pad(content, size);
        padded[2 + content.length + (at % (size - 2 - content.length))] = bad;
        assert.throws(() => unpad(padded, size), (e) => ProtocolError.is(e, 'BAD_PADDING'));
      }),
      { numRuns: 2000 },
    );
  });
});

describe('padding fuzz', () => {
  test('unpad of arbitrary bytes throws only ProtocolError, and a success re-pads to the same bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 80 }), fc.boolean(), fc.nat({ max: 80 }), (bytes, sameSize, otherSize) => {
        const size = sameSize ? bytes.length : otherSize;
        assertRefusedOrCanonical<Uint8Array, Uint8Array>(
          bytes,
          (b) => unpad(b, size),
          (c) => pad(c, size),
        );
      }),
      { numRuns: 5000 },
    );
  });

  test('unpad of valid padding with a few changed bytes throws only ProtocolError, and a success re-pads to the same bytes', () => {
    fc.assert(
      fc.property(sizedContent, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 0xff })), { minLength: 1, maxLength: 3 }), ([size, content], edits) => {
        const padded = pad(content, size);
        for (const [at, v] of edits) padded[at % size] = v;
        assertRefusedOrCanonical<Uint8Array, Uint8Array>(
          padded,
          (b) => unpad(b, size),
          (c) => pad(c, size),
        );
      }),
      { numRuns: 3000 },
    );
  });
});
