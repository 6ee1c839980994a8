// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Session cryptography over libsignal: per-connection identities, prekey bundles (encoded
 * field by field, since libsignal's PreKeyBundle has no serialisation), PQXDH session set-up,
 * the double ratchet with its post-quantum ratchet, and safety numbers. libsignal's stores are
 * implemented over a `ProtocolState` whose writes are buffered, so a caller can commit them
 * together with the message they produced, or drop them when decryption fails.
 * @module
 */

import { randomInt, randomUUID } from 'node:crypto';

import type { Direction } from '@signalapp/libsignal-client';
import {
  Aci,
  CiphertextMessageType,
  ErrorCode,
  Fingerprint,
  IdentityChange,
  IdentityKeyPair,
  IdentityKeyStore,
  KEMKeyPair,
  KEMPublicKey,
  KyberPreKeyRecord,
  KyberPreKeyStore,
  LibSignalErrorBase,
  PreKeyBundle,
  PreKeyRecord,
  PreKeySignalMessage,
  PreKeyStore,
  PrivateKey,
  ProtocolAddress,
  PublicKey,
  SessionRecord,
  SessionStore,
  SignalMessage,
  SignedPreKeyRecord,
  SignedPreKeyStore,
  processPreKeyBundle,
  signalDecrypt,
  signalDecryptPreKey,
  signalEncrypt,
} from '@signalapp/libsignal-client';
import { ProtocolError, Reader, Writer } from '@murmure/protocol';

/** Why a session operation failed. */
export type CryptoErrorCode =
  /** The message was decrypted before: already stored, acknowledge it. */
  | 'DUPLICATE'
  /** The message is not a valid ciphertext for this session (tampered, truncated, forged). */
  | 'INVALID_MESSAGE'
  /** The contact's identity key differs from the one recorded. */
  | 'UNTRUSTED_IDENTITY'
  /** A prekey bundle is malformed or its signatures do not verify. */
  | 'BAD_BUNDLE'
  /** There is no session to encrypt or decrypt with. */
  | 'NO_SESSION';

