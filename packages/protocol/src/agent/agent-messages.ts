// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Client-to-client formats carried inside relay messages: invitation links and the data behind
 * them, the per-queue box frame, the agent envelope (sequence number, hash of the previous
 * message, time) and the handshake bodies. docs/protocol/agent.md.
 * @module
 */

import { asciiBytes, asciiString } from '../encoding/ascii.js';
import { fromBase64Url, toBase64Url } from '../encoding/base64url.js';
import { Reader } from '../encoding/reader.js';
import { Writer } from '../encoding/writer.js';
import { ProtocolError } from '../errors.js';
import { ID_LENGTH, KEY_LENGTH } from '../limits.js';
import { MAX_ADDRESS_LENGTH, formatRelayAddress, parseRelayAddress, type RelayAddress } from '../relay/address.js';

/**
 * Agent protocol versions. History:
 * - 1 (2026-11-26): invitations behind short links, confirmation/reply handshake, envelopes
 *   with sequence numbers and hash chain, delivery receipts, queue rotation (the SWITCH
 *   body), the session reset (the reset session payload and the RESYNC body) and batches
 *   (several session payloads in one box), all added before v1 was released.
 */
export const AGENT_VERSION = 1;

/** Length of a link key (ChaCha20-Poly1305 key of the link data). */
export const LINK_KEY_LENGTH = 32;
/** Length of the hash of the previous message (SHA-256). */
export const HASH_LENGTH = 32;
/** Nonce length of the per-queue box. */
export const QUEUE_BOX_NONCE_LENGTH = 12;
/**
 * Every plaintext inside the per-queue box is padded to this size, so all messages of a
 * connection look alike to the relay. It leaves room under the relay's 16,064-byte body limit
 * for the frame (2), the sender's box key (32), the nonce (12) and the tag (16).
 */
export const QUEUE_BOX_PADDED = 15_936;
/** Largest chat payload an envelope carries (leaves room for libsignal's PreKey overhead). */
export const MAX_CHAT_PAYLOAD = 12_000;
/** Largest invitation data (before encryption). */
export const MAX_INVITATION_DATA = 8_192;

/** What a link invites to: a one-time connection or a long-term contact address. */
export type LinkKind = 'invitation' | 'address';

/** A parsed invitation link. */
export type InvitationLink = Readonly<{ kind: LinkKind; relay: RelayAddress; linkId: Uint8Array; key: Uint8Array }>;

/** Formats a link: `murmure://<fingerprint>@host:port/i#<linkId>.<key>` (`/a#` for an address). */
export function formatInvitationLink(l: InvitationLink): string {
  return `${formatRelayAddress(l.relay)}/${l.kind === 'invitation' ? 'i' : 'a'}#${toBase64Url(l.linkId)}.${toBase64Url(l.key)}`;
}

