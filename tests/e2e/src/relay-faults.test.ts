// SPDX-License-Identifier: AGPL-3.0-or-later
// Storage faults under a real relay process (THREATS F4, F5, F9).
// F4: the data folder on a 3 MiB tmpfs fills up: SEND gets ERR STORE (never OK for a message that
// was not stored), the relay stays up and answers PING, and once space is freed SENDs succeed
// again; every OK'd message is delivered. ACKs that cannot be stored get ERR STORE, delivery
// moves on, and no acknowledged message is delivered again once space returns.
// F5: the relay runs under strace. Traced, every OK to a SEND comes after an fsync of the WAL;
// with fsync failing (EIO injected from a known point on), SENDs get ERR STORE, never OK, and
// the relay stays up; after a restart every OK'd message is there. With one failed sync, no write
// is taken until a checkpoint has emptied the WAL, then SENDs get OK again.
// F9: a store with a damaged page in the middle makes `murmure relay start` exit non-zero with
// one clear line on stderr and no stack trace, and the attempt leaves the file as it was. A kill
// at any point of a migration leaves the old schema or the new, never a mix, and loses nothing.
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync, rmdirSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test, type TestContext } from 'node:test';

import { RelayClient, RelayClientError, openDelivered, type PushedMessage, type RecipientQueue } from '@murmure/agent';
import { generateDhKeyPair, type KeyPair } from '@murmure/queue-crypto';
import { MAX_COMMANDS_IN_FLIGHT } from '@murmure/relay';
import Database from '@signalapp/sqlcipher';

import {
  MURMURE_BIN,
  cleanup,
  isRunning,
  launchRelay,
  metric,
  metricsText,
  relayPid,
  signalRelay,
  sleep,
  tempDir,
  testOpen,
  testSeal,
  utf8,
  type LaunchedRelay,
} from './harness.js';

const STRACE = '/usr/bin/strace';

/** Relays still running when a test ends (a failed assertion): killed in `after`. */
const running = new Set<LaunchedRelay>();
/** tmpfs mounts to unmount in `after`. */
const mounts: string[] = [];
/** Temporary folders to remove in `after`, whether the test passed or not. */
const dirs: string[] = [];

function scratch(prefix: string): string {
  const d = tempDir(prefix);
  dirs.push(d);
  return d;
}

after(async () => {
  for (const r of running) if (isRunning(r)) await signalRelay(r, 'SIGKILL');
  for (const m of mounts) {
    try {
      execFileSync('umount', [m]);
    } catch {
      execFileSync('umount', ['-l', m]);
    }
    rmdirSync(m);
  }
  for (const d of dirs) cleanup(d);
});

async function launch(opts: Parameters<typeof launchRelay>[0]): Promise<LaunchedRelay> {
  const r = await launchRelay(opts);
  running.add(r);
  return r;
}

/** A secured queue and its sender key. */
async function securedQueue(c: RelayClient): Promise<{ q: RecipientQueue; senderKey: KeyPair }> {
  const q = await c.createQueue();
  const senderKey = generateDhKeyPair();
  await c.secure(q, senderKey.publicKey);
  return { q, senderKey };
}

/** A data folder whose relay made a secured queue and stopped cleanly, to be started again under a fault. */
async function storeWithQueue(prefix: string): Promise<{ dataDir: string; q: RecipientQueue; senderKey: KeyPair }> {
  const dataDir = scratch(prefix);
  const first = await launch({ dataDir });
  const c1 = await RelayClient.connect(first.address);
  const { q, senderKey } = await securedQueue(c1);
  c1.close();
  assert.equal(await signalRelay(first, 'SIGTERM'), 0);
  return { dataDir, q, senderKey };
}

/** Test-encrypted bodies carrying a sequence number; `seqOf` reads it back from a delivery. */
function numberedBodies(size: number) {
  const key = randomBytes(32);
  return {
    body(seq: number): Uint8Array {
      const head = `seq=${seq};`;
      return testSeal(key, utf8(head + 'f'.repeat(Math.max(0, size - 28 - head.length))));
    },
    seqOf(q: RecipientQueue, msgId: Uint8Array, delivered: Uint8Array): number {
      const plain = testOpen(key, openDelivered(q, msgId, delivered).body);
      const m = plain === null ? null : /^seq=(\d+);/.exec(Buffer.from(plain.subarray(0, 24)).toString('latin1'));
      return m === null ? -1 : Number(m[1]);
    },
  };
}

/** Takes every message out of a queue with GET and ACK; returns the sequence numbers read. */
async function drain(c: RelayClient, q: RecipientQueue, seqOf: (q: RecipientQueue, id: Uint8Array, b: Uint8Array) => number): Promise<number[]> {
  const seqs: number[] = [];
  for (let m = await c.get(q); m !== null; m = await c.get(q)) {
    seqs.push(seqOf(q, m.msgId, m.body));
    await c.ack(q, m.msgId);
  }
  return seqs;
}

function sendOutcome(e: unknown): string {
  if (RelayClientError.is(e)) return e.code;
  throw e;
}

/**
 * A relay whose data folder is on a 3 MiB tmpfs, two thirds of it taken by `filler`, which the
 * test removes to give space back (with secure_delete an ACK of a 16 KB message writes more to the
 * WAL, about 45 KB, than its SEND did, about 33 KB); a secured queue and 16 KB numbered bodies.
 */
async function relayOnSmallDisk() {
  const mnt = tempDir('murmure-tmpfs-');
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', mnt]);
  mounts.push(mnt);
  const filler = join(mnt, 'filler');
  writeFileSync(filler, Buffer.alloc(2 * 1024 * 1024, 1));
  const dataDir = join(mnt, 'relay');
  const relay = await launch({ dataDir, args: ['--quota', '100000'] });
  const c = await RelayClient.connect(relay.address);
  const { q, senderKey } = await securedQueue(c);
  return { filler, dataDir, relay, c, q, senderKey, ...numberedBodies(16_000) };
}

