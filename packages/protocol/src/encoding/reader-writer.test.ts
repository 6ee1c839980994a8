// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that Writer and Reader agree on every integer and length-prefixed field, and that Reader refuses hostile input with ProtocolError only.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import { ProtocolError, Reader, WRITER_SCRATCH_BYTES, Writer, toHex } from '@murmure/protocol';

type Field =
  | { k: 'u8' | 'u16' | 'u32' | 'u64'; v: number }
  | { k: 'bytesN' | 'short' | 'long'; v: Uint8Array };

/** Bytes of a given length from a seed, so long arrays cost one integer to generate. */
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

/** fc.record with ordinary prototypes, so decoded objects deep-equal generated ones. */
const rec = <T>(model: { [K in keyof T]: fc.Arbitrary<T[K]> }): fc.Arbitrary<T> => fc.record(model, { noNullPrototype: true }) as fc.Arbitrary<T>;

const longBytes = fc.oneof(
  { arbitrary: fc.uint8Array({ maxLength: 300 }), weight: 4 },
  { arbitrary: fc.tuple(fc.integer({ min: 0, max: 0xffff }), fc.integer()).map(([n, s]) => seeded(n, s)), weight: 1 },
);

const field: fc.Arbitrary<Field> = fc.oneof(
  rec({ k: fc.constant('u8' as const), v: fc.integer({ min: 0, max: 0xff }) }),
  rec({ k: fc.constant('u16' as const), v: fc.integer({ min: 0, max: 0xffff }) }),
  rec({ k: fc.constant('u32' as const), v: fc.integer({ min: 0, max: 0xffff_ffff }) }),
  rec({ k: fc.constant('u64' as const), v: fc.oneof(fc.maxSafeNat(), fc.constantFrom(0, 2 ** 32 - 1, 2 ** 32, Number.MAX_SAFE_INTEGER)) }),
  rec({ k: fc.constant('bytesN' as const), v: fc.uint8Array({ maxLength: 64 }) }),
  rec({ k: fc.constant('short' as const), v: fc.uint8Array({ maxLength: 0xff }) }),
  rec({ k: fc.constant('long' as const), v: longBytes }),
);

function write(w: Writer, f: Field): void {
  switch (f.k) {
    case 'u8':
      w.u8(f.v);
      break;
    case 'u16':
      w.u16(f.v);
      break;
    case 'u32':
      w.u32(f.v);
      break;
    case 'u64':
      w.u64(f.v);
      break;
    case 'bytesN':
      w.bytesN(f.v, f.v.length);
      break;
    case 'short':
      w.shortBytes(f.v);
      break;
    case 'long':
      w.longBytes(f.v);
      break;
  }
}

function read(r: Reader, like: Field): Field {
  switch (like.k) {
    case 'u8':
      return { k: 'u8', v: r.u8() };
    case 'u16':
      return { k: 'u16', v: r.u16() };
    case 'u32':
      return { k: 'u32', v: r.u32() };
    case 'u64':
      return { k: 'u64', v: r.u64() };
    case 'bytesN':
      return { k: 'bytesN', v: r.bytesN(like.v.length) };
    case 'short':
      return { k: 'short', v: r.shortBytes(0xff) };
    case 'long':
      return { k: 'long', v: r.longBytes(0xffff) };
  }
}

function assertOnlyProtocolError(run: () => unknown): void {
  try {
    run();
  } catch (e) {
    if (!ProtocolError.is(e)) throw new Error(`threw something other than ProtocolError: ${String(e)}`, { cause: e });
  }
}

/**
 * Runs `fn` with the global Uint8Array and ArrayBuffer constructors counting every allocation
 * by size, so a test can show a hostile length was refused before anything was allocated.
 */
function allocationsDuring(fn: () => void): number[] {
  const sizes: number[] = [];
  const RealU8 = globalThis.Uint8Array;
  const RealAB = globalThis.ArrayBuffer;
  const count = (args: unknown[]): void => {
    if (typeof args[0] === 'number') sizes.push(args[0]);
  };
  globalThis.Uint8Array = new Proxy(RealU8, {
    construct(target, args, newTarget) {
      count(args);
      return Reflect.construct(target, args, newTarget === globalThis.Uint8Array ? target : newTarget) as object;
    },
  });
  globalThis.ArrayBuffer = new Proxy(RealAB, {
    construct(target, args, newTarget) {
      count(args);
      return Reflect.construct(target, args, newTarget === globalThis.ArrayBuffer ? target : newTarget) as object;
    },
  });
  try {
    fn();
  } finally {
    globalThis.Uint8Array = RealU8;
    globalThis.ArrayBuffer = RealAB;
  }
  return sizes;
}

