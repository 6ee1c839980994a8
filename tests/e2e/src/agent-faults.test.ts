// SPDX-License-Identifier: AGPL-3.0-or-later
// Agent faults against a real relay process (started with --quota 5000):
// - R6, hold then burst: the relay holds 3,000 messages from Alice while Bob is offline; Bob (a
//   driver child process) comes online and stores each exactly once, in order, with no gap, and
//   his resident memory stays bounded (the growth is reported).
// - F7, network partition: a TCP proxy in this test sits between the agents and the relay; it is
//   cut (every socket destroyed, new ones refused) for a few seconds while both sides send; once
//   it is restored every message arrives exactly once and in order, and the agents reconnected by
//   themselves, with a bounded number of attempts (backoff).
// - D2, a database modified by an attacker: the contact's identity key swapped in Bob's database
//   makes Bob's safety number differ from Alice's and from the one he recorded as verified.
// - F6, clock skew: Alice's clock is a day ahead and Bob's a day behind, the relay's is right;
//   messages still flow both ways, shown in sequence order whatever the time stamps say.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { AGENT_MIGRATIONS, Agent, LocalDatabase, type IncomingEvent } from '@murmure/agent';

import { cleanup, sleep, startRelay, stopRelay, tempDir, utf8, type RelayProcess } from './harness.js';

const DRIVER = join(dirname(fileURLToPath(import.meta.url)), 'agent-driver.js');
const HELD = 3000;
const DAY_MS = 86_400_000;

let relay: RelayProcess;
let dir: string;
/** Everything to stop in after(), whatever happened. */
const agents: Side[] = [];
const drivers = new Set<ChildProcess>();
let proxy: Proxy | null = null;

before(async () => {
  relay = await startRelay({ args: ['--quota', '5000'] });
  dir = tempDir();
});
after(async () => {
  for (const s of agents) await s.close();
  for (const d of drivers) if (d.exitCode === null && d.signalCode === null) d.kill('SIGKILL');
  await proxy?.close();
  await stopRelay(relay);
  cleanup(relay.dataDir);
  cleanup(dir);
});

async function until(f: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`${what}: not met in ${ms} ms`);
    await sleep(20);
  }
}

// In-process agents.

/** One agent over its own encrypted database, with what it committed and saw. */
type Side = {
  name: string;
  path: string;
  key: Uint8Array;
  db: LocalDatabase;
  agent: Agent;
  /** Messages committed inside the agent's transaction, in order. */
  inbox: { seq: number; sentAt: number; receivedAt: number; text: string }[];
  /** Gaps and broken hash chains reported. */
  anomalies: IncomingEvent[];
  problems: string[];
  close(): Promise<void>;
};

function makeSide(name: string, now?: () => number): Side {
  const path = join(dir, `${name}.db`);
  const key = new Uint8Array(randomBytes(32));
  const db = LocalDatabase.open(path, key, AGENT_MIGRATIONS);
  const inbox: Side['inbox'] = [];
  const anomalies: IncomingEvent[] = [];
  const problems: string[] = [];
  const agent = new Agent({
    db,
    ...(now !== undefined ? { now } : {}),
    handler: {
      incoming: (ev) => {
        if (ev.type === 'message') inbox.push({ seq: ev.seq, sentAt: ev.sentAt, receivedAt: ev.receivedAt, text: new TextDecoder().decode(ev.payload) });
        else if (ev.type === 'gap' || ev.type === 'bad-hash') anomalies.push(ev);
      },
      sent: () => undefined,
      connected: () => undefined,
      failed: () => undefined,
      replyPayload: () => utf8(`{"name":"${name}"}`),
    },
  });
  agent.on('problem', (p: { message: string }) => problems.push(p.message));
  let closed = false;
  const side: Side = {
    name, path, key, db, agent, inbox, anomalies, problems,
    async close() {
      if (closed) return;
      closed = true;
      await agent.stop();
      db.close();
    },
  };
  agents.push(side);
  agent.start();
  return side;
}

