// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The default queue store: one SQLite file in WAL mode. Writes are group-committed: every write
 * asked for in one event-loop turn goes into one transaction, and each caller's promise resolves
 * only after that transaction is on disk (a deletion after ACK and an activity mark resolve at
 * commit, and are synced with the next sync, at most DEFERRED_SYNC_MS later; when no other
 * write comes to commit with them they wait up to LAZY_COMMIT_MS for their commit). SQLite runs with
 * synchronous=NORMAL (the WAL is synced around checkpoints, not at each commit) and the store
 * itself syncs the WAL with `fdatasync` after each commit, on libuv's thread pool: the event loop keeps serving while the disk
 * flushes, and the next batches commit meanwhile. One sync runs at a time and covers every batch
 * committed before it started. A failed commit (disk full, I/O error) rolls the
 * whole batch back, and a failed sync rejects it, each caller with `StoreError`; the store stays
 * usable.
 *
 * A failed sync makes the WAL untrustworthy: Linux may have dropped the pages it could not write
 * and marked them clean, so a later sync that succeeds says nothing of them, and a WAL with a hole
 * loses every commit after the hole at recovery. So after a failed sync the store refuses writes,
 * and rejects every commit not yet synced, until a checkpoint (TRUNCATE) has copied the WAL into
 * the database file and synced it; it tries that at once (twice, see `checkpoint`) and then again
 * after RECOVERY_RETRY_MS, doubling up to RECOVERY_RETRY_MAX_MS.
 *
 * Checkpoints run in a thread of their own (`checkpointer.ts`), not inside a COMMIT on the event
 * loop; the store holds a commit back only for the short second pass of a checkpoint.
 *
 * The store keeps every message of the queues it has lately read whole in memory, in step with
 * its own commits (`known-queues.ts`), and answers reads of them without a query: nothing else
 * may write the file while the store has it open.
 * @module
 */