describe('Writer and Reader round trip', () => {
  test('any sequence of fields reads back as written, whatever the initial capacity', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 64 }), fc.array(field, { maxLength: 12 }), (initial, fields) => {
        const w = new Writer(initial);
        for (const f of fields) write(w, f);
        const bytes = w.finish();
        assert.equal(bytes.length, w.length);
        const r = new Reader(bytes);
        const back = fields.map((f) => read(r, f));
        assert.equal(r.remaining, 0);
        r.end();
        assert.deepEqual(back, fields);
      }),
      { numRuns: 2000 },
    );
  });

  test('Writers alive at once share no bytes: finished in any order, written again after finishing, each gives its own, and bytes returned never change', () => {
    /** The bytes of one field, from a Writer too large to borrow a scratch buffer. */
    const own = (f: Field): number[] => {
      const w = new Writer(WRITER_SCRATCH_BYTES + 1);
      write(w, f);
      return [...w.finish()];
    };
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 64 }), { minLength: 1, maxLength: 12 }),
        fc.array(fc.tuple(fc.nat(11), fc.option(field, { freq: 4 })), { maxLength: 40 }),
        (initials, steps) => {
          const writers = initials.map((n) => new Writer(n));
          const expected: number[][] = initials.map(() => []);
          const returned: { bytes: Uint8Array; was: number[] }[] = [];
          for (const [at, f] of steps) {
            const i = at % writers.length;
            if (f === null) {
              const bytes = writers[i]!.finish();
              assert.deepEqual([...bytes], expected[i]);
              returned.push({ bytes, was: [...bytes] });
            } else {
              write(writers[i]!, f);
              expected[i]!.push(...own(f));
            }
          }
          writers.forEach((w, i) => assert.deepEqual([...w.finish()], expected[i]));
          for (const r of returned) assert.deepEqual([...r.bytes], r.was);
        },
      ),
      { numRuns: 500 },
    );
  });

  test('a Writer borrows its buffer: once one has finished, the next allocates none (only its copy)', () => {
    new Writer(256).u8(1).finish();
    const sizes = allocationsDuring(() => {
      for (let i = 0; i < 3; i++) new Writer(256).u8(i).u16(2).finish();
    });
    assert.deepEqual(sizes, []);
    // One too large to borrow allocates its own.
    assert.deepEqual(allocationsDuring(() => void new Writer(WRITER_SCRATCH_BYTES + 1).finish()), [WRITER_SCRATCH_BYTES + 1]);
  });

  test('a scratch buffer goes back to the pool wiped: the next Writer to borrow it finds none of the bytes written before', () => {
    const inside = (w: Writer): Uint8Array => (w as unknown as { buf: Uint8Array }).buf;
    const secret = new Uint8Array(300).fill(0xaa);
    const first = new Writer(256);
    const borrowed = inside(first.bytes(secret));
    first.finish();
    const next = new Writer(256);
    assert.equal(inside(next), borrowed, 'the pool hands the same buffer out again');
    assert.ok(inside(next).every((b) => b === 0), 'wiped');
    // So is one left behind when a Writer grows past it.
    const growing = new Writer(256).bytes(secret);
    const left = inside(growing);
    growing.bytes(new Uint8Array(WRITER_SCRATCH_BYTES));
    assert.notEqual(inside(growing), left);
    assert.ok(left.every((b) => b === 0), 'wiped when left for a larger buffer');
    next.finish();
    growing.finish();
  });

  test('use hands over the bytes finish would return, without a copy, and wipes and gives back the scratch buffer after', () => {
    const inside = (w: Writer): Uint8Array => (w as unknown as { buf: Uint8Array }).buf;
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 64 }), fc.array(field, { maxLength: 12 }), (initial, fields) => {
        const a = new Writer(initial);
        const b = new Writer(initial);
        for (const f of fields) {
          write(a, f);
          write(b, f);
        }
        const expected = [...a.finish()];
        const buffer = inside(b);
        let seen: Uint8Array | null = null;
        const got = b.use((bytes) => {
          seen = bytes;
          assert.equal(bytes.buffer, buffer.buffer, 'a view of the Writer buffer, not a copy');
          return [...bytes];
        });
        assert.deepEqual(got, expected);
        assert.ok(seen !== null && (seen as Uint8Array).every((x) => x === 0), 'wiped once use returns');
        assert.equal(b.length, 0);
      }),
      { numRuns: 500 },
    );
    // The scratch buffer is the next Writer's to borrow.
    const w = new Writer(256).u8(1);
    const borrowed = inside(w);
    w.use((bytes) => bytes.length);
    assert.equal(inside(new Writer(256)), borrowed);
  });

  test('use after finish leaves the bytes finish returned as they were', () => {
    const w = new Writer(256).bytes(new Uint8Array(100).fill(0xcc));
    const done = w.finish();
    assert.equal(w.use((bytes) => bytes.length), 100);
    assert.ok(done.every((x) => x === 0xcc));
    // A Writer past the scratch size finished the same way.
    const big = new Writer(WRITER_SCRATCH_BYTES + 1).bytes(new Uint8Array(10).fill(0xdd));
    const own = big.finish();
    big.use(() => undefined);
    assert.ok(own.every((x) => x === 0xdd));
  });

  test('use gives the buffer back wiped even when what it calls throws, and the Writer then starts anew', () => {
    const inside = (w: Writer): Uint8Array => (w as unknown as { buf: Uint8Array }).buf;
    const w = new Writer(256).bytes(new Uint8Array(40).fill(0xbb));
    const buffer = inside(w);
    assert.throws(() => w.use(() => assert.fail('taken')), /taken/);
    assert.ok(buffer.every((x) => x === 0));
    const next = new Writer(256);
    assert.equal(inside(next), buffer, 'given back to the pool');
    next.finish();
    assert.deepEqual([...w.u8(7).finish()], [7]);
  });

  test('a Writer created with capacity 0 still grows (it used to loop forever)', () => {
    const bytes = new Writer(0).u8(1).u16(0x0203).bytes(new Uint8Array(1000)).finish();
    assert.equal(bytes.length, 1003);
    assert.equal(toHex(bytes.subarray(0, 3)), '010203');
  });

  test('integers are big-endian, and length prefixes come first', () => {
    const bytes = new Writer(4)
      .u8(0xfe)
      .u16(0x0102)
      .u32(0x03040506)
      .u64(Number.MAX_SAFE_INTEGER)
      .u64(2 ** 32)
      .shortBytes(new Uint8Array([0xaa, 0xbb]))
      .longBytes(new Uint8Array([0xcc]))
      .finish();
    assert.equal(toHex(bytes), 'fe' + '0102' + '03040506' + '001fffffffffffff' + '0000000100000000' + '02aabb' + '0001cc');
  });

  test('Reader fields are views into the input, not copies', () => {
    const input = new Uint8Array([3, 1, 2, 3, 0, 2, 9, 9, 7, 7]);
    const r = new Reader(input);
    const a = r.shortBytes(3);
    const b = r.longBytes(2);
    const c = r.bytesN(1);
    const d = r.rest();
    for (const v of [a, b, c, d]) assert.equal(v.buffer, input.buffer);
    assert.deepEqual([...a, ...b, ...c, ...d], [1, 2, 3, 9, 9, 7, 7]);
  });
});

