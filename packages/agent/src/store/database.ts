// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The local encrypted database: one SQLCipher file per home, keyed by a key derived from the
 * passphrase with scrypt. Each layer (agent, chat) brings its own numbered migrations, applied
 * in transactions and recorded per layer, so a crash leaves every layer at an old or a new
 * version and never in between.
 * @module
 */

import { randomBytes, scryptSync } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

import Database, { setLogger } from '@signalapp/sqlcipher';

import { AgentError } from '../errors.js';

// SQLCipher reports a wrong key on its own log as well as by error code; the code is enough.
setLogger(() => undefined);

/** One migration of one layer. Never edit a released one: add another. */
export type Migration = Readonly<{ layer: string; version: number; name: string; sql: string }>;

/** scrypt cost parameters for the database key (about 0.1 s and 32 MiB here). */
export const SCRYPT_PARAMS = { N: 1 << 15, r: 8, p: 1, maxmem: 64 * 1024 * 1024 } as const;
/** Length of the scrypt salt kept beside the database. */
export const SALT_LENGTH = 16;

/** Derives the 32-byte database key from a passphrase and salt. */
export function deriveDatabaseKey(passphrase: string, salt: Uint8Array): Uint8Array {
  return new Uint8Array(scryptSync(passphrase.normalize('NFKC'), salt, 32, SCRYPT_PARAMS));
}

/** Reads the salt file, making one if `create` is set and there is none. */
export function loadSalt(path: string, create: boolean): Uint8Array {
  if (existsSync(path)) {
    const s = readFileSync(path);
    if (s.length !== SALT_LENGTH) throw new AgentError('CORRUPT', 'the key salt file is damaged');
    return new Uint8Array(s);
  }
  if (!create) throw new AgentError('NOT_FOUND', 'no Murmure home here: run murmure init first');
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const s = randomBytes(SALT_LENGTH);
  writeFileSync(path, s, { mode: 0o600 });
  return new Uint8Array(s);
}

function keyPragma(key: Uint8Array): string {
  return `"x'${Buffer.from(key).toString('hex')}'"`;
}

/** An open, unlocked database. */
export class LocalDatabase {
  private constructor(readonly db: Database) {}

  /**
   * Opens (or creates) the database at `path` with `key` and applies `migrations`. A wrong key
   * fails with AgentError('WRONG_PASSPHRASE') and touches nothing.
   */
  static open(path: string, key: Uint8Array, migrations: readonly Migration[]): LocalDatabase {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const db = new Database(path);
    try {
      // A wrong key is reported by the error code below; SQLCipher's own log line is noise.
      db.pragma('cipher_log_level = NONE');
      db.pragma(`key = ${keyPragma(key)}`);
      try {
        db.prepare('SELECT count(*) FROM sqlite_master').get();
      } catch (e) {
        throw new AgentError('WRONG_PASSPHRASE', 'wrong passphrase (or not a Murmure database)', { cause: e });
      }
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      db.pragma('secure_delete = ON');
      db.pragma('temp_store = MEMORY');
      const check = db.pragma('cipher_integrity_check');
      if (Array.isArray(check) && check.length > 0) throw new AgentError('CORRUPT', 'the database failed its integrity check');
      const ldb = new LocalDatabase(db);
      ldb.migrate(migrations);
      return ldb;
    } catch (e) {
      db.close();
      if (e instanceof AgentError) throw e;
      throw new AgentError('CORRUPT', 'the database could not be opened', { cause: e });
    }
  }

  private migrate(migrations: readonly Migration[]): void {
    this.db.exec('CREATE TABLE IF NOT EXISTS schema_versions (layer TEXT PRIMARY KEY, version INTEGER NOT NULL)');
    const get = this.db.prepare('SELECT version FROM schema_versions WHERE layer = ?', { pluck: true });
    const set = this.db.prepare('INSERT INTO schema_versions (layer, version) VALUES (?, ?) ON CONFLICT (layer) DO UPDATE SET version = excluded.version');
    for (const m of migrations) {
      const current = Number(get.get([m.layer]) ?? 0);
      if (m.version <= current) continue;
      this.transaction(() => {
        this.db.exec(m.sql);
        set.run([m.layer, m.version]);
      });
    }
  }

  /** Runs `fn` in one transaction (BEGIN IMMEDIATE ... COMMIT), rolling back if it throws. */
  transaction<T>(fn: () => T): T {
    this.db.exec('BEGIN IMMEDIATE');
    try {
      const r = fn();
      this.db.exec('COMMIT');
      return r;
    } catch (e) {
      try {
        this.db.exec('ROLLBACK');
      } catch {
        // rolled back already
      }
      throw e;
    }
  }

  /** Re-keys the database to `key`. */
  rekey(key: Uint8Array): void {
    this.db.pragma(`rekey = ${keyPragma(key)}`);
  }

  /** Closes the database. */
  close(): void {
    this.db.close();
  }
}
