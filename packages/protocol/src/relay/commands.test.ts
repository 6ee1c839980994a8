// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that every command and response round-trips, that hostile bytes give only ProtocolError, and (threat N1) that each packs into a block of exactly BLOCK_SIZE.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import {
  AUTHENTICATOR_LENGTH,
  BLOCK_SIZE,
  CORR_ID_LENGTH,
  CommandTag,
  ErrorCodes,
  ID_LENGTH,
  KEY_LENGTH,
  MAX_BOXED_BODY,
  MAX_LINK_DATA,
  MAX_MESSAGE_BODY,
  MAX_PASSWORD_LENGTH,
  ProtocolError,
  ResponseTag,
  SIGNATURE_LENGTH,
  V_CREATE_PASSWORD,
  V_INITIAL,
  decodeBlock,
  decodeClientTransmission,
  decodeCommand,
  decodeResponse,
  decodeServerTransmission,
  encodeClientTransmission,
  encodeCommand,
  encodeResponse,
  encodeResponseTransmission,
  encodeServerTransmission,
  packBlocks,
} from '@murmure/protocol';
import type { Authorization, Command, ErrorCode, Response } from '@murmure/protocol';

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

/** Mostly short byte strings, sometimes long ones up to `max`, sometimes exactly `max`. */
const bytesUpTo = (max: number): fc.Arbitrary<Uint8Array> =>
  fc.oneof(
    { arbitrary: fc.uint8Array({ maxLength: 48 }), weight: 6 },
    { arbitrary: fc.tuple(fc.integer({ min: 0, max }), fc.integer()).map(([n, s]) => seeded(n, s)), weight: 2 },
    { arbitrary: fc.integer().map((s) => seeded(max, s)), weight: 1 },
  );

type Mutation = Readonly<{ kind: 'flip' | 'truncate' | 'extend' | 'insert' | 'set'; pos: number; bit: number; extra: Uint8Array }>;

