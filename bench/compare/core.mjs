// SPDX-License-Identifier: AGPL-3.0-or-later
// Workloads W1-W7 and their metrics, shared by every server of the comparison bench. A server
// comes with a protocol adapter (`server.client`) that knows how to open pairs, idle sessions,
// an offline sender and its recipient; everything measured here is protocol-independent.

import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

import { DRIVER_BOUND_CORES, NOISY_CORES, Samples, driverCpuUs, forkExecArgv, machineBusyUs, orNaN, percentile, procCpuUs, procRssKiB, round, sleep } from '../lib.mjs';
import { straceCount } from './proc.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
/** The server's CPU (µs) and RSS (KiB); NaN once it is gone, so that its figures come out null. */
const serverCpuUs = orNaN(procCpuUs);
const serverRssKiB = orNaN(procRssKiB);

/**
 * Server CPU, driver CPU and the rest of the machine over a window. The session holders (W4, W7)
 * are the driver too: their CPU counts as the driver's, from their start.
 */
function cpuMark(pid, holders = []) {
  const holderUs = holders.reduce((s, h) => s + (serverCpuUs(h.w.pid) || 0), 0);
  return { t: performance.now(), server: serverCpuUs(pid), driver: driverCpuUs() + holderUs, machine: machineBusyUs() };
}

function cpuDelta(a, b) {
  const wallUs = (b.t - a.t) * 1000;
  const serverUs = b.server - a.server;
  const driverUs = b.driver - a.driver;
  return {
    wallS: wallUs / 1e6,
    serverUs,
    serverCores: serverUs / wallUs,
    driverCores: driverUs / wallUs,
    otherCores: Math.max(0, (b.machine - a.machine - serverUs - driverUs) / wallUs),
  };
}

function flags(w) {
  return { driverBound: w.driverCores >= DRIVER_BOUND_CORES, noisy: w.otherCores >= NOISY_CORES };
}

async function openPairs(server, n, onMessage) {
  const pairs = [];
  for (let i = 0; i < n; i += 25) {
    const made = await Promise.all(
      Array.from({ length: Math.min(25, n - i) }, async (_, j) => {
        const pair = { idx: i + j, nextSeq: 0, nextExpected: 0, inflight: 0, sendTimes: new Float64Array(4096), conn: null };
        pair.conn = await server.client.openPair(server.endpoint, pair.idx, (seq) => onMessage(pair, seq));
        return pair;
      }),
    );
    pairs.push(...made);
  }
  return pairs;
}

// ---------------------------------------------------------------------------------------------
// W1-W3: closed loop, N pairs × window W

/** N pairs, W messages in flight per pair; msgs/s, one-way latency, server µs/msg. */
export async function closedLoop(server, cfg, nPairs, window) {
  const st = { measuring: false, running: true, measured: 0, outOfOrder: 0, errors: 0, lat: new Samples() };
  const send = (pair) => {
    const seq = pair.nextSeq++;
    pair.inflight++;
    pair.sendTimes[seq & 4095] = performance.now();
    pair.conn.send(seq);
  };
  const pairs = await openPairs(server, nPairs, (pair, seq) => {
    const now = performance.now();
    if (seq < 0) {
      st.errors++;
      return;
    }
    if (seq !== pair.nextExpected) st.outOfOrder++;
    pair.nextExpected = seq + 1;
    pair.inflight--;
    if (st.measuring) {
      st.measured++;
      st.lat.push(now - pair.sendTimes[seq & 4095]);
    }
    if (st.running) send(pair);
  });
  try {
    for (const p of pairs) for (let i = 0; i < window; i++) send(p);
    await sleep(cfg.warmupS * 1000);
    const a = cpuMark(server.pid);
    st.measuring = true;
    await sleep(cfg.durationS * 1000);
    st.measuring = false;
    const b = cpuMark(server.pid);
    const rssKiB = serverRssKiB(server.pid);
    st.running = false;
    const until = performance.now() + 10_000;
    while (performance.now() < until && pairs.some((p) => p.inflight > 0)) await sleep(20);
    const w = cpuDelta(a, b);
    const sorted = st.lat.sorted();
    return {
      pairs: nPairs,
      window,
      durationS: round(w.wallS, 2),
      delivered: st.measured,
      msgsPerS: round(st.measured / w.wallS, 0),
      p50Ms: round(percentile(sorted, 50), 3),
      p99Ms: round(percentile(sorted, 99), 3),
      maxMs: round(sorted[sorted.length - 1], 2),
      serverUsPerMsg: round(w.serverUs / Math.max(1, st.measured), 1),
      serverCores: round(w.serverCores, 2),
      driverCores: round(w.driverCores, 2),
      otherCores: round(w.otherCores, 2),
      ...flags(w),
      serverRssMiB: round(rssKiB / 1024, 1),
      undelivered: pairs.reduce((s, p) => s + p.inflight, 0),
      outOfOrder: st.outOfOrder,
      errors: st.errors,
    };
  } finally {
    for (const p of pairs) p.conn.close();
    await sleep(200);
  }
}

