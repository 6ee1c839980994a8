#!/usr/bin/env node
// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * bench:flood — what a flood of refused authorisations costs an honest conversation (threat
 * model S1/S1b). A relay with its default limits, over TLS; an honest pair sends a message every
 * BENCH_FLOOD_HONEST_MS (50 ms) and the one-way SEND→MSG latency is measured without the flood,
 * then while flooder processes keep `SUB`s for random queue ids with random keys in flight on
 * BENCH_FLOOD_CONNS (16) connections: each costs the relay a queue lookup, a key agreement with
 * the dummy key and a refused check. Two scenarios:
 * - `many`: the flood's connections come from loopback, which the relay does not limit per
 *   source by default (a local proxy or onion service brings every client from there): each
 *   connection is a source of its own, held by its command rate (ERR AUTH costs
 *   AUTH_FAILURE_TOKENS) and by the turns;
 * - `one`: the relay limits loopback per source (`--unlimited-sources none`), the flood comes
 *   from 127.0.0.2 and the pair from 127.0.0.1: the flood shares one refusal budget.
 * Prints, per scenario: honest p50/p99/max before and during the flood, the flood's answers per
 * second (AUTH: checks made and refused; LIMIT: refused before any check), relay CPU and RSS.
 * Passes or fails nothing. With 2 CPUs or more the relay is pinned to the last one and the
 * flooders to the others (BENCH_PIN=none: unpinned).
 */