/** Alice invites on `address`, Bob joins; resolves once both sides are connected. */
async function connect(alice: Side, bob: Side, address: string): Promise<{ aliceConn: string; bobConn: string }> {
  const { connId: aliceConn, link } = await alice.agent.createInvitation(address);
  const bobConn = await bob.agent.join(link, address, utf8(`{"name":"${bob.name}"}`));
  const status = (s: Side, id: string) => s.agent.connections().find((c) => c.id === id)?.status;
  await until(() => status(alice, aliceConn) === 'connected' && status(bob, bobConn) === 'connected', 15_000, 'both sides connected');
  return { aliceConn, bobConn };
}

/** Every text `${prefix}${1..n}` exactly once, in order, with increasing sequence numbers. */
function assertExactlyOnceInOrder(s: Side, prefix: string, n: number): void {
  const texts = s.inbox.filter((m) => m.text.startsWith(prefix)).map((m) => m.text);
  const dupes = texts.filter((t, i) => texts.indexOf(t) !== i);
  assert.deepEqual(dupes, [], `${s.name}: nothing shown twice`);
  assert.deepEqual(texts, Array.from({ length: n }, (_, i) => `${prefix}${i + 1}`), `${s.name}: every message once, in order`);
  for (let i = 1; i < s.inbox.length; i++) assert.ok(s.inbox[i]!.seq > s.inbox[i - 1]!.seq, `${s.name}: sequence order`);
  assert.deepEqual(s.anomalies, [], `${s.name}: no gap or broken hash chain reported`);
}

// A driver child process (agent-driver.js), for the side whose memory is measured.

type Driver = { proc: ChildProcess; lines: string[]; stderr: string[]; exited: Promise<number | null> };

function runDriver(home: { db: string; key: string }, args: string[]): Driver {
  const proc = spawn(process.execPath, [DRIVER, ...args, '--db', home.db], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MURMURE_DRIVER_KEY: home.key } });
  drivers.add(proc);
  const d: Driver = {
    proc,
    lines: [],
    stderr: [],
    exited: new Promise((res) => proc.once('exit', (code) => {
      drivers.delete(proc);
      res(code);
    })),
  };
  proc.stderr?.setEncoding('utf8').on('data', (s: string) => d.stderr.push(s));
  createInterface({ input: proc.stdout! }).on('line', (l) => d.lines.push(l));
  return d;
}

async function driverLine(d: Driver, re: RegExp, ms: number): Promise<RegExpExecArray> {
  let m: RegExpExecArray | null = null;
  await until(() => {
    for (const l of d.lines) if ((m = re.exec(l)) !== null) return true;
    if (d.proc.exitCode !== null) throw new Error(`driver exited (${d.proc.exitCode}) before ${re}: ${d.lines.slice(-5).join(' | ')} ${d.stderr.join('')}`);
    return false;
  }, ms, `driver printed ${re}`);
  return m as unknown as RegExpExecArray;
}

async function driverSuccess(d: Driver, ms: number): Promise<void> {
  const timer = setTimeout(() => d.proc.kill('SIGKILL'), ms);
  const code = await d.exited;
  clearTimeout(timer);
  assert.equal(code, 0, `driver failed: ${d.lines.slice(-5).join(' | ')} ${d.stderr.join('')}`);
}

/** Resident and peak resident memory of a process, in bytes (Linux). */
function memoryOf(pid: number): { rss: number; hwm: number } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
    return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
  } catch {
    return null;
  }
}

function readHome<T>(home: { db: string; key: string }, f: (db: LocalDatabase) => T): T {
  const db = LocalDatabase.open(home.db, new Uint8Array(Buffer.from(home.key, 'hex')), AGENT_MIGRATIONS);
  try {
    return f(db);
  } finally {
    db.close();
  }
}

