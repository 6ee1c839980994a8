// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The chat layer's tables, in the same encrypted database as the agent's, so a received
 * message is stored in the agent's receive transaction: profiles, contacts and messages.
 * @module
 */

import type { LocalDatabase, Migration } from '@murmure/agent';
import type Database from '@signalapp/sqlcipher';

/** The chat layer's migrations. */
export const CHAT_MIGRATIONS: readonly Migration[] = [
  {
    layer: 'chat',
    version: 1,
    name: '0001-profiles-contacts-messages',
    sql: `
      CREATE TABLE chat_profiles (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        relay TEXT NOT NULL,
        created_at INTEGER NOT NULL
      );
      CREATE TABLE chat_contacts (
        id TEXT PRIMARY KEY,
        profile_id TEXT NOT NULL REFERENCES chat_profiles (id),
        local_name TEXT,
        their_name TEXT,
        incognito_name TEXT,
        verified_key BLOB,
        created_at INTEGER NOT NULL
      );
      CREATE TABLE chat_messages (
        id INTEGER PRIMARY KEY,
        contact_id TEXT NOT NULL,
        direction TEXT NOT NULL,
        kind TEXT NOT NULL,
        seq INTEGER,
        text TEXT NOT NULL,
        sent_at INTEGER NOT NULL,
        received_at INTEGER,
        status TEXT NOT NULL,
        UNIQUE (contact_id, direction, seq)
      );
      CREATE INDEX chat_messages_contact ON chat_messages (contact_id, id);
    `,
  },
];

/** A profile row. */
export type ProfileRow = { id: string; name: string; relay: string; created_at: number };
/** A contact row. */
export type ContactRow = {
  id: string;
  profile_id: string;
  local_name: string | null;
  their_name: string | null;
  incognito_name: string | null;
  verified_key: Uint8Array | null;
  created_at: number;
};
/** Message states: `queued` → `sent` (relay accepted) → `delivered` (receipt); `received`; `failed`. */
export type MessageStatus = 'queued' | 'sent' | 'delivered' | 'received' | 'failed';
/**
 * A message row; `kind` is `text`, `gap` for a notice of missing messages, `notice` for other
 * notices, or `identity` for the notice that the contact's identity key (safety number) changed.
 */
export type MessageRow = {
  id: number;
  contact_id: string;
  direction: 'in' | 'out';
  kind: 'text' | 'gap' | 'notice' | 'identity';
  seq: number | null;
  text: string;
  sent_at: number;
  received_at: number | null;
  status: MessageStatus;
};

type P = never;

/** Typed access to the chat tables. */
export class ChatStore {
  private readonly st;

  constructor(readonly local: LocalDatabase) {
    const db: Database = local.db;
    this.st = {
      profiles: db.prepare('SELECT * FROM chat_profiles ORDER BY created_at'),
      profileByName: db.prepare('SELECT * FROM chat_profiles WHERE name = ?'),
      profile: db.prepare('SELECT * FROM chat_profiles WHERE id = ?'),
      insertProfile: db.prepare('INSERT INTO chat_profiles (id, name, relay, created_at) VALUES (?, ?, ?, ?)'),
      setProfileRelay: db.prepare('UPDATE chat_profiles SET relay = ? WHERE id = ?'),
      contacts: db.prepare('SELECT * FROM chat_contacts WHERE profile_id = ? ORDER BY created_at'),
      contact: db.prepare('SELECT * FROM chat_contacts WHERE id = ?'),
      insertContact: db.prepare('INSERT INTO chat_contacts (id, profile_id, incognito_name, created_at) VALUES (?, ?, ?, ?)'),
      setTheirName: db.prepare('UPDATE chat_contacts SET their_name = ? WHERE id = ?'),
      setVerified: db.prepare('UPDATE chat_contacts SET verified_key = ? WHERE id = ?'),
      deleteContact: db.prepare('DELETE FROM chat_contacts WHERE id = ?'),
      deleteMessages: db.prepare('DELETE FROM chat_messages WHERE contact_id = ?'),
      insertMessage: db.prepare(
        'INSERT OR IGNORE INTO chat_messages (contact_id, direction, kind, seq, text, sent_at, received_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      setStatus: db.prepare("UPDATE chat_messages SET status = ? WHERE contact_id = ? AND direction = 'out' AND seq = ? AND status <> 'delivered'"),
      messages: db.prepare('SELECT * FROM (SELECT * FROM chat_messages WHERE contact_id = ? ORDER BY id DESC LIMIT ?) ORDER BY id'),
      message: db.prepare('SELECT * FROM chat_messages WHERE contact_id = ? AND direction = ? AND seq = ?'),
    };
  }

  profiles(): ProfileRow[] {
    return this.st.profiles.all() as ProfileRow[];
  }
  profileByName(name: string): ProfileRow | undefined {
    return this.st.profileByName.get([name] as P) as ProfileRow | undefined;
  }
  profile(id: string): ProfileRow | undefined {
    return this.st.profile.get([id] as P) as ProfileRow | undefined;
  }
  insertProfile(p: ProfileRow): void {
    this.st.insertProfile.run([p.id, p.name, p.relay, p.created_at] as P);
  }
  setProfileRelay(id: string, relay: string): void {
    this.st.setProfileRelay.run([relay, id] as P);
  }
  contacts(profileId: string): ContactRow[] {
    return this.st.contacts.all([profileId] as P) as ContactRow[];
  }
  contact(id: string): ContactRow | undefined {
    return this.st.contact.get([id] as P) as ContactRow | undefined;
  }
  insertContact(id: string, profileId: string, incognitoName: string | null, now: number): void {
    this.st.insertContact.run([id, profileId, incognitoName, now] as P);
  }
  setTheirName(id: string, name: string): void {
    this.st.setTheirName.run([name, id] as P);
  }
  setVerified(id: string, key: Uint8Array | null): void {
    this.st.setVerified.run([key, id] as P);
  }
  deleteContact(id: string): void {
    this.st.deleteMessages.run([id] as P);
    this.st.deleteContact.run([id] as P);
  }
  /** Inserts a message; a second insert of the same (contact, direction, seq) is ignored. Returns the new row id or null. */
  insertMessage(m: Omit<MessageRow, 'id'>): number | null {
    const r = this.st.insertMessage.run([m.contact_id, m.direction, m.kind, m.seq, m.text, m.sent_at, m.received_at, m.status] as P);
    return r.changes === 0 ? null : Number(r.lastInsertRowid);
  }
  setStatus(contactId: string, seq: number, status: MessageStatus): void {
    this.st.setStatus.run([status, contactId, seq] as P);
  }
  messages(contactId: string, limit: number): MessageRow[] {
    return this.st.messages.all([contactId, limit] as P) as MessageRow[];
  }
  message(contactId: string, direction: 'in' | 'out', seq: number): MessageRow | undefined {
    return this.st.message.get([contactId, direction, seq] as P) as MessageRow | undefined;
  }
}
