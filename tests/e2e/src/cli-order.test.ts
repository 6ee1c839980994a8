// SPDX-License-Identifier: AGPL-3.0-or-later
// F6, sender order as the user sees it through the `murmure` command (--json, one home per
// person): a relay hands Bob's messages to Alice in reverse order, and `murmure messages` still
// lists them in the order Bob sent them, with the "missing" notice that the first arrival raised
// kept where it was, before them. The relay runs in-process over the real SQLite queue store,
// wrapped so that messages added to Alice's queue are handed out by a rank the test gives them
// (the evil-relay approach of agent-evil-relay.test.ts); the homes are driven by real `murmure`
// processes only.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { AGENT_MIGRATIONS, LocalDatabase, deriveDatabaseKey, loadSalt } from '@murmure/agent';
import { RelayServer, SqliteQueueStore, relayConfig, type QueueRecord, type QueueStore, type StoredMessage } from '@murmure/relay';

import { cleanup, runMurmure, tempDir } from './harness.js';

type Json = Record<string, unknown>;
type Home = { dir: string; pass: string; name: string };

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a).equals(Buffer.from(b));
}

/** The relay's queue store, delegating to SQLite, handing out one queue's messages by rank. */
class ReorderingStore implements QueueStore {
  /** The queue whose messages are reordered (the receiver's). */
  target: Uint8Array | null = null;
  /** Gives each message added to the target its delivery rank; lower first. Default: arrival order. */
  rank: (n: number) => number = (n) => n;
  /** Messages added to the target so far. */
  added = 0;
  /** What the target queue holds, with ranks, mirroring the SQLite store. */
  private readonly present: { m: StoredMessage; rank: number }[] = [];

  constructor(readonly inner: SqliteQueueStore) {}

  private isTarget(rcvId: Uint8Array): boolean {
    return this.target !== null && same(this.target, rcvId);
  }

  /** Messages the target queue still holds. */
  pending(): number {
    return this.present.length;
  }

  async addMessage(rcvId: Uint8Array, msg: StoredMessage, quota: number, now: number): Promise<'ok' | 'quota' | 'gone'> {
    if (!this.isTarget(rcvId)) return this.inner.addMessage(rcvId, msg, quota, now);
    this.added++;
    // The store makes a message visible at commit, before the write resolves: the mirror takes
    // it at once too, so it never lags behind what the relay can read.
    const entry = { m: msg, rank: this.rank(this.added) };
    this.present.push(entry);
    const r = await this.inner.addMessage(rcvId, msg, quota, now).catch((e: unknown) => {
      this.present.splice(this.present.indexOf(entry), 1);
      throw e;
    });
    if (r !== 'ok') this.present.splice(this.present.indexOf(entry), 1);
    return r;
  }

  async oldestMessage(rcvId: Uint8Array): Promise<StoredMessage | undefined> {
    if (!this.isTarget(rcvId) || this.present.length === 0) return this.inner.oldestMessage(rcvId);
    let best = this.present[0]!;
    for (const p of this.present) if (p.rank < best.rank) best = p;
    return best.m;
  }

  async oldestMessages(rcvId: Uint8Array, limit: number): Promise<StoredMessage[]> {
    if (!this.isTarget(rcvId) || this.present.length === 0) return this.inner.oldestMessages(rcvId, limit);
    return [...this.present].sort((a, b) => a.rank - b.rank).slice(0, limit).map((p) => p.m);
  }

  async deleteMessage(rcvId: Uint8Array, msgId: Uint8Array, now: number): Promise<boolean> {
    // As the interface asks: from the call on, oldestMessage no longer returns the message.
    const pending = this.inner.deleteMessage(rcvId, msgId, now);
    const i = this.isTarget(rcvId) ? this.present.findIndex((p) => same(p.m.msgId, msgId)) : -1;
    const removed = i >= 0 ? this.present.splice(i, 1)[0] : undefined;
    const r = await pending;
    if (!r && removed !== undefined) this.present.push(removed);
    return r;
  }

