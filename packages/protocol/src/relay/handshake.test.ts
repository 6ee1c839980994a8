// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that the server and client hellos round-trip as BLOCK_SIZE blocks, that their decoders throw only ProtocolError, and how negotiateVersion tells too-old from unsupported.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import {
  BLOCK_SIZE,
  KEY_LENGTH,
  SESSION_NONCE_LENGTH,
  ProtocolError,
  RELAY_VERSIONS,
  RELAY_VERSION_MAX,
  RELAY_VERSION_MIN,
  RELAY_FRAME_HEADER,
  V_INITIAL,
  blockFrame,
  decodeClientHello,
  decodeServerHello,
  encodeClientHello,
  encodeServerHello,
  negotiateVersion,
  pad,
  recycleBlock,
  toHex,
  unpad,
} from '@murmure/protocol';
import type { ClientHello, ServerHello, VersionRange } from '@murmure/protocol';

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

/** Feeds hostile input to a decoder: ProtocolError is fine, any other exception fails. Returns the decoded value, if any. */
function decodeOrRefuse<T>(decode: () => T): T | undefined {
  try {
    return decode();
  } catch (e) {
    if (ProtocolError.is(e)) return undefined;
    throw new Error(`threw something other than ProtocolError: ${String(e)}`, { cause: e });
  }
}

const u16 = fc.integer({ min: 0, max: 0xffff });
const versionRange: fc.Arbitrary<VersionRange> = fc
  .tuple(fc.integer({ min: 1, max: 0xffff }), fc.integer({ min: 1, max: 0xffff }))
  .map(([a, b]) => ({ min: Math.min(a, b), max: Math.max(a, b) }));
const serverHello: fc.Arbitrary<ServerHello> = fc
  .tuple(versionRange, fc.uint8Array({ minLength: KEY_LENGTH, maxLength: KEY_LENGTH }), fc.uint8Array({ minLength: SESSION_NONCE_LENGTH, maxLength: SESSION_NONCE_LENGTH }))
  .map(([versions, sessionKey, sessionNonce]) => ({ versions, sessionKey, sessionNonce }));
const clientHello: fc.Arbitrary<ClientHello> = u16.map((version) => ({ version }));

