// SPDX-License-Identifier: AGPL-3.0-or-later
// R1, R3, R4, R5: a malicious relay cannot make the agent lose a message silently, show one
// twice, show reordered ones out of place, or accept a changed one. The relay runs in-process
// over an EvilStore: the real SQLite queue store wrapped so that the test decides, message by
// message on one queue, to drop it while answering OK, store it again under new message ids
// (duplicates, later replays, replays across a client restart), hand messages out in another
// order, or change their bytes. The relay knows the relay-to-recipient box key, so it can re-seal
// what it changes; only the end-to-end layers stand in its way.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { AGENT_MIGRATIONS, Agent, LocalDatabase, type IncomingEvent } from '@murmure/agent';
import { decodeReceivedMessage, encodeReceivedMessage } from '@murmure/protocol';
import { openRecipientBox, randomId, sealRecipientBox } from '@murmure/queue-crypto';
import { RelayServer, SqliteQueueStore, relayConfig, type StoredMessage } from '@murmure/relay';

import { cleanup, seededRandom, sleep, tempDir, utf8 } from './harness.js';
import { TargetQueueStore } from './target-queue-store.js';

const SEED = Number(process.env['MURMURE_SEED'] ?? 7_340_021);

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}

/** What the evil store does with one message added to the target queue ('lose-ok': store it, then fail, so the sender gets no OK). */
type Action = 'store' | 'drop' | 'dup' | 'tamper' | 'lose-ok';

/** The relay's queue store, delegating to SQLite, with an adversary on one queue (the target, the receiver's). */
class EvilStore extends TargetQueueStore {
  /** Decides what happens to the n-th message (from 1) added to the target. */
  decide: (n: number) => Action = () => 'store';
  /** Changes the body of a message the relay re-seals (tamper). */
  tamper: (body: Uint8Array) => Uint8Array = (b) => b;
  /** Gives each stored message its delivery rank; lower first. Default: arrival order. */
  rank: () => number = () => this.counter;
  /** Genuine messages added to the target, by arrival (for later replays). */
  readonly genuine: StoredMessage[] = [];
  private counter = 0;

  private async boxKey(rcvId: Uint8Array): Promise<Uint8Array> {
    const q = await this.inner.queueByRecipient(rcvId);
    if (q === undefined) throw new Error('no such queue');
    return q.boxKey;
  }

  /** The SEND body a stored message was made from (inside the relay-to-recipient box). */
  async sentBody(rcvId: Uint8Array, m: StoredMessage): Promise<Uint8Array> {
    const plain = openRecipientBox(await this.boxKey(rcvId), m.msgId, m.sealed);
    if (plain === null) throw new Error('cannot open a stored message');
    return decodeReceivedMessage(plain).body;
  }

  /** The same message under a new id, its inner body changed by `change` (the relay can do this). */
  async reseal(rcvId: Uint8Array, m: StoredMessage, change: (b: Uint8Array) => Uint8Array = (b) => b): Promise<StoredMessage> {
    const key = await this.boxKey(rcvId);
    const plain = openRecipientBox(key, m.msgId, m.sealed);
    if (plain === null) throw new Error('cannot open a stored message');
    const inner = decodeReceivedMessage(plain);
    const msgId = randomId();
    return { msgId, receivedAt: m.receivedAt, sealed: sealRecipientBox(key, msgId, encodeReceivedMessage({ ...inner, body: change(inner.body) })) };
  }

  /** Stores a message in the target queue behind the relay's back (a replay or an injection). */
  async inject(m: StoredMessage): Promise<void> {
    if (this.target === null) throw new Error('no target');
    // The relay's store makes a message visible at commit, before the write resolves (after its
    // sync): the mirror takes it at once too, so it never lags behind what the relay can read.
    this.mirror(m, this.nextRank());
    assert.equal(await this.inner.addMessage(this.target, m, 100_000, Date.now()), 'ok');
  }

  /** The rank of the next message the target queue takes. */
  private nextRank(): number {
    const rank = this.rank();
    this.counter++;
    return rank;
  }

