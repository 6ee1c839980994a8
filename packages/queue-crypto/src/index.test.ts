// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that queue signatures, session authenticators and the relay-to-recipient box accept exactly what they should, and that hostile keys give null rather than a throw.
import { spawnSync } from 'node:child_process';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import {
  AUTHENTICATOR_LENGTH,
  BOX_TAG_LENGTH,
  CORR_ID_LENGTH,
  ID_LENGTH,
  KEY_LENGTH,
  MAX_BOXED_BODY,
  MAX_MESSAGE_BODY,
  SESSION_ID_LENGTH,
  SIGNATURE_LENGTH,
  authorizedBytes,
  decodeReceivedMessage,
  encodeCommand,
  encodeReceivedMessage,
  isPadFill,
} from '@murmure/protocol';

import {
  agree,
  isUsableDhKey,
  authenticate,
  authenticatorKey,
  checkAuthenticator,
  dhKeyPairFromRaw,
  dhPublicKey,
  exportPrivateKey,
  isPadFillNative,
  generateDhKeyPair,
  generateSigningKeyPair,
  importKeyPair,
  openRecipientBox,
  openWithNonce,
  queueBoxKey,
  RANDOM_POOL_SIZE,
  randomId,
  rawDhPrivateKey,
  recipientBoxKey,
  sealRecipientBox,
  sealWithNonce,
  signBytes,
  signingPublicKey,
  verifySignature,
} from './index.js';

const bytes = (n: number): fc.Arbitrary<Uint8Array> => fc.uint8Array({ minLength: n, maxLength: n });

function flipBit(b: Uint8Array, bit: number): Uint8Array {
  const c = b.slice();
  const i = Math.floor(bit / 8) % c.length;
  c[i] = (c[i] ?? 0) ^ (1 << (bit % 8));
  return c;
}

/** X25519 public keys of small order (libsodium's blocklist), each of which yields an all-zero shared secret. */
const LOW_ORDER_POINTS = [
  '0000000000000000000000000000000000000000000000000000000000000000',
  '0100000000000000000000000000000000000000000000000000000000000000',
  'e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800',
  '5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157',
  'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
];

describe('Ed25519 queue signatures', () => {
  const signer = generateSigningKeyPair();
  const pub = signingPublicKey(signer.publicKey);

  test('keys and signatures have the wire lengths', () => {
    assert.equal(signer.publicKey.length, KEY_LENGTH);
    assert.equal(signBytes(signer.privateKey, new Uint8Array(0)).length, SIGNATURE_LENGTH);
  });

  test('a signature verifies for its message and key, and not after any bit of the message or signature changes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 300 }), fc.nat(), fc.nat(), (msg, msgBit, sigBit) => {
        const sig = signBytes(signer.privateKey, msg);
        assert.equal(verifySignature(pub, msg, sig), true);
        assert.equal(verifySignature(pub, flipBit(msg, msgBit % (msg.length * 8)), sig), false);
        assert.equal(verifySignature(pub, msg, flipBit(sig, sigBit % (SIGNATURE_LENGTH * 8))), false);
      }),
      { numRuns: 300 },
    );
  });

  test('a signature over authorizedBytes does not verify for another session, corrId, entity or key', () => {
    const sessionId = new Uint8Array(SESSION_ID_LENGTH).fill(1);
    const corrId = new Uint8Array(CORR_ID_LENGTH).fill(2);
    const entity = new Uint8Array(ID_LENGTH).fill(3);
    const cmd = encodeCommand({ type: 'DEL' });
    const sig = signBytes(signer.privateKey, authorizedBytes(sessionId, corrId, entity, cmd));
    assert.equal(verifySignature(pub, authorizedBytes(sessionId, corrId, entity, cmd), sig), true);
    assert.equal(verifySignature(pub, authorizedBytes(new Uint8Array(SESSION_ID_LENGTH), corrId, entity, cmd), sig), false);
    assert.equal(verifySignature(pub, authorizedBytes(sessionId, new Uint8Array(CORR_ID_LENGTH), entity, cmd), sig), false);
    assert.equal(verifySignature(pub, authorizedBytes(sessionId, corrId, new Uint8Array(0), cmd), sig), false);
    assert.equal(verifySignature(pub, authorizedBytes(sessionId, corrId, entity, encodeCommand({ type: 'OFF' })), sig), false);
    const other = signingPublicKey(generateSigningKeyPair().publicKey);
    assert.equal(verifySignature(other, authorizedBytes(sessionId, corrId, entity, cmd), sig), false);
  });

  test('verifySignature returns false, never throws, for signatures of any length or content', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 100 }), (sig) => {
        assert.equal(verifySignature(pub, new Uint8Array([1, 2, 3]), sig), false);
      }),
      { numRuns: 300 },
    );
  });

  test('signingPublicKey and dhPublicKey refuse keys that are not 32 bytes', () => {
    assert.throws(() => signingPublicKey(new Uint8Array(31)), RangeError);
    assert.throws(() => dhPublicKey(new Uint8Array(33)), RangeError);
  });
});

