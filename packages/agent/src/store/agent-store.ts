// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The agent's tables in the local database: connections (with their queues and keys),
 * libsignal state per connection, and the outbox of encrypted, ready-to-send message bodies.
 * All reads and writes are synchronous (SQLite in-process), so the agent can put a decrypted
 * message, its ratchet state and its dedup key in one transaction.
 * @module
 */

import type { StateKind, StateSource, StateWrite } from '@murmure/crypto';
import type Database from '@signalapp/sqlcipher';

import type { LocalDatabase, Migration } from './database.js';

/** The agent's migrations. */
export const AGENT_MIGRATIONS: readonly Migration[] = [
  {
    layer: 'agent',
    version: 1,
    name: '0001-connections',
    sql: `
      CREATE TABLE agent_connections (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        state_owner TEXT NOT NULL,
        local_identity BLOB NOT NULL,
        remote_name TEXT,
        remote_identity BLOB,
        receipts INTEGER NOT NULL DEFAULT 1,
        created_at INTEGER NOT NULL,
        rcv_relay TEXT,
        rcv_id BLOB UNIQUE,
        rcv_snd_id BLOB,
        rcv_sig_key BLOB,
        rcv_auth_key BLOB,
        rcv_box_key BLOB,
        rcv_e2e_key BLOB,
        rcv_peer_e2e BLOB,
        pending_snd_auth BLOB,
        link_id BLOB,
        snd_relay TEXT,
        snd_id BLOB,
        snd_auth_key BLOB,
        snd_e2e_key BLOB,
        snd_peer_e2e BLOB,
        next_send_seq INTEGER NOT NULL DEFAULT 1,
        last_sent_hash BLOB NOT NULL,
        last_rcv_seq INTEGER NOT NULL DEFAULT 0,
        last_rcv_hash BLOB NOT NULL
      );
      CREATE TABLE agent_signal_state (
        owner TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (owner, kind, key)
      ) WITHOUT ROWID;
      CREATE TABLE agent_outbox (
        id INTEGER PRIMARY KEY,
        conn_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        body BLOB NOT NULL,
        frame_key BLOB,
        nonce BLOB NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
      );
      CREATE INDEX agent_outbox_pending ON agent_outbox (status, conn_id, id);
    `,
  },
  {
    // Queue rotation: the queue a switch is moving to (next_*, until the contact's first message
    // on it) and the queue it moved from (old_*, until it is empty and deleted on its relay).
    layer: 'agent',
    version: 2,
    name: '0002-queue-rotation',
    sql: `
      ALTER TABLE agent_connections ADD COLUMN next_rcv_relay TEXT;
      ALTER TABLE agent_connections ADD COLUMN next_rcv_id BLOB;
      ALTER TABLE agent_connections ADD COLUMN next_rcv_snd_id BLOB;
      ALTER TABLE agent_connections ADD COLUMN next_rcv_sig_key BLOB;
      ALTER TABLE agent_connections ADD COLUMN next_rcv_auth_key BLOB;
      ALTER TABLE agent_connections ADD COLUMN next_rcv_box_key BLOB;
      ALTER TABLE agent_connections ADD COLUMN next_rcv_e2e_key BLOB;
      ALTER TABLE agent_connections ADD COLUMN next_snd_key BLOB;
      ALTER TABLE agent_connections ADD COLUMN old_rcv_relay TEXT;
      ALTER TABLE agent_connections ADD COLUMN old_rcv_id BLOB;
      ALTER TABLE agent_connections ADD COLUMN old_rcv_snd_id BLOB;
      ALTER TABLE agent_connections ADD COLUMN old_rcv_sig_key BLOB;
      ALTER TABLE agent_connections ADD COLUMN old_rcv_auth_key BLOB;
      ALTER TABLE agent_connections ADD COLUMN old_rcv_box_key BLOB;
      ALTER TABLE agent_connections ADD COLUMN old_rcv_e2e_key BLOB;
      CREATE INDEX agent_connections_next_rcv ON agent_connections (next_rcv_id) WHERE next_rcv_id IS NOT NULL;
      CREATE INDEX agent_connections_old_rcv ON agent_connections (old_rcv_id) WHERE old_rcv_id IS NOT NULL;
    `,
  },
  {
    // The send time of the last session reset a contact made that was carried out: a reset no
    // newer is a replay (by the relay), also after a restart.
    layer: 'agent',
    version: 3,
    name: '0003-last-reset-seen',
    sql: `ALTER TABLE agent_connections ADD COLUMN last_reset_seen INTEGER NOT NULL DEFAULT 0;`,
  },
  {
    // Queue-creation passwords by relay name (the address without password): connection rows
    // name relays without it, and a queue made later on the same relay (for a contact who came
    // through an address, or a switch) takes the last password the person gave for it.
    layer: 'agent',
    version: 4,
    name: '0004-relay-passwords',
    sql: `CREATE TABLE agent_relay_passwords (relay TEXT PRIMARY KEY, password TEXT NOT NULL) WITHOUT ROWID;`,
  },
];