  protected async addToTarget(rcvId: Uint8Array, msg: StoredMessage, quota: number, now: number): Promise<'ok' | 'quota' | 'gone'> {
    this.genuine.push(msg);
    const action = this.decide(this.added);
    if (action === 'drop') return 'ok';
    const toStore = action === 'tamper' ? await this.reseal(rcvId, msg, this.tamper) : msg;
    const r = await this.storeRanked(rcvId, toStore, this.nextRank(), quota, now);
    if (r === 'ok' && action === 'dup') await this.inject(await this.reseal(rcvId, msg));
    if (r === 'ok' && action === 'lose-ok') throw new Error('the OK is lost');
    return r;
  }

  /** Clears the adversary for the next test. */
  reset(target: Uint8Array | null): void {
    this.target = target;
    this.decide = () => 'store';
    this.tamper = (b) => b;
    this.rank = () => this.counter;
    this.hold = false;
    this.genuine.length = 0;
    this.present.length = 0;
    this.added = 0;
  }
}

/** One side of a conversation: an agent over its own encrypted database. */
type Side = {
  name: string;
  db: LocalDatabase;
  agent: Agent;
  /** Events after commit, in order. */
  events: IncomingEvent[];
  problems: { connId: string; code: string; message: string }[];
  /** (seq, text) rows the owner committed inside the agent's transaction. */
  inbox(): { seq: number; text: string }[];
};

let dir: string;
let store: EvilStore;
let relay: RelayServer;
const sides: Side[] = [];

before(async () => {
  dir = tempDir();
  store = new EvilStore(SqliteQueueStore.open({ path: join(dir, 'relay', 'relay.sqlite') }));
  relay = await RelayServer.start(relayConfig(join(dir, 'relay'), { port: 0 }), { store });
});
after(async () => {
  for (const s of sides) {
    await s.agent.stop();
    s.db.close();
  }
  await relay.stop();
  cleanup(dir);
});

function newAgent(side: Omit<Side, 'agent' | 'inbox'> & { agent?: Agent }): Agent {
  const insert = side.db.db.prepare('INSERT INTO test_inbox (seq, text) VALUES (?, ?)');
  const agent = new Agent({
    db: side.db,
    handler: {
      incoming: (ev) => {
        if (ev.type === 'message') insert.run([ev.seq, Buffer.from(ev.payload).toString()] as never);
      },
      sent: () => undefined,
      connected: () => undefined,
      failed: () => undefined,
      replyPayload: () => utf8(side.name),
    },
  });
  agent.on('event', (ev: IncomingEvent) => side.events.push(ev));
  agent.on('problem', (p: { connId: string; code: string; message: string }) => side.problems.push(p));
  return agent;
}

function makeSide(name: string): Side {
  const db = LocalDatabase.open(join(dir, `${name}.db`), new Uint8Array(randomBytes(32)), AGENT_MIGRATIONS);
  db.db.exec('CREATE TABLE IF NOT EXISTS test_inbox (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, text TEXT NOT NULL)');
  const partial = { name, db, events: [] as IncomingEvent[], problems: [] as Side['problems'] };
  const side: Side = {
    ...partial,
    agent: newAgent(partial),
    inbox: () => db.db.prepare('SELECT seq, text FROM test_inbox ORDER BY id').all() as { seq: number; text: string }[],
  };
  sides.push(side);
  return side;
}

/** Replaces a side's agent by a fresh one on the same database (a client restart). */
async function restart(s: Side): Promise<void> {
  await s.agent.stop();
  s.agent = newAgent(s);
  s.agent.start();
}

async function until(f: () => boolean, what: string, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`${what}: not in time`);
    await sleep(10);
  }
}

