// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Checkpoints of the relay store, off the event loop. SQLite's own automatic checkpoint runs
 * inside the COMMIT that takes the WAL past 1,000 pages: on the relay's one thread, it copies
 * those pages into the database file and syncs it, and every client waits meanwhile (about 5 ms
 * per 1,000 pages here, and as long as the disk takes to sync under load). The store turns it off
 * by registering its own WAL hook, which hands the work to this class: a worker thread with a
 * connection of its own (`checkpoint-worker.ts`) runs PASSIVE checkpoints, which neither block nor
 * wait for the relay's reads and commits.
 *
 * A checkpoint that runs beside the relay's commits copies what the WAL held when it began, but
 * the WAL can start again from its beginning only once a checkpoint has copied all of it (and
 * synced the database file) with no commit in between. So a checkpoint goes in two passes: the
 * first copies the bulk while commits go on, and the thread then syncs the database file; if
 * commits came meanwhile, a second, short pass copies what they added while the store holds its
 * next commit back (`holdsWrites`: the writes wait, the event loop does not). The commit after it
 * starts the WAL again.
 *
 * Another process that keeps a read transaction open on the store (a backup tool, a shell) stops
 * every checkpoint short of its snapshot, and the WAL grows until it lets go, as it would with
 * SQLite's own checkpoint. A pass that copied nothing is not tried again until the WAL has grown
 * by CHECKPOINT_PAGES more, nor a second pass that could not finish; from WAL_HOLD_PAGES on,
 * every commit that meets a running pass waits for it, so commits and passes take turns.
 *
 * A failed pass is tried again at the first commit CHECKPOINT_RETRY_MS or more later, unless it
 * may have lost pages (the thread tells, see `checkpoint-worker.ts`). SQLite records the pages a
 * first pass copied as done
 * without syncing them, and never copies them again: if their writeback failed, a later pass
 * that succeeded would let the WAL start again over commits the database file does not hold. So
 * then the store stops taking writes and keeps the WAL as it is (`onBroken`); the next start of
 * the relay rebuilds the WAL's index and copies the whole WAL again.
 *
 * If the thread cannot start or dies, the store goes back to SQLite's automatic checkpoints on
 * its own connection (`fallBack`), once a sync of the database file shows that nothing was lost.
 * @module
 */

import { Worker } from 'node:worker_threads';

/** WAL pages after which a checkpoint starts (SQLite's own default for its automatic checkpoint). */
export const CHECKPOINT_PAGES = 1000;
/** WAL pages from which a commit that meets a running checkpoint pass waits for it to end. */
export const WAL_HOLD_PAGES = 16 * CHECKPOINT_PAGES;
/** Wait after a failed checkpoint pass that lost nothing before the next is tried. */
export const CHECKPOINT_RETRY_MS = 1000;

/** What the worker is given: the store's path, and a descriptor of its database file to sync. */
export type CheckpointWorkerData = Readonly<{ path: string; dbFd: number }>;
/**
 * What the store asks of the worker: a checkpoint's first or second pass, to open its connection
 * again (`resume`), or to close.
 */
export type CheckpointRequest = 'first-pass' | 'second-pass' | 'reopen' | 'close';
/**
 * What the worker answers: a pass's result, its failure (`error`, nothing lost; `lost`, pages it
 * recorded as copied may not be on disk), or that it cannot open the store.
 */
export type CheckpointReply = { kind: 'done'; busy: boolean; log: number; checkpointed: number } | { kind: 'error' } | { kind: 'lost' } | { kind: 'failed' };

/**
 * What the checkpointer reports: a pass ended, one failed and is tried again, the thread failed
 * (and SQLite checkpoints again).
 */
export type CheckpointEvent = 'checkpoint' | 'checkpoint-failed' | 'checkpoint-thread-failed';

/** Starts checkpoints in a worker thread as the WAL grows; see the module comment. */
export class Checkpointer {
  private worker: Worker | null = null;
  /** Set once the thread has failed: SQLite checkpoints on the store's connection again. */
  private fellBack = false;
  /** Set once pages may have been lost (`halt`, or a pass that says so): no pass starts again. */
  private broken = false;
  /** Set once the thread has failed or been given up. */
  private threadGone = false;
  /** Set while the store does not trust the WAL (a sync of it failed): no pass starts. */
  private suspended = false;
  private closed = false;
  private running = false;
  /** Whether the running pass is a second pass, during which commits wait. */
  private holding = false;
  /** WAL pages as of the last commit (0 once a checkpoint has copied them all). */
  private walPages = 0;
  /** WAL pages from which a commit starts a first pass. */
  private firstPassFrom = CHECKPOINT_PAGES;
  /** WAL pages from which a first pass that could not copy everything is followed by a second. */
  private secondPassFrom = CHECKPOINT_PAGES;
  /** Not before this time (after a failed pass). */
  private notBefore = 0;
  /** Counts the WAL's new starts, to tell whether a pass copied anything. */
  private generation = 0;
  private last = { generation: 0, checkpointed: 0 };
  private idleWaiters: (() => void)[] = [];
  private exited: Promise<void> | null = null;

  constructor(
    private readonly data: CheckpointWorkerData,
    /**
     * Turns SQLite's automatic checkpoint back on for the store's connection; false if it did
     * not (the store found pages lost first, and broke down).
     */
    private readonly fallBack: () => boolean,
    /** Told once, when a pass may have lost pages. */
    private readonly onBroken: () => void,
    private readonly onEvent: (event: CheckpointEvent) => void,
  ) {}

  /** Whether the next commit should wait for the running pass (see the module comment). */
  get holdsWrites(): boolean {
    // From `close` on, the store commits what is pending without waiting.
    return !this.closed && this.running && (this.holding || this.walPages >= WAL_HOLD_PAGES);
  }

