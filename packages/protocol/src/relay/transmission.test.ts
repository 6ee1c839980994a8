// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that client and server transmissions and the blocks carrying them round-trip, that packBlocks keeps order in as few BLOCK_SIZE blocks as fit, and that their decoders throw only ProtocolError.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import {
  AUTHENTICATOR_LENGTH,
  BLOCK_CAPACITY,
  BLOCK_SIZE,
  CORR_ID_LENGTH,
  ID_LENGTH,
  MAX_TRANSMISSIONS_PER_BLOCK,
  ProtocolError,
  SESSION_ID_LENGTH,
  SIGNATURE_LENGTH,
  authorizedBytes,
  decodeBlock,
  decodeClientTransmission,
  decodeServerTransmission,
  encodeBlock,
  encodeClientTransmission,
  encodeServerTransmission,
  pad,
  packBlocks,
  BlockPacker,
  toHex,
  transmissionCost,
  useAuthorizedBytes,
} from '@murmure/protocol';
import type { Authorization, ClientTransmission, ServerTransmission } from '@murmure/protocol';

// ---- helpers (each test file is self-contained) ----

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

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
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

/** fc.record with ordinary prototypes, so decoded objects deep-equal generated ones. */
const rec = <T>(model: { [K in keyof T]: fc.Arbitrary<T[K]> }): fc.Arbitrary<T> => fc.record(model, { noNullPrototype: true }) as fc.Arbitrary<T>;

const bytesN = (n: number): fc.Arbitrary<Uint8Array> => fc.uint8Array({ minLength: n, maxLength: n });

type Mutation = Readonly<{ kind: 'flip' | 'truncate' | 'extend' | 'insert' | 'set'; pos: number; bit: number; extra: Uint8Array }>;

const mutation: fc.Arbitrary<Mutation> = rec({
  kind: fc.constantFrom('flip' as const, 'truncate' as const, 'extend' as const, 'insert' as const, 'set' as const),
  pos: fc.oneof(fc.nat({ max: 80 }), fc.nat()),
  bit: fc.nat({ max: 7 }),
  extra: fc.uint8Array({ minLength: 1, maxLength: 16 }),
});

function mutate(b: Uint8Array, m: Mutation): Uint8Array {
  const at = b.length === 0 ? 0 : m.pos % b.length;
  const c = b.slice();
  switch (m.kind) {
    case 'flip':
      if (c.length > 0) c[at] = (c[at] ?? 0) ^ (1 << m.bit);
      return c;
    case 'set':
      if (c.length > 0) c[at] = m.extra[0] ?? 0;
      return c;
    case 'truncate':
      return c.subarray(0, at);
    case 'extend':
      return concat(c, m.extra);
    case 'insert':
      return concat(c.subarray(0, at), m.extra, c.subarray(at));
  }
}

