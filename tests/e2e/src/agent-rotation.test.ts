// SPDX-License-Identifier: AGPL-3.0-or-later
// Queue rotation (docs/protocol/agent.md, "Queue rotation") and threat R2 (THREATS.md): a relay
// that silently drops every message of a queue. (a) Alice moves her receive queue from relay A
// to relay B while Bob keeps sending: every message arrives once, in order, the old queue is
// deleted on relay A and later messages go through relay B (two real relay processes). (b) R2:
// an in-process relay A blackholes Alice's queue after message k; Bob sees no delivery receipts
// for what follows; Alice switches to relay B, and Bob's queued and later messages arrive while
// the dropped ones are reported to Alice as one gap.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { AGENT_MIGRATIONS, Agent, LocalDatabase, RelayClient, RelayClientError, type IncomingEvent, type RecipientQueue, type SwitchEvent } from '@murmure/agent';
import { importKeyPair } from '@murmure/queue-crypto';
import { RelayServer, SqliteQueueStore, relayConfig, type QueueStore, type StoredMessage } from '@murmure/relay';

import { cleanup, metric, sleep, startRelay, stopRelay, tempDir, utf8, type RelayProcess } from './harness.js';

/** One side: an agent over its own encrypted database, with what its owner stored and saw. */
type Side = {
  name: string;
  db: LocalDatabase;
  agent: Agent;
  events: IncomingEvent[];
  switches: SwitchEvent[];
  sent: number[];
  problems: { connId: string; code: string; message: string }[];
  /** (seq, text) rows the owner committed inside the agent's receive transaction. */
  inbox(): { seq: number; text: string }[];
};

let dir: string;
const sides: Side[] = [];
const relays: RelayProcess[] = [];

before(() => {
  dir = tempDir();
});
after(async () => {
  for (const s of sides) {
    await s.agent.stop();
    s.db.close();
  }
  for (const r of relays) {
    await stopRelay(r);
    cleanup(r.dataDir);
  }
  cleanup(dir);
});

function makeSide(name: string): Side {
  const db = LocalDatabase.open(join(dir, `${name}.db`), new Uint8Array(randomBytes(32)), AGENT_MIGRATIONS);
  db.db.exec('CREATE TABLE test_inbox (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, text TEXT NOT NULL)');
  const insert = db.db.prepare('INSERT INTO test_inbox (seq, text) VALUES (?, ?)');
  const side: Side = {
    name,
    db,
    events: [],
    switches: [],
    sent: [],
    problems: [],
    agent: undefined as unknown as Agent,
    inbox: () => db.db.prepare('SELECT seq, text FROM test_inbox ORDER BY id').all() as { seq: number; text: string }[],
  };
  side.agent = new Agent({
    db,
    handler: {
      incoming: (ev) => {
        if (ev.type === 'message') insert.run([ev.seq, Buffer.from(ev.payload).toString()] as never);
      },
      sent: (_c, seq) => side.sent.push(seq),
      connected: () => undefined,
      failed: () => undefined,
      replyPayload: () => utf8(name),
    },
  });
  side.agent.on('event', (ev: IncomingEvent) => side.events.push(ev));
  side.agent.on('switch', (ev: SwitchEvent) => side.switches.push(ev));
  side.agent.on('problem', (p: Side['problems'][number]) => side.problems.push(p));
  side.agent.start();
  sides.push(side);
  return side;
}

async function until(f: () => boolean, what: string, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`${what}: not in time`);
    await sleep(10);
  }
}

/** Alice invites on `aliceRelay`, Bob joins with his queue on `bobRelay`; resolves once both are connected and idle. */
async function pair(tag: string, aliceRelay: string, bobRelay: string): Promise<{ alice: Side; bob: Side; aliceConn: string; bobConn: string }> {
  const alice = makeSide(`alice-${tag}`);
  const bob = makeSide(`bob-${tag}`);
  const { connId: aliceConn, link } = await alice.agent.createInvitation(aliceRelay);
  const bobConn = await bob.agent.join(link, bobRelay, utf8('bob'));
  await until(() => alice.agent.connections()[0]?.status === 'connected' && bob.agent.connections()[0]?.status === 'connected', 'connected');
  await until(() => alice.agent.idle() && bob.agent.idle(), 'handshake sent');
  return { alice, bob, aliceConn, bobConn };
}

