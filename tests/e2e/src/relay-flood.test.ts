// SPDX-License-Identifier: AGPL-3.0-or-later
// Floods, on a relay with its default limits. S2 at scale: 20,000 TCP connections that never
// start TLS, against the default limit of 16,000: the limit holds, the connections already
// established keep working, a new honest client gets in (the oldest unfinished handshakes make
// room), and memory stays bounded; the flood is smaller where the machine's file limit is lower,
// and the test says so. S1 sustained: queue creation as fast as two processes can go, while an
// honest pair keeps talking: its latency and the relay's memory stay bounded; the same against
// a relay with a creation password, whose creators have only the address without it; and NEWs
// offered at THREATS' 10,000 a second for 60 s by replaying a signed NEW, far more than the relay
// can make, which its turns keep from holding up the honest pair; and the same replay for 15 s over
// 32 connections, of one source (loopback limited per source for it) or of 32 (each loopback
// connection its own source, as behind an onion service), which the turns per source and the
// budget per pass keep from holding up the honest pair by a turn per connection.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test, type TestContext } from 'node:test';

import { RelayClient, openDelivered, type PushedMessage } from '@murmure/agent';
import { DEFAULTS } from '@murmure/relay';
import { formatRelayAddress, parseRelayAddress } from '@murmure/protocol';
import { generateDhKeyPair } from '@murmure/queue-crypto';

import { cleanup, metric, sleep, startRelay, stopRelay, utf8 } from './harness.js';
import { rssKiB, withTimeout } from './wire.js';

/** Connections the flood opens where the file limit allows (THREATS.md S2). */
const FLOOD = 20_000;
/** Processes that hold the flood's connections, so that none needs more descriptors than the limit. */
const HOLDERS = 4;

/** The soft limit of open files, which every process here inherits. */
function openFileLimit(): number {
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  return m === null || m[1] === 'unlimited' ? Number.MAX_SAFE_INTEGER : Number(m[1]);
}