describe('X25519 agreement and session authenticators', () => {
  test('client and relay derive the same secret and the same authenticator key', () => {
    for (let i = 0; i < 20; i++) {
      const client = generateDhKeyPair();
      const relay = generateDhKeyPair();
      const sessionId = randomId(SESSION_ID_LENGTH);
      const onClient = agree(client.privateKey, relay.publicKey);
      const onRelay = agree(relay.privateKey, dhPublicKey(client.publicKey));
      assert.ok(onClient !== null && onRelay !== null);
      assert.equal(onClient.length, 32);
      assert.deepEqual(onClient, onRelay);
      assert.deepEqual(authenticatorKey(onClient, sessionId), authenticatorKey(onRelay, sessionId));
      assert.notDeepEqual(authenticatorKey(onClient, sessionId), authenticatorKey(onClient, randomId(SESSION_ID_LENGTH)));
    }
  });

  test('checkAuthenticator accepts only the MAC of these bytes under this key', () => {
    const client = generateDhKeyPair();
    const relay = generateDhKeyPair();
    const sessionId = randomId(SESSION_ID_LENGTH);
    const shared = agree(client.privateKey, relay.publicKey);
    assert.ok(shared !== null);
    const key = authenticatorKey(shared, sessionId);
    const relayKey = authenticatorKey(agree(relay.privateKey, client.publicKey) as Uint8Array, sessionId);
    const otherSessionKey = authenticatorKey(shared, randomId(SESSION_ID_LENGTH));
    const strangerKey = authenticatorKey(agree(generateDhKeyPair().privateKey, relay.publicKey) as Uint8Array, sessionId);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.nat(), fc.uint8Array({ maxLength: 40 }), (data, bit, junk) => {
        const mac = authenticate(key, data);
        assert.equal(mac.length, AUTHENTICATOR_LENGTH);
        assert.equal(checkAuthenticator(relayKey, data, mac), true);
        assert.equal(checkAuthenticator(relayKey, data, flipBit(mac, bit % (AUTHENTICATOR_LENGTH * 8))), false);
        assert.equal(checkAuthenticator(relayKey, new Uint8Array([...data, 0]), mac), false);
        assert.equal(checkAuthenticator(otherSessionKey, data, mac), false);
        assert.equal(checkAuthenticator(strangerKey, data, mac), false);
        // Wrong lengths are a plain false, not a throw from timingSafeEqual.
        assert.equal(checkAuthenticator(relayKey, data, junk.length === AUTHENTICATOR_LENGTH ? junk.subarray(1) : junk), false);
        assert.equal(checkAuthenticator(relayKey, data, mac.subarray(0, 31)), false);
      }),
      { numRuns: 300 },
    );
  });

  test('agree() returns null, never throws, for low-order points and malformed keys', () => {
    const mine = generateDhKeyPair();
    for (const hex of LOW_ORDER_POINTS) {
      assert.equal(agree(mine.privateKey, new Uint8Array(Buffer.from(hex, 'hex'))), null, hex);
    }
    assert.equal(agree(mine.privateKey, new Uint8Array(31)), null);
    assert.equal(agree(mine.privateKey, new Uint8Array(0)), null);
    // An Ed25519 key where an X25519 key belongs.
    assert.equal(agree(mine.privateKey, signingPublicKey(generateSigningKeyPair().publicKey)), null);
  });

  test('isUsableDhKey refuses low-order points and malformed keys, and takes every generated key', () => {
    for (const hex of LOW_ORDER_POINTS) assert.equal(isUsableDhKey(new Uint8Array(Buffer.from(hex, 'hex'))), false, hex);
    for (const n of [0, 31, 33]) assert.equal(isUsableDhKey(new Uint8Array(n)), false, `${n} bytes`);
    for (let i = 0; i < 200; i++) assert.equal(isUsableDhKey(generateDhKeyPair().publicKey), true);
  });
});

