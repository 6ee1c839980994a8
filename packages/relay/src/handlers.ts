// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Command handling: authorisation, queue operations and delivery. Every failure of
 * authorisation, whether the queue is missing, suspended or the key is wrong, is answered with
 * the same `ERR AUTH` after the same work (a check against a dummy key), so a command cannot
 * tell whether a queue exists. docs/protocol.md, "Commands".
 * @module
 */

import { createHash, timingSafeEqual } from 'node:crypto';

import {
  ID_LENGTH,
  ProtocolError,
  decodeCommand,
  useAuthorizedBytes,
  useReceivedMessage,
  type ClientTransmission,
  type Command,
  type ErrorCode,
} from '@murmure/protocol';
import {
  agree,
  authenticatorKey,
  checkAuthenticator,
  generateDhKeyPair,
  generateSigningKeyPair,
  isUsableDhKey,
  randomId,
  recipientBoxKey,
  sealRecipientBox,
  signingPublicKey,
  verifySignature,
} from '@murmure/queue-crypto';

import { idKey, sameBytes } from './bytes.js';
import type { RelayConfig } from './config.js';
import { AUTH_KEY_CACHE_SIZE, type CommandHandler, type Connection, type PushWait } from './connection.js';
import type { Logger } from './log.js';
import type { RelayMetrics } from './metrics.js';
import { StoreError, dayOf, type QueueRecord, type QueueStore, type StoredMessage } from './store/queue-store.js';

const EMPTY = new Uint8Array(0);
/** Most messages read ahead for a subscription in one store query. */
export const PREFETCH_MESSAGES = 8;
/**
 * Most bytes of sealed messages one subscription holds read ahead. Over every subscription they
 * hold at most `prefetchBudgetBytes` (config): past it a subscription reads one message at a time.
 */
export const PREFETCH_BYTES = 16_384;
/** Wait before a subscription whose message read failed reads again. */
export const DELIVERY_RETRY_MS = 1000;

/** Stand-in keys used when a queue does not exist, so the failure costs the same work. */
const DUMMY_SIG_KEY = generateSigningKeyPair().publicKey;
const DUMMY_DH_KEY = generateDhKeyPair().publicKey;

/** A subscription: which connection holds a queue and which message it holds unacknowledged. */
type Subscription = {
  conn: Connection;
  rcvId: Uint8Array;
  /** The queue as read at SUB: its recipient keys never change, so ACKs on it need no read. */
  queue: QueueRecord;
  delivered: Uint8Array | null;
  /** The next messages of the queue, read ahead in one query (PREFETCH_MESSAGES, PREFETCH_BYTES). */
  ahead: StoredMessage[];
  /**
   * The last message of the queue acknowledged while this subscription exists: a read begun
   * before the ACK (a SUB's, with the ACK of a message fetched by GET in the same block) may
   * still return it, and it is not pushed.
   */
  acked: Uint8Array | null;
  busy: boolean;
  again: boolean;
  /** The day (`dayOf`) this subscription last marked its queue used. */
  markedDay: number;
  /** The pending retry of a failed message read: at most one per subscription. */
  retry: NodeJS.Timeout | null;
  /** Waiting for room on a backed-up connection (`Connection.whenWritable`). */
  pushWait: PushWait | null;
};

/** Whose key an authenticator is checked against: the queue's recipient or its sender. */
type Role = 'recipient' | 'sender';

/**
 * The key of a derived authenticator key in a connection's cache: the id and the role it was
 * used in. With the id alone, one id used as a sender id and as a recipient id in turn would
 * swap the cached key every time for a queue that exists (its sender and recipient keys
 * differ) and never for one that does not (the dummy key both ways): the time would tell.
 */
function authCacheKey(role: Role, entityId: Uint8Array): string {
  return (role === 'sender' ? 's' : 'r') + idKey(entityId);
}

/** A SUB reading its queue: whether a message was committed to the queue meanwhile. */
type CommitWatch = { readonly key: string; committed: boolean };

/** The SHA-256 of a password: digests of equal length compare in constant time. */
function passwordDigest(password: Uint8Array): Buffer {
  return createHash('sha256').update(password).digest();
}