function messages(s: Side): { seq: number; text: string }[] {
  return s.events.flatMap((e) => (e.type === 'message' ? [{ seq: e.seq, text: Buffer.from(e.payload).toString() }] : []));
}

function ofType<T extends IncomingEvent['type']>(s: Side, type: T): Extract<IncomingEvent, { type: T }>[] {
  return s.events.filter((e): e is Extract<IncomingEvent, { type: T }> => e.type === type);
}

function receipted(s: Side): Set<number> {
  return new Set(ofType(s, 'receipt').flatMap((r) => r.seqs));
}

/** Alice's current receive queue, as a relay client needs it (to check later that it is gone). */
function currentQueue(s: Side, connId: string): RecipientQueue {
  const c = s.agent.store.connection(connId);
  assert.ok(c?.rcv_id && c.rcv_snd_id && c.rcv_sig_key && c.rcv_auth_key && c.rcv_box_key);
  return { rcvId: c.rcv_id, sndId: c.rcv_snd_id, sigKey: importKeyPair(c.rcv_sig_key), authKey: importKeyPair(c.rcv_auth_key), boxKey: c.rcv_box_key };
}

async function relayWithMetrics(): Promise<RelayProcess> {
  const r = await startRelay({ args: ['--metrics-port', '0'] });
  relays.push(r);
  return r;
}

test('switch from relay A to relay B while 200 messages flow: each arrives once and in order; the old queue is deleted', async (t) => {
  const [relayA, relayB] = await Promise.all([relayWithMetrics(), relayWithMetrics()]);
  const { alice, bob, aliceConn, bobConn } = await pair('a', relayA.address, relayA.address);
  const oldQueue = currentQueue(alice, aliceConn);
  assert.equal(await metric(relayA, 'murmure_queues'), 2, "Alice's and Bob's queues on relay A");
  assert.equal(await metric(relayB, 'murmure_queues'), 0);

  const n = 200;
  const texts = Array.from({ length: n }, (_, i) => `a:${i + 1}`);
  const seqs: number[] = [];
  let switched: Promise<{ relay: string }> | null = null;
  const t0 = Date.now();
  for (let i = 0; i < n; i++) {
    seqs.push(await bob.agent.send(bobConn, utf8(texts[i]!)));
    // Alice switches a quarter of the way in; Bob keeps sending all along.
    if (i === n / 4) switched = alice.agent.switchQueue(aliceConn, relayB.address);
    if (i % 10 === 9) await sleep(15);
  }
  assert.ok(switched !== null);
  assert.deepEqual(await switched, { relay: relayB.address });
  await until(() => messages(alice).length >= n, `all ${n} messages arrived`, 60_000);
  await until(() => alice.switches.some((s) => s.phase === 'retired'), 'the old queue was retired');
  await until(() => receipted(bob).size >= n, 'Bob got every receipt');
  const elapsed = Date.now() - t0;

  assert.deepEqual(messages(alice).map((m) => m.text), texts, 'every message shown once, in the order sent');
  assert.deepEqual(alice.inbox().map((m) => m.text), texts, 'and stored once');
  assert.deepEqual(messages(alice).map((m) => m.seq), seqs, 'in sequence order');
  assert.deepEqual(ofType(alice, 'gap'), [], 'no gap: the new queue waited for the old one');
  assert.deepEqual(ofType(alice, 'bad-hash'), []);
  assert.deepEqual(alice.problems, []);
  assert.deepEqual(bob.problems, []);
  assert.deepEqual([...receipted(bob)].sort((a, b) => a - b), seqs, 'Bob got a receipt for each');
  assert.deepEqual(alice.switches.map((s) => s.phase), ['started', 'promoted', 'retired']);
  assert.deepEqual(bob.switches.map((s) => [s.phase, s.relay]), [['moved', relayB.address]]);

  // The old queue is gone from relay A; Alice's row names only the new one.
  const row = alice.agent.store.connection(aliceConn);
  assert.equal(row?.rcv_relay, relayB.address);
  assert.equal(row.old_rcv_id, null);
  assert.equal(row.old_rcv_auth_key, null, 'the old keys are dropped');
  assert.equal(row.next_rcv_id, null);
  assert.equal(await metric(relayA, 'murmure_queues'), 1, "only Bob's queue is left on relay A");
  assert.equal(await metric(relayB, 'murmure_queues'), 1, "Alice's new queue is on relay B");
  const probe = await RelayClient.connect(relayA.address, { timeoutMs: 5000 });
  try {
    await assert.rejects(probe.subscribe(oldQueue), (e) => RelayClientError.is(e, 'AUTH'), 'the old queue does not exist any more');
  } finally {
    probe.close();
  }
  assert.equal(bob.agent.store.connection(bobConn)?.snd_relay, relayB.address);

  // Later messages go through relay B (relay A only carries Alice's receipts to Bob's queue).
  const storedB = await metric(relayB, 'murmure_messages_stored_total');
  const later = ['a:later:1', 'a:later:2', 'a:later:3'];
  for (const t of later) await bob.agent.send(bobConn, utf8(t));
  await until(() => messages(alice).length === n + later.length, 'later messages arrived');
  assert.deepEqual(messages(alice).slice(n).map((m) => m.text), later);
  // One relay message each, or fewer: what the outbox holds at once goes as one batch.
  const throughB = (await metric(relayB, 'murmure_messages_stored_total')) - storedB;
  assert.ok(throughB >= 1 && throughB <= later.length, `through relay B (${throughB} relay messages)`);
  // And read there: the message event comes before the agent's sync and its ACK, so the relay
  // may still hold the last one for a moment.
  let left = await metric(relayB, 'murmure_messages');
  for (const end = Date.now() + 10_000; left !== 0 && Date.now() < end; left = await metric(relayB, 'murmure_messages')) await sleep(20);
  assert.equal(left, 0, 'and read there');
  t.diagnostic(`rotation under load: ${n} messages across the switch in ${elapsed} ms`);
});