/** A connected pair: `bob` sends, `alice` receives on the queue `rcvId`. */
async function pair(tag: string): Promise<{ alice: Side; bob: Side; aliceConn: string; bobConn: string; rcvId: Uint8Array }> {
  const alice = makeSide(`alice-${tag}`);
  const bob = makeSide(`bob-${tag}`);
  alice.agent.start();
  bob.agent.start();
  const { connId: aliceConn, link } = await alice.agent.createInvitation(relay.address);
  const bobConn = await bob.agent.join(link, relay.address, utf8('bob'));
  await until(() => alice.agent.connections()[0]?.status === 'connected' && bob.agent.connections()[0]?.status === 'connected', 'connected');
  await until(() => alice.agent.idle() && bob.agent.idle(), 'handshake sent');
  const row = alice.agent.store.connection(aliceConn);
  assert.ok(row?.rcv_id);
  assert.equal(await store.inner.oldestMessage(row.rcv_id), undefined, "alice's queue is empty after the handshake");
  store.reset(row.rcv_id);
  return { alice, bob, aliceConn, bobConn, rcvId: row.rcv_id };
}

/**
 * Sends `texts` from bob one at a time, as a person types: each once the relay took the one
 * before, so that each goes in a relay message of its own (the adversary decides per relay
 * message). Resolves with their seqs.
 */
async function sendAll(bob: Side, conn: string, texts: string[]): Promise<number[]> {
  const seqs: number[] = [];
  for (const t of texts) {
    seqs.push(await bob.agent.send(conn, utf8(t)));
    await until(() => bob.agent.idle(), 'the relay took the message');
  }
  return seqs;
}

/**
 * Composes `texts` while bob's agent is stopped (offline), then starts a fresh agent: its outbox
 * sends them as one batch, one relay message. Resolves with their seqs once the relay took it.
 */
async function sendBatch(bob: Side, conn: string, texts: string[]): Promise<number[]> {
  await bob.agent.stop();
  const seqs: number[] = [];
  for (const t of texts) seqs.push(await bob.agent.send(conn, utf8(t)));
  bob.agent = newAgent(bob);
  bob.agent.start();
  await until(() => bob.agent.idle(), 'the relay took the batch');
  return seqs;
}

function messages(s: Side): { seq: number; text: string }[] {
  return s.events.flatMap((e) => (e.type === 'message' ? [{ seq: e.seq, text: Buffer.from(e.payload).toString() }] : []));
}

function ofType<T extends IncomingEvent['type']>(s: Side, type: T): Extract<IncomingEvent, { type: T }>[] {
  return s.events.filter((e): e is Extract<IncomingEvent, { type: T }> => e.type === type);
}

/** A hash of alice's session state and connection row (what a forged message must not change). */
function stateHash(s: Side): string {
  const h = createHash('sha256');
  for (const r of s.db.db.prepare('SELECT owner, kind, key, value FROM agent_signal_state ORDER BY owner, kind, key').all() as Record<string, unknown>[]) h.update(JSON.stringify(r, (_k, v: unknown) => (v instanceof Uint8Array ? hex(v) : v)));
  for (const r of s.db.db.prepare('SELECT * FROM agent_connections ORDER BY id').all() as Record<string, unknown>[]) h.update(JSON.stringify(r, (_k, v: unknown) => (v instanceof Uint8Array ? hex(v) : v)));
  return h.digest('hex');
}

test('R1: messages dropped by the relay after OK are reported once as gaps; later ones decrypt', async () => {
  const { alice, bob, bobConn } = await pair('r1');
  const rnd = seededRandom(SEED);
  const n = 60;
  // A run of three, then about 10% at random; the last one always arrives (a gap shows only then).
  const dropped = new Set<number>([5, 6, 7]);
  for (let i = 9; i < n; i++) if (rnd() < 0.1) dropped.add(i);
  store.decide = (i) => (dropped.has(i) ? 'drop' : 'store');
  const texts = Array.from({ length: n }, (_, i) => `r1:${i + 1}`);
  const seqs = await sendAll(bob, bobConn, texts);
  await until(() => messages(alice).some((m) => m.text === `r1:${n}`), 'the last message arrived');
  await until(() => store.pending() === 0, 'the queue drained');
  await sleep(100);

  const kept = texts.filter((_, i) => !dropped.has(i + 1));
  assert.deepEqual(messages(alice).map((m) => m.text), kept, 'every message not dropped is shown once, in order');
  assert.deepEqual(alice.inbox().map((m) => m.text), kept, 'and stored once');
  const droppedSeqs = [...dropped].sort((a, b) => a - b).map((i) => seqs[i - 1]!);
  const reported = ofType(alice, 'gap').flatMap((g) => Array.from({ length: g.to - g.from + 1 }, (_, k) => g.from + k));
  assert.deepEqual(reported, droppedSeqs, 'each dropped seq is reported exactly once, nothing else is');
  assert.ok(ofType(alice, 'gap').some((g) => g.to - g.from === 2), 'a run of drops is one gap');
  assert.deepEqual(ofType(alice, 'bad-hash'), [], 'a gap is not a broken chain');
  assert.deepEqual(alice.problems, []);
});