/** Hello blocks with a few bits flipped, mostly inside the content at the front. */
const flipped = (valid: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> =>
  fc.tuple(valid, fc.array(fc.tuple(fc.oneof(fc.nat({ max: 48 }), fc.nat({ max: BLOCK_SIZE - 1 })), fc.nat({ max: 7 })), { minLength: 1, maxLength: 3 })).map(([b, flips]) => {
    const c = b.slice();
    for (const [at, bit] of flips) c[at] = (c[at] ?? 0) ^ (1 << bit);
    return c;
  });

// ---- tests ----

describe('hello round trip', () => {
  test('decodeServerHello(encodeServerHello(h)) equals h, in a block of exactly BLOCK_SIZE', () => {
    fc.assert(
      fc.property(serverHello, (h) => {
        const block = encodeServerHello(h);
        assert.equal(block.length, BLOCK_SIZE);
        assert.deepEqual(decodeServerHello(block), h);
      }),
      { numRuns: 2000 },
    );
  });

  test('decodeClientHello(encodeClientHello(h)) equals h, in a block of exactly BLOCK_SIZE', () => {
    fc.assert(
      fc.property(clientHello, (h) => {
        const block = encodeClientHello(h);
        assert.equal(block.length, BLOCK_SIZE);
        assert.deepEqual(decodeClientHello(block), h);
      }),
      { numRuns: 2000 },
    );
  });

  test('a hello is a block of the pool: it is framed in place, and once written the next block reuses it', () => {
    const key = new Uint8Array(KEY_LENGTH).fill(0x5a);
    const nonce = new Uint8Array(SESSION_NONCE_LENGTH).fill(0xa5);
    const hello = encodeServerHello({ versions: RELAY_VERSIONS, sessionKey: key, sessionNonce: nonce });
    const frame = blockFrame(hello, 'relay');
    assert.ok(frame !== null);
    assert.equal(frame.length, RELAY_FRAME_HEADER + BLOCK_SIZE);
    assert.deepEqual(frame.subarray(RELAY_FRAME_HEADER), hello);
    recycleBlock(hello);
    // The relay hello's bytes are all written over: the client hello decodes as itself.
    const reused = encodeClientHello({ version: 7 });
    assert.equal(reused.buffer, hello.buffer);
    assert.deepEqual(decodeClientHello(reused), { version: 7 });
    assert.deepEqual(reused, pad(new Uint8Array([0x68, 0, 7]), BLOCK_SIZE));
  });

  test('the hello layouts: H, min, max, key, nonce; and h, version; then # padding', () => {
    const key = new Uint8Array(KEY_LENGTH).fill(0x5a);
    const nonce = new Uint8Array(SESSION_NONCE_LENGTH).fill(0xa5);
    const server = unpad(encodeServerHello({ versions: { min: 1, max: 2 }, sessionKey: key, sessionNonce: nonce }), BLOCK_SIZE);
    assert.equal(toHex(server), '48' + '0001' + '0002' + '5a'.repeat(32) + 'a5'.repeat(32));
    const client = encodeClientHello({ version: 0x0102 });
    assert.equal(toHex(client.subarray(0, 8)), '0003' + '680102' + '2323' + '23');
  });
});

describe('hello edge cases', () => {
  const key = new Uint8Array(KEY_LENGTH);
  const nonce = new Uint8Array(SESSION_NONCE_LENGTH).fill(7);
  const serverContent = (min: number, max: number, extra: number[] = []): Uint8Array =>
    pad(new Uint8Array([0x48, min >>> 8, min & 0xff, max >>> 8, max & 0xff, ...key, ...nonce, ...extra]), BLOCK_SIZE);

  test('a server hello with min version 0 or min above max is BAD_VALUE', () => {
    assert.throws(() => decodeServerHello(serverContent(0, 1)), (e) => ProtocolError.is(e, 'BAD_VALUE'));
    assert.throws(() => decodeServerHello(serverContent(3, 2)), (e) => ProtocolError.is(e, 'BAD_VALUE'));
  });

  test('a server hello may carry fields a later version appends; a client hello may not', () => {
    assert.deepEqual(decodeServerHello(serverContent(1, 1, [9, 9, 9])), { versions: { min: 1, max: 1 }, sessionKey: key, sessionNonce: nonce });
    assert.throws(() => decodeClientHello(pad(new Uint8Array([0x68, 0, 1, 0]), BLOCK_SIZE)), (e) => ProtocolError.is(e, 'TRAILING'));
  });

  test('a hello of the other side, or any other tag, is BAD_TAG', () => {
    assert.throws(() => decodeServerHello(encodeClientHello({ version: 1 })), (e) => ProtocolError.is(e, 'BAD_TAG'));
    assert.throws(() => decodeClientHello(encodeServerHello({ versions: RELAY_VERSIONS, sessionKey: key, sessionNonce: nonce })), (e) => ProtocolError.is(e, 'BAD_TAG'));
    for (let tag = 0; tag < 256; tag++) {
      if (tag !== 0x48) assert.throws(() => decodeServerHello(pad(new Uint8Array([tag, 0, 1, 0, 1, ...key]), BLOCK_SIZE)), (e) => ProtocolError.is(e, 'BAD_TAG'));
      if (tag !== 0x68) assert.throws(() => decodeClientHello(pad(new Uint8Array([tag, 0, 1]), BLOCK_SIZE)), (e) => ProtocolError.is(e, 'BAD_TAG'));
    }
  });

  test('a short session key or nonce, or a missing version, is TRUNCATED; an unpadded or wrongly padded hello is refused', () => {
    assert.throws(() => decodeServerHello(pad(new Uint8Array([0x48, 0, 1, 0, 1, 1, 2, 3]), BLOCK_SIZE)), (e) => ProtocolError.is(e, 'TRUNCATED'));
    assert.throws(() => decodeServerHello(pad(new Uint8Array([0x48, 0, 1, 0, 1, ...key, 1, 2, 3]), BLOCK_SIZE)), (e) => ProtocolError.is(e, 'TRUNCATED'));
    assert.throws(() => decodeClientHello(pad(new Uint8Array([0x68, 0]), BLOCK_SIZE)), (e) => ProtocolError.is(e, 'TRUNCATED'));
    assert.throws(() => decodeClientHello(new Uint8Array([0, 3, 0x68, 0, 1])), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
    const bad = encodeClientHello({ version: 1 });
    bad[BLOCK_SIZE - 1] = 0;
    assert.throws(() => decodeClientHello(bad), (e) => ProtocolError.is(e, 'BAD_PADDING'));
  });

  test('encoding refuses a session key or nonce of the wrong length and versions outside 16 bits', () => {
    assert.throws(() => encodeServerHello({ versions: RELAY_VERSIONS, sessionKey: new Uint8Array(31), sessionNonce: nonce }), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
    assert.throws(() => encodeServerHello({ versions: RELAY_VERSIONS, sessionKey: key, sessionNonce: new Uint8Array(31) }), (e) => ProtocolError.is(e, 'BAD_LENGTH'));
    assert.throws(() => encodeServerHello({ versions: { min: 1, max: 0x10000 }, sessionKey: key, sessionNonce: nonce }), (e) => ProtocolError.is(e, 'BAD_VALUE'));
    assert.throws(() => encodeClientHello({ version: -1 }), (e) => ProtocolError.is(e, 'BAD_VALUE'));
  });
});

describe('version negotiation', () => {
  test('our own range is version 1 only, and negotiating with ourselves gives it', () => {
    assert.equal(V_INITIAL, 1);
    assert.deepEqual(RELAY_VERSIONS, { min: RELAY_VERSION_MIN, max: RELAY_VERSION_MAX });
    assert.equal(negotiateVersion(RELAY_VERSIONS, RELAY_VERSIONS), RELAY_VERSION_MAX);
  });

  test('a peer whose newest is below our oldest is VERSION_TOO_OLD; one whose oldest is above our newest is VERSION_UNSUPPORTED', () => {
    const ours = { min: 3, max: 5 };
    assert.throws(() => negotiateVersion(ours, { min: 1, max: 2 }), (e) => ProtocolError.is(e, 'VERSION_TOO_OLD'));
    assert.throws(() => negotiateVersion(ours, { min: 6, max: 9 }), (e) => ProtocolError.is(e, 'VERSION_UNSUPPORTED'));
    assert.equal(negotiateVersion(ours, { min: 1, max: 3 }), 3);
    assert.equal(negotiateVersion(ours, { min: 5, max: 9 }), 5);
    assert.equal(negotiateVersion(ours, { min: 4, max: 4 }), 4);
    assert.equal(negotiateVersion(ours, { min: 1, max: 9 }), 5);
  });

  test('for any two ranges: the highest common version, or the error naming which side is behind', () => {
    fc.assert(
      fc.property(versionRange, versionRange, (ours, theirs) => {
        const common = Math.min(ours.max, theirs.max);
        if (common >= Math.max(ours.min, theirs.min)) {
          assert.equal(negotiateVersion(ours, theirs), common);
        } else if (theirs.max < ours.min) {
          assert.throws(() => negotiateVersion(ours, theirs), (e) => ProtocolError.is(e, 'VERSION_TOO_OLD'));
        } else {
          assert.throws(() => negotiateVersion(ours, theirs), (e) => ProtocolError.is(e, 'VERSION_UNSUPPORTED'));
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe('hello fuzz', () => {
  const candidates = fc.oneof(
    fc.uint8Array({ maxLength: 64 }),
    fc.integer().map((s) => seeded(BLOCK_SIZE, s)),
    fc.uint8Array({ maxLength: 80 }).map((c) => pad(c, BLOCK_SIZE)),
    fc.tuple(fc.constantFrom(0x48, 0x68), fc.uint8Array({ maxLength: 60 })).map(([t, rest]) => pad(new Uint8Array([t, ...rest]), BLOCK_SIZE)),
  );

  test('decodeServerHello and decodeClientHello of arbitrary bytes throw only ProtocolError', () => {
    fc.assert(
      fc.property(candidates, (block) => {
        const s = decodeOrRefuse(() => decodeServerHello(block));
        if (s !== undefined) assert.ok(s.versions.min >= 1 && s.versions.min <= s.versions.max && s.sessionKey.length === KEY_LENGTH);
        const c = decodeOrRefuse(() => decodeClientHello(block));
        if (c !== undefined) assert.deepEqual(encodeClientHello(c), block);
      }),
      { numRuns: 3000 },
    );
  });

  test('mutated valid hellos throw only ProtocolError', () => {
    fc.assert(
      fc.property(flipped(serverHello.map(encodeServerHello)), flipped(clientHello.map(encodeClientHello)), (s, c) => {
        decodeOrRefuse(() => decodeServerHello(s));
        decodeOrRefuse(() => decodeClientHello(s));
        decodeOrRefuse(() => decodeServerHello(c));
        const ch = decodeOrRefuse(() => decodeClientHello(c));
        if (ch !== undefined) assert.deepEqual(encodeClientHello(ch), c);
      }),
      { numRuns: 2000 },
    );
  });
});