/** Whether a NEW's password is the relay's, in a time that depends on neither. */
function passwordMatches(expected: Buffer, given: Uint8Array | undefined): boolean {
  return timingSafeEqual(expected, passwordDigest(given ?? EMPTY_PASSWORD));
}
const EMPTY_PASSWORD = new Uint8Array(0);

class Refusal {
  constructor(readonly code: ErrorCode) {}
}

/** Handles the commands of every connection of one relay. */
export class RelayHandlers implements CommandHandler {
  private readonly subs = new Map<string, Subscription>();
  /** SUBs between the start of their queue read and their subscription, by recipient id key. */
  private readonly subReads = new Map<string, Set<CommitWatch>>();
  /** Bytes of sealed messages read ahead over every subscription, and held for reads under way (at most `prefetchBudgetBytes`). */
  private aheadBytes = 0;

  /** The SHA-256 of the queue-creation password, or null when anyone may create queues. */
  private readonly createPassword: Buffer | null;

  constructor(
    private readonly store: QueueStore,
    private readonly config: RelayConfig,
    private readonly metrics: RelayMetrics,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.createPassword = config.createPassword === null ? null : passwordDigest(Buffer.from(config.createPassword, 'ascii'));
  }

  async handle(conn: Connection, t: ClientTransmission): Promise<boolean> {
    let cmd: Command;
    try {
      cmd = decodeCommand(t.command, conn.version);
    } catch (e) {
      const large = ProtocolError.is(e, 'TOO_LARGE') && t.command[0] === 0x08;
      conn.error(t.corrId, t.entityId, large ? 'LARGE_MSG' : 'CMD');
      return false;
    }
    this.metrics.command(cmd.type);
    try {
      await this.dispatch(conn, t, cmd);
    } catch (e) {
      if (e instanceof Refusal) {
        conn.error(t.corrId, t.entityId, e.code);
        return e.code === 'AUTH';
      } else if (e instanceof StoreError) {
        this.logger.log('error', 'store write failed', { code: e.code });
        conn.error(t.corrId, t.entityId, 'STORE');
      } else {
        this.logger.log('error', 'command failed', { command: cmd.type });
        conn.error(t.corrId, t.entityId, 'INTERNAL');
      }
    }
    return false;
  }

  private async dispatch(conn: Connection, t: ClientTransmission, cmd: Command): Promise<void> {
    const reply = conn.respond.bind(conn, t.corrId, t.entityId);
    switch (cmd.type) {
      case 'PING':
        return reply({ type: 'PONG' });
      case 'NEW':
        return reply(await this.newQueue(conn, t, cmd));
      case 'LGET': {
        const link = t.entityId.length === ID_LENGTH ? await this.store.linkData(t.entityId) : undefined;
        if (link === undefined) throw new Refusal('AUTH');
        return reply({ type: 'LNK', sndId: link.sndId, data: link.data });
      }
      case 'SEND':
        return this.send(conn, t, cmd);
      case 'KEY': {
        const q = await this.recipient(conn, t, 'signature');
        // Checked once the owner is known: a sender key of low order would refuse every SEND.
        if (!isUsableDhKey(cmd.sndAuthKey)) throw new Refusal('CMD');
        if ((await this.store.secureQueue(q.rcvId, cmd.sndAuthKey, this.now())) === 'conflict') throw new Refusal('AUTH');
        return reply({ type: 'OK' });
      }
      case 'SUB': {
        const watch = this.watchCommits(idKey(t.entityId));
        let q: QueueRecord;
        try {
          q = await this.recipient(conn, t, 'authenticator');
        } finally {
          this.unwatchCommits(watch);
        }
        // Closed while the queue was read: its cleanup has run, so a subscription made now would
        // never be dropped.
        if (conn.isClosed) return;
        this.subscribe(conn, q);
        reply({ type: 'OK' });
        this.touch(q);
        // A queue that held nothing when it was read, and took no message since, has nothing to
        // deliver: a reconnect to an empty queue reads no message. A message committed from now
        // on finds the subscription and is pushed at its commit.
        if (q.msgCount === 0 && !watch.committed) return;
        return this.deliverNext(idKey(q.rcvId));
      }
      case 'ACK':
        return this.ack(conn, t, cmd.msgId);
      case 'GET':
        return this.get(conn, t);
      case 'OFF': {
        const q = await this.recipient(conn, t, 'signature');
        await this.store.suspendQueue(q.rcvId);
        return reply({ type: 'OK' });
      }
      case 'DEL': {
        const q = await this.recipient(conn, t, 'signature');
        try {
          await this.store.deleteQueue(q.rcvId);
        } catch (e) {
          // The commit may have landed and only its sync failed: the queue is gone all the same,
          // and its subscription must not outlive it.
          if ((await this.store.queueByRecipient(q.rcvId).catch(() => q)) === undefined) this.queueDeleted(conn, q.rcvId);
          throw e;
        }
        this.queueDeleted(conn, q.rcvId);
        return reply({ type: 'OK' });
      }
      case 'LSET': {
        const q = await this.recipient(conn, t, 'signature');
        if (q.sndAuthKey !== null) throw new Refusal('CMD');
        const set = await this.store.setLink(q.rcvId, cmd.linkId, cmd.data);
        if (set === 'taken') throw new Refusal('DUPLICATE');
        // A KEY committed between the read above and this write: the queue is secured now.
        if (set === 'secured') throw new Refusal('CMD');
        return reply({ type: 'OK' });
      }
      default: {
        const never: never = cmd;
        throw new Refusal(never);
      }
    }
  }