test('R4: duplicates and replays (also after ACK and across a restart) are shown once; the queue never stalls', async (t) => {
  const { alice, bob, bobConn, rcvId } = await pair('r4');
  const rnd = seededRandom(SEED + 4);
  const n = 40;
  // About a third stored twice at once under a new message id.
  store.decide = () => (rnd() < 0.33 ? 'dup' : 'store');
  const texts = Array.from({ length: n }, (_, i) => `r4:${i + 1}`);
  const first = texts.slice(0, n / 2);
  await sendAll(bob, bobConn, first);
  await until(() => messages(alice).length === first.length && store.pending() === 0, 'first half delivered');
  // Replays of messages already delivered and ACKed, queued between new ones.
  for (let i = 0; i < 10; i++) await store.inject(await store.reseal(rcvId, store.genuine[Math.floor(rnd() * store.genuine.length)]!));
  const second = texts.slice(n / 2);
  await sendAll(bob, bobConn, second.slice(0, 10));
  await until(() => messages(alice).length === n / 2 + 10 && store.pending() === 0, 'replays drained');
  // Alice goes offline; the relay queues replays of everything (some twice) and new messages.
  await alice.agent.stop();
  for (const m of [...store.genuine]) {
    await store.inject(await store.reseal(rcvId, m));
    if (rnd() < 0.3) await store.inject(await store.reseal(rcvId, m));
  }
  await sendAll(bob, bobConn, second.slice(10));
  const replays = store.pending();
  await restart(alice);
  await until(() => store.pending() === 0, `the queue drained after the restart (${replays} queued)`, 30_000);
  await until(() => messages(alice).length >= n, 'everything arrived');
  await sleep(100);

  assert.deepEqual(messages(alice).map((m) => m.text), texts, 'each message shown exactly once, in order');
  assert.deepEqual(alice.inbox().map((m) => m.text), texts, 'and stored once');
  assert.deepEqual(ofType(alice, 'gap'), [], 'a replay is not a gap');
  assert.deepEqual(ofType(alice, 'bad-hash'), []);
  assert.ok(store.added >= n, 'every message went through the relay');
  t.diagnostic(`${replays} replays queued across the restart; ${alice.problems.length} replays failed to decrypt, the rest were duplicates`);
});

