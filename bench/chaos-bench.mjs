#!/usr/bin/env node
// SPDX-License-Identifier: AGPL-3.0-or-later
// `npm run bench:chaos`: messages between many pairs of people while the relay is killed with
// SIGKILL at random moments and client processes are killed and started again. At the end every
// stored conversation is read back and the bench prints messages lost (sent, never shown), shown
// twice and out of order (each must be 0), and how long traffic took to recover after each kill.
// Not a test: it fails nothing, it prints figures and writes one JSON line to
// bench/results/chaos-<date>.jsonl. See bench/README.md.
//
// Env: BENCH_QUICK=1, CHAOS_PAIRS, CHAOS_MESSAGES (per pair), CHAOS_RELAY_KILLS,
// CHAOS_CLIENT_KILLS, CHAOS_SEED, CHAOS_WORKERS, CHAOS_RATE (messages/s offered, all pairs),
// CHAOS_DRAIN_S, CHAOS_KEEP=1 (keep the temp folder), MURMURE_PASSPHRASE.
import { execFileSync, fork, spawn } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { MURMURE_BIN, relayNodeArgs } from './lib.mjs';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const WORKER = join(ROOT, 'bench/chaos/worker.mjs');

const QUICK = process.env.BENCH_QUICK === '1';
const num = (name, quick, full) => {
  const v = process.env[name];
  return v === undefined || v === '' ? (QUICK ? quick : full) : Number(v);
};
const PAIRS = num('CHAOS_PAIRS', 20, 200);
const MESSAGES = num('CHAOS_MESSAGES', 50, 100);
const RELAY_KILLS = num('CHAOS_RELAY_KILLS', 3, 5);
const CLIENT_KILLS = num('CHAOS_CLIENT_KILLS', 1, 3);
const SEED = num('CHAOS_SEED', 20_261_126, 20_261_126);
const WORKERS = Math.max(1, Math.min(num('CHAOS_WORKERS', 2, 4), PAIRS));
const RATE = num('CHAOS_RATE', 25, 60);
const DRAIN_S = num('CHAOS_DRAIN_S', 60, 180);
const KEEP = process.env.CHAOS_KEEP === '1';
const PASSPHRASE = process.env.MURMURE_PASSPHRASE ?? 'chaos bench passphrase';
const TOTAL = PAIRS * MESSAGES;
const INTERVAL_MS = (PAIRS / RATE) * 1000;

/** mulberry32, as tests/e2e/src/harness.ts: the same seed gives the same numbers. */
function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T0 = Date.now();
const stamp = () => `${((Date.now() - T0) / 1000).toFixed(1).padStart(6)} s`;
const say = (s) => console.log(`[${stamp()}] ${s}`);

const dir = mkdtempSync(join(os.tmpdir(), 'murmure-chaos-'));
const relayDir = join(dir, 'relay');
const homesDir = join(dir, 'homes');
mkdirSync(homesDir);

// ---------------------------------------------------------------------------------------------
// The relay: a real `murmure relay start` process, restarted on the same folder and port.

/** Busy CPU time of the whole machine so far (ms), from /proc/stat. */
function machineBusyMs() {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    return ((total - f[3] - (f[4] ?? 0)) * 1000) / 100;
  } catch {
    return null;
  }
}
const BUSY0 = machineBusyMs();

const relay = { proc: null, address: null, port: 0, cpuMs: 0, lastCpuMs: 0, starts: 0 };
const relayLogFd = openSync(join(dir, 'relay.log'), 'a');
const CLK_TCK = 100;

function procCpuMs(pid) {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const p = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return ((Number(p[11]) + Number(p[12])) * 1000) / CLK_TCK;
  } catch {
    return null;
  }
}