/** Valid encodings with one to three bit flips, truncations, extensions, insertions or overwrites. */
const mutated = (valid: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> =>
  fc.tuple(valid, fc.array(mutation, { minLength: 1, maxLength: 3 })).map(([b, ms]) => ms.reduce(mutate, b));

/** Blocks with a few bytes changed, mostly near the front where the content is. */
const mutatedBlock = (valid: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> =>
  fc.tuple(valid, fc.array(fc.tuple(fc.oneof(fc.nat({ max: 96 }), fc.nat({ max: BLOCK_SIZE - 1 })), fc.nat({ max: 7 })), { minLength: 1, maxLength: 3 })).map(([b, flips]) => {
    const c = b.slice();
    for (const [at, bit] of flips) c[at] = (c[at] ?? 0) ^ (1 << bit);
    return c;
  });

// ---- arbitraries ----

const auth: fc.Arbitrary<Authorization> = fc.oneof(
  fc.constant({ kind: 'none' as const }),
  rec({ kind: fc.constant('signature' as const), bytes: bytesN(SIGNATURE_LENGTH) }),
  rec({ kind: fc.constant('authenticator' as const), bytes: bytesN(AUTHENTICATOR_LENGTH) }),
);
const entityId = fc.oneof(fc.constant(new Uint8Array(0)), bytesN(ID_LENGTH));
const payload = fc.oneof(
  { arbitrary: fc.uint8Array({ minLength: 1, maxLength: 64 }), weight: 4 },
  { arbitrary: fc.tuple(fc.integer({ min: 1, max: 16_000 }), fc.integer()).map(([n, s]) => seeded(n, s)), weight: 1 },
);

const clientTransmission: fc.Arbitrary<ClientTransmission> = rec({ auth, corrId: bytesN(CORR_ID_LENGTH), entityId, command: payload });
const serverTransmission: fc.Arbitrary<ServerTransmission> = rec({
  corrId: fc.oneof(fc.constant(new Uint8Array(0)), bytesN(CORR_ID_LENGTH)),
  entityId,
  response: payload,
});

/** Opaque transmissions of any size that fits a block on its own. */
const rawTransmission = fc.oneof(
  { arbitrary: fc.uint8Array({ minLength: 1, maxLength: 40 }), weight: 5 },
  { arbitrary: fc.tuple(fc.integer({ min: 0, max: BLOCK_CAPACITY - 2 }), fc.integer()).map(([n, s]) => seeded(n, s)), weight: 1 },
  { arbitrary: fc.integer().map((s) => seeded(BLOCK_CAPACITY - 2, s)), weight: 1 },
);

/** A list of transmissions that fits one block. */
const blockContents = fc
  .array(fc.oneof({ arbitrary: fc.uint8Array({ maxLength: 60 }), weight: 8 }, { arbitrary: fc.tuple(fc.integer({ min: 0, max: 4000 }), fc.integer()).map(([n, s]) => seeded(n, s)), weight: 1 }), {
    minLength: 1,
    maxLength: MAX_TRANSMISSIONS_PER_BLOCK,
  })
  .filter((ts) => ts.reduce((n, t) => n + transmissionCost(t), 0) <= BLOCK_CAPACITY);

// ---- tests ----

describe('transmissions round trip', () => {
  test('decodeClientTransmission(encodeClientTransmission(t)) equals t for all three auth kinds', () => {
    const kinds = new Set(fc.sample(auth, { numRuns: 300, seed: 2 }).map((a) => a.kind));
    assert.deepEqual([...kinds].sort(), ['authenticator', 'none', 'signature']);
    fc.assert(
      fc.property(clientTransmission, (t) => {
        assert.deepEqual(decodeClientTransmission(encodeClientTransmission(t)), t);
      }),
      { numRuns: 3000 },
    );
  });

  test('decodeServerTransmission(encodeServerTransmission(t)) equals t with and without corrId', () => {
    fc.assert(
      fc.property(serverTransmission, (t) => {
        assert.deepEqual(decodeServerTransmission(encodeServerTransmission(t)), t);
      }),
      { numRuns: 3000 },
    );
  });

  test('the client layout is auth kind, auth bytes, corrId, length-prefixed entity, command', () => {
    const corrId = new Uint8Array(CORR_ID_LENGTH).fill(0xc0);
    const entity = new Uint8Array(ID_LENGTH).fill(0xe0);
    const none = encodeClientTransmission({ auth: { kind: 'none' }, corrId, entityId: new Uint8Array(0), command: new Uint8Array([0x0b]) });
    assert.equal(toHex(none), '00' + 'c0'.repeat(24) + '00' + '0b');
    const mac = encodeClientTransmission({ auth: { kind: 'authenticator', bytes: new Uint8Array(32).fill(0xaa) }, corrId, entityId: entity, command: new Uint8Array([3]) });
    assert.equal(toHex(mac), '02' + 'aa'.repeat(32) + 'c0'.repeat(24) + '18' + 'e0'.repeat(24) + '03');
    const server = encodeServerTransmission({ corrId: new Uint8Array(0), entityId: entity, response: new Uint8Array([0x84]) });
    assert.equal(toHex(server), '00' + '18' + 'e0'.repeat(24) + '84');
  });
});

describe('transmission edge cases', () => {
  const corrId = new Uint8Array(CORR_ID_LENGTH);
  const entity = new Uint8Array(ID_LENGTH);

  test('every auth kind byte other than 0, 1, 2 is BAD_TAG', () => {
    for (let kind = 3; kind < 256; kind++) {
      const bytes = concat(new Uint8Array([kind]), new Uint8Array(100));
      assert.throws(() => decodeClientTransmission(bytes), (e) => ProtocolError.is(e, 'BAD_TAG'), `kind ${kind}`);
    }
  });

  test('a transmission with nothing after the entity is TRUNCATED', () => {
    assert.throws(() => decodeClientTransmission(concat(new Uint8Array([0]), corrId, new Uint8Array([0]))), (e) => ProtocolError.is(e, 'TRUNCATED'));
    assert.throws(() => decodeServerTransmission(new Uint8Array([0, 0])), (e) => ProtocolError.is(e, 'TRUNCATED'));
  });

  test('an entity id that is neither empty nor ID_LENGTH is BAD_LENGTH, longer than ID_LENGTH is TOO_LARGE', () => {
    const withEntity = (n: number): Uint8Array => concat(new Uint8Array([0]), corrId, new Uint8Array([n]), new Uint8Array(n + 1));
    assert.throws(() => decodeClientTransmission(withEntity(5)), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
    assert.throws(() => decodeClientTransmission(withEntity(ID_LENGTH + 1)), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.throws(() => decodeServerTransmission(concat(new Uint8Array([0, 23]), new Uint8Array(24))), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
  });

  test('a server corrId that is neither empty nor CORR_ID_LENGTH is refused both ways', () => {
    assert.throws(() => decodeServerTransmission(concat(new Uint8Array([5]), new Uint8Array(10))), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
    assert.throws(() => decodeServerTransmission(concat(new Uint8Array([25]), new Uint8Array(30))), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.throws(() => encodeServerTransmission({ corrId: new Uint8Array(5), entityId: entity, response: new Uint8Array([0x82]) }), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
  });

  test('fixed-size fields of the wrong length are BAD_LENGTH on encode', () => {
    const cmd = new Uint8Array([3]);
    assert.throws(() => encodeClientTransmission({ auth: { kind: 'signature', bytes: new Uint8Array(63) }, corrId, entityId: entity, command: cmd }), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
    assert.throws(() => encodeClientTransmission({ auth: { kind: 'authenticator', bytes: new Uint8Array(64) }, corrId, entityId: entity, command: cmd }), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
    assert.throws(() => encodeClientTransmission({ auth: { kind: 'none' }, corrId: new Uint8Array(23), entityId: entity, command: cmd }), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
    assert.throws(() => encodeClientTransmission({ auth: { kind: 'none' }, corrId, entityId: new Uint8Array(10), command: cmd }), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
    assert.throws(() => encodeServerTransmission({ corrId, entityId: new Uint8Array(25), response: cmd }), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
  });

  test('authorizedBytes is the domain label, session id, corrId, length-prefixed entity and command', () => {
    const sessionId = new Uint8Array(SESSION_ID_LENGTH).fill(0x5e);
    const c = new Uint8Array(CORR_ID_LENGTH).fill(0xc0);
    const got = authorizedBytes(sessionId, c, entity, new Uint8Array([7]));
    assert.equal(toHex(got), Buffer.from('MURMURE-AUTH-1').toString('hex') + '5e'.repeat(32) + 'c0'.repeat(24) + '18' + '00'.repeat(24) + '07');
    // The entity's length prefix keeps "no entity + command" apart from "entity + shorter command".
    const noEntity = authorizedBytes(sessionId, c, new Uint8Array(0), concat(entity, new Uint8Array([7])));
    assert.notDeepEqual(noEntity, got);
    assert.throws(() => authorizedBytes(new Uint8Array(31), c, entity, new Uint8Array([7])), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
  });

  test('useAuthorizedBytes hands over the bytes of authorizedBytes, and refuses what it refuses', () => {
    fc.assert(
      fc.property(bytesN(SESSION_ID_LENGTH), bytesN(CORR_ID_LENGTH), entityId, payload, (sessionId, c, e, command) => {
        assert.equal(useAuthorizedBytes(sessionId, c, e, command, toHex), toHex(authorizedBytes(sessionId, c, e, command)));
      }),
      { numRuns: 500 },
    );
    const c = new Uint8Array(CORR_ID_LENGTH);
    let called = false;
    assert.throws(
      () =>
        useAuthorizedBytes(new Uint8Array(31), c, entity, new Uint8Array([7]), () => {
          called = true;
        }),
      (e) => ProtocolError.is(e, 'BAD_LENGTH'),
    );
    assert.equal(called, false);
  });
});

describe('blocks', () => {
  test('decodeBlock(encodeBlock(ts)) equals ts, and every block is exactly BLOCK_SIZE', () => {
    fc.assert(
      fc.property(blockContents, (ts) => {
        const block = encodeBlock(ts);
        assert.equal(block.length, BLOCK_SIZE);
        assert.deepEqual(decodeBlock(block), ts);
      }),
      { numRuns: 1000 },
    );
  });

  test('packBlocks keeps order, fills each block before the next, and every block is exactly BLOCK_SIZE', () => {
    fc.assert(
      fc.property(fc.array(rawTransmission, { minLength: 0, maxLength: 150 }), (ts) => {
        const blocks = packBlocks(ts);
        assert.ok(blocks.every((b) => b.length === BLOCK_SIZE));
        const decoded = blocks.map((b) => decodeBlock(b));
        assert.deepEqual(decoded.flat(), ts);
        for (const d of decoded) {
          assert.ok(d.length >= 1 && d.length <= MAX_TRANSMISSIONS_PER_BLOCK);
        }
        // As few blocks as fit in order: the first transmission of each block did not fit the one before.
        for (let i = 1; i < decoded.length; i++) {
          const prev = decoded[i - 1] as Uint8Array[];
          const first = (decoded[i] as Uint8Array[])[0] as Uint8Array;
          const used = prev.reduce((n, t) => n + transmissionCost(t), 0);
          assert.ok(prev.length === MAX_TRANSMISSIONS_PER_BLOCK || used + transmissionCost(first) > BLOCK_CAPACITY);
        }
      }),
      { numRuns: 300 },
    );
  });

  test('BlockPacker hands out each block as soon as the next transmission does not fit it, packed as packBlocks packs', () => {
    fc.assert(
      fc.property(fc.array(rawTransmission, { minLength: 0, maxLength: 150 }), (ts) => {
        const packer = new BlockPacker();
        const early: Uint8Array[] = [];
        ts.forEach((t, i) => {
          const full = packer.push(t);
          if (full === null) return;
          early.push(full);
          // A closed block holds exactly the transmissions before this one that the earlier blocks do not.
          assert.deepEqual(early.map((b) => decodeBlock(b)).flat(), ts.slice(0, i));
        });
        assert.equal(packer.isEmpty, ts.length === 0);
        const last = packer.take();
        assert.equal(packer.isEmpty, true);
        assert.equal(packer.take(), null);
        assert.deepEqual(last === null ? early : [...early, last], packBlocks(ts));
      }),
      { numRuns: 300 },
    );
  });

  test('BlockPacker refuses a transmission too large for a block and keeps what it holds', () => {
    const packer = new BlockPacker();
    const held = seeded(100, 1);
    assert.equal(packer.push(held), null);
    assert.throws(() => packer.push(seeded(BLOCK_CAPACITY - 1, 9)), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    const block = packer.take();
    assert.ok(block !== null);
    assert.deepEqual(decodeBlock(block), [held]);
  });

  test('many tiny transmissions split at MAX_TRANSMISSIONS_PER_BLOCK', () => {
    const ts = Array.from({ length: MAX_TRANSMISSIONS_PER_BLOCK * 2 + 1 }, (_, i) => new Uint8Array([i & 0xff]));
    const blocks = packBlocks(ts);
    assert.deepEqual(
      blocks.map((b) => decodeBlock(b).length),
      [MAX_TRANSMISSIONS_PER_BLOCK, MAX_TRANSMISSIONS_PER_BLOCK, 1],
    );
  });

  test('a transmission of BLOCK_CAPACITY - 2 bytes fills a block; one byte more is TOO_LARGE', () => {
    const fits = seeded(BLOCK_CAPACITY - 2, 9);
    const [block] = packBlocks([fits]);
    assert.ok(block !== undefined);
    assert.deepEqual(decodeBlock(block), [fits]);
    assert.throws(() => packBlocks([seeded(BLOCK_CAPACITY - 1, 9)]), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.throws(() => encodeBlock([seeded(BLOCK_CAPACITY - 1, 9)]), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.throws(() => encodeBlock([seeded(BLOCK_CAPACITY, 9)]), (e) => ProtocolError.is(e, 'TOO_LARGE'));
  });

  test('encodeBlock refuses no transmissions (BAD_VALUE) and too many (TOO_LARGE)', () => {
    assert.throws(() => encodeBlock([]), (e) => ProtocolError.is(e, 'BAD_VALUE'));
    const many = Array.from({ length: MAX_TRANSMISSIONS_PER_BLOCK + 1 }, () => new Uint8Array([1]));
    assert.throws(() => encodeBlock(many), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.deepEqual(packBlocks([]), []);
  });

  test('decodeBlock refuses a count of 0, a count over the limit, leftover content, and a block of the wrong size', () => {
    assert.throws(() => decodeBlock(pad(new Uint8Array([0]), BLOCK_SIZE)), (e) => ProtocolError.is(e, 'BAD_VALUE'));
    const over = concat(new Uint8Array([MAX_TRANSMISSIONS_PER_BLOCK + 1]), ...Array.from({ length: MAX_TRANSMISSIONS_PER_BLOCK + 1 }, () => new Uint8Array([0, 1, 9])));
    assert.throws(() => decodeBlock(pad(over, BLOCK_SIZE)), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.throws(() => decodeBlock(pad(new Uint8Array([1, 0, 1, 9, 0xee]), BLOCK_SIZE)), (e) => ProtocolError.is(e, 'TRAILING'));
    assert.throws(() => decodeBlock(pad(new Uint8Array([2, 0, 1, 9]), BLOCK_SIZE)), (e) => ProtocolError.is(e, 'TRUNCATED'));
    assert.throws(() => decodeBlock(pad(new Uint8Array([1, 0xff, 0xff]), BLOCK_SIZE)), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    const good = encodeBlock([new Uint8Array([1])]);
    assert.throws(() => decodeBlock(good.subarray(1)), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
    assert.throws(() => decodeBlock(concat(good, new Uint8Array([0x23]))), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
  });
});

describe('transmission and block fuzz', () => {
  test('decodeClientTransmission and decodeServerTransmission of arbitrary bytes throw only ProtocolError, and what decodes re-encodes the same', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        assertRefusedOrCanonical(bytes, decodeClientTransmission, encodeClientTransmission);
        assertRefusedOrCanonical(bytes, decodeServerTransmission, encodeServerTransmission);
      }),
      { numRuns: 5000 },
    );
  });

  test('mutated valid transmissions throw only ProtocolError, and what decodes re-encodes the same', () => {
    fc.assert(
      fc.property(mutated(clientTransmission.map(encodeClientTransmission)), mutated(serverTransmission.map(encodeServerTransmission)), (c, s) => {
        assertRefusedOrCanonical(c, decodeClientTransmission, encodeClientTransmission);
        assertRefusedOrCanonical(s, decodeServerTransmission, encodeServerTransmission);
      }),
      { numRuns: 3000 },
    );
  });

  test('decodeBlock of arbitrary bytes, arbitrary block-sized bytes and arbitrary padded content throws only ProtocolError', () => {
    const candidates = fc.oneof(
      fc.uint8Array({ maxLength: 64 }),
      fc.integer().map((s) => seeded(BLOCK_SIZE, s)),
      fc.uint8Array({ maxLength: 600 }).map((c) => pad(c, BLOCK_SIZE)),
      fc.tuple(fc.integer({ min: 1, max: 80 }), fc.uint8Array({ maxLength: 400 })).map(([n, rest]) => pad(concat(new Uint8Array([n]), rest), BLOCK_SIZE)),
    );
    fc.assert(
      fc.property(candidates, (block) => {
        assertRefusedOrCanonical(block, decodeBlock, encodeBlock);
      }),
      { numRuns: 3000 },
    );
  });

  test('mutated valid blocks throw only ProtocolError, and what decodes re-encodes the same', () => {
    fc.assert(
      fc.property(fc.oneof(mutatedBlock(blockContents.map(encodeBlock)), mutated(blockContents.map(encodeBlock))), (block) => {
        assertRefusedOrCanonical(block, decodeBlock, encodeBlock);
      }),
      { numRuns: 2000 },
    );
  });
});