test('R3: messages handed out in a random order (some twice) are each shown once and ordered by sequence', async () => {
  const { alice, bob, bobConn } = await pair('r3');
  const rnd = seededRandom(SEED + 3);
  const all: { seq: number; text: string }[] = [];
  for (let batch = 0; batch < 4; batch++) {
    const size = 5 + Math.floor(rnd() * 26);
    const texts = Array.from({ length: size }, (_, i) => `r3:${batch}:${i}`);
    // The relay holds the batch, then hands it out in a random permutation.
    store.hold = true;
    store.rank = () => rnd();
    // Some twice as well: a copy may come before the original or after it.
    store.decide = () => (rnd() < 0.2 ? 'dup' : 'store');
    const seqs = await sendAll(bob, bobConn, texts);
    all.push(...texts.map((text, i) => ({ seq: seqs[i]!, text })));
    store.hold = false;
    await restart(alice); // SUB: the relay starts delivering
    await until(() => store.pending() === 0, `batch ${batch} drained`);
    // On a timeout the assertions below say what is missing.
    await until(() => messages(alice).length >= all.length, `batch ${batch} shown`, 5000).catch(() => undefined);
  }
  await sleep(100);
  const shown = messages(alice);
  const bySeq = [...shown].sort((a, b) => a.seq - b.seq);
  assert.deepEqual(bySeq, all, 'shown messages, ordered by sender seq, are exactly the sent ones');
  assert.equal(new Set(shown.map((m) => m.text)).size, shown.length, 'none shown twice');
  assert.notDeepEqual(shown, all, 'the relay did reorder (the order of arrival differs from the sender order)');
  assert.deepEqual(
    alice.inbox().sort((a, b) => a.seq - b.seq),
    all,
    'the stored inbox holds each once',
  );
  // Reordering shows first as gaps; every seq a gap named arrived later, each exactly once.
  const gapSeqs = ofType(alice, 'gap').flatMap((g) => Array.from({ length: g.to - g.from + 1 }, (_, k) => g.from + k));
  assert.ok(gapSeqs.length > 0, 'the reordering was flagged');
  assert.equal(new Set(gapSeqs).size, gapSeqs.length, 'no seq reported missing twice');
  for (const seq of gapSeqs) assert.equal(shown.filter((m) => m.seq === seq).length, 1, `seq ${seq}, reported missing, arrived once`);
  assert.deepEqual(ofType(alice, 'bad-hash'), []);
  assert.deepEqual(alice.problems, []);
});

test('R5: changed messages are dropped with a problem event and change no state; the next genuine one decrypts', async () => {
  const { alice, bob, bobConn, rcvId } = await pair('r5');
  const rnd = seededRandom(SEED + 5);
  const flip = (b: Uint8Array): Uint8Array => {
    const c = new Uint8Array(b);
    const i = Math.floor(rnd() * c.length);
    c[i] = c[i]! ^ (1 + Math.floor(rnd() * 255));
    return c;
  };
  const changes: ((b: Uint8Array) => Uint8Array)[] = [
    flip,
    (b) => b.subarray(0, Math.floor(rnd() * b.length)), // truncated
    (b) => new Uint8Array(Buffer.concat([b, randomBytes(1 + Math.floor(rnd() * 64))])), // extended
    (b) => new Uint8Array(randomBytes(b.length)), // replaced
    (b) => flip(b.subarray(0, 33 + Math.floor(rnd() * 40))), // a header byte
  ];
  await sendAll(bob, bobConn, ['r5:1', 'r5:2', 'r5:3']);
  await until(() => messages(alice).length === 3 && store.pending() === 0, 'genuine messages arrived');
  await sleep(200); // receipts go out
  await until(() => alice.agent.idle(), 'alice idle');

  // Forged copies of delivered messages, changed inside the re-sealed relay box or in the box itself.
  await alice.agent.stop();
  const before = stateHash(alice);
  let forged = 0;
  for (let i = 0; i < 30; i++) {
    const base = store.genuine[i % store.genuine.length]!;
    const changed = await store.reseal(rcvId, base, changes[i % changes.length]!);
    if (i % 6 === 5) {
      const sealed = new Uint8Array(changed.sealed);
      const j = Math.floor(rnd() * sealed.length);
      sealed[j] = sealed[j]! ^ 0x40;
      await store.inject({ ...changed, sealed });
    } else {
      await store.inject(changed);
    }
    forged++;
  }
  await restart(alice);
  await until(() => store.pending() === 0, 'forged messages were ACKed (no stall)');
  await until(() => alice.problems.length >= forged, 'a problem per forged message', 5000).catch(() => undefined);
  assert.equal(alice.problems.length, forged, 'each forged message raised one problem event');
  assert.equal(stateHash(alice), before, 'no session or connection state changed');
  assert.equal(messages(alice).length, 3, 'nothing forged was shown');

  // A genuine message changed in place by the relay: dropped, reported, and the next one decrypts.
  const problemsBefore = alice.problems.length;
  const nextIndex = store.added + 1;
  store.decide = (i) => (i === nextIndex ? 'tamper' : 'store');
  store.tamper = flip;
  const seqs = await sendAll(bob, bobConn, ['r5:4', 'r5:5', 'r5:6']);
  await until(() => messages(alice).some((m) => m.text === 'r5:6'), 'the next genuine messages decrypt');
  assert.deepEqual(messages(alice).map((m) => m.text), ['r5:1', 'r5:2', 'r5:3', 'r5:5', 'r5:6']);
  assert.equal(alice.problems.length, problemsBefore + 1, 'the changed message raised one problem event');
  assert.deepEqual(ofType(alice, 'gap').map((g) => [g.from, g.to]), [[seqs[0], seqs[0]]], 'and shows as missing once a later one arrives');
});