// ---------------------------------------------------------------------------------------------
// Idle sessions held by forked driver processes (W4, W7)

function forkHolders(server, from, n, perWorker, concurrency) {
  const nWorkers = Math.max(1, Math.ceil(n / perWorker));
  const holders = [];
  let start = from;
  for (let i = 0; i < nWorkers; i++) {
    const count = Math.floor(n / nWorkers) + (i < n % nWorkers ? 1 : 0);
    // BENCH_DRIVER_NODE_ARGS: node flags for the session holders only (e.g. --cpu-prof).
    const execArgv = forkExecArgv((process.env.BENCH_DRIVER_NODE_ARGS ?? '').split(/\s+/).filter((a) => a !== ''));
    const w = fork(join(HERE, 'worker.mjs'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv });
    const h = { w, exited: new Promise((r) => w.once('exit', r)), waiting: new Map() };
    w.on('message', (m) => {
      const cb = h.waiting.get(m.type);
      if (cb !== undefined) {
        h.waiting.delete(m.type);
        cb(m);
      }
    });
    h.request = (msg, reply) =>
      new Promise((res, rej) => {
        h.waiting.set(reply, res);
        h.waiting.set('error', (m) => rej(new Error(`session holder: ${m.message}`)));
        w.once('exit', (code) => rej(new Error(`session holder exited (${code})`)));
        w.send(msg);
      });
    h.booted = new Promise((res, rej) => {
      h.waiting.set('booted', res);
      w.once('exit', (code) => rej(new Error(`session holder exited (${code})`)));
    });
    h.booted.catch(() => undefined);
    const from = start;
    h.open = () => {
      h.opened = h.request({ type: 'open', server: server.name, endpoint: server.endpoint, from, count, concurrency }, 'ready');
      h.opened.catch(() => undefined);
      return h.opened;
    };
    start += count;
    holders.push(h);
  }
  return holders;
}

async function closeHolders(holders) {
  for (const h of holders) if (h.w.connected) h.w.send({ type: 'close' });
  await Promise.race([Promise.all(holders.map((h) => h.exited)), sleep(20_000)]);
  for (const h of holders) if (h.w.exitCode === null && h.w.signalCode === null) h.w.kill('SIGKILL');
}

/** W4: N authenticated idle sessions on a fresh server: RSS per session and login rate. */
export async function idleSessions(server, cfg, n) {
  const rssStart = serverRssKiB(server.pid);
  // 16 warm-up sessions (indices n..n+15) go through the same steps and close, so code and
  // caches each server loads once are in the baseline, not in the per-session figure.
  const warm = [];
  for (let i = 0; i < 16; i++) warm.push(await server.client.openSession(server.endpoint, n + i));
  for (const s of warm) s.close();
  await sleep(1500);
  const rssBefore = serverRssKiB(server.pid);
  const holders = forkHolders(server, 0, n, cfg.perWorker, cfg.loginConcurrency);
  try {
    // The login window opens once the holders have started: forking and loading Node is not a login.
    await Promise.all(holders.map((h) => h.booted));
    const a = cpuMark(server.pid, holders);
    const reports = await Promise.all(holders.map((h) => h.open()));
    const b = cpuMark(server.pid, holders);
    await sleep(3000); // let the server settle (GC of login garbage) before reading RSS
    const rssAfter = serverRssKiB(server.pid);
    const opened = reports.reduce((s, r) => s + r.opened, 0);
    const w = cpuDelta(a, b);
    return {
      sessions: n,
      opened,
      failed: reports.reduce((s, r) => s + r.failed, 0),
      failures: Object.assign({}, ...reports.map((r) => r.errors)),
      driverProcesses: holders.length,
      rssStartMiB: round(rssStart / 1024, 1),
      rssBeforeMiB: round(rssBefore / 1024, 1),
      rssAfterMiB: round(rssAfter / 1024, 1),
      kbPerSession: round((rssAfter - rssBefore) / Math.max(1, opened), 2),
      kbPerSessionFromStart: round((rssAfter - rssStart) / Math.max(1, opened), 2),
      loginS: round(w.wallS, 2),
      loginsPerS: round(opened / w.wallS, 0),
      serverUsPerLogin: round(w.serverUs / Math.max(1, opened), 0),
      serverCores: round(w.serverCores, 2),
      driverCores: round(w.driverCores, 2),
      otherCores: round(w.otherCores, 2),
      ...flags(w),
    };
  } finally {
    await closeHolders(holders);
  }
}