test(`R6: the relay holds ${HELD} messages while Bob is offline; he then gets each exactly once, with bounded memory`, async (t) => {
  const started = Date.now();
  const bob = { db: join(dir, 'r6-bob', 'home.db'), key: randomBytes(32).toString('hex') };
  const alice = { db: join(dir, 'r6-alice', 'home.db'), key: randomBytes(32).toString('hex') };
  const inviter = runDriver(bob, ['invite', '--relay', relay.address, '--profile', 'bob']);
  const link = (await driverLine(inviter, /^link (\S+)$/, 20_000))[1]!;
  const joiner = runDriver(alice, ['join', '--relay', relay.address, '--link', link, '--profile', 'alice']);
  await Promise.all([driverSuccess(inviter, 30_000), driverSuccess(joiner, 30_000)]);

  // Bob is offline: the relay takes all of Alice's messages and holds them.
  const sender = runDriver(alice, ['send', '--count', String(HELD)]);
  await driverSuccess(sender, 40_000);
  assert.ok(sender.lines.includes('idle'), 'the relay accepted every message');
  const sentAt = Date.now();
  const sent = readHome(alice, (db) => db.db.prepare("SELECT count(*) FROM agent_outbox WHERE kind = 'message' AND status = 'sent'", { pluck: true }).get());
  assert.equal(Number(sent), HELD);
  t.diagnostic(`${HELD} messages held by the relay after ${sentAt - started} ms`);

  // Bob comes online: the whole backlog drains as one burst.
  const receiver = runDriver(bob, ['receive', '--until', String(HELD)]);
  await driverLine(receiver, /^ready$/, 20_000);
  const pid = receiver.proc.pid!;
  const base = memoryOf(pid);
  assert.ok(base !== null);
  let peak = base.rss;
  let hwm = base.hwm;
  const sampler = setInterval(() => {
    const m = memoryOf(pid);
    // An exiting process (a zombie) has no memory lines: nothing to sample.
    if (m === null || Number.isNaN(m.rss) || Number.isNaN(m.hwm)) return;
    peak = Math.max(peak, m.rss);
    hwm = Math.max(hwm, m.hwm);
  }, 50);
  try {
    await driverSuccess(receiver, 45_000);
  } finally {
    clearInterval(sampler);
  }
  const drainMs = Date.now() - sentAt;
  const rows = readHome(bob, (db) => ({
    inbox: db.db.prepare('SELECT seq, text FROM driver_inbox ORDER BY id').all() as { seq: number; text: string }[],
    events: db.db.prepare('SELECT type, a, b FROM driver_events').all() as { type: string; a: number; b: number }[],
  }));
  const texts = rows.inbox.map((r) => r.text);
  assert.equal(new Set(texts).size, texts.length, 'nothing stored twice');
  assert.deepEqual(texts, Array.from({ length: HELD }, (_, i) => `m:${i + 1}`), 'every message once, in order');
  for (let i = 1; i < rows.inbox.length; i++) assert.ok(rows.inbox[i]!.seq > rows.inbox[i - 1]!.seq, 'sequence order');
  assert.deepEqual(rows.events, [], 'no gap, bad-hash or failure');
  assert.ok(!receiver.lines.some((l) => l.startsWith('problem ')), `no problem reported: ${receiver.lines.filter((l) => l.startsWith('problem ')).slice(0, 3).join(' | ')}`);
  const growth = peak - base.rss;
  const MiB = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
  t.diagnostic(`Bob drained ${HELD} held messages in ${drainMs} ms; RSS ${MiB(base.rss)} at start, peak ${MiB(peak)} (growth ${MiB(growth)}), VmHWM ${MiB(hwm)}`);
  assert.ok(growth < 128 * 1048576, `Bob's RSS grew by ${MiB(growth)} while draining`);
});

// A TCP proxy that can be cut.

type Proxy = { port: number; accepted: number; refused: number; cut(): void; restore(): void; close(): Promise<void> };