/** Connection kinds. */
export type ConnectionKind = 'invitation' | 'address' | 'contact';
/**
 * Connection states: `invited` (our one-time link waits), `address` (a long-term address),
 * `joining` (our confirmation is queued or sent, waiting for the reply), `accepting` (a
 * confirmation arrived; our queue is being secured), `connected`, `deleted`.
 */
export type ConnectionStatus = 'invited' | 'address' | 'joining' | 'accepting' | 'connected' | 'deleted';

/** A connection row. Keys are PKCS#8 private keys or raw public keys. */
export type ConnectionRow = {
  id: string;
  kind: ConnectionKind;
  status: ConnectionStatus;
  state_owner: string;
  local_identity: Uint8Array;
  remote_name: string | null;
  remote_identity: Uint8Array | null;
  receipts: number;
  created_at: number;
  rcv_relay: string | null;
  rcv_id: Uint8Array | null;
  rcv_snd_id: Uint8Array | null;
  rcv_sig_key: Uint8Array | null;
  rcv_auth_key: Uint8Array | null;
  rcv_box_key: Uint8Array | null;
  rcv_e2e_key: Uint8Array | null;
  rcv_peer_e2e: Uint8Array | null;
  pending_snd_auth: Uint8Array | null;
  link_id: Uint8Array | null;
  snd_relay: string | null;
  snd_id: Uint8Array | null;
  snd_auth_key: Uint8Array | null;
  snd_e2e_key: Uint8Array | null;
  snd_peer_e2e: Uint8Array | null;
  next_send_seq: number;
  last_sent_hash: Uint8Array;
  last_rcv_seq: number;
  last_rcv_hash: Uint8Array;
  /** The queue a switch moves to, until the contact's first message on it (0002). */
  next_rcv_relay: string | null;
  next_rcv_id: Uint8Array | null;
  next_rcv_snd_id: Uint8Array | null;
  next_rcv_sig_key: Uint8Array | null;
  next_rcv_auth_key: Uint8Array | null;
  next_rcv_box_key: Uint8Array | null;
  next_rcv_e2e_key: Uint8Array | null;
  /** The raw X25519 sender key of the next queue, as sent in SWITCH (to send it again). */
  next_snd_key: Uint8Array | null;
  /** The queue a switch moved from, until it is empty and deleted (0002). */
  old_rcv_relay: string | null;
  old_rcv_id: Uint8Array | null;
  old_rcv_snd_id: Uint8Array | null;
  old_rcv_sig_key: Uint8Array | null;
  old_rcv_auth_key: Uint8Array | null;
  old_rcv_box_key: Uint8Array | null;
  old_rcv_e2e_key: Uint8Array | null;
  /** Send time of the last contact reset carried out (0: none); older or equal ones are replays. */
  last_reset_seen: number;
};

/**
 * An outbox row. `kind` says how the body is authorised on SEND. `body` is the session payload
 * before the per-queue box; with its `nonce` (and `frame_key` on a first frame) the box is made
 * again, byte for byte the same, at every attempt, so the store keeps ~300 bytes, not 16 KiB.
 */
export type OutboxRow = {
  id: number;
  conn_id: string;
  seq: number;
  kind: 'confirmation' | 'reply' | 'message';
  body: Uint8Array;
  frame_key: Uint8Array | null;
  nonce: Uint8Array;
  status: 'queued' | 'sent' | 'failed';
  attempts: number;
  next_attempt_at: number;
  created_at: number;
};

/** The columns of the queue a switch moves to. */
export const NEXT_QUEUE_COLUMNS = ['next_rcv_relay', 'next_rcv_id', 'next_rcv_snd_id', 'next_rcv_sig_key', 'next_rcv_auth_key', 'next_rcv_box_key', 'next_rcv_e2e_key', 'next_snd_key'] as const;
/** The columns of the queue a switch moved from. */
export const OLD_QUEUE_COLUMNS = ['old_rcv_relay', 'old_rcv_id', 'old_rcv_snd_id', 'old_rcv_sig_key', 'old_rcv_auth_key', 'old_rcv_box_key', 'old_rcv_e2e_key'] as const;