describe('Writer refuses values it cannot encode', () => {
  const cases: [string, () => unknown][] = [
    ['u8(256)', () => new Writer().u8(256)],
    ['u8(-1)', () => new Writer().u8(-1)],
    ['u8(1.5)', () => new Writer().u8(1.5)],
    ['u8(NaN)', () => new Writer().u8(Number.NaN)],
    ['u16(0x10000)', () => new Writer().u16(0x10000)],
    ['u32(2 ** 32)', () => new Writer().u32(2 ** 32)],
    ['u64(2 ** 53)', () => new Writer().u64(2 ** 53)],
    ['u64(-1)', () => new Writer().u64(-1)],
  ];
  for (const [name, run] of cases) {
    test(`${name} is BAD_VALUE`, () => {
      assert.throws(run, (e) => ProtocolError.is(e, 'BAD_VALUE'));
    });
  }

  test('bytesN with another length is BAD_LENGTH', () => {
    assert.throws(() => new Writer().bytesN(new Uint8Array(31), 32), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
  });

  test('length-prefixed fields over their limit or their prefix are TOO_LARGE', () => {
    assert.throws(() => new Writer().shortBytes(new Uint8Array(256)), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.throws(() => new Writer().shortBytes(new Uint8Array(11), 10), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.throws(() => new Writer().longBytes(new Uint8Array(0x10000)), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.throws(() => new Writer().longBytes(new Uint8Array(101), 100), (e) => ProtocolError.is(e, 'TOO_LARGE'));
  });
});

describe('Reader on hostile input', () => {
  test('reading past the end is TRUNCATED', () => {
    assert.throws(() => new Reader(new Uint8Array(0)).u8(), (e) => ProtocolError.is(e, 'TRUNCATED'));
    assert.throws(() => new Reader(new Uint8Array(1)).u16(), (e) => ProtocolError.is(e, 'TRUNCATED'));
    assert.throws(() => new Reader(new Uint8Array(3)).u32(), (e) => ProtocolError.is(e, 'TRUNCATED'));
    assert.throws(() => new Reader(new Uint8Array(7)).u64(), (e) => ProtocolError.is(e, 'TRUNCATED'));
    assert.throws(() => new Reader(new Uint8Array(5)).bytesN(6), (e) => ProtocolError.is(e, 'TRUNCATED'));
  });

  test('a u64 above the safe-integer range is BAD_VALUE', () => {
    const bytes = new Uint8Array([0x00, 0x20, 0, 0, 0, 0, 0, 0]);
    assert.throws(() => new Reader(bytes).u64(), (e) => ProtocolError.is(e, 'BAD_VALUE'));
    assert.equal(new Reader(new Uint8Array([0x00, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])).u64(), Number.MAX_SAFE_INTEGER);
  });

  test('a declared length over the limit is TOO_LARGE, one past the input is TRUNCATED, and neither allocates', () => {
    const hostile = new Uint8Array([0xff, 0xff, 1, 2, 3]);
    const sizes = allocationsDuring(() => {
      assert.throws(() => new Reader(hostile).longBytes(1000), (e) => ProtocolError.is(e, 'TOO_LARGE'));
      assert.throws(() => new Reader(hostile).longBytes(0xffff), (e) => ProtocolError.is(e, 'TRUNCATED'));
      assert.throws(() => new Reader(new Uint8Array([0xff, 1])).shortBytes(0xff), (e) => ProtocolError.is(e, 'TRUNCATED'));
      assert.throws(() => new Reader(new Uint8Array([0xff, 1])).shortBytes(32), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    });
    assert.deepEqual(sizes.filter((n) => n > 16), []);
  });

  test('end() with bytes left is TRAILING', () => {
    const r = new Reader(new Uint8Array([1, 2]));
    r.u8();
    assert.throws(() => r.end(), (e) => ProtocolError.is(e, 'TRAILING'));
    r.u8();
    r.end();
  });

  test('any sequence of reads over arbitrary bytes throws only ProtocolError', () => {
    const op = fc.constantFrom('u8', 'u16', 'u32', 'u64', 'bytesN', 'short', 'long', 'end');
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), fc.array(fc.tuple(op, fc.nat({ max: 0xffff })), { maxLength: 16 }), (bytes, ops) => {
        const r = new Reader(bytes);
        assertOnlyProtocolError(() => {
          for (const [o, n] of ops) {
            if (o === 'u8') r.u8();
            else if (o === 'u16') r.u16();
            else if (o === 'u32') r.u32();
            else if (o === 'u64') r.u64();
            else if (o === 'bytesN') r.bytesN(n);
            else if (o === 'short') r.shortBytes(n);
            else if (o === 'long') r.longBytes(n);
            else r.end();
          }
        });
        assert.ok(r.remaining >= 0 && r.remaining <= bytes.length);
      }),
      { numRuns: 3000 },
    );
  });
});