  /** Ends the subscription of a deleted queue (END to another connection holding it). */
  private queueDeleted(conn: Connection, rcvId: Uint8Array): void {
    const key = idKey(rcvId);
    const sub = this.subs.get(key);
    if (sub !== undefined) {
      this.unsubscribe(sub.conn, key);
      if (sub.conn !== conn) sub.conn.end(rcvId);
    }
    conn.fetched.delete(key);
  }

  private async newQueue(conn: Connection, t: ClientTransmission, cmd: Extract<Command, { type: 'NEW' }>) {
    if (t.entityId.length !== 0) throw new Refusal('CMD');
    if (conn.queuesCreated >= this.config.queuesPerConnection) throw new Refusal('LIMIT');
    // Before the signature: a client without the password costs no signature check.
    if (this.createPassword !== null && !passwordMatches(this.createPassword, cmd.password)) throw new Refusal('AUTH');
    if (t.auth.kind !== 'signature') throw new Refusal('AUTH');
    // A signature that fails its own key is a failed check (it ends the connection's exception
    // from its source's budget at once); one that holds is none passed: the client chose the key.
    if (!this.signatureValid(conn, t, cmd.rcvSigKey, t.auth.bytes)) {
      conn.keyChecked(false);
      throw new Refusal('AUTH');
    }
    const server = generateDhKeyPair();
    const secret = agree(server.privateKey, cmd.rcvDhKey);
    // A recipient key of low order would make every later SUB, GET and ACK fail with AUTH.
    if (secret === null || !isUsableDhKey(cmd.rcvAuthKey)) throw new Refusal('CMD');
    const rcvId = randomId();
    const sndId = randomId();
    // The slot is taken before the write: the NEWs of one block, and those arriving while a
    // write waits for its sync, are checked against the count of every NEW still in flight. A
    // failed write keeps its slot: after a failed sync the queue may exist all the same.
    conn.queuesCreated++;
    await this.store.createQueue(
      { rcvId, sndId, rcvSigKey: cmd.rcvSigKey, rcvAuthKey: cmd.rcvAuthKey, boxKey: recipientBoxKey(secret) },
      this.now(),
    );
    this.metrics.queuesCreated++;
    return { type: 'IDS' as const, rcvId, sndId, srvDhKey: server.publicKey };
  }