function startProxy(target: number): Promise<Proxy> {
  const sockets = new Set<Socket>();
  let down = false;
  const server: Server = createServer((client) => {
    if (down) {
      p.refused++;
      client.resetAndDestroy();
      return;
    }
    p.accepted++;
    const upstream = netConnect(target, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  const p: Proxy = {
    port: 0,
    accepted: 0,
    refused: 0,
    cut() {
      down = true;
      for (const s of sockets) s.resetAndDestroy();
      sockets.clear();
    },
    restore() {
      down = false;
    },
    close() {
      this.cut();
      return new Promise((res) => server.close(() => res()));
    },
  };
  return new Promise((res, rej) => {
    server.once('error', rej);
    server.listen(0, '127.0.0.1', () => {
      p.port = (server.address() as { port: number }).port;
      res(p);
    });
  });
}

test('F7: a partition cut for 3 s while both sides send; the agents reconnect and every message arrives exactly once', async (t) => {
  const N = 120;
  const CUT_MS = 3000;
  proxy = await startProxy(relay.port);
  const viaProxy = relay.address.replace(/:\d+$/, `:${proxy.port}`);
  const alice = makeSide('f7-alice');
  const bob = makeSide('f7-bob');
  const { aliceConn, bobConn } = await connect(alice, bob, viaProxy);
  const before = proxy.accepted;

  // Both sides send N messages, one every 25 ms; the proxy is cut a second in, for CUT_MS.
  const sending = (async () => {
    for (let i = 1; i <= N; i++) {
      await alice.agent.send(aliceConn, utf8(`a:${i}`));
      await bob.agent.send(bobConn, utf8(`b:${i}`));
      await sleep(25);
    }
  })();
  await sleep(1000);
  const flowed = { bob: bob.inbox.length, alice: alice.inbox.length };
  proxy.cut();
  const cutAt = Date.now();
  // What had reached an agent before the cut (a batch still being opened) may land just after
  // it: the count starts half a second into the cut.
  await sleep(500);
  const atCut = { bob: bob.inbox.length, alice: alice.inbox.length };
  await sleep(CUT_MS - 500);
  const duringCut = { bob: bob.inbox.length - atCut.bob, alice: alice.inbox.length - atCut.alice };
  const refused = proxy.refused;
  proxy.restore();
  const restoredAt = Date.now();
  await sending;
  await until(() => bob.inbox.length >= N && alice.inbox.length >= N, 30_000, 'every message arrived');
  const drainedAt = Date.now();
  await sleep(300); // anything shown twice would show now

  assertExactlyOnceInOrder(bob, 'a:', N);
  assertExactlyOnceInOrder(alice, 'b:', N);
  assert.ok(flowed.bob > 0 && flowed.alice > 0, 'messages flowed before the cut');
  assert.ok(duringCut.bob <= 1 && duringCut.alice <= 1, `nothing flowed during the cut (${duringCut.bob}, ${duringCut.alice})`);
  assert.ok(refused > 0, 'the agents tried to reconnect during the cut');
  // Backoff: a handful of attempts in CUT_MS, not a storm (one pool entry per agent).
  assert.ok(refused <= 20, `${refused} reconnection attempts during ${CUT_MS} ms`);
  assert.ok(proxy.accepted > before, 'the agents reconnected by themselves');
  t.diagnostic(
    `before the cut: ${flowed.alice + flowed.bob} delivered; during the ${CUT_MS} ms cut: ${refused} connection attempts refused; ` +
      `after: ${proxy.accepted - before} new connections, all ${2 * N} delivered ${drainedAt - restoredAt} ms after the restore (${drainedAt - cutAt} ms after the cut)`,
  );
  await alice.close();
  await bob.close();
  await proxy.close();
  proxy = null;
});

test("D2: a contact's identity key swapped in the database shows as a safety-number mismatch", async () => {
  const alice = makeSide('d2-alice');
  const bob = makeSide('d2-bob');
  const { aliceConn, bobConn } = await connect(alice, bob, relay.address);
  const a = alice.agent.safetyNumber(aliceConn);
  const b = bob.agent.safetyNumber(bobConn);
  assert.ok(a !== null && b !== null);
  assert.equal(b.digits, a.digits, 'before the attack both sides compute the same number');
  // Bob compared with Alice and recorded his side's code as verified (as `murmure verify --mark` does).
  const verified = b.scannable;
  await bob.close();

  // The attacker, holding Bob's database key, puts a key of their own in place of Alice's.
  const attackerKey = Buffer.concat([Buffer.of(0x05), generateKeyPairSync('x25519').publicKey.export({ format: 'der', type: 'spki' }).subarray(-32)]);
  const db = LocalDatabase.open(bob.path, bob.key, AGENT_MIGRATIONS);
  try {
    const before = db.db.prepare('SELECT remote_identity FROM agent_connections WHERE id = ?', { pluck: true }).get([bobConn] as never) as Uint8Array;
    assert.equal(before.length, 33);
    const r = db.db.prepare('UPDATE agent_connections SET remote_identity = ? WHERE id = ?').run([attackerKey, bobConn] as never);
    assert.equal(r.changes, 1);
  } finally {
    db.close();
  }

  const reopened = LocalDatabase.open(bob.path, bob.key, AGENT_MIGRATIONS);
  const again = new Agent({ db: reopened, handler: { incoming: () => undefined, sent: () => undefined, connected: () => undefined, failed: () => undefined, replyPayload: () => utf8('{}') } });
  try {
    const swapped = again.safetyNumber(bobConn);
    assert.ok(swapped !== null);
    assert.notEqual(swapped.digits, a.digits, "Bob's number no longer equals Alice's");
    assert.notEqual(swapped.digits, b.digits, 'nor the one Bob saw before');
    assert.ok(!Buffer.from(swapped.scannable).equals(Buffer.from(verified)), 'the verification compare fails: the contact is no longer verified');
    assert.equal(alice.agent.safetyNumber(aliceConn)?.digits, a.digits, "Alice's side is unchanged");
  } finally {
    await again.stop();
    reopened.close();
  }
});

test('F6: clocks a day ahead and a day behind the relay; messages flow and are ordered by sequence number', async (t) => {
  const N = 40;
  const alice = makeSide('f6-alice', () => Date.now() + DAY_MS);
  const bob = makeSide('f6-bob', () => Date.now() - DAY_MS);
  const { aliceConn, bobConn } = await connect(alice, bob, relay.address);
  for (let i = 1; i <= N; i++) {
    await alice.agent.send(aliceConn, utf8(`a:${i}`));
    await bob.agent.send(bobConn, utf8(`b:${i}`));
  }
  await until(() => bob.inbox.length >= N && alice.inbox.length >= N, 20_000, 'every message arrived');
  await sleep(200);
  assertExactlyOnceInOrder(bob, 'a:', N);
  assertExactlyOnceInOrder(alice, 'b:', N);
  const now = Date.now();
  // The time stamps carry each sender's skew; the relay's receive time is the real one.
  for (const m of bob.inbox) {
    assert.ok(Math.abs(m.sentAt - (now + DAY_MS)) < 60_000, "Alice's time stamps are a day ahead");
    assert.ok(Math.abs(m.receivedAt - now) < 60_000, "the relay's time is the real one");
  }
  for (const m of alice.inbox) assert.ok(Math.abs(m.sentAt - (now - DAY_MS)) < 60_000, "Bob's time stamps are a day behind");
  assert.deepEqual([...alice.problems, ...bob.problems], [], 'no problem reported');
  t.diagnostic(`${2 * N} messages delivered in order with ±1 day of clock skew`);
  await alice.close();
  await bob.close();
});