  createQueue(q: Omit<QueueRecord, 'msgCount' | 'sndAuthKey' | 'suspended'>, now: number): Promise<void> {
    return this.inner.createQueue(q, now);
  }
  queueByRecipient(rcvId: Uint8Array): Promise<QueueRecord | undefined> {
    return this.inner.queueByRecipient(rcvId);
  }
  queueBySender(sndId: Uint8Array): Promise<QueueRecord | undefined> {
    return this.inner.queueBySender(sndId);
  }
  secureQueue(rcvId: Uint8Array, sndAuthKey: Uint8Array, now: number): Promise<'ok' | 'conflict'> {
    return this.inner.secureQueue(rcvId, sndAuthKey, now);
  }
  touchQueue(rcvId: Uint8Array, now: number): Promise<void> {
    return this.inner.touchQueue(rcvId, now);
  }
  suspendQueue(rcvId: Uint8Array): Promise<void> {
    return this.inner.suspendQueue(rcvId);
  }
  deleteQueue(rcvId: Uint8Array): Promise<void> {
    return this.inner.deleteQueue(rcvId);
  }
  setLink(rcvId: Uint8Array, linkId: Uint8Array, data: Uint8Array): Promise<'ok' | 'taken'> {
    return this.inner.setLink(rcvId, linkId, data);
  }
  linkData(linkId: Uint8Array): Promise<{ sndId: Uint8Array; data: Uint8Array } | undefined> {
    return this.inner.linkData(linkId);
  }
  expire(messagesBefore: number, queuesUnusedSince: number): Promise<{ messages: number; queues: number }> {
    return this.inner.expire(messagesBefore, queuesUnusedSince);
  }
  stats(): Promise<{ queues: number; messages: number }> {
    return this.inner.stats();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

const tag = randomBytes(4).toString('hex');
let root: string;
let store: ReorderingStore;
let relay: RelayServer;

before(async () => {
  root = tempDir('murmure-order-');
  store = new ReorderingStore(SqliteQueueStore.open({ path: join(root, 'relay', 'relay.sqlite') }));
  relay = await RelayServer.start(relayConfig(join(root, 'relay'), { port: 0 }), { store });
});

after(async () => {
  await relay.stop();
  cleanup(root);
});

async function ok(h: Home, ...args: string[]): Promise<Json[]> {
  const r = await runMurmure(['--home', h.dir, '--json', ...args], { passphrase: h.pass });
  assert.equal(r.code, 0, `murmure ${args.join(' ')} failed: ${r.stdout}${r.stderr}`);
  return r.json;
}

function byType(events: readonly Json[], type: string): Json[] {
  return events.filter((e) => e['type'] === type);
}

/** The recipient id of a home's only receive queue, read from its database (no `murmure` may run on it). */
function receiveQueue(h: Home): Uint8Array {
  const key = deriveDatabaseKey(h.pass, loadSalt(join(h.dir, 'murmure.salt'), false));
  const db = LocalDatabase.open(join(h.dir, 'murmure.db'), key, AGENT_MIGRATIONS);
  try {
    const rows = db.db.prepare("SELECT rcv_id FROM agent_connections WHERE status = 'connected'").all() as { rcv_id: Uint8Array }[];
    assert.equal(rows.length, 1, 'one connection');
    return new Uint8Array(rows[0]!.rcv_id);
  } finally {
    db.close();
  }
}

test("messages the relay hands out in reverse are listed in the sender's order", async () => {
  const alice: Home = { dir: join(root, 'alice'), pass: `alice ${tag}`, name: `Alice ${tag}` };
  const bob: Home = { dir: join(root, 'bob'), pass: `bob ${tag}`, name: `Bob ${tag}` };
  await ok(alice, 'init', '--name', alice.name, '--relay', relay.address);
  await ok(bob, 'init', '--name', bob.name, '--relay', relay.address);
  const [inv] = await ok(alice, 'invite');
  await ok(bob, 'connect', inv!['link'] as string);
  for (let i = 0; i < 5; i++) {
    await ok(alice, 'sync');
    await ok(bob, 'sync');
    const [ca] = await ok(alice, 'contacts');
    const [cb] = await ok(bob, 'contacts');
    if (ca?.['status'] === 'connected' && cb?.['status'] === 'connected' && ca['name'] === bob.name) break;
  }
  // One message each way in order first, so the conversation has a past on both sides.
  await ok(alice, 'send', bob.name, 'hello bob');
  await ok(bob, 'send', alice.name, 'hello alice');
  await ok(alice, 'sync');
  await ok(bob, 'sync');
  await ok(alice, 'sync'); // Bob's message and his receipt
  const rcvId = receiveQueue(alice);
  assert.equal(await store.inner.oldestMessage(rcvId), undefined, "Alice's queue is empty");

  // From now on the relay hands Alice's messages out last in, first out.
  store.target = rcvId;
  store.rank = (n) => -n;
  const sent = ['one', 'two', 'three', 'four'].map((w) => `${w} ${tag}`);
  for (const t of sent) await ok(bob, 'send', alice.name, t);
  const bobSync = await ok(bob, 'sync');
  assert.equal(byType(bobSync, 'sent').length, sent.length, JSON.stringify(bobSync));
  assert.equal(store.pending(), sent.length, 'the relay holds all four for Alice');

  // Alice receives them in reverse: the first to arrive skips three, the others come late.
  const got = await ok(alice, 'sync');
  assert.deepEqual(byType(got, 'message').map((m) => m['text']), [...sent].reverse(), `arrival order: ${JSON.stringify(got)}`);
  const missing = byType(got, 'missing');
  assert.equal(missing.length, 1, JSON.stringify(got));
  assert.equal(Number(missing[0]!['to']) - Number(missing[0]!['from']) + 1, 3, JSON.stringify(missing));
  assert.deepEqual(byType(got, 'problem'), [], JSON.stringify(got));

  // `murmure messages` lists them as Bob sent them, each once, after the notice the first raised.
  const listed = await ok(alice, 'messages', bob.name, '--limit', '1000');
  const incoming = listed.filter((m) => m['direction'] === 'in');
  assert.deepEqual(
    incoming.map((m) => (m['kind'] === 'text' ? m['text'] : m['kind'])),
    ['hello alice', 'gap', ...sent],
    `listed: ${JSON.stringify(listed)}`,
  );
  assert.equal(String(incoming[1]!['text']), '3 messages missing');
  assert.ok(incoming.every((m) => m['status'] === 'received'));
  // Alice's own message stays in the conversation, before Bob's later ones.
  const outgoing = listed.filter((m) => m['direction'] === 'out');
  assert.deepEqual(outgoing.map((m) => m['text']), ['hello bob']);
  assert.ok(listed.indexOf(outgoing[0]!) < listed.findIndex((m) => m['text'] === sent[0]), JSON.stringify(listed));

  // Bob sees all four delivered (Alice's receipts, late ones included).
  const receipts = await ok(bob, 'sync');
  assert.ok(byType(receipts, 'delivered').length > 0, JSON.stringify(receipts));
  const bobView = await ok(bob, 'messages', alice.name, '--limit', '1000');
  const bobOut = bobView.filter((m) => m['direction'] === 'out' && sent.includes(m['text'] as string));
  assert.deepEqual(bobOut.map((m) => m['text']), sent);
  assert.deepEqual(bobOut.map((m) => m['status']), sent.map(() => 'delivered'));
});