describe('relay-to-recipient box', () => {
  const recipient = generateDhKeyPair();
  const relay = generateDhKeyPair();
  const key = recipientBoxKey(agree(relay.privateKey, recipient.publicKey) as Uint8Array);
  const recipientKey = recipientBoxKey(agree(recipient.privateKey, relay.publicKey) as Uint8Array);
  const msgIdArb = bytes(ID_LENGTH);

  test('both sides derive the same box key', () => {
    assert.deepEqual(key, recipientKey);
    assert.equal(key.length, 32);
  });

  test('openRecipientBox(sealRecipientBox(m)) gives m back, and the box adds exactly BOX_TAG_LENGTH bytes', () => {
    fc.assert(
      fc.property(msgIdArb, fc.uint8Array({ maxLength: 2000 }), (msgId, plaintext) => {
        const sealed = sealRecipientBox(key, msgId, plaintext);
        assert.equal(sealed.length, plaintext.length + BOX_TAG_LENGTH);
        assert.deepEqual(openRecipientBox(recipientKey, msgId, sealed), plaintext);
      }),
      { numRuns: 300 },
    );
  });

  test('any bit flip in the sealed bytes makes openRecipientBox return null', () => {
    fc.assert(
      fc.property(msgIdArb, fc.uint8Array({ maxLength: 300 }), fc.nat(), (msgId, plaintext, bit) => {
        const sealed = sealRecipientBox(key, msgId, plaintext);
        assert.equal(openRecipientBox(recipientKey, msgId, flipBit(sealed, bit % (sealed.length * 8))), null);
      }),
      { numRuns: 1000 },
    );
  });

  test('a different msgId, even in bytes that are not part of the nonce, makes openRecipientBox return null', () => {
    fc.assert(
      fc.property(msgIdArb, fc.uint8Array({ maxLength: 300 }), fc.nat({ max: ID_LENGTH * 8 - 1 }), (msgId, plaintext, bit) => {
        const sealed = sealRecipientBox(key, msgId, plaintext);
        assert.equal(openRecipientBox(recipientKey, flipBit(msgId, bit), sealed), null);
      }),
      { numRuns: 1000 },
    );
  });

  test('another key or a short box gives null, not a throw', () => {
    const msgId = randomId();
    const sealed = sealRecipientBox(key, msgId, new Uint8Array([1, 2, 3]));
    const otherKey = recipientBoxKey(agree(generateDhKeyPair().privateKey, relay.publicKey) as Uint8Array);
    assert.equal(openRecipientBox(otherKey, msgId, sealed), null);
    assert.equal(openRecipientBox(recipientKey, msgId, sealed.subarray(0, BOX_TAG_LENGTH - 1)), null);
    assert.equal(openRecipientBox(recipientKey, msgId, sealed.subarray(1)), null);
    assert.equal(openRecipientBox(recipientKey, msgId, new Uint8Array(0)), null);
  });

  test('a msgId that is not ID_LENGTH bytes is a caller error (RangeError) on both seal and open', () => {
    const sealed = sealRecipientBox(key, randomId(), new Uint8Array([1]));
    assert.throws(() => sealRecipientBox(key, new Uint8Array(12), new Uint8Array([1])), RangeError);
    assert.throws(() => openRecipientBox(recipientKey, new Uint8Array(12), sealed), RangeError);
  });

  test('a received message with the largest body seals to exactly MAX_BOXED_BODY bytes and opens back', () => {
    const msgId = randomId();
    const m = { receivedAt: Date.UTC(2026, 10, 26), flags: 1, body: new Uint8Array(MAX_MESSAGE_BODY).fill(7) };
    const sealed = sealRecipientBox(key, msgId, encodeReceivedMessage(m));
    assert.equal(sealed.length, MAX_BOXED_BODY);
    const opened = openRecipientBox(recipientKey, msgId, sealed);
    assert.ok(opened !== null);
    assert.deepEqual(decodeReceivedMessage(opened), m);
  });
});

