// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The cryptography of the relay queue layer, composed from node:crypto primitives only:
 * Ed25519 signatures, X25519 agreements, HKDF-SHA256, HMAC-SHA256 and ChaCha20-Poly1305.
 * Both the relay and its clients use it, so each construction exists once.
 * docs/protocol.md, "Authorisation" and "Delivered messages".
 * @module
 */

import {
  createCipheriv,
  createHash,
  createDecipheriv,
  createHmac,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
  randomFillSync,
  sign,
  timingSafeEqual,
  verify,
  type KeyObject,
} from 'node:crypto';

import { AUTHENTICATOR_LENGTH, BLOCK_SIZE, BOX_TAG_LENGTH, ID_LENGTH, KEY_LENGTH, PAD_BYTE, PLAIN_SESSION_LABEL, SIGNATURE_LENGTH, isPadFill } from '@murmure/protocol';

/** A key pair: the raw 32-byte public key and the private key object. */
export type KeyPair = Readonly<{ publicKey: Uint8Array; privateKey: KeyObject }>;

const INFO_AUTH = Buffer.from('murmure/relay/v1/authenticator');
const INFO_BOX = Buffer.from('murmure/relay/v1/recipient-box');

// Raw keys of peers go in as JWK (OpenSSL 3's DER decoder costs ~70 µs a key here, the JWK path
// ~6 µs, and every connection and first authorisation of a queue imports one), and keys read
// from a store come out as JWK.
//
// A key pair just generated never goes out as JWK. Node 20 deadlocks when it does (reproduced:
// within 100,000 generate-and-export rounds): exporting a JWK holds the key's mutex while it
// allocates the JavaScript strings, that allocation may start a garbage collection, and the
// collection's destructor of the finished key generation job takes the same mutex. The public
// key of a new pair comes out of the generation itself, DER-encoded (SubjectPublicKeyInfo: a
// fixed 12-byte header, then the raw key), and its private key as PKCS#8 DER, which exports
// without that lock-and-allocate.

/** SubjectPublicKeyInfo of an Ed25519 or X25519 key: a fixed header, then the 32-byte key. */
const SPKI_HEADER = { ed25519: Buffer.from('302a300506032b6570032100', 'hex'), x25519: Buffer.from('302a300506032b656e032100', 'hex') } as const;
/** PKCS#8 of an X25519 private key: a 16-byte header, then the 32-byte key. */
const X25519_PKCS8 = Buffer.from('302e020100300506032b656e04220420', 'hex');

function generated(type: 'ed25519' | 'x25519'): KeyPair {
  // With only the public key encoded, Node returns a Buffer and a KeyObject (no typing covers the mix).
  const { publicKey, privateKey } = generateKeyPairSync(type as 'x25519', { publicKeyEncoding: { type: 'spki', format: 'der' } } as never) as unknown as { publicKey: Buffer; privateKey: KeyObject };
  const header = SPKI_HEADER[type];
  if (publicKey.length !== header.length + KEY_LENGTH || !publicKey.subarray(0, header.length).equals(header)) throw new TypeError(`unexpected ${type} public key encoding`);
  return { publicKey: new Uint8Array(publicKey.subarray(header.length)), privateKey };
}

/** The raw public key of a key object that was imported, never generated (see above). */
function rawPublic(k: KeyObject): Uint8Array {
  const x = k.export({ format: 'jwk' }).x;
  if (typeof x !== 'string') throw new TypeError('not an OKP public key');
  return new Uint8Array(Buffer.from(x, 'base64url'));
}

function okpPublicKey(crv: 'Ed25519' | 'X25519', raw: Uint8Array): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv, x: Buffer.from(raw.buffer, raw.byteOffset, raw.length).toString('base64url') }, format: 'jwk' });
}

/** A new Ed25519 key pair (queue signing keys). */
export function generateSigningKeyPair(): KeyPair {
  return generated('ed25519');
}

/** A new X25519 key pair (authenticator keys, box keys, relay session keys). */
export function generateDhKeyPair(): KeyPair {
  return generated('x25519');
}

/** Imports a raw Ed25519 public key; throws if it is not 32 bytes or not a valid key. */
export function signingPublicKey(raw: Uint8Array): KeyObject {
  if (raw.length !== KEY_LENGTH) throw new RangeError('Ed25519 public key must be 32 bytes');
  return okpPublicKey('Ed25519', raw);
}

/** Imports a raw X25519 public key; throws if it is not 32 bytes. */
export function dhPublicKey(raw: Uint8Array): KeyObject {
  if (raw.length !== KEY_LENGTH) throw new RangeError('X25519 public key must be 32 bytes');
  return okpPublicKey('X25519', raw);
}