const COLUMNS = [
  'id', 'kind', 'status', 'state_owner', 'local_identity', 'remote_name', 'remote_identity', 'receipts', 'created_at',
  'rcv_relay', 'rcv_id', 'rcv_snd_id', 'rcv_sig_key', 'rcv_auth_key', 'rcv_box_key', 'rcv_e2e_key', 'rcv_peer_e2e', 'pending_snd_auth', 'link_id',
  'snd_relay', 'snd_id', 'snd_auth_key', 'snd_e2e_key', 'snd_peer_e2e', 'next_send_seq', 'last_sent_hash', 'last_rcv_seq', 'last_rcv_hash',
  ...NEXT_QUEUE_COLUMNS, ...OLD_QUEUE_COLUMNS, 'last_reset_seen',
] as const;

type Params = never;

/** Most connection rows kept in memory. */
export const ROW_CACHE_SIZE = 4096;
/** Most libsignal state values kept in memory (a session record is ~6 KiB). */
export const STATE_CACHE_SIZE = 2048;

/** Sets `key` in a map kept to `max` entries (the oldest one goes first). */
function remember<V>(map: Map<string, V>, key: string, value: V, max: number): void {
  if (!map.has(key) && map.size >= max) map.delete(map.keys().next().value as string);
  map.set(key, value);
}

/**
 * Typed access to the agent's tables. Connection rows and libsignal state values that were read
 * or written are kept in memory (the database stays the record): each message would otherwise
 * read its connection row and ~6 KiB of session state again. What is kept is forgotten when a
 * transaction rolls back, and when another connection to the file has committed since.
 */
export class AgentStore {
  private readonly db: Database;
  private readonly st;
  /** Rows by connection id; each one is replaced, never changed, when its connection is updated. */
  private readonly rows = new Map<string, ConnectionRow>();
  /** libsignal state by owner, kind and key; null when there is none. */
  private readonly states = new Map<string, Uint8Array | null>();
  /** SQLite's data_version when the cache was last known to be current. */
  private dataVersion = -1;
  /** Whether data_version was read in this turn of the event loop (it is read once per turn). */
  private checked = false;
  /** Connection ids by receive queue id (latin1), checked against the row at each use. */
  private readonly byRcvId = new Map<string, string>();

  constructor(readonly local: LocalDatabase) {
    this.db = local.db;
    const db = this.db;
    this.st = {
      insertConn: db.prepare(`INSERT INTO agent_connections (${COLUMNS.join(', ')}) VALUES (${COLUMNS.map((c) => `$${c}`).join(', ')})`),
      conn: db.prepare('SELECT * FROM agent_connections WHERE id = ?'),
      connByLink: db.prepare('SELECT * FROM agent_connections WHERE link_id = ?'),
      conns: db.prepare("SELECT * FROM agent_connections WHERE status <> 'deleted' ORDER BY created_at"),
      stateGet: db.prepare('SELECT value FROM agent_signal_state WHERE owner = ? AND kind = ? AND key = ?', { pluck: true }),
      statePut: db.prepare('INSERT INTO agent_signal_state (owner, kind, key, value) VALUES (?, ?, ?, ?) ON CONFLICT (owner, kind, key) DO UPDATE SET value = excluded.value'),
      stateDel: db.prepare('DELETE FROM agent_signal_state WHERE owner = ? AND kind = ? AND key = ?'),
      stateDelOwner: db.prepare('DELETE FROM agent_signal_state WHERE owner = ?'),
      outboxInsert: db.prepare("INSERT INTO agent_outbox (conn_id, seq, kind, body, frame_key, nonce, status, created_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?)"),
      outboxDue: db.prepare("SELECT id, conn_id, seq, kind, status, attempts, next_attempt_at, created_at FROM agent_outbox WHERE status = 'queued' ORDER BY id LIMIT ?"),
      outboxBody: db.prepare('SELECT body, frame_key, nonce FROM agent_outbox WHERE id = ?'),
      outboxSent: db.prepare("UPDATE agent_outbox SET status = 'sent', body = x'' WHERE id = ?"),
      outboxRetry: db.prepare('UPDATE agent_outbox SET attempts = attempts + 1, next_attempt_at = ? WHERE id = ?'),
      outboxConfirmed: db.prepare("UPDATE agent_outbox SET status = 'sent', body = x'' WHERE conn_id = ? AND kind = 'confirmation' AND status = 'queued'"),
      stateUsers: db.prepare("SELECT count(*) FROM agent_connections WHERE state_owner = ? AND id <> ? AND status <> 'deleted'", { pluck: true }),
      outboxRetryNow: db.prepare("UPDATE agent_outbox SET next_attempt_at = 0 WHERE status = 'queued' AND next_attempt_at > 0"),
      outboxRetryNowConn: db.prepare("UPDATE agent_outbox SET next_attempt_at = 0 WHERE status = 'queued' AND next_attempt_at > 0 AND conn_id = ?"),
      outboxFail: db.prepare("UPDATE agent_outbox SET status = 'failed', body = x'' WHERE id = ?"),
      outboxDelConn: db.prepare('DELETE FROM agent_outbox WHERE conn_id = ?'),
      connIdByRcv: db.prepare('SELECT id FROM agent_connections WHERE rcv_id = $id OR next_rcv_id = $id OR old_rcv_id = $id', { pluck: true }),
      dataVersion: db.prepare('PRAGMA data_version', { pluck: true }),
      passwordGet: db.prepare('SELECT password FROM agent_relay_passwords WHERE relay = ?', { pluck: true }),
      passwordPut: db.prepare('INSERT INTO agent_relay_passwords (relay, password) VALUES (?, ?) ON CONFLICT (relay) DO UPDATE SET password = excluded.password'),
    };
    local.onRollback(() => this.forget());
  }

