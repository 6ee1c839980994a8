// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The lock that gives one relay the sole use of its data folder. The store keeps in memory what
 * it wrote (the queues it has read whole, the state of its checkpoints): a second relay, or a
 * second `init`, writing the same folder would go unseen and could lose or repeat messages.
 *
 * The lock is SQLite's own exclusive lock on a database file that holds nothing, `relay.lock`,
 * held by a connection in exclusive locking mode for as long as the relay runs. It is a POSIX record lock:
 * the kernel drops it when the process ends, however it ends (kill -9 included), so there is no
 * stale lock file to clean up. SQLite also refuses it to a second connection of the same process.
 *
 * Nothing else in the relay's process may open `relay.lock` (to read, copy or hash it): closing
 * any descriptor of a file drops every POSIX lock the process holds on it, this one included.
 * @module
 */

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

import Database from '@signalapp/sqlcipher';

import { sqliteCode } from './store/sqlite/sqlite-code.js';

/** Name of the lock file inside the data folder. */
export const LOCK_FILE = 'relay.lock';

/** Why a relay cannot start (or `init` cannot run) on a data folder. */
export type DataLockErrorCode = 'IN_USE' | 'LOCK_FAILED';

/** The data folder's lock could not be taken; nothing in the folder was changed. */
export class DataLockError extends Error {
  override readonly name = 'DataLockError';
  constructor(
    readonly code: DataLockErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** Whether `err` is a DataLockError (with `code`, if given). */
  static is(err: unknown, code?: DataLockErrorCode): err is DataLockError {
    return err instanceof DataLockError && (code === undefined || err.code === code);
  }
}

/**
 * Locks still held when the process exits. They are closed then: the kernel would drop the locks
 * anyway, and a connection left to the runtime's last clean-up (after a relay whose store could
 * not be closed, say) can abort the process from SQLite's native destructor.
 */
const held = new Set<DataLock>();
let exitHookInstalled = false;

function releaseAllAtExit(): void {
  for (const lock of [...held]) lock.release();
}

/** The held lock of one data folder. */
export class DataLock {
  private constructor(private db: Database | null) {
    held.add(this);
    if (!exitHookInstalled) {
      exitHookInstalled = true;
      process.once('exit', releaseAllAtExit);
    }
  }

  /**
   * Takes the lock of `dataDir` (making the folder, mode 0700, if there is none). Throws
   * DataLockError('IN_USE') at once, without waiting, when another relay holds it.
   */
  static take(dataDir: string): DataLock {
    let db: Database | undefined;
    try {
      mkdirSync(dataDir, { recursive: true, mode: 0o700 });
      db = new Database(join(dataDir, LOCK_FILE));
      db.pragma('busy_timeout = 0');
      // Exclusive locking mode keeps the lock that the first write transaction takes until the
      // connection closes. The file never holds a row, so it needs no journal.
      db.pragma('locking_mode = EXCLUSIVE');
      db.pragma('journal_mode = OFF');
      db.exec('BEGIN EXCLUSIVE');
      db.exec('COMMIT');
      return new DataLock(db);
    } catch (e) {
      try {
        db?.close();
      } catch {
        // already failing; the first error is the one to report
      }
      const code = sqliteCode(e);
      if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
        throw new DataLockError('IN_USE', `the data folder ${dataDir} is in use by another relay`, { cause: e });
      }
      if (code.startsWith('SQLITE_NOTADB')) {
        throw new DataLockError('LOCK_FAILED', `${LOCK_FILE} in the data folder is not a lock file: stop any relay on ${dataDir} and remove it`, { cause: e });
      }
      // The code of a file system error (EACCES...), else the binding's message, which names no
      // path ("unable to open database file": a folder without access, a symbolic link).
      const reason = code !== '' ? ` (${code})` : e instanceof Error ? `: ${e.message.replace(/^sqlite open error: /, '')}` : '';
      throw new DataLockError('LOCK_FAILED', `the data folder ${dataDir} could not be locked${reason}`, { cause: e });
    }
  }

  /** Lets the folder go. A second call does nothing. */
  release(): void {
    const db = this.db;
    this.db = null;
    held.delete(this);
    db?.close();
  }
}