/** A failed session operation. */
export class CryptoError extends Error {
  override readonly name = 'CryptoError';
  constructor(
    readonly code: CryptoErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** Type guard. */
  static is(err: unknown, code?: CryptoErrorCode): err is CryptoError {
    return err instanceof CryptoError && (code === undefined || err.code === code);
  }
}

function wrap(e: unknown, fallback: CryptoErrorCode, what: string): CryptoError {
  if (e instanceof CryptoError) return e;
  if (e instanceof LibSignalErrorBase) {
    if (e.code === ErrorCode.DuplicatedMessage) return new CryptoError('DUPLICATE', 'message was already received', { cause: e });
    if (e.code === ErrorCode.UntrustedIdentity) return new CryptoError('UNTRUSTED_IDENTITY', "the contact's identity key changed", { cause: e });
    if (e.code === ErrorCode.InvalidSession) return new CryptoError('NO_SESSION', 'no usable session', { cause: e });
  }
  return new CryptoError(fallback, what, { cause: e });
}

/** The libsignal device id Murmure uses: one device per connection identity. */
export const DEVICE_ID = 1;
/** Largest registration id (libsignal keeps 14 bits). */
export const MAX_REGISTRATION_ID = 0x3fff;

/** A connection's own libsignal identity. */
export type LocalIdentity = Readonly<{ name: string; identity: IdentityKeyPair; registrationId: number }>;

/** A new identity with a random name (a UUID used as an ACI service id) and registration id. */
export function generateIdentity(): LocalIdentity {
  return { name: randomUUID(), identity: IdentityKeyPair.generate(), registrationId: randomInt(1, MAX_REGISTRATION_ID + 1) };
}

/** The libsignal address of a name. */
export function protocolAddress(name: string): ProtocolAddress {
  return ProtocolAddress.new(Aci.fromUuid(name), DEVICE_ID);
}

/** Serialises a local identity for a store. */
export function encodeLocalIdentity(l: LocalIdentity): Uint8Array {
  return new Writer(200).shortBytes(new TextEncoder().encode(l.name)).u16(l.registrationId).longBytes(l.identity.serialize()).finish();
}

/**
 * Identities already decoded, by the stored bytes they came from (the same object while a
 * store keeps it): a connection's identity is read for every message it sends or receives.
 */
const decodedIdentities = new WeakMap<Uint8Array, LocalIdentity>();

/** Restores a local identity from `encodeLocalIdentity`. */
export function decodeLocalIdentity(bytes: Uint8Array): LocalIdentity {
  const known = decodedIdentities.get(bytes);
  if (known !== undefined) return known;
  const decoded = decodeIdentityBytes(bytes);
  decodedIdentities.set(bytes, decoded);
  return decoded;
}

function decodeIdentityBytes(bytes: Uint8Array): LocalIdentity {
  const r = new Reader(bytes);
  const name = new TextDecoder().decode(r.shortBytes(64, 'name'));
  const registrationId = r.u16('registration id');
  const identity = IdentityKeyPair.deserialize(Uint8Array.from(r.longBytes(512, 'identity')));
  r.end('local identity');
  return { name, identity, registrationId };
}

/** Kinds of protocol state a connection keeps. */
export type StateKind = 'session' | 'identity' | 'prekey' | 'signed-prekey' | 'kyber-prekey' | 'kyber-used';

/** One buffered write: a value to store, or null to delete. */
export type StateWrite = Readonly<{ kind: StateKind; key: string; value: Uint8Array | null }>;

/** Where protocol state is read from (synchronously: it is a local database). */
export interface StateSource {
  load(kind: StateKind, key: string): Uint8Array | undefined;
}

/** What the store classes below use of a ProtocolState. */
type StateAccess = Readonly<{
  local: LocalIdentity;
  get(kind: StateKind, key: string): Uint8Array | undefined;
  need(kind: StateKind, key: string): Uint8Array;
  put(kind: StateKind, key: string, value: Uint8Array | null): void;
}>;

/**
 * Session records already parsed, by the serialised bytes they came from or were saved as (the
 * same object while a store keeps it), so that a record is not parsed again for every message.
 * libsignal copies a record it loads and hands back a new one to save, so a cached one is never
 * changed in place.
 */
const parsedSessions = new WeakMap<Uint8Array, SessionRecord>();

function sessionRecord(bytes: Uint8Array): SessionRecord {
  let r = parsedSessions.get(bytes);
  if (r === undefined) {
    r = SessionRecord.deserialize(Uint8Array.from(bytes));
    parsedSessions.set(bytes, r);
  }
  return r;
}

class Sessions extends SessionStore {
  constructor(private readonly s: StateAccess) {
    super();
  }
  async saveSession(name: ProtocolAddress, record: SessionRecord): Promise<void> {
    const bytes = record.serialize();
    parsedSessions.set(bytes, record);
    this.s.put('session', name.name(), bytes);
  }
  async getSession(name: ProtocolAddress): Promise<SessionRecord | null> {
    const b = this.s.get('session', name.name());
    return b === undefined ? null : sessionRecord(b);
  }
  async getExistingSessions(addresses: ProtocolAddress[]): Promise<SessionRecord[]> {
    const out: SessionRecord[] = [];
    for (const a of addresses) {
      const b = this.s.get('session', a.name());
      if (b === undefined) throw new CryptoError('NO_SESSION', 'no session for an address');
      out.push(sessionRecord(b));
    }
    return out;
  }
}

class Identities extends IdentityKeyStore {
  constructor(private readonly s: StateAccess) {
    super();
  }
  async getIdentityKey(): Promise<PrivateKey> {
    return this.s.local.identity.privateKey;
  }
  /** The pair as decoded (the base class would derive the public key again at every call). */
  override async getIdentityKeyPair(): Promise<IdentityKeyPair> {
    return this.s.local.identity;
  }
  async getLocalRegistrationId(): Promise<number> {
    return this.s.local.registrationId;
  }
  async saveIdentity(name: ProtocolAddress, key: PublicKey): Promise<IdentityChange> {
    const old = this.s.get('identity', name.name());
    const bytes = key.serialize();
    if (old !== undefined && Buffer.from(old).equals(bytes)) return IdentityChange.NewOrUnchanged;
    this.s.put('identity', name.name(), bytes);
    return old !== undefined ? IdentityChange.ReplacedExisting : IdentityChange.NewOrUnchanged;
  }
  async isTrustedIdentity(name: ProtocolAddress, key: PublicKey, _direction: Direction): Promise<boolean> {
    const old = this.s.get('identity', name.name());
    return old === undefined || Buffer.from(old).equals(key.serialize());
  }
  async getIdentity(name: ProtocolAddress): Promise<PublicKey | null> {
    const b = this.s.get('identity', name.name());
    return b === undefined ? null : PublicKey.deserialize(Uint8Array.from(b));
  }
}

class PreKeys extends PreKeyStore {
  constructor(private readonly s: StateAccess) {
    super();
  }
  async savePreKey(id: number, record: PreKeyRecord): Promise<void> {
    this.s.put('prekey', String(id), record.serialize());
  }
  async getPreKey(id: number): Promise<PreKeyRecord> {
    return PreKeyRecord.deserialize(Uint8Array.from(this.s.need('prekey', String(id))));
  }
  async removePreKey(id: number): Promise<void> {
    this.s.put('prekey', String(id), null);
  }
}

class SignedPreKeys extends SignedPreKeyStore {
  constructor(private readonly s: StateAccess) {
    super();
  }
  async saveSignedPreKey(id: number, record: SignedPreKeyRecord): Promise<void> {
    this.s.put('signed-prekey', String(id), record.serialize());
  }
  async getSignedPreKey(id: number): Promise<SignedPreKeyRecord> {
    return SignedPreKeyRecord.deserialize(Uint8Array.from(this.s.need('signed-prekey', String(id))));
  }
}

class KyberPreKeys extends KyberPreKeyStore {
  constructor(private readonly s: StateAccess) {
    super();
  }
  async saveKyberPreKey(id: number, record: KyberPreKeyRecord): Promise<void> {
    this.s.put('kyber-prekey', String(id), record.serialize());
  }
  async getKyberPreKey(id: number): Promise<KyberPreKeyRecord> {
    return KyberPreKeyRecord.deserialize(Uint8Array.from(this.s.need('kyber-prekey', String(id))));
  }
  async markKyberPreKeyUsed(kyberId: number, signedId: number, baseKey: PublicKey): Promise<void> {
    // A replayed use of a last-resort key with the same base key is refused.
    const key = `${kyberId}:${signedId}:${Buffer.from(baseKey.serialize()).toString('hex')}`;
    if (this.s.get('kyber-used', key) !== undefined) throw new CryptoError('INVALID_MESSAGE', 'a Kyber prekey was used twice with one base key');
    this.s.put('kyber-used', key, new Uint8Array([1]));
  }
}

/**
 * libsignal's five stores over one connection's state. Reads see this object's own pending
 * writes first; `takeWrites()` hands the writes to the caller to commit, `discard()` drops them.
 */
export class ProtocolState {
  private pending = new Map<string, StateWrite>();
  readonly sessions: SessionStore;
  readonly identities: IdentityKeyStore;
  readonly preKeys: PreKeyStore;
  readonly signedPreKeys: SignedPreKeyStore;
  readonly kyberPreKeys: KyberPreKeyStore;

