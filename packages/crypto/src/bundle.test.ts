// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that prekey bundles (real ones from createPreKeys, and generated field values) round-trip
// through encodeBundle/decodeBundle, and that decodeBundle, fed arbitrary or mutated bytes,
// throws ProtocolError only and never returns a field over its limit (C1, C2).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import fc from 'fast-check';
import { ProtocolError } from '@murmure/protocol';

import { ProtocolState, createPreKeys, decodeBundle, encodeBundle, generateIdentity, type BundleFields } from './index.js';

/** A fresh bundle as an invitation would carry it. */
function realBundle(oneTime: boolean): BundleFields {
  const state = new ProtocolState(generateIdentity(), { load: () => undefined });
  return createPreKeys(state, { oneTime });
}

/** The same fields, every byte field as a plain Uint8Array (libsignal may hand out Buffers). */
function plain(b: BundleFields): BundleFields {
  const u = (x: Uint8Array) => Uint8Array.from(x);
  return {
    ...b,
    identityKey: u(b.identityKey),
    preKey: b.preKey === null ? null : u(b.preKey),
    signedPreKey: u(b.signedPreKey),
    signedPreKeySignature: u(b.signedPreKeySignature),
    kyberPreKey: u(b.kyberPreKey),
    kyberPreKeySignature: u(b.kyberPreKeySignature),
  };
}

const LIMITS = { name: 36, identityKey: 33, preKey: 33, signedPreKey: 33, signedPreKeySignature: 64, kyberPreKey: 1600, kyberPreKeySignature: 64 } as const;

const bytes = (max: number) => fc.uint8Array({ maxLength: max });
const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const bundle: fc.Arbitrary<BundleFields> = fc
  .record(
    {
      name: fc.oneof(fc.uuid(), fc.string({ unit: fc.constantFrom(...'abc0-'), maxLength: LIMITS.name })),
      registrationId: fc.integer({ min: 0, max: 0xffff }),
      identityKey: bytes(LIMITS.identityKey),
      preKey: fc.option(fc.tuple(u32, bytes(LIMITS.preKey)), { nil: null }),
      signedPreKeyId: u32,
      signedPreKey: bytes(LIMITS.signedPreKey),
      signedPreKeySignature: bytes(LIMITS.signedPreKeySignature),
      kyberPreKeyId: u32,
      kyberPreKey: fc.oneof(bytes(64), bytes(LIMITS.kyberPreKey)),
      kyberPreKeySignature: bytes(LIMITS.kyberPreKeySignature),
    },
    { noNullPrototype: true },
  )
  .map(({ preKey, ...rest }) => ({ ...rest, preKeyId: preKey === null ? null : preKey[0], preKey: preKey === null ? null : preKey[1] }));

/** Decodes hostile bytes: ProtocolError is fine, any other exception fails; checks what is accepted. */
function decodeOrRefuse(b: Uint8Array): void {
  let v: BundleFields;
  try {
    v = decodeBundle(b);
  } catch (e) {
    if (ProtocolError.is(e)) return;
    throw new Error(`threw something other than ProtocolError: ${String(e)}`, { cause: e });
  }
  assert.ok(v.name.length <= LIMITS.name);
  assert.ok(v.identityKey.length <= LIMITS.identityKey && v.signedPreKey.length <= LIMITS.signedPreKey);
  assert.ok(v.signedPreKeySignature.length <= LIMITS.signedPreKeySignature && v.kyberPreKeySignature.length <= LIMITS.kyberPreKeySignature);
  assert.ok(v.kyberPreKey.length <= LIMITS.kyberPreKey && (v.preKey === null || v.preKey.length <= LIMITS.preKey));
  assert.equal(v.preKey === null, v.preKeyId === null);
  // Accepted bytes are the canonical encoding of what they decode to (names are UTF-8 on the wire).
  const valid = new TextEncoder().encode(v.name).length <= LIMITS.name && !v.name.includes('\ufffd');
  if (valid) assert.deepEqual(encodeBundle(v), b);
}

describe('bundle round trip', () => {
  test('real bundles, with and without a one-time prekey', () => {
    for (const oneTime of [true, false]) {
      const b = plain(realBundle(oneTime));
      const enc = encodeBundle(b);
      assert.equal(enc[0], 1, 'version byte first');
      assert.deepEqual(decodeBundle(enc), b);
      assert.equal(b.preKey === null, !oneTime);
    }
  });

  test('generated field values', () => {
    fc.assert(
      fc.property(bundle, (b) => assert.deepEqual(decodeBundle(encodeBundle(b)), b)),
      { numRuns: 1000 },
    );
  });
});

describe('decodeBundle throws only ProtocolError (C1)', () => {
  const real = [realBundle(true), realBundle(false)].map(encodeBundle);

  test('arbitrary bytes, and bytes after a valid version byte', () => {
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 2000 }), fc.uint8Array({ maxLength: 2000 }).map((b) => Uint8Array.from([1, ...b]))), decodeOrRefuse),
      { numRuns: 5000 },
    );
  });

  test('mutated real and generated bundles', () => {
    const source = fc.oneof(fc.constantFrom(...real), bundle.map(encodeBundle));
    const edit = fc.record({ at: fc.nat(), value: fc.integer({ min: 0, max: 255 }), op: fc.constantFrom('set', 'delete', 'insert', 'truncate') }, { noNullPrototype: true });
    fc.assert(
      fc.property(source, fc.array(edit, { minLength: 1, maxLength: 4 }), (enc, edits) => {
        let b = Array.from(enc);
        for (const e of edits) {
          const i = b.length === 0 ? 0 : e.at % b.length;
          if (e.op === 'set' && b.length > 0) b[i] = e.value;
          else if (e.op === 'delete') b.splice(i, 1);
          else if (e.op === 'insert') b.splice(i, 0, e.value);
          else if (e.op === 'truncate') b = b.slice(0, i);
        }
        decodeOrRefuse(Uint8Array.from(b));
      }),
      { numRuns: 3000 },
    );
  });

  test('oversized and truncated fields are refused with the right code, quickly', () => {
    const b = Array.from(real[0]!);
    const t0 = performance.now();
    assert.throws(() => decodeBundle(Uint8Array.from([2, ...b.slice(1)])), (e) => ProtocolError.is(e, 'VERSION_UNSUPPORTED'));
    assert.throws(() => decodeBundle(Uint8Array.from([1, 0xff, ...new Array<number>(8).fill(0x41)])), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.throws(() => decodeBundle(Uint8Array.from([...b, 0])), (e) => ProtocolError.is(e, 'TRAILING'));
    for (let n = 0; n < b.length; n++) assert.throws(() => decodeBundle(Uint8Array.from(b.slice(0, n))), (e) => ProtocolError.is(e, 'TRUNCATED') || ProtocolError.is(e, 'VERSION_UNSUPPORTED'));
    assert.ok(performance.now() - t0 < 1000);
    // A Kyber key declared 65,535 bytes long (or at its limit, with 10 bytes present): refused
    // before anything is read or allocated.
    const head = encodeBundle({ ...realBundle(true), kyberPreKey: new Uint8Array(0), kyberPreKeySignature: new Uint8Array(0) }).subarray(0, -3);
    assert.throws(() => decodeBundle(Uint8Array.from([...head, 0xff, 0xff, 1, 2, 3])), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.throws(() => decodeBundle(Uint8Array.from([...head, 1600 >> 8, 1600 & 0xff, ...new Array<number>(10).fill(7)])), (e) => ProtocolError.is(e, 'TRUNCATED'));
  });
});
