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
 * in between. After a first pass, which runs beside the commits, the thread syncs it itself, so
 * that the short second pass, during which the relay's commits wait, has little left to sync. The descriptor it syncs
 * through is its own: Linux reports a failed writeback to every open file, so SQLite's next sync
 * still sees a failure this one saw.
 * @module
 */

import { closeSync, constants, fdatasyncSync, openSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';

import Database from '@signalapp/sqlcipher';

import type { CheckpointReply, CheckpointRequest } from './checkpointer.js';

const port = parentPort;
if (port === null) throw new Error('the checkpoint worker runs in a worker thread');

const path = String((workerData as { path: unknown }).path);
let db: Database | null = null;
let dbFd = -1;
try {
  db = new Database(path);
  db.pragma('synchronous = NORMAL');
  dbFd = openSync(path, constants.O_RDONLY);
} catch (e) {
  db?.close();
  db = null;
  port.postMessage({ kind: 'failed', code: codeOf(e) } satisfies CheckpointReply);
}

port.on('message', (m: CheckpointRequest) => {
  if (m === 'close' || db === null) {
    db?.close();
    db = null;
    if (dbFd >= 0) closeSync(dbFd);
    dbFd = -1;
    port.close();
    return;
  }
  const started = performance.now();
  try {
    const r = (db.pragma('wal_checkpoint(PASSIVE)') as { busy: number; log: number; checkpointed: number }[])[0];
    const log = r?.log ?? -1;
    const checkpointed = r?.checkpointed ?? -1;
    if (m === 'first-pass' && checkpointed > 0) fdatasyncSync(dbFd);
    port.postMessage({ kind: 'done', busy: r?.busy === 1, log, checkpointed, ms: performance.now() - started } satisfies CheckpointReply);
  } catch (e) {
    port.postMessage({ kind: 'error', code: codeOf(e) } satisfies CheckpointReply);
  }
});

/** SQLite's result code of a failure, without its message (which may hold a path). */
function codeOf(e: unknown): string {
  return typeof e === 'object' && e !== null && 'code' in e ? String((e as { code: unknown }).code) : 'unknown';
}