async function startRelay() {
  for (let attempt = 1; ; attempt++) {
    const args = [...relayNodeArgs(), MURMURE_BIN, 'relay', 'start', '--data', relayDir, '--host', '127.0.0.1', '--port', String(relay.port), '--json', '--log-level', 'warn'];
    const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', relayLogFd] });
    try {
      const line = await new Promise((resolve, reject) => {
        const rl = createInterface({ input: proc.stdout });
        rl.once('line', resolve);
        proc.once('exit', (code, sig) => reject(new Error(`relay exited (${code ?? sig}) before printing its address; see ${join(dir, 'relay.log')}`)));
      });
      const j = JSON.parse(line);
      relay.proc = proc;
      relay.address = j.address;
      relay.port = Number(/:(\d+)$/.exec(j.address)[1]);
      relay.starts++;
      relay.lastCpuMs = 0;
      return;
    } catch (e) {
      if (attempt >= 20) throw e;
      await sleep(250); // e.g. the port is not free yet
    }
  }
}

async function killRelay() {
  const proc = relay.proc;
  relay.cpuMs += procCpuMs(proc.pid) ?? relay.lastCpuMs;
  relay.proc = null;
  if (proc.exitCode === null && proc.signalCode === null) {
    const gone = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGKILL');
    await gone;
  }
}

// ---------------------------------------------------------------------------------------------
// Client processes: each hosts the receivers of some pairs and the senders of others, so that a
// kill interrupts both sides of different conversations.

const receiverWorker = (pair) => pair % WORKERS;
const senderWorker = (pair) => (WORKERS === 1 ? 0 : (pair + 1) % WORKERS);

class Worker {
  constructor(index) {
    this.index = index;
    this.homes = [];
    for (let p = 0; p < PAIRS; p++) {
      if (receiverWorker(p) === index) this.homes.push({ role: 'r', pair: p });
      if (senderWorker(p) === index) this.homes.push({ role: 's', pair: p });
    }
    this.proc = null;
    this.inbox = [];
    this.waiters = [];
    this.progress = { sent: {}, shown: {} };
    this.cpuMs = 0; // of earlier lives
    this.lastCpuMs = 0;
    this.rssMb = 0;
    this.starts = 0;
  }

  spawn() {
    this.killing = false;
    const out = openSync(join(dir, `worker-${this.index}.log`), 'a');
    this.proc = fork(WORKER, [], { stdio: ['ignore', out, out, 'ipc'], env: { ...process.env, MURMURE_PASSPHRASE: PASSPHRASE } });
    closeSync(out);
    this.starts++;
    this.lastCpuMs = 0;
    this.inbox = [];
    this.proc.on('message', (m) => {
      if (m.type === 'progress') {
        this.progress = m;
        this.lastCpuMs = m.cpuMs;
        this.rssMb = Math.max(this.rssMb, m.rssMb);
        return;
      }
      if (m.type === 'error') {
        say(`worker ${this.index} error: ${m.message}`);
        return;
      }
      this.inbox.push(m);
      for (const w of this.waiters.splice(0)) w();
    });
    const proc = this.proc;
    proc.once('exit', (code, sig) => {
      if (this.proc === proc && !this.stopping && !this.killing) say(`worker ${this.index} exited unexpectedly (${code ?? sig}); see ${join(dir, `worker-${this.index}.log`)}`);
      for (const w of this.waiters.splice(0)) w();
    });
  }

