#!/usr/bin/env node
// SPDX-License-Identifier: AGPL-3.0-or-later
// `npm run bench:expiry`: what the relay's expiry costs on a full store, and how long it holds
// the event loop. Fills a store (the relay's own SqliteQueueStore, on disk) with messages spread
// over queues, then times an expiry run that finds nothing and one that deletes half of them,
// with a 5 ms timer measuring the longest pause of the event loop; then, on a second store, a run
// that deletes many empty unused queues (with a few holding messages among them). Prints
// figures; not a test.
//
// Env: BENCH_MESSAGES (default 100000), BENCH_BODY (bytes, default 16000), BENCH_QUEUES
// (default 2000), BENCH_UNUSED (unused queues, default 50000), BENCH_NO_RESULTS=1 to write no
// results.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { SqliteQueueStore } from '@murmure/relay';

import { appendResult, envNum, resultsFile, round } from './lib.mjs';

const N = envNum('BENCH_MESSAGES', 100_000);
const BODY = envNum('BENCH_BODY', 16_000);
const QUEUES = envNum('BENCH_QUEUES', 2_000);
const UNUSED = envNum('BENCH_UNUSED', 50_000);
const DAY_MS = 86_400_000;

/** Runs `f` while a 5 ms timer watches the event loop; returns its time and the longest pause. */
async function timed(f) {
  let maxLag = 0;
  let last = performance.now();
  const ticker = setInterval(() => {
    const t = performance.now();
    maxLag = Math.max(maxLag, t - last - 5);
    last = t;
  }, 5);
  const t0 = performance.now();
  const result = await f();
  const ms = performance.now() - t0;
  await new Promise((r) => setTimeout(r, 20));
  clearInterval(ticker);
  return { ms, maxPauseMs: Math.max(0, maxLag), result };
}

const dir = mkdtempSync(join(tmpdir(), 'murmure-expiry-bench-'));
try {
  const store = SqliteQueueStore.open({ path: join(dir, 'relay.sqlite') });
  const now = Date.now();
  const queues = Array.from({ length: QUEUES }, () => ({ rcvId: randomBytes(24), sndId: randomBytes(24), rcvSigKey: randomBytes(32), rcvAuthKey: randomBytes(32), boxKey: randomBytes(32) }));
  await Promise.all(queues.map((q) => store.createQueue(q, now)));
  const body = randomBytes(BODY);
  // Arrival times one ms apart, 22 days back: the older half is past a cutoff in the middle.
  const first = now - 22 * DAY_MS;
  const fill = await timed(async () => {
    for (let i = 0; i < N; i += 4096) {
      const batch = Array.from({ length: Math.min(4096, N - i) }, (_, k) =>
        store.addMessage(queues[(i + k) % QUEUES].rcvId, { msgId: randomBytes(24), receivedAt: first + i + k, sealed: body }, Number.MAX_SAFE_INTEGER, now),
      );
      await Promise.all(batch);
    }
  });
  const none = await timed(() => store.expire(first - 1, now - 90 * DAY_MS));
  const half = await timed(() => store.expire(first + Math.floor(N / 2), now - 90 * DAY_MS));
  await store.close();

  // Unused queues: UNUSED created 100 days ago, every 100th holding 10 messages of BODY bytes.
  const store2 = SqliteQueueStore.open({ path: join(dir, 'unused.sqlite') });
  const oldDay = now - 100 * DAY_MS;
  for (let i = 0; i < UNUSED; i += 4096) {
    const batch = [];
    for (let k = i; k < Math.min(UNUSED, i + 4096); k++) {
      const rcvId = randomBytes(24);
      batch.push(store2.createQueue({ rcvId, sndId: randomBytes(24), rcvSigKey: randomBytes(32), rcvAuthKey: randomBytes(32), boxKey: randomBytes(32) }, oldDay));
      if (k % 100 === 0) for (let m = 0; m < 10; m++) batch.push(store2.addMessage(rcvId, { msgId: randomBytes(24), receivedAt: now, sealed: body }, 100, oldDay));
    }
    await Promise.all(batch);
  }
  const unused = await timed(() => store2.expire(first - 1, now - 90 * DAY_MS));
  await store2.close();
  const line = {
    bench: 'expiry',
    date: new Date().toISOString(),
    git: (() => {
      try {
        return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
      } catch {
        return null;
      }
    })(),
    messages: N,
    bodyBytes: BODY,
    queues: QUEUES,
    fillMsgsPerS: round(N / (fill.ms / 1000), 0),
    expireNothingMs: round(none.ms, 1),
    expireNothingMaxPauseMs: round(none.maxPauseMs, 1),
    expiredHalf: half.result.messages,
    expireHalfMs: round(half.ms, 0),
    expireHalfMaxPauseMs: round(half.maxPauseMs, 1),
    unusedQueues: unused.result.queues,
    unusedMessages: unused.result.messages,
    expireUnusedMs: round(unused.ms, 0),
    expireUnusedMaxPauseMs: round(unused.maxPauseMs, 1),
  };
  console.log(`store of ${N.toLocaleString('en-US')} messages of ${BODY.toLocaleString('en-US')} bytes over ${QUEUES.toLocaleString('en-US')} queues (filled at ${line.fillMsgsPerS.toLocaleString('en-US')} msgs/s)`);
  console.log(`expiry finding nothing: ${line.expireNothingMs} ms, longest pause of the event loop ${line.expireNothingMaxPauseMs} ms`);
  console.log(`expiry deleting ${line.expiredHalf.toLocaleString('en-US')}: ${line.expireHalfMs} ms, longest pause of the event loop ${line.expireHalfMaxPauseMs} ms`);
  console.log(`expiry deleting ${line.unusedQueues.toLocaleString('en-US')} unused queues and their ${line.unusedMessages.toLocaleString('en-US')} messages: ${line.expireUnusedMs} ms, longest pause of the event loop ${line.expireUnusedMaxPauseMs} ms`);
  if (process.env.BENCH_NO_RESULTS !== '1') appendResult(resultsFile('expiry', line.date), line);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