describe('end-to-end queue box', () => {
  const a = generateDhKeyPair();
  const b = generateDhKeyPair();
  const shared = agree(a.privateKey, b.publicKey) as Uint8Array;

  test('queueBoxKey is agreed by both sides and differs from the relay box key for the same secret', () => {
    assert.deepEqual(queueBoxKey(shared), queueBoxKey(agree(b.privateKey, a.publicKey) as Uint8Array));
    assert.notDeepEqual(queueBoxKey(shared), recipientBoxKey(shared));
  });

  test('sealWithNonce/openWithNonce round-trip, and a changed bit, nonce or associated data gives null', () => {
    const key = queueBoxKey(shared);
    fc.assert(
      fc.property(bytes(12), fc.uint8Array({ maxLength: 64 }), fc.uint8Array({ maxLength: 300 }), fc.nat(), (nonce, aad, plaintext, bit) => {
        const sealed = sealWithNonce(key, nonce, aad, plaintext);
        assert.equal(sealed.length, plaintext.length + BOX_TAG_LENGTH);
        assert.deepEqual(openWithNonce(key, nonce, aad, sealed), plaintext);
        assert.equal(openWithNonce(key, nonce, aad, flipBit(sealed, bit % (sealed.length * 8))), null);
        assert.equal(openWithNonce(key, flipBit(nonce, bit % 96), aad, sealed), null);
        assert.equal(openWithNonce(key, nonce, new Uint8Array([...aad, 0]), sealed), null);
      }),
      { numRuns: 300 },
    );
    assert.equal(openWithNonce(key, new Uint8Array(11), new Uint8Array(0), new Uint8Array(32)), null);
  });

  test('dhKeyPairFromRaw(rawDhPrivateKey(k)) is the same X25519 key', () => {
    const raw = rawDhPrivateKey(a.privateKey);
    assert.equal(raw.length, KEY_LENGTH);
    const back = dhKeyPairFromRaw(raw);
    assert.deepEqual(back.publicKey, a.publicKey);
    assert.deepEqual(agree(back.privateKey, b.publicKey), shared);
    assert.throws(() => dhKeyPairFromRaw(new Uint8Array(31)), RangeError);
  });
});