  /** Drops every cached row and state value. */
  private forget(): void {
    this.rows.clear();
    this.states.clear();
  }

  /** Forgets the cache if another connection to the database file committed since it was filled. */
  private current(): void {
    if (this.checked) return;
    this.checked = true;
    setImmediate(() => {
      this.checked = false;
    });
    const v = Number(this.st.dataVersion.get());
    if (v !== this.dataVersion) {
      this.dataVersion = v;
      this.forget();
    }
  }

  /** The queue-creation password kept for the relay of this name, if any. */
  relayPassword(relay: string): string | undefined {
    return (this.st.passwordGet.get([relay] as Params) as string | undefined) ?? undefined;
  }

  /** Keeps a queue-creation password for the relay of this name, in place of any other. */
  setRelayPassword(relay: string, password: string): void {
    this.st.passwordPut.run([relay, password] as Params);
  }

  /** Inserts a connection. */
  insertConnection(row: ConnectionRow): void {
    const params: Record<string, unknown> = {};
    for (const c of COLUMNS) params[c] = row[c];
    this.st.insertConn.run(params as Params);
    this.rows.delete(row.id);
  }

  /** Updates some columns of a connection. */
  updateConnection(id: string, changes: Partial<Omit<ConnectionRow, 'id'>>): void {
    const keys = Object.keys(changes).filter((k) => (COLUMNS as readonly string[]).includes(k));
    if (keys.length === 0) return;
    // Column names come only from COLUMNS; each set of them is prepared once.
    const sig = keys.join(',');
    let stmt = this.updates.get(sig);
    if (stmt === undefined) {
      stmt = this.db.prepare(`UPDATE agent_connections SET ${keys.map((k) => `${k} = $${k}`).join(', ')} WHERE id = $id`);
      this.updates.set(sig, stmt);
    }
    const params: Record<string, unknown> = { id };
    for (const k of keys) params[k] = (changes as Record<string, unknown>)[k];
    stmt.run(params as Params);
    const cached = this.rows.get(id);
    if (cached !== undefined) {
      const next: Record<string, unknown> = { ...cached };
      for (const k of keys) next[k] = params[k];
      this.rows.set(id, next as ConnectionRow);
    }
  }

  private readonly updates = new Map<string, ReturnType<Database['prepare']>>();

  /** A connection by local id. */
  connection(id: string): ConnectionRow | undefined {
    this.current();
    const cached = this.rows.get(id);
    if (cached !== undefined) return cached;
    const row = this.st.conn.get([id] as Params) as ConnectionRow | undefined;
    if (row !== undefined) remember(this.rows, id, row, ROW_CACHE_SIZE);
    return row;
  }

  /** The connection that receives on this queue (its current one, or the next or old one of a switch). */
  connectionByRcvId(rcvId: Uint8Array): ConnectionRow | undefined {
    const k = Buffer.from(rcvId.buffer, rcvId.byteOffset, rcvId.length).toString('latin1');
    const known = this.byRcvId.get(k);
    if (known !== undefined) {
      const c = this.connection(known);
      const same = (b: Uint8Array | null) => b !== null && Buffer.from(b.buffer, b.byteOffset, b.length).equals(rcvId);
      if (c !== undefined && (same(c.rcv_id) || same(c.next_rcv_id) || same(c.old_rcv_id))) return c;
      this.byRcvId.delete(k);
    }
    const id = this.st.connIdByRcv.get({ id: rcvId } as Params);
    if (typeof id !== 'string') return undefined;
    remember(this.byRcvId, k, id, ROW_CACHE_SIZE);
    return this.connection(id);
  }