test('batches: what a sender composed offline goes as one relay message; a dropped batch is one gap, a duplicated or replayed one is shown once', async () => {
  const { alice, bob, bobConn, rcvId } = await pair('batch');
  const group = (g: string) => Array.from({ length: 12 }, (_, i) => `batch:${g}:${i + 1}`);
  // Relay messages: the first is stored, the second dropped after OK, the third stored twice.
  store.decide = (i) => (i === 2 ? 'drop' : i === 3 ? 'dup' : 'store');
  const a = await sendBatch(bob, bobConn, group('a'));
  await until(() => messages(alice).length === 12 && store.pending() === 0, 'the first batch arrived');
  const b = await sendBatch(bob, bobConn, group('b'));
  const c = await sendBatch(bob, bobConn, group('c'));
  await until(() => messages(alice).length === 24 && store.pending() === 0, 'the third batch arrived');
  assert.equal(store.added, 3, '36 messages went in 3 relay messages');
  // A replay of the first batch after it was ACKed, then a new message (whose SEND makes the
  // relay deliver what the queue holds).
  await store.inject(await store.reseal(rcvId, store.genuine[0]!));
  const d = await sendAll(bob, bobConn, ['batch:d:1']);
  await until(() => messages(alice).length === 25 && store.pending() === 0, 'the replay and a later single message were taken');
  await sleep(100);

  const shown = [...group('a'), ...group('c'), 'batch:d:1'];
  assert.deepEqual(messages(alice).map((m) => m.text), shown, 'each message of a kept batch is shown once, in order');
  assert.deepEqual(alice.inbox().map((m) => m.text), shown, 'and stored once');
  assert.deepEqual(messages(alice).map((m) => m.seq), [...a, ...c, ...d]);
  assert.deepEqual(ofType(alice, 'gap').map((g) => [g.from, g.to]), [[b[0], b[11]]], 'the dropped batch is one gap, reported once');
  assert.deepEqual(ofType(alice, 'bad-hash'), []);
  // Receipts came back for what was shown, and for nothing else.
  await until(() => ofType(bob, 'receipt').flatMap((r) => r.seqs).length >= shown.length, 'receipts');
  assert.deepEqual(ofType(bob, 'receipt').flatMap((r) => r.seqs).sort((x, y) => x - y), [...a, ...c, ...d]);
});

test('a batch whose OK was lost is sent again byte for byte, and each of its messages is shown once', async () => {
  const { alice, bob, bobConn, rcvId } = await pair('batch-retry');
  store.decide = (i) => (i === 1 ? 'lose-ok' : 'store');
  const texts = Array.from({ length: 12 }, (_, i) => `batch-retry:${i + 1}`);
  const seqs = await sendBatch(bob, bobConn, texts);
  await until(() => messages(alice).length === texts.length && store.pending() === 0, 'the batch arrived');
  await sleep(100);
  assert.equal(store.added, 2, 'the relay took the batch twice: once unanswered, once OK');
  const [first, second] = await Promise.all(store.genuine.map((m) => store.sentBody(rcvId, m)));
  assert.ok(first !== undefined && second !== undefined);
  assert.ok(Buffer.from(first).equals(Buffer.from(second)), 'the retry is the same frame, byte for byte');
  assert.deepEqual(messages(alice).map((m) => m.text), texts, 'each message shown once, in order');
  assert.deepEqual(messages(alice).map((m) => m.seq), seqs);
  assert.deepEqual(ofType(alice, 'gap'), []);
  assert.deepEqual(alice.problems, []);
});
