#!/usr/bin/env node
// SPDX-License-Identifier: AGPL-3.0-or-later
// `npm run bench:client`: one-way messages/s through the full client stack (envelope,
// libsignal, per-queue box, padding, durable outbox, relay, relay box, decrypt, integrity
// check, store commit, ACK) between two agents over a real relay process on loopback, beside
// bare libsignal encrypt+decrypt on the same machine. Prints figures; not a test.
//
// Env: BENCH_MESSAGES (default 3000), BENCH_RECEIPTS=0 to turn delivery receipts off,
// BENCH_ONLY=two,one,bare to run only some of the rows, BENCH_NO_RESULTS=1 to write no results,
// BENCH_RELAY_NODE_ARGS to give the relay's node options (for example --cpu-prof).
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { AGENT_MIGRATIONS, Agent, LocalDatabase } from '@murmure/agent';
import { ProtocolState, createPreKeys, decrypt, encrypt, generateIdentity, startSession } from '@murmure/crypto';

import { MURMURE_BIN, appendResult, envList, procCpuUs, relayNodeArgs, resultsFile } from './lib.mjs';

const N = Number(process.env.BENCH_MESSAGES ?? 3000);
const RECEIPTS = process.env.BENCH_RECEIPTS !== '0';
const ONLY = envList('BENCH_ONLY', ['two', 'one', 'bare']);
const dir = mkdtempSync(join(tmpdir(), 'murmure-client-bench-'));

function startRelay() {
  const proc = spawn(process.execPath, [...relayNodeArgs(), MURMURE_BIN, 'relay', 'start', '--data', join(dir, 'relay'), '--port', '0', '--json', '--log-level', 'warn', '--metrics-port', '0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    createInterface({ input: proc.stdout }).once('line', (l) => {
      const first = JSON.parse(l);
      resolve({ proc, address: first.address, metricsPort: first.metricsPort ?? null });
    });
    proc.once('exit', (c) => reject(new Error(`relay exited ${c}`)));
  });
}

function makeAgent(name) {
  return makeAgentIn(dir, name);
}

function makeAgentIn(folder, name) {
  const db = LocalDatabase.open(join(folder, `${name}.db`), new Uint8Array(randomBytes(32)), AGENT_MIGRATIONS);
  db.db.exec('CREATE TABLE IF NOT EXISTS bench_inbox (seq INTEGER PRIMARY KEY, body BLOB)');
  const insert = db.db.prepare('INSERT OR IGNORE INTO bench_inbox (seq, body) VALUES (?, ?)');
  let received = 0;
  let onAll = null;
  const agent = new Agent({
    db,
    handler: {
      incoming: (ev) => {
        if (ev.type !== 'message') return;
        insert.run([ev.seq, ev.payload]);
        received++;
        if (received === N && onAll) onAll();
      },
      sent: () => {},
      connected: () => {},
      failed: () => {},
      replyPayload: () => new TextEncoder().encode(`{"v":1,"type":"profile","name":"${name}"}`),
    },
  });
  return {
    agent,
    db,
    allReceived: () => new Promise((r) => (received >= N ? r() : (onAll = r))),
  };
}

/** The relay's counters (commands and errors by type, blocks), or null if its endpoint does not answer. */
async function relayCounters(port) {
  if (port === null) return null;
  try {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const counts = {};
    for (const m of text.matchAll(/^murmure_(commands_total\{command="(\w+)"\}|errors_total\{code="(\w+)"\}|blocks_(in|out)_total|store_commits_total) (\d+)$/gm)) {
      const name = m[2] !== undefined ? m[2] : m[3] !== undefined ? `ERR ${m[3]}` : m[4] !== undefined ? `blocks ${m[4]}` : 'commits';
      counts[name] = Number(m[5]);
    }
    return counts;
  } catch {
    return null;
  }
}

/** Counters `after` minus `before`, per message. */
function perMessage(before, after) {
  if (before === null || after === null) return null;
  return Object.fromEntries(Object.entries(after).map(([k, v]) => [k, Math.round((100 * (v - (before[k] ?? 0))) / N) / 100]));
}

