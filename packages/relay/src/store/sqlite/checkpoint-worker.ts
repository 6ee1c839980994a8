// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The thread that checkpoints the relay store (see `checkpointer.ts`). It opens its own
 * connection to the store's file and, for each request, runs a PASSIVE checkpoint: it copies the
 * WAL's committed pages into the database file while the relay's connection goes on reading and
 * writing, and never takes the write lock.
 *
 * Durability: with `synchronous = NORMAL` this connection syncs the WAL before copying from it and
 * the database file before it marks the WAL as fully copied, and the relay's connection starts
 * the WAL again from its beginning only once it is. With `synchronous = OFF` a checkpoint would
 * sync nothing, and a restarted WAL could overwrite pages the database file does not hold yet.
 *
 * SQLite syncs the database file only after a checkpoint that copied the whole WAL with no commit
 * in between, yet it records every copy as done and never copies those pages again. After a
 * first pass that copied something, which runs beside the relay's commits, the thread syncs the
 * database file itself: the short second pass, during which the commits wait, then has little
 * left to sync.
 *
 * It syncs through the store's own descriptor of the file (see `SqliteQueueStore.open`), which
 * only the checkpoints sync: Linux reports a failed writeback once to each open file, so that
 * descriptor tells whether any page written to the file since the store opened it was lost,
 * whoever else saw the error first. When a pass fails, the thread asks it: if it reports an error,
 * pages a pass recorded as copied may not be on disk (`lost`); if not, the failure lost nothing
 * (a full disk, say) and the pass can be tried again. A pass whose own sync failed counts as a
 * loss in any case: a disk's failed cache flush is reported only to the sync that met it.
 * @module
 */

import { fdatasyncSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';

import Database from '@signalapp/sqlcipher';

import type { CheckpointReply, CheckpointRequest, CheckpointWorkerData } from './checkpointer.js';
import { sqliteCode } from './sqlite-code.js';

const port = parentPort;
if (port === null) throw new Error('the checkpoint worker runs in a worker thread');

const { path, dbFd } = workerData as CheckpointWorkerData;

/** The thread's connection to the store, or null (and `failed` told) if it cannot be opened. */
function open(): Database | null {
  let d: Database | null = null;
  try {
    d = new Database(path);
    d.pragma('synchronous = NORMAL');
    return d;
  } catch {
    try {
      d?.close();
    } catch {
      // nothing more to give back
    }
    port!.postMessage({ kind: 'failed' } satisfies CheckpointReply);
    return null;
  }
}

let db = open();
port.on('message', (m: CheckpointRequest) => {
  if (m === 'close' || db === null) {
    db?.close();
    db = null;
    port.close();
    return;
  }
  if (m === 'reopen') {
    // A connection of its own, with descriptors opened from now on (see checkpointer.ts, `resume`).
    try {
      db.close();
    } catch {
      // the old connection is dropped either way
    }
    db = open();
    return;
  }
  let lost = false;
  try {
    const r = (db.pragma('wal_checkpoint(PASSIVE)') as { busy: number; log: number; checkpointed: number }[])[0];
    const log = r?.log ?? -1;
    const checkpointed = r?.checkpointed ?? -1;
    if (m === 'first-pass' && checkpointed > 0) {
      try {
        fdatasyncSync(dbFd);
      } catch (e) {
        lost = true;
        throw e;
      }
    }
    port.postMessage({ kind: 'done', busy: r?.busy === 1, log, checkpointed } satisfies CheckpointReply);
  } catch (e) {
    // A failed sync is taken as a loss whatever the store's descriptor says next: a disk's
    // failed cache flush is reported to the sync that met it, and may not be recorded on the file.
    if (sqliteCode(e).startsWith('SQLITE_IOERR_FSYNC')) lost = true;
    if (!lost) {
      try {
        fdatasyncSync(dbFd);
      } catch {
        lost = true;
      }
    }
    port.postMessage({ kind: lost ? 'lost' : 'error' } satisfies CheckpointReply);
  }
});
