// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The agent: connections as pairs of one-way queues, the invitation handshake, and delivery.
 *
 * Sending: a message is wrapped (envelope with sequence number and hash of the previous
 * message → libsignal → per-queue box → padding) and stored in the outbox in one transaction
 * with the ratchet step, then sent byte for byte, retried with backoff until the relay says OK.
 * Receiving: the relay's box is opened, then the per-queue box, then libsignal; the decrypted
 * message, the ratchet state and the new sequence number are committed in one transaction
 * (through the owner's `incoming` hook) and only then acknowledged. A crash anywhere loses
 * nothing and shows nothing twice. docs/protocol/agent.md.
 * @module
 */

import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';

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
} from '@murmure/crypto';
import {
  AGENT_VERSION,
  BATCH_ITEM_OVERHEAD,
  BATCH_OVERHEAD,
  HASH_LENGTH,
  MAX_BATCH_PAYLOADS,
  MAX_BATCH_SIZE,
  MAX_CHAT_PAYLOAD,
  ProtocolError,
  QUEUE_BOX_NONCE_LENGTH,
  QUEUE_BOX_PADDED,
  SESSION_BATCH_TAG,
  SESSION_RESET_TAG,
  decodeEnvelope,
  decodeInvitationData,
  decodeQueueFrame,
  decodeSessionBatch,
  decodeSessionPayload,
  decodeSessionReset,
  encodeEnvelope,
  encodeInvitationData,
  encodeQueueFrame,
  encodeSessionBatch,
  encodeSessionPayload,
  encodeSessionReset,
  formatInvitationLink,
  formatRelayAddress,
  MAX_RECEIPT_SEQS,
  pad,
  parseInvitationLink,
  parseRelayAddress,
  relayName,
  unpad,
  type EnvelopeBody,
  type SessionPayload,
  type LinkKind,
  type QueueAddress,
} from '@murmure/protocol';
import {
  agree,
  dhKeyPairFromRaw,
  exportPrivateKey,
  generateDhKeyPair,
  importKeyPair,
  openWithNonce,
  queueBoxKey,
  randomId,
  rawDhPrivateKey,
  type KeyPair,
  sealWithNonce,
} from '@murmure/queue-crypto';

import { AgentError } from './errors.js';
import type { LocalDatabase } from './store/database.js';
import { AgentStore, NEXT_QUEUE_COLUMNS, OLD_QUEUE_COLUMNS, type ConnectionRow, type ConnectionStatus, type OutboxRow } from './store/agent-store.js';
import { CONNECT_TIMEOUT_MS, RelayClientError, openDelivered, type ConnectOptions, type PushedMessage, type RecipientQueue, type RelayClient } from './transport/relay-client.js';
import { RelayPool } from './transport/relay-pool.js';
import { SOCKS_CONNECT_TIMEOUT_MS, randomSocksCredentials, socks5Connection, type Socks5Credentials, type Socks5Proxy } from './transport/socks.js';

/** First retry delay of an outgoing message. */
export const SEND_RETRY_MIN_MS = 500;
/** Longest retry delay of an outgoing message. */
export const SEND_RETRY_MAX_MS = 60_000;
/** Longest delay before sending again to a contact's full queue. */
export const QUOTA_RETRY_MS = 250;
/**
 * First delay before sending again to a contact's full queue; it doubles (up to QUOTA_RETRY_MS)
 * while the queue stays full. Short, because the contact may be draining the queue right now.
 */
export const QUOTA_RETRY_MIN_MS = 8;
/** Outgoing messages of one connection in flight to the relay at once. */
export const SEND_WINDOW = 32;
/** Most outbox rows one pass of the sender looks at. */
export const OUTBOX_BATCH = 1024;
/** How long receipts are gathered before one receipt message is sent. */
export const RECEIPT_DELAY_MS = 50;
/** An outgoing message is given up after this long without the relay accepting it. */
export const SEND_GIVE_UP_MS = 2 * 86_400_000;
/**
 * Most sequence numbers a contact's reset or RESYNC may move our next number forward (what a
 * restored copy missed). A larger claim is ignored: it could only be an attempt to exhaust the
 * numbers.
 */
export const MAX_RESYNC_JUMP = 1_000_000;
/** Failed attempts a row must also have had before it is given up: SEND_GIVE_UP_MS of retries at the longest delay. */
export const SEND_GIVE_UP_ATTEMPTS = Math.ceil(SEND_GIVE_UP_MS / SEND_RETRY_MAX_MS);
/**
 * During a queue switch, a message on the new queue that skips sequence numbers is held back
 * (not processed, not ACKed) while the old queue may still deliver the missing ones: until this
 * long has passed without a message on the old queue.
 */
export const SWITCH_HOLD_MS = 1500;
/** How often the agent looks again whether an old queue is empty, to delete it. */
export const RETIRE_RETRY_MS = 1000;
/** How long it waits before trying again when the old queue's relay could not be reached. */
export const RETIRE_ERROR_RETRY_MS = 10_000;
/**
 * After a session reset was sent or answered on a connection, messages that fail to decrypt do
 * not ask for another one for this long: they are most likely the contact's messages from the
 * broken session, still on their way.
 */
export const RESET_INTERVAL_MS = 60_000;

const LINK_AAD = new TextEncoder().encode('murmure-link-v1');
const ZERO_HASH = new Uint8Array(HASH_LENGTH);

/** What arrived on a connection, handed to the owner inside the receive transaction. */
export type IncomingEvent =
  /**
   * A contact used our link; `payload` is their profile. For a long-term address, `addressId`
   * names the address and `connId` is the new contact's own connection.
   */
  | { type: 'confirmation'; connId: string; addressId: string | null; payload: Uint8Array }
  /** The contact answered our confirmation; the connection is up. */
  | { type: 'reply'; connId: string; payload: Uint8Array }
  | { type: 'message'; connId: string; seq: number; sentAt: number; receivedAt: number; payload: Uint8Array }
  | { type: 'receipt'; connId: string; seqs: readonly number[] }
  /** Messages `from`..`to` never arrived (dropped by a relay, or expired). */
  | { type: 'gap'; connId: string; from: number; to: number }
  /** A message broke the hash chain (tampered or replayed from an old backup). */
  | { type: 'bad-hash'; connId: string; seq: number }
  /**
   * The libsignal session was started again after messages stopped decrypting. `restored` says
   * who had restored an old copy, as far as the sequence numbers tell: `contact` (they sent a
   * reset naming an older number than we received from them), `self` (the contact had received
   * more from us than this copy knows of, so what we sent since the copy was made never reached
   * it), or `unknown`.
   */
  | { type: 'resync'; connId: string; restored: 'contact' | 'self' | 'unknown' }
  /** The contact's identity key changed (with a session reset); the safety number is new. */
  | { type: 'identity-changed'; connId: string };

/** The owner's hooks; each runs inside the agent's database transaction and must be synchronous. */
export type AgentHandler = Readonly<{
  incoming(ev: IncomingEvent): void;
  sent(connId: string, seq: number): void;
  connected(connId: string): void;
  failed(connId: string, seq: number): void;
  /** The payload (our profile) for the reply to a confirmation on connection `connId`. */
  replyPayload(connId: string): Uint8Array;
}>;

/** Which of a connection's receive queues a message came on: its current one, or the next or old one of a switch. */
type RcvSlot = Readonly<{ slot: 'current' | 'next' | 'old'; relay: string; q: RecipientQueue; e2eKey: Uint8Array }>;

/**
 * Progress of a queue switch, emitted as `switch` events: `started` (we made a new queue and
 * queued SWITCH), `moved` (the contact's SWITCH moved our sending to its new queue), `promoted`
 * (the contact's first message arrived on our new queue), `retired` (the old queue was deleted).
 */
export type SwitchEvent = Readonly<{ connId: string; phase: 'started' | 'moved' | 'promoted' | 'retired'; relay: string }>;

/** A connection as the owner sees it. */
export type ConnectionInfo = Readonly<{ id: string; kind: ConnectionRow['kind']; status: ConnectionStatus; receipts: boolean; createdAt: number }>;

/** Agent options. */
export type AgentOptions = Readonly<{
  db: LocalDatabase;
  handler: AgentHandler;
  now?: () => number;
  /** Opens relay connections another way. Called per relay (and per queue with `socks5`). */
  connectOptions?: (relay: string) => ConnectOptions;
  /**
   * Reach every relay through this SOCKS5 proxy (Tor), each queue over a connection of its own
   * with random credentials of its own, so that Tor (IsolateSOCKSAuth) gives each its own circuit.
   */
  socks5?: Socks5Proxy;
}>;

/** `{ column: null }` for each column, to clear a group of columns. */
function nullColumns<K extends string>(cols: readonly K[]): Record<K, null> {
  return Object.fromEntries(cols.map((k) => [k, null])) as Record<K, null>;
}

function sha256(b: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(b).digest());
}

function eq(a: Uint8Array | null, b: Uint8Array | null): boolean {
  return a !== null && b !== null && Buffer.from(a).equals(Buffer.from(b));
}

/** Serialises async work per key. */
class KeyedMutex {
  private readonly tails = new Map<string, Promise<unknown>>();
  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return next;
  }
}

/** What a batch's box nonce is derived under. */
const BATCH_NONCE_LABEL = Buffer.from('murmure/agent/v1/batch-nonce');

/**
 * The per-queue box nonce of a batch: the first 12 bytes of SHA-256 over a label and the rows'
 * own random nonces, in order. Each row's nonce was drawn with its body and is stored with it
 * (a restored or cloned database restores both), so the same rows give the same nonce, and any
 * other rows, whatever ids they were given, another one.
 */
function batchNonce(rows: readonly Readonly<{ nonce: Uint8Array }>[]): Uint8Array {
  const h = createHash('sha256').update(BATCH_NONCE_LABEL);
  for (const r of rows) h.update(r.nonce);
  return new Uint8Array(h.digest().subarray(0, QUEUE_BOX_NONCE_LENGTH));
}

/** An outbox row as the sender lists it, and its stored frame. */
type QueuedRow = ReturnType<AgentStore['queued']>[number];
type OutboxFrame = Pick<OutboxRow, 'body' | 'frame_key' | 'nonce'>;