const mutation: fc.Arbitrary<Mutation> = rec({
  kind: fc.constantFrom('flip', 'truncate', 'extend', 'insert', 'set'),
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

// ---- arbitraries ----

const key = bytesN(KEY_LENGTH);
const id = bytesN(ID_LENGTH);

const command: fc.Arbitrary<Command> = fc.oneof(
  rec({ type: fc.constant('NEW' as const), rcvSigKey: key, rcvAuthKey: key, rcvDhKey: key }),
  rec({ type: fc.constant('NEW' as const), rcvSigKey: key, rcvAuthKey: key, rcvDhKey: key, password: fc.uint8Array({ minLength: 1, maxLength: MAX_PASSWORD_LENGTH }) }),
  rec({ type: fc.constant('KEY' as const), sndAuthKey: key }),
  rec({ type: fc.constant('SUB' as const) }),
  rec({ type: fc.constant('ACK' as const), msgId: id }),
  rec({ type: fc.constant('GET' as const) }),
  rec({ type: fc.constant('OFF' as const) }),
  rec({ type: fc.constant('DEL' as const) }),
  rec({ type: fc.constant('SEND' as const), flags: fc.integer({ min: 0, max: 0xff }), body: bytesUpTo(MAX_MESSAGE_BODY) }),
  rec({ type: fc.constant('LSET' as const), linkId: id, data: bytesUpTo(MAX_LINK_DATA) }),
  rec({ type: fc.constant('LGET' as const) }),
  rec({ type: fc.constant('PING' as const) }),
);

const errorCode = fc.constantFrom(...(Object.keys(ErrorCodes) as ErrorCode[]));

const response: fc.Arbitrary<Response> = fc.oneof(
  rec({ type: fc.constant('IDS' as const), rcvId: id, sndId: id, srvDhKey: key }),
  rec({ type: fc.constant('OK' as const) }),
  rec({ type: fc.constant('MSG' as const), msgId: id, body: bytesUpTo(MAX_BOXED_BODY) }),
  rec({ type: fc.constant('END' as const) }),
  rec({ type: fc.constant('ERR' as const), code: errorCode }),
  rec({ type: fc.constant('LNK' as const), sndId: id, data: bytesUpTo(MAX_LINK_DATA) }),
  rec({ type: fc.constant('PONG' as const) }),
);

const auth: fc.Arbitrary<Authorization> = fc.oneof(
  fc.constant({ kind: 'none' as const }),
  rec({ kind: fc.constant('signature' as const), bytes: bytesN(SIGNATURE_LENGTH) }),
  rec({ kind: fc.constant('authenticator' as const), bytes: bytesN(AUTHENTICATOR_LENGTH) }),
);
const entityId = fc.oneof(fc.constant(new Uint8Array(0)), id);
const serverCorrId = fc.oneof(fc.constant(new Uint8Array(0)), bytesN(CORR_ID_LENGTH));

const commandTags = new Set<number>(Object.values(CommandTag));
const responseTags = new Set<number>(Object.values(ResponseTag));

// ---- tests ----

describe('commands and responses round trip', () => {
  test('the arbitraries cover every command, every response and every error code', () => {
    const seen = new Set(fc.sample(command, { numRuns: 2000, seed: 1 }).map((c) => c.type));
    assert.deepEqual([...seen].sort(), Object.keys(CommandTag).sort());
    const seenR = new Set(fc.sample(response, { numRuns: 2000, seed: 1 }).map((r) => r.type));
    assert.deepEqual([...seenR].sort(), Object.keys(ResponseTag).sort());
    const seenE = new Set(fc.sample(errorCode, { numRuns: 2000, seed: 1 }));
    assert.equal(seenE.size, Object.keys(ErrorCodes).length);
  });

  test('decodeCommand(encodeCommand(c)) equals c for every variant', () => {
    fc.assert(
      fc.property(command, (c) => {
        const bytes = encodeCommand(c);
        assert.equal(bytes[0], CommandTag[c.type]);
        assert.deepEqual(decodeCommand(bytes), c);
      }),
      { numRuns: 3000 },
    );
  });

  test('in version 1 every command but a NEW with a password round-trips, in the layout of version 2 but for NEW', () => {
    fc.assert(
      fc.property(command, (c) => {
        if (c.type === 'NEW' && c.password !== undefined) {
          assert.throws(() => encodeCommand(c, V_INITIAL), (e) => ProtocolError.is(e, 'BAD_VALUE'), 'version 1 has no password field');
          return;
        }
        const bytes = encodeCommand(c, V_INITIAL);
        assert.deepEqual(decodeCommand(bytes, V_INITIAL), c);
        if (c.type === 'NEW') {
          assert.deepEqual(encodeCommand(c, V_CREATE_PASSWORD), concat(bytes, new Uint8Array([0])), 'version 2 adds an empty password field');
          assert.throws(() => decodeCommand(bytes, V_CREATE_PASSWORD), (e) => ProtocolError.is(e, 'TRUNCATED'), "version 1's NEW is short in version 2");
        } else assert.deepEqual(encodeCommand(c, V_CREATE_PASSWORD), bytes);
      }),
      { numRuns: 2000 },
    );
  });

  test('a NEW password is 1 to MAX_PASSWORD_LENGTH bytes: an empty one is no password, a longer one is TOO_LARGE', () => {
    const k = new Uint8Array(KEY_LENGTH);
    const keys = { rcvSigKey: k, rcvAuthKey: k, rcvDhKey: k };
    assert.throws(() => encodeCommand({ type: 'NEW', ...keys, password: new Uint8Array(0) }), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
    assert.throws(() => encodeCommand({ type: 'NEW', ...keys, password: new Uint8Array(MAX_PASSWORD_LENGTH + 1) }), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    const head = encodeCommand({ type: 'NEW', ...keys }, V_INITIAL);
    assert.throws(() => decodeCommand(concat(head, new Uint8Array([MAX_PASSWORD_LENGTH + 1]), new Uint8Array(MAX_PASSWORD_LENGTH + 1))), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.deepEqual(decodeCommand(concat(head, new Uint8Array([0]))), { type: 'NEW', ...keys });
    const most = new Uint8Array(MAX_PASSWORD_LENGTH).fill(0x61);
    assert.deepEqual(decodeCommand(concat(head, new Uint8Array([MAX_PASSWORD_LENGTH]), most)), { type: 'NEW', ...keys, password: most });
  });

  test('decodeResponse(encodeResponse(r)) equals r for every variant', () => {
    fc.assert(
      fc.property(response, (r) => {
        const bytes = encodeResponse(r);
        assert.equal(bytes[0], ResponseTag[r.type]);
        assert.deepEqual(decodeResponse(bytes), r);
      }),
      { numRuns: 3000 },
    );
  });

  test('encodeResponseTransmission gives the bytes of encodeServerTransmission over encodeResponse', () => {
    fc.assert(
      fc.property(response, serverCorrId, entityId, (r, corrId, entity) => {
        const expected = encodeServerTransmission({ corrId, entityId: entity, response: encodeResponse(r) });
        assert.deepEqual(encodeResponseTransmission(corrId, entity, r), expected);
      }),
      { numRuns: 2000 },
    );
  });

  test('wire error codes are distinct bytes and each ERR round-trips', () => {
    const bytes = Object.values(ErrorCodes);
    assert.equal(new Set(bytes).size, bytes.length);
    for (const code of Object.keys(ErrorCodes) as ErrorCode[]) {
      const enc = encodeResponse({ type: 'ERR', code });
      assert.deepEqual([...enc], [ResponseTag.ERR, ErrorCodes[code]]);
      assert.deepEqual(decodeResponse(enc), { type: 'ERR', code });
    }
  });
});

describe('command and response edge cases', () => {
  test('every byte that is not a command tag is BAD_TAG', () => {
    for (let tag = 0; tag < 256; tag++) {
      if (commandTags.has(tag)) continue;
      assert.throws(() => decodeCommand(new Uint8Array([tag, 0, 0, 0])), (e) => ProtocolError.is(e, 'BAD_TAG'), `tag ${tag}`);
    }
  });

  test('every byte that is not a response tag is BAD_TAG', () => {
    for (let tag = 0; tag < 256; tag++) {
      if (responseTags.has(tag)) continue;
      assert.throws(() => decodeResponse(new Uint8Array([tag, 0, 0, 0])), (e) => ProtocolError.is(e, 'BAD_TAG'), `tag ${tag}`);
    }
  });

  test('an ERR with an unknown error code is BAD_TAG', () => {
    const known = new Set<number>(Object.values(ErrorCodes));
    for (let b = 0; b < 256; b++) {
      if (known.has(b)) continue;
      assert.throws(() => decodeResponse(new Uint8Array([ResponseTag.ERR, b])), (e) => ProtocolError.is(e, 'BAD_TAG'), `code ${b}`);
    }
  });

  test('bytes after a complete command or response are TRAILING', () => {
    fc.assert(
      fc.property(command, response, fc.uint8Array({ minLength: 1, maxLength: 8 }), (c, r, extra) => {
        assert.throws(() => decodeCommand(concat(encodeCommand(c), extra)), (e) => ProtocolError.is(e, 'TRAILING'));
        assert.throws(() => decodeResponse(concat(encodeResponse(r), extra)), (e) => ProtocolError.is(e, 'TRAILING'));
      }),
      { numRuns: 1000 },
    );
  });

  test('every strict prefix of a command or response is TRUNCATED', () => {
    fc.assert(
      fc.property(command, response, fc.nat(), (c, r, cut) => {
        const ce = encodeCommand(c);
        const re = encodeResponse(r);
        assert.throws(() => decodeCommand(ce.subarray(0, cut % ce.length)), (e) => ProtocolError.is(e, 'TRUNCATED'));
        assert.throws(() => decodeResponse(re.subarray(0, cut % re.length)), (e) => ProtocolError.is(e, 'TRUNCATED'));
      }),
      { numRuns: 1000 },
    );
  });

  test('a SEND body over MAX_MESSAGE_BODY is TOO_LARGE on encode and on decode; MAX_MESSAGE_BODY itself passes', () => {
    const atMax: Command = { type: 'SEND', flags: 0, body: seeded(MAX_MESSAGE_BODY, 7) };
    assert.deepEqual(decodeCommand(encodeCommand(atMax)), atMax);
    const over = seeded(MAX_MESSAGE_BODY + 1, 7);
    assert.throws(() => encodeCommand({ type: 'SEND', flags: 0, body: over }), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    const wire = concat(new Uint8Array([CommandTag.SEND, 0, over.length >>> 8, over.length & 0xff]), over);
    assert.throws(() => decodeCommand(wire), (e) => ProtocolError.is(e, 'TOO_LARGE'));
  });

  test('LSET and LNK data over MAX_LINK_DATA, and a MSG body over MAX_BOXED_BODY, are TOO_LARGE both ways', () => {
    const data = seeded(MAX_LINK_DATA + 1, 3);
    const linkId = new Uint8Array(ID_LENGTH);
    assert.throws(() => encodeCommand({ type: 'LSET', linkId, data }), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.throws(() => encodeResponse({ type: 'LNK', sndId: linkId, data }), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    const len = new Uint8Array([data.length >>> 8, data.length & 0xff]);
    assert.throws(() => decodeCommand(concat(new Uint8Array([CommandTag.LSET]), linkId, len, data)), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.throws(() => decodeResponse(concat(new Uint8Array([ResponseTag.LNK]), linkId, len, data)), (e) => ProtocolError.is(e, 'TOO_LARGE'));

    const body = seeded(MAX_BOXED_BODY + 1, 4);
    assert.throws(() => encodeResponse({ type: 'MSG', msgId: linkId, body }), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    const blen = new Uint8Array([body.length >>> 8, body.length & 0xff]);
    assert.throws(() => decodeResponse(concat(new Uint8Array([ResponseTag.MSG]), linkId, blen, body)), (e) => ProtocolError.is(e, 'TOO_LARGE'));
  });

  test('fixed-size fields of the wrong length are BAD_LENGTH on encode', () => {
    const k31 = new Uint8Array(31);
    const k32 = new Uint8Array(32);
    assert.throws(() => encodeCommand({ type: 'NEW', rcvSigKey: k32, rcvAuthKey: k32, rcvDhKey: k31 }), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
    assert.throws(() => encodeCommand({ type: 'KEY', sndAuthKey: k31 }), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
    assert.throws(() => encodeCommand({ type: 'ACK', msgId: k32 }), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
    assert.throws(() => encodeResponse({ type: 'IDS', rcvId: k32, sndId: k32, srvDhKey: k32 }), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
  });

  test('out-of-range SEND flags are BAD_VALUE on encode', () => {
    assert.throws(() => encodeCommand({ type: 'SEND', flags: 256, body: new Uint8Array(0) }), (e) => ProtocolError.is(e, 'BAD_VALUE'));
  });

  test('a declared length of 0xFFFF far past the input is refused without allocating', () => {
    const id0 = new Uint8Array(ID_LENGTH);
    const cases: [(b: Uint8Array) => unknown, Uint8Array, string][] = [
      [decodeCommand, new Uint8Array([CommandTag.SEND, 0, 0xff, 0xff, 1, 2]), 'TOO_LARGE'],
      [decodeCommand, concat(new Uint8Array([CommandTag.LSET]), id0, new Uint8Array([0xff, 0xff])), 'TOO_LARGE'],
      [decodeCommand, concat(new Uint8Array([CommandTag.LSET]), id0, new Uint8Array([MAX_LINK_DATA >>> 8, MAX_LINK_DATA & 0xff])), 'TRUNCATED'],
      [decodeResponse, concat(new Uint8Array([ResponseTag.MSG]), id0, new Uint8Array([0xff, 0xff])), 'TOO_LARGE'],
      [decodeResponse, concat(new Uint8Array([ResponseTag.MSG]), id0, new Uint8Array([MAX_BOXED_BODY >>> 8, MAX_BOXED_BODY & 0xff])), 'TRUNCATED'],
      [decodeResponse, concat(new Uint8Array([ResponseTag.LNK]), id0, new Uint8Array([0x3e, 0x00, 9])), 'TRUNCATED'],
    ];
    // Count every typed array and buffer the decoders construct while they refuse the input.
    const sizes: number[] = [];
    const RealU8 = globalThis.Uint8Array;
    const RealAB = globalThis.ArrayBuffer;
    const counting = <T extends object>(real: T): T =>
      new Proxy(real, {
        construct(target, args) {
          if (typeof args[0] === 'number') sizes.push(args[0]);
          return Reflect.construct(target as new (...a: unknown[]) => object, args) as object;
        },
      });
    const codes: string[] = [];
    let refused = -1;
    globalThis.Uint8Array = counting(RealU8);
    globalThis.ArrayBuffer = counting(RealAB);
    try {
      for (const [decode, bytes] of cases) {
        try {
          decode(bytes);
          codes.push('decoded');
        } catch (e) {
          codes.push(ProtocolError.is(e) ? e.code : `not a ProtocolError: ${String(e)}`);
        }
      }
      refused = sizes.length;
      // Control: an encoder does allocate, so the counter can see allocations.
      encodeCommand({ type: 'PING' });
    } finally {
      globalThis.Uint8Array = RealU8;
      globalThis.ArrayBuffer = RealAB;
    }
    assert.equal(refused, 0, `allocations while refusing: ${sizes.join(', ')}`);
    assert.ok(sizes.length > 0);
    assert.deepEqual(
      codes,
      cases.map(([, , code]) => code),
    );
  });

  test('decoded byte fields are views into the input, not copies', () => {
    const enc = encodeResponse({ type: 'MSG', msgId: new Uint8Array(ID_LENGTH).fill(1), body: new Uint8Array(100).fill(2) });
    const r = decodeResponse(enc);
    assert.ok(r.type === 'MSG');
    assert.equal(r.body.buffer, enc.buffer);
    assert.equal(r.msgId.buffer, enc.buffer);
  });
});

describe('command and response fuzz', () => {
  const arbitraryBytes = fc.oneof(
    fc.uint8Array({ maxLength: 160 }),
    fc.tuple(fc.constantFrom(...commandTags, ...responseTags), fc.uint8Array({ maxLength: 160 })).map(([t, rest]) => concat(new Uint8Array([t]), rest)),
  );

  test('decodeCommand and decodeResponse of arbitrary bytes throw only ProtocolError, and what decodes re-encodes to the same bytes', () => {
    fc.assert(
      fc.property(arbitraryBytes, (bytes) => {
        assertRefusedOrCanonical(bytes, decodeCommand, encodeCommand);
        assertRefusedOrCanonical(bytes, decodeResponse, encodeResponse);
      }),
      { numRuns: 5000 },
    );
  });

  test('mutated valid commands throw only ProtocolError, and what decodes re-encodes to the same bytes', () => {
    fc.assert(
      fc.property(mutated(command.map(encodeCommand)), (bytes) => {
        assertRefusedOrCanonical(bytes, decodeCommand, encodeCommand);
      }),
      { numRuns: 4000 },
    );
  });

  test('mutated valid responses throw only ProtocolError, and what decodes re-encodes to the same bytes', () => {
    fc.assert(
      fc.property(mutated(response.map(encodeResponse)), (bytes) => {
        assertRefusedOrCanonical(bytes, decodeResponse, encodeResponse);
      }),
      { numRuns: 4000 },
    );
  });
});

describe('threat N1: every command and response travels in a block of exactly BLOCK_SIZE bytes', () => {
  test('any command, with any authorisation, corrId and entity, packs into one BLOCK_SIZE block and back', () => {
    fc.assert(
      fc.property(command, auth, bytesN(CORR_ID_LENGTH), entityId, (c, a, corrId, entity) => {
        const t = encodeClientTransmission({ auth: a, corrId, entityId: entity, command: encodeCommand(c) });
        const blocks = packBlocks([t]);
        assert.equal(blocks.length, 1);
        assert.equal(blocks[0]?.length, BLOCK_SIZE);
        const [back] = decodeBlock(blocks[0] as Uint8Array);
        assert.deepEqual(decodeCommand(decodeClientTransmission(back as Uint8Array).command), c);
      }),
      { numRuns: 1500 },
    );
  });

  test('any response, errors and acks included, with or without corrId, packs into one BLOCK_SIZE block and back', () => {
    fc.assert(
      fc.property(response, serverCorrId, entityId, (r, corrId, entity) => {
        const t = encodeServerTransmission({ corrId, entityId: entity, response: encodeResponse(r) });
        const blocks = packBlocks([t]);
        assert.equal(blocks.length, 1);
        assert.equal(blocks[0]?.length, BLOCK_SIZE);
        const [back] = decodeBlock(blocks[0] as Uint8Array);
        assert.deepEqual(decodeResponse(decodeServerTransmission(back as Uint8Array).response), r);
      }),
      { numRuns: 1500 },
    );
  });

  test('the smallest and the largest transmissions give blocks of the same size', () => {
    const corrId = new Uint8Array(CORR_ID_LENGTH);
    const entity = new Uint8Array(ID_LENGTH);
    const smallest = encodeServerTransmission({ corrId: new Uint8Array(0), entityId: new Uint8Array(0), response: encodeResponse({ type: 'OK' }) });
    const ack = encodeClientTransmission({ auth: { kind: 'none' }, corrId, entityId: entity, command: encodeCommand({ type: 'ACK', msgId: entity }) });
    const largestSend = encodeClientTransmission({
      auth: { kind: 'signature', bytes: new Uint8Array(SIGNATURE_LENGTH) },
      corrId,
      entityId: entity,
      command: encodeCommand({ type: 'SEND', flags: 0xff, body: new Uint8Array(MAX_MESSAGE_BODY) }),
    });
    const largestMsg = encodeServerTransmission({ corrId, entityId: entity, response: encodeResponse({ type: 'MSG', msgId: entity, body: new Uint8Array(MAX_BOXED_BODY) }) });
    for (const t of [smallest, ack, largestSend, largestMsg]) {
      const blocks = packBlocks([t]);
      assert.deepEqual(
        blocks.map((b) => b.length),
        [BLOCK_SIZE],
      );
    }
  });

  test('any mix of transmissions packs into blocks that are all exactly BLOCK_SIZE', () => {
    const transmission = fc.oneof(
      fc.tuple(command, auth, bytesN(CORR_ID_LENGTH), entityId).map(([c, a, corrId, entity]) => encodeClientTransmission({ auth: a, corrId, entityId: entity, command: encodeCommand(c) })),
      fc.tuple(response, serverCorrId, entityId).map(([r, corrId, entity]) => encodeServerTransmission({ corrId, entityId: entity, response: encodeResponse(r) })),
    );
    fc.assert(
      fc.property(fc.array(transmission, { minLength: 1, maxLength: 100 }), (ts) => {
        const blocks = packBlocks(ts);
        assert.ok(blocks.every((b) => b.length === BLOCK_SIZE));
        assert.deepEqual(blocks.flatMap((b) => decodeBlock(b)), ts);
      }),
      { numRuns: 200 },
    );
  });
});