/** A process that opens `n` TCP connections to the port and holds them, reporting over IPC. */
function holder(port: number, n: number): { proc: ChildProcess; state: { connected: number; closed: number; failed: number } } {
  const code = `
    const net = require('node:net');
    const [port, n] = process.argv.slice(1).map(Number);
    const s = { connected: 0, closed: 0, failed: 0 };
    let next = 0;
    const open = () => {
      if (next >= n) return;
      next++;
      const c = net.connect(port, '127.0.0.1');
      c.on('connect', () => { s.connected++; open(); });
      c.on('error', () => { s.failed++; });
      c.on('close', () => { s.closed++; });
    };
    for (let i = 0; i < 64; i++) open();
    setInterval(() => process.send(s), 100);
    process.on('disconnect', () => process.exit(0));
  `;
  const proc = spawn(process.execPath, ['-e', code, String(port), String(n)], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const state = { connected: 0, closed: 0, failed: 0 };
  proc.on('message', (m) => Object.assign(state, m));
  return { proc, state };
}

test('S2: 20,000 connections that never start TLS against a limit of 16,000: the limit holds, established clients are served, a new client gets in, memory is bounded', { timeout: 180_000 }, async (t) => {
  // The relay needs a descriptor per connection it holds, and each holder one per connection.
  const limit = openFileLimit();
  const maxConnections = Math.min(DEFAULTS.maxConnections, limit - 500);
  const flood = Math.min(FLOOD, Math.floor(maxConnections * 1.25), HOLDERS * (limit - 200));
  const perHolder = Math.ceil(flood / HOLDERS);
  assert.ok(perHolder < limit - 100, 'each holder fits its connections in the file limit');
  t.diagnostic(`open file limit ${limit}: ${flood} connections against a limit of ${maxConnections}`);
  // The handshake deadline far off: on a slow machine the flood may take longer than the default
  // 10 s, and deadlines would then free slots that eviction is meant to free.
  const args = ['--metrics-port', '0', '--max-connections', String(maxConnections), '--handshake-timeout-ms', '120000'];
  const relay = await startRelay({ args });
  const holders: ReturnType<typeof holder>[] = [];
  try {
    // Established before the flood: Alice subscribed to her queue.
    const alice = await RelayClient.connect(relay.address);
    const q = await alice.createQueue();
    const senderKey = generateDhKeyPair();
    await alice.secure(q, senderKey.publicKey);
    await alice.subscribe(q);
    const inbox: PushedMessage[] = [];
    alice.on('message', (m: PushedMessage) => inbox.push(m));
    const rssBefore = rssKiB(relay.proc.pid!);

    for (let i = 0; i < HOLDERS; i++) holders.push(holder(relay.port, Math.min(perHolder, flood - i * perHolder)));
    const start = performance.now();
    const settled = (): boolean => holders.reduce((n, h) => n + h.state.connected + h.state.failed, 0) >= flood;
    while (!settled() && performance.now() - start < 120_000) await sleep(200);
    const connected = holders.reduce((n, h) => n + h.state.connected, 0);
    t.diagnostic(`${connected} of ${flood} connected in ${((performance.now() - start) / 1000).toFixed(1)} s`);
    assert.equal(connected, flood, 'the kernel accepted every connection');
    // Connections the kernel completed may still wait in the backlog: the relay accepts them,
    // evicts as many, and the holders report the closes (every 100 ms). Until that is done or
    // 30 s have passed.
    let evicted = 0;
    let held = connected;
    for (const until = performance.now() + 30_000; performance.now() < until; await sleep(200)) {
      evicted = await metric(relay.metricsPort!, 'murmure_handshakes_evicted_total');
      held = connected - holders.reduce((n, h) => n + h.state.closed, 0);
      if (held <= maxConnections && evicted >= flood - maxConnections) break;
    }
    t.diagnostic(`held open: ${held}, evicted: ${evicted}`);
    assert.ok(held <= maxConnections, `at most ${maxConnections} connections are held (${held})`);
    assert.ok(evicted >= flood - maxConnections, 'the connections past the limit made room by closing the oldest handshakes');

    // A new client gets in during the flood, and Alice, established before it, is served.
    const bobStart = performance.now();
    const bob = await RelayClient.connect(relay.address, { timeoutMs: 10_000 });
    t.diagnostic(`a new client connected in ${(performance.now() - bobStart).toFixed(0)} ms during the flood`);
    await bob.send(q.sndId, senderKey.privateKey, utf8('through the flood'));
    await withTimeout(
      (async () => {
        while (inbox.length === 0) await sleep(10);
      })(),
      10_000,
      'the message reached Alice',
    );
    assert.equal(Buffer.from(openDelivered(q, inbox[0]!.msgId, inbox[0]!.body).body).toString(), 'through the flood');
    await alice.ack(q, inbox[0]!.msgId);
    const rssDuring = rssKiB(relay.proc.pid!);
    const perConnection = ((rssDuring - rssBefore) * 1024) / Math.max(1, held);
    t.diagnostic(`relay RSS ${(rssBefore / 1024).toFixed(0)} MiB before, ${(rssDuring / 1024).toFixed(0)} MiB with the flood held (${(perConnection / 1024).toFixed(1)} KiB per connection)`);
    assert.ok(perConnection < 64 * 1024, 'a connection that never started TLS holds less than 64 KiB');

    for (const h of holders) h.proc.kill();
    bob.close();
    alice.close();
    assert.equal(relay.proc.exitCode, null, 'the relay process is alive');
  } finally {
    for (const h of holders) h.proc.kill('SIGKILL');
    assert.equal(await stopRelay(relay), 0, 'SIGTERM exits with 0');
    cleanup(relay.dataDir);
  }
});

/** A process that creates queues as fast as it can for `seconds`, 50 in flight on each of two connections, reconnecting after each 1,000 (the per-connection limit). */
function creator(address: string, seconds: number): { proc: ChildProcess; done: Promise<{ created: number; errors: number }> } {
  const code = `
    import { RelayClient } from '@murmure/agent';
    const [address, seconds] = process.argv.slice(1);
    const end = Date.now() + Number(seconds) * 1000;
    let created = 0, errors = 0;
    const worker = async () => {
      while (Date.now() < end) {
        let c;
        try { c = await RelayClient.connect(address, { timeoutMs: 30000 }); } catch { errors++; continue; }
        for (let n = 0; n < 1000 && Date.now() < end; n += 50) {
          const rs = await Promise.allSettled(Array.from({ length: 50 }, () => c.createQueue()));
          for (const r of rs) if (r.status === 'fulfilled') created++; else errors++;
        }
        c.close();
      }
    };
    await Promise.all([worker(), worker()]);
    process.send({ created, errors }, () => process.exit(0));
  `;
  const proc = spawn(process.execPath, ['--input-type=module', '-e', code, address, String(seconds)], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const done = new Promise<{ created: number; errors: number }>((resolve, reject) => {
    proc.once('message', (m) => resolve(m as { created: number; errors: number }));
    proc.once('exit', (c) => reject(new Error(`creator exited with ${c}`)));
  });
  done.catch(() => undefined);
  return { proc, done };
}

/** How long the S1 floods of real creators last (THREATS.md names 60 s, which the replay flood runs). */
const S1_SECONDS = 15;
/** THREATS.md S1: NEWs offered a second, and for how long. */
const S1_RATE = 10_000;
const S1_FULL_SECONDS = 60;
/** Connections of the replay floods from one source and from many. */
const BUSY_CONNECTIONS = 32;

/** What a flooding process reports: queues made, errors, and for the replay flood what it offered and held back. */
type FloodResult = { created: number; errors: number; offered?: number; skipped?: number };

/**
 * The cheapest flood of NEWs: a process that signs one NEW per connection and sends it again
 * and again, `rate` a second in all over `conns` connections, reconnecting after each 1,000 (the
 * per-connection limit). It holds back (and counts as skipped) what it would offer while 500 of
 * a connection's are unanswered, rather than queue them without end.
 */
function replayer(port: number, rate: number, seconds: number, conns: number, from = '127.0.0.1'): { proc: ChildProcess; done: Promise<FloodResult> } {
  const code = `
    import WebSocket from 'ws';
    import { SESSION_EXPORTER_LABEL, RELAY_VERSION_MAX, authorizedBytes, decodeBlock, decodeResponse, decodeServerHello, decodeServerTransmission, encodeBlock, encodeClientHello, encodeClientTransmission, encodeCommand } from '@murmure/protocol';
    import { generateDhKeyPair, generateSigningKeyPair, randomId, signBytes } from '@murmure/queue-crypto';
    const [port, rate, seconds, conns] = process.argv.slice(1, 5).map(Number);
    const localAddress = process.argv[5];
    const end = Date.now() + seconds * 1000;
    const r = { created: 0, errors: 0, offered: 0, skipped: 0 };
    const perTick = rate / 100 / conns;
    const connect = () => new Promise((resolve, reject) => {
      const ws = new WebSocket('wss://127.0.0.1:' + port + '/', { rejectUnauthorized: false, perMessageDeflate: false, localAddress });
      ws.binaryType = 'nodebuffer';
      let sid;
      ws.once('upgrade', (res) => { sid = new Uint8Array(res.socket.exportKeyingMaterial(32, SESSION_EXPORTER_LABEL, Buffer.alloc(0))); });
      ws.once('message', (data) => {
        decodeServerHello(new Uint8Array(data));
        ws.send(encodeClientHello({ version: RELAY_VERSION_MAX }));
        const sig = generateSigningKeyPair();
        const command = encodeCommand({ type: 'NEW', rcvSigKey: sig.publicKey, rcvAuthKey: generateDhKeyPair().publicKey, rcvDhKey: generateDhKeyPair().publicKey });
        const corrId = randomId(24);
        const bytes = signBytes(sig.privateKey, authorizedBytes(sid, corrId, new Uint8Array(0), command));
        resolve({ ws, t: encodeClientTransmission({ auth: { kind: 'signature', bytes }, corrId, entityId: new Uint8Array(0), command }) });
      });
      ws.once('error', reject);
    });
    const worker = async () => {
      while (Date.now() < end) {
        let c;
        try { c = await connect(); } catch { r.errors++; continue; }
        let sent = 0, answered = 0, carry = 0;
        c.ws.on('message', (data) => {
          for (const raw of decodeBlock(new Uint8Array(data))) {
            answered++;
            if (decodeResponse(decodeServerTransmission(raw).response).type === 'IDS') r.created++; else r.errors++;
          }
        });
        c.ws.on('error', () => {});
        await new Promise((done) => {
          const timer = setInterval(() => {
            if (Date.now() >= end || sent >= 1000) { clearInterval(timer); done(); return; }
            carry += perTick;
            let n = Math.floor(carry);
            carry -= n;
            n = Math.min(n, 1000 - sent);
            if (sent - answered > 500) { r.skipped += n; return; }
            for (let i = 0; i < n; i += 60) c.ws.send(encodeBlock(Array(Math.min(60, n - i)).fill(c.t)));
            sent += n;
            r.offered += n;
          }, 10);
        });
        const waitFrom = Date.now();
        while (answered < sent && Date.now() - waitFrom < 5000) await new Promise((w) => setTimeout(w, 20));
        c.ws.close();
      }
    };
    await Promise.all(Array.from({ length: conns }, worker));
    process.send(r, () => process.exit(0));
  `;
  const proc = spawn(process.execPath, ['--input-type=module', '-e', code, String(port), String(rate), String(seconds), String(conns), from], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const done = new Promise<FloodResult>((resolve, reject) => {
    proc.once('message', (m) => resolve(m as FloodResult));
    proc.once('exit', (c) => reject(new Error(`replayer exited with ${c}`)));
  });
  done.catch(() => undefined);
  return { proc, done };
}

/**
 * The S1 flood, by two processes of real clients (`creators`) or of NEWs replayed at THREATS'
 * rate (`replay`). With `password`, the relay asks for one and the creators have only the
 * address without it: every NEW of theirs is refused, and none makes a queue.
 */
async function s1Flood(t: TestContext, password: string | null, kind: 'creators' | 'replay' | 'one-source' | 'many-sources' = 'creators'): Promise<void> {
  const seconds = kind === 'replay' ? S1_FULL_SECONDS : S1_SECONDS;
  // One source: loopback limited per source like any address, the flood from 127.0.0.2, the
  // honest pair from 127.0.0.1. Many sources: loopback unlimited (as behind a local proxy or an
  // onion service), so each connection of the flood takes turns as a source of its own.
  const sourceArgs = kind === 'one-source' ? ['--unlimited-sources', 'none'] : [];
  const relay = await startRelay({ args: ['--metrics-port', '0', ...sourceArgs, ...(password === null ? [] : ['--password', password])] });
  const creators: { proc: ChildProcess; done: Promise<FloodResult> }[] = [];
  try {
    const alice = await RelayClient.connect(relay.address);
    const bob = await RelayClient.connect(relay.address);
    const strangers = formatRelayAddress(parseRelayAddress(relay.address));
    const q = await alice.createQueue();
    const senderKey = generateDhKeyPair();
    await alice.secure(q, senderKey.publicKey);
    const sentAt = new Map<string, number>();
    const latencies: number[] = [];
    alice.on('message', (m: PushedMessage) => {
      const text = Buffer.from(openDelivered(q, m.msgId, m.body).body).toString();
      const at = sentAt.get(text);
      if (at !== undefined) latencies.push(performance.now() - at);
      alice.ack(q, m.msgId).catch(() => undefined);
    });
    await alice.subscribe(q);
    const rssBefore = rssKiB(relay.proc.pid!);
    const createdBefore = await metric(relay.metricsPort!, 'murmure_queues_created_total');

    if (kind === 'one-source') creators.push(replayer(relay.port, S1_RATE, seconds, BUSY_CONNECTIONS, '127.0.0.2'));
    else if (kind === 'many-sources') creators.push(replayer(relay.port, S1_RATE, seconds, BUSY_CONNECTIONS));
    else for (let i = 0; i < 2; i++) creators.push(kind === 'creators' ? creator(strangers, seconds) : replayer(relay.port, S1_RATE / 2, seconds, 4));
    // The honest pair: a message every 50 ms, timed from SEND to MSG.
    let rssPeak = rssBefore;
    let seq = 0;
    const end = performance.now() + seconds * 1000;
    while (performance.now() < end) {
      const text = `honest ${seq++}`;
      sentAt.set(text, performance.now());
      bob.send(q.sndId, senderKey.privateKey, utf8(text)).catch(() => undefined);
      rssPeak = Math.max(rssPeak, rssKiB(relay.proc.pid!));
      await sleep(50);
    }
    const results = await Promise.all(creators.map((c) => c.done));
    const created = (await metric(relay.metricsPort!, 'murmure_queues_created_total')) - createdBefore;
    await withTimeout(
      (async () => {
        while (latencies.length < seq) await sleep(20);
      })(),
      30_000,
      'every honest message arrives',
    );
    latencies.sort((a, b) => a - b);
    const p = (x: number): number => latencies[Math.min(latencies.length - 1, Math.floor(x * latencies.length))]!;
    const refused = results.reduce((n, r) => n + r.errors, 0);
    if (kind !== 'creators') {
      const offered = results.reduce((n, r) => n + (r.offered ?? 0), 0);
      const skipped = results.reduce((n, r) => n + (r.skipped ?? 0), 0);
      t.diagnostic(`NEWs offered at ${S1_RATE}/s for ${seconds} s: ${offered} sent, ${skipped} held back while 500 a connection were unanswered`);
    }
    t.diagnostic(`${created} queues created in ${seconds} s (${Math.round(created / seconds)}/s; the creators saw ${refused} errors)`);
    t.diagnostic(`honest SEND→MSG over ${latencies.length} messages: p50 ${p(0.5).toFixed(1)} ms, p99 ${p(0.99).toFixed(1)} ms, max ${latencies[latencies.length - 1]!.toFixed(1)} ms`);
    t.diagnostic(`relay RSS ${(rssBefore / 1024).toFixed(0)} MiB before, peak ${(rssPeak / 1024).toFixed(0)} MiB`);
    if (password === null) assert.ok(created > 1000, 'the flood created queues');
    else {
      assert.equal(created, 0, 'without the password the flood created no queue');
      assert.equal(results.reduce((n, r) => n + r.created, 0), 0, 'and no creator was answered IDS');
      assert.ok(refused > 1000, `the creators were refused (${refused} times)`);
      const kept = await alice.createQueue();
      assert.equal(kept.rcvId.length, 24, 'with the password, a queue is still made after the flood');
    }
    assert.ok(p(0.99) < 1000, 'the honest p99 stays under 1 s');
    assert.ok(rssPeak - rssBefore < 256 * 1024, 'relay memory grows by less than 256 MiB');
    alice.close();
    bob.close();
    assert.equal(relay.proc.exitCode, null, 'the relay process is alive');
  } finally {
    for (const c of creators) c.proc.kill('SIGKILL');
    assert.equal(await stopRelay(relay), 0, 'SIGTERM exits with 0');
    cleanup(relay.dataDir);
  }
}

test(`S1: queue creation from two processes as fast as they go for ${S1_SECONDS} s: an honest pair's p99 stays under 1 s, relay memory is bounded`, { timeout: 180_000 }, (t) => s1Flood(t, null));

test(`S1 with a creation password: two processes without it try to create queues as fast as they go for ${S1_SECONDS} s: none is made, an honest pair's p99 stays under 1 s, relay memory is bounded`, { timeout: 180_000 }, (t) =>
  s1Flood(t, 'only-for-family'),
);

test(`S1 at THREATS' rate: NEWs offered at ${S1_RATE} a second for ${S1_FULL_SECONDS} s (a signed NEW sent again and again, the cheapest flood): an honest pair's p99 stays under 1 s, relay memory is bounded`, { timeout: 240_000 }, (t) =>
  s1Flood(t, null, 'replay'),
);

test(`S1 from one source: NEWs replayed at ${S1_RATE} a second for ${S1_SECONDS} s over ${BUSY_CONNECTIONS} connections of one address: the source takes one turn a pass, not one per connection, and an honest pair from another address keeps its p99 under 1 s`, { timeout: 180_000 }, (t) =>
  s1Flood(t, null, 'one-source'),
);

test(`S1 from many sources: NEWs replayed at ${S1_RATE} a second for ${S1_SECONDS} s over ${BUSY_CONNECTIONS} loopback connections, each a source (as behind an onion service): their turns share a budget per pass, and an honest pair keeps its p99 under 1 s`, { timeout: 180_000 }, (t) =>
  s1Flood(t, null, 'many-sources'),
);