  constructor(
    readonly local: LocalIdentity,
    private readonly source: StateSource,
  ) {
    const access: StateAccess = {
      local,
      get: (kind, key) => this.get(kind, key),
      need: (kind, key) => this.need(kind, key),
      put: (kind, key, value) => this.put(kind, key, value),
    };
    this.sessions = new Sessions(access);
    this.identities = new Identities(access);
    this.preKeys = new PreKeys(access);
    this.signedPreKeys = new SignedPreKeys(access);
    this.kyberPreKeys = new KyberPreKeys(access);
  }

  private get(kind: StateKind, key: string): Uint8Array | undefined {
    const p = this.pending.get(`${kind}\u0000${key}`);
    if (p !== undefined) return p.value ?? undefined;
    return this.source.load(kind, key);
  }

  private need(kind: StateKind, key: string): Uint8Array {
    const v = this.get(kind, key);
    if (v === undefined) throw new CryptoError('INVALID_MESSAGE', `the message names a ${kind} this connection does not have`);
    return v;
  }

  private put(kind: StateKind, key: string, value: Uint8Array | null): void {
    this.pending.set(`${kind}\u0000${key}`, { kind, key, value });
  }

  /** Adds writes directly (used when creating prekeys). */
  stage(kind: StateKind, key: string, value: Uint8Array | null): void {
    this.put(kind, key, value);
  }

  /** The buffered writes, in order, and clears them. */
  takeWrites(): StateWrite[] {
    const w = [...this.pending.values()];
    this.pending.clear();
    return w;
  }

  /** Drops the buffered writes (after a failed decryption). */
  discard(): void {
    this.pending.clear();
  }