/**
 * W7: N idle sessions drop at once and reconnect at once; time until every one is logged in
 * (or subscribed) again and a probe message sent afterwards to one of them is delivered.
 */
export async function reconnectStorm(server, cfg, n) {
  // The probe pair uses indices past the sessions' (XMPP pair p = accounts 2p and 2p+1).
  const probeIdx = Math.ceil(n / 2);
  let probeSeq = -1;
  let probeSeen = null;
  const probe = await server.client.openPair(server.endpoint, probeIdx, (seq) => {
    if (seq === probeSeq && probeSeen !== null) probeSeen();
  });
  const holders = forkHolders(server, 0, n, cfg.perWorker, cfg.loginConcurrency);
  try {
    await Promise.all(holders.map((h) => h.booted));
    const reports = await Promise.all(holders.map((h) => h.open()));
    const opened = reports.reduce((s, r) => s + r.opened, 0);
    await sleep(2000);
    const a = cpuMark(server.pid, holders);
    const t0 = performance.now();
    const storm = holders.map((h) => h.request({ type: 'storm', concurrency: cfg.stormConcurrency, deadlineMs: cfg.stormDeadlineS * 1000 }, 'stormed'));
    probe.dropReceiver();
    await probe.reconnectReceiver();
    const results = await Promise.all(storm);
    const allBackMs = performance.now() - t0;
    const delivered = new Promise((r) => {
      probeSeen = r;
    });
    probeSeq = 1;
    probe.send(probeSeq);
    const probeOk = await Promise.race([delivered.then(() => true), sleep(30_000).then(() => false)]);
    const b = cpuMark(server.pid, holders);
    const w = cpuDelta(a, b);
    const back = results.reduce((s, r) => s + r.back, 0);
    const attempts = results.reduce((s, r) => s + r.attempts, 0);
    return {
      sessions: n,
      opened,
      resubscribed: back,
      // Sessions that failed to log in before the storm count as not back: they were not served.
      lost: n - back,
      loginFailures: n - opened,
      attempts,
      failures: Object.assign({}, ...results.map((r) => r.errors)),
      allBackS: round(allBackMs / 1000, 2),
      allServedS: probeOk ? round(w.wallS, 2) : null,
      probeDelivered: probeOk,
      resubscribesPerS: round(back / (allBackMs / 1000), 0),
      serverUsPerSession: round(w.serverUs / Math.max(1, back), 0),
      serverCores: round(w.serverCores, 2),
      driverCores: round(w.driverCores, 2),
      otherCores: round(w.otherCores, 2),
      ...flags(w),
    };
  } finally {
    probe.close();
    await closeHolders(holders);
  }
}

// ---------------------------------------------------------------------------------------------
// W5/W6: store-and-forward to an offline recipient, and a crash after the acknowledgement

async function storeOffline(server, n) {
  const info = await server.client.offlineSetup(server.endpoint);
  const sender = await server.client.openOfflineSender(server.endpoint, info);
  const a = cpuMark(server.pid);
  for (let seq = 0; seq < n; seq++) sender.send(seq);
  await sender.barrier(n);
  const b = cpuMark(server.pid);
  // XMPP: every stanza sent before the ping's answer was processed; Murmure: each SEND's OK.
  const ackedSeqs = sender.ackedSeqs === null ? null : sender.ackedSeqs();
  const acked = ackedSeqs === null ? n : ackedSeqs.size;
  const isAcked = (seq) => ackedSeqs === null || ackedSeqs.has(seq);
  return { info, sender, acked, isAcked, store: cpuDelta(a, b) };
}