async function until(f) {
  while (!f()) await new Promise((r) => setTimeout(r, 10));
}

async function fullStack(address) {
  const a = makeAgent('sender');
  const b = makeAgent('receiver');
  a.agent.start();
  b.agent.start();
  const { connId: bConn, link } = await b.agent.createInvitation(address);
  const aConn = await a.agent.join(link, address, new TextEncoder().encode('{"v":1,"type":"profile","name":"sender"}'));
  await until(() => a.agent.connections().find((c) => c.id === aConn)?.status === 'connected');
  await until(() => b.agent.connections().find((c) => c.id === bConn)?.status === 'connected');
  if (!RECEIPTS) b.agent.setReceipts(bConn, false);
  const body = new Uint8Array(100).fill(0x61);
  const done = b.allReceived();
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < N; i++) {
    await a.agent.send(aConn, body);
    if (i % 50 === 49) await new Promise((r) => setImmediate(r));
  }
  const tStored = performance.now();
  await done;
  const t1 = performance.now();
  const cpu = process.cpuUsage(cpu0);
  await a.agent.stop();
  await b.agent.stop();
  a.db.close();
  b.db.close();
  return { seconds: (t1 - t0) / 1000, composeSeconds: (tStored - t0) / 1000, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
}

async function bareLibsignal() {
  const mem = () => {
    const rows = new Map();
    return { source: { load: (k, key) => rows.get(`${k}/${key}`) }, commit: (ws) => ws.forEach((w) => (w.value === null ? rows.delete(`${w.kind}/${w.key}`) : rows.set(`${w.kind}/${w.key}`, w.value))) };
  };
  const am = mem();
  const bm = mem();
  const alice = new ProtocolState(generateIdentity(), am.source);
  const bob = new ProtocolState(generateIdentity(), bm.source);
  const bundle = createPreKeys(bob, { oneTime: true });
  bm.commit(bob.takeWrites());
  await startSession(alice, bundle);
  am.commit(alice.takeWrites());
  const first = await encrypt(alice, bob.local.name, new Uint8Array(100));
  am.commit(alice.takeWrites());
  await decrypt(bob, alice.local.name, first.type, first.body);
  bm.commit(bob.takeWrites());
  const body = new Uint8Array(100).fill(0x61);
  const t0 = performance.now();
  for (let i = 0; i < N; i++) {
    const m = await encrypt(alice, bob.local.name, body);
    am.commit(alice.takeWrites());
    await decrypt(bob, alice.local.name, m.type, m.body);
    bm.commit(bob.takeWrites());
  }
  return { seconds: (performance.now() - t0) / 1000 };
}

// Receiver mode: a second process, as a second client would be.
if (process.argv[2] === 'receiver') {
  const [, , , address, rdir] = process.argv;
  const { agent, db, allReceived } = makeAgentIn(rdir, 'receiver-process');
  agent.start();
  const { connId, link } = await agent.createInvitation(address);
  process.send({ link });
  await until(() => agent.connections().find((c) => c.id === connId)?.status === 'connected');
  if (!RECEIPTS) agent.setReceipts(connId, false);
  process.send({ connected: true });
  const cpu0 = process.cpuUsage();
  await allReceived();
  const cpu = process.cpuUsage(cpu0);
  process.send({ done: performance.timeOrigin + performance.now(), cpuSeconds: (cpu.user + cpu.system) / 1e6 });
  await new Promise((r) => setTimeout(r, 300));
  await agent.stop();
  db.close();
  process.exit(0);
}