  /** Resolves with the next message of `type` from this worker. */
  async next(type, ms = 600_000) {
    const end = Date.now() + ms;
    for (;;) {
      const i = this.inbox.findIndex((m) => m.type === type);
      if (i >= 0) return this.inbox.splice(i, 1)[0];
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) throw new Error(`worker ${this.index} exited while waiting for '${type}'`);
      if (Date.now() > end) throw new Error(`worker ${this.index} sent no '${type}' in ${ms} ms`);
      await new Promise((r) => {
        const t = setTimeout(r, 200);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  cmd(m) {
    this.proc.send(m);
  }

  async open(create) {
    this.cmd({ cmd: 'open', index: this.index, dir: homesDir, relay: relay.address, homes: this.homes, create });
    return this.next('opened');
  }

  async kill9() {
    const proc = this.proc;
    this.cpuMs += this.lastCpuMs;
    this.lastCpuMs = 0;
    this.killing = true;
    if (proc.exitCode === null && proc.signalCode === null) {
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGKILL');
      await gone;
    }
  }
}

const workers = Array.from({ length: WORKERS }, (_, i) => new Worker(i));

function cleanupProcesses() {
  for (const w of workers) if (w.proc && w.proc.exitCode === null && w.proc.signalCode === null) w.proc.kill('SIGKILL');
  if (relay.proc && relay.proc.exitCode === null && relay.proc.signalCode === null) relay.proc.kill('SIGKILL');
}
process.on('SIGINT', () => {
  cleanupProcesses();
  process.exit(130);
});
process.on('exit', cleanupProcesses);

function progressTotals() {
  let sent = 0;
  let shown = 0;
  for (const w of workers) {
    for (const v of Object.values(w.progress.sent)) sent += v;
    for (const v of Object.values(w.progress.shown)) shown += v;
  }
  return { sent, shown };
}

// ---------------------------------------------------------------------------------------------
// The run.

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function gitInfo() {
  try {
    const sha = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: ROOT, encoding: 'utf8' }).trim() !== '';
    return { sha, dirty };
  } catch {
    return { sha: null, dirty: null };
  }
}

async function main() {
  say(
    `chaos bench${QUICK ? ' (quick)' : ''}: ${PAIRS} pairs × ${MESSAGES} messages = ${TOTAL}, offered ${RATE} msg/s (one message per pair every ${(INTERVAL_MS / 1000).toFixed(2)} s), ` +
      `${RELAY_KILLS} relay kills, ${CLIENT_KILLS} client kills, ${WORKERS} client processes, seed ${SEED}`,
  );
  say(`temp folder ${dir}`);
  await startRelay();
  say(`relay at ${relay.address}`);

  // Setup: homes (scrypt per home), then invitations and handshakes, in parallel in each worker.
  const tSetup = Date.now();
  for (const w of workers) w.spawn();
  const opened = await Promise.all(workers.map((w) => w.open(true)));
  const homesMs = Date.now() - tSetup;
  const openMsSum = opened.reduce((a, o) => a + o.openMs, 0);
  say(`${PAIRS * 2} homes created in ${(homesMs / 1000).toFixed(1)} s (opening with scrypt: ${(openMsSum / (PAIRS * 2)).toFixed(0)} ms per home in its process)`);
  const tPair = Date.now();
  for (const w of workers) w.cmd({ cmd: 'invite' });
  const links = Object.assign({}, ...(await Promise.all(workers.map((w) => w.next('links')))).map((m) => m.links));
  const bySender = workers.map(() => ({}));
  for (const [pair, link] of Object.entries(links)) bySender[senderWorker(Number(pair))][pair] = link;
  workers.forEach((w, i) => w.cmd({ cmd: 'join', links: bySender[i] }));
  await Promise.all(workers.map((w) => w.next('joined')));
  for (const w of workers) w.cmd({ cmd: 'await-connected' });
  await Promise.all(workers.map((w) => w.next('connected')));
  const pairingMs = Date.now() - tPair;
  say(`${PAIRS} pairs connected (invitation + handshake) in ${(pairingMs / 1000).toFixed(1)} s`);

  // Sending, with the chaos schedule: R relay kills and C client kills, one in each of R + C
  // equal slots of the sending phase (the slot order shuffled by the seed), at a random moment
  // within the slot's first two thirds.
  const rnd = seededRandom(SEED);
  const sendMs = MESSAGES * INTERVAL_MS;
  const kinds = [...Array(RELAY_KILLS).fill('relay'), ...Array(CLIENT_KILLS).fill('client')];
  for (let i = kinds.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [kinds[i], kinds[j]] = [kinds[j], kinds[i]];
  }
  const from = 0.08 * sendMs;
  const slot = (0.84 * sendMs) / Math.max(1, kinds.length);
  const plan = kinds.map((kind, i) => ({ kind, at: from + slot * i + rnd() * slot * 0.66, worker: kind === 'client' ? Math.floor(rnd() * WORKERS) : null }));

  const cpuAtSendStart = { clients: workers.reduce((a, w) => a + w.lastCpuMs, 0), relay: procCpuMs(relay.proc.pid) ?? 0 };
  let reopenCpuMs = 0;
  const startAt = Date.now() + 500;
  for (const w of workers) w.cmd({ cmd: 'send', messages: MESSAGES, intervalMs: INTERVAL_MS, startAt });
  say(`sending; ${plan.length} kills planned at ${plan.map((p) => `${(p.at / 1000).toFixed(1)} s (${p.kind}${p.worker === null ? '' : ` ${p.worker}`})`).join(', ')}`);
  const ticker = setInterval(() => {
    const { sent, shown } = progressTotals();
    say(`sent ${sent}/${TOTAL}, shown ${shown}; relay CPU ${((relay.cpuMs + (procCpuMs(relay.proc?.pid) ?? 0)) / 1000).toFixed(1)} s`);
  }, 10_000);
  const relayCpuTicker = setInterval(() => {
    if (relay.proc) relay.lastCpuMs = procCpuMs(relay.proc.pid) ?? relay.lastCpuMs;
  }, 500);

  const kills = [];
  for (const p of plan) {
    const wait = startAt + p.at - Date.now();
    if (wait > 0) await sleep(wait);
    const { sent, shown } = progressTotals();
    say(`kill -9 ${p.kind === 'relay' ? 'the relay' : `client process ${p.worker}`} (sent ${sent}, shown ${shown})`);
    if (p.kind === 'relay') {
      const killAt = Date.now();
      await killRelay();
      await startRelay();
      const upAt = Date.now();
      kills.push({ kind: 'relay', killAt, upAt, sentBefore: sent, shownBefore: shown });
      say(`relay restarted on port ${relay.port} ${upAt - killAt} ms after the kill`);
    } else {
      const w = workers[p.worker];
      const killAt = Date.now();
      await w.kill9();
      w.spawn();
      const o = await w.open(false);
      reopenCpuMs += o.cpuMs;
      w.cmd({ cmd: 'send', messages: MESSAGES, intervalMs: INTERVAL_MS, startAt });
      const upAt = Date.now();
      kills.push({ kind: 'client', worker: w.index, killAt, upAt, reopenMs: o.totalMs, sentBefore: sent, shownBefore: shown });
      say(`client process ${w.index} restarted, its ${o.homes} homes reopened ${upAt - killAt} ms after the kill`);
    }
  }

  // Drain: wait (bounded) until every pair sent everything and every message was shown.
  const tSendDone = await (async () => {
    for (;;) {
      const { sent } = progressTotals();
      if (sent >= TOTAL) return Date.now();
      await sleep(250);
    }
  })();
  say(`every message sent (committed by its sender) ${((tSendDone - startAt) / 1000).toFixed(1)} s after the start; draining (at most ${DRAIN_S} s)`);
  let drained = false;
  const drainEnd = tSendDone + DRAIN_S * 1000;
  while (Date.now() < drainEnd) {
    if (progressTotals().shown >= TOTAL) {
      drained = true;
      break;
    }
    await sleep(250);
  }
  const tDrained = Date.now();
  clearInterval(ticker);
  await sleep(1500); // anything shown twice would show now
  say(drained ? `every message shown ${((tDrained - startAt) / 1000).toFixed(1)} s after the start` : `NOT DRAINED: ${progressTotals().shown}/${TOTAL} shown after ${DRAIN_S} s`);

  // Read back every stored conversation, then stop the clients and the relay cleanly.
  for (const w of workers) w.cmd({ cmd: 'report' });
  const reports = await Promise.all(workers.map((w) => w.next('report')));
  for (const w of workers) {
    w.cpuMs += w.lastCpuMs;
    w.stopping = true;
    w.cmd({ cmd: 'stop' });
  }
  await Promise.all(workers.map((w) => w.next('stopped', 60_000).catch(() => w.kill9())));
  clearInterval(relayCpuTicker);
  relay.cpuMs += procCpuMs(relay.proc.pid) ?? relay.lastCpuMs;
  const relayProc = relay.proc;
  const relayGone = new Promise((r) => relayProc.once('exit', r));
  relayProc.kill('SIGTERM');
  await relayGone;
  relay.proc = null;

  return analyse({ reports, kills, cpuAtSendStart, reopenCpuMs, startAt, tSendDone, tDrained, drained, homesMs, openMsSum, pairingMs });
}

// ---------------------------------------------------------------------------------------------
// Figures.

function readLogs() {
  const shownAt = new Map(); // `${pair} ${num}` -> first time shown
  const liveShows = new Map(); // key -> count of live shows
  const dups = [];
  const ooo = [];
  const sentLogged = new Set();
  const events = {};
  const eventSamples = [];
  for (const f of readdirSync(homesDir).filter((n) => n.startsWith('show-'))) {
    for (const line of readFileSync(join(homesDir, f), 'utf8').split('\n')) {
      if (line === '') continue;
      const p = line.split(' ');
      if (p[0] === 'show') {
        const key = `${p[1]} ${p[2]}`;
        const t = Number(p[3]);
        if (!shownAt.has(key) || shownAt.get(key) > t) shownAt.set(key, t);
        if (p[4] === 'live') liveShows.set(key, (liveShows.get(key) ?? 0) + 1);
      } else if (p[0] === 'dup') dups.push(`${p[1]} ${p[2]}`);
      else if (p[0] === 'ooo') ooo.push(`${p[1]} ${p[2]}`);
      else if (p[0] === 'sent') sentLogged.add(`${p[1]} ${p[2]}`);
      else if (p[0] === 'event') {
        events[p[1]] = (events[p[1]] ?? 0) + 1;
        if (eventSamples.length < 10) eventSamples.push(line);
      }
    }
  }
  // A message emitted live twice (in two lives of a process) was shown twice.
  for (const [key, n] of liveShows) if (n > 1) dups.push(key);
  return { shownAt, dups: [...new Set(dups)], ooo, sentLogged, events, eventSamples };
}

function analyse(r) {
  const TEXT_RE = /^p(\d+) m(\d+)$/;
  const logs = readLogs();
  const sentAt = new Map(); // key -> sent_at stored by the sender
  const relayAt = new Map(); // key -> when the relay accepted it (stored by the receiver)
  const senderRows = new Map();
  const receiverRows = new Map();
  let idle = true;
  for (const rep of r.reports) {
    idle &&= rep.idle;
    for (const [pair, rows] of Object.entries(rep.senders)) senderRows.set(Number(pair), rows);
    for (const [pair, rows] of Object.entries(rep.receivers)) receiverRows.set(Number(pair), rows);
  }
  const lost = [];
  const storedTwice = [];
  const outOfOrder = [];
  const notices = [];
  const senderMissing = [];
  let sent = 0;
  let shown = 0;
  for (let pair = 0; pair < PAIRS; pair++) {
    const outs = senderRows.get(pair) ?? [];
    const ins = receiverRows.get(pair) ?? [];
    const sentNums = new Set();
    for (const o of outs) {
      const m = TEXT_RE.exec(o.text);
      if (m === null) continue;
      sentNums.add(Number(m[2]));
      sentAt.set(`${pair} ${m[2]}`, o.sentAt);
    }
    sent += sentNums.size;
    for (const key of logs.sentLogged) if (key.startsWith(`${pair} `) && !sentNums.has(Number(key.split(' ')[1]))) senderMissing.push(key);
    const seen = new Map();
    let last = 0;
    for (const i of ins) {
      const m = TEXT_RE.exec(i.text);
      if (i.k !== 'text' || m === null) {
        notices.push(`pair ${pair}: ${i.k}: ${i.text}`);
        continue;
      }
      const n = Number(m[2]);
      seen.set(n, (seen.get(n) ?? 0) + 1);
      if (i.relayAt !== null) relayAt.set(`${pair} ${n}`, i.relayAt);
      if (n <= last) outOfOrder.push(`${pair} ${n}`);
      last = Math.max(last, n);
    }
    shown += seen.size;
    for (const [n, c] of seen) if (c > 1) storedTwice.push(`${pair} ${n}`);
    for (const n of sentNums) if (!seen.has(n)) lost.push(`${pair} ${n}`);
  }
  const shownTwice = [...new Set([...storedTwice, ...logs.dups])];

  // Latency (send() resolved → shown by the receiving chat), and recovery after each kill.
  // Split at the relay's acceptance time: sender side (outbox → relay) and receiver side.
  const lat = [];
  const toRelay = [];
  const fromRelay = [];
  for (const [key, t] of logs.shownAt) {
    const s = sentAt.get(key);
    if (s !== undefined) lat.push(t - s);
    const a = relayAt.get(key);
    if (a !== undefined && s !== undefined) {
      toRelay.push(a - s);
      fromRelay.push(t - a);
    }
  }
  for (const l of [lat, toRelay, fromRelay]) l.sort((a, b) => a - b);
  const dist = (l) => ({ p50: percentile(l, 50), p99: percentile(l, 99), max: l.at(-1) ?? null });
  const involved = (k, pair) => k.kind === 'relay' || receiverWorker(pair) === k.worker || senderWorker(pair) === k.worker;
  const recovery = r.kills.map((k) => {
    let first = Infinity;
    let drainedAt = -Infinity;
    let backlog = 0;
    let backlogBeforeKill = 0;
    let neverShown = 0;
    let slowest = null;
    for (const [key, s] of sentAt) {
      const pair = Number(key.split(' ')[0]);
      if (!involved(k, pair)) continue;
      const t = logs.shownAt.get(key);
      if (t !== undefined && t >= k.upAt) first = Math.min(first, t);
      // The backlog: what was sent before the service was back and not shown before the kill.
      if (s < k.upAt && (t === undefined || t >= k.killAt)) {
        backlog++;
        if (s < k.killAt) backlogBeforeKill++;
        if (t === undefined) neverShown++;
        else if (t > drainedAt) {
          drainedAt = t;
          const a = relayAt.get(key);
          slowest = { message: key, senderWorker: senderWorker(pair), receiverWorker: receiverWorker(pair), sentAtS: Number(((s - k.killAt) / 1000).toFixed(2)), relayAtS: a === undefined ? null : Number(((a - k.killAt) / 1000).toFixed(2)), shownAtS: Number(((t - k.killAt) / 1000).toFixed(2)) };
        }
      }
    }
    return {
      kind: k.kind,
      ...(k.kind === 'client' ? { worker: k.worker, reopenMs: k.reopenMs } : {}),
      atS: Number(((k.killAt - r.startAt) / 1000).toFixed(1)),
      restartMs: k.upAt - k.killAt,
      firstDeliveryMs: Number.isFinite(first) ? first - k.upAt : null,
      backlog,
      backlogBeforeKill,
      drainMs: backlog === 0 ? 0 : neverShown > 0 ? null : Math.max(0, drainedAt - k.upAt),
      slowest,
      recoveredMs: backlog === 0 ? k.upAt - k.killAt : neverShown > 0 ? null : Math.max(drainedAt, k.upAt) - k.killAt,
    };
  });

  const clientCpuMs = workers.reduce((a, w) => a + w.cpuMs, 0);
  const own = process.cpuUsage();
  const busy = machineBusyMs();
  const wallMs = Date.now() - T0;
  const otherCores = busy === null || BUSY0 === null ? null : Number(Math.max(0, (busy - BUSY0 - clientCpuMs - relay.cpuMs - (own.user + own.system) / 1000) / wallMs).toFixed(2));
  const git = gitInfo();
  const result = {
    bench: 'chaos',
    date: new Date().toISOString(),
    quick: QUICK,
    machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? null, memGb: Math.round(os.totalmem() / 2 ** 30), kernel: os.release(), loadavg: os.loadavg().map((x) => Number(x.toFixed(2))) },
    node: process.version,
    git: git.sha,
    gitDirty: git.dirty,
    config: { pairs: PAIRS, messages: MESSAGES, relayKills: RELAY_KILLS, clientKills: CLIENT_KILLS, seed: SEED, workers: WORKERS, rate: RATE, drainS: DRAIN_S },
    setup: { homes: PAIRS * 2, homesS: r.homesMs / 1000, openMsPerHome: Math.round(r.openMsSum / (PAIRS * 2)), pairingS: r.pairingMs / 1000 },
    plannedSendS: (MESSAGES * INTERVAL_MS) / 1000,
    sentPhaseS: (r.tSendDone - r.startAt) / 1000,
    drained: r.drained,
    deliveredS: r.drained ? (r.tDrained - r.startAt) / 1000 : null,
    totalS: (Date.now() - T0) / 1000,
    sent,
    shown,
    lost: lost.length,
    shownTwice: shownTwice.length,
    outOfOrder: outOfOrder.length + logs.ooo.length,
    senderStoreMissing: senderMissing.length,
    notices: notices.length,
    events: logs.events,
    outboxesIdle: idle,
    latencyMs: dist(lat),
    toRelayMs: dist(toRelay),
    fromRelayMs: dist(fromRelay),
    cpu: {
      otherCores,
      // While messages flowed: without creating, opening (scrypt) and pairing the homes.
      clientMsPerMessageSent: Number(((clientCpuMs - r.cpuAtSendStart.clients - r.reopenCpuMs) / Math.max(1, TOTAL)).toFixed(2)),
      relayMsPerMessageSent: Number(((relay.cpuMs - r.cpuAtSendStart.relay) / Math.max(1, TOTAL)).toFixed(2)),
      setupClientS: r.cpuAtSendStart.clients / 1000,
      reopenClientS: r.reopenCpuMs / 1000,
      clientS: clientCpuMs / 1000, relayS: relay.cpuMs / 1000, clientMsPerMessage: Number((clientCpuMs / Math.max(1, TOTAL)).toFixed(2)), relayMsPerMessage: Number((relay.cpuMs / Math.max(1, TOTAL)).toFixed(2)) },
    workerRssMbMax: Math.max(...workers.map((w) => w.rssMb)),
    kills: recovery,
    samples: { lost: lost.slice(0, 20), shownTwice: shownTwice.slice(0, 20), outOfOrder: [...outOfOrder, ...logs.ooo].slice(0, 20), senderStoreMissing: senderMissing.slice(0, 20), notices: notices.slice(0, 10), events: logs.eventSamples },
  };
  return result;
}