/** Logs the recipient in and collects messages until all `n` arrived or none came for `idleMs`. */
async function drainOffline(server, info, n, idleMs) {
  const seen = new Uint8Array(n);
  let distinct = 0;
  let dup = 0;
  let bad = 0;
  let firstAt = null;
  let lastAt = null;
  let done = null;
  const allIn = new Promise((r) => {
    done = r;
  });
  const a = cpuMark(server.pid);
  const rcpt = await server.client.openRecipient(server.endpoint, info, (seq) => {
    const now = performance.now();
    firstAt ??= now;
    lastAt = now;
    if (seq < 0 || seq >= n) bad++;
    else if (seen[seq] === 1) dup++;
    else {
      seen[seq] = 1;
      if (++distinct === n) done();
    }
  });
  for (;;) {
    const before = distinct + dup;
    const r = await Promise.race([allIn.then(() => true), sleep(idleMs).then(() => false)]);
    if (r || distinct + dup === before) break;
  }
  const b = cpuMark(server.pid);
  rcpt.close();
  // The drain runs from the start of the login to the last message: the time a person waits
  // until everything is there. (From the first message on, a server that sends its whole store
  // in one burst would show a rate of hundreds of thousands per second.)
  return { seen, distinct, dup, bad, firstMs: firstAt === null ? null : firstAt - a.t, drainS: lastAt === null ? null : (lastAt - a.t) / 1000, drain: cpuDelta(a, b) };
}

/** W5: N messages to an offline recipient, then it comes online and drains them. */
export async function storeAndForward(server, cfg) {
  const n = cfg.offlineMessages;
  const s = await storeOffline(server, n);
  s.sender.close();
  await sleep(500);
  const d = await drainOffline(server, s.info, n, 5000);
  return {
    messages: n,
    acked: s.acked,
    storeS: round(s.store.wallS, 3),
    storeMsgsPerS: round(s.acked / s.store.wallS, 0),
    storeUsPerMsg: round(s.store.serverUs / Math.max(1, s.acked), 1),
    received: d.distinct,
    duplicates: d.dup,
    firstMsgMs: round(d.firstMs, 1),
    drainS: round(d.drainS, 3),
    drainMsgsPerS: d.drainS === null ? null : round(d.distinct / d.drainS, 0),
    drainUsPerMsg: round(d.drain.serverUs / Math.max(1, d.distinct), 1),
    serverUsPerMsg: round((s.store.serverUs + d.drain.serverUs) / Math.max(1, s.acked), 1),
    driverCores: round(s.store.driverCores, 2),
    driverBound: s.store.driverCores >= DRIVER_BOUND_CORES,
    otherCores: round(Math.max(s.store.otherCores, d.drain.otherCores), 2),
    noisy: Math.max(s.store.otherCores, d.drain.otherCores) >= NOISY_CORES,
  };
}

/**
 * W6: as W5 with the server under `strace -f -c` (fsync and fdatasync counted), `kill -9` as
 * soon as every message is acknowledged, a restart on the same data, then the drain: every
 * acknowledged message must arrive.
 */
export async function crashAfterAck(server, cfg, cpu) {
  const n = cfg.offlineMessages;
  const dir = mkdtempSync(join(tmpdir(), 'bench-strace-'));
  let restarted = null;
  try {
    const tracer = straceCount(server.pid, ['fsync', 'fdatasync'], join(dir, 'strace.txt'));
    await tracer.attached;
    const s = await storeOffline(server, n);
    await server.kill9();
    const counts = await tracer.stop();
    s.sender.close();
    restarted = await server.restart(cpu);
    const d = await drainOffline(restarted, s.info, n, 5000);
    let lost = 0;
    for (let i = 0; i < n; i++) if (s.isAcked(i) && d.seen[i] === 0) lost++;
    const syncs = counts === null ? null : (counts.fsync ?? 0) + (counts.fdatasync ?? 0);
    return {
      messages: n,
      acked: s.acked,
      received: d.distinct,
      lost,
      duplicates: d.dup,
      fsync: counts?.fsync ?? null,
      fdatasync: counts?.fdatasync ?? null,
      fsyncsPerMsg: syncs === null ? null : round(syncs / Math.max(1, s.acked), 3),
      storeSUnderStrace: round(s.store.wallS, 2),
    };
  } finally {
    if (restarted !== null) await restarted.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