async function twoProcesses(address, relayPid, metricsPort) {
  const { fork } = await import('node:child_process');
  const child = fork(new URL(import.meta.url).pathname, ['receiver', address, dir], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const msgs = [];
  const next = () => new Promise((r) => (msgs.length > 0 ? r(msgs.shift()) : child.once('message', r)));
  const { link } = await next();
  const a = makeAgentIn(dir, 'sender-process');
  a.agent.start();
  const aConn = await a.agent.join(link, address, new TextEncoder().encode('{"v":1,"type":"profile","name":"sender"}'));
  await until(() => a.agent.connections().find((c) => c.id === aConn)?.status === 'connected');
  await next();
  const body = new Uint8Array(100).fill(0x61);
  const t0 = performance.timeOrigin + performance.now();
  const cpu0 = process.cpuUsage();
  const relayCpu0 = procCpuUs(relayPid);
  const counts0 = await relayCounters(metricsPort);
  for (let i = 0; i < N; i++) {
    await a.agent.send(aConn, body);
    if (i % 50 === 49) await new Promise((r) => setImmediate(r));
  }
  const done = await next();
  const cpu = process.cpuUsage(cpu0);
  const relayCpu = (procCpuUs(relayPid) - relayCpu0) / 1e6;
  const relayPerMessage = perMessage(counts0, await relayCounters(metricsPort));
  await a.agent.stop();
  a.db.close();
  await new Promise((r) => child.once('exit', r));
  return { seconds: (done.done - t0) / 1000, senderCpu: (cpu.user + cpu.system) / 1e6, receiverCpu: done.cpuSeconds, relayCpu, relayPerMessage };
}

const relay = await startRelay();
try {
  const bare = ONLY.includes('bare') ? await bareLibsignal() : null;
  const full = ONLY.includes('one') ? await fullStack(relay.address) : null;
  const two = ONLY.includes('two') ? await twoProcesses(relay.address, relay.proc.pid, relay.metricsPort) : null;
  const rate = (r) => (r === null ? null : N / r.seconds);
  const [twoRate, fullRate, bareRate] = [rate(two), rate(full), rate(bare)];
  const rows = [];
  if (two !== null) rows.push(['full stack, two client processes, one way', `${twoRate.toFixed(0)} msg/s`, `${N} msgs in ${two.seconds.toFixed(2)} s; CPU sender ${two.senderCpu.toFixed(2)} s, receiver ${two.receiverCpu.toFixed(2)} s, relay ${two.relayCpu.toFixed(2)} s; receipts ${RECEIPTS ? 'on' : 'off'}`]);
  if (full !== null) rows.push(['full stack, both clients in one process', `${fullRate.toFixed(0)} msg/s`, `${N} msgs in ${full.seconds.toFixed(2)} s; sender composed all in ${full.composeSeconds.toFixed(2)} s; both agents' CPU ${full.cpuSeconds.toFixed(2)} s`]);
  if (bare !== null) rows.push(['bare libsignal encrypt+decrypt (same direction)', `${bareRate.toFixed(0)} msg/s`, `${N} msgs in ${bare.seconds.toFixed(2)} s, in-memory stores`]);
  if (two !== null && bare !== null) rows.push(['ratio full (two processes) / bare', (twoRate / bareRate).toFixed(2), 'target: full stack >= 1,000 msg/s']);
  for (const [what, value, note] of rows) console.log(`${what.padEnd(50)} ${value.padStart(12)}   ${note}`);
  if (two?.relayPerMessage) console.log(`relay work per message (two processes): ${Object.entries(two.relayPerMessage).filter(([, v]) => v !== 0).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  const date = new Date().toISOString();
  const round = (x) => (x === null ? null : Math.round(x));
  const line = {
    bench: 'client', date, node: process.version, messages: N, receipts: RECEIPTS,
    twoProcessMsgsPerSec: round(twoRate), oneProcessMsgsPerSec: round(fullRate), bareMsgsPerSec: round(bareRate),
    ratio: twoRate === null || bareRate === null ? null : twoRate / bareRate,
    cpuSecondsTwoProcess: two === null ? null : { sender: two.senderCpu, receiver: two.receiverCpu, relay: two.relayCpu },
    relayPerMessageTwoProcess: two?.relayPerMessage ?? null,
  };
  if (process.env.BENCH_NO_RESULTS !== '1') appendResult(resultsFile('client', date), line);
} finally {
  relay.proc.kill('SIGTERM');
  await new Promise((r) => relay.proc.once('exit', r));
  rmSync(dir, { recursive: true, force: true });
}