/** The relay's queue store with a blackhole on one queue: `drop` answers OK and keeps nothing, `refuse` answers QUOTA. */
function blackholeStore(inner: SqliteQueueStore): { store: QueueStore; target: { rcvId: Uint8Array | null; mode: 'store' | 'drop' | 'refuse'; dropped: number } } {
  const target = { rcvId: null as Uint8Array | null, mode: 'store' as 'store' | 'drop' | 'refuse', dropped: 0 };
  const addMessage = async (rcvId: Uint8Array, msg: StoredMessage, quota: number, now: number): Promise<'ok' | 'quota' | 'gone'> => {
    if (target.rcvId !== null && Buffer.from(rcvId).equals(Buffer.from(target.rcvId))) {
      if (target.mode === 'drop') {
        target.dropped++;
        return 'ok';
      }
      if (target.mode === 'refuse') return 'quota';
    }
    return inner.addMessage(rcvId, msg, quota, now);
  };
  const store = new Proxy(inner, {
    get(t, p) {
      if (p === 'addMessage') return addMessage;
      const v: unknown = Reflect.get(t, p, t);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  }) as QueueStore;
  return { store, target };
}

test('R2: relay A blackholes the queue after message k; no receipts come; a switch to relay B restores delivery without losing the queued outbox', async (t) => {
  const relayB = await relayWithMetrics();
  const inner = SqliteQueueStore.open({ path: join(dir, 'relay-a', 'relay.sqlite') });
  const { store, target } = blackholeStore(inner);
  const relayA = await RelayServer.start(relayConfig(join(dir, 'relay-a'), { port: 0 }), { store });
  try {
    const { alice, bob, aliceConn, bobConn } = await pair('r2', relayA.address, relayA.address);
    const oldQueue = currentQueue(alice, aliceConn);
    target.rcvId = oldQueue.rcvId;
    const send = async (texts: string[]) => {
      const out: number[] = [];
      for (const t of texts) out.push(await bob.agent.send(bobConn, utf8(t)));
      return out;
    };
    const t0 = Date.now();

    // Messages 1..k arrive and are acknowledged by receipts.
    const k = 5;
    const first = await send(Array.from({ length: k }, (_, i) => `r2:${i + 1}`));
    await until(() => first.every((s) => receipted(bob).has(s)), 'receipts for 1..k');

    // The relay now drops everything for Alice's queue, answering OK: Bob's messages are "sent",
    // and no receipt ever comes for them.
    target.mode = 'drop';
    const dropped = await send(['r2:6', 'r2:7', 'r2:8', 'r2:9']);
    await until(() => dropped.every((s) => bob.sent.includes(s)), 'the relay took the dropped messages');
    await sleep(1000); // 20 times the receipt delay
    assert.ok(dropped.every((s) => !receipted(bob).has(s)), 'no receipt for a message the relay dropped');
    assert.ok(target.dropped >= 1 && target.dropped <= dropped.length, 'in one relay message each, or fewer (a batch)');
    const droppedRelayMessages = target.dropped;
    assert.deepEqual(messages(alice).map((m) => m.text), ['r2:1', 'r2:2', 'r2:3', 'r2:4', 'r2:5']);

    // Meanwhile relay A stops taking Bob's messages at all (QUOTA), so what Bob writes now stays
    // in his outbox, as it would while relay A cannot be reached.
    target.mode = 'refuse';
    const queued = await send(['r2:10', 'r2:11', 'r2:12']);
    await sleep(500);
    const outbox = () => bob.db.db.prepare('SELECT seq, status FROM agent_outbox WHERE conn_id = ? ORDER BY id').all([bobConn] as never) as { seq: number; status: string }[];
    assert.deepEqual(outbox().filter((r) => queued.includes(r.seq)).map((r) => r.status), ['queued', 'queued', 'queued'], 'queued in the outbox');

    // Alice moves to relay B. Her SWITCH reaches Bob over his queue (not blackholed).
    assert.deepEqual(await alice.agent.switchQueue(aliceConn, relayB.address), { relay: relayB.address });
    await until(() => bob.switches.some((s) => s.phase === 'moved'), 'Bob moved to relay B');
    const afterSwitch = await send(['r2:13', 'r2:14']);
    const delivered = [...queued, ...afterSwitch];
    await until(() => delivered.every((s) => receipted(bob).has(s)), 'receipts for the queued and later messages');
    await until(() => alice.switches.some((s) => s.phase === 'retired'), 'the blackholed queue was retired');
    const elapsed = Date.now() - t0;

    const expected = ['r2:1', 'r2:2', 'r2:3', 'r2:4', 'r2:5', 'r2:10', 'r2:11', 'r2:12', 'r2:13', 'r2:14'];
    assert.deepEqual(messages(alice).map((m) => m.text), expected, 'everything not dropped arrives once, in order');
    assert.deepEqual(alice.inbox().map((m) => m.text), expected);
    assert.deepEqual(ofType(alice, 'gap').map((g) => [g.from, g.to]), [[dropped[0], dropped.at(-1)]], 'the dropped messages are one gap, reported once');
    assert.ok(dropped.every((s) => !receipted(bob).has(s)), 'the dropped ones stay not delivered');
    assert.deepEqual(outbox().map((r) => r.status).filter((s) => s !== 'sent'), [], 'nothing left queued or given up');
    assert.deepEqual(alice.problems, []);
    assert.equal(await inner.queueByRecipient(oldQueue.rcvId), undefined, 'the blackholed queue is deleted on relay A');
    assert.equal(alice.agent.store.connection(aliceConn)?.rcv_relay, relayB.address);
    assert.equal(target.dropped, droppedRelayMessages, 'nothing else went to the blackhole');
    t.diagnostic(`R2: blackhole, switch and recovery in ${elapsed} ms`);
  } finally {
    for (const s of sides.splice(0)) {
      await s.agent.stop();
      s.db.close();
    }
    await relayA.stop();
  }
});