import { closeSync, constants, fdatasync, fdatasyncSync, fsyncSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';

import Database from '@signalapp/sqlcipher';

import { idKey, sameBytes } from '../../bytes.js';
import { StoreError, dayOf, type ExpiryResult, type QueueRecord, type QueueStore, type StoredMessage } from '../queue-store.js';
import { CHECKPOINT_PAGES, Checkpointer, type CheckpointEvent } from './checkpointer.js';
import { KNOWN_MESSAGES_PER_QUEUE, KnownQueues, keepable } from './known-queues.js';
import { MIGRATIONS, SCHEMA_VERSION } from './migrations.js';
import { sqliteCode } from './sqlite-code.js';

type Row = Record<string, unknown>;
/**
 * A write waiting for the next group commit. A durable one is answered once the WAL is synced;
 * one that is not (a deletion after ACK, a queue's activity mark) at commit: losing it in a
 * power cut only brings back a message its recipient recognises as a repeat, or an older mark.
 */
type PendingWrite = {
  run: () => unknown;
  durable: boolean;
  /** Told the result at commit, before the sync (a durable write's promise settles after it). */
  committed: ((v: unknown) => void) | undefined;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
};
type UnsyncedBatch = { batch: PendingWrite[]; results: unknown[] };

/** The columns of a queue record. */
const QUEUE_COLUMNS = 'rcv_id, snd_id, rcv_sig_key, rcv_auth_key, snd_auth_key, box_key, suspended, msg_count, active_day';

/**
 * Size to which the WAL file is cut back when it starts again from its beginning
 * (`journal_size_limit`): a burst that made it longer does not keep the disk space.
 */
export const WAL_SIZE_LIMIT_BYTES = 16 * 1024 * 1024;
/** Most writes one group commit takes; more wait for the next. */
export const MAX_WRITES_PER_COMMIT = 4096;
/**
 * Longest time a commit that nobody waits for (a deletion after ACK, an activity mark) stays
 * unsynced when no durable write comes to share a sync with it.
 */
export const DEFERRED_SYNC_MS = 200;
/**
 * Longest time writes that nobody waits for durably (deletions after ACK, activity marks) wait
 * for a commit when no other write comes to share one with them. A recipient draining a queue
 * sends one ACK per round trip, and a commit of its own for each cost more than the rest of the
 * ACK; held this long, one commit takes the deletions of several round trips, and their OKs go
 * out together.
 */
export const LAZY_COMMIT_MS = 2;
/** Writes that nobody waits for durably past which they commit without waiting LAZY_COMMIT_MS. */
export const LAZY_COMMIT_WRITES = 512;
/** Most expired messages one commit deletes; expiry goes on in further commits. */
export const EXPIRY_MESSAGES_PER_COMMIT = 256;
/** Most unused queues one commit deletes (with any messages they still hold). */
export const EXPIRY_QUEUES_PER_COMMIT = 256;
/** Wait before a deletion whose commit failed (a full disk) is tried again. */
export const DELETE_RETRY_MS = 1000;
/**
 * Wait before the second attempt to checkpoint the store after a failed sync (writes refused
 * meanwhile); it doubles after each failed attempt up to RECOVERY_RETRY_MAX_MS. An attempt
 * syncs on the event loop, so a disk that hangs rather than fails stalls the relay for as long.
 */
export const RECOVERY_RETRY_MS = 1000;
/** Longest wait between two attempts to checkpoint the store after a failed sync. */
export const RECOVERY_RETRY_MAX_MS = 30_000;

/**
 * What the store reports besides commits: a sync failed and writes are refused (`sync-failed`),
 * an attempt to checkpoint failed (`recovery-failed`), the checkpoint succeeded and writes are
 * taken again (`recovered`), a deletion is tried again (`delete-retry`), pages of the database
 * file may be lost and writes are refused until the relay starts again (`broken`), and those of
 * the checkpoint thread (`checkpoint`, `checkpoint-failed`, `checkpoint-thread-failed`; see
 * `checkpointer.ts`).
 */
export type StoreEvent = 'sync-failed' | 'recovery-failed' | 'recovered' | 'delete-retry' | 'broken' | CheckpointEvent;

function bytes(v: unknown): Uint8Array {
  if (v instanceof Uint8Array) return v;
  throw new StoreError('CORRUPT', 'expected a blob in the relay store');
}

function toQueue(r: Row): QueueRecord {
  return {
    rcvId: bytes(r['rcv_id']),
    sndId: bytes(r['snd_id']),
    rcvSigKey: bytes(r['rcv_sig_key']),
    rcvAuthKey: bytes(r['rcv_auth_key']),
    sndAuthKey: r['snd_auth_key'] === null ? null : bytes(r['snd_auth_key']),
    boxKey: bytes(r['box_key']),
    suspended: r['suspended'] === 1,
    msgCount: Number(r['msg_count']),
    activeDay: Number(r['active_day']),
  };
}

/** Maps a SQLite failure to a StoreError without leaking paths or data. */
function storeErrorOf(e: unknown): StoreError {
  if (e instanceof StoreError) return e;
  const code = sqliteCode(e);
  if (code.startsWith('SQLITE_FULL')) return new StoreError('FULL', 'the relay store is full', { cause: e });
  if (code.startsWith('SQLITE_IOERR')) return new StoreError('IO', 'the relay store could not write to disk', { cause: e });
  if (code.startsWith('SQLITE_CORRUPT') || code.startsWith('SQLITE_NOTADB')) return new StoreError('CORRUPT', 'the relay store is corrupt', { cause: e });
  return new StoreError('INTERNAL', 'the relay store failed', { cause: e });
}

/** Whether a SQLite failure is a constraint one write broke (not the disk, a lock or memory). */
function isConstraintError(e: unknown): boolean {
  return sqliteCode(e).startsWith('SQLITE_CONSTRAINT');
}

/** Options of the SQLite store. */
export type SqliteStoreOptions = Readonly<{
  path: string;
  onCommit?: (writes: number) => void;
  onEvent?: (event: StoreEvent) => void;
  /** LAZY_COMMIT_MS unless given (tests). */
  lazyCommitMs?: number;
}>;

/** Queue store on embedded SQLite. */
export class SqliteQueueStore implements QueueStore {
  private readonly db: Database;
  private pending: PendingWrite[] = [];
  private flushScheduled = false;
  /** The timer that commits writes nobody waits for durably (LAZY_COMMIT_MS), if only such writes wait. */
  private lazyCommit: NodeJS.Timeout | null = null;
  private closed = false;
  /** Committed batches whose sync has not started (one sync runs at a time and covers them all). */
  private unsynced: UnsyncedBatch[] = [];
  /** Whether a sync of the WAL is running, and who waits for the last one to end. */
  private syncInFlight = false;
  private syncWaiters: (() => void)[] = [];
  /** Whether a commit that nobody waits for (see PendingWrite) is not synced yet, and the timer that syncs it. */
  private unsyncedCommit = false;
  private deferredSync: NodeJS.Timeout | null = null;
  /** Set by a failed sync until a checkpoint succeeds: writes are refused meanwhile. */
  private untrusted = false;
  private recovery: NodeJS.Timeout | null = null;
  private recoveryWaitMs = RECOVERY_RETRY_MS;
  /**
   * Set once pages of the database file may be lost (a failed sync of it): writes are refused,
   * and the WAL is kept as it is until the relay starts again (see checkpointer.ts).
   */
  private broken = false;
  private readonly st;
  private readonly onCommit: (writes: number) => void;
  private readonly onEvent: (event: StoreEvent) => void;
  private readonly checkpointer: Checkpointer;

  private constructor(
    db: Database,
    path: string,
    private readonly walFd: number,
    private readonly dbFd: number,
    onCommit: (writes: number) => void,
    onEvent: (event: StoreEvent) => void,
    private readonly lazyCommitMs: number,
  ) {
    this.db = db;
    // The owner's callbacks run inside libuv and timer callbacks and after a COMMIT: one that
    // throws must neither crash the process nor fail a batch that is committed.
    this.onCommit = guarded(onCommit);
    this.onEvent = guarded(onEvent);
    // Checkpoints run in a thread of their own (see checkpointer.ts). The hook replaces SQLite's
    // automatic checkpoint, which would run inside a COMMIT on the event loop; if the thread
    // fails, SQLite's is turned back on.
    this.checkpointer = new Checkpointer(
      { path, dbFd },
      () => {
        if (this.closed || this.broken || !this.databaseFileSynced()) return false;
        try {
          db.pragma(`wal_autocheckpoint = ${CHECKPOINT_PAGES}`);
          return true;
        } catch {
          return false;
        }
      },
      () => this.breakDown(),
      this.onEvent,
    );
    const walGrew = guarded((pages: number) => this.checkpointer.walGrew(pages));
    db.setWalHook((_name, pages) => walGrew(pages));
    this.st = {
      byRcv: db.prepare(`SELECT ${QUEUE_COLUMNS} FROM queues WHERE rcv_id = ?`),
      bySnd: db.prepare(`SELECT ${QUEUE_COLUMNS} FROM queues WHERE snd_id = ?`),
      // A row shaped like a queue's, read when a lookup misses, so that a miss costs what a hit
      // costs and the time of ERR AUTH does not tell whether a queue exists (THREATS.md R8).
      missRow: db.prepare(
        'SELECT zeroblob(24) AS rcv_id, zeroblob(24) AS snd_id, zeroblob(32) AS rcv_sig_key, zeroblob(32) AS rcv_auth_key, ' +
          'zeroblob(32) AS snd_auth_key, zeroblob(32) AS box_key, 0 AS suspended, 0 AS msg_count, 0 AS active_day',
      ),
      insertQueue: db.prepare(
        'INSERT INTO queues (rcv_id, snd_id, rcv_sig_key, rcv_auth_key, box_key, active_day) VALUES (?, ?, ?, ?, ?, ?)',
      ),
      sndKey: db.prepare('SELECT snd_auth_key FROM queues WHERE rcv_id = ?'),
      setSndKey: db.prepare('UPDATE queues SET snd_auth_key = ?, link_id = NULL, link_data = NULL WHERE rcv_id = ?'),
      touch: db.prepare('UPDATE queues SET active_day = ? WHERE rcv_id = ? AND active_day <> ?'),
      suspend: db.prepare('UPDATE queues SET suspended = 1 WHERE rcv_id = ?'),
      deleteQueue: db.prepare('DELETE FROM queues WHERE rcv_id = ?'),
      deleteQueueMessages: db.prepare('DELETE FROM messages WHERE rcv_id = ?'),
      countState: db.prepare('SELECT msg_count, suspended FROM queues WHERE rcv_id = ?'),
      reserve: db.prepare(
        'UPDATE queues SET msg_count = msg_count + 1, active_day = ? WHERE rcv_id = ? AND msg_count < ? AND suspended = 0',
      ),
      release: db.prepare('UPDATE queues SET msg_count = msg_count - 1, active_day = ? WHERE rcv_id = ?'),
      insertMsg: db.prepare('INSERT INTO messages (rcv_id, msg_id, received_at, body) VALUES (?, ?, ?, ?)'),
      decCount: db.prepare('UPDATE queues SET msg_count = msg_count - ? WHERE rcv_id = ?'),
      // The oldest messages without their bodies (`length` reads no overflow page), then the
      // bodies of those to be returned.
      heads: db.prepare('SELECT seq, msg_id, length(body) AS size FROM messages WHERE rcv_id = ? ORDER BY seq LIMIT ?'),
      fromSeq: db.prepare('SELECT msg_id, received_at, body FROM messages WHERE rcv_id = ? AND seq >= ? ORDER BY seq LIMIT ?'),
      // Messages are acknowledged oldest first: the oldest message of the queue, if it has this
      // id, is found through messages_queue in O(log n); matching msg_id (the fallback) reads
      // every message of the queue.
      deleteOldestMsg: db.prepare('DELETE FROM messages WHERE seq = (SELECT seq FROM messages WHERE rcv_id = ? ORDER BY seq LIMIT 1) AND msg_id = ?'),
      deleteMsg: db.prepare('DELETE FROM messages WHERE rcv_id = ? AND msg_id = ?'),
      linkOwner: db.prepare('SELECT rcv_id FROM queues WHERE link_id = ?', { pluck: true }),
      setLink: db.prepare('UPDATE queues SET link_id = ?, link_data = ? WHERE rcv_id = ? AND snd_auth_key IS NULL'),
      clearLink: db.prepare('UPDATE queues SET link_id = NULL, link_data = NULL WHERE rcv_id = ?'),
      link: db.prepare('SELECT snd_id, link_data FROM queues WHERE link_id = ?'),
      expired: db.prepare('SELECT seq, rcv_id FROM messages WHERE received_at < ? ORDER BY received_at LIMIT ?'),
      anyExpired: db.prepare('SELECT 1 FROM messages WHERE received_at < ? LIMIT 1', { pluck: true }),
      anyUnused: db.prepare('SELECT 1 FROM queues WHERE active_day < ? LIMIT 1', { pluck: true }),
      queueSeqs: db.prepare('SELECT seq FROM messages WHERE rcv_id = ? ORDER BY seq LIMIT ?', { pluck: true }),
      deleteSeq: db.prepare('DELETE FROM messages WHERE seq = ?'),
      unused: db.prepare('SELECT rcv_id FROM queues WHERE active_day < ? LIMIT ?', { pluck: true }),
      countQueues: db.prepare('SELECT count(*) FROM queues', { pluck: true }),
      countMessages: db.prepare('SELECT count(*) FROM messages', { pluck: true }),
    };
  }

  /**
   * Opens (creating if needed) the store at `path`, checks its integrity and migrates it.
   * Throws StoreError('CORRUPT') for a damaged file, with nothing changed.
   */
  static open(opts: SqliteStoreOptions): SqliteQueueStore {
    mkdirSync(dirname(opts.path), { recursive: true });
    let db: Database | undefined;
    let walFd: number | undefined;
    let dbFd: number | undefined;
    try {
      db = new Database(opts.path);
      // The checkpoint thread syncs the database file through this descriptor, which tells
      // whether a writeback of the file was lost since it was opened (see checkpoint-worker.ts):
      // it is opened before anything can write to the file. It stays open as long as the
      // connection does: closing a descriptor of the file would drop every lock the process
      // holds on it, SQLite's among them.
      dbFd = openSync(opts.path, constants.O_RDONLY);
      // The durability argument (the store syncs the WAL after each commit) needs WAL mode; a
      // file system without shared memory for it leaves SQLite in its rollback journal.
      if (db.pragma('journal_mode = WAL', { simple: true }) !== 'wal') throw new StoreError('IO', 'the relay store cannot use WAL mode on this file system');
      // NORMAL: SQLite syncs the WAL before each checkpoint and the database after it; the
      // store syncs the WAL after every commit itself (see `flush`), so a durable write is as
      // durable as with FULL before its caller hears of it.
      db.pragma('synchronous = NORMAL');
      db.pragma('foreign_keys = ON');
      db.pragma('busy_timeout = 5000');
      db.pragma(`journal_size_limit = ${WAL_SIZE_LIMIT_BYTES}`);
      // Deleted messages and queues are overwritten with zeros, not left in free pages. The
      // SQLCipher build has this on already; set here so the store does not depend on the build.
      db.pragma('secure_delete = ON');
      const check = db.pragma('quick_check', { simple: true });
      if (check !== 'ok') throw new StoreError('CORRUPT', 'the relay store failed its integrity check');
      migrate(db);
      // The WAL exists once the database has been read in WAL mode; the descriptor only serves
      // to sync it, and a new WAL's directory entry is made durable once here.
      walFd = openSync(`${opts.path}-wal`, constants.O_RDONLY | constants.O_CREAT, 0o600);
      syncDirectory(dirname(opts.path));
      return new SqliteQueueStore(db, opts.path, walFd, dbFd, opts.onCommit ?? (() => undefined), opts.onEvent ?? (() => undefined), opts.lazyCommitMs ?? LAZY_COMMIT_MS);
    } catch (e) {
      try {
        if (walFd !== undefined) closeSync(walFd);
        db?.close();
        if (dbFd !== undefined) closeSync(dbFd);
      } catch {
        // already failing; the first error is the one to report
      }
      throw storeErrorOf(e);
    }
  }

  /**
   * Queues a write for the next group commit. `durable`: answered once the WAL is synced;
   * `commit`: at commit (see PendingWrite); `lazy`: at commit, and it waits up to LAZY_COMMIT_MS
   * for other writes to commit with.
   */
  private write<T>(run: () => T, mode: 'durable' | 'commit' | 'lazy' = 'durable', committed?: (v: T) => void): Promise<T> {
    const durable = mode === 'durable';
    if (this.closed) return Promise.reject(new StoreError('CLOSED', 'the relay store is closed'));
    if (this.broken) return Promise.reject(brokenError());
    if (this.untrusted) return Promise.reject(untrustedError());
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ run, durable, committed: committed as ((v: unknown) => void) | undefined, resolve: resolve as (v: unknown) => void, reject });
      if (mode !== 'lazy' || this.pending.length >= LAZY_COMMIT_WRITES) this.scheduleFlush();
      else if (!this.flushScheduled) {
        this.lazyCommit ??= setTimeout(() => {
          this.lazyCommit = null;
          this.scheduleFlush();
        }, this.lazyCommitMs);
      }
    });
  }

  /** Disarms the LAZY_COMMIT_MS timer: a commit is scheduled or under way. */
  private stopLazyCommit(): void {
    if (this.lazyCommit !== null) clearTimeout(this.lazyCommit);
    this.lazyCommit = null;
  }

  /** Commits what waits at the next turn of the event loop. */
  private scheduleFlush(): void {
    this.stopLazyCommit();
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => this.flush());
  }

  private flush(): void {
    if (this.checkpointer.holdsWrites) {
      // The WAL is long and a checkpoint is copying it: the next commit waits for it to end, so
      // that it can start the WAL again (the writes wait, the event loop does not).
      this.checkpointer.whenIdle(() => this.flush());
      return;
    }
    this.flushScheduled = false;
    this.stopLazyCommit();
    let batch = this.pending.splice(0, MAX_WRITES_PER_COMMIT);
    if (this.pending.length > 0) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
    if (batch.length === 0) return;
    if (this.broken) {
      const err = brokenError();
      for (const w of batch) w.reject(err);
      return;
    }
    if (this.untrusted) {
      // A sync failed after these writes were asked for: nothing more goes into the WAL.
      const err = untrustedError();
      for (const w of batch) w.reject(err);
      return;
    }
    let results: unknown[] = [];
    try {
      transaction(this.db, () => {
        for (const w of batch) results.push(w.run());
      });
      this.onCommit(batch.length);
    } catch (e) {
      // The writes of the batch updated what the store knows of their queues as they ran.
      this.known.clear();
      const err = storeErrorOf(e);
      if (!isConstraintError(e) || batch.length === 1) {
        for (const w of batch) w.reject(err);
        return;
      }
      // One write broke a constraint (a clashing id): the fault is its own, not the disk's or a
      // lock's, so the writes are done again one transaction each and it alone fails (every write
      // is SQL only, and repeatable).
      results = [];
      const alone: PendingWrite[] = [];
      for (const w of batch) {
        try {
          let r: unknown;
          transaction(this.db, () => {
            r = w.run();
          });
          this.onCommit(1);
          results.push(r);
          alone.push(w);
        } catch (e2) {
          w.reject(storeErrorOf(e2));
        }
      }
      // A write that failed alone may have updated an entry before its statement failed.
      this.known.clear();
      batch = alone;
    }
    // The batch is committed but may still sit in the page cache: the callers of its durable
    // writes hear of it only once the WAL is on disk. One sync runs at a time; batches committed
    // meanwhile wait for the next, which covers every write made to the file before it.
    const durable: PendingWrite[] = [];
    const durableResults: unknown[] = [];
    batch.forEach((w, i) => {
      try {
        w.committed?.(results[i]);
      } catch {
        // a caller's hook; the write itself is committed and settles below
      }
      if (!w.durable) w.resolve(results[i]);
      else {
        durable.push(w);
        durableResults.push(results[i]);
      }
    });
    if (durable.length === 0) {
      // Nobody waits for this commit's sync, but it should not stay in the page cache for long
      // on a relay that has nothing else to write: it gets one within DEFERRED_SYNC_MS.
      this.unsyncedCommit = true;
      this.deferredSync ??= setTimeout(() => {
        this.deferredSync = null;
        this.startSync();
      }, DEFERRED_SYNC_MS).unref();
      return;
    }
    this.unsynced.push({ batch: durable, results: durableResults });
    this.startSync();
  }

  private startSync(): void {
    if (this.syncInFlight || this.untrusted || (this.unsynced.length === 0 && !this.unsyncedCommit)) return;
    const batches = this.unsynced.splice(0);
    // This sync covers every commit made so far, those nobody waits for included.
    this.unsyncedCommit = false;
    this.syncInFlight = true;
    fdatasync(this.walFd, (e) => {
      this.syncInFlight = false;
      if (e === null) {
        for (const { batch, results } of batches) batch.forEach((w, i) => w.resolve(results[i]));
      } else {
        // Commits made while this sync ran sit behind the pages it could not write: they are
        // rejected too, and no write is taken until a checkpoint succeeds.
        const err = new StoreError('IO', 'the relay store could not write to disk', { cause: e });
        for (const { batch } of [...batches, ...this.unsynced.splice(0)]) for (const w of batch) w.reject(err);
        // Pages the sync could not write may be gone from the file: what the store keeps of its
        // queues is read from the file again.
        this.known.clear();
        if (!this.untrusted) {
          this.untrusted = true;
          this.checkpointer.suspend();
          this.recoveryWaitMs = RECOVERY_RETRY_MS;
          this.onEvent('sync-failed');
          setImmediate(() => this.recover());
        }
      }
      this.startSync();
      if (!this.syncInFlight) for (const w of this.syncWaiters.splice(0)) w();
    });
  }

  /**
   * Makes the store trustworthy again after a failed sync: a TRUNCATE checkpoint syncs the WAL,
   * copies it into the database file, syncs that and empties the WAL. Until it succeeds (tried
   * again after RECOVERY_RETRY_MS, doubling up to RECOVERY_RETRY_MAX_MS) writes are refused.
   * What the checkpoint copies is what the page cache holds, the pages the failed sync could not
   * write included.
   */
  private recover(): void {
    this.recovery = null;
    // After a failed checkpoint pass no checkpoint may run in this process (see checkpointer.ts).
    if (this.closed || !this.untrusted || this.broken) return;
    if (this.checkpointer.busy) {
      // Two checkpoints cannot run at once: this one waits for the thread's.
      this.checkpointer.whenIdle(() => this.recover());
      return;
    }
    if (!this.databaseFileSynced()) return;
    if (this.checkpoint()) {
      this.known.clear();
      this.untrusted = false;
      this.unsyncedCommit = false;
      this.checkpointer.resume();
      this.onEvent('recovered');
      return;
    }
    this.onEvent('recovery-failed');
    this.recovery = setTimeout(() => this.recover(), this.recoveryWaitMs).unref();
    this.recoveryWaitMs = Math.min(RECOVERY_RETRY_MAX_MS, this.recoveryWaitMs * 2);
  }

  /**
   * Whether everything written to the database file is on disk and nothing written to it since
   * the store opened it was lost (see checkpoint-worker.ts): a checkpoint on this connection
   * copies from where the thread's passes left off, so it may run only then. If not, the store
   * breaks down.
   */
  private databaseFileSynced(): boolean {
    try {
      fdatasyncSync(this.dbFd);
      return true;
    } catch {
      this.breakDown();
      return false;
    }
  }

  /** Pages of the database file may be lost: writes are refused and no checkpoint runs again. */
  private breakDown(): void {
    if (this.broken) return;
    this.broken = true;
    this.known.clear();
    this.checkpointer.halt();
    this.onEvent('broken');
  }

  /**
   * A TRUNCATE checkpoint; true if it completed. Linux reports a failed writeback once to each
   * open file, and SQLite's own descriptor of the WAL has not seen the error our sync saw: its
   * first sync may fail on that old error alone, so a failure is tried once more at once.
   */
  private checkpoint(): boolean {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const r = this.db.pragma('wal_checkpoint(TRUNCATE)') as { busy: number }[];
        if (r[0]?.busy === 0) return true;
      } catch {
        // the disk still fails, or the error was the old one
      }
    }
    return false;
  }

  private read<T>(f: () => T): Promise<T> {
    try {
      return Promise.resolve(this.readNow(f));
    } catch (e) {
      return Promise.reject(e as StoreError);
    }
  }

  /** Runs a read at once; throws `StoreError`. */
  private readNow<T>(f: () => T): T {
    if (this.closed) throw new StoreError('CLOSED', 'the relay store is closed');
    try {
      return f();
    } catch (e) {
      throw storeErrorOf(e);
    }
  }

  createQueue(q: Omit<QueueRecord, 'msgCount' | 'sndAuthKey' | 'suspended' | 'activeDay'>, now: number): Promise<void> {
    return this.write(() => {
      this.st.insertQueue.run([q.rcvId, q.sndId, q.rcvSigKey, q.rcvAuthKey, q.boxKey, dayOf(now)] as never);
    });
  }

  queueByRecipient(rcvId: Uint8Array): Promise<QueueRecord | undefined> {
    return this.read(() => this.queueByRecipientNow(rcvId));
  }

  queueBySender(sndId: Uint8Array): Promise<QueueRecord | undefined> {
    return this.read(() => this.queueBySenderNow(sndId));
  }

  queueByRecipientNow(rcvId: Uint8Array): QueueRecord | undefined {
    return this.readNow(() => {
      const r = this.st.byRcv.get([rcvId] as never);
      return r === undefined ? this.miss() : toQueue(r);
    });
  }

  queueBySenderNow(sndId: Uint8Array): QueueRecord | undefined {
    return this.readNow(() => {
      const r = this.st.bySnd.get([sndId] as never);
      return r === undefined ? this.miss() : toQueue(r);
    });
  }

  /** Does the work of a hit, then answers a miss. */
  private miss(): undefined {
    toQueue(this.st.missRow.get() as Row);
    return undefined;
  }

  secureQueue(rcvId: Uint8Array, sndAuthKey: Uint8Array, now: number): Promise<'ok' | 'conflict'> {
    return this.write(() => {
      const r = this.st.sndKey.get([rcvId] as never);
      if (r === undefined) return 'conflict' as const;
      const existing = r['snd_auth_key'];
      if (existing instanceof Uint8Array) return sameBytes(existing, sndAuthKey) ? ('ok' as const) : ('conflict' as const);
      this.st.setSndKey.run([sndAuthKey, rcvId] as never);
      this.st.touch.run([dayOf(now), rcvId, dayOf(now)] as never);
      return 'ok' as const;
    });
  }

  touchQueue(rcvId: Uint8Array, now: number): Promise<void> {
    return this.write(() => {
      this.st.touch.run([dayOf(now), rcvId, dayOf(now)] as never);
    }, 'lazy');
  }

  suspendQueue(rcvId: Uint8Array): Promise<void> {
    return this.write(() => {
      this.st.suspend.run([rcvId] as never);
    });
  }

  deleteQueue(rcvId: Uint8Array): Promise<void> {
    return this.write(() => {
      this.st.deleteQueueMessages.run([rcvId] as never);
      this.st.deleteQueue.run([rcvId] as never);
      this.known.forget(idKey(rcvId));
    });
  }

  addMessage(rcvId: Uint8Array, msg: StoredMessage, quota: number, now: number, committed?: (r: 'ok' | 'quota' | 'gone') => void): Promise<'ok' | 'quota' | 'gone'> {
    return this.write(() => {
      // One statement checks the queue is there, live and under quota, and counts the message.
      if (this.st.reserve.run([dayOf(now), rcvId, quota] as never).changes === 0) {
        const r = this.st.countState.get([rcvId] as never);
        return r === undefined || r['suspended'] === 1 ? ('gone' as const) : ('quota' as const);
      }
      this.st.insertMsg.run([rcvId, msg.msgId, msg.receivedAt, msg.sealed] as never);
      this.known.added(idKey(rcvId), msg);
      return 'ok' as const;
    }, 'durable', committed);
  }

  oldestMessage(rcvId: Uint8Array): Promise<StoredMessage | undefined> {
    return this.oldestMessages(rcvId, 1).then((ms) => ms[0]);
  }

  oldestMessages(rcvId: Uint8Array, limit: number, aheadBytes = Infinity): Promise<StoredMessage[]> {
    return this.read(() => {
      if (limit <= 0) return [];
      const key = idKey(rcvId);
      const deleting = this.deleting.get(key);
      const skip = deleting === undefined ? undefined : (msgId: Uint8Array): boolean => deleting.has(idKey(msgId));
      const known = this.known.messages(key);
      if (known !== undefined) return taken(known, limit, aheadBytes, skip);
      const pending = deleting?.size ?? 0;
      let want = limit + pending;
      let heads = this.headsOf(rcvId, want);
      // As many as asked for, from a queue few enough to keep (one that never empties while its
      // recipient reads a few at a time): read whole once, and kept from then on.
      if (heads.length === want && want <= KNOWN_MESSAGES_PER_QUEUE + pending && this.fewEnoughToKeep(rcvId)) {
        want = KNOWN_MESSAGES_PER_QUEUE + 1 + pending;
        heads = this.headsOf(rcvId, want);
      }
      // Fewer than asked for: these are all the queue holds, which the store keeps if it may.
      if (heads.length < want && keepable(heads.length, heads.reduce((n, h) => n + h.size, 0))) {
        const all = heads.length === 0 ? [] : this.bodiesFrom(rcvId, heads[0]!.seq, heads.length);
        this.known.learn(key, all);
        return taken(all, limit, aheadBytes, skip);
      }
      // Else only the bodies returned are read: with messages of 16 KB, a body read and not
      // returned cost more than the rest of the read.
      const picked = taken(heads, limit, aheadBytes, skip);
      if (picked.length === 0) return [];
      const first = picked[0]!;
      const last = picked[picked.length - 1]!;
      return taken(this.bodiesFrom(rcvId, first.seq, heads.indexOf(last) - heads.indexOf(first) + 1), limit, aheadBytes, skip);
    });
  }

  /** The sequence number, id and size of the queue's oldest `count` messages. */
  private headsOf(rcvId: Uint8Array, count: number): { seq: number; msgId: Uint8Array; size: number }[] {
    return this.st.heads.all([rcvId, count] as never).map((r) => ({ seq: Number(r['seq']), msgId: bytes(r['msg_id']), size: Number(r['size']) }));
  }

  /** Whether the queue holds few enough messages to be kept (its count, without reading them). */
  private fewEnoughToKeep(rcvId: Uint8Array): boolean {
    const r = this.st.countState.get([rcvId] as never);
    return r !== undefined && Number(r['msg_count']) <= KNOWN_MESSAGES_PER_QUEUE;
  }

  /** `count` messages of the queue from sequence number `seq` on, with their bodies. */
  private bodiesFrom(rcvId: Uint8Array, seq: number, count: number): StoredMessage[] {
    return this.st.fromSeq.all([rcvId, seq, count] as never).map((r) => ({ msgId: bytes(r['msg_id']), receivedAt: Number(r['received_at']), sealed: bytes(r['body']) }));
  }

  /** Messages whose deletion is queued but not committed, by queue: `oldestMessage` skips them. */
  private readonly deleting = new Map<string, Set<string>>();
  /** Every message of the queues read lately, kept in step with the store's commits. */
  private readonly known = new KnownQueues();

  deleteMessage(rcvId: Uint8Array, msgId: Uint8Array, now: number): Promise<boolean> {
    const q = idKey(rcvId);
    const m = idKey(msgId);
    let set = this.deleting.get(q);
    if (set === undefined) this.deleting.set(q, (set = new Set()));
    set.add(m);
    const done = (): void => {
      set.delete(m);
      if (set.size === 0 && this.deleting.get(q) === set) this.deleting.delete(q);
    };
    const attempt = (): Promise<boolean> =>
      this.write(() => {
        let deleted = this.st.deleteOldestMsg.run([rcvId, msgId] as never).changes;
        if (deleted === 0) deleted = this.st.deleteMsg.run([rcvId, msgId] as never).changes;
        // One message, as the store expects (ids are random): else it reads the queue again.
        if (deleted === 1) this.known.removed(q, msgId);
        else this.known.forget(q);
        if (deleted === 0) return false;
        this.st.release.run([dayOf(now), rcvId] as never);
        return true;
      }, 'lazy');
    // The recipient was told its ACK failed, but delivery has moved on: a retried ACK is answered
    // NO_MSG, which a client takes as done. So the deletion is retried until it commits, the
    // message hidden meanwhile, and it cannot come back behind the messages that followed it
    // (unless the relay stops first: then it is delivered again, as after a crash).
    const retry = (): void => {
      if (this.closed) return done();
      this.onEvent('delete-retry');
      setTimeout(() => attempt().then(done, retry), DELETE_RETRY_MS).unref();
    };
    const p = attempt();
    p.then(done, retry);
    return p;
  }

  setLink(rcvId: Uint8Array, linkId: Uint8Array, data: Uint8Array): Promise<'ok' | 'taken' | 'secured'> {
    return this.write(() => {
      const owner = this.st.linkOwner.get([linkId] as never);
      if (owner instanceof Uint8Array && !sameBytes(owner, rcvId)) return 'taken' as const;
      if (data.length === 0) this.st.clearLink.run([rcvId] as never);
      else if (this.st.setLink.run([linkId, data, rcvId] as never).changes === 0) return 'secured' as const;
      return 'ok' as const;
    });
  }

  linkData(linkId: Uint8Array): Promise<{ sndId: Uint8Array; data: Uint8Array } | undefined> {
    return this.read(() => {
      const r = this.st.link.get([linkId] as never);
      if (r === undefined || r['link_data'] === null) return undefined;
      return { sndId: bytes(r['snd_id']), data: bytes(r['link_data']) };
    });
  }

  /**
   * Deletes in rounds of at most EXPIRY_MESSAGES_PER_COMMIT messages or EXPIRY_QUEUES_PER_COMMIT
   * queues, each round a commit of its own: the event loop serves between rounds, however much
   * has expired (50,000 messages of 16 KB in one transaction held it for 6 s). Expired messages go
   * first, then unused queues, each with its messages (deleteUnusedQueues). A round does not wait
   * for its sync (an expiry lost in a power cut is done again by the next run). With nothing to
   * delete it reads two index entries and writes nothing. `onRound` hears what each round
   * deleted; a store closed meanwhile ends the run after the round under way.
   */
  async expire(messagesBefore: number, queuesUnusedSince: number, onRound?: (r: ExpiryResult) => void): Promise<ExpiryResult> {
    const total = { messages: 0, queues: 0 };
    const round = async (run: () => ExpiryResult): Promise<ExpiryResult> => {
      const r = await this.write(run, 'commit');
      total.messages += r.messages;
      total.queues += r.queues;
      onRound?.(r);
      return r;
    };
    const unusedDay = dayOf(queuesUnusedSince);
    while (!this.closed && (await this.read(() => this.st.anyExpired.get([messagesBefore] as never) !== undefined))) {
      const r = await round(() => ({ messages: this.deleteMessageRows(this.st.expired.all([messagesBefore, EXPIRY_MESSAGES_PER_COMMIT] as never)), queues: 0 }));
      if (r.messages < EXPIRY_MESSAGES_PER_COMMIT) break;
    }
    while (!this.closed && (await this.read(() => this.st.anyUnused.get([unusedDay] as never) !== undefined))) {
      const r = await round(() => this.deleteUnusedQueues(unusedDay));
      if (r.messages === 0 && r.queues === 0) break;
    }
    return total;
  }

  /**
   * One round of unused queues: up to EXPIRY_QUEUES_PER_COMMIT of them, through the activity
   * index, each with its messages through the queue's index, up to EXPIRY_MESSAGES_PER_COMMIT
   * messages in all. A queue is deleted once its messages are; one left with messages keeps a
   * true count and is taken up again by the next round. The work of a round does not depend on
   * how many queues are unused (the previous join walked every unused queue in each round).
   */
  private deleteUnusedQueues(unusedDay: number): ExpiryResult {
    let messages = 0;
    let queues = 0;
    for (const rcvId of this.st.unused.all([unusedDay, EXPIRY_QUEUES_PER_COMMIT] as never)) {
      const budget = EXPIRY_MESSAGES_PER_COMMIT - messages;
      if (budget === 0) break;
      const seqs = this.st.queueSeqs.all([rcvId, budget] as never);
      for (const seq of seqs) this.st.deleteSeq.run([seq] as never);
      this.known.forget(idKey(bytes(rcvId)));
      messages += seqs.length;
      if (seqs.length < budget) {
        this.st.deleteQueue.run([rcvId] as never);
        queues++;
      } else this.st.decCount.run([seqs.length, rcvId] as never);
    }
    return { messages, queues };
  }

  /** Deletes messages by `seq` and lowers their queues' counts; returns how many were deleted. */
  private deleteMessageRows(rows: Row[]): number {
    const counts = new Map<string, { rcvId: Uint8Array; n: number }>();
    for (const r of rows) {
      if (this.st.deleteSeq.run([r['seq']] as never).changes === 0) continue;
      const rcvId = bytes(r['rcv_id']);
      this.known.forget(idKey(rcvId));
      const c = counts.get(idKey(rcvId));
      if (c === undefined) counts.set(idKey(rcvId), { rcvId, n: 1 });
      else c.n++;
    }
    let n = 0;
    for (const c of counts.values()) {
      this.st.decCount.run([c.n, c.rcvId] as never);
      n += c.n;
    }
    return n;
  }

  stats(): Promise<{ queues: number; messages: number }> {
    return this.read(() => ({
      queues: Number(this.st.countQueues.get()),
      messages: Number(this.st.countMessages.get()),
    }));
  }

  /** The close under way or done: a second call waits for the first. */
  private closing: Promise<void> | null = null;

  close(): Promise<void> {
    this.closing ??= this.closeOnce();
    return this.closing;
  }

  private async closeOnce(): Promise<void> {
    // No checkpoint pass starts from here on, commits no longer wait for one, and one that is
    // running ends below.
    const checkpointerClosed = this.checkpointer.close();
    this.stopLazyCommit();
    while (this.pending.length > 0) this.flush();
    this.closed = true;
    // The checkpoint below syncs what the deferred sync would have.
    if (this.deferredSync !== null) clearTimeout(this.deferredSync);
    this.deferredSync = null;
    if (this.recovery !== null) clearTimeout(this.recovery);
    this.recovery = null;
    if (this.syncInFlight) await new Promise<void>((resolve) => this.syncWaiters.push(resolve));
    // The thread's checkpoint ends and its connection closes before the last checkpoint.
    await checkpointerClosed;
    if (this.broken || !this.databaseFileSynced()) throw brokenCloseError(this.walFd);
    // The database is closed even if the checkpoint or the WAL descriptor's close fails; the
    // failure is reported.
    let failure: unknown = null;
    // After good syncs the WAL is durable and is checkpointed on the next open; after a failed
    // one this checkpoint is the last chance to make it so.
    if (!this.checkpoint()) {
      // A checkpoint that did not complete may have recorded pages as copied without syncing
      // them; the close of the connection checkpoints again from there and deletes the WAL.
      if (!this.databaseFileSynced()) throw brokenCloseError(this.walFd);
      if (this.untrusted) failure = new Error('checkpoint failed');
    }
    try {
      closeSync(this.walFd);
    } catch (e) {
      failure ??= e;
    }
    this.db.close();
    try {
      closeSync(this.dbFd);
    } catch (e) {
      failure ??= e;
    }
    if (failure !== null) throw new StoreError('IO', 'the relay store could not be closed cleanly', { cause: failure });
  }
}

