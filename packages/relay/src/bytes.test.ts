// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that the relay's byte helpers agree with Node's own comparison, for ids and keys (the
// short arrays compared in a loop) and for longer arrays, whatever their offsets in a buffer.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import fc from 'fast-check';

import { idKey, sameBytes } from './bytes.js';

/** A copy of `bytes` placed at `offset` in a larger buffer, as a view into it. */
function at(bytes: Uint8Array, offset: number): Uint8Array {
  const buf = new Uint8Array(offset + bytes.length + 3).fill(0xaa);
  buf.set(bytes, offset);
  return buf.subarray(offset, offset + bytes.length);
}

describe('sameBytes', () => {
  test('agrees with Buffer.equals for any two arrays and offsets', () => {
    const bytes = fc.uint8Array({ maxLength: 100 });
    fc.assert(
      fc.property(bytes, bytes, fc.nat(7), fc.nat(7), (a, b, oa, ob) => {
        const expected = Buffer.from(a).equals(Buffer.from(b));
        assert.equal(sameBytes(at(a, oa), at(b, ob)), expected);
        assert.equal(sameBytes(at(a, oa), at(a, ob)), true);
      }),
    );
  });

  test('tells apart arrays that differ in one byte, at every place, short and long', () => {
    for (const n of [1, 24, 32, 64, 65, 200]) {
      const a = new Uint8Array(n).map((_, i) => i);
      for (let i = 0; i < n; i++) {
        const b = a.slice();
        b[i] = (b[i]! + 1) & 0xff;
        assert.equal(sameBytes(a, b), false, `length ${n}, byte ${i}`);
      }
      assert.equal(sameBytes(a, a.slice()), true);
      assert.equal(sameBytes(a, a.subarray(0, n - 1)), false, 'a prefix is not the same bytes');
    }
  });
});

describe('idKey', () => {
  test('equal keys for equal bytes, distinct keys for distinct bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 40 }), fc.uint8Array({ maxLength: 40 }), fc.nat(7), (a, b, o) => {
        assert.equal(idKey(at(a, o)), idKey(a));
        assert.equal(idKey(a) === idKey(b), Buffer.from(a).equals(Buffer.from(b)));
      }),
    );
  });

  test('is the latin1 string of the bytes, short (read byte by byte) and long', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 100 }), fc.nat(7), (a, o) => {
        assert.equal(idKey(at(a, o)), Buffer.from(a).toString('latin1'));
      }),
    );
  });
});
