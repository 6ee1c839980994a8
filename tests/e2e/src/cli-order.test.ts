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

import { RelayServer, SqliteQueueStore, relayConfig, type StoredMessage } from '@murmure/relay';

import { byType, connectedHomes, ok, withDatabase, type Home, type Json } from './cli-homes.js';
import { cleanup, tempDir } from './harness.js';
import { TargetQueueStore } from './target-queue-store.js';

/** The relay's queue store, delegating to SQLite, handing out one queue's messages (the target, the receiver's) by rank. */
class ReorderingStore extends TargetQueueStore {
  /** Gives each message added to the target its delivery rank; lower first. Default: arrival order. */
  rank: (n: number) => number = (n) => n;

  protected addToTarget(rcvId: Uint8Array, msg: StoredMessage, quota: number, now: number): Promise<'ok' | 'quota' | 'gone'> {
    return this.storeRanked(rcvId, msg, this.rank(this.added), quota, now);
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

/** The recipient id of a home's only receive queue, read from its database (no `murmure` may run on it). */
function receiveQueue(h: Home): Uint8Array {
  return withDatabase(h, (db) => {
    const rows = db.db.prepare("SELECT rcv_id FROM agent_connections WHERE status = 'connected'").all() as { rcv_id: Uint8Array }[];
    assert.equal(rows.length, 1, 'one connection');
    return new Uint8Array(rows[0]!.rcv_id);
  });
}

test("messages the relay hands out in reverse are listed in the sender's order", async () => {
  const { alice, bob } = await connectedHomes(root, relay.address, tag);
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
  // Each sent on its own (a sync after each), so that each is a relay message of its own: what
  // a sender composed offline would go as one batch.
  const sent = ['one', 'two', 'three', 'four'].map((w) => `${w} ${tag}`);
  const bobSync: Json[] = [];
  for (const t of sent) {
    await ok(bob, 'send', alice.name, t);
    bobSync.push(...(await ok(bob, 'sync')));
  }
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