test('disk full: ERR STORE and never OK for what was not stored; the relay stays up and resumes when space is freed (F4)', { timeout: 60_000 }, async (t) => {
  const { filler, relay, c, q, senderKey, body, seqOf } = await relayOnSmallDisk();

  const ok = new Set<number>();
  const outcomes: string[] = [];
  let seq = 0;
  for (; seq < 1000; seq++) {
    try {
      await c.send(q.sndId, senderKey.privateKey, body(seq));
      ok.add(seq);
    } catch (e) {
      outcomes.push(sendOutcome(e));
      break;
    }
  }
  assert.deepEqual(outcomes, ['STORE'], `the first failed SEND on a full disk is ERR STORE (after ${ok.size} OKs)`);
  assert.ok(ok.size >= 10, `some 16 KB messages fit before the disk is full (${ok.size})`);
  // More SENDs while full: each is answered, and any OK among them must be delivered later.
  for (let i = 0; i < 5; i++) {
    seq++;
    try {
      await c.send(q.sndId, senderKey.privateKey, body(seq));
      ok.add(seq);
      outcomes.push('OK');
    } catch (e) {
      outcomes.push(sendOutcome(e));
    }
  }
  t.diagnostic(`${ok.size} OK'd; then ${outcomes.join(' ')}`);
  assert.ok(outcomes.every((o) => o === 'STORE' || o === 'OK'), `only OK or ERR STORE while full: ${outcomes.join(' ')}`);
  assert.ok(outcomes.filter((o) => o === 'STORE').length >= 3, 'SENDs keep failing while the disk is full');
  await c.ping();
  assert.ok(isRunning(relay), 'the relay is still running');
  assert.match(relay.log.join(''), /"event":"store write failed","code":"FULL"/, 'the relay logs a full store');

  rmSync(filler);
  const after: string[] = [];
  for (let i = 0; i < 3; i++) {
    seq++;
    await c.send(q.sndId, senderKey.privateKey, body(seq));
    ok.add(seq);
    after.push('OK');
  }
  assert.deepEqual(after, ['OK', 'OK', 'OK'], 'SENDs succeed again once space is freed');

  // Every OK'd message is delivered (subscribed, and acknowledged one by one).
  const sub = await RelayClient.connect(relay.address);
  const seen: number[] = [];
  let timer: NodeJS.Timeout | undefined;
  const drained = new Promise<void>((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`only ${seen.length} of ${ok.size} OK'd messages were delivered`)), 20_000);
    sub.on('message', (m: PushedMessage) => {
      seen.push(seqOf(q, m.msgId, m.body));
      sub.ack(q, m.msgId).then(() => {
        if ([...ok].every((s) => seen.includes(s))) resolve();
      }, reject);
    });
  });
  await sub.subscribe(q);
  await drained.finally(() => clearTimeout(timer));
  assert.ok(seen.every((s) => s >= 0 && s <= seq), 'only messages that were sent are delivered');
  assert.equal(new Set(seen).size, seen.length, 'each message once');
  // A SEND answered ERR STORE was not stored: it would have come before the last OK'd ones.
  const byNumber = (a: number, b: number): number => a - b;
  assert.deepEqual([...seen].sort(byNumber), [...ok].sort(byNumber), 'exactly the OK\'d messages are delivered');
  assert.equal(await c.get(q), null, 'nothing else is left in the queue');
  sub.close();
  c.close();
  assert.equal(await signalRelay(relay, 'SIGTERM'), 0, 'the relay stops cleanly');
});

test('disk full: an ACK that cannot be stored gets ERR STORE, delivery moves on, and the message never comes back (F4)', { timeout: 60_000 }, async (t) => {
  const { filler, dataDir, relay, c, q, senderKey, body, seqOf } = await relayOnSmallDisk();
  const ok: number[] = [];
  for (let seq = 0; seq < 1000; seq++) {
    try {
      await c.send(q.sndId, senderKey.privateKey, body(seq));
      ok.push(seq);
    } catch (e) {
      assert.equal(sendOutcome(e), 'STORE');
      break;
    }
  }
  assert.ok(ok.length >= 10, `some messages fit before the disk is full (${ok.length})`);

  // The disk is full: the subscriber acknowledges everything it is sent.
  const sub = await RelayClient.connect(relay.address);
  const seen: number[] = [];
  const acks: string[] = [];
  let freed = false;
  let timer: NodeJS.Timeout | undefined;
  const all = new Promise<void>((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`only ${seen.length} of ${ok.length} messages were delivered`)), 30_000);
    sub.on('message', (m: PushedMessage) => {
      seen.push(seqOf(q, m.msgId, m.body));
      if (seen.length === ok.length) resolve();
      sub.ack(q, m.msgId).then(
        () => acks.push(freed ? 'OK after' : 'OK'),
        (e: unknown) => acks.push(RelayClientError.is(e) ? e.code : String(e)),
      );
    });
  });
  await sub.subscribe(q);
  await all.finally(() => clearTimeout(timer));
  await sleep(500);
  t.diagnostic(`${ok.length} stored; ACKs while full: ${acks.join(' ')}`);
  assert.ok(acks.includes('STORE'), 'some ACKs could not be stored on the full disk');
  assert.ok(acks.every((a) => a === 'STORE' || a === 'OK'), `only OK or ERR STORE: ${acks.join(' ')}`);
  assert.deepEqual(seen, ok, 'each message once, in order, though ACKs failed');

  // Space comes back: the failed deletions are carried out, and nothing is delivered again.
  rmSync(filler);
  freed = true;
  await sleep(3000);
  assert.deepEqual(seen, ok, 'no acknowledged message came back');
  sub.close();
  c.close();
  assert.equal(await signalRelay(relay, 'SIGTERM'), 0, 'the relay stops cleanly');
  // A restarted relay knows nothing of deletions still pending: an empty queue there shows that
  // every retried deletion was stored.
  const again = await launch({ dataDir, args: ['--quota', '100000'] });
  const check = await RelayClient.connect(again.address);
  assert.equal(await check.get(q), null, 'the queue is empty after a restart: every acknowledged message was deleted');
  check.close();
  assert.equal(await signalRelay(again, 'SIGTERM'), 0);
});

/** One strace line: `tid seconds.micros name(fd</path>) = result`. */
type SyncCall = { tid: number; at: number; name: string; path: string; failed: boolean };

function parseSyncs(trace: string): SyncCall[] {
  const out: SyncCall[] = [];
  for (const line of trace.split('\n')) {
    const m = /^(\d+)\s+(\d+\.\d+)\s+(fsync|fdatasync)\(\d+<([^>]*)>\)\s+=\s+(-?\d+)/.exec(line);
    if (m !== null) out.push({ tid: Number(m[1]), at: Number(m[2]) * 1000, name: m[3]!, path: m[4]!, failed: m[5] !== '0' });
  }
  return out;
}

/** Starts a relay on a fresh data folder under strace, makes a secured queue, sends `k` messages one by one. */
async function tracedRun(strace: readonly string[], k: number) {
  const dataDir = scratch('murmure-fsync-');
  const relay = await launch({ dataDir, wrapper: [STRACE, '-f', ...strace] });
  const c = await RelayClient.connect(relay.address);
  const { q, senderKey } = await securedQueue(c);
  const bodies = numberedBodies(200);
  const sends = await sendOneByOne(c, q, senderKey, bodies, 0, k);
  return { dataDir, relay, c, q, senderKey, bodies, sends, pid: relayPid(relay) };
}

async function sendOneByOne(c: RelayClient, q: RecipientQueue, senderKey: KeyPair, bodies: ReturnType<typeof numberedBodies>, from: number, k: number) {
  const sends: { seq: number; start: number; end: number }[] = [];
  for (let seq = from; seq < from + k; seq++) {
    const start = Date.now();
    await c.send(q.sndId, senderKey.privateKey, bodies.body(seq));
    sends.push({ seq, start, end: Date.now() });
  }
  return sends;
}