  private async send(conn: Connection, t: ClientTransmission, cmd: Extract<Command, { type: 'SEND' }>): Promise<void> {
    // A secured queue this connection already sent to is kept with its authenticator key: its
    // sender key never changes once set, and the store's write checks that the queue is still
    // there and not suspended. Only queues this connection proved it may use are kept, so the
    // time of a SEND tells a connection nothing it did not know.
    const cached = conn.authKeys.get(authCacheKey('sender', t.entityId))?.queue;
    let q = cached;
    if (q === undefined && t.entityId.length === ID_LENGTH) {
      const read = this.lookUp('sender', t.entityId);
      q = read instanceof Promise ? await read : read;
    }
    let ok: boolean;
    if (t.auth.kind === 'authenticator') {
      ok = this.authenticatorValid(conn, t, 'sender', q?.sndAuthKey ?? DUMMY_DH_KEY, t.auth.bytes) && q !== undefined && q.sndAuthKey !== null;
      conn.keyChecked(ok);
      if (ok && cached === undefined && q !== undefined && !q.suspended) {
        const entry = conn.authKeys.get(authCacheKey('sender', t.entityId));
        if (entry !== undefined) entry.queue = q;
      }
    } else {
      // Only messages to an unsecured queue (confirmations, contact requests) go without authorisation.
      ok = t.auth.kind === 'none' && q !== undefined && q.sndAuthKey === null;
    }
    if (!ok || q === undefined || q.suspended) throw new Refusal('AUTH');
    const now = this.now();
    const msgId = randomId();
    const boxKey = q.boxKey;
    const sealed = useReceivedMessage({ receivedAt: now, flags: cmd.flags, body: cmd.body }, (content) => sealRecipientBox(boxKey, msgId, content));
    // The subscriber gets the message once it is committed, without waiting for the sync that
    // the sender's OK waits for: if the relay dies before the sync, the sender, never told OK,
    // sends the same bytes again and the recipient drops the repeat.
    const key = idKey(q.rcvId);
    const added = await this.store.addMessage(q.rcvId, { msgId, receivedAt: now, sealed }, this.config.queueQuota, now, (r) => {
      if (r !== 'ok') return;
      this.commitSeen(key);
      void this.deliverNext(key);
    });
    if (added === 'gone') throw new Refusal('AUTH');
    if (added === 'quota') throw new Refusal('QUOTA');
    this.metrics.messagesStored++;
    conn.respond(t.corrId, t.entityId, { type: 'OK' });
    // Already pushed at commit by a store that calls `committed`; a no-op then (one is delivered).
    await this.deliverNext(key);
  }

  private async ack(conn: Connection, t: ClientTransmission, msgId: Uint8Array): Promise<void> {
    const own = this.subs.get(idKey(t.entityId));
    const q = own?.conn === conn ? this.subscriber(conn, t, own.queue) : await this.recipient(conn, t, 'authenticator');
    const key = idKey(q.rcvId);
    const sub = this.subs.get(key);
    const fetched = conn.fetched.get(key);
    // The message this connection was pushed as subscriber, or fetched with GET (a GET followed
    // by a SUB in one block: the SUB has made it the subscriber before the push has gone out).
    const pushed = sub?.conn === conn && sub.delivered !== null && sameBytes(sub.delivered, msgId);
    const got = fetched !== undefined && sameBytes(fetched, msgId);
    if (!pushed && !got) throw new Refusal('NO_MSG');
    if (got) conn.fetched.delete(key);
    if (sub !== undefined) {
      // A copy: the id is a view into the received block, which it would keep alive.
      sub.acked = msgId.slice();
      // The message pushed has left `ahead`; one acknowledged after a GET may still be in it.
      if (sub.ahead.some((m) => sameBytes(m.msgId, msgId))) this.setAhead(sub, sub.ahead.filter((m) => !sameBytes(m.msgId, msgId)));
    }
    // The next message goes out as soon as the ACK is taken, without waiting for the deletion to
    // be durable: a crash before that re-delivers an acknowledged message, which the recipient
    // recognises as a duplicate. The ACK's own OK waits for the commit. If the message expired
    // meanwhile, the deletion finds nothing and the ACK gets NO_MSG, but delivery moves on too.
    const deleted = this.store.deleteMessage(q.rcvId, msgId, this.now());
    // The subscriber's held message may be acknowledged by the connection that fetched it with
    // GET: the subscriber is then sent the next one (its own ACK of the old one gets NO_MSG).
    if (sub !== undefined && sub.delivered !== null && sameBytes(sub.delivered, msgId)) {
      sub.delivered = null;
      void this.deliverNext(key);
    }
    if (!(await deleted)) throw new Refusal('NO_MSG');
    this.metrics.messagesAcked++;
    conn.respond(t.corrId, t.entityId, { type: 'OK' });
  }