import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus as cpuList, setPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { connect as netConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { fileURLToPath } from 'node:url';

import { RelayClient, RelayClientError, openDelivered } from '@murmure/agent';
import { generateDhKeyPair, randomId } from '@murmure/queue-crypto';

import { launchRelay, murmureVersion } from './compare/murmure.mjs';
import { allCpus, killLiveServers, pinProcess } from './compare/proc.mjs';
import { Samples, appendResult, envList, envNum, percentile, procCpuUs, procRssKiB, resultsFile, round, runMain, sleep } from './lib.mjs';

const SELF = fileURLToPath(import.meta.url);
/** The flooder's nice value (the driver's is 0). */
const FLOODER_NICE = 10;

function settings() {
  return {
    only: envList('BENCH_ONLY', ['many', 'one']),
    conns: envNum('BENCH_FLOOD_CONNS', 16),
    depth: envNum('BENCH_FLOOD_DEPTH', 64),
    honestMs: envNum('BENCH_FLOOD_HONEST_MS', 50),
    baseS: envNum('BENCH_FLOOD_BASE_S', 5),
    durationS: envNum('BENCH_DURATION_S', 10),
    pin: process.env.BENCH_PIN !== 'none',
    writeResults: process.env.BENCH_NO_RESULTS !== '1',
  };
}

/** Connection options that make a client connect from `local` (an address of 127.0.0.0/8). */
function from(local) {
  return {
    createConnection: (o) => tlsConnect({ ...o, socket: netConnect({ host: o.host ?? '127.0.0.1', port: o.port ?? 0, localAddress: local }) }),
  };
}

// ---------------------------------------------------------------------------------------------
// The flooder (a child process): keeps `depth` bad SUBs in flight on each of its connections.

async function flooder() {
  const cfg = JSON.parse(process.argv[3]);
  // One key for every SUB: the client makes one key agreement and a MAC per command; the relay
  // makes a key agreement per random id (its cache is by id) and refuses the check.
  const key = generateDhKeyPair().privateKey;
  const counts = { AUTH: 0, LIMIT: 0, other: 0 };
  let running = true;
  const clients = await Promise.all(Array.from({ length: cfg.conns }, () => RelayClient.connect(cfg.address, { ...from(cfg.local), commandTimeoutMs: 60_000 })));
  const one = (c) => {
    if (!running || c.isClosed) return;
    c.command(randomId(), { type: 'SUB' }, { kind: 'authenticator', key }).then(
      () => counts.other++,
      (e) => {
        if (RelayClientError.is(e, 'AUTH') || RelayClientError.is(e, 'LIMIT')) counts[e.code]++;
        else counts.other++;
      },
    ).finally(() => one(c));
  };
  process.on('message', (m) => {
    if (m === 'start') for (const c of clients) for (let i = 0; i < cfg.depth; i++) one(c);
    else if (m === 'count') process.send({ ...counts });
    else if (m === 'stop') {
      running = false;
      // Those the relay closed, counted before this side closes the rest.
      const closedByRelay = clients.filter((c) => c.isClosed).length;
      for (const c of clients) c.close();
      process.send({ ...counts, closedByRelay }, () => process.exit(0));
    }
  });
  // The bench stopped without telling: nothing keeps flooding.
  process.on('disconnect', () => process.exit(0));
  process.send('ready');
}

function startFlooder(address, local, cfg, cpus) {
  const child = fork(SELF, ['--flooder', JSON.stringify({ address, local, conns: cfg.conns, depth: cfg.depth })], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  if (cpus !== null) pinProcess(child.pid, cpus);
  // The flooder shares its core with the honest pair's clients: at a lower priority it takes only
  // what they leave, so their latency is the relay's, not that of a busy driver core.
  setPriority(child.pid, FLOODER_NICE);
  const next = () => new Promise((resolve, reject) => {
    child.once('message', resolve);
    child.once('exit', (code) => reject(new Error(`the flooder exited (${code})`)));
  });
  return {
    child,
    ready: next(),
    start: () => child.send('start'),
    count: () => {
      const p = next();
      child.send('count');
      return p;
    },
    stop: () => {
      const p = next();
      child.send('stop');
      return p;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The honest pair: one queue, a message every `honestMs`, latency from send() to the MSG event.

async function honestPair(address, local) {
  const opts = from(local);
  const sub = await RelayClient.connect(address, opts);
  const snd = await RelayClient.connect(address, opts);
  const q = await sub.createQueue();
  const senderKey = generateDhKeyPair();
  await sub.secure(q, senderKey.publicKey);
  const sentAt = new Map();
  let samples = new Samples();
  let lost = 0;
  sub.on('message', (m) => {
    const b = openDelivered(q, m.msgId, m.body).body;
    const seq = new DataView(b.buffer, b.byteOffset, b.length).getUint32(0);
    const t = sentAt.get(seq);
    if (t !== undefined) {
      samples.push(performance.now() - t);
      sentAt.delete(seq);
    }
    sub.ack(q, m.msgId).catch(() => undefined);
  });
  await sub.subscribe(q);
  let seq = 0;
  let timer = null;
  return {
    run(everyMs) {
      timer = setInterval(() => {
        const body = new Uint8Array(100);
        new DataView(body.buffer).setUint32(0, ++seq);
        sentAt.set(seq, performance.now());
        snd.send(q.sndId, senderKey.privateKey, body).catch(() => lost++);
      }, everyMs);
    },
    /** The latencies since the last call, and how many messages are still on their way. */
    take() {
      const s = samples.sorted();
      samples = new Samples();
      return { n: s.length, p50: round(percentile(s, 50), 1), p99: round(percentile(s, 99), 1), max: round(s.length === 0 ? NaN : s[s.length - 1], 1), unanswered: sentAt.size, sendErrors: lost };
    },
    stop() {
      clearInterval(timer);
      sub.close();
      snd.close();
    },
  };
}

// ---------------------------------------------------------------------------------------------

async function scenario(cfg, name, cpus) {
  const oneSource = name === 'one';
  const dir = mkdtempSync(join(tmpdir(), 'bench-flood-'));
  const flags = ['--log-level', 'warn', ...(oneSource ? ['--unlimited-sources', 'none'] : [])];
  const relay = await launchRelay(`flood-${name}`, dir, false, cpus.relay, flags);
  const address = relay.endpoint.address;
  let flood = null;
  try {
    const pair = await honestPair(address, '127.0.0.1');
    pair.run(cfg.honestMs);
    await sleep(1000);
    pair.take();
    await sleep(cfg.baseS * 1000);
    const base = pair.take();
    flood = startFlooder(address, oneSource ? '127.0.0.2' : '127.0.0.1', cfg, cpus.driver);
    await flood.ready;
    const rss0 = procRssKiB(relay.pid);
    flood.start();
    await sleep(1000); // the flood settles
    pair.take();
    const c0 = await flood.count();
    const cpu0 = procCpuUs(relay.pid);
    const t0 = performance.now();
    await sleep(cfg.durationS * 1000);
    const during = pair.take();
    const c1 = await flood.count();
    const seconds = (performance.now() - t0) / 1000;
    const cores = (procCpuUs(relay.pid) - cpu0) / 1e6 / seconds;
    const rss1 = procRssKiB(relay.pid);
    const end = await flood.stop();
    flood = null;
    await sleep(1000);
    const after = pair.take();
    pair.stop();
    const perS = (k) => round((c1[k] - c0[k]) / seconds, 0);
    const line = {
      scenario: name,
      honest: { before: base, during, after },
      flood: { authPerS: perS('AUTH'), limitPerS: perS('LIMIT'), otherPerS: perS('other'), connectionsClosedByRelay: end.closedByRelay ?? null },
      relay: { cores: round(cores, 2), rssKiB: { before: rss0, during: rss1 } },
    };
    console.log(`${name === 'one' ? 'one source (refusal budget shared)' : 'each connection its own source'}: ${cfg.conns} connections × ${cfg.depth} bad SUBs in flight`);
    console.log(`  honest SEND→MSG, no flood:  p50 ${base.p50} ms, p99 ${base.p99} ms, max ${base.max} ms (${base.n} messages)`);
    console.log(`  honest SEND→MSG, flooded:   p50 ${during.p50} ms, p99 ${during.p99} ms, max ${during.max} ms (${during.n} messages, ${during.unanswered} unanswered)`);
    console.log(`  flood answered: ${line.flood.authPerS}/s ERR AUTH (checked), ${line.flood.limitPerS}/s ERR LIMIT; relay ${line.relay.cores} cores, RSS ${rss0} → ${rss1} KiB`);
    return line;
  } finally {
    if (flood !== null) await flood.stop().catch(() => undefined);
    await relay.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main() {
  const cfg = settings();
  const all = allCpus();
  const last = all === '0' ? null : all.split('-').pop();
  const pinned = cfg.pin && last !== null;
  const cpus = pinned ? { relay: last, driver: `0-${Number(last) - 1}` } : { relay: null, driver: null };
  if (pinned) pinProcess(process.pid, cpus.driver);
  const runId = new Date().toISOString();
  const file = resultsFile('flood', runId);
  console.log(`bench:flood, relay ${pinned ? `pinned to CPU ${cpus.relay}, driver and flooders to ${cpus.driver}` : 'unpinned'}; ${cfg.durationS} s of flood, an honest message every ${cfg.honestMs} ms`);
  for (const name of cfg.only) {
    if (name !== 'many' && name !== 'one') throw new Error(`unknown scenario ${name}: many or one`);
    const line = await scenario(cfg, name, cpus);
    if (cfg.writeResults) appendResult(file, { bench: 'flood', runId, revision: murmureVersion(), cpu: cpuList()[0]?.model ?? null, node: process.version, pinned, settings: cfg, ...line });
  }
}

if (process.argv[2] === '--flooder') await flooder();
else await runMain(main, killLiveServers);
