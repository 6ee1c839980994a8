// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that the queue constructions give the committed bytes of test-vectors/crypto.json (the
// worked example of docs/protocol.md): public keys from raw private keys, a SUB's session
// authenticator, a NEW's signature and a MSG's relay-to-recipient box, each from fixed inputs.
import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { V_INITIAL, authorizedBytes, encodeCommand, encodeReceivedMessage } from '@murmure/protocol';

import {
  agree,
  authenticate,
  authenticatorKey,
  checkAuthenticator,
  dhKeyPairFromRaw,
  openRecipientBox,
  recipientBoxKey,
  sealRecipientBox,
  signBytes,
  signingPublicKey,
  verifySignature,
} from './index.js';

type Hex = string;
type Vectors = {
  inputs: Record<'sessionId' | 'corrId' | 'rcvId' | 'msgId' | 'relaySessionPrivate' | 'rcvAuthPrivate' | 'rcvDhPrivate' | 'relayQueuePrivate' | 'rcvSigSeed' | 'body', Hex> & { receivedAt: number; flags: number };
  publicKeys: Record<'relaySession' | 'rcvAuth' | 'rcvDh' | 'relayQueue' | 'rcvSig', Hex>;
  subAuthenticator: Record<'authorized' | 'shared' | 'authKey' | 'mac', Hex>;
  newSignature: Record<'command' | 'authorized' | 'signature', Hex>;
  recipientBox: Record<'shared' | 'boxKey' | 'content' | 'nonce' | 'sealed', Hex>;
};

// The compiled test sits in dist/, one level below the package root.
const v = JSON.parse(readFileSync(new URL('../test-vectors/crypto.json', import.meta.url), 'utf8')) as Vectors;
const bytes = (hex: Hex): Uint8Array => new Uint8Array(Buffer.from(hex, 'hex'));
const hex = (b: Uint8Array | null): string => (b === null ? 'null' : Buffer.from(b).toString('hex'));
const ED25519_PKCS8 = Buffer.from('302e020100300506032b657004220420', 'hex');

const inp = v.inputs;
const session = dhKeyPairFromRaw(bytes(inp.relaySessionPrivate));
const auth = dhKeyPairFromRaw(bytes(inp.rcvAuthPrivate));
const dh = dhKeyPairFromRaw(bytes(inp.rcvDhPrivate));
const queue = dhKeyPairFromRaw(bytes(inp.relayQueuePrivate));
const sigKey = createPrivateKey({ key: Buffer.concat([ED25519_PKCS8, bytes(inp.rcvSigSeed)]), format: 'der', type: 'pkcs8' });

test('X25519 and Ed25519 public keys from the raw private keys', () => {
  assert.equal(hex(session.publicKey), v.publicKeys.relaySession);
  assert.equal(hex(auth.publicKey), v.publicKeys.rcvAuth);
  assert.equal(hex(dh.publicKey), v.publicKeys.rcvDh);
  assert.equal(hex(queue.publicKey), v.publicKeys.relayQueue);
  assert.ok(verifySignature(signingPublicKey(bytes(v.publicKeys.rcvSig)), new Uint8Array([1]), signBytes(sigKey, new Uint8Array([1]))), 'the seed gives rcvSig');
});

test("a SUB's session authenticator: authorised bytes, X25519, HKDF, HMAC", () => {
  const authorized = authorizedBytes(bytes(inp.sessionId), bytes(inp.corrId), bytes(inp.rcvId), encodeCommand({ type: 'SUB' }));
  assert.equal(hex(authorized), v.subAuthenticator.authorized);
  const shared = agree(auth.privateKey, session.publicKey);
  assert.equal(hex(shared), v.subAuthenticator.shared);
  assert.equal(hex(agree(session.privateKey, auth.publicKey)), v.subAuthenticator.shared, 'the relay side agrees');
  const key = authenticatorKey(shared!, bytes(inp.sessionId));
  assert.equal(hex(key), v.subAuthenticator.authKey);
  assert.equal(hex(authenticate(key, authorized)), v.subAuthenticator.mac);
  assert.ok(checkAuthenticator(key, authorized, bytes(v.subAuthenticator.mac)));
});

test("a NEW's Ed25519 signature over its authorised bytes (the NEW in protocol version 1's layout)", () => {
  const command = encodeCommand({ type: 'NEW', rcvSigKey: bytes(v.publicKeys.rcvSig), rcvAuthKey: auth.publicKey, rcvDhKey: dh.publicKey }, V_INITIAL);
  assert.equal(hex(command), v.newSignature.command);
  const authorized = authorizedBytes(bytes(inp.sessionId), bytes(inp.corrId), new Uint8Array(0), command);
  assert.equal(hex(authorized), v.newSignature.authorized);
  assert.equal(hex(signBytes(sigKey, authorized)), v.newSignature.signature, 'Ed25519 signatures are deterministic');
  assert.ok(verifySignature(signingPublicKey(bytes(v.publicKeys.rcvSig)), authorized, bytes(v.newSignature.signature)));
});

test("a MSG's relay-to-recipient box: X25519, HKDF, ChaCha20-Poly1305 with the message id as nonce and data", () => {
  const shared = agree(dh.privateKey, queue.publicKey);
  assert.equal(hex(shared), v.recipientBox.shared);
  assert.equal(hex(agree(queue.privateKey, dh.publicKey)), v.recipientBox.shared, 'the relay side agrees');
  const key = recipientBoxKey(shared!);
  assert.equal(hex(key), v.recipientBox.boxKey);
  const content = encodeReceivedMessage({ receivedAt: inp.receivedAt, flags: inp.flags, body: bytes(inp.body) });
  assert.equal(hex(content), v.recipientBox.content);
  assert.equal(hex(bytes(inp.msgId).subarray(0, 12)), v.recipientBox.nonce);
  assert.equal(hex(sealRecipientBox(key, bytes(inp.msgId), content)), v.recipientBox.sealed);
  assert.equal(hex(openRecipientBox(key, bytes(inp.msgId), bytes(v.recipientBox.sealed))), v.recipientBox.content);
});