  private async get(conn: Connection, t: ClientTransmission): Promise<void> {
    const q = await this.recipient(conn, t, 'authenticator');
    const key = idKey(q.rcvId);
    if (this.subs.get(key)?.conn === conn) throw new Refusal('CMD');
    if (conn.isClosed) return;
    this.touch(q);
    const m = await this.store.oldestMessage(q.rcvId);
    if (m === undefined) throw new Refusal('NO_MSG');
    conn.fetched.set(key, m.msgId);
    this.metrics.messagesDelivered++;
    conn.respond(t.corrId, t.entityId, { type: 'MSG', msgId: m.msgId, body: m.sealed });
  }

  /**
   * Records that the recipient used the queue today, unless the record already says so: a
   * reconnect storm of clients that were connected today writes nothing.
   */
  private touch(q: QueueRecord): void {
    const now = this.now();
    if (q.activeDay !== dayOf(now)) this.store.touchQueue(q.rcvId, now).catch(() => undefined);
  }

  /**
   * Marks every subscribed queue used today (once a day each), so that expiry never deletes a
   * queue whose recipient is connected to it: a client may hold one subscription for months.
   * The marks are queued before the expiry's own write, so they commit first.
   */
  markSubscribed(now: number): void {
    const today = dayOf(now);
    for (const sub of this.subs.values()) {
      if (sub.markedDay === today) continue;
      sub.markedDay = today;
      this.store.touchQueue(sub.rcvId, now).catch(() => undefined);
    }
  }

  /**
   * The queue of a recipient or sender id: at once from a store that can answer so (the key check
   * that follows then runs in the command's turn, see turns.ts), else once the store has read it.
   */
  private lookUp(role: Role, id: Uint8Array): QueueRecord | undefined | Promise<QueueRecord | undefined> {
    const s = this.store;
    if (role === 'recipient') return s.queueByRecipientNow !== undefined ? s.queueByRecipientNow(id) : s.queueByRecipient(id);
    return s.queueBySenderNow !== undefined ? s.queueBySenderNow(id) : s.queueBySender(id);
  }

  /**
   * Looks up the recipient's queue and checks the command's authorisation, or refuses with AUTH.
   * With a store that answers at once, the check runs before anything waits: in the turn that
   * started the command, whose budget it counts against (turns.ts), and its outcome reaches the
   * connection (`keyChecked`) before the turn starts its next command.
   */
  private async recipient(conn: Connection, t: ClientTransmission, kind: 'signature' | 'authenticator'): Promise<QueueRecord> {
    let q: QueueRecord | undefined;
    if (t.entityId.length === ID_LENGTH) {
      const read = this.lookUp('recipient', t.entityId);
      q = read instanceof Promise ? await read : read;
    }
    let ok = false;
    if (t.auth.kind === kind) {
      ok =
        kind === 'signature'
          ? this.signatureValid(conn, t, q?.rcvSigKey ?? DUMMY_SIG_KEY, t.auth.bytes)
          : this.authenticatorValid(conn, t, 'recipient', q?.rcvAuthKey ?? DUMMY_DH_KEY, t.auth.bytes);
      ok &&= q !== undefined;
      conn.keyChecked(ok);
    }
    if (!ok || q === undefined) throw new Refusal('AUTH');
    return q;
  }

  /** Checks a command on a queue this connection holds the subscription of, or refuses with AUTH. */
  private subscriber(conn: Connection, t: ClientTransmission, q: QueueRecord): QueueRecord {
    if (t.auth.kind !== 'authenticator') throw new Refusal('AUTH');
    const ok = this.authenticatorValid(conn, t, 'recipient', q.rcvAuthKey, t.auth.bytes);
    conn.keyChecked(ok);
    if (!ok) throw new Refusal('AUTH');
    return q;
  }

  private signatureValid(conn: Connection, t: ClientTransmission, publicKey: Uint8Array, sig: Uint8Array): boolean {
    let key;
    try {
      key = signingPublicKey(publicKey);
    } catch {
      key = signingPublicKey(DUMMY_SIG_KEY);
    }
    return useAuthorizedBytes(conn.sessionId, t.corrId, t.entityId, t.command, (data) => verifySignature(key, data, sig));
  }

