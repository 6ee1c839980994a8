// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The chat API: the one surface the CLI (and later the web UI and bots) use. A home directory
 * holds one encrypted database with any number of profiles; each contact belongs to a profile
 * and may be incognito (it sees a random name, never the profile's). Profile names travel only
 * inside end-to-end encrypted messages.
 * @module
 */

import { randomInt, randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { existsSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import { AGENT_MIGRATIONS, Agent, AgentError, LocalDatabase, deriveDatabaseKey, loadSalt, type IncomingEvent, type Socks5Proxy } from '@murmure/agent';
import { parseRelayAddress } from '@murmure/protocol';

import { ChatStore, CHAT_MIGRATIONS, type ContactRow, type MessageRow, type ProfileRow } from './chat-store.js';
import { MAX_NAME_LENGTH, MAX_TEXT_LENGTH, cleanName, decodeContent, encodeContent } from './content.js';
import { ChatError } from './errors.js';
import { orderConversation } from './order.js';

/** The database file of a home. */
export const DB_FILE = 'murmure.db';
/** The scrypt salt beside it. */
export const SALT_FILE = 'murmure.salt';

/** A contact as shown to a person. */
export type ContactView = Readonly<{
  id: string;
  name: string;
  status: 'invited' | 'address' | 'pending' | 'connected';
  incognito: string | null;
  verified: boolean;
  receipts: boolean;
}>;

/** A message as shown to a person. */
export type MessageView = Readonly<{
  id: number;
  contact: string;
  contactId: string;
  direction: 'in' | 'out';
  kind: MessageRow['kind'];
  text: string;
  sentAt: number;
  receivedAt: number | null;
  status: MessageRow['status'];
}>;

/** Events while online. */
export type ChatEvent =
  | ({ type: 'message' } & MessageView)
  | { type: 'connected'; contact: string; contactId: string }
  | { type: 'sent'; contact: string; contactId: string; id: number }
  | { type: 'delivered'; contact: string; contactId: string; ids: number[] }
  | { type: 'missing'; contact: string; contactId: string; from: number; to: number }
  /** The contact's identity key changed: the safety number is new and the contact is no longer verified. */
  | { type: 'identity-changed'; contact: string; contactId: string }
  /** The secure session was started again; `restored` says which side had restored an old copy, if known. */
  | { type: 'resync'; contact: string; contactId: string; restored: 'contact' | 'self' | 'unknown' }
  | { type: 'problem'; contact: string | null; contactId: string | null; message: string };

const ADJECTIVES = ['Amber', 'Brisk', 'Calm', 'Deft', 'Eager', 'Fair', 'Gentle', 'Hazel', 'Ivory', 'Jolly', 'Keen', 'Lucid', 'Mellow', 'Noble', 'Olive', 'Quiet', 'Rapid', 'Silver', 'Tidy', 'Vivid', 'Witty'];
const ANIMALS = ['Otter', 'Heron', 'Lynx', 'Finch', 'Marten', 'Ibis', 'Gecko', 'Puffin', 'Badger', 'Crane', 'Newt', 'Robin', 'Stoat', 'Tapir', 'Wren', 'Yak', 'Zebu', 'Quail', 'Moth', 'Koala'];

/** The notice stored when the secure session with a contact was started again. */
const RESYNC_NOTICES = {
  contact: 'the contact restored an old backup: the secure session was reset; some messages may be missing or out of order',
  self: 'this device was restored from an old backup: the secure session was reset; messages sent from it since the backup did not reach the contact',
  unknown: 'the secure session was reset after messages could not be decrypted; some messages may be missing',
} as const;

/** A random name shown to an incognito contact. */
export function randomIncognitoName(): string {
  return `${ADJECTIVES[randomInt(ADJECTIVES.length)]} ${ANIMALS[randomInt(ANIMALS.length)]}`;
}

/** Options for opening a home. */
export type OpenOptions = Readonly<{
  home: string;
  passphrase: string;
  create?: boolean;
  now?: () => number;
  /** Reach every relay through this SOCKS5 proxy (Tor), each queue on a circuit of its own. */
  socks5?: Socks5Proxy;
}>;

function openDatabase(home: string, passphrase: string, create: boolean): LocalDatabase {
  const dbPath = join(home, DB_FILE);
  if (!create && !existsSync(dbPath)) throw new ChatError('NO_HOME', `no Murmure home at ${home}: run 'murmure init' first`);
  const saltPath = join(home, SALT_FILE);
  const pendingSalt = `${saltPath}.new`;
  try {
    return LocalDatabase.open(dbPath, deriveDatabaseKey(passphrase, loadSalt(saltPath, create)), [...AGENT_MIGRATIONS, ...CHAT_MIGRATIONS]);
  } catch (e) {
    // A passphrase change that stopped after re-keying but before the salt was replaced.
    if (AgentError.is(e, 'WRONG_PASSPHRASE') && existsSync(pendingSalt)) {
      const db = LocalDatabase.open(dbPath, deriveDatabaseKey(passphrase, loadSalt(pendingSalt, false)), [...AGENT_MIGRATIONS, ...CHAT_MIGRATIONS]);
      renameSync(pendingSalt, saltPath);
      return db;
    }
    throw ChatError.from(e);
  }
}

/** Refuses text that is not a relay address, with the parser's reason. */
function checkRelay(relay: string): void {
  try {
    parseRelayAddress(relay);
  } catch (e) {
    throw new ChatError('INVALID', e instanceof Error ? e.message : 'bad relay address', { cause: e });
  }
}

/** A home, unlocked. */
export class Chat extends EventEmitter {
  readonly store: ChatStore;
  readonly agent: Agent;
  private readonly now: () => number;
  private online = false;
  /** Messages stored under a repeated sequence number in the receive transaction, by `connId/seq`, for the event after it. */
  private readonly repeated = new Map<string, number>();

  private constructor(
    readonly home: string,
    readonly db: LocalDatabase,
    now: () => number,
    socks5?: Socks5Proxy,
  ) {
    super();
    this.now = now;
    this.store = new ChatStore(db);
    this.agent = new Agent({
      db,
      now,
      ...(socks5 === undefined ? {} : { socks5 }),
      handler: {
        incoming: (ev) => this.onIncoming(ev),
        sent: (connId, seq) => this.store.setStatus(connId, seq, 'sent'),
        connected: () => undefined,
        failed: (connId, seq) => this.store.setStatus(connId, seq, 'failed'),
        replyPayload: (connId) => encodeContent({ type: 'profile', name: this.nameFor(connId) }),
      },
    });
    this.agent.on('event', (ev: IncomingEvent) => this.afterCommit(ev));
    this.agent.on('connected', (connId: string) => this.emitEvent({ type: 'connected', contact: this.displayName(connId), contactId: connId }));
    this.agent.on('sent', ({ connId, seq }: { connId: string; seq: number }) => {
      const m = this.store.message(connId, 'out', seq);
      if (m !== undefined) this.emitEvent({ type: 'sent', contact: this.displayName(connId), contactId: connId, id: m.id });
    });
    this.agent.on('problem', (p: { connId: string | null; message: string }) =>
      this.emitEvent({ type: 'problem', contact: p.connId === null ? null : this.displayName(p.connId), contactId: p.connId, message: p.message }),
    );
  }

  /** Opens (or with `create`, creates) a home. A wrong passphrase fails with WRONG_PASSPHRASE. */
  static open(opts: OpenOptions): Chat {
    const db = openDatabase(opts.home, opts.passphrase, opts.create === true);
    return new Chat(opts.home, db, opts.now ?? Date.now, opts.socks5);
  }

  /** Re-keys a home's database with a new passphrase. */
  static changePassphrase(home: string, oldPassphrase: string, newPassphrase: string): void {
    const db = openDatabase(home, oldPassphrase, false);
    const saltPath = join(home, SALT_FILE);
    const pending = `${saltPath}.new`;
    try {
      rmSync(pending, { force: true });
      const newKey = deriveDatabaseKey(newPassphrase, loadSalt(pending, true));
      db.rekey(newKey);
    } finally {
      db.close();
    }
    renameSync(pending, saltPath);
  }

  private emitEvent(ev: ChatEvent): void {
    this.emit('event', ev);
  }

  // Profiles.

  /**
   * Creates a profile that uses `relay` for its queues. The profile records the relay's name (the
   * address without password); a queue-creation password in the address is kept by the agent,
   * for every profile on that relay.
   */
  createProfile(name: string, relay: string): ProfileRow {
    const clean = cleanName(name);
    if (clean.length === 0 || clean.length > MAX_NAME_LENGTH) throw new ChatError('INVALID', `a name must have 1-${MAX_NAME_LENGTH} characters`);
    checkRelay(relay);
    if (this.store.profileByName(clean) !== undefined) throw new ChatError('PROFILE_EXISTS', `a profile named '${clean}' exists already`);
    return this.store.local.transaction(() => {
      const p: ProfileRow = { id: randomUUID(), name: clean, relay: this.agent.rememberRelay(relay), created_at: this.now() };
      this.store.insertProfile(p);
      return p;
    });
  }

  /**
   * Makes a profile's new queues on `relay` from now on (contacts made before keep their queues
   * until a switch). Giving the same relay's address with its new password is how a person takes
   * a password change of their relay.
   */
  setProfileRelay(profileName: string | undefined, relay: string): ProfileRow {
    const p = this.profile(profileName);
    checkRelay(relay);
    return this.store.local.transaction(() => {
      const updated: ProfileRow = { ...p, relay: this.agent.rememberRelay(relay) };
      this.store.setProfileRelay(p.id, updated.relay);
      return updated;
    });
  }

  /** The profiles of this home. */
  profiles(): ProfileRow[] {
    return this.store.profiles();
  }

  /** The named profile, or the first one. */
  profile(name?: string): ProfileRow {
    const p = name === undefined ? this.store.profiles()[0] : this.store.profileByName(name);
    if (p === undefined) throw new ChatError('NO_PROFILE', name === undefined ? "this home has no profile: run 'murmure init'" : `no profile named '${name}'`);
    return p;
  }

  // Contacts.

  private nameFor(connId: string): string {
    const c = this.store.contact(connId);
    if (c === undefined) return randomIncognitoName();
    return c.incognito_name ?? this.store.profile(c.profile_id)?.name ?? randomIncognitoName();
  }

  private displayName(connId: string): string {
    const c = this.store.contact(connId);
    return c?.local_name ?? c?.their_name ?? `contact ${connId.slice(0, 8)}`;
  }

  /** Makes a one-time invitation link (or with `address`, a long-term address). */
  async invite(profileName: string | undefined, opts: Readonly<{ address?: boolean; incognito?: boolean }> = {}): Promise<string> {
    const p = this.profile(profileName);
    try {
      const { connId, link } = await this.agent.createInvitation(p.relay, opts.address === true ? 'address' : 'invitation');
      this.store.insertContact(connId, p.id, opts.incognito === true ? randomIncognitoName() : null, this.now());
      return link;
    } catch (e) {
      throw ChatError.from(e);
    }
  }

  /** Connects to a contact's link; the contact sees the profile's name, or a random one if incognito. */
  async connect(profileName: string | undefined, link: string, opts: Readonly<{ incognito?: boolean }> = {}): Promise<ContactView> {
    const p = this.profile(profileName);
    const incognito = opts.incognito === true ? randomIncognitoName() : null;
    try {
      const connId = await this.agent.join(link, p.relay, encodeContent({ type: 'profile', name: incognito ?? p.name }));
      this.store.insertContact(connId, p.id, incognito, this.now());
      return this.contactView(connId);
    } catch (e) {
      throw ChatError.from(e);
    }
  }

  private contactView(id: string): ContactView {
    const c = this.store.contact(id) as ContactRow;
    const conn = this.agent.connections().find((x) => x.id === id);
    const status = conn === undefined ? 'pending' : conn.status === 'connected' ? 'connected' : conn.status === 'invited' ? 'invited' : conn.status === 'address' ? 'address' : 'pending';
    const sn = c.verified_key === null ? null : this.agent.safetyNumber(id);
    return {
      id,
      name: this.displayName(id),
      status,
      incognito: c.incognito_name,
      verified: sn !== null && c.verified_key !== null && Buffer.from(c.verified_key).equals(Buffer.from(sn.scannable)),
      receipts: conn?.receipts ?? true,
    };
  }

  /** A profile's contacts (including pending invitations). */
  contacts(profileName?: string): ContactView[] {
    const p = this.profile(profileName);
    const live = new Set(this.agent.connections().map((c) => c.id));
    return this.store.contacts(p.id).filter((c) => live.has(c.id)).map((c) => this.contactView(c.id));
  }

  /** Finds a contact by display name or id (or id prefix); ambiguous or unknown names are errors. */
  resolve(profileName: string | undefined, nameOrId: string): ContactView {
    const all = this.contacts(profileName);
    const exact = all.filter((c) => c.id === nameOrId);
    if (exact.length === 1) return exact[0]!;
    const byName = all.filter((c) => c.name === nameOrId);
    if (byName.length === 1) return byName[0]!;
    if (byName.length > 1) throw new ChatError('AMBIGUOUS_CONTACT', `several contacts are named '${nameOrId}': use the contact's id`);
    const byPrefix = nameOrId.length >= 4 ? all.filter((c) => c.id.startsWith(nameOrId)) : [];
    if (byPrefix.length === 1) return byPrefix[0]!;
    throw new ChatError('NO_CONTACT', `no contact '${nameOrId}'`);
  }

  /** Queues a text message; it is sent now if online, or on the next sync. */
  async send(profileName: string | undefined, contact: string, text: string): Promise<MessageView> {
    const c = this.resolve(profileName, contact);
    if (text.length === 0) throw new ChatError('INVALID', 'the message is empty');
    if (text.length > MAX_TEXT_LENGTH) throw new ChatError('TOO_LARGE', `a message may have at most ${MAX_TEXT_LENGTH} characters`);
    if (c.status !== 'connected' && c.status !== 'pending') throw new ChatError('NOT_CONNECTED', `'${c.name}' has not connected yet`);
    const sentAt = this.now();
    let id = 0;
    try {
      await this.agent.send(c.id, encodeContent({ type: 'text', text }), (seq) => {
        id = this.store.insertMessage({ contact_id: c.id, direction: 'out', kind: 'text', seq, text, sent_at: sentAt, received_at: null, status: 'queued' }) ?? 0;
      });
    } catch (e) {
      throw ChatError.from(e);
    }
    return this.view(this.store.messages(c.id, 1000).find((m) => m.id === id)!);
  }

  private view(m: MessageRow): MessageView {
    return {
      id: m.id,
      contact: this.displayName(m.contact_id),
      contactId: m.contact_id,
      direction: m.direction,
      kind: m.kind,
      text: m.text,
      sentAt: m.sent_at,
      receivedAt: m.received_at,
      status: m.status,
    };
  }

  /**
   * The last `limit` messages with a contact (the last to arrive), oldest first: each side's
   * messages in the order they were sent (their sequence numbers), the two sides interleaved by
   * the time they were sent. See `orderConversation`.
   */
  messages(profileName: string | undefined, contact: string, limit = 50): MessageView[] {
    const c = this.resolve(profileName, contact);
    return orderConversation(this.store.messages(c.id, limit)).map((m) => this.view(m));
  }

  /** The safety number with a contact; `mark` records it as verified. */
  verify(profileName: string | undefined, contact: string, mark = false): { digits: string; scannable: Uint8Array; verified: boolean } {
    const c = this.resolve(profileName, contact);
    const sn = this.agent.safetyNumber(c.id);
    if (sn === null) throw new ChatError('NOT_CONNECTED', `'${c.name}' has not connected yet`);
    if (mark) this.store.setVerified(c.id, sn.scannable);
    return { ...sn, verified: mark || this.contactView(c.id).verified };
  }

  /** Deletes a contact: its queue on the relay, keys, and messages. */
  async deleteContact(profileName: string | undefined, contact: string): Promise<void> {
    const c = this.resolve(profileName, contact);
    try {
      await this.agent.deleteConnection(c.id);
    } catch (e) {
      throw ChatError.from(e);
    }
    this.db.transaction(() => this.store.deleteContact(c.id));
  }

  /**
   * Moves a contact's messages to us onto a new queue on `relay` (default: the relay we receive
   * on now), so that no queue lives forever and a contact can leave a relay that misbehaves. The
   * contact learns of it inside the conversation; the old queue is deleted once it is empty.
   */
  async switchQueue(profileName: string | undefined, contact: string, relay?: string): Promise<{ contact: ContactView; relay: string }> {
    const c = this.resolve(profileName, contact);
    if (c.status !== 'connected') throw new ChatError('NOT_CONNECTED', `'${c.name}' has not connected yet`);
    if (relay !== undefined) {
      try {
        parseRelayAddress(relay);
      } catch (e) {
        throw new ChatError('INVALID', e instanceof Error ? e.message : 'bad relay address', { cause: e });
      }
    }
    try {
      const r = await this.agent.switchQueue(c.id, relay);
      return { contact: c, relay: r.relay };
    } catch (e) {
      throw ChatError.from(e);
    }
  }

  /** Turns delivery receipts to a contact on or off. */
  setReceipts(profileName: string | undefined, contact: string, on: boolean): void {
    this.agent.setReceipts(this.resolve(profileName, contact).id, on);
  }

  // Online.

  /** Goes online. */
  start(): void {
    if (this.online) return;
    this.online = true;
    this.agent.start();
  }

  /** Whether nothing waits to be sent and no handshake waits on us. */
  idle(): boolean {
    return this.agent.idle();
  }

  /** Goes offline and closes the database. */
  async close(): Promise<void> {
    await this.agent.stop();
    this.online = false;
    this.db.close();
  }

  private onIncoming(ev: IncomingEvent): void {
    const connId = ev.connId;
    switch (ev.type) {
      case 'confirmation':
      case 'reply': {
        if (ev.type === 'confirmation' && ev.addressId !== null) {
          // A new contact through a long-term address: it belongs to the address's profile.
          const address = this.store.contact(ev.addressId);
          if (address !== undefined) this.store.insertContact(connId, address.profile_id, address.incognito_name, this.now());
        }
        try {
          const c = decodeContent(ev.payload);
          if (c.type === 'profile' && c.name.length > 0) this.store.setTheirName(connId, c.name);
        } catch {
          // A contact without a readable profile keeps a generic name.
        }
        return;
      }
      case 'message': {
        let text: string;
        let kind: MessageRow['kind'] = 'text';
        try {
          const c = decodeContent(ev.payload);
          if (c.type === 'text') text = c.text;
          else {
            if (c.type === 'profile') this.store.setTheirName(connId, c.name);
            return;
          }
        } catch {
          text = 'an unreadable message was received';
          kind = 'notice';
        }
        const row = { contact_id: connId, direction: 'in' as const, kind, seq: ev.seq, text, sent_at: ev.sentAt, received_at: ev.receivedAt, status: 'received' as const };
        if (this.store.insertMessage(row) !== null) return;
        // The number was used before: a duplicate is not shown twice, but a different message
        // with a used number (the contact restored an old backup) is kept, with a notice.
        const old = this.store.message(connId, 'in', ev.seq);
        if (old === undefined || (old.text === text && old.sent_at === ev.sentAt)) return;
        this.notice(connId, 'notice', `message number ${ev.seq} was used twice (the contact may have restored an old backup); both are kept`);
        const again = this.store.insertMessage({ ...row, seq: null });
        if (again !== null) this.repeated.set(`${connId}/${ev.seq}`, again);
        return;
      }
      case 'receipt':
        for (const seq of ev.seqs) this.store.setStatus(connId, seq, 'delivered');
        return;
      case 'gap': {
        const n = ev.to - ev.from + 1;
        this.store.insertMessage({ contact_id: connId, direction: 'in', kind: 'gap', seq: null, text: `${n} message${n === 1 ? '' : 's'} missing`, sent_at: this.now(), received_at: this.now(), status: 'received' });
        return;
      }
      case 'bad-hash':
        this.notice(connId, 'notice', 'a message broke the conversation chain (replayed or altered)');
        return;
      case 'resync':
        this.notice(connId, 'notice', RESYNC_NOTICES[ev.restored]);
        return;
      case 'identity-changed':
        // A verification was of the old key: the contact is unverified until checked again.
        this.store.setVerified(connId, null);
        this.notice(connId, 'identity', "SAFETY NUMBER CHANGED: this contact's identity key changed. Compare the new safety number with them (murmure verify) before you trust this conversation");
        return;
    }
  }

  private notice(connId: string, kind: 'notice' | 'identity', text: string): void {
    this.store.insertMessage({ contact_id: connId, direction: 'in', kind, seq: null, text, sent_at: this.now(), received_at: this.now(), status: 'received' });
  }

  private afterCommit(ev: IncomingEvent): void {
    const contact = this.displayName(ev.connId);
    switch (ev.type) {
      case 'message': {
        const key = `${ev.connId}/${ev.seq}`;
        const again = this.repeated.get(key);
        this.repeated.delete(key);
        const m = again === undefined ? this.store.message(ev.connId, 'in', ev.seq) : this.store.messages(ev.connId, 100).find((x) => x.id === again);
        if (m !== undefined) this.emitEvent({ type: 'message', ...this.view(m) });
        return;
      }
      case 'receipt': {
        const ids = ev.seqs.map((s) => this.store.message(ev.connId, 'out', s)?.id).filter((x): x is number => x !== undefined);
        this.emitEvent({ type: 'delivered', contact, contactId: ev.connId, ids });
        return;
      }
      case 'gap':
        this.emitEvent({ type: 'missing', contact, contactId: ev.connId, from: ev.from, to: ev.to });
        return;
      case 'identity-changed':
        this.emitEvent({ type: 'identity-changed', contact, contactId: ev.connId });
        return;
      case 'resync':
        this.emitEvent({ type: 'resync', contact, contactId: ev.connId, restored: ev.restored });
        return;
      default:
        return;
    }
  }
}
