// SPDX-License-Identifier: AGPL-3.0-or-later
// F2 and F3: agents killed with SIGKILL at random (seeded) moments lose nothing and show nothing
// twice. Two homes are connected through a real relay process by driver processes
// (agent-driver.js); then 500 numbered messages flow from sender to receiver while the sender
// (F3: resumes from its outbox, composes nothing twice) or the receiver (F2: ratchet, message and
// sequence commit together before the ACK) is killed and restarted several times. At the end the
// receiver's table holds every message exactly once, in sequence order.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { AGENT_MIGRATIONS, LocalDatabase } from '@murmure/agent';

import { cleanup, seededRandom, sleep, startRelay, stopRelay, tempDir, type RelayProcess } from './harness.js';

const DRIVER = join(dirname(fileURLToPath(import.meta.url)), 'agent-driver.js');
const N = Number(process.env['MURMURE_EXACTLY_ONCE_N'] ?? 500);
const KILLS = 10;
const SEED = Number(process.env['MURMURE_SEED'] ?? 20_240_611);

/** A driver child process and the lines it printed. */
class Driver {
  readonly lines: string[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private waiters: (() => void)[] = [];
  readonly proc: ChildProcess;
  readonly stderr: string[] = [];

  constructor(args: string[], key: string) {
    this.proc = spawn(process.execPath, [DRIVER, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MURMURE_DRIVER_KEY: key } });
    this.proc.stderr?.setEncoding('utf8').on('data', (s: string) => this.stderr.push(s));
    createInterface({ input: this.proc.stdout! }).on('line', (l) => {
      this.lines.push(l);
      for (const w of this.waiters) w();
    });
    this.exited = new Promise((res) => this.proc.once('exit', (code, signal) => res({ code, signal })));
  }

  /** Resolves with the first line matching `re`, waiting up to `ms`. */
  async line(re: RegExp, ms = 20_000): Promise<RegExpExecArray> {
    const end = Date.now() + ms;
    for (;;) {
      for (const l of this.lines) {
        const m = re.exec(l);
        if (m !== null) return m;
      }
      if (this.proc.exitCode !== null || this.proc.signalCode !== null || Date.now() > end) {
        throw new Error(`driver never printed ${re}: ${this.lines.slice(-5).join(' | ')} ${this.stderr.join('')}`);
      }
      await new Promise<void>((res) => {
        const t = setTimeout(res, 50);
        this.waiters.push(() => {
          clearTimeout(t);
          res();
        });
      });
      this.waiters = [];
    }
  }

  kill9(): Promise<unknown> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
    return this.exited;
  }

  /** Waits for a clean exit, failing with the driver's output otherwise. */
  async success(ms = 60_000): Promise<void> {
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), ms);
    const r = await this.exited;
    clearTimeout(timer);
    assert.equal(r.code, 0, `driver failed (${r.code ?? r.signal}): ${this.lines.slice(-5).join(' | ')} ${this.stderr.join('')}`);
  }
}

type Home = { db: string; key: string };

let relay: RelayProcess;
let dir: string;
const running = new Set<Driver>();

function driver(home: Home, args: string[]): Driver {
  const d = new Driver([...args, '--db', home.db], home.key);
  running.add(d);
  void d.exited.then(() => running.delete(d));
  return d;
}

before(async () => {
  // A quota above N: while the receiver is down the whole conversation waits on the relay.
  relay = await startRelay({ args: ['--quota', String(N + 100)] });
  dir = tempDir();
});
after(async () => {
  await Promise.all([...running].map((d) => d.kill9()));
  await stopRelay(relay);
  cleanup(relay.dataDir);
  cleanup(dir);
});

