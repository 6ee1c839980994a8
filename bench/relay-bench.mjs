#!/usr/bin/env node
// SPDX-License-Identifier: AGPL-3.0-or-later
// Relay benchmark: starts real relay processes (murmure relay start, default config, durable
// SQLite in a temp folder), drives them with real RelayClients over TLS and prints throughput,
// latency, the drain of a stored backlog, CPU per message and memory per idle connection. Not a
// test: it only measures.
// bench/README.md explains the method and how to read the output.
//
// Usage: npm run bench:relay   (or: node bench/relay-bench.mjs after `npx tsc -b`)
// Env (bench/README.md): BENCH_QUICK, BENCH_ONLY, BENCH_WARMUP_S, BENCH_DURATION_S, BENCH_PAIRS,
//      BENCH_WINDOW, BENCH_LAT_RATE, BENCH_LAT_PAIRS, BENCH_DRAIN_QUEUES, BENCH_DRAIN_PER_QUEUE,
//      BENCH_DRAIN_BODIES, BENCH_IDLE, BENCH_IDLE_PER_WORKER,
//      BENCH_QUIET_WAIT_S, BENCH_METRICS, BENCH_RELAY_NODE_ARGS, BENCH_RELAY_STDOUT, BENCH_NO_RESULTS.

import { execFileSync, fork, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { RelayClient, openDelivered } from '@murmure/agent';
import { generateDhKeyPair } from '@murmure/queue-crypto';

import {
  DRIVER_BOUND_CORES,
  MURMURE_BIN,
  NOISY_CORES,
  Samples,
  appendResult,
  driverCpuUs,
  driverSemiSpaceMiB,
  envList,
  envNum,
  forkExecArgv,
  machineBusyUs,
  percentile,
  procCpuUs,
  procRssKiB,
  procTimes,
  relayAddressLine,
  relayNodeArgs,
  rerunWithDriverHeap,
  resultsFile,
  round,
  runMain,
  sleep,
  waitQuiet,
} from './lib.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '..');
const BODY_SIZE = 100;

// ---------------------------------------------------------------------------------------------
// Settings

function settings() {
  const quick = process.env.BENCH_QUICK === '1';
  return {
    only: envList('BENCH_ONLY', ['throughput', 'latency', 'drain', 'idle']),
    warmupS: envNum('BENCH_WARMUP_S', quick ? 0.5 : 2),
    durationS: envNum('BENCH_DURATION_S', quick ? 2 : 10),
    pairs: envList('BENCH_PAIRS', ['1', '100']).map(Number),
    window: envNum('BENCH_WINDOW', 10),
    latRate: envNum('BENCH_LAT_RATE', 1000),
    latPairs: envNum('BENCH_LAT_PAIRS', 10),
    drainQueues: envNum('BENCH_DRAIN_QUEUES', 100),
    drainPerQueue: envNum('BENCH_DRAIN_PER_QUEUE', quick ? 20 : 100),
    drainBodies: envList('BENCH_DRAIN_BODIES', ['100', '15900']).map(Number),
    idle: envList('BENCH_IDLE', quick ? ['1000'] : ['1000', '10000']).map(Number),
    idlePerWorker: envNum('BENCH_IDLE_PER_WORKER', 2500),
    relayNodeArgs: relayNodeArgs(),
    writeResults: process.env.BENCH_NO_RESULTS !== '1',
    quietWaitS: envNum('BENCH_QUIET_WAIT_S', 0),
    metrics: process.env.BENCH_METRICS !== '0',
    relayStdout: process.env.BENCH_RELAY_STDOUT ?? '',
  };
}

function checkSettings(cfg) {
  // The send-time ring of a pair holds 4,096 entries; the relay's default quota is 128 per queue.
  if (cfg.window < 1 || cfg.window > 128) throw new Error('BENCH_WINDOW must be between 1 and 128 (the default queue quota)');
  if (cfg.pairs.some((n) => !Number.isInteger(n) || n < 1)) throw new Error('BENCH_PAIRS must list whole numbers >= 1');
  if (cfg.latPairs < 1 || cfg.latRate <= 0) throw new Error('BENCH_LAT_PAIRS must be >= 1 and BENCH_LAT_RATE > 0');
  // The relay's defaults: 1,000 queues per connection, 128 messages per queue, bodies of 16,064 bytes.
  if (cfg.drainQueues < 1 || cfg.drainQueues > 1000) throw new Error('BENCH_DRAIN_QUEUES must be between 1 and 1,000 (queues per connection)');
  if (cfg.drainPerQueue < 1 || cfg.drainPerQueue > 128) throw new Error('BENCH_DRAIN_PER_QUEUE must be between 1 and 128 (the default queue quota)');
  if (cfg.drainBodies.some((b) => !Number.isInteger(b) || b < 4 || b > 15_900)) throw new Error('BENCH_DRAIN_BODIES must list sizes from 4 to 15,900 bytes');
}

// ---------------------------------------------------------------------------------------------
// Small helpers

function gitSha() {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// The relay process

/** Starts `murmure relay start` on a fresh temp folder; resolves with { pid, address, stop() }. */
async function startRelay(cfg, label) {
  const dataDir = mkdtempSync(join(tmpdir(), 'murmure-bench-'));
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const args = [MURMURE_BIN, 'relay', 'start', '--data', dataDir, '--host', '127.0.0.1', '--port', '0', '--json'];
  // The metrics endpoint (off by default) changes nothing in how the relay works; it is read
  // only at the edges of the measured window, for commits and blocks per message.
  if (cfg.metrics) args.push('--metrics-port', '0');
  const child = spawn(process.execPath, [...cfg.relayNodeArgs, ...args], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  // Warnings and errors the relay logs (store failures, retries), counted by event: a figure
  // disturbed by a failing disk says so in its result line.
  const events = {};
  let partial = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-4000);
    const lines = (partial + d).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      try {
        const j = JSON.parse(line);
        if (j.level === 'warn' || j.level === 'error') {
          const key = j.code === undefined ? j.event : `${j.event} (${j.code})`;
          events[key] = (events[key] ?? 0) + 1;
        }
      } catch {
        // not a log line
      }
    }
  });
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  liveRelays.set(child, dataDir);
  const lines = createInterface({ input: child.stdout });
  // Anything else the relay prints on stdout is kept in BENCH_RELAY_STDOUT if set.
  const first = await Promise.race([
    relayAddressLine(lines, cfg.relayStdout),
    exited.then(({ code, signal }) => {
      throw new Error(`relay exited before it started (code ${code}, signal ${signal}): ${stderr}`);
    }),
    sleep(30_000).then(() => {
      throw new Error('relay did not print its address within 30 s');
    }),
  ]).catch(async (e) => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    liveRelays.delete(child);
    rmSync(dataDir, { recursive: true, force: true });
    throw e;
  });
  let parsed;
  try {
    parsed = JSON.parse(first);
    if (typeof parsed.address !== 'string') throw new Error(`relay failed to start: ${first}`);
  } catch (e) {
    child.kill('SIGKILL');
    await exited;
    liveRelays.delete(child);
    rmSync(dataDir, { recursive: true, force: true });
    throw e;
  }
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const r = await Promise.race([exited, sleep(15_000).then(() => null)]);
      if (r === null) {
        console.error(`[${label}] relay ${child.pid} did not stop on SIGTERM within 15 s: SIGKILL`);
        child.kill('SIGKILL');
        await exited;
      }
    }
    liveRelays.delete(child);
    lines.close();
    rmSync(dataDir, { recursive: true, force: true });
    const r = await exited;
    return { ...r, stderr };
  };
  return { pid: child.pid, address: parsed.address, metricsPort: parsed.metricsPort ?? null, stop, dataDir, events };
}