/** Serialises a private key (PKCS#8 DER) for a store. */
export function exportPrivateKey(k: KeyObject): Uint8Array {
  return new Uint8Array(k.export({ format: 'der', type: 'pkcs8' }));
}

/** Restores a key pair from `exportPrivateKey` output. */
export function importKeyPair(pkcs8: Uint8Array): KeyPair {
  const privateKey = createPrivateKey({ key: Buffer.from(pkcs8), format: 'der', type: 'pkcs8' });
  return { publicKey: rawPublic(createPublicKey(privateKey)), privateKey };
}

/** Signs `data` with an Ed25519 private key. */
export function signBytes(privateKey: KeyObject, data: Uint8Array): Uint8Array {
  return new Uint8Array(sign(null, data, privateKey));
}

/** Verifies an Ed25519 signature; false for any malformed input, never a throw. */
export function verifySignature(publicKey: KeyObject, data: Uint8Array, signature: Uint8Array): boolean {
  if (signature.length !== SIGNATURE_LENGTH) return false;
  try {
    return verify(null, data, publicKey, signature);
  } catch {
    return false;
  }
}

/**
 * X25519 agreement. Returns null when the peer key is invalid or of low order (OpenSSL refuses
 * an all-zero result), so a hostile key can never yield a predictable secret.
 */
export function agree(privateKey: KeyObject, peerPublic: KeyObject | Uint8Array): Uint8Array | null {
  try {
    const pub = peerPublic instanceof Uint8Array ? dhPublicKey(peerPublic) : peerPublic;
    const s = diffieHellman({ privateKey, publicKey: pub });
    return new Uint8Array(s);
  } catch {
    return null;
  }
}

/** The private key `isUsableDhKey` agrees with, made on first use. */
let keyChecker: KeyObject | null = null;

/**
 * Whether `raw` is an X25519 public key an agreement can use: 32 bytes and not of low order.
 * A relay checks the keys a queue's parties register with it, so that a key no authenticator
 * can ever match is refused when it is given, not at every later command.
 */
export function isUsableDhKey(raw: Uint8Array): boolean {
  keyChecker ??= generateDhKeyPair().privateKey;
  return agree(keyChecker, raw) !== null;
}

/**
 * The session authenticator key for one queue party in one TLS session:
 * HKDF-SHA256(ikm = X25519(party key, relay session key), salt = sessionId).
 */
export function authenticatorKey(sharedSecret: Uint8Array, sessionId: Uint8Array): Uint8Array {
  return new Uint8Array(hkdfSync('sha256', sharedSecret, sessionId, INFO_AUTH, 32));
}

/**
 * The session id of a plain loopback connection (no TLS, benchmarks only):
 * SHA-256(PLAIN_SESSION_LABEL || the relay's session key || the connection's session nonce), both
 * from the relay's hello: the nonce keeps it distinct per connection while the key is shared.
 */
export function plainSessionId(relaySessionKey: Uint8Array, sessionNonce: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(PLAIN_SESSION_LABEL).update(relaySessionKey).update(sessionNonce).digest());
}

/** HMAC-SHA256 of the authorised bytes under an authenticator key. */
export function authenticate(key: Uint8Array, data: Uint8Array): Uint8Array {
  return new Uint8Array(hmacSha256(key, data));
}

function hmacSha256(key: Uint8Array, data: Uint8Array): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

/**
 * Constant-time check of an authenticator. The digest is compared as OpenSSL returns it: a
 * copy of it in a small typed array would be given a buffer of its own outside the heap by the
 * comparison (one more for the collector to sweep per command).
 */
export function checkAuthenticator(key: Uint8Array, data: Uint8Array, mac: Uint8Array): boolean {
  if (mac.length !== AUTHENTICATOR_LENGTH) return false;
  return timingSafeEqual(hmacSha256(key, data), mac);
}

/** The relay-to-recipient box key: HKDF-SHA256 over X25519(recipient box key, relay queue key). */
export function recipientBoxKey(sharedSecret: Uint8Array): Uint8Array {
  return new Uint8Array(hkdfSync('sha256', sharedSecret, new Uint8Array(0), INFO_BOX, 32));
}

function boxNonce(msgId: Uint8Array): Uint8Array {
  if (msgId.length !== ID_LENGTH) throw new RangeError('message id must be 24 bytes');
  return msgId.subarray(0, 12);
}

/** ChaCha20-Poly1305 seal under the box key; the nonce and associated data come from the message id. */
export function sealRecipientBox(key: Uint8Array, msgId: Uint8Array, plaintext: Uint8Array): Uint8Array {
  return sealWithNonce(key, boxNonce(msgId), msgId, plaintext);
}