/** The agent. Events (after commit): `event` (IncomingEvent), `sent`, `connected`, `problem`, `switch` (SwitchEvent). */
export class Agent extends EventEmitter {
  readonly store: AgentStore;
  private readonly pool: RelayPool;
  private readonly mutex = new KeyedMutex();
  private readonly now: () => number;
  private readonly handler: AgentHandler;
  private outboxTimer: NodeJS.Timeout | null = null;
  private outboxRunning = false;
  private outboxAgain = false;
  private readonly receipts = new Map<string, number[]>();
  /**
   * Per connection whose contact's queue was last found full: how many times in a row. Its
   * sending restarts one body at a time and widens while the relay accepts.
   */
  private readonly quotaFull = new Map<string, number>();
  /** Per connection: how many bodies may be in flight at once (1 up to SEND_WINDOW). */
  private readonly sendWidth = new Map<string, number>();
  /** Per connection: when a session reset was last sent or answered, and the newest reset seen from the contact (its clock). */
  private readonly resets = new Map<string, { at: number; seen: number }>();
  private stopped = false;
  private readonly inflight = new Set<Promise<unknown>>();
  /** Whether each queue has a relay connection of its own (with a proxy). */
  private readonly isolate: boolean;
  /** SOCKS credentials by isolation key, random and kept for the life of the process. */
  private readonly socksAuth = new Map<string, Socks5Credentials>();
  /** A message held back during a queue switch, per connection (see SWITCH_HOLD_MS). */
  private readonly held = new Map<string, { client: RelayClient; m: PushedMessage; timer: NodeJS.Timeout }>();
  /** Accepting connections whose queue the relay refused to make for want of its password, until the next start. */
  private readonly awaitingPassword = new Set<string>();
  /** Connections whose old queue is being retired (a check is running or scheduled). */
  private readonly retiring = new Set<string>();

  constructor(opts: AgentOptions) {
    super();
    this.store = new AgentStore(opts.db);
    this.handler = opts.handler;
    this.now = opts.now ?? Date.now;
    const socks5 = opts.socks5;
    this.isolate = socks5 !== undefined;
    this.pool = new RelayPool({
      queuesOn: (relay, isolation) => this.queuesOn(relay, isolation),
      onMessage: (_relay, client, m) => this.track(this.onPush(client, m)),
      ...(socks5 !== undefined
        ? { connectOptions: (relay: string, isolation: string) => ({ timeoutMs: SOCKS_CONNECT_TIMEOUT_MS + CONNECT_TIMEOUT_MS, ...opts.connectOptions?.(relay), createConnection: socks5Connection(socks5, this.socksCredentials(isolation)) }) }
        : opts.connectOptions ? { connectOptions: opts.connectOptions } : {}),
    });
    this.pool.on('up', () => {
      // A relay is back: what waited for it need not wait out its backoff.
      this.store.retryNow();
      this.kickOutbox();
    });
  }

  /** The pool's isolation key of a connection's receive or send queue: '' (shared) without a proxy. */
  private route(side: 'rcv' | 'snd', connId: string): string {
    return this.isolate ? `${side}:${connId}` : '';
  }

  private socksCredentials(isolation: string): Socks5Credentials {
    let c = this.socksAuth.get(isolation);
    if (c === undefined) {
      c = randomSocksCredentials();
      this.socksAuth.set(isolation, c);
    }
    return c;
  }

  /** The relay connections in use, as [relay, isolation key]: one per relay, or one per queue with a proxy. */
  private routes(): [string, string][] {
    const routes = new Map<string, [string, string]>();
    for (const c of this.store.connections()) {
      if (this.isolate && c.status === 'deleted') continue;
      for (const r of [c.rcv_relay, c.next_rcv_relay, c.old_rcv_relay]) if (r !== null) routes.set(`${r}\n${this.route('rcv', c.id)}`, [r, this.route('rcv', c.id)]);
      if (c.snd_relay !== null) routes.set(`${c.snd_relay}\n${this.route('snd', c.id)}`, [c.snd_relay, this.route('snd', c.id)]);
    }
    return [...routes.values()];
  }

  /** With a proxy, closes the connections opened for `connId` when making it failed. */
  private async dropOnFailure<T>(connId: string, p: Promise<T>): Promise<T> {
    try {
      return await p;
    } catch (e) {
      this.pool.drop(this.route('rcv', connId));
      this.pool.drop(this.route('snd', connId));
      throw e;
    }
  }

  private track<T>(p: Promise<T>): void {
    this.inflight.add(p);
    void p.finally(() => this.inflight.delete(p)).catch(() => undefined);
  }

  /** Goes online: connects to every relay in use, subscribes, resumes handshakes and sending. */
  start(): void {
    this.awaitingPassword.clear();
    for (const [r, isolation] of this.routes()) this.pool.keep(r, isolation);
    for (const c of this.store.connections()) {
      if (c.status === 'accepting') this.track(this.finishAccept(c.id));
      if (c.old_rcv_id !== null) this.scheduleRetire(c.id, 0);
    }
    this.kickOutbox();
  }

