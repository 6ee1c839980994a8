// SPDX-License-Identifier: AGPL-3.0-or-later
// Session holder of the comparison bench (W4, W7): a forked driver process that opens idle
// sessions with a server's adapter, holds them, and on request drops them all at once and
// reconnects them all at once. Talks to core.mjs over IPC.

import { performance } from 'node:perf_hooks';

import { SERVERS } from './servers.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let sessions = [];
let client = null;
let endpoint = null;

/** Runs `fn(i)` for every i in `items` with at most `concurrency` in flight (0: all at once). */
async function pool(items, concurrency, fn) {
  let next = 0;
  const one = async () => {
    while (next < items.length) await fn(items[next++]);
  };
  const width = concurrency <= 0 ? items.length : Math.min(concurrency, items.length);
  await Promise.all(Array.from({ length: width }, one));
}

function countError(errors, e) {
  const k = String(e?.code ?? e?.message ?? e).slice(0, 80);
  errors[k] = (errors[k] ?? 0) + 1;
}

process.on('message', async (m) => {
  try {
    if (m.type === 'open') {
      client = SERVERS[m.server].client;
      endpoint = m.endpoint;
      const errors = {};
      let failed = 0;
      const idx = Array.from({ length: m.count }, (_, k) => m.from + k);
      sessions = new Array(m.count).fill(null);
      await pool(idx, m.concurrency, async (i) => {
        try {
          sessions[i - m.from] = await client.openSession(endpoint, i);
        } catch (e) {
          failed++;
          countError(errors, e);
        }
      });
      process.send({ type: 'ready', opened: m.count - failed, failed, errors });
    } else if (m.type === 'storm') {
      const live = sessions.filter((s) => s !== null);
      for (const s of live) s.terminate();
      const deadline = performance.now() + m.deadlineMs;
      const errors = {};
      let back = 0;
      let attempts = 0;
      await pool(live, m.concurrency, async (s) => {
        while (performance.now() < deadline) {
          attempts++;
          try {
            await s.reconnect();
            back++;
            return;
          } catch (e) {
            countError(errors, e);
            await sleep(50);
          }
        }
      });
      process.send({ type: 'stormed', back, attempts, errors });
    } else if (m.type === 'close') {
      for (const s of sessions) s?.close();
      setTimeout(() => process.exit(0), 500);
    }
  } catch (e) {
    process.send({ type: 'error', message: String(e?.stack ?? e) });
  }
});

// Loaded and listening: the parent opens its measuring window from here.
process.send({ type: 'booted' });

process.on('disconnect', () => {
  for (const s of sessions) s?.terminate();
  process.exit(0);
});