/** Two homes, the receiver invited and the sender joined, both processes exited. */
async function connectedPair(name: string): Promise<{ sender: Home; receiver: Home }> {
  const receiver = { db: join(dir, `${name}-receiver`, 'home.db'), key: randomBytes(32).toString('hex') };
  const sender = { db: join(dir, `${name}-sender`, 'home.db'), key: randomBytes(32).toString('hex') };
  const inviter = driver(receiver, ['invite', '--relay', relay.address, '--profile', 'receiver']);
  const link = (await inviter.line(/^link (\S+)$/))[1]!;
  const joiner = driver(sender, ['join', '--relay', relay.address, '--link', link, '--profile', 'sender']);
  await Promise.all([inviter.success(), joiner.success()]);
  return { sender, receiver };
}

/** Reads a home's database after its drivers exited. */
function readHome<T>(home: Home, f: (db: LocalDatabase) => T): T {
  const db = LocalDatabase.open(home.db, new Uint8Array(Buffer.from(home.key, 'hex')), AGENT_MIGRATIONS);
  try {
    return f(db);
  } finally {
    db.close();
  }
}

/** What the sender printed as stored (or recovered): number → seq. */
function storedBy(d: Driver, into: Map<number, number>): void {
  for (const l of d.lines) {
    const m = /^(?:stored|recovered) (\d+) (\d+)$/.exec(l);
    if (m === null) continue;
    const num = Number(m[1]);
    const seq = Number(m[2]);
    const had = into.get(num);
    assert.ok(had === undefined || had === seq, `message ${num} was stored twice (seq ${had} and ${seq})`);
    into.set(num, seq);
  }
}

/** The final checks: every message exactly once in order, nothing reported missing, outbox empty. */
function checkHomes(sender: Home, receiver: Home, stored: Map<number, number>): void {
  assert.equal(stored.size, N, 'every number was stored once');
  const inbox = readHome(receiver, (db) => ({
    rows: db.db.prepare('SELECT seq, text FROM driver_inbox ORDER BY id').all() as { seq: number; text: string }[],
    events: db.db.prepare('SELECT type, a, b FROM driver_events').all() as { type: string; a: number; b: number }[],
  }));
  const texts = inbox.rows.map((r) => r.text);
  const dupes = texts.filter((t, i) => texts.indexOf(t) !== i);
  assert.deepEqual(dupes, [], 'no message shown twice');
  assert.deepEqual(
    texts,
    Array.from({ length: N }, (_, i) => `m:${i + 1}`),
    'every message once, in order',
  );
  for (const r of inbox.rows) assert.equal(r.seq, stored.get(Number(r.text.slice(2))), `${r.text} arrived with the seq its send() resolved with`);
  for (let i = 1; i < inbox.rows.length; i++) assert.ok(inbox.rows[i]!.seq > inbox.rows[i - 1]!.seq, 'sequence order');
  assert.deepEqual(inbox.events, [], 'no gap, bad-hash or failure was reported');
  const left = readHome(sender, (db) => db.db.prepare("SELECT status, count(*) AS n FROM agent_outbox WHERE kind = 'message' GROUP BY status").all() as { status: string; n: number }[]);
  assert.deepEqual(left, [{ status: 'sent', n: N }], "the sender's outbox holds every message as sent");
}