  /**
   * Resolves once every relay in use has been reached and subscribed once (or `timeoutMs`
   * passed); returns the relays that could not be reached.
   */
  async online(timeoutMs: number): Promise<string[]> {
    const failed: string[] = [];
    await Promise.all(
      this.routes().map(async ([r, isolation]) => {
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error('timeout')), timeoutMs);
        });
        try {
          await Promise.race([this.pool.get(r, isolation), timeout]);
        } catch {
          if (!failed.includes(r)) failed.push(r);
        } finally {
          clearTimeout(timer);
        }
      }),
    );
    return failed;
  }

  /** Goes offline; resolves once work in flight has settled. */
  async stop(): Promise<void> {
    // Receipts still gathering go into the outbox now (their messages are ACKed already, so
    // they would be lost otherwise); they are sent on the next start.
    for (const connId of [...this.receipts.keys()]) this.flushReceipts(connId);
    this.stopped = true;
    if (this.outboxTimer !== null) clearTimeout(this.outboxTimer);
    // Held messages were not ACKed: the relay delivers them again on the next SUB.
    for (const h of this.held.values()) clearTimeout(h.timer);
    this.held.clear();
    await Promise.allSettled([...this.inflight]);
    this.pool.close();
    // A message still being received when the stop began is ACKed, and gathered its receipt
    // after the flush above: into the outbox with it too, or it would be lost.
    if (this.receipts.size > 0) {
      for (const connId of [...this.receipts.keys()]) this.flushReceipts(connId);
      await Promise.allSettled([...this.inflight]);
    }
    await this.store.local.durable().catch(() => undefined);
  }

  /**
   * Whether nothing is queued for sending and no handshake waits on us. Messages to a contact
   * that has not answered our confirmation yet wait on the contact, not on us: they do not count,
   * nor does a handshake that waits for the person to give their relay's password.
   */
  idle(): boolean {
    if (this.receipts.size > 0) return false;
    const conns = this.store.connections();
    if (conns.some((c) => c.status === 'accepting' && !this.awaitingPassword.has(c.id))) return false;
    const connected = new Set(conns.filter((c) => c.status === 'connected').map((c) => c.id));
    return this.store.queued(OUTBOX_BATCH).every((r) => r.kind !== 'confirmation' && !connected.has(r.conn_id));
  }

  /** Connections, for the owner. */
  connections(): ConnectionInfo[] {
    return this.store.connections().map((c) => ({ id: c.id, kind: c.kind, status: c.status, receipts: c.receipts === 1, createdAt: c.created_at }));
  }

  private queuesOn(relay: string, isolation: string): RecipientQueue[] {
    const out: RecipientQueue[] = [];
    for (const c of this.store.connections()) {
      if (this.route('rcv', c.id) !== isolation) continue;
      for (const s of this.rcvSlots(c)) if (s.relay === relay) out.push(s.q);
    }
    return out;
  }

  /** A connection's receive queues: the current one, and during a switch the next or old one. */
  private rcvSlots(c: ConnectionRow): RcvSlot[] {
    const out: RcvSlot[] = [];
    const add = (slot: RcvSlot['slot'], relay: string | null, rcvId: Uint8Array | null, sndId: Uint8Array | null, sig: Uint8Array | null, auth: Uint8Array | null, box: Uint8Array | null, e2e: Uint8Array | null) => {
      if (relay === null || rcvId === null || sndId === null || sig === null || auth === null || box === null || e2e === null) return;
      out.push({ slot, relay, e2eKey: e2e, q: { rcvId, sndId, sigKey: this.keys(sig), authKey: this.keys(auth), boxKey: box } });
    };
    add('current', c.rcv_relay, c.rcv_id, c.rcv_snd_id, c.rcv_sig_key, c.rcv_auth_key, c.rcv_box_key, c.rcv_e2e_key);
    add('next', c.next_rcv_relay, c.next_rcv_id, c.next_rcv_snd_id, c.next_rcv_sig_key, c.next_rcv_auth_key, c.next_rcv_box_key, c.next_rcv_e2e_key);
    add('old', c.old_rcv_relay, c.old_rcv_id, c.old_rcv_snd_id, c.old_rcv_sig_key, c.old_rcv_auth_key, c.old_rcv_box_key, c.old_rcv_e2e_key);
    return out;
  }

  private recipientQueue(c: ConnectionRow): RecipientQueue | null {
    if (c.rcv_id === null || c.rcv_snd_id === null || c.rcv_sig_key === null || c.rcv_auth_key === null || c.rcv_box_key === null) return null;
    return { rcvId: c.rcv_id, sndId: c.rcv_snd_id, sigKey: this.keys(c.rcv_sig_key), authKey: this.keys(c.rcv_auth_key), boxKey: c.rcv_box_key };
  }

  private relayClient(relay: string, isolation: string): Promise<RelayClient> {
    return this.pool.get(relay, isolation).catch((e: unknown) => {
      if (RelayClientError.is(e, 'RELAY_TOO_OLD')) throw new AgentError('VERSION', 'the relay runs an older protocol than this Murmure: its operator needs to update it', { cause: e });
      if (RelayClientError.is(e, 'RELAY_TOO_NEW')) throw new AgentError('VERSION', 'the relay needs a newer version of Murmure: update Murmure', { cause: e });
      throw new AgentError('RELAY', 'the relay cannot be reached now', { cause: e });
    });
  }

  /**
   * Makes a queue on `relay` (an address, with or without the relay's queue-creation password)
   * over `isolation`'s connection. Rows and the pool name the relay without its password; the
   * password sent is the one kept for the relay, which the address's replaces (`rememberRelay`).
   */
  private async createQueueOn(relay: string, isolation: string): Promise<{ name: string; client: RelayClient; q: RecipientQueue }> {
    const name = this.rememberRelay(relay);
    const client = await this.relayClient(name, isolation);
    const password = this.store.relayPassword(name) ?? null;
    let q: RecipientQueue;
    try {
      q = await client.createQueue(password);
    } catch (e) {
      if (!RelayClientError.is(e, 'AUTH')) throw e;
      throw new AgentError(
        'RELAY_PASSWORD',
        password === null
          ? 'the relay makes queues only with its password: use its address with the password (murmure://FINGERPRINT:PASSWORD@HOST:PORT)'
          : 'the relay refused the password: ask its operator for its current address',
        { cause: e },
      );
    }
    return { name, client, q };
  }

  /**
   * Takes a relay address a person gave for making queues: keeps its queue-creation password, if
   * it has one, for later queues on that relay, and returns the relay's name (the address without
   * password), which is what a profile records. Throws `INVALID` for an address that is not one.
   */
  rememberRelay(relay: string): string {
    let addr;
    try {
      addr = parseRelayAddress(relay);
    } catch (e) {
      throw new AgentError('INVALID', ProtocolError.is(e) ? e.message : 'bad relay address', { cause: e });
    }
    const name = formatRelayAddress(addr);
    if (addr.password !== undefined && addr.password !== this.store.relayPassword(name)) {
      this.store.setRelayPassword(name, addr.password);
      // Contacts that came through an address and wait for a password try again now.
      for (const connId of this.awaitingPassword) {
        this.awaitingPassword.delete(connId);
        if (!this.stopped) this.track(this.finishAccept(connId));
      }
    }
    return name;
  }

  /** Makes a one-time invitation (or a long-term address) on `relay` and returns its link. */
  createInvitation(relay: string, kind: LinkKind = 'invitation'): Promise<{ connId: string; link: string }> {
    const connId = randomUUID();
    return this.dropOnFailure(connId, this.invite(connId, relay, kind));
  }

  private async invite(connId: string, relay: string, kind: LinkKind): Promise<{ connId: string; link: string }> {
    const { name, client, q } = await this.createQueueOn(relay, this.route('rcv', connId));
    const relayAddr = parseRelayAddress(name);
    const e2e = generateDhKeyPair();
    const local = generateIdentity();
    const state = new ProtocolState(local, this.store.stateSource(connId));
    const bundle = createPreKeys(state, { oneTime: kind === 'invitation' });
    const data = encodeInvitationData({ version: AGENT_VERSION, kind, queue: { relay: relayAddr, sndId: q.sndId, e2eKey: e2e.publicKey }, bundle: encodeBundle(bundle) });
    const linkId = randomId();
    const linkKey = new Uint8Array(randomBytes(32));
    const nonce = new Uint8Array(randomBytes(QUEUE_BOX_NONCE_LENGTH));
    const sealed = sealWithNonce(linkKey, nonce, LINK_AAD, data);
    await client.setLink(q, linkId, Buffer.concat([nonce, sealed]));
    this.store.local.transaction(() => {
      this.store.insertConnection({
        ...this.blankRow(connId, kind, kind === 'invitation' ? 'invited' : 'address', local),
        rcv_relay: name,
        rcv_id: q.rcvId,
        rcv_snd_id: q.sndId,
        rcv_sig_key: exportPrivateKey(q.sigKey.privateKey),
        rcv_auth_key: exportPrivateKey(q.authKey.privateKey),
        rcv_box_key: q.boxKey,
        rcv_e2e_key: exportPrivateKey(e2e.privateKey),
        link_id: linkId,
      });
      this.store.applyState(connId, state.takeWrites());
    });
    await client.subscribe(q).catch(() => undefined);
    return { connId, link: formatInvitationLink({ kind, relay: relayAddr, linkId, key: linkKey }) };
  }

  private blankRow(id: string, kind: ConnectionRow['kind'], status: ConnectionStatus, local: ReturnType<typeof generateIdentity>): ConnectionRow {
    return {
      id, kind, status, state_owner: id, local_identity: encodeLocalIdentity(local), remote_name: null, remote_identity: null,
      receipts: 1, created_at: this.now(), rcv_relay: null, rcv_id: null, rcv_snd_id: null, rcv_sig_key: null, rcv_auth_key: null,
      rcv_box_key: null, rcv_e2e_key: null, rcv_peer_e2e: null, pending_snd_auth: null, link_id: null, snd_relay: null, snd_id: null,
      snd_auth_key: null, snd_e2e_key: null, snd_peer_e2e: null, next_send_seq: 1, last_sent_hash: ZERO_HASH, last_rcv_seq: 0, last_rcv_hash: ZERO_HASH,
      ...nullColumns(NEXT_QUEUE_COLUMNS), ...nullColumns(OLD_QUEUE_COLUMNS), last_reset_seen: 0,
    };
  }

  /**
   * Joins a contact's link: reads its data from their relay, makes our queue on `myRelay`, starts
   * the libsignal session and queues the confirmation carrying `payload` (our profile).
   */
  join(link: string, myRelay: string, payload: Uint8Array): Promise<string> {
    const connId = randomUUID();
    return this.dropOnFailure(connId, this.joinAs(connId, link, myRelay, payload));
  }

  private async joinAs(connId: string, link: string, myRelay: string, payload: Uint8Array): Promise<string> {
    if (payload.length > MAX_CHAT_PAYLOAD) throw new AgentError('TOO_LARGE', 'the profile is too large');
    let parsed;
    try {
      parsed = parseInvitationLink(link);
      parseRelayAddress(myRelay);
    } catch (e) {
      throw new AgentError('BAD_LINK', ProtocolError.is(e) ? e.message : 'this is not a Murmure link', { cause: e });
    }
    const theirRelay = formatRelayAddress(parsed.relay);
    const theirClient = await this.relayClient(theirRelay, this.route('snd', connId));
    let linkData;
    try {
      linkData = await theirClient.getLink(parsed.linkId);
    } catch (e) {
      if (RelayClientError.is(e, 'AUTH')) throw new AgentError('LINK_USED', 'this link was already used or deleted', { cause: e });
      throw new AgentError('RELAY', "the contact's relay did not answer", { cause: e });
    }
    const plain =
      linkData.data.length > QUEUE_BOX_NONCE_LENGTH
        ? openWithNonce(parsed.key, linkData.data.subarray(0, QUEUE_BOX_NONCE_LENGTH), LINK_AAD, linkData.data.subarray(QUEUE_BOX_NONCE_LENGTH))
        : null;
    if (plain === null) throw new AgentError('BAD_LINK', 'the link is damaged (its data does not decrypt)');
    let inv;
    let bundle;
    try {
      inv = decodeInvitationData(plain);
      bundle = decodeBundle(inv.bundle);
    } catch (e) {
      if (ProtocolError.is(e, 'VERSION_UNSUPPORTED') || ProtocolError.is(e, 'VERSION_TOO_OLD')) throw new AgentError('VERSION', e.message, { cause: e });
      throw new AgentError('BAD_LINK', 'the invitation data is malformed', { cause: e });
    }
    if (!eq(inv.queue.sndId, linkData.sndId)) throw new AgentError('BAD_LINK', 'the invitation does not match its queue');

    const { name: myName, client: myClient, q } = await this.createQueueOn(myRelay, this.route('rcv', connId));
    const theirSenderKey = generateDhKeyPair(); // the contact's key for sending to our queue
    await myClient.secure(q, theirSenderKey.publicKey);
    const myE2e = generateDhKeyPair(); // the box key of our queue
    const mySenderKey = generateDhKeyPair(); // our key for sending to their queue
    const mySenderE2e = generateDhKeyPair(); // our box key toward their queue
    const local = generateIdentity();
    const state = new ProtocolState(local, this.store.stateSource(connId));
    try {
      await startSession(state, bundle);
    } catch (e) {
      throw new AgentError('BAD_LINK', 'the invitation keys are invalid', { cause: e });
    }
    const body: EnvelopeBody = {
      type: 'CONFIRMATION',
      replyQueue: { relay: parseRelayAddress(myName), sndId: q.sndId, e2eKey: myE2e.publicKey },
      replySenderKey: rawDhPrivateKey(theirSenderKey.privateKey),
      senderAuthKey: mySenderKey.publicKey,
      payload,
    };
    const row: ConnectionRow = {
      ...this.blankRow(connId, 'contact', 'joining', local),
      remote_name: bundle.name,
      remote_identity: bundle.identityKey,
      rcv_relay: myName,
      rcv_id: q.rcvId,
      rcv_snd_id: q.sndId,
      rcv_sig_key: exportPrivateKey(q.sigKey.privateKey),
      rcv_auth_key: exportPrivateKey(q.authKey.privateKey),
      rcv_box_key: q.boxKey,
      rcv_e2e_key: exportPrivateKey(myE2e.privateKey),
      snd_relay: theirRelay,
      snd_id: inv.queue.sndId,
      snd_auth_key: exportPrivateKey(mySenderKey.privateKey),
      snd_e2e_key: exportPrivateKey(mySenderE2e.privateKey),
      snd_peer_e2e: inv.queue.e2eKey,
    };
    const wrapped = await this.wrap(row, state, body, true);
    this.store.local.transaction(() => {
      this.store.insertConnection({ ...row, next_send_seq: wrapped.seq + 1, last_sent_hash: wrapped.hash });
      this.store.applyState(connId, state.takeWrites());
      this.store.enqueue(connId, wrapped.seq, 'confirmation', wrapped.frame, this.now());
    });
    await myClient.subscribe(q).catch(() => undefined);
    this.pool.keep(myName, this.route('rcv', connId));
    this.kickOutbox();
    return connId;
  }

  /**
   * Queues a chat payload for a contact; resolves with its sequence number once it is stored
   * (committed; it reaches the disk, with whatever else was queued meanwhile, before it is sent).
   * `onStored(seq)` runs inside the transaction that stores it (for the owner's own record).
   */
  send(connId: string, payload: Uint8Array, onStored?: (seq: number) => void): Promise<number> {
    if (payload.length > MAX_CHAT_PAYLOAD) return Promise.reject(new AgentError('TOO_LARGE', `a message may be at most ${MAX_CHAT_PAYLOAD} bytes`));
    return this.sendBody(connId, { type: 'MESSAGE', payload }, 'message', onStored).then((seq) => {
      this.kickOutbox();
      return seq;
    });
  }

  private async sendBody(connId: string, body: EnvelopeBody, kind: 'reply' | 'message', inTx?: (seq: number) => void): Promise<number> {
    const first = this.store.connection(connId);
    if (first === undefined || first.status === 'deleted') throw new AgentError('NOT_FOUND', 'no such contact');
    return this.mutex.run(first.state_owner, async () => {
      const c = this.store.connection(connId);
      if (c === undefined || c.snd_id === null) throw new AgentError('NOT_CONNECTED', 'this contact is not connected yet');
      const state = new ProtocolState(decodeLocalIdentity(c.local_identity), this.store.stateSource(c.state_owner));
      const w = await this.wrap(c, state, body, false);
      // Committed without waiting for the disk: the outbox syncs before it sends anything, once
      // for all the messages queued meanwhile (group commit).
      return this.store.local.deferredTransaction(() => {
        this.store.applyState(c.state_owner, state.takeWrites());
        this.store.updateConnection(connId, { next_send_seq: w.seq + 1, last_sent_hash: w.hash });
        this.store.enqueue(connId, w.seq, kind, w.frame, this.now());
        inTx?.(w.seq);
        return w.seq;
      });
    });
  }

  /**
   * Wraps an envelope in libsignal and chooses the per-queue box's nonce (and our box key on the
   * first frame); the box itself is made at send time by `boxFrame`, the same at every attempt.
   */
  private async wrap(c: ConnectionRow, state: ProtocolState, body: EnvelopeBody, firstFrame: boolean): Promise<{ seq: number; hash: Uint8Array; frame: { body: Uint8Array; frameKey: Uint8Array | null; nonce: Uint8Array } }> {
    if (c.remote_name === null || c.snd_e2e_key === null || c.snd_peer_e2e === null) throw new AgentError('NOT_CONNECTED', 'this contact is not connected yet');
    const seq = c.next_send_seq;
    const env = encodeEnvelope({ seq, prevHash: c.last_sent_hash, sentAt: this.now(), body });
    const m = await encrypt(state, c.remote_name, env);
    const prekey = m.type === 'prekey';
    const payload = encodeSessionPayload({ prekey, senderName: prekey ? state.local.name : null, body: m.body });
    const frameKey = firstFrame || seq === 1 ? this.keys(c.snd_e2e_key).publicKey : null;
    return { seq, hash: sha256(env), frame: { body: payload, frameKey, nonce: new Uint8Array(randomBytes(QUEUE_BOX_NONCE_LENGTH)) } };
  }

  /** Whether an outbox row waits for a later attempt (a time further ahead than the longest delay means the clock went back: due now). */
  private notDue(r: Readonly<{ next_attempt_at: number }>): boolean {
    const wait = r.next_attempt_at - this.now();
    return wait > 0 && wait <= SEND_RETRY_MAX_MS;
  }

  /**
   * The outbox rows that go to the relay in one box with `first`: it and the rows after it (from
   * `rows[from]`) that are due, while they fit one box (MAX_BATCH_PAYLOADS, MAX_BATCH_SIZE).
   * Only libsignal messages are batched: not a confirmation or reply, not a session reset, not a
   * frame that carries our box key.
   */
  private takeBatch<R extends QueuedRow>(first: R & OutboxFrame, rows: readonly R[], from: number): (R & OutboxFrame)[] {
    const batchable = (r: QueuedRow, f: OutboxFrame): boolean => r.kind === 'message' && f.frame_key === null && (f.body[0] === 2 || f.body[0] === 3);
    const batch = [first];
    if (!batchable(first, first)) return batch;
    let size = BATCH_OVERHEAD + BATCH_ITEM_OVERHEAD + first.body.length;
    for (let i = from; i < rows.length && batch.length < MAX_BATCH_PAYLOADS; i++) {
      const r = rows[i]!;
      if (this.notDue(r)) break;
      const f = this.store.outboxFrame(r.id);
      if (f === undefined || !batchable(r, f)) break;
      size += BATCH_ITEM_OVERHEAD + f.body.length;
      if (size > MAX_BATCH_SIZE) break;
      batch.push({ ...f, ...r });
    }
    return batch;
  }

  /** The SEND body of an outbox entry: padding, the per-queue box, the frame. */
  private boxFrame(c: ConnectionRow, f: Readonly<{ body: Uint8Array; frame_key: Uint8Array | null; nonce: Uint8Array }>): Uint8Array {
    if (c.snd_e2e_key === null || c.snd_peer_e2e === null) throw new AgentError('NOT_CONNECTED', 'this contact is not connected yet');
    const key = this.boxKey(c.snd_e2e_key, c.snd_peer_e2e);
    if (key === null) throw new AgentError('INVALID', "the contact's queue key is unusable");
    const aad = Uint8Array.of(AGENT_VERSION, f.frame_key === null ? 1 : 0);
    const sealed = sealWithNonce(key, f.nonce, aad, pad(f.body, QUEUE_BOX_PADDED));
    return encodeQueueFrame({ senderKey: f.frame_key, nonce: f.nonce, sealed });
  }

  /**
   * Imported keys and derived box keys, by the stored key bytes they came from: the same object
   * for as long as the store keeps the connection's row, so the cache is per connection, lives
   * as long as the row, and never uses key material as a lookup key.
   */
  private readonly keyCache = new WeakMap<Uint8Array, KeyPair>();
  private readonly boxKeyCache = new WeakMap<Uint8Array, { peer: Uint8Array; key: Uint8Array | null }>();

  /** A stored private key as a key pair, imported once. */
  private keys(pkcs8: Uint8Array): KeyPair {
    let v = this.keyCache.get(pkcs8);
    if (v === undefined) {
      v = importKeyPair(pkcs8);
      this.keyCache.set(pkcs8, v);
    }
    return v;
  }

  /** The per-queue box key between one of our keys and a contact's key, derived once. */
  private boxKey(pkcs8: Uint8Array, peer: Uint8Array): Uint8Array | null {
    const known = this.boxKeyCache.get(pkcs8);
    if (known !== undefined && Buffer.from(known.peer.buffer, known.peer.byteOffset, known.peer.length).equals(peer)) return known.key;
    const secret = agree(this.keys(pkcs8).privateKey, peer);
    const key = secret === null ? null : queueBoxKey(secret);
    this.boxKeyCache.set(pkcs8, { peer: Uint8Array.from(peer), key });
    return key;
  }

  // Receiving.

  private async onPush(client: RelayClient, m: PushedMessage, force = false): Promise<void> {
    const found = this.store.connectionByRcvId(m.rcvId);
    if (found === undefined) return;
    const connId = found.id;
    let processed = false;
    let ackQueue: RecipientQueue | null = null;
    await this.mutex.run(found.state_owner, async () => {
      // Looked up again under the lock: a switch may have moved this queue from next to current.
      const c = this.store.connection(connId);
      const slot = c === undefined ? undefined : this.rcvSlots(c).find((s) => eq(s.q.rcvId, m.rcvId));
      if (slot === undefined) return;
      let ack: boolean | 'hold' = true;
      try {
        ack = await this.receive(connId, slot, m, force);
      } catch (e) {
        // Unexpected (a database failure): do not ACK, the relay re-delivers after reconnection.
        ack = false;
        this.emit('problem', { connId, code: e instanceof AgentError ? e.code : 'INVALID', message: 'a message could not be stored' });
      }
      if (ack === 'hold') {
        this.hold(connId, client, m);
        return;
      }
      processed = true;
      if (ack) ackQueue = slot.q;
    });
    // The ACK goes once the commit is on disk. The sync runs outside the lock (sending to this
    // contact need not wait for it) and off the event loop, shared by every message committed
    // before it; the ACK's OK (the relay's own commit) is not awaited before the next message,
    // which the relay pushes as soon as it takes the ACK.
    if (ackQueue !== null) {
      try {
        await this.store.local.durable();
      } catch {
        // Not ACKed: the relay delivers it again after reconnection, and it is recognised then.
        this.emit('problem', { connId, code: 'CORRUPT', message: 'a message could not be written to disk' });
        return;
      }
      await client.ack(ackQueue, m.msgId).catch(() => undefined);
    }
    // Progress on the other queue of a switch may have filled the gap a held message waits on.
    const h = this.held.get(connId);
    if (processed && h !== undefined && !eq(h.m.msgId, m.msgId)) this.release(connId, false);
  }

  /** Holds back a message that arrived on the new queue of a switch ahead of the old queue's. */
  private hold(connId: string, client: RelayClient, m: PushedMessage): void {
    const prev = this.held.get(connId);
    if (prev !== undefined) clearTimeout(prev.timer);
    if (this.stopped) return;
    const timer = setTimeout(() => this.release(connId, true), SWITCH_HOLD_MS);
    timer.unref();
    this.held.set(connId, { client, m, timer });
  }

  /** Processes a held message again; with `force`, even if the gap before it remains. */
  private release(connId: string, force: boolean): void {
    const h = this.held.get(connId);
    if (h === undefined) return;
    clearTimeout(h.timer);
    this.held.delete(connId);
    if (!this.stopped) this.track(this.onPush(h.client, h.m, force));
  }

  /** Processes one delivered message; resolves with whether to ACK it, or 'hold' (see SWITCH_HOLD_MS). */
  private async receive(connId: string, slot: RcvSlot, m: PushedMessage, force: boolean): Promise<boolean | 'hold'> {
    const q = slot.q;
    const c = this.store.connection(connId);
    if (c === undefined || c.status === 'deleted') return true;
    const problem = (message: string) => {
      this.emit('problem', { connId, code: 'INVALID', message });
      return true;
    };
    let frame;
    let receivedAt;
    try {
      const delivered = openDelivered(q, m.msgId, m.body);
      receivedAt = delivered.receivedAt;
      frame = decodeQueueFrame(delivered.body);
    } catch {
      return problem('a message from the relay failed its checks and was dropped');
    }
    // The contact's box key: set by the first frame that carries one, fixed after that.
    const viaAddress = c.status === 'address';
    let peerE2e = viaAddress ? null : c.rcv_peer_e2e;
    if (peerE2e === null) {
      if (frame.senderKey === null) return problem('a message arrived before the handshake and was dropped');
      peerE2e = frame.senderKey;
    } else if (frame.senderKey !== null && !eq(frame.senderKey, peerE2e)) {
      return problem('a second confirmation for a used link was dropped');
    }
    const boxKey = this.boxKey(slot.e2eKey, peerE2e);
    const aad = Uint8Array.of(AGENT_VERSION, frame.senderKey === null ? 1 : 0);
    const opened = boxKey === null ? null : openWithNonce(boxKey, frame.nonce, aad, frame.sealed);
    if (opened === null) return problem('a message failed end-to-end authentication and was dropped');
    let payloads: SessionPayload[];
    try {
      const unpadded = unpad(opened, QUEUE_BOX_PADDED);
      if (unpadded[0] === SESSION_RESET_TAG && c.status === 'connected') {
        // A reset that cannot be carried out (bad keys, a libsignal refusal) is dropped and
        // ACKed like any bad message; only a store failure leaves it for the relay to re-deliver.
        return await this.acceptReset(c, peerE2e, decodeSessionReset(unpadded)).catch((e: unknown) => {
          if (e instanceof AgentError || e instanceof ProtocolError) throw e;
          return problem('a session reset could not be carried out and was dropped');
        });
      }
      payloads = unpadded[0] === SESSION_BATCH_TAG ? decodeSessionBatch(unpadded) : [decodeSessionPayload(unpadded)];
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      return problem('a malformed message was dropped');
    }
    // Each joiner of an address sends its confirmation alone, in a frame with its key.
    if (viaAddress && payloads.length > 1) return problem('a batch sent to a contact address was dropped');
    // A batch is its payloads one after the other, each handled as if it had come alone: the
    // connection and the queue's place in it are looked up again before each. A payload held
    // back (a switch) holds the whole relay message; when it is processed again, the payloads
    // before it are recognised as duplicates.
    for (let i = 0; i < payloads.length; i++) {
      const cur = i === 0 ? c : this.store.connection(connId);
      const curSlot = i === 0 ? slot : cur === undefined ? undefined : this.rcvSlots(cur).find((s) => eq(s.q.rcvId, m.rcvId));
      if (cur === undefined || cur.status === 'deleted' || curSlot === undefined) return true;
      const r = await this.receivePayload(cur, curSlot, payloads[i]!, peerE2e, receivedAt, force);
      if (r !== true) return r;
    }
    return true;
  }

  /** Processes one session payload of a delivered message (see `receive`). */
  private async receivePayload(c: ConnectionRow, slot: RcvSlot, payload: SessionPayload, peerE2e: Uint8Array, receivedAt: number, force: boolean): Promise<boolean | 'hold'> {
    const connId = c.id;
    const problem = (message: string) => {
      this.emit('problem', { connId, code: 'INVALID', message });
      return true;
    };
    const viaAddress = c.status === 'address';
    const confirming = c.status === 'invited' || viaAddress;
    const remoteName = viaAddress ? payload.senderName : (c.remote_name ?? payload.senderName);
    if (remoteName === null) return problem('a message arrived before the handshake and was dropped');
    const state = new ProtocolState(decodeLocalIdentity(c.local_identity), this.store.stateSource(c.state_owner));
    let plain;
    try {
      plain = await decrypt(state, remoteName, payload.prekey ? 'prekey' : 'whisper', payload.body);
    } catch (e) {
      if (CryptoError.is(e, 'DUPLICATE')) return true;
      // On a connection that worked, the session broke (one side restored an old copy of its
      // database): ask the contact to start it again, from a fresh prekey bundle of ours.
      if (c.status === 'connected' && this.resetDue(connId)) {
        this.track(this.sendReset(connId));
        return problem('a message could not be decrypted and was dropped; the secure session is being reset');
      }
      return problem('a message could not be decrypted and was dropped');
    }
    let env;
    try {
      env = decodeEnvelope(plain);
    } catch {
      return problem('a decrypted message was malformed and was dropped');
    }
    const hash = sha256(plain);
    if (viaAddress) return this.acceptViaAddress(c, state, remoteName, peerE2e, env, hash);
    // A switch: the contact moves to the new queue once it has our SWITCH, and what it sent
    // before that is still on the old queue. A message on the new queue that skips numbers waits
    // for them there (unACKed: the relay sends nothing more from the new queue meanwhile).
    const switching = slot.slot === 'next' || (slot.slot === 'current' && c.old_rcv_id !== null);
    if (switching && !force && env.seq > c.last_rcv_seq + 1) return 'hold';
    const events: IncomingEvent[] = [];
    const changes: Partial<ConnectionRow> = { rcv_peer_e2e: peerE2e };
    // The contact's first message on the new queue: it becomes our receive queue, and the
    // current one becomes the old one, read until it is empty and then deleted.
    const promoted = slot.slot === 'next';
    if (promoted) {
      Object.assign(changes, {
        old_rcv_relay: c.rcv_relay, old_rcv_id: c.rcv_id, old_rcv_snd_id: c.rcv_snd_id, old_rcv_sig_key: c.rcv_sig_key,
        old_rcv_auth_key: c.rcv_auth_key, old_rcv_box_key: c.rcv_box_key, old_rcv_e2e_key: c.rcv_e2e_key,
        rcv_relay: c.next_rcv_relay, rcv_id: c.next_rcv_id, rcv_snd_id: c.next_rcv_snd_id, rcv_sig_key: c.next_rcv_sig_key,
        rcv_auth_key: c.next_rcv_auth_key, rcv_box_key: c.next_rcv_box_key, rcv_e2e_key: c.next_rcv_e2e_key,
        ...nullColumns(NEXT_QUEUE_COLUMNS),
      } satisfies Partial<ConnectionRow>);
    }
    // A message or receipt older than the last one seen that the ratchet accepted all the same
    // came late (the relay reordered it): it was reported in a gap, and is shown now without
    // moving the sequence or the hash chain. The ratchet uses each message key once, so a replay
    // fails to decrypt as a duplicate above and never gets here.
    const late = env.seq <= c.last_rcv_seq && (env.body.type === 'MESSAGE' || env.body.type === 'RECEIPT' || env.body.type === 'RESYNC');
    if (env.seq <= c.last_rcv_seq && !late) {
      // A replay of an older handshake message (or a switch) the ratchet still accepted: keep the
      // ratchet step, show nothing. A late SWITCH is ignored: a newer one may have superseded it.
      this.store.local.transaction(() => {
        this.store.applyState(c.state_owner, state.takeWrites());
        if (promoted) this.store.updateConnection(connId, changes);
      });
      if (promoted) this.afterPromotion(connId, slot.relay);
      return true;
    }
    if (!late) {
      if (env.seq > c.last_rcv_seq + 1) events.push({ type: 'gap', connId, from: c.last_rcv_seq + 1, to: env.seq - 1 });
      else if (!eq(env.prevHash, c.last_rcv_hash) && c.last_rcv_seq > 0) events.push({ type: 'bad-hash', connId, seq: env.seq });
      changes.last_rcv_seq = env.seq;
      changes.last_rcv_hash = hash;
    }
    let after: (() => void) | null = null;
    const b = env.body;
    switch (b.type) {
      case 'CONFIRMATION': {
        if (!confirming) return problem('an unexpected confirmation was dropped');
        const remoteIdentity = state.remoteIdentity(remoteName);
        Object.assign(changes, {
          status: 'accepting' as const,
          remote_name: remoteName,
          remote_identity: remoteIdentity === null ? null : remoteIdentity.serialize(),
          pending_snd_auth: b.senderAuthKey,
          snd_relay: formatRelayAddress(b.replyQueue.relay),
          snd_id: b.replyQueue.sndId,
          snd_auth_key: exportPrivateKey(dhKeyPairFromRaw(b.replySenderKey).privateKey),
          snd_e2e_key: exportPrivateKey(generateDhKeyPair().privateKey),
          snd_peer_e2e: b.replyQueue.e2eKey,
          kind: 'contact' as const,
        });
        events.push({ type: 'confirmation', connId, addressId: null, payload: b.payload });
        after = () => this.track(this.finishAccept(connId));
        break;
      }
      case 'REPLY':
        if (c.status !== 'joining') return problem('an unexpected reply was dropped');
        changes.status = 'connected';
        if (b.newQueue !== null) this.switchSendQueue(changes, b.newQueue);
        events.push({ type: 'reply', connId, payload: b.payload });
        after = () => this.kickOutbox();
        break;
      case 'MESSAGE':
        events.push({ type: 'message', connId, seq: env.seq, sentAt: env.sentAt, receivedAt, payload: b.payload });
        if (c.receipts === 1) after = () => this.queueReceipt(connId, env.seq);
        break;
      case 'RECEIPT':
        events.push({ type: 'receipt', connId, seqs: b.seqs });
        break;
      case 'RESYNC': {
        // The contact's answer to our reset, on the new session. Without a reset of ours it
        // answers nothing: the envelope counts (its number and hash move on), its content is
        // ignored, so it can neither move our numbers nor tell the owner of a restore.
        if (this.lastResetSent(connId) === null) {
          this.emit('problem', { connId, code: 'INVALID', message: 'a session resync that answers no reset of ours was ignored' });
          break;
        }
        // If it had received more from us than this copy of the database knows of, we were
        // restored from an old copy: go on after what it has, so that our next messages are not
        // taken for repeats.
        const self = b.lastRcvSeq >= c.next_send_seq && b.lastRcvSeq - c.next_send_seq < MAX_RESYNC_JUMP;
        if (self) Object.assign(changes, { next_send_seq: b.lastRcvSeq + 1, last_sent_hash: b.lastRcvHash });
        events.push({ type: 'resync', connId, restored: self ? 'self' : b.senderRestored ? 'contact' : 'unknown' });
        break;
      }
      case 'SWITCH': {
        if (c.status !== 'connected') return problem('an unexpected queue switch was dropped');
        // Send to the new queue from now on; our box key toward the contact stays the same, and
        // queued bodies are boxed for the new queue when they are sent.
        const relay = formatRelayAddress(b.newQueue.relay);
        this.switchSendQueue(changes, b.newQueue);
        changes.snd_auth_key = exportPrivateKey(dhKeyPairFromRaw(b.senderKey).privateKey);
        after = () => {
          this.emit('switch', { connId, phase: 'moved', relay } satisfies SwitchEvent);
          this.store.retryNow(connId);
          this.pool.keep(relay, this.route('snd', connId));
          this.kickOutbox();
        };
        break;
      }
    }
    // Committed without waiting for the disk: the ACK waits for `durable()` (see onPush), one sync
    // for every message committed meanwhile, off the event loop.
    this.store.local.deferredTransaction(() => {
      this.store.applyState(c.state_owner, state.takeWrites());
      this.store.updateConnection(connId, changes);
      if (changes.status === 'connected') this.store.confirmationDelivered(connId);
      for (const ev of events) this.handler.incoming(ev);
      if (changes.status === 'connected') this.handler.connected(connId);
    });
    for (const ev of events) this.emit('event', ev);
    if (changes.status === 'connected') this.emit('connected', connId);
    if (promoted) this.afterPromotion(connId, slot.relay);
    after?.();
    return true;
  }

  /**
   * Whether a failed decryption on this connection may ask for a session reset now: not within
   * RESET_INTERVAL_MS of one we answered (in this process) or sent (its outbox row, sequence
   * number 0, kept after sending, so this holds across restarts too).
   */
  private resetDue(connId: string): boolean {
    const r = this.resets.get(connId);
    if (r !== undefined && this.now() - r.at < RESET_INTERVAL_MS) return false;
    const sent = this.lastResetSent(connId);
    return sent === null || this.now() - sent >= RESET_INTERVAL_MS;
  }

  /** When we last asked this contact for a session reset (its outbox row, sequence number 0, stays after sending); null if never. */
  private lastResetSent(connId: string): number | null {
    // Only after a failed decryption or on a RESYNC, so not worth a prepared statement of the store's.
    const sent = this.store.local.db.prepare('SELECT max(created_at) FROM agent_outbox WHERE conn_id = ? AND seq = 0', { pluck: true }).get([connId] as never) as number | null | undefined;
    return sent ?? null;
  }

  /**
   * Asks the contact to start the libsignal session again: a reset (outside libsignal, inside the
   * per-queue box) with a fresh prekey bundle of this connection's identity and our sequence
   * numbers. The contact answers with a RESYNC envelope as a PreKey message on the new session.
   */
  private async sendReset(connId: string): Promise<void> {
    const first = this.store.connection(connId);
    if (first === undefined) return;
    this.resets.set(connId, { at: this.now(), seen: this.resets.get(connId)?.seen ?? 0 });
    await this.mutex.run(first.state_owner, async () => {
      const c = this.store.connection(connId);
      if (c === undefined || c.status !== 'connected') return;
      const state = new ProtocolState(decodeLocalIdentity(c.local_identity), this.store.stateSource(c.state_owner));
      const bundle = encodeBundle(createPreKeys(state, { oneTime: true, now: this.now() }));
      const body = encodeSessionReset({ sentAt: this.now(), nextSendSeq: c.next_send_seq, lastRcvSeq: c.last_rcv_seq, lastRcvHash: c.last_rcv_hash, bundle });
      const frame = { body, frameKey: null, nonce: new Uint8Array(randomBytes(QUEUE_BOX_NONCE_LENGTH)) };
      this.store.local.transaction(() => {
        this.store.applyState(c.state_owner, state.takeWrites());
        // Sequence number 0: a reset is not an envelope, and the owner has no message with it.
        this.store.enqueue(connId, 0, 'message', frame, this.now());
      });
    });
    this.kickOutbox();
  }

  /**
   * A contact's session reset: start a new session from its bundle (accepting a new identity
   * key, which the owner is told of loudly), and answer with RESYNC as its first message. Runs
   * under the state lock, inside `receive`.
   */
  private async acceptReset(c: ConnectionRow, peerE2e: Uint8Array, reset: ReturnType<typeof decodeSessionReset>): Promise<boolean> {
    const connId = c.id;
    const prev = this.resets.get(connId);
    // A reset no newer than one already answered is a replay (by the relay): ignore it. The last
    // one is kept in the connection row, so this holds across restarts.
    if (reset.sentAt <= Math.max(prev?.seen ?? 0, c.last_reset_seen)) return true;
    const drop = (message: string) => {
      this.emit('problem', { connId, code: 'INVALID', message });
      return true;
    };
    const bundle = decodeBundle(reset.bundle);
    if (c.remote_name === null || bundle.name !== c.remote_name) return drop('a session reset for another session was dropped');
    const state = new ProtocolState(decodeLocalIdentity(c.local_identity), this.store.stateSource(c.state_owner));
    const identityChanged = !eq(c.remote_identity, bundle.identityKey);
    // libsignal pins the contact's identity key; a reset may replace it, and the owner says so.
    if (identityChanged) state.stage('identity', c.remote_name, bundle.identityKey);
    try {
      await startSession(state, bundle);
    } catch {
      return drop('a session reset with invalid keys was dropped');
    }
    const events: IncomingEvent[] = [];
    if (identityChanged) events.push({ type: 'identity-changed', connId });
    // The contact will send numbers we have seen already: it restored an old copy.
    const contactRestored = reset.nextSendSeq <= c.last_rcv_seq;
    // The contact has seen more of our numbers than we know of: we were restored from an old copy.
    const selfRestored = reset.lastRcvSeq >= c.next_send_seq && reset.lastRcvSeq - c.next_send_seq < MAX_RESYNC_JUMP;
    const row: ConnectionRow = selfRestored ? { ...c, next_send_seq: reset.lastRcvSeq + 1, last_sent_hash: reset.lastRcvHash } : c;
    events.push({ type: 'resync', connId, restored: selfRestored ? 'self' : contactRestored ? 'contact' : 'unknown' });
    const w = await this.wrap(row, state, { type: 'RESYNC', lastRcvSeq: c.last_rcv_seq, lastRcvHash: c.last_rcv_hash, senderRestored: selfRestored }, false);
    this.store.local.transaction(() => {
      this.store.applyState(c.state_owner, state.takeWrites());
      this.store.updateConnection(connId, {
        rcv_peer_e2e: peerE2e,
        remote_identity: bundle.identityKey,
        next_send_seq: w.seq + 1,
        last_sent_hash: w.hash,
        last_reset_seen: reset.sentAt,
      });
      this.store.enqueue(connId, w.seq, 'message', w.frame, this.now());
      for (const ev of events) this.handler.incoming(ev);
    });
    this.resets.set(connId, { at: this.now(), seen: reset.sentAt });
    for (const ev of events) this.emit('event', ev);
    this.kickOutbox();
    return true;
  }

  private afterPromotion(connId: string, relay: string): void {
    this.emit('switch', { connId, phase: 'promoted', relay } satisfies SwitchEvent);
    this.scheduleRetire(connId, 0);
  }

  /**
   * A confirmation on a long-term address: the address stays as it is, and the contact gets a
   * connection of its own (sharing the address's libsignal identity), whose fresh queue is made,
   * secured and announced in the reply.
   */
  private acceptViaAddress(c: ConnectionRow, state: ProtocolState, remoteName: string, peerE2e: Uint8Array, env: ReturnType<typeof decodeEnvelope>, hash: Uint8Array): boolean {
    const b = env.body;
    if (b.type !== 'CONFIRMATION') {
      this.emit('problem', { connId: c.id, code: 'INVALID', message: 'an unexpected message on a contact address was dropped' });
      return true;
    }
    const id = randomUUID();
    const remoteIdentity = state.remoteIdentity(remoteName);
    const row: ConnectionRow = {
      ...this.blankRow(id, 'contact', 'accepting', decodeLocalIdentity(c.local_identity)),
      state_owner: c.state_owner,
      local_identity: c.local_identity,
      remote_name: remoteName,
      remote_identity: remoteIdentity === null ? null : remoteIdentity.serialize(),
      pending_snd_auth: b.senderAuthKey,
      rcv_peer_e2e: peerE2e,
      snd_relay: formatRelayAddress(b.replyQueue.relay),
      snd_id: b.replyQueue.sndId,
      snd_auth_key: exportPrivateKey(dhKeyPairFromRaw(b.replySenderKey).privateKey),
      snd_e2e_key: exportPrivateKey(generateDhKeyPair().privateKey),
      snd_peer_e2e: b.replyQueue.e2eKey,
      last_rcv_seq: env.seq,
      last_rcv_hash: hash,
    };
    const ev: IncomingEvent = { type: 'confirmation', connId: id, addressId: c.id, payload: b.payload };
    this.store.local.transaction(() => {
      this.store.applyState(c.state_owner, state.takeWrites());
      this.store.insertConnection(row);
      this.handler.incoming(ev);
    });
    this.emit('event', ev);
    this.track(this.finishAccept(id));
    return true;
  }

  private switchSendQueue(changes: Partial<ConnectionRow>, q: QueueAddress): void {
    changes.snd_relay = formatRelayAddress(q.relay);
    changes.snd_id = q.sndId;
    changes.snd_peer_e2e = q.e2eKey;
  }

  /**
   * Inviter side, after a confirmation: secure our queue with the joiner's key (making the queue
   * first when the contact came through an address), then reply.
   */
  private async finishAccept(connId: string): Promise<void> {
    // What the confirmation changed (committed without a sync, in receive) is on disk before
    // the relay is asked for anything that depends on it.
    await this.store.local.durable();
    let c = this.store.connection(connId);
    if (c === undefined || c.status !== 'accepting' || c.pending_snd_auth === null) return;
    let newQueue: QueueAddress | null = null;
    try {
      if (c.rcv_id === null) {
        const relay = this.store.connection(c.state_owner)?.rcv_relay;
        if (relay === null || relay === undefined) return;
        const { name, q } = await this.createQueueOn(relay, this.route('rcv', connId));
        const e2e = generateDhKeyPair();
        this.store.updateConnection(connId, {
          rcv_relay: name,
          rcv_id: q.rcvId,
          rcv_snd_id: q.sndId,
          rcv_sig_key: exportPrivateKey(q.sigKey.privateKey),
          rcv_auth_key: exportPrivateKey(q.authKey.privateKey),
          rcv_box_key: q.boxKey,
          rcv_e2e_key: exportPrivateKey(e2e.privateKey),
        });
        c = this.store.connection(connId) as ConnectionRow;
      }
      const q = this.recipientQueue(c);
      if (q === null || c.rcv_relay === null || c.rcv_e2e_key === null) return;
      const client = await this.relayClient(c.rcv_relay, this.route('rcv', connId));
      await client.secure(q, c.pending_snd_auth as Uint8Array);
      await client.subscribe(q).catch(() => undefined);
      if (c.kind === 'contact' && c.state_owner !== c.id) {
        newQueue = { relay: parseRelayAddress(c.rcv_relay), sndId: q.sndId, e2eKey: importKeyPair(c.rcv_e2e_key).publicKey };
      }
    } catch (e) {
      // A refused password is not retried until the next start: each try would be refused again
      // (and count against this source's refusals) until the person gives the relay's address.
      if (AgentError.is(e, 'RELAY_PASSWORD')) {
        this.awaitingPassword.add(connId);
        this.emit('problem', { connId, code: 'RELAY_PASSWORD', message: `a contact who came through your address waits: ${e.message}` });
        return;
      }
      // Retried a little later, and on the next start.
      setTimeout(() => {
        if (!this.stopped) this.track(this.finishAccept(connId));
      }, SEND_RETRY_MIN_MS * 4).unref();
      return;
    }
    await this.sendBody(connId, { type: 'REPLY', newQueue, payload: this.handler.replyPayload(connId) }, 'reply', () => {
      this.store.updateConnection(connId, { status: 'connected', pending_snd_auth: null, link_id: null });
      this.handler.connected(connId);
    });
    this.emit('connected', connId);
    if (c.snd_relay !== null) this.pool.keep(c.snd_relay, this.route('snd', connId));
    this.kickOutbox();
  }

  // Queue rotation.

  /**
   * Moves a contact's messages to us onto a new queue on `relay` (by default the relay we receive
   * on now): makes the queue, secures it with a sender key made here, subscribes, and sends the
   * key and the queue's address to the contact in a SWITCH through the outbox. The old queue is
   * read until the contact's first message on the new one, then until it is empty, then deleted.
   * While a switch waits for the contact, calling this again (with no relay or the same one)
   * sends the same SWITCH again. Resolves with the relay once the SWITCH is queued.
   */
  async switchQueue(connId: string, relay?: string): Promise<{ relay: string }> {
    const c = this.store.connection(connId);
    if (c === undefined || c.status === 'deleted') throw new AgentError('NOT_FOUND', 'no such contact');
    if (c.status !== 'connected' || c.kind !== 'contact' || c.rcv_relay === null) throw new AgentError('NOT_CONNECTED', 'this contact is not connected yet');
    // The relay to move to, as given (its password, if any, serves to make the queue) and by name.
    const target = relay ?? c.next_rcv_relay ?? c.rcv_relay;
    let targetName: string;
    try {
      targetName = relayName(target);
    } catch (e) {
      throw new AgentError('INVALID', ProtocolError.is(e) ? e.message : 'bad relay address', { cause: e });
    }
    if (c.next_rcv_id !== null && c.next_rcv_snd_id !== null && c.next_rcv_e2e_key !== null && c.next_snd_key !== null && c.next_rcv_relay !== null) {
      if (targetName !== relayName(c.next_rcv_relay)) throw new AgentError('INVALID', 'a switch to another relay waits for the contact; finish it first');
      const newQueue: QueueAddress = { relay: parseRelayAddress(c.next_rcv_relay), sndId: c.next_rcv_snd_id, e2eKey: importKeyPair(c.next_rcv_e2e_key).publicKey };
      await this.sendBody(connId, { type: 'SWITCH', newQueue, senderKey: c.next_snd_key }, 'message');
      this.kickOutbox();
      return { relay: targetName };
    }
    if (c.old_rcv_id !== null && (await this.retireOld(connId)) !== 'done') throw new AgentError('RELAY', 'the queue of the previous switch is not empty or cannot be deleted yet; try again later');
    const { client, q } = await this.createQueueOn(target, this.route('rcv', connId)).catch((e: unknown) => {
      throw AgentError.is(e) ? e : new AgentError('RELAY', 'the relay did not make a queue', { cause: e });
    });
    const senderKey = generateDhKeyPair(); // the contact's key for sending to the new queue
    const e2e = generateDhKeyPair(); // the new queue's box key
    await client.secure(q, senderKey.publicKey).catch((e: unknown) => {
      throw new AgentError('RELAY', 'the relay did not secure the new queue', { cause: e });
    });
    const rawSender = rawDhPrivateKey(senderKey.privateKey);
    const newQueue: QueueAddress = { relay: parseRelayAddress(targetName), sndId: q.sndId, e2eKey: e2e.publicKey };
    await this.sendBody(connId, { type: 'SWITCH', newQueue, senderKey: rawSender }, 'message', () =>
      this.store.updateConnection(connId, {
        next_rcv_relay: targetName,
        next_rcv_id: q.rcvId,
        next_rcv_snd_id: q.sndId,
        next_rcv_sig_key: exportPrivateKey(q.sigKey.privateKey),
        next_rcv_auth_key: exportPrivateKey(q.authKey.privateKey),
        next_rcv_box_key: q.boxKey,
        next_rcv_e2e_key: exportPrivateKey(e2e.privateKey),
        next_snd_key: rawSender,
      }),
    );
    await client.subscribe(q).catch(() => undefined);
    this.pool.keep(targetName, this.route('rcv', connId));
    this.emit('switch', { connId, phase: 'started', relay: targetName } satisfies SwitchEvent);
    this.kickOutbox();
    return { relay: targetName };
  }

  /** Looks at a connection's old queue after `delayMs`, and again later until it is deleted. */
  private scheduleRetire(connId: string, delayMs: number): void {
    if (this.stopped || this.retiring.has(connId)) return;
    this.retiring.add(connId);
    setTimeout(() => {
      this.retiring.delete(connId);
      if (this.stopped) return;
      this.track(
        this.retireOld(connId).then((r) => {
          if (r !== 'done') this.scheduleRetire(connId, r === 'error' ? RETIRE_ERROR_RETRY_MS : RETIRE_RETRY_MS);
        }),
      );
    }, delayMs).unref();
  }

  /**
   * Deletes a connection's old queue if it is empty; resolves with whether no old queue is left.
   * Emptiness is asked with GET on a connection of its own (the subscribed one may not GET): the
   * contact sends nothing more there once its messages reach the new queue, so NO_MSG means
   * every message of the old queue was received and ACKed. Resolves with 'done' (no old queue
   * left), 'pending' (it still holds messages) or 'error' (its relay could not be asked).
   */
  private async retireOld(connId: string): Promise<'done' | 'pending' | 'error'> {
    // The promotion (committed without a sync, in receive) is on disk before the old queue is
    // deleted on its relay: a power cut must not bring back a current queue that is gone.
    await this.store.local.durable();
    const c = this.store.connection(connId);
    if (c === undefined || c.status === 'deleted') return 'done';
    const old = this.rcvSlots(c).find((s) => s.slot === 'old');
    if (old === undefined) return 'done';
    const isolation = `retire:${connId}`;
    try {
      const client = await this.pool.get(old.relay, isolation);
      if ((await client.get(old.q)) !== null) return 'pending';
      await client.deleteQueue(old.q).catch((e: unknown) => {
        // Deleted already (by an earlier attempt whose OK was lost).
        if (!RelayClientError.is(e, 'AUTH')) throw e;
      });
    } catch {
      return 'error';
    } finally {
      this.pool.drop(isolation);
    }
    this.store.local.transaction(() => {
      const now = this.store.connection(connId);
      if (now !== undefined && eq(now.old_rcv_id, old.q.rcvId)) this.store.updateConnection(connId, nullColumns(OLD_QUEUE_COLUMNS));
    });
    this.emit('switch', { connId, phase: 'retired', relay: old.relay } satisfies SwitchEvent);
    // A message held for numbers the old queue might still bring: they will not come.
    if (this.held.has(connId)) this.release(connId, true);
    return 'done';
  }

  private queueReceipt(connId: string, seq: number): void {
    const list = this.receipts.get(connId);
    if (list !== undefined) {
      list.push(seq);
      return;
    }
    this.receipts.set(connId, [seq]);
    setTimeout(() => {
      if (!this.stopped) this.flushReceipts(connId);
    }, RECEIPT_DELAY_MS).unref();
  }

  /** Queues the receipts gathered for a contact as receipt messages, MAX_RECEIPT_SEQS to each. */
  private flushReceipts(connId: string): void {
    const seqs = this.receipts.get(connId) ?? [];
    this.receipts.delete(connId);
    for (let i = 0; i < seqs.length; i += MAX_RECEIPT_SEQS) {
      this.track(
        this.sendBody(connId, { type: 'RECEIPT', seqs: seqs.slice(i, i + MAX_RECEIPT_SEQS) }, 'message')
          .then(() => this.kickOutbox())
          .catch(() => undefined),
      );
    }
  }

  // The outbox.

  /** Makes the outbox worker run soon. */
  kickOutbox(): void {
    if (this.stopped) return;
    if (this.outboxRunning) {
      this.outboxAgain = true;
      return;
    }
    if (this.outboxTimer !== null) clearTimeout(this.outboxTimer);
    this.outboxTimer = setTimeout(() => {
      this.outboxTimer = null;
      this.track(this.runOutbox());
    }, 0);
  }

  private async runOutbox(): Promise<void> {
    if (this.outboxRunning || this.stopped) return;
    this.outboxRunning = true;
    let nextDue = Number.POSITIVE_INFINITY;
    try {
      do {
        this.outboxAgain = false;
        const rows = this.store.queued(OUTBOX_BATCH);
        // Nothing is sent before the commit that queued it (and its ratchet step) is on disk.
        try {
          await this.store.local.durable();
        } catch (e) {
          this.emit('problem', { connId: null, code: e instanceof AgentError ? e.code : 'INVALID', message: 'the database could not be written to disk' });
          nextDue = this.now() + SEND_RETRY_MIN_MS;
          break;
        }
        const byConn = new Map<string, typeof rows>();
        for (const r of rows) {
          const list = byConn.get(r.conn_id) ?? [];
          list.push(r);
          byConn.set(r.conn_id, list);
        }
        nextDue = Number.POSITIVE_INFINITY;
        await Promise.all(
          [...byConn.entries()].map(async ([connId, list]) => {
            const due = await this.sendConnection(connId, list);
            nextDue = Math.min(nextDue, due);
          }),
        );
      } while (this.outboxAgain && !this.stopped);
    } finally {
      this.outboxRunning = false;
    }
    if (!this.stopped && nextDue !== Number.POSITIVE_INFINITY) {
      const delay = Math.max(10, nextDue - this.now());
      if (this.outboxTimer !== null) clearTimeout(this.outboxTimer);
      this.outboxTimer = setTimeout(() => {
        this.outboxTimer = null;
        this.track(this.runOutbox());
      }, delay);
      this.outboxTimer.unref();
    }
  }

  /**
   * Sends a connection's queued bodies in order, up to SEND_WINDOW at once, and records the
   * accepted ones in one transaction; resolves with when to try again (or Infinity).
   */
  private async sendConnection(connId: string, rows: ReturnType<AgentStore['queued']>): Promise<number> {
    const c = this.store.connection(connId);
    if (c === undefined || c.status === 'deleted' || c.snd_relay === null || c.snd_id === null || c.snd_auth_key === null) return Number.POSITIVE_INFINITY;
    const sndId = c.snd_id;
    const authKey = this.keys(c.snd_auth_key).privateKey;
    let retryAt = Number.POSITIVE_INFINITY;
    let stop = false;
    const accepted: typeof rows = [];
    const failedRows: typeof rows = [];
    let next = 0;
    let quotaHit = false;
    // The confirmation goes alone: nothing else may reach the contact before it. Otherwise the
    // window starts where the last pass left it and widens with each accepted body: by one, or,
    // while the contact's queue was found full lately, by one per window's worth.
    const alone = rows[0]?.kind === 'confirmation';
    const crowded = this.quotaFull.has(connId);
    let width = alone ? 1 : (this.sendWidth.get(connId) ?? SEND_WINDOW);
    let live = 0;
    const workers: Promise<void>[] = [];
    const startWorkers = (): void => {
      while (live < Math.floor(width) && next < rows.length && !stop) {
        live++;
        const w = worker().finally(() => {
          live--;
        });
        // Handled here so that a failure is not reported before the loop below awaits it.
        w.catch(() => undefined);
        workers.push(w);
      }
    };
    const worker = async (): Promise<void> => {
      while (!stop && next < rows.length) {
        const r = rows[next++]!;
        const ready = r.kind === 'confirmation' || c.status === 'connected';
        if (!ready) {
          stop = true;
          return;
        }
        if (this.notDue(r)) {
          retryAt = Math.min(retryAt, r.next_attempt_at);
          stop = true;
          return;
        }
        const frame = this.store.outboxFrame(r.id);
        if (frame === undefined) continue;
        const stored = { ...frame, ...r };
        // The rows after it that are due go in the same box while they fit (see takeBatch).
        const batch = alone ? [stored] : this.takeBatch(stored, rows, next);
        next += batch.length - 1;
        // One body is boxed as it was stored, the same at every attempt. A batch's nonce comes
        // from its rows' nonces: the same rows make the same bytes again, and other rows
        // (another attempt may group differently) never reuse a nonce.
        const body = batch.length === 1 ? this.boxFrame(c, stored) : this.boxFrame(c, { body: encodeSessionBatch(batch.map((b) => b.body)), frame_key: null, nonce: batchNonce(batch) });
        try {
          const client = await this.pool.get(c.snd_relay as string, this.route('snd', connId));
          await client.send(sndId, r.kind === 'confirmation' ? null : authKey, body);
          accepted.push(...batch);
          if (!alone && width < SEND_WINDOW) {
            width = Math.min(SEND_WINDOW, width + (crowded ? 1 / Math.floor(width) : 1));
            startWorkers();
          }
        } catch (e) {
          stop = true;
          // A secured queue that refuses our key is gone (the contact deleted the conversation)
          // or suspended: waiting will not help. A confirmation's AUTH is settled by the reply.
          const refused = RelayClientError.is(e, 'AUTH') && r.kind !== 'confirmation';
          const quota = RelayClientError.is(e, 'QUOTA');
          // A full queue drains as the contact reads it: look again soon, with one body at first,
          // backing off (not far) while it stays full.
          let quotaDelay = 0;
          if (quota) {
            width = 1;
            const times = this.quotaFull.get(connId) ?? 0;
            if (!quotaHit) {
              quotaHit = true;
              this.quotaFull.set(connId, times + 1);
              quotaDelay = Math.min(QUOTA_RETRY_MS, QUOTA_RETRY_MIN_MS * 2 ** Math.min(times, 10));
            } else {
              quotaDelay = Math.min(QUOTA_RETRY_MS, QUOTA_RETRY_MIN_MS * 2 ** Math.min(Math.max(times, 1) - 1, 10));
            }
          }
          // The rows of a batch are due again together (their first row's delay), so that the
          // next attempt groups them the same way.
          const delay = quota ? quotaDelay : Math.min(SEND_RETRY_MAX_MS, SEND_RETRY_MIN_MS * 2 ** Math.min(r.attempts, 10));
          const at = this.now() + delay / 2 + Math.random() * (delay / 2);
          for (const b of batch) {
            // Given up after two days of failing: counted in attempts (at the longest retry
            // delay), so a clock that jumps forward does not fail a message at once; a full
            // queue, whose retries are not counted, by the time it was queued.
            const tooLong = this.now() - b.created_at > SEND_GIVE_UP_MS && (quota || b.attempts + 1 >= SEND_GIVE_UP_ATTEMPTS);
            if (refused || tooLong) {
              failedRows.push(b);
              continue;
            }
            // A full queue is not a failure of this message: nothing to record on disk.
            if (!quota) this.store.retryLater(b.id, at);
            retryAt = Math.min(retryAt, at);
          }
          if (refused) this.emit('problem', { connId, code: 'NOT_CONNECTED', message: "the contact's relay refuses messages for this conversation (it may have been deleted)" });
        }
      }
    };
    startWorkers();
    // Workers started while waiting are waited for too.
    for (let i = 0; i < workers.length; i++) await workers[i];
    if (!alone) {
      if (width < SEND_WINDOW) this.sendWidth.set(connId, width);
      else this.sendWidth.delete(connId);
      if (!quotaHit && accepted.length > 0) this.quotaFull.delete(connId);
    }
    if (accepted.length > 0 || failedRows.length > 0) {
      // Not waited for on disk: if a power cut loses it, the bodies are sent again, byte for
      // byte, and the contact drops them as duplicates.
      this.store.local.deferredTransaction(() => {
        for (const r of accepted) {
          this.store.markSent(r.id);
          if (r.kind === 'message') this.handler.sent(connId, r.seq);
        }
        for (const r of failedRows) {
          this.store.markFailed(r.id);
          this.handler.failed(connId, r.seq);
        }
      });
      for (const r of accepted) this.emit('sent', { connId, seq: r.seq });
    }
    // More may have been queued meanwhile; an accepted batch means the path is clear.
    if (accepted.length > 0 && retryAt === Number.POSITIVE_INFINITY) this.outboxAgain = true;
    return retryAt;
  }

  // Management.

  /** Turns delivery receipts for a contact on or off. */
  setReceipts(connId: string, on: boolean): void {
    this.store.updateConnection(connId, { receipts: on ? 1 : 0 });
  }

  /** The safety number of a connection, or null before the handshake completed. */
  safetyNumber(connId: string): { digits: string; scannable: Uint8Array } | null {
    const c = this.store.connection(connId);
    if (c === undefined || c.remote_identity === null) return null;
    const local = decodeLocalIdentity(c.local_identity);
    return safetyNumber(local.identity.publicKey.serialize(), c.remote_identity);
  }

  /** Deletes a connection: its queues on the relays (during a switch, both), its keys and its outbox. */
  async deleteConnection(connId: string): Promise<void> {
    const c = this.store.connection(connId);
    if (c === undefined || c.status === 'deleted') throw new AgentError('NOT_FOUND', 'no such contact');
    for (const s of this.rcvSlots(c)) {
      try {
        await (await this.relayClient(s.relay, this.route('rcv', connId))).deleteQueue(s.q);
      } catch {
        // The queue expires on the relay if it cannot be deleted now.
      }
    }
    const h = this.held.get(connId);
    if (h !== undefined) clearTimeout(h.timer);
    this.held.delete(connId);
    // Contacts that came through a long-term address share its libsignal state: it goes with the
    // last connection that uses it, not with the address.
    this.store.local.transaction(() => this.store.deleteConnection(connId, c.state_owner));
    this.pool.drop(this.route('rcv', connId));
    this.pool.drop(this.route('snd', connId));
  }
}