  /** All connections not deleted. */
  connections(): ConnectionRow[] {
    return this.st.conns.all() as ConnectionRow[];
  }

  /** A libsignal state source for connections whose state lives under `owner`. */
  stateSource(owner: string): StateSource {
    return {
      load: (kind: StateKind, key: string) => {
        this.current();
        const k = `${owner}\u0000${kind}\u0000${key}`;
        const cached = this.states.get(k);
        if (cached !== undefined) return cached ?? undefined;
        const v = this.st.stateGet.get([owner, kind, key] as Params);
        const value = v instanceof Uint8Array ? v : null;
        remember(this.states, k, value, STATE_CACHE_SIZE);
        return value ?? undefined;
      },
    };
  }

  /** Applies buffered libsignal writes (call inside a transaction). */
  applyState(owner: string, writes: readonly StateWrite[]): void {
    for (const w of writes) {
      if (w.value === null) this.st.stateDel.run([owner, w.kind, w.key] as Params);
      else this.st.statePut.run([owner, w.kind, w.key, w.value] as Params);
      remember(this.states, `${owner}\u0000${w.kind}\u0000${w.key}`, w.value, STATE_CACHE_SIZE);
    }
  }

  /** Queues an encrypted session payload for sending. */
  enqueue(connId: string, seq: number, kind: OutboxRow['kind'], frame: Readonly<{ body: Uint8Array; frameKey: Uint8Array | null; nonce: Uint8Array }>, now: number): number {
    return Number(this.st.outboxInsert.run([connId, seq, kind, frame.body, frame.frameKey, frame.nonce, now] as Params).lastInsertRowid);
  }

  /** Up to `limit` queued entries in order, without their bodies. */
  queued(limit: number): Omit<OutboxRow, 'body' | 'frame_key' | 'nonce'>[] {
    return this.st.outboxDue.all([limit] as Params) as Omit<OutboxRow, 'body' | 'frame_key' | 'nonce'>[];
  }

  /** The stored frame of an outbox entry. */
  outboxFrame(id: number): Pick<OutboxRow, 'body' | 'frame_key' | 'nonce'> | undefined {
    return this.st.outboxBody.get([id] as Params) as Pick<OutboxRow, 'body' | 'frame_key' | 'nonce'> | undefined;
  }

  /** Marks a body as accepted by the relay (and forgets its bytes). */
  markSent(id: number): void {
    this.st.outboxSent.run([id] as Params);
  }

  /** Schedules another attempt. */
  retryLater(id: number, at: number): void {
    this.st.outboxRetry.run([at, id] as Params);
  }

  /** The contact answered: a confirmation still queued (its OK was lost) was delivered. */
  confirmationDelivered(connId: string): void {
    this.st.outboxConfirmed.run([connId] as Params);
  }

  /** Makes every waiting body (of one connection) due now: a relay came back, or the contact's queue moved. */
  retryNow(connId?: string): void {
    if (connId === undefined) this.st.outboxRetryNow.run();
    else this.st.outboxRetryNowConn.run([connId] as Params);
  }

  /** Gives up on a body. */
  markFailed(id: number): void {
    this.st.outboxFail.run([id] as Params);
  }

  /**
   * Deletes a connection's outbox, and its libsignal state unless other connections (contacts
   * made through the same address) still use it; the row is kept as deleted.
   */
  deleteConnection(id: string, stateOwner: string): void {
    this.st.outboxDelConn.run([id] as Params);
    if (Number(this.st.stateUsers.get([stateOwner, id] as Params)) === 0) {
      this.st.stateDelOwner.run([stateOwner] as Params);
      this.states.clear();
    }
    this.updateConnection(id, {
      status: 'deleted',
      rcv_sig_key: null,
      rcv_auth_key: null,
      rcv_box_key: null,
      rcv_e2e_key: null,
      snd_auth_key: null,
      snd_e2e_key: null,
      link_id: null,
      ...Object.fromEntries([...NEXT_QUEUE_COLUMNS, ...OLD_QUEUE_COLUMNS].map((c) => [c, null])),
      // One zero byte: the driver binds an empty blob as NULL, which the NOT NULL column refuses.
      local_identity: Uint8Array.of(0),
    });
  }
}