  /** The contact's identity key as recorded, if any. */
  remoteIdentity(remoteName: string): PublicKey | null {
    const b = this.get('identity', remoteName);
    return b === undefined ? null : PublicKey.deserialize(Uint8Array.from(b));
  }
}

/** The public half of a prekey bundle, as an invitation carries it. */
export type BundleFields = Readonly<{
  name: string;
  registrationId: number;
  identityKey: Uint8Array;
  preKeyId: number | null;
  preKey: Uint8Array | null;
  signedPreKeyId: number;
  signedPreKey: Uint8Array;
  signedPreKeySignature: Uint8Array;
  kyberPreKeyId: number;
  kyberPreKey: Uint8Array;
  kyberPreKeySignature: Uint8Array;
}>;

const BUNDLE_VERSION = 1;
/** Largest encoded Kyber public key accepted (Kyber1024 is 1,569 bytes with its type byte). */
const MAX_KEM_KEY = 1600;

/**
 * Makes a signed prekey, a Kyber prekey and (unless `oneTime` is false) a one-time prekey for
 * `state`'s identity, stages their records in `state`, and returns the public bundle.
 */
export function createPreKeys(state: ProtocolState, opts: Readonly<{ oneTime: boolean; now?: number }>): BundleFields {
  const id = state.local.identity;
  const now = opts.now ?? Date.now();
  const signedPreKeyId = randomInt(1, 0xffffff);
  const kyberPreKeyId = randomInt(1, 0xffffff);
  const spk = PrivateKey.generate();
  const spkSig = id.privateKey.sign(spk.getPublicKey().serialize());
  state.stage('signed-prekey', String(signedPreKeyId), SignedPreKeyRecord.new(signedPreKeyId, now, spk.getPublicKey(), spk, spkSig).serialize());
  const kem = KEMKeyPair.generate();
  const kemSig = id.privateKey.sign(kem.getPublicKey().serialize());
  state.stage('kyber-prekey', String(kyberPreKeyId), KyberPreKeyRecord.new(kyberPreKeyId, now, kem, kemSig).serialize());
  let preKeyId: number | null = null;
  let preKey: Uint8Array | null = null;
  if (opts.oneTime) {
    preKeyId = randomInt(1, 0xffffff);
    const pk = PrivateKey.generate();
    state.stage('prekey', String(preKeyId), PreKeyRecord.new(preKeyId, pk.getPublicKey(), pk).serialize());
    preKey = pk.getPublicKey().serialize();
  }
  return {
    name: state.local.name,
    registrationId: state.local.registrationId,
    identityKey: id.publicKey.serialize(),
    preKeyId,
    preKey,
    signedPreKeyId,
    signedPreKey: spk.getPublicKey().serialize(),
    signedPreKeySignature: spkSig,
    kyberPreKeyId,
    kyberPreKey: kem.getPublicKey().serialize(),
    kyberPreKeySignature: kemSig,
  };
}

/** Encodes bundle fields (version byte first). */
export function encodeBundle(b: BundleFields): Uint8Array {
  const w = new Writer(2048).u8(BUNDLE_VERSION).shortBytes(new TextEncoder().encode(b.name)).u16(b.registrationId);
  w.shortBytes(b.identityKey);
  if (b.preKeyId === null || b.preKey === null) w.u8(0);
  else w.u8(1).u32(b.preKeyId).shortBytes(b.preKey);
  w.u32(b.signedPreKeyId).shortBytes(b.signedPreKey).shortBytes(b.signedPreKeySignature);
  w.u32(b.kyberPreKeyId).longBytes(b.kyberPreKey, MAX_KEM_KEY).shortBytes(b.kyberPreKeySignature);
  return w.finish();
}

/** Decodes bundle fields; throws ProtocolError on malformed input. */
export function decodeBundle(bytes: Uint8Array): BundleFields {
  const r = new Reader(bytes);
  const v = r.u8('bundle version');
  if (v !== BUNDLE_VERSION) throw new ProtocolError('VERSION_UNSUPPORTED', `bundle version ${v} is not supported`);
  const name = new TextDecoder().decode(r.shortBytes(36, 'name'));
  const registrationId = r.u16('registration id');
  const identityKey = r.shortBytes(33, 'identity key');
  const hasPreKey = r.u8('prekey flag');
  if (hasPreKey > 1) throw new ProtocolError('BAD_VALUE', 'bad prekey flag');
  const preKeyId = hasPreKey === 1 ? r.u32('prekey id') : null;
  const preKey = hasPreKey === 1 ? r.shortBytes(33, 'prekey') : null;
  const signedPreKeyId = r.u32('signed prekey id');
  const signedPreKey = r.shortBytes(33, 'signed prekey');
  const signedPreKeySignature = r.shortBytes(64, 'signed prekey signature');
  const kyberPreKeyId = r.u32('kyber prekey id');
  const kyberPreKey = r.longBytes(MAX_KEM_KEY, 'kyber prekey');
  const kyberPreKeySignature = r.shortBytes(64, 'kyber prekey signature');
  r.end('bundle');
  return { name, registrationId, identityKey, preKeyId, preKey, signedPreKeyId, signedPreKey, signedPreKeySignature, kyberPreKeyId, kyberPreKey, kyberPreKeySignature };
}

const u = (b: Uint8Array): Uint8Array<ArrayBuffer> => Uint8Array.from(b);

/** Runs PQXDH from a contact's bundle, staging the new session in `state`. */
export async function startSession(state: ProtocolState, b: BundleFields): Promise<void> {
  let bundle: PreKeyBundle;
  try {
    Aci.fromUuid(b.name);
    bundle = PreKeyBundle.new(
      b.registrationId,
      DEVICE_ID,
      b.preKeyId,
      b.preKey === null ? null : PublicKey.deserialize(u(b.preKey)),
      b.signedPreKeyId,
      PublicKey.deserialize(u(b.signedPreKey)),
      u(b.signedPreKeySignature),
      PublicKey.deserialize(u(b.identityKey)),
      b.kyberPreKeyId,
      KEMPublicKey.deserialize(u(b.kyberPreKey)),
      u(b.kyberPreKeySignature),
    );
    await processPreKeyBundle(bundle, protocolAddress(b.name), protocolAddress(state.local.name), state.sessions, state.identities);
  } catch (e) {
    state.discard();
    throw wrap(e, 'BAD_BUNDLE', 'the invitation keys are invalid');
  }
}

/** Message kinds on the wire: a PreKey message (until the contact answers) or a normal one. */
export type SessionMessageType = 'prekey' | 'whisper';

/** Encrypts for `remoteName`; the ratchet step is staged in `state`. */
export async function encrypt(state: ProtocolState, remoteName: string, plaintext: Uint8Array): Promise<{ type: SessionMessageType; body: Uint8Array }> {
  try {
    const m = await signalEncrypt(u(plaintext), protocolAddress(remoteName), protocolAddress(state.local.name), state.sessions, state.identities);
    return { type: m.type() === CiphertextMessageType.PreKey ? 'prekey' : 'whisper', body: m.serialize() };
  } catch (e) {
    state.discard();
    throw wrap(e, 'NO_SESSION', 'could not encrypt for this contact');
  }
}

/**
 * Decrypts from `remoteName`. On success the state changes are staged in `state` (commit them
 * with the message); on failure they are dropped and a CryptoError says why.
 */
export async function decrypt(state: ProtocolState, remoteName: string, type: SessionMessageType, body: Uint8Array): Promise<Uint8Array> {
  const remote = protocolAddress(remoteName);
  const local = protocolAddress(state.local.name);
  try {
    if (type === 'prekey') {
      const m = PreKeySignalMessage.deserialize(u(body));
      return await signalDecryptPreKey(m, remote, local, state.sessions, state.identities, state.preKeys, state.signedPreKeys, state.kyberPreKeys);
    }
    return await signalDecrypt(SignalMessage.deserialize(u(body)), remote, local, state.sessions, state.identities);
  } catch (e) {
    state.discard();
    throw wrap(e, 'INVALID_MESSAGE', 'the message could not be decrypted');
  }
}

/** Iterations of the safety number hash (as Signal uses). */
export const SAFETY_NUMBER_ITERATIONS = 5200;

/**
 * The safety number of a connection: 60 digits, the same on both sides, and its QR payload.
 * Murmure has no user ids, so each side's identity key is also its identifier.
 */
export function safetyNumber(localKey: Uint8Array, remoteKey: Uint8Array): { digits: string; scannable: Uint8Array } {
  const f = Fingerprint.new(SAFETY_NUMBER_ITERATIONS, 2, u(localKey), PublicKey.deserialize(u(localKey)), u(remoteKey), PublicKey.deserialize(u(remoteKey)));
  return { digits: f.displayableFingerprint().toString(), scannable: f.scannableFingerprint().toBuffer() };
}