test(`F3: the sender is killed ${KILLS} times while sending ${N} messages; each arrives exactly once`, async (t) => {
  const started = Date.now();
  const rnd = seededRandom(SEED);
  const { sender, receiver } = await connectedPair('f3');
  const rec = driver(receiver, ['receive', '--until', String(N)]);
  await rec.line(/^ready$/);
  const stored = new Map<number, number>();
  let interrupted = 0;
  let resumed = 0;
  let whileSending = 0;
  let sentBefore = 0;
  for (let k = 0; k < KILLS; k++) {
    const next = stored.size === 0 ? 1 : Math.max(...stored.keys()) + 1;
    const s = driver(sender, ['send', '--count', String(N), '--from', String(next)]);
    await s.line(/^ready \d+$/);
    // Random moments inside the send path (composing, storing, sending, marking sent), however
    // fast the machine: a few milliseconds after a random one of the next 20 messages is stored.
    // A number the killed run stored without its line reaching us is `recovered` by this one.
    const after = next + Math.floor(rnd() * Math.min(20, N - next + 1));
    await s.line(new RegExp(`^(?:stored|recovered) ${after} `));
    await sleep(rnd() * 8);
    const wasIdle = s.lines.includes('idle');
    await s.kill9();
    storedBy(s, stored);
    if (!wasIdle) interrupted++;
    // Stored but not yet taken by the relay: the next run must send these from the outbox.
    const outbox = readHome(sender, (db) => db.db.prepare("SELECT status, count(*) AS n FROM agent_outbox WHERE kind = 'message' GROUP BY status").all() as { status: string; n: number }[]);
    const queued = outbox.find((r) => r.status === 'queued')?.n ?? 0;
    const sent = outbox.find((r) => r.status === 'sent')?.n ?? 0;
    if (queued > 0) resumed++;
    if (sent > sentBefore && queued > 0) whileSending++;
    sentBefore = sent;
    t.diagnostic(`kill ${k + 1}: ${stored.size} stored so far, ${sent} taken by the relay, ${queued} left in the outbox`);
  }
  assert.ok(interrupted >= 3, `several kills hit the sender while it worked (${interrupted})`);
  assert.ok(resumed > 0, 'some kills left stored messages unsent');
  assert.ok(whileSending > 0, 'some kills hit the sender while its outbox was sending');
  const last = driver(sender, ['send', '--count', String(N), '--from', String(Math.max(0, ...stored.keys()) + 1)]);
  await last.success();
  storedBy(last, stored);
  await rec.success();
  checkHomes(sender, receiver, stored);
  t.diagnostic(`seed ${SEED}, ${Date.now() - started} ms`);
});

test(`F2: the receiver is killed ${KILLS} times while ${N} messages arrive; each is stored exactly once`, async (t) => {
  const started = Date.now();
  const rnd = seededRandom(SEED + 1);
  const { sender, receiver } = await connectedPair('f2');
  // A few messages every 20 ms, so that arrival lasts about two seconds and the kills land in it
  // (sent at once, the outbox would batch them and they would arrive in a few relay messages).
  const snd = driver(sender, ['send', '--count', String(N), '--pause-every', '4', '--pause-ms', '20']);
  await snd.line(/^ready \d+$/);
  let got = 0;
  let hitWhileArriving = 0;
  for (let k = 0; k < KILLS; k++) {
    const r = driver(receiver, ['receive']);
    await r.line(/^ready$/);
    // Random moments inside the receive path: decrypt, commit, ACK, receipts.
    await sleep(50 + rnd() * 500);
    await r.kill9();
    got += r.lines.filter((l) => l.startsWith('got ')).length;
    // The message, the ratchet step and the sequence number were committed together.
    const { rows, lastSeq } = readHome(receiver, (db) => ({
      rows: db.db.prepare('SELECT seq FROM driver_inbox ORDER BY id', { pluck: true }).all() as number[],
      lastSeq: Number(db.db.prepare("SELECT last_rcv_seq FROM agent_connections WHERE status = 'connected'", { pluck: true }).get()),
    }));
    assert.equal(lastSeq, rows.at(-1) ?? 1, 'the last stored message is the last sequence number seen');
    assert.equal(new Set(rows).size, rows.length, 'nothing stored twice');
    if (rows.length > 0 && rows.length < N) hitWhileArriving++;
    t.diagnostic(`kill ${k + 1}: ${got} messages shown, ${rows.length} stored so far`);
  }
  assert.ok(hitWhileArriving > 0, `some kills hit the receiver while messages arrived (${hitWhileArriving})`);
  const rec = driver(receiver, ['receive', '--until', String(N)]);
  await rec.success();
  await snd.success();
  const stored = new Map<number, number>();
  storedBy(snd, stored);
  checkHomes(sender, receiver, stored);
  t.diagnostic(`seed ${SEED}, ${Date.now() - started} ms`);
});