  private authenticatorValid(conn: Connection, t: ClientTransmission, role: Role, peer: Uint8Array, mac: Uint8Array): boolean {
    const cacheKey = authCacheKey(role, t.entityId);
    let entry = conn.authKeys.get(cacheKey);
    // A check that passes keeps its agreement for the session key's period; one that fails
    // after a kept agreement makes it again (see `SessionKey.kept`).
    let kept = false;
    let made: Uint8Array | null = null;
    if (entry === undefined || !sameBytes(entry.peer, peer)) {
      const session = conn.sessionKey;
      let secret = session.kept(peer);
      kept = secret !== undefined;
      if (secret === undefined) {
        made = session.agree(peer);
        secret = made ?? session.agree(DUMMY_DH_KEY) ?? undefined;
        if (secret === undefined) return false;
      }
      entry = { peer, key: authenticatorKey(secret, conn.sessionId) };
      if (conn.authKeys.size >= AUTH_KEY_CACHE_SIZE) {
        const oldest = conn.authKeys.keys().next().value;
        if (oldest !== undefined) conn.authKeys.delete(oldest);
      }
      conn.authKeys.set(cacheKey, entry);
    }
    const key = entry.key;
    const ok = useAuthorizedBytes(conn.sessionId, t.corrId, t.entityId, t.command, (data) => checkAuthenticator(key, data, mac));
    if (ok && made !== null) conn.sessionKey.keep(peer, made);
    else if (!ok && kept) conn.sessionKey.agree(peer);
    return ok;
  }

  private subscribe(conn: Connection, queue: QueueRecord): void {
    const rcvId = queue.rcvId;
    const key = idKey(rcvId);
    const old = this.subs.get(key);
    if (old !== undefined && old.conn !== conn) {
      old.conn.subscriptions.delete(key);
      old.conn.end(rcvId);
    }
    if (old === undefined) this.metrics.subscriptions++;
    else this.ended(old);
    // A new SUB re-delivers the message held unacknowledged, if any.
    this.subs.set(key, { conn, rcvId, queue, delivered: null, ahead: [], acked: null, busy: false, again: false, markedDay: dayOf(this.now()), retry: null, pushWait: null });
    conn.subscriptions.add(key);
  }

  private unsubscribe(conn: Connection, key: string): void {
    const sub = this.subs.get(key);
    if (sub !== undefined && sub.conn === conn) {
      this.subs.delete(key);
      this.metrics.subscriptions--;
      this.ended(sub);
    }
    conn.subscriptions.delete(key);
  }

  /** A subscription replaced or ended: it retries nothing, holds nothing and waits for nothing. */
  private ended(sub: Subscription): void {
    if (sub.retry !== null) clearTimeout(sub.retry);
    this.setAhead(sub, []);
    if (sub.pushWait !== null) {
      sub.conn.cancelWait(sub.pushWait);
      sub.pushWait = null;
    }
  }

  /**
   * Starts noting whether a message is committed to the queue `key` while a SUB reads it. The
   * store may answer the read before or after such a commit (a read of a networked store is
   * asynchronous), and the subscription is made only after the read: without the note, a message
   * committed in between would wait for the next one.
   */
  private watchCommits(key: string): CommitWatch {
    const watch: CommitWatch = { key, committed: false };
    let set = this.subReads.get(key);
    if (set === undefined) this.subReads.set(key, (set = new Set()));
    set.add(watch);
    return watch;
  }

  private unwatchCommits(watch: CommitWatch): void {
    const set = this.subReads.get(watch.key);
    if (set === undefined) return;
    set.delete(watch);
    if (set.size === 0) this.subReads.delete(watch.key);
  }

  /** A message was committed to the queue `key`: SUBs reading it must look for messages. */
  private commitSeen(key: string): void {
    const set = this.subReads.get(key);
    if (set !== undefined) for (const w of set) w.committed = true;
  }