/**
 * The messages `oldestMessages` returns out of `ms` (oldest first): those not skipped, at most
 * `limit`, the first whatever its size and the others while their bytes together stay within
 * `aheadBytes`. Works on messages and on their heads (`size` for `sealed.length`).
 */
function taken<M extends { msgId: Uint8Array } & ({ sealed: Uint8Array } | { size: number })>(
  ms: readonly M[],
  limit: number,
  aheadBytes: number,
  skip: ((msgId: Uint8Array) => boolean) | undefined,
): M[] {
  const out: M[] = [];
  let ahead = 0;
  for (const m of ms) {
    if (skip?.(m.msgId) === true) continue;
    if (out.length > 0) {
      ahead += 'size' in m ? m.size : m.sealed.length;
      if (ahead > aheadBytes) break;
    }
    out.push(m);
    if (out.length === limit) break;
  }
  return out;
}

/** `f`, with anything it throws dropped. */
function guarded<A extends unknown[]>(f: (...args: A) => void): (...args: A) => void {
  return (...args) => {
    try {
      f(...args);
    } catch {
      // an owner's counter or log; the store goes on
    }
  };
}

/**
 * Pages of the database file may be lost: no checkpoint may run, not even SQLite's own when the
 * last connection closes, which would copy from where the passes left off and delete the WAL.
 * So the connection stays open until the process exits, and the next start rebuilds the WAL's
 * index and copies the whole WAL again. What was committed is synced first.
 */