/** Parses a link; throws BAD_ADDRESS with a reason a person can act on. */
export function parseInvitationLink(text: string): InvitationLink {
  const t = text.trim();
  if (t.length > MAX_ADDRESS_LENGTH + 100) throw new ProtocolError('BAD_ADDRESS', 'the link is too long');
  const m = /^(murmure:\/\/[^/#]+)\/([ia])#([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)$/.exec(t);
  if (m === null) throw new ProtocolError('BAD_ADDRESS', 'this is not a Murmure invitation link');
  const [, relayText, kind, id, key] = m as unknown as [string, string, string, string, string];
  const relay = parseRelayAddress(relayText);
  // Links are made without it (a contact only sends): one that carries it is not one of ours, and
  // would not read back the same.
  if (relay.password !== undefined) throw new ProtocolError('BAD_ADDRESS', 'an invitation link carries no relay password');
  let linkId: Uint8Array;
  let linkKey: Uint8Array;
  try {
    linkId = fromBase64Url(id);
    linkKey = fromBase64Url(key);
  } catch (e) {
    throw new ProtocolError('BAD_ADDRESS', 'the link is damaged', { cause: e });
  }
  if (linkId.length !== ID_LENGTH || linkKey.length !== LINK_KEY_LENGTH) throw new ProtocolError('BAD_ADDRESS', 'the link is damaged');
  return { kind: kind === 'i' ? 'invitation' : 'address', relay, linkId, key: linkKey };
}

/** The queue a contact is to send to: its relay, sender id and the box key of the queue. */
export type QueueAddress = Readonly<{ relay: RelayAddress; sndId: Uint8Array; e2eKey: Uint8Array }>;

function writeQueue(w: Writer, q: QueueAddress): void {
  w.longBytes(asciiBytes(formatRelayAddress(q.relay)), MAX_ADDRESS_LENGTH, 'relay address');
  w.bytesN(q.sndId, ID_LENGTH, 'sender id').bytesN(q.e2eKey, KEY_LENGTH, 'queue key');
}

function readQueue(r: Reader): QueueAddress {
  const text = asciiString(r.longBytes(MAX_ADDRESS_LENGTH, 'relay address'));
  const relay = parseRelayAddress(text);
  // A contact's queue is written without the relay's password (writeQueue): one that carries it
  // did not come from an encoder of ours, and the password is no business of the receiver's.
  if (relay.password !== undefined) throw new ProtocolError('BAD_ADDRESS', 'a queue address carries no relay password');
  return { relay, sndId: r.bytesN(ID_LENGTH, 'sender id'), e2eKey: r.bytesN(KEY_LENGTH, 'queue key') };
}

/** What a link's data holds once decrypted. */
export type InvitationData = Readonly<{ version: number; kind: LinkKind; queue: QueueAddress; bundle: Uint8Array }>;

/** Encodes invitation data. */
export function encodeInvitationData(d: InvitationData): Uint8Array {
  const w = new Writer(4096).u8(d.version).u8(d.kind === 'invitation' ? 1 : 2);
  writeQueue(w, d.queue);
  return w.longBytes(d.bundle, MAX_INVITATION_DATA, 'bundle').finish();
}

/** Decodes invitation data; a newer major version is refused with VERSION_UNSUPPORTED. */
export function decodeInvitationData(bytes: Uint8Array): InvitationData {
  const r = new Reader(bytes);
  const version = r.u8('version');
  if (version === 0) throw new ProtocolError('VERSION_TOO_OLD', 'the invitation is from an unsupported old version');
  if (version > AGENT_VERSION) throw new ProtocolError('VERSION_UNSUPPORTED', 'the invitation needs a newer version of Murmure');
  const k = r.u8('kind');
  if (k !== 1 && k !== 2) throw new ProtocolError('BAD_TAG', 'unknown invitation kind');
  const queue = readQueue(r);
  const bundle = r.longBytes(MAX_INVITATION_DATA, 'bundle');
  r.end('invitation data');
  return { version, kind: k === 1 ? 'invitation' : 'address', queue, bundle };
}

/** The frame of a SEND body: the per-queue box, with the sender's box key on the first message. */
export type QueueFrame = Readonly<{ senderKey: Uint8Array | null; nonce: Uint8Array; sealed: Uint8Array }>;

/** Encodes a queue frame. */
export function encodeQueueFrame(f: QueueFrame): Uint8Array {
  const w = new Writer(f.sealed.length + 64).u8(AGENT_VERSION).u8(f.senderKey === null ? 1 : 0);
  if (f.senderKey !== null) w.bytesN(f.senderKey, KEY_LENGTH, 'sender box key');
  return w.bytesN(f.nonce, QUEUE_BOX_NONCE_LENGTH, 'nonce').bytes(f.sealed).finish();
}

/** Decodes a queue frame. */
export function decodeQueueFrame(bytes: Uint8Array): QueueFrame {
  const r = new Reader(bytes);
  const v = r.u8('version');
  if (v !== AGENT_VERSION) throw new ProtocolError(v > AGENT_VERSION ? 'VERSION_UNSUPPORTED' : 'VERSION_TOO_OLD', 'unsupported message version');
  const k = r.u8('frame kind');
  if (k > 1) throw new ProtocolError('BAD_TAG', 'unknown frame kind');
  const senderKey = k === 0 ? r.bytesN(KEY_LENGTH, 'sender box key') : null;
  const nonce = r.bytesN(QUEUE_BOX_NONCE_LENGTH, 'nonce');
  const sealed = r.rest();
  if (sealed.length < 16) throw new ProtocolError('TRUNCATED', 'frame has no sealed content');
  return { senderKey, nonce, sealed };
}

/**
 * What the per-queue box holds: the libsignal message and its type. A PreKey message also
 * names its sender's libsignal address (a random UUID), which the session binds to.
 */
export type SessionPayload = Readonly<{ prekey: boolean; senderName: string | null; body: Uint8Array }>;

/** Encodes a session payload (padded by the caller). */
export function encodeSessionPayload(p: SessionPayload): Uint8Array {
  const w = new Writer(p.body.length + 48).u8(p.prekey ? 3 : 2);
  if (p.prekey) w.shortBytes(asciiBytes(p.senderName ?? ''), 64, 'sender name');
  return w.longBytes(p.body, QUEUE_BOX_PADDED, 'session message').finish();
}

/** Decodes a session payload. */
export function decodeSessionPayload(bytes: Uint8Array): SessionPayload {
  const r = new Reader(bytes);
  const t = r.u8('session message type');
  if (t !== 2 && t !== 3) throw new ProtocolError('BAD_TAG', 'unknown session message type');
  const senderName = t === 3 ? asciiString(r.shortBytes(64, 'sender name')) : null;
  const body = r.longBytes(QUEUE_BOX_PADDED, 'session message');
  r.end('session payload');
  return { prekey: t === 3, senderName, body };
}

/** The first byte of a session reset, beside libsignal's message types 2 and 3. */
export const SESSION_RESET_TAG = 4;

/**
 * A request to start the libsignal session again, sent when messages from the contact no longer
 * decrypt (typically because one side restored an old backup). It is not inside libsignal (that
 * is what broke), only inside the per-queue box: `bundle` is a fresh prekey bundle of the
 * sender's connection identity, `nextSendSeq` the sequence number its next envelope will have,
 * `lastRcvSeq` and `lastRcvHash` the last sequence number and hash it received from the contact
 * (so that a contact whose copy is older continues after them), and `sentAt` the sender's clock,
 * so that a replayed older reset can be told apart.
 */
export type SessionReset = Readonly<{ sentAt: number; nextSendSeq: number; lastRcvSeq: number; lastRcvHash: Uint8Array; bundle: Uint8Array }>;

/** Encodes a session reset (padded by the caller). */
export function encodeSessionReset(p: SessionReset): Uint8Array {
  const w = new Writer(p.bundle.length + 64).u8(SESSION_RESET_TAG).u64(p.sentAt).u64(p.nextSendSeq).u64(p.lastRcvSeq);
  return w.bytesN(p.lastRcvHash, HASH_LENGTH, 'reset hash').longBytes(p.bundle, MAX_INVITATION_DATA, 'reset bundle').finish();
}

/** Decodes a session reset. */
export function decodeSessionReset(bytes: Uint8Array): SessionReset {
  const r = new Reader(bytes);
  if (r.u8('session message type') !== SESSION_RESET_TAG) throw new ProtocolError('BAD_TAG', 'not a session reset');
  const sentAt = r.u64('reset sent at');
  const nextSendSeq = r.u64('reset next seq');
  const lastRcvSeq = r.u64('reset last seq');
  const lastRcvHash = r.bytesN(HASH_LENGTH, 'reset hash');
  const bundle = r.longBytes(MAX_INVITATION_DATA, 'reset bundle');
  r.end('session reset');
  return { sentAt, nextSendSeq, lastRcvSeq, lastRcvHash, bundle };
}

/** The first byte of a batch, beside libsignal's message types 2 and 3 and the reset's 4. */
export const SESSION_BATCH_TAG = 5;
/** Most session payloads in one batch. */
export const MAX_BATCH_PAYLOADS = 128;
/** What a batch adds to its payloads: the tag and the count, and a 2-byte length before each payload. */
export const BATCH_OVERHEAD = 2;
export const BATCH_ITEM_OVERHEAD = 2;
/** Largest encoded batch: what fits the per-queue box's padding. */
export const MAX_BATCH_SIZE = QUEUE_BOX_PADDED - 2;

/**
 * Several session payloads, in the order they were composed, in one per-queue box: what a sender
 * whose outbox holds more than one message for a contact sends as one relay message. Each
 * payload is a libsignal message of its own (tag 2 or 3); a batch holds no reset and no batch.
 */
export function encodeSessionBatch(payloads: readonly Uint8Array[]): Uint8Array {
  if (payloads.length < 2 || payloads.length > MAX_BATCH_PAYLOADS) throw new ProtocolError('BAD_VALUE', `a batch holds 2 to ${MAX_BATCH_PAYLOADS} payloads`);
  const size = payloads.reduce((n, p) => n + BATCH_ITEM_OVERHEAD + p.length, BATCH_OVERHEAD);
  if (size > MAX_BATCH_SIZE) throw new ProtocolError('TOO_LARGE', `a batch of ${size} bytes does not fit the box`);
  const w = new Writer(size).u8(SESSION_BATCH_TAG).u8(payloads.length);
  for (const p of payloads) {
    if (p[0] !== 2 && p[0] !== 3) throw new ProtocolError('BAD_TAG', 'a batch holds libsignal messages only');
    w.longBytes(p, MAX_BATCH_SIZE, 'batched payload');
  }
  return w.finish();
}

/** Decodes a batch into its session payloads (each decoded as `decodeSessionPayload` does). */
export function decodeSessionBatch(bytes: Uint8Array): SessionPayload[] {
  const r = new Reader(bytes);
  if (r.u8('session message type') !== SESSION_BATCH_TAG) throw new ProtocolError('BAD_TAG', 'not a batch');
  const count = r.u8('batch count');
  if (count < 2 || count > MAX_BATCH_PAYLOADS) throw new ProtocolError('BAD_VALUE', `a batch holds 2 to ${MAX_BATCH_PAYLOADS} payloads`);
  const out: SessionPayload[] = [];
  for (let i = 0; i < count; i++) out.push(decodeSessionPayload(r.longBytes(MAX_BATCH_SIZE, 'batched payload')));
  r.end('batch');
  return out;
}

/** Agent message types. */
export const EnvelopeType = { CONFIRMATION: 1, REPLY: 2, MESSAGE: 3, RECEIPT: 4, SWITCH: 5, RESYNC: 6 } as const;

/** The agent envelope, inside libsignal's encryption. */
export type Envelope = Readonly<{
  seq: number;
  prevHash: Uint8Array;
  sentAt: number;
  body: EnvelopeBody;
}>;

/** What an envelope carries. */
export type EnvelopeBody =
  /** Joiner -> inviter, first message: the joiner's queue, its sender key for the inviter's queue and a chat payload (profile). */
  | { type: 'CONFIRMATION'; replyQueue: QueueAddress; replySenderKey: Uint8Array; senderAuthKey: Uint8Array; payload: Uint8Array }
  /** Inviter -> joiner: completes the handshake, with a fresh queue when the link was an address. */
  | { type: 'REPLY'; newQueue: QueueAddress | null; payload: Uint8Array }
  /** A chat message. */
  | { type: 'MESSAGE'; payload: Uint8Array }
  /** Delivery receipt for the messages with these sequence numbers. */
  | { type: 'RECEIPT'; seqs: readonly number[] }
  /**
   * Queue owner -> contact: send to this new queue from now on, authenticated with `senderKey`
   * (a raw X25519 private key the owner made and `KEY`ed the queue with).
   */
  | { type: 'SWITCH'; newQueue: QueueAddress; senderKey: Uint8Array }
  /**
   * The answer to a session reset, the first envelope of the new session: the last sequence
   * number and hash received from the contact, so that a contact whose copy is older than ours
   * (restored from a backup) continues its numbering and hash chain after them; and whether the
   * sender found, from the reset, that it was itself restored from an old copy.
   */
  | { type: 'RESYNC'; lastRcvSeq: number; lastRcvHash: Uint8Array; senderRestored: boolean };

/** Most sequence numbers one receipt names. */
export const MAX_RECEIPT_SEQS = 256;

/** Encodes an envelope. */
export function encodeEnvelope(e: Envelope): Uint8Array {
  const w = new Writer(256).u8(AGENT_VERSION).u64(e.seq).bytesN(e.prevHash, HASH_LENGTH, 'previous hash').u64(e.sentAt);
  const b = e.body;
  w.u8(EnvelopeType[b.type]);
  switch (b.type) {
    case 'CONFIRMATION':
      writeQueue(w, b.replyQueue);
      w.bytesN(b.replySenderKey, KEY_LENGTH, 'reply sender key').bytesN(b.senderAuthKey, KEY_LENGTH, 'sender auth key');
      w.longBytes(b.payload, MAX_CHAT_PAYLOAD, 'payload');
      break;
    case 'REPLY':
      if (b.newQueue === null) w.u8(0);
      else writeQueue(w.u8(1), b.newQueue);
      w.longBytes(b.payload, MAX_CHAT_PAYLOAD, 'payload');
      break;
    case 'MESSAGE':
      w.longBytes(b.payload, MAX_CHAT_PAYLOAD, 'payload');
      break;
    case 'RECEIPT':
      if (b.seqs.length > MAX_RECEIPT_SEQS) throw new ProtocolError('TOO_LARGE', 'too many receipts');
      w.u16(b.seqs.length);
      for (const s of b.seqs) w.u64(s);
      break;
    case 'SWITCH':
      writeQueue(w, b.newQueue);
      w.bytesN(b.senderKey, KEY_LENGTH, 'switch sender key');
      break;
    case 'RESYNC':
      w.u64(b.lastRcvSeq).bytesN(b.lastRcvHash, HASH_LENGTH, 'resync hash').u8(b.senderRestored ? 1 : 0);
      break;
  }
  return w.finish();
}

/** Decodes an envelope; only ProtocolError is thrown. */
export function decodeEnvelope(bytes: Uint8Array): Envelope {
  const r = new Reader(bytes);
  const v = r.u8('version');
  if (v !== AGENT_VERSION) throw new ProtocolError(v > AGENT_VERSION ? 'VERSION_UNSUPPORTED' : 'VERSION_TOO_OLD', 'unsupported envelope version');
  const seq = r.u64('seq');
  const prevHash = r.bytesN(HASH_LENGTH, 'previous hash');
  const sentAt = r.u64('sent at');
  const t = r.u8('envelope type');
  let body: EnvelopeBody;
  switch (t) {
    case EnvelopeType.CONFIRMATION:
      body = {
        type: 'CONFIRMATION',
        replyQueue: readQueue(r),
        replySenderKey: r.bytesN(KEY_LENGTH, 'reply sender key'),
        senderAuthKey: r.bytesN(KEY_LENGTH, 'sender auth key'),
        payload: r.longBytes(MAX_CHAT_PAYLOAD, 'payload'),
      };
      break;
    case EnvelopeType.REPLY: {
      const has = r.u8('queue flag');
      if (has > 1) throw new ProtocolError('BAD_VALUE', 'bad queue flag');
      body = { type: 'REPLY', newQueue: has === 1 ? readQueue(r) : null, payload: r.longBytes(MAX_CHAT_PAYLOAD, 'payload') };
      break;
    }
    case EnvelopeType.MESSAGE:
      body = { type: 'MESSAGE', payload: r.longBytes(MAX_CHAT_PAYLOAD, 'payload') };
      break;
    case EnvelopeType.RECEIPT: {
      const n = r.u16('receipt count');
      if (n > MAX_RECEIPT_SEQS) throw new ProtocolError('TOO_LARGE', 'too many receipts');
      const seqs: number[] = [];
      for (let i = 0; i < n; i++) seqs.push(r.u64('receipt seq'));
      body = { type: 'RECEIPT', seqs };
      break;
    }
    case EnvelopeType.SWITCH:
      body = { type: 'SWITCH', newQueue: readQueue(r), senderKey: r.bytesN(KEY_LENGTH, 'switch sender key') };
      break;
    case EnvelopeType.RESYNC:
    {
      const lastRcvSeq = r.u64('resync seq');
      const lastRcvHash = r.bytesN(HASH_LENGTH, 'resync hash');
      const flag = r.u8('resync flag');
      if (flag > 1) throw new ProtocolError('BAD_VALUE', 'bad resync flag');
      body = { type: 'RESYNC', lastRcvSeq, lastRcvHash, senderRestored: flag === 1 };
      break;
    }
    default:
      throw new ProtocolError('BAD_TAG', `unknown envelope type ${t}`);
  }
  r.end('envelope');
  return { seq, prevHash, sentAt, body };
}