test('checkpoints run beside the event loop: under a load that fills the WAL several times, the main thread neither writes nor syncs the database file', { timeout: 120_000 }, async (t) => {
  assert.ok(existsSync(STRACE), 'strace is installed');
  const traceFile = join(scratch('murmure-strace-'), 'trace');
  const dataDir = scratch('murmure-fsync-');
  const db = join(dataDir, 'relay.sqlite');
  const wal = `${db}-wal`;
  const relay = await launch({
    dataDir,
    args: ['--quota', '2000'],
    wrapper: [STRACE, '-f', '-ttt', '-y', '-P', db, '-P', wal, '-e', 'trace=fsync,fdatasync,pwrite64', '-o', traceFile],
  });
  const pid = relayPid(relay);
  const c = await RelayClient.connect(relay.address);
  const { q, senderKey } = await securedQueue(c);
  // 1,000 messages of 16 KB are about 4,000 pages of WAL: SQLite's own checkpoint would run
  // about four times inside a COMMIT, on the event loop.
  const bodies = numberedBodies(16_000);
  const start = Date.now();
  for (let i = 0; i < 1000; i += 50) {
    await Promise.all(Array.from({ length: 50 }, (_, j) => c.send(q.sndId, senderKey.privateKey, bodies.body(i + j))));
  }
  const end = Date.now();
  c.close();
  assert.equal(await signalRelay(relay, 'SIGTERM'), 0);
  const calls: { tid: number; at: number; name: string; path: string }[] = [];
  for (const line of readFileSync(traceFile, 'utf8').split('\n')) {
    const m = /^(\d+)\s+(\d+\.\d+)\s+(fsync|fdatasync|pwrite64)\(\d+<([^>]*)>/.exec(line);
    if (m !== null && Number(m[2]) * 1000 >= start && Number(m[2]) * 1000 <= end) calls.push({ tid: Number(m[1]), at: Number(m[2]) * 1000, name: m[3]!, path: m[4]! });
  }
  const onMain = calls.filter((s) => s.tid === pid);
  const checkpointSyncs = calls.filter((s) => s.tid !== pid && s.path === db && s.name !== 'pwrite64');
  const mainWalSyncs = onMain.filter((s) => s.path === wal && s.name !== 'pwrite64');
  t.diagnostic(`while sending: ${checkpointSyncs.length} syncs of the database file by checkpoints, ${mainWalSyncs.length} syncs of the WAL on the main thread`);
  assert.ok(checkpointSyncs.length >= 2, 'checkpoints ran in another thread and synced the database file');
  assert.deepEqual(onMain.filter((s) => s.path === db), [], 'the main thread neither wrote nor synced the database file');
  // What remains on the main thread: SQLite syncs a restarted WAL's new header before the first
  // commit written after it, once per checkpoint that copied the whole WAL.
  assert.ok(mainWalSyncs.length <= checkpointSyncs.length + 1, 'the main thread synced the WAL at most once per checkpoint');
});

test('a checkpoint pass whose sync of the database file fails: writes are refused, SIGTERM exits 1 with the WAL kept, and the next start has every OK\'d message (F5)', { timeout: 120_000 }, async () => {
  assert.ok(existsSync(STRACE), 'strace is installed');
  const { dataDir, q, senderKey } = await storeWithQueue('murmure-ckpt-fail-');
  // The checkpoint thread's own sync of relay.sqlite after a first pass is the one fdatasync on
  // that file: it fails from the first on.
  const relay = await launch({
    dataDir,
    args: ['--quota', '5000'],
    wrapper: [STRACE, '-f', '-P', join(dataDir, 'relay.sqlite'), '-e', 'trace=fdatasync', '-e', 'inject=fdatasync:error=EIO:when=1+', '-o', '/dev/null'],
  });
  const c = await RelayClient.connect(relay.address);
  const { body, seqOf } = numberedBodies(16_000);
  const ok: number[] = [];
  const refused: number[] = [];
  // 16 KB messages, 50 in flight, until the failed pass shows (about 250 fill 1,000 WAL pages).
  for (let i = 0; i < 3000 && refused.length === 0; i += 50) {
    const outcomes = await Promise.allSettled(Array.from({ length: 50 }, (_, j) => c.send(q.sndId, senderKey.privateKey, body(i + j))));
    outcomes.forEach((o, j) => {
      if (o.status === 'fulfilled') ok.push(i + j);
      else if (RelayClientError.is(o.reason, 'STORE')) refused.push(i + j);
      else throw o.reason;
    });
  }
  assert.ok(refused.length > 0, 'SENDs got ERR STORE once the pass failed');
  for (let seq = 5000; seq < 5005; seq++) {
    await assert.rejects(c.send(q.sndId, senderKey.privateKey, body(seq)), (e) => RelayClientError.is(e, 'STORE'), 'writes stay refused');
  }
  await c.ping();
  c.close();
  assert.equal(await signalRelay(relay, 'SIGTERM'), 1, 'no checkpoint may close the store: the stop is not clean');
  const log = relay.log.join('');
  assert.match(log, /"event":"store database file sync failed: writes refused until the relay starts again"/);
  assert.match(log, /"event":"relay did not stop cleanly","code":"IO"/);
  assert.doesNotMatch(log, /\n\s+at /, 'no stack trace');
  assert.ok(statSync(join(dataDir, 'relay.sqlite-wal')).size > 0, 'the WAL is kept as it is');
  // Started again normally: every OK'd message, in order, and nothing else; writes are taken.
  const again = await launch({ dataDir, args: ['--quota', '5000'] });
  const c2 = await RelayClient.connect(again.address);
  assert.deepEqual(await drain(c2, q, seqOf), ok, 'every OK\'d message is there, and no refused one');
  await c2.send(q.sndId, senderKey.privateKey, body(6000));
  c2.close();
  assert.equal(await signalRelay(again, 'SIGTERM'), 0);
});

test('fsync: every OK follows an fsync of the WAL, and with fsync failing SENDs get ERR STORE, never OK (F5)', { timeout: 60_000 }, async (t) => {
  assert.ok(existsSync(STRACE), 'strace is installed');
  const k = 6;
  // 1. Traced only: every OK comes after a sync of the WAL (by whichever thread makes it).
  const traceFile = join(scratch('murmure-strace-'), 'trace');
  const a = await tracedRun(['-ttt', '-y', '-e', 'trace=fsync,fdatasync', '-o', traceFile], k);
  a.c.close();
  assert.equal(await signalRelay(a.relay, 'SIGTERM'), 0);
  const syncs = parseSyncs(readFileSync(traceFile, 'utf8'));
  const walSyncs = syncs.filter((s) => s.path.endsWith('/relay.sqlite-wal'));
  assert.ok(walSyncs.length >= k, `the WAL is synced (${walSyncs.length} times)`);
  for (const s of a.sends) {
    const before = walSyncs.filter((w) => w.at >= s.start - 1 && w.at <= s.end + 1);
    assert.ok(before.length >= 1, `SEND #${s.seq} was answered OK only after an fsync of the WAL`);
  }
  const names = [...new Set(syncs.map((s) => s.name))].join(', ');
  t.diagnostic(`sync calls (${names}): ${syncs.length}, ${walSyncs.length} of them on the WAL`);

  // 2. A store with k OK'd messages, restarted with every sync of its WAL failing with EIO.
  // (strace injects only into traced calls, and counts calls per thread, so the failure is
  // selected by path, from the first call on.)
  const dataDir = scratch('murmure-fsync-');
  const first = await launch({ dataDir });
  const c1 = await RelayClient.connect(first.address);
  const { q, senderKey } = await securedQueue(c1);
  const bodies = numberedBodies(200);
  const sends = await sendOneByOne(c1, q, senderKey, bodies, 0, k);
  c1.close();
  assert.equal(await signalRelay(first, 'SIGTERM'), 0);
  const wal = join(dataDir, 'relay.sqlite-wal');
  const failing = await launch({ dataDir, wrapper: [STRACE, '-f', '-P', wal, '-e', 'trace=fsync,fdatasync', '-e', 'inject=fsync,fdatasync:error=EIO:when=1+', '-o', '/dev/null'] });
  const b = { dataDir, relay: failing, c: await RelayClient.connect(failing.address), q, senderKey, bodies, sends };
  const ok = new Set(b.sends.map((s) => s.seq));
  const outcomes: string[] = [];
  for (let seq = k; seq < k + 20; seq++) {
    try {
      await b.c.send(b.q.sndId, b.senderKey.privateKey, b.bodies.body(seq));
      ok.add(seq);
      outcomes.push('OK');
    } catch (e) {
      outcomes.push(sendOutcome(e));
    }
  }
  assert.deepEqual(outcomes, Array(20).fill('STORE'), 'once fsync fails, every SEND gets ERR STORE');
  await b.c.ping();
  assert.ok(isRunning(b.relay), 'the relay is still running');
  assert.match(b.relay.log.join(''), /"event":"store write failed","code":"IO"/, 'the relay logs the I/O failure');
  b.c.close();
  const code = await signalRelay(b.relay, 'SIGTERM');
  t.diagnostic(`relay with failing fsync stopped with ${code}`);

  // 3. Restarted without fault injection: every OK'd message is there; nothing that was not sent.
  const relay = await launch({ dataDir: b.dataDir });
  const c = await RelayClient.connect(relay.address);
  const seqs = await drain(c, b.q, b.bodies.seqOf);
  c.close();
  assert.equal(await signalRelay(relay, 'SIGTERM'), 0);
  t.diagnostic(`after restart: ${seqs.length} messages, ${seqs.filter((s) => !ok.has(s)).length} of them never OK'd`);
  assert.deepEqual(seqs.slice(0, k), [...Array(k).keys()], 'every OK\'d message survives, in order');
  assert.ok(seqs.every((s) => s >= 0 && s < k + 20), 'nothing that was never sent appears');
});

test('fsync failing after a commit: a DEL that was committed but not synced still ends the subscription (F5)', { timeout: 60_000 }, async () => {
  const dataDir = scratch('murmure-fsync-del-');
  const first = await launch({ dataDir });
  const c1 = await RelayClient.connect(first.address);
  const doomed = await c1.createQueue();
  c1.close();
  assert.equal(await signalRelay(first, 'SIGTERM'), 0);
  // Only the relay's own sync of the WAL fails (fdatasync); SQLite's fsync of the WAL header
  // works, so commits land and only their sync fails.
  const wal = join(dataDir, 'relay.sqlite-wal');
  const relay = await launch({ dataDir, wrapper: [STRACE, '-f', '-P', wal, '-e', 'trace=fdatasync', '-e', 'inject=fdatasync:error=EIO:when=1+', '-o', '/dev/null'] });
  const owner = await RelayClient.connect(relay.address);
  const watcher = await RelayClient.connect(relay.address);
  await watcher.subscribe(doomed);
  const ended = new Promise<Uint8Array>((r) => watcher.once('end', r));
  await assert.rejects(owner.deleteQueue(doomed), (e) => RelayClientError.is(e, 'STORE'), 'the DEL is not reported done: its sync failed');
  await assert.rejects(owner.get(doomed), (e) => RelayClientError.is(e, 'AUTH'), 'the commit landed: the queue is gone');
  const end = await Promise.race([ended, sleep(5000).then(() => null)]);
  assert.ok(end !== null && Buffer.from(end).equals(Buffer.from(doomed.rcvId)), 'the subscriber of the deleted queue got END');
  owner.close();
  watcher.close();
  await signalRelay(relay, 'SIGTERM');
});

/**
 * A disk with a passing fault. strace counts calls per thread, so libuv's pool has one thread
 * here. The relay's syncs of the WAL are fdatasync on that thread, and the first is that of the
 * first SEND (expiry at start finds nothing and writes nothing): it fails with EIO. SQLite's are
 * fsync on the main thread: the first syncs the new WAL header at the first commit, the next
 * ones are in the checkpoints that try to recover; `failedCheckpointSyncs` of them fail with
 * EIO. A failed checkpoint is tried again at once (Linux reports a writeback error once per open
 * file, and SQLite's descriptor may fail on the error the relay's own sync saw), then after 1 s.
 */
async function fsyncFailingOnce(t: TestContext, failedCheckpointSyncs: 1 | 2): Promise<void> {
  assert.ok(existsSync(STRACE), 'strace is installed');
  const { dataDir, q, senderKey } = await storeWithQueue('murmure-fsync-once-');
  const traceFile = join(scratch('murmure-strace-'), 'trace');
  const wal = join(dataDir, 'relay.sqlite-wal');
  const relay = await launch({
    dataDir,
    args: ['--metrics-port', '0'],
    env: { UV_THREADPOOL_SIZE: '1' },
    wrapper: [STRACE, '-f', '-ttt', '-y', '-P', wal, '-e', 'trace=fsync,fdatasync,ftruncate', '-e', 'inject=fdatasync:error=EIO:when=1', '-e', `inject=fsync:error=EIO:when=2..${1 + failedCheckpointSyncs}`, '-o', traceFile],
  });
  const c = await RelayClient.connect(relay.address);
  const bodies = numberedBodies(200);
  const ok = new Set<number>();
  const outcomes: string[] = [];
  // SENDs 50 ms apart until 10 in a row after the last ERR STORE got OK (the checkpoint is
  // tried again 1 s after the failed one), at most 20 s.
  const until = Date.now() + 20_000;
  let seq = 0;
  for (; Date.now() < until; seq++) {
    try {
      await c.send(q.sndId, senderKey.privateKey, bodies.body(seq));
      ok.add(seq);
      outcomes.push('OK');
    } catch (e) {
      outcomes.push(sendOutcome(e));
    }
    const lastStore = outcomes.lastIndexOf('STORE');
    if (lastStore >= 0 && outcomes.length - lastStore > 10) break;
    await sleep(50);
  }
  const total = seq + 1;
  const runs = outcomes.join(' ').replace(/(\w+)( \1)*/g, (m, o: string) => `${o}×${m.split(' ').length}`);
  t.diagnostic(`outcomes: ${runs}`);
  assert.equal(outcomes[0], 'STORE', 'the SEND whose sync failed gets ERR STORE');
  assert.ok(outcomes.every((o) => o === 'OK' || o === 'STORE'), 'only OK or ERR STORE');
  const firstOk = outcomes.indexOf('OK');
  const log = relay.log.join('');
  const recoveryFailed = /"event":"store recovery failed: checkpoint not possible yet, writes still refused"/;
  if (failedCheckpointSyncs === 2) {
    assert.ok(firstOk > 1, 'the SENDs after it are refused while the checkpoint fails');
    assert.match(log, recoveryFailed, 'the failed checkpoint is logged');
  } else {
    assert.equal(firstOk, 1, 'the checkpoint tried again at once succeeds: the next SEND gets OK');
    assert.doesNotMatch(log, recoveryFailed, 'no failed recovery');
  }
  assert.ok(firstOk >= 0 && outcomes.slice(firstOk).every((o) => o === 'OK'), 'once the checkpoint is done, every SEND gets OK');
  assert.match(log, /"event":"store sync failed: writes refused until a checkpoint succeeds"/, 'the failure is logged');
  assert.match(log, /"event":"store recovered: checkpoint done, writes taken again"/, 'the recovery is logged');
  const metrics = await metricsText(relay);
  const counter = (name: string): number => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(metrics)?.[1] ?? NaN);
  assert.equal(counter('murmure_store_sync_failures_total'), 1, 'the failed sync is counted');
  assert.equal(counter('murmure_store_recoveries_total'), 1, 'and the recovery');
  assert.equal(counter('murmure_store_writable'), 1, 'the store takes writes again');
  c.close();
  assert.equal(await signalRelay(relay, 'SIGTERM'), 0);

  // In the trace, after every failed sync the WAL is checkpointed (emptied with ftruncate, and
  // synced by SQLite) before any sync of it succeeds: nothing committed after the failure is
  // answered OK on the strength of a WAL with a hole.
  const calls: { at: number; name: string; failed: boolean }[] = [];
  for (const line of readFileSync(traceFile, 'utf8').split('\n')) {
    const m = /^\d+\s+(\d+\.\d+)\s+(fsync|fdatasync|ftruncate)\(\d+<[^>]*>(?:, (\d+))?\)\s+=\s+(-?\d+)/.exec(line);
    if (m !== null) calls.push({ at: Number(m[1]), name: m[2]!, failed: m[4] !== '0' });
  }
  calls.sort((a, b) => a.at - b.at);
  const failures = calls.filter((x) => x.failed);
  assert.deepEqual(failures.map((f) => f.name).sort(), ['fdatasync', ...Array(failedCheckpointSyncs).fill('fsync')], 'the injected failures are in the trace');
  for (const f of failures) {
    const later = calls.filter((x) => x.at > f.at);
    const nextOk = later.find((x) => x.name === 'fdatasync' && !x.failed);
    const truncate = later.find((x) => x.name === 'ftruncate' && !x.failed);
    if (nextOk === undefined) continue;
    assert.ok(truncate !== undefined && truncate.at < nextOk.at, 'the WAL was checkpointed between a failed sync and the next good one');
  }

  // Restarted without faults: every OK'd message is there, in order, and nothing never sent.
  const again = await launch({ dataDir });
  const c2 = await RelayClient.connect(again.address);
  const seqs = await drain(c2, q, bodies.seqOf);
  c2.close();
  assert.equal(await signalRelay(again, 'SIGTERM'), 0);
  assert.deepEqual(seqs.filter((s) => ok.has(s)), [...ok].sort((a, b) => a - b), 'every OK\'d message survives, in order');
  assert.ok(seqs.every((s) => s >= 0 && s < total), 'nothing that was never sent appears');
}

