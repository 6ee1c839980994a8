// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows PQXDH set-up from an encoded bundle, both ratchet directions, duplicate detection,
// that a failed decryption stages no state change, and matching safety numbers.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  CryptoError,
  ProtocolState,
  createPreKeys,
  decodeBundle,
  decodeLocalIdentity,
  decrypt,
  encodeBundle,
  encodeLocalIdentity,
  encrypt,
  generateIdentity,
  safetyNumber,
  startSession,
  type StateKind,
  type StateWrite,
} from './index.js';

/** A state source over a map, with a commit function, like a database would be. */
function memory() {
  const rows = new Map<string, Uint8Array>();
  return {
    source: { load: (kind: StateKind, key: string) => rows.get(`${kind}/${key}`) },
    commit(writes: StateWrite[]) {
      for (const w of writes) {
        if (w.value === null) rows.delete(`${w.kind}/${w.key}`);
        else rows.set(`${w.kind}/${w.key}`, w.value);
      }
    },
    rows,
  };
}

const text = (s: string) => new TextEncoder().encode(s);
const str = (b: Uint8Array) => new TextDecoder().decode(b);

test('a session starts from an encoded bundle and carries messages both ways', async () => {
  const aliceDb = memory();
  const bobDb = memory();
  const alice = new ProtocolState(generateIdentity(), aliceDb.source);
  const bob = new ProtocolState(generateIdentity(), bobDb.source);
  const bundle = decodeBundle(encodeBundle(createPreKeys(alice, { oneTime: true })));
  aliceDb.commit(alice.takeWrites());

  await startSession(bob, bundle);
  const first = await encrypt(bob, alice.local.name, text('hello alice'));
  assert.equal(first.type, 'prekey');
  bobDb.commit(bob.takeWrites());

  assert.equal(str(await decrypt(alice, bob.local.name, first.type, first.body)), 'hello alice');
  aliceDb.commit(alice.takeWrites());
  await assert.rejects(decrypt(alice, bob.local.name, first.type, first.body), (e) => CryptoError.is(e, 'DUPLICATE'));

  const reply = await encrypt(alice, bob.local.name, text('hello bob'));
  assert.equal(reply.type, 'whisper');
  aliceDb.commit(alice.takeWrites());
  assert.equal(str(await decrypt(bob, alice.local.name, reply.type, reply.body)), 'hello bob');
  bobDb.commit(bob.takeWrites());

  const later = await encrypt(bob, alice.local.name, text('second'));
  bobDb.commit(bob.takeWrites());
  assert.equal(later.type, 'whisper');

  // A tampered message fails and stages nothing: the stored session stays as it was.
  const before = new Map(aliceDb.rows);
  const bad = Uint8Array.from(later.body);
  bad[bad.length - 3]! ^= 1;
  await assert.rejects(decrypt(alice, bob.local.name, later.type, bad), (e) => CryptoError.is(e, 'INVALID_MESSAGE'));
  assert.deepEqual(alice.takeWrites(), []);
  assert.deepEqual(aliceDb.rows, before);
  assert.equal(str(await decrypt(alice, bob.local.name, later.type, later.body)), 'second');

  const a = safetyNumber(alice.local.identity.publicKey.serialize(), bob.local.identity.publicKey.serialize());
  const b = safetyNumber(bob.local.identity.publicKey.serialize(), alice.local.identity.publicKey.serialize());
  assert.equal(a.digits, b.digits);
  assert.match(a.digits, /^\d{60}$/);
});

test('a local identity survives encoding', () => {
  const l = generateIdentity();
  const back = decodeLocalIdentity(encodeLocalIdentity(l));
  assert.equal(back.name, l.name);
  assert.equal(back.registrationId, l.registrationId);
  assert.deepEqual(back.identity.serialize(), l.identity.serialize());
});

test('a bundle with a forged signature is refused', async () => {
  const alice = new ProtocolState(generateIdentity(), memory().source);
  const bob = new ProtocolState(generateIdentity(), memory().source);
  const b = createPreKeys(alice, { oneTime: false });
  const sig = Uint8Array.from(b.kyberPreKeySignature);
  sig[0]! ^= 1;
  await assert.rejects(startSession(bob, { ...b, kyberPreKeySignature: sig }), (e) => CryptoError.is(e, 'BAD_BUNDLE'));
  assert.deepEqual(bob.takeWrites(), []);
});