describe('key storage', () => {
  test('importKeyPair(exportPrivateKey(k)) restores the same public key for Ed25519 and X25519', () => {
    for (let i = 0; i < 10; i++) {
      const s = generateSigningKeyPair();
      const s2 = importKeyPair(exportPrivateKey(s.privateKey));
      assert.deepEqual(s2.publicKey, s.publicKey);
      const msg = randomId(40);
      assert.equal(verifySignature(signingPublicKey(s.publicKey), msg, signBytes(s2.privateKey, msg)), true);

      const d = generateDhKeyPair();
      const d2 = importKeyPair(exportPrivateKey(d.privateKey));
      assert.deepEqual(d2.publicKey, d.publicKey);
      const peer = generateDhKeyPair();
      assert.deepEqual(agree(d2.privateKey, peer.publicKey), agree(d.privateKey, peer.publicKey));
    }
  });

  test('the raw public key of a new pair matches its key object, and rawDhPrivateKey gives the key back', () => {
    for (let i = 0; i < 20; i++) {
      const d = generateDhKeyPair();
      assert.deepEqual(dhKeyPairFromRaw(rawDhPrivateKey(d.privateKey)).publicKey, d.publicKey);
      const s = generateSigningKeyPair();
      const msg = randomId(40);
      assert.equal(verifySignature(signingPublicKey(s.publicKey), msg, signBytes(s.privateKey, msg)), true);
    }
  });

  test('generating key pairs and taking their raw keys while the heap churns never deadlocks', { timeout: 120_000 }, () => {
    // Node 20 deadlocks when a just-generated key is exported as JWK and the export's allocation
    // starts a collection (the collected generation job takes the key's lock): exporting the
    // public key of new pairs as JWK hung within ~20,000 rounds of this loop. It runs in a child
    // process, so that a deadlock fails the test instead of hanging the runner.
    const url = new URL('./index.js', import.meta.url).href;
    const code = `
      const q = await import(${JSON.stringify(url)});
      const junk = [];
      for (let i = 0; i < 40000; i++) {
        const k = i % 2 === 0 ? q.generateDhKeyPair() : q.generateSigningKeyPair();
        if (i % 8 === 0) q.rawDhPrivateKey(q.generateDhKeyPair().privateKey);
        junk.push(new Array(20).fill(k.publicKey[0]));
        if (junk.length > 1000) junk.length = 0;
      }
      process.stdout.write('done');`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout: 90_000 });
    assert.equal(r.signal, null, `the key generation loop hung and was killed (${r.signal})`);
    assert.equal(r.stdout, 'done', r.stderr);
  });

  test('randomId gives fresh ids of the requested length', () => {
    assert.equal(randomId().length, ID_LENGTH);
    assert.equal(randomId(CORR_ID_LENGTH).length, CORR_ID_LENGTH);
    assert.notDeepEqual(randomId(), randomId());
  });

  test('randomId never hands out the same bytes twice, across refills of its pool and for large sizes', () => {
    // Ids of odd lengths walk over several refills of the pool; each is a copy, so changing one
    // changes no other, and 10,000 ids of 24 bytes are all distinct.
    const seen = new Set<string>();
    let drawn = 0;
    while (drawn < 3 * RANDOM_POOL_SIZE) {
      const len = 1 + (drawn % 37);
      const id = randomId(len);
      assert.equal(id.length, len);
      drawn += len;
    }
    for (let i = 0; i < 10_000; i++) seen.add(Buffer.from(randomId()).toString('hex'));
    assert.equal(seen.size, 10_000);
    const a = randomId();
    const copy = Buffer.from(a);
    randomId().fill(0);
    assert.deepEqual(Buffer.from(a), copy);
    assert.equal(randomId(RANDOM_POOL_SIZE + 1).length, RANDOM_POOL_SIZE + 1);
  });
});

describe('native padding check', () => {
  test('agrees with the portable check on fills with and without a foreign byte', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 16_384 }), fc.integer({ min: 0, max: 3 }), fc.nat(), fc.integer({ min: 0, max: 255 }), (len, offset, at, byte) => {
        const backing = new Uint8Array(len + offset).fill(0x23);
        const fill = backing.subarray(offset);
        assert.equal(isPadFillNative(fill), true);
        if (len > 0) fill[at % len] = byte;
        assert.equal(isPadFillNative(fill), isPadFill(fill));
        assert.equal(isPadFillNative(fill), byte === 0x23 || len === 0);
      }),
      { numRuns: 300 },
    );
  });
});
