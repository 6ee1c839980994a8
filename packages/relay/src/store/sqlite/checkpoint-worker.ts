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
 * in between, yet it records every copy as done. After a first pass that copied something, which
 * runs beside the commits, the thread syncs the database file itself: the short second pass,
 * during which the relay's commits wait, then has little left to sync, and a failed writeback of
 * the first pass's pages is seen at once. The descriptor it syncs through is the store's (see
 * `SqliteQueueStore.open`): closing a descriptor of its own would drop the process's locks on
 * the file.
 * @module
 */

import { fdatasyncSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';

import Database from '@signalapp/sqlcipher';

import type { CheckpointReply, CheckpointRequest, CheckpointWorkerData } from './checkpointer.js';

const port = parentPort;
if (port === null) throw new Error('the checkpoint worker runs in a worker thread');

const { path, dbFd } = workerData as CheckpointWorkerData;
let db: Database | null = null;
try {
  db = new Database(path);
  db.pragma('synchronous = NORMAL');
} catch (e) {
  db?.close();
  db = null;
  port.postMessage({ kind: 'failed', code: codeOf(e) } satisfies CheckpointReply);
}
/** The WAL frames copied and the frames the WAL held as of the last pass. */
let copied = 0;
let lastLog = 0;

port.on('message', (m: CheckpointRequest) => {
  if (m === 'close' || db === null) {
    db?.close();
    db = null;
    port.close();
    return;
  }
  const started = performance.now();
  try {
    const r = (db.pragma('wal_checkpoint(PASSIVE)') as { busy: number; log: number; checkpointed: number }[])[0];
    const log = r?.log ?? -1;
    const checkpointed = r?.checkpointed ?? -1;
    // A pass copied something if the count of copied frames moved, or if the WAL started again
    // since the last pass (the count then starts from 0 and may come back to the same number).
    const progress = checkpointed > 0 && (checkpointed !== copied || log < lastLog);
    copied = checkpointed;
    lastLog = log;
    if (m === 'first-pass' && progress) fdatasyncSync(dbFd);
    port.postMessage({ kind: 'done', busy: r?.busy === 1, log, checkpointed, progress, ms: performance.now() - started } satisfies CheckpointReply);
  } catch (e) {
    port.postMessage({ kind: 'error', code: codeOf(e) } satisfies CheckpointReply);
  }
});

/** SQLite's result code of a failure, without its message (which may hold a path). */
function codeOf(e: unknown): string {
  return typeof e === 'object' && e !== null && 'code' in e ? String((e as { code: unknown }).code) : 'unknown';
}
