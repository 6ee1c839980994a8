// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that base64url and hex agree with Node's Buffer encodings and that fromBase64Url accepts only canonical unpadded base64url.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import { ProtocolError, fromBase64Url, toBase64Url, toHex } from '@murmure/protocol';

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

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

describe('base64url round trip', () => {
  test("toBase64Url matches Buffer's base64url, and fromBase64Url gives the bytes back", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        const text = toBase64Url(bytes);
        assert.equal(text, Buffer.from(bytes).toString('base64url'));
        assert.deepEqual(fromBase64Url(text), bytes);
      }),
      { numRuns: 3000 },
    );
  });

  test("toHex matches Buffer's hex", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 100 }), (bytes) => {
        assert.equal(toHex(bytes), Buffer.from(bytes).toString('hex'));
      }),
      { numRuns: 1000 },
    );
  });

  test('RFC 4648 test vectors, unpadded, in the url alphabet', () => {
    const vectors: [string, string][] = [
      ['', ''],
      ['f', 'Zg'],
      ['fo', 'Zm8'],
      ['foo', 'Zm9v'],
      ['foob', 'Zm9vYg'],
      ['fooba', 'Zm9vYmE'],
      ['foobar', 'Zm9vYmFy'],
    ];
    for (const [plain, text] of vectors) {
      const bytes = new TextEncoder().encode(plain);
      assert.equal(toBase64Url(bytes), text);
      assert.deepEqual(fromBase64Url(text), bytes);
    }
    assert.equal(toBase64Url(new Uint8Array([0xfb, 0xff, 0xbf])), '-_-_');
    assert.deepEqual(fromBase64Url('-_-_'), new Uint8Array([0xfb, 0xff, 0xbf]));
  });
});

describe('base64url edge cases', () => {
  const bad: [string, string][] = [
    ['an impossible length', 'Zm9vY'],
    ['= padding', 'Zg=='],
    ['the standard alphabet (+)', 'ab+c'],
    ['the standard alphabet (/)', 'ab/c'],
    ['whitespace', 'Zm9v Yg'],
    ['a non-ASCII character', 'Zm9é'],
    ['a non-canonical tail of one byte', 'Zh'],
    ['a non-canonical tail of two bytes', 'Zm9'],
  ];
  for (const [what, text] of bad) {
    test(`text with ${what} is BAD_VALUE`, () => {
      assert.throws(() => fromBase64Url(text), (e) => ProtocolError.is(e, 'BAD_VALUE'));
    });
  }
});

describe('base64url fuzz', () => {
  test('arbitrary text throws only ProtocolError, and whatever decodes re-encodes to the same text', () => {
    const text = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 40 }),
      fc.string({ unit: fc.constantFrom(...ALPHABET), maxLength: 40 }),
      fc.string({ unit: fc.constantFrom(...ALPHABET, '=', '+', '/', ' ', '\u0000', '\u00ff', '\u{1f600}'), maxLength: 40 }),
    );
    fc.assert(
      fc.property(text, (s) => {
        assertRefusedOrCanonical(s, fromBase64Url, toBase64Url);
      }),
      { numRuns: 5000 },
    );
  });
});
