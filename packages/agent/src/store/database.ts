// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The local encrypted database: one SQLCipher file per home, keyed by a key derived from the
 * passphrase with scrypt. Each layer (agent, chat) brings its own numbered migrations, applied
 * in transactions and recorded per layer, so a crash leaves every layer at an old or a new
 * version and never in between.
 *
 * Durability: SQLite runs in WAL mode with synchronous=NORMAL (the WAL is synced around
 * checkpoints, not at each commit), and the database syncs the WAL itself with `fdatasync` after
 * commits. `transaction()` returns once its commit is on disk, as with synchronous=FULL.
 * `deferredTransaction()` returns at commit and leaves the sync to `durable()`, which syncs once
 * for every commit made before it, on libuv's thread pool: what depends on such a commit waits
 * for `durable()` before it leaves the process. A process that crashes loses no commit either
 * way (a commit is in the operating system's cache); a power cut may lose deferred commits not
 * yet synced, whole (with nothing that depends on them).
 * @module
 */

import { randomBytes, scryptSync } from 'node:crypto';
import { closeSync, constants, existsSync, fdatasync, fdatasyncSync, fsyncSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
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

/** Makes a directory's entries (a new file in it) durable. */
function syncDirectory(dir: string): void {
  const fd = openSync(dir, constants.O_RDONLY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** An open, unlocked database. */
export class LocalDatabase {
  /** Commits made so far, and how many of them are known to be on disk. */
  private commits = 0;
  private synced = 0;
  /** The WAL sync in progress, if any. */
  private syncing: Promise<void> | null = null;

  /** `walFd`: a descriptor of the WAL file that only serves to sync it (null: SQLite syncs at each commit). */
  private constructor(
    readonly db: Database,
    private readonly walFd: number | null,
  ) {}

  /**
   * Opens (or creates) the database at `path` with `key` and applies `migrations`. A wrong key
   * fails with AgentError('WRONG_PASSPHRASE') and touches nothing.
   */
  static open(path: string, key: Uint8Array, migrations: readonly Migration[]): LocalDatabase {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const db = new Database(path);
    let walFd: number | null = null;
    try {
      // A wrong key is reported by the error code below; SQLCipher's own log line is noise.
      db.pragma('cipher_log_level = NONE');
      db.pragma(`key = ${keyPragma(key)}`);
      try {
        db.prepare('SELECT count(*) FROM sqlite_master').get();
      } catch (e) {
        throw new AgentError('WRONG_PASSPHRASE', 'wrong passphrase (or not a Murmure database)', { cause: e });
      }
      const wal = db.pragma('journal_mode = WAL', { simple: true }) === 'wal';
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      db.pragma('secure_delete = ON');
      db.pragma('temp_store = MEMORY');
      const check = db.pragma('cipher_integrity_check');
      if (Array.isArray(check) && check.length > 0) throw new AgentError('CORRUPT', 'the database failed its integrity check');
      if (wal) {
        // The WAL exists once the database has been read in WAL mode; a new WAL's directory
        // entry is made durable once here. From now on the syncs after commits are ours.
        walFd = openSync(`${path}-wal`, constants.O_RDONLY | constants.O_CREAT, 0o600);
        syncDirectory(dirname(path));
        db.pragma('synchronous = NORMAL');
      }
      const ldb = new LocalDatabase(db, walFd);
      ldb.migrate(migrations);
      return ldb;
    } catch (e) {
      if (walFd !== null) closeSync(walFd);
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

  private readonly rollbackHooks: (() => void)[] = [];

  /** Runs `fn` after every transaction that rolls back (to forget what was cached from inside it). */
  onRollback(fn: () => void): void {
    this.rollbackHooks.push(fn);
  }

  /**
   * Runs `fn` in one transaction (BEGIN IMMEDIATE ... COMMIT), rolling back if it throws, and
   * returns once the commit is on disk.
   */
  transaction<T>(fn: () => T): T {
    const r = this.deferredTransaction(fn);
    if (this.walFd !== null) {
      const upTo = this.commits;
      try {
        fdatasyncSync(this.walFd);
      } catch (e) {
        throw new AgentError('CORRUPT', 'the database could not be written to disk', { cause: e });
      }
      this.synced = Math.max(this.synced, upTo);
    }
    return r;
  }

  /**
   * Runs `fn` in one transaction like `transaction()`, but returns at commit, before the commit
   * is on disk: whatever depends on it must wait for `durable()` before it leaves the process.
   */
  deferredTransaction<T>(fn: () => T): T {
    this.db.exec('BEGIN IMMEDIATE');
    try {
      const r = fn();
      this.db.exec('COMMIT');
      this.commits++;
      return r;
    } catch (e) {
      try {
        this.db.exec('ROLLBACK');
      } catch {
        // rolled back already
      }
      for (const h of this.rollbackHooks) h();
      throw e;
    }
  }

  /**
   * Resolves once every commit made before the call is on disk. One sync of the WAL covers all
   * commits made before it starts, so callers that come while one runs share the next one.
   */
  async durable(): Promise<void> {
    const target = this.commits;
    while (this.synced < target && this.walFd !== null) {
      if (this.syncing === null) {
        const fd = this.walFd;
        const upTo = this.commits;
        this.syncing = new Promise<void>((resolve, reject) => {
          fdatasync(fd, (e) => {
            this.syncing = null;
            if (e === null) {
              this.synced = Math.max(this.synced, upTo);
              resolve();
            } else reject(new AgentError('CORRUPT', 'the database could not be written to disk', { cause: e }));
          });
        });
      }
      await this.syncing;
    }
  }

  /** Re-keys the database to `key`. */
  rekey(key: Uint8Array): void {
    if (this.walFd === null) {
      this.db.pragma(`rekey = ${keyPragma(key)}`);
      return;
    }
    // Every page is written again: SQLite syncs as it goes.
    this.db.pragma('synchronous = FULL');
    try {
      this.db.pragma(`rekey = ${keyPragma(key)}`);
    } finally {
      this.db.pragma('synchronous = NORMAL');
    }
  }

  /** Closes the database, with every commit on disk. */
  close(): void {
    try {
      if (this.walFd !== null && this.synced < this.commits) fdatasyncSync(this.walFd);
    } finally {
      // A sync still running on the thread pool keeps its descriptor: closing it now could let
      // the number be reused by another file before that sync runs. It is closed when it ends.
      const fd = this.walFd;
      if (fd !== null && this.syncing === null) closeSync(fd);
      else if (fd !== null) void this.syncing?.then(() => closeSync(fd), () => closeSync(fd));
      this.db.close();
    }
  }
}