/** Counters from the relay's /metrics endpoint (null when it is off or does not answer). */
async function scrapeMetrics(relay) {
  if (relay.metricsPort === null) return null;
  try {
    const res = await fetch(`http://127.0.0.1:${relay.metricsPort}/metrics`);
    const text = await res.text();
    const get = (name) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
    const errors = (code) => Number(new RegExp(`^murmure_errors_total\\{code="${code}"\\} (\\S+)$`, 'm').exec(text)?.[1] ?? 0);
    return {
      commits: get('murmure_store_commits_total'),
      blocksIn: get('murmure_blocks_in_total'),
      blocksOut: get('murmure_blocks_out_total'),
      storeRetries: get('murmure_store_retries_total'),
      syncFailures: get('murmure_store_sync_failures_total'),
      errStore: errors('STORE'),
      errQuota: errors('QUOTA'),
    };
  } catch {
    return null;
  }
}

/** Relay processes this bench started and has not stopped yet, with their data folders. */
const liveRelays = new Map();
function killLiveRelays() {
  for (const [c, dir] of liveRelays) {
    try {
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Pairs: one subscriber connection and one sender connection per queue

/** Opens `n` pairs: a subscriber that created, secured and subscribed a queue, and a sender. */
async function openPairs(address, n, onMessage) {
  const pairs = [];
  const batch = 25;
  for (let i = 0; i < n; i += batch) {
    const made = await Promise.all(
      Array.from({ length: Math.min(batch, n - i) }, async (_, j) => {
        const idx = i + j;
        const sub = await RelayClient.connect(address);
        const snd = await RelayClient.connect(address);
        const q = await sub.createQueue();
        const senderKey = generateDhKeyPair();
        await sub.secure(q, senderKey.publicKey);
        const pair = {
          idx,
          sub,
          snd,
          q,
          senderKey,
          nextSeq: 0,
          nextExpected: 0,
          inflight: 0,
          sendTimes: new Float64Array(4096),
        };
        sub.on('message', (m) => onMessage(pair, m));
        await sub.subscribe(q);
        return pair;
      }),
    );
    pairs.push(...made);
  }
  return pairs;
}

function closePairs(pairs) {
  for (const p of pairs) {
    p.sub.close();
    p.snd.close();
  }
}

/** A 100-byte opaque body carrying the pair's sequence number in its first 4 bytes. */
function body(seq) {
  const b = new Uint8Array(BODY_SIZE);
  new DataView(b.buffer).setUint32(0, seq);
  b.fill(0x5a, 4);
  return b;
}

function sendOne(pair, st) {
  const seq = pair.nextSeq++;
  pair.inflight++;
  pair.sendTimes[seq & 4095] = performance.now();
  pair.snd.send(pair.q.sndId, pair.senderKey.privateKey, body(seq)).catch((e) => {
    st.errors.push(`SEND ${e.code ?? e.message}`);
    pair.inflight--;
  });
}

/** Handles a MSG: opens the box, checks the sequence, records latency and ACKs. */
function receive(pair, m, st) {
  const now = performance.now();
  let seq;
  try {
    const plain = openDelivered(pair.q, m.msgId, m.body);
    seq = new DataView(plain.body.buffer, plain.body.byteOffset, plain.body.length).getUint32(0);
  } catch (e) {
    st.errors.push(`OPEN ${e.code ?? e.message}`);
    return;
  }
  if (seq !== pair.nextExpected) st.outOfOrder++;
  pair.nextExpected = seq + 1;
  pair.inflight--;
  st.delivered++;
  if (st.measuring) {
    st.measured++;
    st.lat.push(now - pair.sendTimes[seq & 4095]);
  }
  pair.sub.ack(pair.q, m.msgId).catch((e) => st.errors.push(`ACK ${e.code ?? e.message}`));
}

function newState() {
  return { delivered: 0, measured: 0, measuring: false, running: true, outOfOrder: 0, errors: [], lat: new Samples() };
}

/** Measures `durationS` after `warmupS`: relay CPU, driver CPU, wall time. */
async function measureWindow(relay, st, cfg) {
  await sleep(cfg.warmupS * 1000);
  const c0 = await scrapeMetrics(relay);
  const r0 = procTimes(relay.pid);
  const d0 = driverCpuUs();
  const m0 = machineBusyUs();
  const t0 = performance.now();
  st.measuring = true;
  await sleep(cfg.durationS * 1000);
  st.measuring = false;
  const t1 = performance.now();
  const c1 = await scrapeMetrics(relay);
  const r1 = procTimes(relay.pid);
  const d1 = driverCpuUs();
  const m1 = machineBusyUs();
  const wallUs = (t1 - t0) * 1000;
  const events = { ...relay.events };
  const relayCpuUs = r1.user + r1.sys - r0.user - r0.sys;
  // CPU used by everything else on the machine (other processes, kernel threads): if high, the
  // figures of this run are disturbed.
  const otherCores = Math.max(0, (m1 - m0 - relayCpuUs - (d1 - d0)) / wallUs);
  return {
    wallS: wallUs / 1e6,
    relayCpuUs,
    relayCores: relayCpuUs / wallUs,
    relaySysShare: relayCpuUs > 0 ? (r1.sys - r0.sys) / relayCpuUs : 0,
    driverCores: (d1 - d0) / wallUs,
    otherCores,
    events,
    counters: c0 === null || c1 === null ? null : Object.fromEntries(Object.keys(c0).map((k) => [k, c1[k] - c0[k]])),
  };
}

async function drain(pairs, st, ms = 10_000) {
  st.running = false;
  const until = performance.now() + ms;
  while (performance.now() < until && pairs.some((p) => p.inflight > 0)) await sleep(20);
  await sleep(50); // let the last ACKs go out
}

function summarise(kind, extra, st, w) {
  const sorted = st.lat.sorted();
  const errorsByKind = {};
  for (const e of st.errors) errorsByKind[e] = (errorsByKind[e] ?? 0) + 1;
  return {
    kind,
    ...extra,
    durationS: round(w.wallS, 2),
    delivered: st.measured,
    msgsPerS: round(st.measured / w.wallS, 0),
    p50Ms: round(percentile(sorted, 50), 2),
    p99Ms: round(percentile(sorted, 99), 2),
    maxMs: round(sorted[sorted.length - 1], 2),
    relayCpuUsPerMsg: round(w.relayCpuUs / Math.max(1, st.measured), 1),
    relayCores: round(w.relayCores, 2),
    relaySysShare: round(w.relaySysShare, 2),
    driverCores: round(w.driverCores, 2),
    driverBound: w.driverCores >= DRIVER_BOUND_CORES,
    otherCores: round(w.otherCores, 2),
    noisy: w.otherCores >= NOISY_CORES,
    commitsPerMsg: w.counters === null ? null : round(w.counters.commits / Math.max(1, st.measured), 3),
    blocksInPerMsg: w.counters === null ? null : round(w.counters.blocksIn / Math.max(1, st.measured), 2),
    blocksOutPerMsg: w.counters === null ? null : round(w.counters.blocksOut / Math.max(1, st.measured), 2),
    storeRetries: w.counters?.storeRetries ?? null,
    storeSyncFailures: w.counters?.syncFailures ?? null,
    relayErrStore: w.counters?.errStore ?? null,
    relayErrQuota: w.counters?.errQuota ?? null,
    relayEvents: { ...w.events },
    outOfOrder: st.outOfOrder,
    errors: st.errors.length,
    errorsByKind,
  };
}

// ---------------------------------------------------------------------------------------------
// (a) Closed-loop throughput

async function runThroughput(cfg, nPairs) {
  const relay = await startRelay(cfg, `throughput ${nPairs}`);
  const st = newState();
  let pairs = [];
  try {
    pairs = await openPairs(relay.address, nPairs, (pair, m) => {
      receive(pair, m, st);
      if (st.running) sendOne(pair, st);
    });
    for (const p of pairs) for (let i = 0; i < cfg.window; i++) sendOne(p, st);
    const w = await measureWindow(relay, st, cfg);
    const rssKiB = procRssKiB(relay.pid);
    await drain(pairs, st);
    return summarise('throughput', { pairs: nPairs, window: cfg.window, relayRssMiB: round(rssKiB / 1024, 1) }, st, w);
  } finally {
    closePairs(pairs);
    await relay.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// (b) Open-loop latency at a fixed offered load

async function runLatency(cfg) {
  const relay = await startRelay(cfg, 'latency');
  const st = newState();
  let pairs = [];
  try {
    pairs = await openPairs(relay.address, cfg.latPairs, (pair, m) => receive(pair, m, st));
    const start = performance.now();
    let sent = 0;
    let maxLagMs = 0;
    // A 1 ms ticker sends every message that is due by the schedule (rate × elapsed time).
    const ticker = setInterval(() => {
      const now = performance.now();
      const due = Math.floor(((now - start) * cfg.latRate) / 1000);
      if (due - sent > 1) maxLagMs = Math.max(maxLagMs, ((due - sent) * 1000) / cfg.latRate);
      while (sent < due) {
        sendOne(pairs[sent % pairs.length], st);
        sent++;
      }
    }, 1);
    const sentBefore = () => sent;
    const w = await measureWindow(relay, st, { ...cfg, warmupS: Math.max(cfg.warmupS, 0.1) });
    clearInterval(ticker);
    const rssKiB = procRssKiB(relay.pid);
    await drain(pairs, st);
    return summarise(
      'latency',
      { pairs: cfg.latPairs, offeredPerS: cfg.latRate, sent: sentBefore(), scheduleLagMaxMs: round(maxLagMs, 1), relayRssMiB: round(rssKiB / 1024, 1) },
      st,
      w,
    );
  } finally {
    closePairs(pairs);
    await relay.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// (c) Memory per idle subscribed connection, connections held by forked driver workers

async function runIdle(cfg, n) {
  const relay = await startRelay(cfg, `idle ${n}`);
  const workers = [];
  try {
    const rssStart = procRssKiB(relay.pid);
    // Warm-up: 16 connections go through the same steps and close, so code paths and caches
    // that every relay loads once are in `before`, not in the per-connection figure.
    const warm = [];
    for (let i = 0; i < 16; i++) {
      const c = await RelayClient.connect(relay.address);
      await c.subscribe(await c.createQueue());
      warm.push(c);
    }
    for (const c of warm) c.close();
    await sleep(1500);
    const rssBefore = procRssKiB(relay.pid);
    const cpu0 = procCpuUs(relay.pid);
    const t0 = performance.now();
    const nWorkers = Math.max(1, Math.ceil(n / cfg.idlePerWorker));
    for (let i = 0; i < nWorkers; i++) {
      const count = Math.floor(n / nWorkers) + (i < n % nWorkers ? 1 : 0);
      const w = fork(fileURLToPath(import.meta.url), ['--idle-worker'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: forkExecArgv() });
      const ready = new Promise((res, rej) => {
        w.on('message', (m) => {
          if (m.type === 'ready') res(m);
          else if (m.type === 'error') rej(new Error(`idle worker: ${m.message}`));
        });
        w.once('exit', (code) => rej(new Error(`idle worker exited early (${code})`)));
      });
      ready.catch(() => undefined);
      w.send({ type: 'open', address: relay.address, count, concurrency: 32 });
      workers.push({ w, ready, exited: new Promise((r) => w.once('exit', r)) });
    }
    const reports = await Promise.all(workers.map((x) => x.ready));
    const setupS = (performance.now() - t0) / 1000;
    const setupCpuUs = procCpuUs(relay.pid) - cpu0;
    await sleep(3000); // let the relay settle (GC of handshake garbage) before reading RSS
    const rssAfter = procRssKiB(relay.pid);
    const opened = reports.reduce((s, r) => s + r.opened, 0);
    const failed = reports.reduce((s, r) => s + r.failed, 0);
    return {
      kind: 'idle',
      connections: n,
      subscribed: opened,
      failed,
      driverProcesses: nWorkers,
      rssStartMiB: round(rssStart / 1024, 1),
      rssBeforeMiB: round(rssBefore / 1024, 1),
      rssAfterMiB: round(rssAfter / 1024, 1),
      kibPerConn: round((rssAfter - rssBefore) / Math.max(1, opened), 2),
      kibPerConnFromStart: round((rssAfter - rssStart) / Math.max(1, opened), 2),
      setupS: round(setupS, 2),
      connectsPerS: round(opened / setupS, 0),
      relayCpuUsPerConnect: round(setupCpuUs / Math.max(1, opened), 0),
    };
  } finally {
    for (const x of workers) if (x.w.connected) x.w.send({ type: 'close' });
    await Promise.race([Promise.all(workers.map((x) => x.exited)), sleep(20_000)]);
    for (const x of workers) if (x.w.exitCode === null && x.w.signalCode === null) x.w.kill('SIGKILL');
    await relay.stop();
  }
}

/** Worker mode: opens connections that each create and subscribe one queue, then holds them. */
function idleWorker() {
  const clients = [];
  process.on('message', async (m) => {
    if (m.type === 'close') {
      for (const c of clients) c.close();
      setTimeout(() => process.exit(0), 500);
      return;
    }
    if (m.type !== 'open') return;
    let next = 0;
    let failed = 0;
    const errors = {};
    const one = async () => {
      while (next < m.count) {
        next++;
        try {
          const c = await RelayClient.connect(m.address, { timeoutMs: 30_000 });
          clients.push(c);
          await c.subscribe(await c.createQueue());
        } catch (e) {
          failed++;
          const k = e.code ?? e.message;
          errors[k] = (errors[k] ?? 0) + 1;
        }
      }
    };
    try {
      await Promise.all(Array.from({ length: m.concurrency }, one));
      process.send({ type: 'ready', opened: m.count - failed, failed, errors });
    } catch (e) {
      process.send({ type: 'error', message: String(e) });
    }
  });
  process.on('disconnect', () => {
    for (const c of clients) c.terminate();
    process.exit(0);
  });
}

// ---------------------------------------------------------------------------------------------
// (c) Drain: a recipient back online takes the backlog of many queues over one connection

async function runDrain(cfg, bodyBytes) {
  const relay = await startRelay(cfg, `drain ${bodyBytes} B`);
  const conns = [];
  try {
    const rcv = await RelayClient.connect(relay.address);
    conns.push(rcv);
    const snd = await RelayClient.connect(relay.address);
    conns.push(snd);
    const queues = new Map();
    for (let i = 0; i < cfg.drainQueues; i++) {
      const q = await rcv.createQueue();
      const senderKey = generateDhKeyPair();
      await rcv.secure(q, senderKey.publicKey);
      queues.set(Buffer.from(q.rcvId).toString('hex'), { q, senderKey, next: 0, received: 0 });
    }
    // Stored while the recipient is away, each message carrying its number in the queue.
    const payload = (seq) => {
      const b = new Uint8Array(bodyBytes).fill(0x5a);
      new DataView(b.buffer).setUint32(0, seq);
      return b;
    };
    for (let m = 0; m < cfg.drainPerQueue; m++) await Promise.all([...queues.values()].map(({ q, senderKey }) => snd.send(q.sndId, senderKey.privateKey, payload(m))));
    snd.close();
    const total = queues.size * cfg.drainPerQueue;
    let received = 0;
    let outOfOrder = 0;
    const errors = [];
    let allIn;
    const done = new Promise((r) => (allIn = r));
    rcv.on('message', (m) => {
      const e = queues.get(Buffer.from(m.rcvId).toString('hex'));
      if (e === undefined) return;
      try {
        const plain = openDelivered(e.q, m.msgId, m.body);
        if (new DataView(plain.body.buffer, plain.body.byteOffset, plain.body.length).getUint32(0) !== e.next) outOfOrder++;
        e.next++;
      } catch (err) {
        errors.push(`OPEN ${err.code ?? err.message}`);
      }
      rcv.ack(e.q, m.msgId).catch((err) => errors.push(`ACK ${err.code ?? err.message}`));
      if (++received === total) allIn();
    });
    await sleep(500);
    const r0 = procTimes(relay.pid);
    const d0 = driverCpuUs();
    const m0 = machineBusyUs();
    const t0 = performance.now();
    await Promise.all([...queues.values()].map(({ q }) => rcv.subscribe(q)));
    const finished = await Promise.race([done.then(() => true), sleep(120_000).then(() => false)]);
    const t1 = performance.now();
    const r1 = procTimes(relay.pid);
    const d1 = driverCpuUs();
    const m1 = machineBusyUs();
    const wallUs = (t1 - t0) * 1000;
    const relayCpuUs = r1.user + r1.sys - r0.user - r0.sys;
    const otherCores = Math.max(0, (m1 - m0 - relayCpuUs - (d1 - d0)) / wallUs);
    const errorsByKind = {};
    for (const e of errors) errorsByKind[e] = (errorsByKind[e] ?? 0) + 1;
    return {
      kind: 'drain',
      bodyBytes,
      queues: queues.size,
      perQueue: cfg.drainPerQueue,
      stored: total,
      delivered: received,
      finished,
      durationS: round(wallUs / 1e6, 2),
      msgsPerS: round(received / (wallUs / 1e6), 0),
      relayCpuUsPerMsg: round(relayCpuUs / Math.max(1, received), 1),
      relayCores: round(relayCpuUs / wallUs, 2),
      driverCores: round((d1 - d0) / wallUs, 2),
      driverBound: (d1 - d0) / wallUs >= DRIVER_BOUND_CORES,
      otherCores: round(otherCores, 2),
      noisy: otherCores >= NOISY_CORES,
      relayEvents: { ...relay.events },
      outOfOrder,
      errors: errors.length,
      errorsByKind,
    };
  } finally {
    for (const c of conns) c.close();
    await relay.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Output

function fmt(v, unit = '') {
  return v === null || v === undefined ? '-' : `${typeof v === 'number' ? v.toLocaleString('en-US') : v}${unit}`;
}

function printTable(results) {
  const rows = [['run', 'msgs/s', 'p50 ms', 'p99 ms', 'max ms', 'relay µs/msg', 'relay cores', 'driver cores', 'notes']];
  for (const r of results) {
    if (r.kind === 'throughput' || r.kind === 'latency') {
      const name = r.kind === 'throughput' ? `throughput ${r.pairs} pair(s) × window ${r.window}` : `latency ${r.offeredPerS}/s open loop, ${r.pairs} pairs`;
      const notes = [r.driverBound ? 'DRIVER-BOUND' : '', r.noisy ? `NOISY (others ${r.otherCores} cores)` : '', r.errors > 0 ? `${r.errors} errors` : '', r.outOfOrder > 0 ? `${r.outOfOrder} out of order` : '',
        r.storeRetries > 0 ? `${r.storeRetries} store retries` : '',
        r.storeSyncFailures > 0 ? `${r.storeSyncFailures} failed syncs` : '',
        ...Object.entries(r.relayEvents ?? {}).map(([e, n]) => `relay logged ${n}× ${e}`)]
        .filter(Boolean)
        .join(', ');
      rows.push([name, fmt(r.msgsPerS), fmt(r.p50Ms), fmt(r.p99Ms), fmt(r.maxMs), fmt(r.relayCpuUsPerMsg), fmt(r.relayCores), fmt(r.driverCores), notes]);
    } else if (r.kind === 'drain') {
      const name = `drain ${fmt(r.queues)} queues × ${fmt(r.perQueue)} of ${fmt(r.bodyBytes)} B, one connection`;
      const notes = [r.finished ? '' : `NOT FINISHED (${fmt(r.delivered)} of ${fmt(r.stored)})`, r.driverBound ? 'DRIVER-BOUND' : '', r.noisy ? `NOISY (others ${r.otherCores} cores)` : '', r.errors > 0 ? `${r.errors} errors` : '', r.outOfOrder > 0 ? `${r.outOfOrder} out of order` : '',
        ...Object.entries(r.relayEvents ?? {}).map(([e, n]) => `relay logged ${n}× ${e}`)]
        .filter(Boolean)
        .join(', ');
      rows.push([name, fmt(r.msgsPerS), '-', '-', '-', fmt(r.relayCpuUsPerMsg), fmt(r.relayCores), fmt(r.driverCores), notes]);
    }
  }
  const idle = results.filter((r) => r.kind === 'idle');
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => String(r[i]).length)));
  const line = (r) => r.map((c, i) => (i === 0 || i === r.length - 1 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ');
  if (rows.length > 1) {
    console.log('');
    console.log(line(rows[0]));
    console.log(widths.map((w) => '-'.repeat(w)).join('  '));
    for (const r of rows.slice(1)) console.log(line(r));
  }
  if (idle.length > 0) {
    const irows = [['idle connections', 'subscribed', 'RSS before MiB', 'RSS after MiB', 'KiB/conn', 'connects/s', 'relay µs/connect', 'notes']];
    for (const r of idle) {
      irows.push([
        fmt(r.connections),
        fmt(r.subscribed),
        fmt(r.rssBeforeMiB),
        fmt(r.rssAfterMiB),
        fmt(r.kibPerConn),
        fmt(r.connectsPerS),
        fmt(r.relayCpuUsPerConnect),
        r.failed > 0 ? `${r.failed} failed` : '',
      ]);
    }
    const iw = irows[0].map((_, i) => Math.max(...irows.map((r) => String(r[i]).length)));
    const il = (r) => r.map((c, i) => (i === r.length - 1 ? String(c).padEnd(iw[i]) : String(c).padStart(iw[i]))).join('  ');
    console.log('');
    console.log(il(irows[0]));
    console.log(iw.map((w) => '-'.repeat(w)).join('  '));
    for (const r of irows.slice(1)) console.log(il(r));
  }
}

function printTargets(results) {
  const t100 = results.find((r) => r.kind === 'throughput' && r.pairs === 100);
  const lat = results.find((r) => r.kind === 'latency');
  const idle = results.filter((r) => r.kind === 'idle');
  const checks = [];
  const flags = (r) => [r.driverBound ? ' (DRIVER-BOUND run)' : '', r.noisy ? ' (NOISY run)' : ''].join('');
  if (t100) checks.push([`durable msgs/s, 100 pairs >= 5,000`, t100.msgsPerS >= 5000, `${fmt(t100.msgsPerS)}${flags(t100)}`]);
  if (lat) checks.push([`p99 at ${lat.offeredPerS} msgs/s < 25 ms`, lat.p99Ms < 25 && lat.errors === 0, `${fmt(lat.p99Ms)} ms${flags(lat)}`]);
  for (const r of idle) checks.push([`KiB per idle connection @${r.connections} <= 32`, r.kibPerConn <= 32 && r.failed === 0, fmt(r.kibPerConn)]);
  if (checks.length === 0) return;
  console.log('\nTargets (issue, 2-core machine):');
  for (const [what, ok, got] of checks) console.log(`  ${ok ? 'met   ' : 'MISSED'}  ${what}: ${got}`);
}

// ---------------------------------------------------------------------------------------------
// Main

async function main() {
  const cfg = settings();
  checkSettings(cfg);
  const runId = new Date().toISOString();
  const meta = {
    runId,
    git: gitSha(),
    node: process.version,
    driverSemiSpaceMiB: driverSemiSpaceMiB(),
    relayNodeArgs: cfg.relayNodeArgs,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    warmupS: cfg.warmupS,
    bodyBytes: BODY_SIZE,
  };
  console.log(`murmure relay bench — ${meta.cpus} CPU (${meta.cpuModel}), node ${meta.node}, git ${meta.git ?? '?'}`);
  console.log(`warm-up ${cfg.warmupS} s, measured ${cfg.durationS} s, body ${BODY_SIZE} B, durable SQLite (WAL, fdatasync per group commit), TLS 1.3`);
  const file = resultsFile('relay', runId);
  const results = [];
  const record = (r, backgroundBefore) => {
    r = { ...r, backgroundCoresBefore: backgroundBefore };
    results.push(r);
    console.log(`  ${JSON.stringify(r)}`);
    if (cfg.writeResults) appendResult(file, { ...meta, ...r });
  };
  if (cfg.only.includes('throughput')) {
    for (const n of cfg.pairs) {
      console.log(`\n[throughput] ${n} pair(s), window ${cfg.window}, closed loop with ACK`);
      const bg = await waitQuiet(cfg);
      record(await runThroughput(cfg, n), bg);
    }
  }
  if (cfg.only.includes('latency')) {
    console.log(`\n[latency] ${cfg.latRate} msgs/s offered, open loop over ${cfg.latPairs} pairs`);
    const bg = await waitQuiet(cfg);
    record(await runLatency(cfg), bg);
  }
  if (cfg.only.includes('drain')) {
    for (const b of cfg.drainBodies) {
      console.log(`\n[drain] ${cfg.drainQueues} queues × ${cfg.drainPerQueue} stored messages of ${b} B, then one connection subscribes to all and ACKs each`);
      const bg = await waitQuiet(cfg);
      record(await runDrain(cfg, b), bg);
    }
  }
  if (cfg.only.includes('idle')) {
    for (const n of cfg.idle) {
      console.log(`\n[idle] ${n} subscribed connections, fresh relay`);
      const bg = await waitQuiet(cfg);
      record(await runIdle(cfg, n), bg);
    }
  }
  printTable(results);
  printTargets(results);
  if (cfg.writeResults) console.log(`\nJSON lines appended to ${file}`);
}

if (process.argv.includes('--idle-worker')) {
  idleWorker();
} else if (!(await rerunWithDriverHeap())) {
  await runMain(main, killLiveRelays);
}