  /** Whether a checkpoint pass is running. */
  get busy(): boolean {
    return this.running;
  }

  /** Called from the store's WAL hook after each commit, with the pages the WAL now holds. */
  walGrew(pages: number): void {
    if (pages < this.walPages) {
      // The WAL started again from its beginning.
      this.generation++;
      this.firstPassFrom = CHECKPOINT_PAGES;
      this.secondPassFrom = CHECKPOINT_PAGES;
    }
    this.walPages = pages;
    if (pages >= this.firstPassFrom) this.start(false);
  }

  /** Starts no pass again in this process: pages of the database file may have been lost. */
  halt(): void {
    this.broken = true;
  }

  /**
   * A sync of the WAL failed and the store takes no write until its own checkpoint has emptied
   * the WAL: no pass starts meanwhile (a running one ends as it would).
   */
  suspend(): void {
    this.suspended = true;
  }

  /**
   * The store's checkpoint emptied the WAL after a failed sync: passes start again, and the
   * thread first opens its connection anew. Linux reports a failed writeback once to each
   * descriptor that was open on the file when it happened; the thread's old descriptor of the
   * WAL would report at its next sync the error the store has already dealt with, and a failed
   * sync in a pass counts as a loss (`checkpoint-worker.ts`), which would stop the store for good.
   * A descriptor opened now reports only errors to come.
   */
  resume(): void {
    if (!this.suspended) return;
    this.suspended = false;
    // Messages reach the thread in order: the reopen comes before any further pass.
    if (!this.closed) this.worker?.postMessage('reopen' satisfies CheckpointRequest);
  }

  /** Calls `f` once no checkpoint pass is running (at once if none is). */
  whenIdle(f: () => void): void {
    if (!this.running) queueMicrotask(f);
    else this.idleWaiters.push(f);
  }

  /** Starts no pass from now on, waits for a running one and stops the thread. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.running) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    const worker = this.worker;
    if (worker === null) return;
    // Referenced from here on: the process waits for the thread to close its connection.
    worker.ref();
    worker.postMessage('close' satisfies CheckpointRequest);
    await this.exited;
  }

  private start(holding: boolean): void {
    if (this.running || this.closed || this.fellBack || this.broken || this.suspended || Date.now() < this.notBefore) return;
    if (this.worker === null) this.spawn();
    if (this.worker === null) return;
    this.running = true;
    this.holding = holding;
    // A running pass keeps the process alive; an idle thread does not.
    this.worker.ref();
    this.worker.postMessage((holding ? 'second-pass' : 'first-pass') satisfies CheckpointRequest);
  }

  private spawn(): void {
    let worker: Worker;
    try {
      worker = new Worker(new URL('./checkpoint-worker.js', import.meta.url), { workerData: this.data });
    } catch {
      // Called from the store's WAL hook, inside a COMMIT: the fallback touches the connection,
      // so it waits for the commit to end.
      this.fellBack = true;
      setImmediate(() => this.fail());
      return;
    }
    worker.unref();
    this.worker = worker;
    this.exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    worker.on('message', (m: CheckpointReply) => this.reply(m));
    worker.on('error', () => this.fail());
    worker.once('exit', () => {
      if (!this.closed) this.fail();
    });
  }

  private reply(m: CheckpointReply): void {
    if (m.kind === 'failed') {
      this.fail();
      return;
    }
    if (m.kind === 'lost') {
      this.broken = true;
      this.onBroken();
      this.idle();
      return;
    }
    if (m.kind === 'error') {
      this.notBefore = Date.now() + CHECKPOINT_RETRY_MS;
      this.onEvent('checkpoint-failed');
      this.idle();
      return;
    }
    this.onEvent('checkpoint');
    const progress = this.generation !== this.last.generation || m.checkpointed !== this.last.checkpointed;
    this.last = { generation: this.generation, checkpointed: m.checkpointed };
    // Everything the WAL held is copied and no commit came since: the next commit starts the WAL
    // again from its beginning.
    if (!m.busy && m.checkpointed === m.log && this.walPages <= m.log) {
      this.walPages = 0;
      this.generation++;
      this.firstPassFrom = CHECKPOINT_PAGES;
      this.secondPassFrom = CHECKPOINT_PAGES;
      this.idle();
      return;
    }
    if (this.holding) {
      // Even with commits held back the copy is not complete: a reader keeps an old snapshot.
      this.firstPassFrom = this.walPages + CHECKPOINT_PAGES;
      this.secondPassFrom = this.walPages + CHECKPOINT_PAGES;
      this.idle();
      return;
    }
    if (!progress) {
      // A reader keeps an old snapshot and nothing could be copied.
      this.firstPassFrom = this.walPages + CHECKPOINT_PAGES;
      this.idle();
      return;
    }
    this.running = false;
    if (this.walPages >= this.secondPassFrom) this.start(true);
    if (!this.running) this.idle();
  }

  /** The thread cannot checkpoint: SQLite does it again on the store's connection. */
  private fail(): void {
    if (this.threadGone) return;
    this.threadGone = true;
    this.fellBack = true;
    const worker = this.worker;
    this.worker = null;
    this.exited = Promise.resolve();
    if (worker !== null) void worker.terminate().catch(() => undefined);
    // After a failed pass the WAL is kept as it is: SQLite must not checkpoint it either.
    if (!this.closed && !this.broken) {
      if (this.fallBack()) this.onEvent('checkpoint-thread-failed');
    }
    this.idle();
  }

  private idle(): void {
    this.running = false;
    this.holding = false;
    if (!this.closed) this.worker?.unref();
    for (const f of this.idleWaiters.splice(0)) f();
  }
}