test('fsync failing once: the writes it covered get ERR STORE, none is taken until a checkpoint succeeds, then SENDs get OK again (F5)', { timeout: 60_000 }, (t) =>
  fsyncFailingOnce(t, 2),
);

test('a checkpoint that fails once on the old error is tried again at once: writes are taken again without waiting (F5)', { timeout: 60_000 }, (t) =>
  fsyncFailingOnce(t, 1),
);

test('after a failed sync is dealt with, the checkpoint thread opens the WAL anew before its next pass, and the store keeps taking writes (F5)', { timeout: 90_000 }, async (t) => {
  assert.ok(existsSync(STRACE), 'strace is installed');
  // Linux reports a failed writeback once to every descriptor open on the file when it happened.
  // The checkpoint thread's connection keeps a descriptor of the WAL from its first pass; kept,
  // it would report at the thread's next sync the error the store has already dealt with, and a
  // pass whose sync fails counts as a loss that stops the store for good. strace cannot report
  // an error per descriptor, so the test shows the cure in the trace: the thread's next sync of
  // the WAL goes through a descriptor it opened after the failure, and its old one is closed.
  // 16 KB messages take about 8 WAL pages each: the thread's first pass (at 1,000 pages) comes
  // before the 200th sync of the relay's own (one per SEND here), which fails; after the
  // recovery, 200 more messages bring the next pass.
  const { dataDir, q, senderKey } = await storeWithQueue('murmure-fsync-thread-');
  const traceFile = join(scratch('murmure-strace-'), 'trace');
  const wal = join(dataDir, 'relay.sqlite-wal');
  const relay = await launch({
    dataDir,
    args: ['--metrics-port', '0', '--quota', '100000'],
    env: { UV_THREADPOOL_SIZE: '1' },
    wrapper: [STRACE, '-f', '-ttt', '-y', '-P', wal, '-e', 'trace=openat,close,fsync,fdatasync,ftruncate', '-e', 'inject=fdatasync:error=EIO:when=200', '-o', traceFile],
  });
  const c = await RelayClient.connect(relay.address);
  const bodies = numberedBodies(16_000);
  const outcomes: string[] = [];
  for (let seq = 0; seq < 400; seq++) {
    try {
      await c.send(q.sndId, senderKey.privateKey, bodies.body(seq));
      outcomes.push('OK');
    } catch (e) {
      outcomes.push(sendOutcome(e));
    }
  }
  const runs = outcomes.join(' ').replace(/(\w+)( \1)*/g, (m, o: string) => `${o}×${m.split(' ').length}`);
  t.diagnostic(`outcomes: ${runs}`);
  assert.equal(outcomes.indexOf('STORE'), 199, 'the SEND whose sync failed (the 200th) gets ERR STORE');
  assert.ok(outcomes.slice(220).every((o) => o === 'OK'), 'after the recovery every SEND gets OK');
  assert.equal(await metric(relay, 'murmure_store_writable'), 1, 'the store takes writes');
  c.close();
  assert.equal(await signalRelay(relay, 'SIGTERM'), 0, 'and stops cleanly');
  const log = relay.log.join('');
  assert.match(log, /"event":"store recovered: checkpoint done, writes taken again"/, 'the recovery is logged');

  // The trace: one line per call (or its start, "<unfinished ...>"; a failure may come on the
  // "<... resumed>" line), each with its thread.
  type Call = { tid: number; at: number; name: string; failed: boolean };
  const calls: Call[] = [];
  for (const line of readFileSync(traceFile, 'utf8').split('\n')) {
    const m = /^(\d+)\s+(\d+\.\d+)\s+(?:<\.\.\. )?(openat|close|fsync|fdatasync|ftruncate)(?: resumed>|\()/.exec(line);
    if (m !== null) calls.push({ tid: Number(m[1]), at: Number(m[2]), name: m[3]!, failed: / = -1 E/.test(line) });
  }
  const failure = calls.find((x) => x.name === 'fdatasync' && x.failed);
  assert.ok(failure !== undefined, 'the injected failure is in the trace');
  // The thread that syncs the WAL (fsync, SQLite's) and never cuts it: the checkpoint thread.
  // The recovery's checkpoint, which cuts it, runs on the main thread.
  const cutters = new Set(calls.filter((x) => x.name === 'ftruncate').map((x) => x.tid));
  const threads = new Set(calls.filter((x) => x.name === 'fsync' && !cutters.has(x.tid)).map((x) => x.tid));
  assert.equal(threads.size, 1, `one checkpoint thread syncs the WAL (${[...threads].join(', ')})`);
  const tid = [...threads][0]!;
  const own = calls.filter((x) => x.tid === tid);
  assert.ok(own.some((x) => x.name === 'fsync' && x.at < failure.at), 'the thread took a pass before the failure');
  const nextSync = own.find((x) => x.name === 'fsync' && x.at > failure.at);
  assert.ok(nextSync !== undefined, 'and one after the recovery');
  const between = own.filter((x) => x.at > failure.at && x.at < nextSync.at);
  assert.ok(between.some((x) => x.name === 'close'), 'the thread closed its old descriptor of the WAL after the failure');
  assert.ok(between.some((x) => x.name === 'openat'), 'and opened the WAL anew before its next sync of it');
});

test('fsync failing for good after a commit: writes stay refused, and SIGTERM exits 1 because the store could not be made durable (F5)', { timeout: 60_000 }, async () => {
  assert.ok(existsSync(STRACE), 'strace is installed');
  const { dataDir, q, senderKey } = await storeWithQueue('murmure-fsync-never-');
  // As in the test above, but every sync of the WAL from the first SEND's on fails: the commit
  // lands (SQLite's sync of the new WAL header works), its sync does not, and no checkpoint
  // ever succeeds.
  const wal = join(dataDir, 'relay.sqlite-wal');
  const relay = await launch({
    dataDir,
    env: { UV_THREADPOOL_SIZE: '1' },
    wrapper: [STRACE, '-f', '-P', wal, '-e', 'trace=fsync,fdatasync', '-e', 'inject=fdatasync:error=EIO:when=1+', '-e', 'inject=fsync:error=EIO:when=2+', '-o', '/dev/null'],
  });
  const c = await RelayClient.connect(relay.address);
  const bodies = numberedBodies(200);
  for (let seq = 0; seq < 5; seq++) {
    await assert.rejects(c.send(q.sndId, senderKey.privateKey, bodies.body(seq)), (e) => RelayClientError.is(e, 'STORE'), `SEND #${seq} gets ERR STORE`);
  }
  await c.ping();
  c.close();
  assert.equal(await signalRelay(relay, 'SIGTERM'), 1, 'a relay whose store never recovered does not stop cleanly');
  const log = relay.log.join('');
  assert.match(log, /"event":"store recovery failed: checkpoint not possible yet, writes still refused"/);
  assert.match(log, /"event":"relay did not stop cleanly","code":"IO"/);
  assert.doesNotMatch(log, /\n\s+at /, 'no stack trace');
});

test('SIGTERM the moment the address is printed is a clean stop, even on a relay slowed down by strace', { timeout: 60_000 }, async () => {
  assert.ok(existsSync(STRACE), 'strace is installed');
  // Under strace every system call stops the relay, which widens the moment between printing
  // the address and being ready for a signal; the handlers must be in place before the print.
  const dataDir = scratch('murmure-early-term-');
  for (let i = 0; i < 5; i++) {
    const relay = await launch({ dataDir, wrapper: [STRACE, '-f', '-e', 'trace=pwrite64', '-o', '/dev/null'] });
    assert.equal(await signalRelay(relay, 'SIGTERM'), 0, `run ${i + 1}: exit code 0, not death by signal`);
    assert.match(relay.log.join(''), /"event":"relay stopped"/);
  }
});

test('a store that cannot be closed cleanly: SIGTERM logs it and exits 1, and what was stored is kept', { timeout: 60_000 }, async () => {
  assert.ok(existsSync(STRACE), 'strace is installed');
  const dataDir = scratch('murmure-badclose-');
  const { body, seqOf } = numberedBodies(200);
  const first = await launch({ dataDir });
  const c1 = await RelayClient.connect(first.address);
  const { q, senderKey } = await securedQueue(c1);
  c1.close();
  assert.equal(await signalRelay(first, 'SIGTERM'), 0);
  // Every close() of the WAL's descriptors fails with EIO: the store cannot be closed cleanly.
  const wal = join(dataDir, 'relay.sqlite-wal');
  const relay = await launch({ dataDir, wrapper: [STRACE, '-f', '-P', wal, '-e', 'trace=close', '-e', 'inject=close:error=EIO:when=1+', '-o', '/dev/null'] });
  const c2 = await RelayClient.connect(relay.address);
  await c2.send(q.sndId, senderKey.privateKey, body(7));
  c2.close();
  assert.equal(await signalRelay(relay, 'SIGTERM'), 1, 'a failed stop exits with code 1, not 0');
  const log = relay.log.join('');
  assert.match(log, /"event":"relay did not stop cleanly","code":"IO"/, 'the log says why, with an error code');
  assert.doesNotMatch(log, /\n\s+at /, 'no stack trace');
  // The message it took is still there for a relay started normally.
  const again = await launch({ dataDir });
  const c3 = await RelayClient.connect(again.address);
  const m = await c3.get(q);
  assert.ok(m !== null && seqOf(q, m.msgId, m.body) === 7, 'the message survived the failed stop');
  c3.close();
  assert.equal(await signalRelay(again, 'SIGTERM'), 0);
});

/** How much longer each sync of the WAL takes in the slow-sync test. */
const SLOW_SYNC_MS = 300;

test('while syncs are slow, one connection never has more than MAX_COMMANDS_IN_FLIGHT commands held: the relay stops reading it, and every SEND still gets OK', { timeout: 120_000 }, async () => {
  assert.ok(existsSync(STRACE), 'strace is installed');
  // Each sync of the WAL by the store takes 500 ms longer: SENDs wait for their OK meanwhile.
  const { dataDir, q, senderKey } = await storeWithQueue('murmure-inflight-');
  const wal = join(dataDir, 'relay.sqlite-wal');
  const relay = await launch({
    dataDir,
    args: ['--metrics-port', '0', '--quota', '100000'],
    wrapper: [STRACE, '-f', '-P', wal, '-e', 'trace=fdatasync', '-e', 'inject=fdatasync:delay_exit=500000', '-o', '/dev/null'],
  });
  const c = await RelayClient.connect(relay.address);
  const bodies = numberedBodies(4000);
  // What the connection holds: commands being handled and commands waiting for their turn.
  const gauge = async (): Promise<number> => (await metric(relay.metricsPort, 'murmure_commands_in_flight')) + (await metric(relay.metricsPort, 'murmure_commands_waiting'));
  // 2,000 SENDs at once: the client packs them into blocks of up to 64 and writes them all.
  const sends = Array.from({ length: 2000 }, (_, seq) => c.send(q.sndId, senderKey.privateKey, bodies.body(seq)));
  const all = Promise.allSettled(sends);
  let done = false;
  void all.then(() => (done = true));
  let peak = 0;
  while (!done) {
    peak = Math.max(peak, await gauge());
    await sleep(20);
  }
  const outcomes = await all;
  assert.equal(outcomes.filter((o) => o.status === 'fulfilled').length, 2000, 'every SEND gets OK');
  // What one read of the socket brought in past the limit is taken too: at most 64 KiB, 4 blocks.
  assert.ok(peak > 0 && peak <= MAX_COMMANDS_IN_FLIGHT + 4 * 64, `commands in flight and waiting peaked at ${peak}`);
  assert.equal(await gauge(), 0, 'none left in flight or waiting');
  c.close();
  assert.equal(await signalRelay(relay, 'SIGTERM'), 0);
});

test('a slow sync delays the sender\'s OK, not the subscriber\'s MSG; ACKs of a drain wait for no sync of their own, and are synced soon after', { timeout: 60_000 }, async (t) => {
  assert.ok(existsSync(STRACE), 'strace is installed');
  // Every sync of the WAL takes 300 ms longer (strace delays it on the way out) and is logged.
  const dataDir = scratch('murmure-slowsync-');
  const traceFile = join(scratch('murmure-strace-'), 'trace');
  const wal = join(dataDir, 'relay.sqlite-wal');
  const relay = await launch({ dataDir, wrapper: [STRACE, '-f', '-ttt', '-y', '-P', wal, '-e', 'trace=fsync,fdatasync', '-e', `inject=fsync,fdatasync:delay_exit=${SLOW_SYNC_MS * 1000}`, '-o', traceFile] });
  const sender = await RelayClient.connect(relay.address);
  // NEW and KEY are durable writes too: each OK waits out its own (slow) sync.
  const timed = async <T>(what: string, f: () => Promise<T>): Promise<T> => {
    const start = performance.now();
    const result = await f();
    const ms = performance.now() - start;
    assert.ok(ms >= SLOW_SYNC_MS, `${what} was answered after its sync (${ms.toFixed(0)} ms)`);
    return result;
  };
  const q = await timed('NEW', () => sender.createQueue());
  const senderKey = generateDhKeyPair();
  await timed('KEY', () => sender.secure(q, senderKey.publicKey));
  const { body, seqOf } = numberedBodies(200);

  // 1. Subscribed: the MSG comes once the message is committed, before the sender's OK, which
  // comes only once the sync has returned.
  const sub = await RelayClient.connect(relay.address);
  const order: string[] = [];
  sub.on('message', (m: PushedMessage) => {
    order.push(`MSG ${seqOf(q, m.msgId, m.body)}`);
    void sub.ack(q, m.msgId).catch(() => undefined);
  });
  await sub.subscribe(q);
  const sendStart = performance.now();
  await sender.send(q.sndId, senderKey.privateKey, body(0)).then(() => order.push('OK 0'));
  const sendMs = performance.now() - sendStart;
  assert.deepEqual(order, ['MSG 0', 'OK 0'], 'the subscriber had the message before the sender was answered');
  assert.ok(sendMs >= SLOW_SYNC_MS, `the OK came after the sync returned (${sendMs.toFixed(0)} ms)`);
  sub.close();

  // 2. Held messages drained by GET and ACK: no sync of the WAL while the ACKs are answered.
  const n = 20;
  await Promise.all(Array.from({ length: n }, (_, i) => sender.send(q.sndId, senderKey.privateKey, body(i + 1))));
  const reader = await RelayClient.connect(relay.address);
  const start = Date.now();
  const seqs = await drain(reader, q, seqOf);
  const end = Date.now();
  reader.close();
  sender.close();
  assert.deepEqual(seqs, Array.from({ length: n }, (_, i) => i + 1), 'every message drained in order');
  const walSyncs = () => parseSyncs(readFileSync(traceFile, 'utf8')).filter((s) => s.path === wal);
  const during = walSyncs().filter((s) => s.at >= start && s.at <= end);
  t.diagnostic(`drain of ${n} messages in ${end - start} ms with ${during.length} syncs of the WAL`);
  assert.ok(during.length < n / 4, `a drain of ${n} messages synced the WAL ${during.length} times`);
  // 3. With nothing else to write, the deletions are synced soon after all the same (DEFERRED_SYNC_MS).
  const until = Date.now() + 10_000;
  while (!walSyncs().some((s) => s.at > end) && Date.now() < until) await sleep(100);
  assert.ok(walSyncs().some((s) => s.at > end), 'the deletions were synced after the drain');
  assert.equal(await signalRelay(relay, 'SIGTERM'), 0);
});

/** A stopped relay's data folder whose store holds a few hundred small messages (many b-tree pages). */
async function storeWithMessages(): Promise<string> {
  const dataDir = scratch('murmure-corrupt-');
  const relay = await launch({ dataDir });
  const c = await RelayClient.connect(relay.address);
  const { q, senderKey } = await securedQueue(c);
  const { body } = numberedBodies(300);
  await Promise.all(Array.from({ length: 120 }, (_, seq) => c.send(q.sndId, senderKey.privateKey, body(seq))));
  c.close();
  assert.equal(await signalRelay(relay, 'SIGTERM'), 0);
  assert.equal(existsSync(join(dataDir, 'relay.sqlite-wal')), false, 'the clean stop checkpointed the WAL');
  return dataDir;
}

/** Runs `murmure relay start` on a damaged store: it must fail fast, in one line, without touching the file. */
function assertRefusesToStart(dataDir: string, says: RegExp = /corrupt|integrity/i): void {
  const db = join(dataDir, 'relay.sqlite');
  const hash = (): string => createHash('sha256').update(readFileSync(db)).digest('hex');
  const before = hash();
  const r = spawnSync(process.execPath, [MURMURE_BIN, 'relay', 'start', '--data', dataDir, '--host', '127.0.0.1', '--port', '0'], { encoding: 'utf8', timeout: 15_000 });
  assert.equal(r.signal, null, `the relay exited by itself (stdout: ${r.stdout})`);
  assert.notEqual(r.status, 0, 'exit code is not 0');
  assert.equal(r.stdout, '', 'no address is printed');
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  assert.equal(lines.length, 1, `one line on stderr: ${JSON.stringify(r.stderr)}`);
  assert.ok(!r.stderr.split('\n').some((l) => l.startsWith('    at ')), 'no stack trace');
  assert.match(lines[0]!, new RegExp(`^murmure: .*(${says.source})`, says.flags), 'the line says what is wrong with the store');
  assert.equal(hash(), before, 'the store file is unchanged');

  const j = spawnSync(process.execPath, [MURMURE_BIN, 'relay', 'start', '--data', dataDir, '--host', '127.0.0.1', '--port', '0', '--json'], { encoding: 'utf8', timeout: 15_000 });
  assert.notEqual(j.status, 0, 'exit code is not 0 with --json either');
  assert.equal((JSON.parse(j.stdout) as { error: { code: string } }).error.code, 'STORE_CORRUPT', 'the JSON error names the cause');
  assert.ok(!j.stderr.split('\n').some((l) => l.startsWith('    at ')), 'no stack trace with --json');
  assert.equal(hash(), before, 'the store file is unchanged');
}

/** Messages put into the store before the migration test: enough for an index of ~1,000 pages. */
const MIGRATION_MESSAGES = 200_000;

/** Takes a store back to schema 1 (before the index of arrival times), as an older relay left it. */
function toSchema1(dbPath: string): void {
  const db = new Database(dbPath);
  try {
    db.exec('DROP INDEX IF EXISTS messages_received');
    db.pragma('user_version = 1');
    db.pragma('wal_checkpoint(TRUNCATE)');
  } finally {
    db.close();
  }
}

/** Schema version, whether the index exists, the integrity check and the message count. */
function storeState(dbPath: string): { version: number; index: boolean; check: unknown; messages: number } {
  const db = new Database(dbPath);
  try {
    return {
      version: Number(db.pragma('user_version', { simple: true })),
      index: db.prepare("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'messages_received'", { pluck: true }).get() === 1,
      check: db.pragma('quick_check', { simple: true }),
      messages: Number(db.prepare('SELECT count(*) FROM messages', { pluck: true }).get()),
    };
  } finally {
    db.close();
  }
}

/**
 * Runs `murmure relay start` under strace, which is to kill it; resolves with how strace (which
 * ends as its tracee did) exited. A relay that survives to print its address is killed with its
 * process group, and the exit then says `survived`.
 */
function killedRelay(dataDir: string, strace: readonly string[]): Promise<NodeJS.Signals | number | 'survived' | null> {
  const p = spawn(STRACE, [...strace, process.execPath, MURMURE_BIN, 'relay', 'start', '--data', dataDir, '--port', '0', '--json'], { stdio: ['ignore', 'pipe', 'ignore'], detached: true });
  let survived = false;
  const killGroup = (): void => {
    survived = true;
    process.kill(-p.pid!, 'SIGKILL');
  };
  p.stdout.once('data', killGroup);
  const timer = setTimeout(killGroup, 60_000);
  return new Promise((resolve) =>
    p.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve(survived ? 'survived' : (signal ?? code));
    }),
  );
}