function brokenCloseError(walFd: number): StoreError {
  try {
    fdatasyncSync(walFd);
  } catch {
    // the store is not closed cleanly either way
  }
  return new StoreError('IO', 'the relay store could not be closed cleanly', { cause: new Error('pages of the database file may be lost') });
}

function brokenError(): StoreError {
  return new StoreError('IO', 'the relay store refuses writes until the relay starts again: a sync of its database file failed');
}

function untrustedError(): StoreError {
  return new StoreError('IO', 'the relay store refuses writes until it recovers from a failed sync');
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

/** Runs `f` in one write transaction; rolls back and rethrows if it throws. */
function transaction(db: Database, f: () => void): void {
  db.exec('BEGIN IMMEDIATE');
  try {
    f();
    db.exec('COMMIT');
  } catch (e) {
    try {
      db.exec('ROLLBACK');
    } catch {
      // SQLite may have rolled back by itself (SQLITE_FULL during commit); the first error is the one to report
    }
    throw e;
  }
}

function migrate(db: Database): void {
  const version = (): number => Number(db.pragma('user_version', { simple: true }));
  const current = version();
  if (current > SCHEMA_VERSION) {
    throw new StoreError('CORRUPT', `the relay store is from a newer version (schema ${current}, this relay knows ${SCHEMA_VERSION})`);
  }
  for (const m of MIGRATIONS) {
    if (m.version <= current) continue;
    transaction(db, () => {
      // Read again under the write lock: another process opening the same folder at the same
      // time may have applied it meanwhile.
      if (version() < m.version) {
        db.exec(m.sql);
        db.pragma(`user_version = ${m.version}`);
      }
    });
  }
}