function printSummary(res) {
  const ok = (n) => (n === 0 ? '0  ok' : `${n}  <-- must be 0`);
  const line = (k, v) => console.log(`  ${k.padEnd(34)} ${v}`);
  console.log('');
  console.log(`Chaos bench: ${res.config.pairs} pairs × ${res.config.messages} messages, seed ${res.config.seed}, ${res.kills.filter((k) => k.kind === 'relay').length} relay kills, ${res.kills.filter((k) => k.kind === 'client').length} client kills`);
  line('setup', `${res.setup.homes} homes in ${res.setup.homesS.toFixed(1)} s (scrypt + open ${res.setup.openMsPerHome} ms/home), pairing ${res.setup.pairingS.toFixed(1)} s`);
  line('sent (committed by send())', `${res.sent} of ${res.config.pairs * res.config.messages}`);
  line('shown (stored conversations)', `${res.shown}`);
  line('messages lost', ok(res.lost));
  line('shown twice', ok(res.shownTwice));
  line('out of order', ok(res.outOfOrder));
  line("missing from the sender's own home", ok(res.senderStoreMissing));
  line('gaps / notices in conversations', ok(res.notices));
  line('events (problems, resets...)', Object.keys(res.events).length === 0 ? 'none' : JSON.stringify(res.events));
  line('all delivered', res.drained ? `yes, ${res.deliveredS.toFixed(1)} s after sending started` : 'NO (drain timed out)');
  line('sending took', `${res.sentPhaseS.toFixed(1)} s (${res.plannedSendS.toFixed(0)} s at the offered pace${res.sentPhaseS > res.plannedSendS * 1.1 ? '; the senders could not keep the pace' : ''})`);
  const d = (x) => `p50 ${x.p50} ms, p99 ${x.p99} ms, max ${x.max} ms`;
  line('latency send() → shown', d(res.latencyMs));
  line('  of which send() → relay took it', d(res.toRelayMs));
  line('  and relay took it → shown', d(res.fromRelayMs));
  line('CPU', `clients ${res.cpu.clientS.toFixed(1)} s (setup ${res.cpu.setupClientS.toFixed(1)} s, reopening after kills ${res.cpu.reopenClientS.toFixed(1)} s), relay ${res.cpu.relayS.toFixed(1)} s; worker RSS max ${res.workerRssMbMax} MiB`);
  line('CPU per message while sending', `clients ${res.cpu.clientMsPerMessageSent} ms (both ends, receipts included), relay ${res.cpu.relayMsPerMessageSent} ms`);
  line('total run time', `${res.totalS.toFixed(0)} s${res.cpu.otherCores === null ? '' : `; other processes used ${res.cpu.otherCores} cores meanwhile${res.cpu.otherCores >= 0.15 ? ' (NOISY)' : ''}`}`);
  console.log('');
  console.log('  after each kill      at (s)  restart  first delivery  backlog  drained    recovered       the last backlog message (s after the kill)');
  console.log('                               (ms)     after (ms)     (msgs)   after (ms) from kill (ms)');
  for (const k of res.kills) {
    const what = k.kind === 'relay' ? 'relay' : `client ${k.worker}`;
    const f = (v) => (v === null ? 'never' : String(v));
    console.log(`  ${what.padEnd(18)} ${String(k.atS).padStart(7)}  ${String(k.restartMs).padStart(7)}  ${f(k.firstDeliveryMs).padStart(14)}  ${String(k.backlog).padStart(7)}  ${f(k.drainMs).padStart(9)}  ${f(k.recoveredMs).padStart(13)}   ${k.slowest === null ? '' : `pair ${k.slowest.message.split(' ')[0]} #${k.slowest.message.split(' ')[1]}: sent ${k.slowest.sentAtS}, relay took it ${k.slowest.relayAtS}, shown ${k.slowest.shownAtS}`}`);
  }
  const bad = res.lost + res.shownTwice + res.outOfOrder + res.senderStoreMissing + res.notices > 0 || !res.drained;
  if (bad) {
    console.log('');
    console.log('  PROBLEMS (samples are "PAIR NUM"):');
    for (const [k, v] of Object.entries(res.samples)) if (v.length > 0) console.log(`    ${k}: ${v.join(', ')}`);
  }
  console.log('');
  return bad;
}

let exitCode = 0;
try {
  const res = await main();
  const bad = printSummary(res);
  mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
  const file = join(ROOT, `bench/results/chaos-${res.date.slice(0, 10)}.jsonl`);
  writeFileSync(file, `${JSON.stringify(res)}\n`, { flag: 'a' });
  console.log(`result appended to ${file}`);
  if (bad && !KEEP) console.log(`temp folder kept for inspection: ${dir} (passphrase: MURMURE_PASSPHRASE, or '${PASSPHRASE === process.env.MURMURE_PASSPHRASE ? '(yours)' : PASSPHRASE}')`);
  if (KEEP) console.log(`temp folder kept: ${dir}`);
  if (!bad && !KEEP) rmSync(dir, { recursive: true, force: true });
} catch (e) {
  console.error(`chaos bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  console.error(`temp folder kept: ${dir}`);
  exitCode = 1;
}
cleanupProcesses();
closeSync(relayLogFd);
process.exit(exitCode);