/** Opens a box made by `sealRecipientBox`; null if it was tampered with. */
export function openRecipientBox(key: Uint8Array, msgId: Uint8Array, sealed: Uint8Array): Uint8Array | null {
  return openWithNonce(key, boxNonce(msgId), msgId, sealed);
}

/**
 * Bytes of the system's CSPRNG drawn at once for `randomId`: the relay takes an id for every
 * message, and one call into OpenSSL per 4 KiB costs less than one per id. Each byte is handed
 * out once, copied, and then cleared from the pool.
 */
export const RANDOM_POOL_SIZE = 4096;
const randomPool = Buffer.allocUnsafeSlow(RANDOM_POOL_SIZE);
let randomPoolUsed = RANDOM_POOL_SIZE;

/** Random bytes (ids, correlation ids). */
export function randomId(length = ID_LENGTH): Uint8Array {
  if (length > RANDOM_POOL_SIZE) return new Uint8Array(randomBytes(length));
  if (randomPoolUsed + length > RANDOM_POOL_SIZE) {
    randomFillSync(randomPool);
    randomPoolUsed = 0;
  }
  const out = new Uint8Array(length);
  out.set(randomPool.subarray(randomPoolUsed, randomPoolUsed + length));
  randomPool.fill(0, randomPoolUsed, randomPoolUsed + length);
  randomPoolUsed += length;
  return out;
}

const INFO_QUEUE_BOX = Buffer.from('murmure/agent/v1/queue-box');

/** The end-to-end per-queue box key: HKDF-SHA256 over X25519(sender box key, queue box key). */
export function queueBoxKey(sharedSecret: Uint8Array): Uint8Array {
  return new Uint8Array(hkdfSync('sha256', sharedSecret, new Uint8Array(0), INFO_QUEUE_BOX, 32));
}

/** ChaCha20-Poly1305 with an explicit 12-byte nonce and associated data; returns ciphertext ‖ tag. */
export function sealWithNonce(key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, plaintext: Uint8Array): Uint8Array {
  const c = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: BOX_TAG_LENGTH });
  c.setAAD(aad, { plaintextLength: plaintext.length });
  const out = Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}

/** Opens `sealWithNonce` output; null if anything was altered. */
export function openWithNonce(key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, sealed: Uint8Array): Uint8Array | null {
  if (sealed.length < BOX_TAG_LENGTH || nonce.length !== 12) return null;
  try {
    const d = createDecipheriv('chacha20-poly1305', key, nonce, { authTagLength: BOX_TAG_LENGTH });
    const ctLen = sealed.length - BOX_TAG_LENGTH;
    d.setAAD(aad, { plaintextLength: ctLen });
    d.setAuthTag(sealed.subarray(ctLen));
    const out = Buffer.concat([d.update(sealed.subarray(0, ctLen)), d.final()]);
    return new Uint8Array(out.buffer, out.byteOffset, out.length);
  } catch {
    return null;
  }
}

/** The raw 32-byte X25519 private key (to hand a sender key to a contact inside E2E encryption). */
export function rawDhPrivateKey(k: KeyObject): Uint8Array {
  // PKCS#8, not JWK: the key may have just been generated (see the top of this file).
  if (k.asymmetricKeyType !== 'x25519' || k.type !== 'private') throw new TypeError('not an X25519 private key');
  const der = k.export({ format: 'der', type: 'pkcs8' });
  if (der.length !== X25519_PKCS8.length + KEY_LENGTH || !der.subarray(0, X25519_PKCS8.length).equals(X25519_PKCS8)) throw new TypeError('unexpected X25519 private key encoding');
  return new Uint8Array(der.subarray(X25519_PKCS8.length));
}

/** A key pair from a raw 32-byte X25519 private key. */
export function dhKeyPairFromRaw(raw: Uint8Array): KeyPair {
  if (raw.length !== KEY_LENGTH) throw new RangeError('X25519 private key must be 32 bytes');
  return importKeyPair(Buffer.concat([X25519_PKCS8, raw]));
}

const PAD_FILL = Buffer.alloc(BLOCK_SIZE, PAD_BYTE);

/**
 * The protocol's padding check (`FillCheck`) as one native comparison: relay and client check
 * the fill of every block they receive.
 */
export function isPadFillNative(fill: Uint8Array): boolean {
  if (fill.length > PAD_FILL.length) return isPadFill(fill);
  return Buffer.from(fill.buffer, fill.byteOffset, fill.length).equals(PAD_FILL.subarray(0, fill.length));
}