  /**
   * Pushes the oldest message to the subscriber if it holds none unacknowledged. Never rejects:
   * it runs after the command that caused it was answered, so a failed read cannot answer that
   * command a second time. The subscription tries again after DELIVERY_RETRY_MS instead.
   */
  private async deliverNext(key: string): Promise<void> {
    const sub = this.subs.get(key);
    if (sub === undefined || sub.delivered !== null) return;
    if (sub.busy) {
      sub.again = true;
      return;
    }
    // A connection whose output is backed up gets no message until what waits has gone out.
    if (!sub.conn.takePushSlot()) {
      sub.pushWait ??= sub.conn.whenWritable(() => {
        sub.pushWait = null;
        if (this.subs.get(key) === sub) void this.deliverNext(key);
      });
      return;
    }
    sub.busy = true;
    try {
      do {
        sub.again = false;
        const m = await this.nextMessage(key, sub);
        if (this.subs.get(key) !== sub || sub.conn.isClosed) return;
        // Nothing yet; a message committed during the read set `again` and is looked for next.
        if (m === undefined) continue;
        // Acknowledged while it was read: the store no longer returns it, so the next read moves on.
        if (sub.acked !== null && sameBytes(m.msgId, sub.acked)) {
          sub.again = true;
          continue;
        }
        sub.delivered = m.msgId;
        this.metrics.messagesDelivered++;
        sub.conn.respond(EMPTY, sub.rcvId, { type: 'MSG', msgId: m.msgId, body: m.sealed });
      } while (sub.again && sub.delivered === null);
    } catch (e) {
      // One retry per subscription, however many SENDs and ACKs meet the failing read meanwhile.
      if (sub.retry === null) {
        this.logger.log('error', 'store read failed', { code: e instanceof StoreError ? e.code : 'INTERNAL' });
        this.metrics.storeRetries++;
        sub.retry = setTimeout(() => {
          sub.retry = null;
          if (this.subs.get(key) === sub) void this.deliverNext(key);
        }, DELIVERY_RETRY_MS);
        sub.retry.unref();
      }
    } finally {
      sub.busy = false;
      sub.conn.pushDone();
    }
  }

  /**
   * The oldest message of a subscription's queue: from the messages read ahead, else from the
   * store (reading a few ahead). Messages only join a queue behind those read, and the ones
   * read leave it by an ACK (which drops them from `ahead`), by expiry (a message read ahead
   * that is old enough to have expired sends the subscription back to the store) or with the
   * queue (which ends the subscription).
   */
  private async nextMessage(key: string, sub: Subscription): Promise<StoredMessage | undefined> {
    const head = sub.ahead[0];
    if (head !== undefined && head.receivedAt >= this.now() - this.config.messageTtlMs) {
      sub.ahead.shift();
      this.countAhead(-head.sealed.length);
      return head;
    }
    // Read ahead only while the relay-wide budget has room for a full subscription's worth,
    // which is held for the read: the reads of one block's SUBs all run before any settles.
    const readAhead = this.aheadBytes + PREFETCH_BYTES <= this.config.prefetchBudgetBytes;
    if (readAhead) this.countAhead(PREFETCH_BYTES);
    let read: StoredMessage[];
    try {
      read = await this.store.oldestMessages(sub.rcvId, readAhead ? PREFETCH_MESSAGES : 1, PREFETCH_BYTES);
    } finally {
      if (readAhead) this.countAhead(-PREFETCH_BYTES);
    }
    let bytes = 0;
    let keep = 1;
    while (keep < read.length && (bytes += read[keep]!.sealed.length) <= PREFETCH_BYTES) keep++;
    // A subscription ended while the store was read holds nothing.
    this.setAhead(sub, this.subs.get(key) === sub ? read.slice(1, keep) : []);
    return read[0];
  }

  /** Replaces what a subscription holds read ahead, keeping the relay-wide count of its bytes. */
  private setAhead(sub: Subscription, ahead: StoredMessage[]): void {
    let delta = 0;
    for (const m of sub.ahead) delta -= m.sealed.length;
    for (const m of ahead) delta += m.sealed.length;
    sub.ahead = ahead;
    this.countAhead(delta);
  }

  private countAhead(delta: number): void {
    this.aheadBytes += delta;
    this.metrics.prefetchBytes = this.aheadBytes;
  }

  closed(conn: Connection): void {
    for (const key of [...conn.subscriptions]) this.unsubscribe(conn, key);
    conn.fetched.clear();
    conn.authKeys.clear();
  }
}