test('kill -9 in the middle of a migration leaves the store at the old schema or the new, whole; the next start migrates it (F9)', { timeout: 120_000 }, async (t) => {
  assert.ok(existsSync(STRACE), 'strace is installed');
  const dataDir = scratch('murmure-migrate-');
  const first = await launch({ dataDir });
  const c1 = await RelayClient.connect(first.address);
  const { q, senderKey } = await securedQueue(c1);
  await c1.send(q.sndId, senderKey.privateKey, utf8('the first message'));
  c1.close();
  assert.equal(await signalRelay(first, 'SIGTERM'), 0);
  const dbPath = join(dataDir, 'relay.sqlite');
  const wal = `${dbPath}-wal`;
  // 200,000 more messages, newer than the first, so that building the index takes ~1,000 pages.
  const fill = new Database(dbPath);
  fill.prepare(
    'WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) ' +
      'INSERT INTO messages (rcv_id, msg_id, received_at, body) SELECT ?, randomblob(24), ? + i, randomblob(100) FROM n',
  ).run([MIGRATION_MESSAGES, q.rcvId, Date.now()] as never);
  fill.prepare('UPDATE queues SET msg_count = msg_count + ? WHERE rcv_id = ?').run([MIGRATION_MESSAGES, q.rcvId] as never);
  fill.close();

  // How many writes to the WAL the migration makes (nothing else writes before the relay serves),
  // counted on the second migration of the store: the first leaves it as every later one finds it
  // (free pages from the index dropped after a build by CREATE INDEX).
  toSchema1(dbPath);
  const warm = await launch({ dataDir });
  assert.equal(await signalRelay(warm, 'SIGTERM'), 0);
  toSchema1(dbPath);
  const countFile = join(scratch('murmure-strace-'), 'writes');
  const counted = await launch({ dataDir, wrapper: [STRACE, '-f', '-P', wal, '-e', 'trace=pwrite64', '-o', countFile] });
  const probe = await RelayClient.connect(counted.address);
  await probe.ping();
  probe.close();
  assert.equal(await signalRelay(counted, 'SIGTERM'), 0, 'a full migration and a clean stop');
  const writes = readFileSync(countFile, 'utf8').split('\n').filter((l) => /pwrite64\(/.test(l)).length;
  assert.ok(writes > 100, `the migration writes many pages to the WAL (${writes})`);

  // Killed as it starts its first write, a third of them, two thirds, its last (the commit), and
  // once the migration is done, as the relay starts to listen.
  const expected = MIGRATION_MESSAGES + 1;
  const outcomes: string[] = [];
  const kills = [1, Math.ceil(writes / 3), Math.ceil((2 * writes) / 3), writes].map((at) => ({ at: `write ${at}`, strace: ['-P', wal, '-e', `inject=pwrite64:signal=SIGKILL:when=${at}`] }));
  kills.push({ at: 'listen', strace: ['-e', 'inject=listen:signal=SIGKILL'] });
  for (const { at, strace } of kills) {
    toSchema1(dbPath);
    const killed = await killedRelay(dataDir, ['-f', ...strace, '-o', '/dev/null']);
    assert.equal(killed, 'SIGKILL', `killed at ${at} (of ${writes} writes)`);
    const s = storeState(dbPath);
    outcomes.push(`${at}: schema ${s.version}`);
    assert.equal(s.check, 'ok', `after a kill at ${at}: the store is whole`);
    assert.ok(s.version === 1 || s.version === 2, `after a kill at ${at}: schema 1 or 2, not ${s.version}`);
    assert.equal(s.index, s.version === 2, 'the index exists exactly when the schema says so');
    assert.equal(s.messages, expected, 'no message lost');
    // The next start finishes the migration and serves the queue.
    const again = await launch({ dataDir });
    const c = await RelayClient.connect(again.address);
    const m = await c.get(q);
    assert.ok(m !== null && Buffer.from(openDelivered(q, m.msgId, m.body).body).toString() === 'the first message', 'the queue is served, oldest first');
    c.close();
    assert.equal(await signalRelay(again, 'SIGTERM'), 0);
    const after = storeState(dbPath);
    assert.deepEqual([after.version, after.index, after.messages], [2, true, expected], 'migrated on the next start');
  }
  t.diagnostic(`the migration wrote ${writes} times to the WAL; killed at ${outcomes.join(', ')}`);
  assert.ok(outcomes.slice(0, 4).every((o) => o.endsWith('schema 1')), 'a kill before the commit leaves schema 1');
  assert.ok(outcomes[4]!.endsWith('schema 2'), 'a kill after it leaves schema 2');
});

test('a store with flipped bytes in the middle is refused at start with one clear line, and left as it was (F9)', { timeout: 60_000 }, async (t) => {
  const dataDir = await storeWithMessages();
  const db = join(dataDir, 'relay.sqlite');
  const bytes = readFileSync(db);
  const raw = bytes.readUInt16BE(16);
  const pageSize = raw === 1 ? 65_536 : raw;
  const pages = bytes.length / pageSize;
  assert.ok(pages >= 10, `the store has pages to damage (${pages})`);
  const mid = Math.floor(pages / 2);
  const at = mid * pageSize;
  t.diagnostic(`${pages} pages of ${pageSize} bytes; flipping the header of page ${mid + 1} (type ${bytes[at]})`);
  assert.ok([2, 5, 10, 13].includes(bytes[at]!), 'the middle page is a b-tree page');
  for (let i = at; i < at + 12; i++) bytes[i] = bytes[i]! ^ 0xff;
  writeFileSync(db, bytes);
  assertRefusesToStart(dataDir);
});

test('a store cut short is refused at start with one clear line, and left as it was (F9)', { timeout: 60_000 }, async () => {
  const dataDir = await storeWithMessages();
  const db = join(dataDir, 'relay.sqlite');
  const bytes = readFileSync(db);
  const raw = bytes.readUInt16BE(16);
  const pageSize = raw === 1 ? 65_536 : raw;
  truncateSync(db, Math.floor(bytes.length / pageSize / 2) * pageSize);
  assertRefusesToStart(dataDir);
});

test('a store written by a newer relay (a schema this relay does not know) is refused at start, and left as it was (F9)', { timeout: 60_000 }, async () => {
  const dataDir = await storeWithMessages();
  const db = new Database(join(dataDir, 'relay.sqlite'));
  const known = Number(db.pragma('user_version', { simple: true }));
  db.pragma(`user_version = ${known + 1}`);
  db.close();
  assertRefusesToStart(dataDir, /newer version/);
});
