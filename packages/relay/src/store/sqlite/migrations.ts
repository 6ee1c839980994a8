// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Numbered migrations of the relay's SQLite store. Never edit a released migration: add one.
 * Each runs in its own transaction and sets `user_version`, so a crash leaves the database at
 * the old version or the new one.
 * @module
 */

/** One migration. */
export type Migration = Readonly<{ version: number; name: string; sql: string }>;

/** All migrations, in order. */
export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: '0001-initial',
    sql: `
      CREATE TABLE queues (
        rcv_id BLOB PRIMARY KEY,
        snd_id BLOB NOT NULL UNIQUE,
        rcv_sig_key BLOB NOT NULL,
        rcv_auth_key BLOB NOT NULL,
        snd_auth_key BLOB,
        box_key BLOB NOT NULL,
        suspended INTEGER NOT NULL DEFAULT 0,
        link_id BLOB UNIQUE,
        link_data BLOB,
        msg_count INTEGER NOT NULL DEFAULT 0,
        active_day INTEGER NOT NULL
      ) WITHOUT ROWID;
      CREATE INDEX queues_active_day ON queues (active_day);
      CREATE TABLE messages (
        seq INTEGER PRIMARY KEY,
        rcv_id BLOB NOT NULL,
        msg_id BLOB NOT NULL,
        received_at INTEGER NOT NULL,
        body BLOB NOT NULL
      );
      CREATE INDEX messages_queue ON messages (rcv_id, seq);
    `,
  },
  {
    // Expiry finds the messages it deletes through this index, a few at a time, instead of
    // reading the whole table (with 100,000 messages of 16 KB that read took 0.3 s).
    version: 2,
    name: '0002-messages-by-arrival',
    sql: `
      CREATE INDEX messages_received ON messages (received_at);
    `,
  },
];

/** The schema version the code expects. */
export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]?.version ?? 0;
