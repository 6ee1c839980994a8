// SPDX-License-Identifier: AGPL-3.0-or-later
// The life of a queue on a real relay process: NEW, the unauthenticated confirmation, KEY,
// SUB/MSG/ACK one message at a time (with wrong and retried ACKs), GET, OFF, DEL, link data,
// PING, subscription takeover (END and re-delivery), messages surviving a restart, and expiry
// of messages and unused queues under an injected clock.
import assert from 'node:assert/strict';
import { readdirSync, readlinkSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { RelayClient, RelayClientError, openDelivered, type PushedMessage, type RecipientQueue, type RelayClientErrorCode } from '@murmure/agent';
import { BLOCK_SIZE, ID_LENGTH, MAX_LINK_DATA, RELAY_VERSION_MAX } from '@murmure/protocol';
import { generateDhKeyPair, generateSigningKeyPair, randomId } from '@murmure/queue-crypto';
import { DataLockError, RelayServer, SqliteQueueStore, StoreError, relayConfig, type Logger, type QueueStore } from '@murmure/relay';

import { Inbox, cleanup, sleep, startRelay, stopRelay, tempDir, utf8, type RelayProcess } from './harness.js';
import { RawClient, codeOf } from './wire.js';

let relay: RelayProcess;
const clients: RelayClient[] = [];

before(async () => {
  relay = await startRelay();
});
after(async () => {
  for (const c of clients) c.close();
  assert.equal(await stopRelay(relay), 0, 'SIGTERM exits with 0');
  cleanup(relay.dataDir);
});

async function connect(address = relay.address): Promise<RelayClient> {
  const c = await RelayClient.connect(address);
  clients.push(c);
  return c;
}

function refusedWith(code: RelayClientErrorCode) {
  return (e: unknown): boolean => {
    assert.ok(RelayClientError.is(e), `expected a RelayClientError, got ${String(e)}`);
    assert.equal(e.code, code);
    return true;
  };
}

function text(q: RecipientQueue, m: PushedMessage | { msgId: Uint8Array; body: Uint8Array }): string {
  return Buffer.from(openDelivered(q, m.msgId, m.body).body).toString();
}

/** A round trip on `c`, so that anything the relay would push before it has been pushed. */
async function settle(c: RelayClient): Promise<void> {
  await c.ping();
  await sleep(50);
  await c.ping();
}

test('NEW answers two unrelated 24-byte ids; the confirmation goes unauthenticated; KEY secures the queue', async () => {
  const alice = await connect();
  const bob = await connect();
  const q = await alice.createQueue();
  assert.equal(q.rcvId.length, ID_LENGTH);
  assert.equal(q.sndId.length, ID_LENGTH);
  assert.notDeepEqual(Buffer.from(q.rcvId), Buffer.from(q.sndId));
  const q2 = await alice.createQueue();
  assert.notDeepEqual(Buffer.from(q2.rcvId), Buffer.from(q.rcvId), 'each queue gets fresh ids');

  await bob.send(q.sndId, null, utf8('confirmation'));
  const senderKey = generateDhKeyPair();
  await alice.secure(q, senderKey.publicKey);
  await alice.secure(q, senderKey.publicKey); // the same key again is fine (a retried KEY)
  await assert.rejects(alice.secure(q, generateDhKeyPair().publicKey), refusedWith('AUTH'), 'KEY cannot replace the sender key');
  await assert.rejects(bob.send(q.sndId, null, utf8('no auth')), refusedWith('AUTH'), 'unauthenticated SEND to a secured queue');
  await assert.rejects(bob.send(q.sndId, generateDhKeyPair().privateKey, utf8('wrong key')), refusedWith('AUTH'), 'SEND with the wrong sender key');
  await bob.send(q.sndId, senderKey.privateKey, utf8('hello'));

  const got = await alice.get(q);
  assert.ok(got !== null);
  assert.equal(text(q, got), 'confirmation', 'only the confirmation and the authenticated SEND were stored');
  await alice.ack(q, got.msgId);
  const second = await alice.get(q);
  assert.ok(second !== null);
  assert.equal(text(q, second), 'hello');
  await alice.ack(q, second.msgId);
  assert.equal(await alice.get(q), null);
});

test('SUB pushes one message at a time: the next only after ACK; wrong and retried ACKs get NO_MSG and delete nothing', async () => {
  const alice = await connect();
  const bob = await connect();
  const q = await alice.createQueue();
  const senderKey = generateDhKeyPair();
  await bob.send(q.sndId, null, utf8('m0'));
  await alice.secure(q, senderKey.publicKey);
  for (const m of ['m1', 'm2', 'm3']) await bob.send(q.sndId, senderKey.privateKey, utf8(m));

  const inbox = new Inbox(alice);
  await alice.subscribe(q);
  await inbox.waitFor(1);
  await settle(alice);
  assert.equal(inbox.messages.length, 1, 'no second MSG before the first is acknowledged');
  const m0 = inbox.messages[0]!;
  assert.equal(text(q, m0), 'm0');
  assert.deepEqual(Buffer.from(m0.rcvId), Buffer.from(q.rcvId), 'MSG names the recipient id');

  await assert.rejects(alice.ack(q, randomId()), refusedWith('NO_MSG'), 'ACK with a wrong msgId');
  await settle(alice);
  assert.equal(inbox.messages.length, 1, 'a wrong ACK releases nothing');

  await alice.ack(q, m0.msgId);
  await inbox.waitFor(2);
  const m1 = inbox.messages[1]!;
  assert.equal(text(q, m1), 'm1', 'the message survived the wrong ACK');
  assert.notDeepEqual(Buffer.from(m1.msgId), Buffer.from(m0.msgId));

  await assert.rejects(alice.ack(q, m0.msgId), refusedWith('NO_MSG'), 'a retried ACK of the acknowledged message');
  await alice.ack(q, m1.msgId); // m1 was not deleted by the retried ACK
  await inbox.waitFor(3);
  const m2 = inbox.messages[2]!;
  assert.equal(text(q, m2), 'm2');
  await assert.rejects(alice.ack(q, m1.msgId), refusedWith('NO_MSG'));
  await alice.ack(q, m2.msgId);
  await inbox.waitFor(4);
  const m3 = inbox.messages[3]!;
  assert.equal(text(q, m3), 'm3');
  await bob.send(q.sndId, senderKey.privateKey, utf8('m3b'));
  // The same ACK twice in one block: one deletes m3, the other gets NO_MSG and leaves m3b alone.
  const twice = await Promise.allSettled([alice.ack(q, m3.msgId), alice.ack(q, m3.msgId)]);
  assert.deepEqual(twice.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
  assert.ok(twice.some((r) => r.status === 'rejected' && RelayClientError.is(r.reason, 'NO_MSG')));
  await inbox.waitFor(5);
  const m3b = inbox.messages[4]!;
  assert.equal(text(q, m3b), 'm3b');
  await alice.ack(q, m3b.msgId);

  // A message sent while the subscriber holds nothing is pushed at once.
  await bob.send(q.sndId, senderKey.privateKey, utf8('m4'));
  await inbox.waitFor(6);
  assert.equal(text(q, inbox.messages[5]!), 'm4');
  assert.deepEqual(
    inbox.messages.map((m) => text(q, m)),
    ['m0', 'm1', 'm2', 'm3', 'm3b', 'm4'],
    'each message exactly once, in order',
  );
  await assert.rejects(alice.get(q), refusedWith('CMD'), 'GET on the subscribed connection is refused');
  await alice.ack(q, inbox.messages[5]!.msgId);
});

test('GET works without SUB; OFF refuses SENDs while the recipient drains; DEL makes every command AUTH', async () => {
  const alice = await connect();
  const bob = await connect();
  const q = await alice.createQueue();
  const senderKey = generateDhKeyPair();
  await bob.send(q.sndId, null, utf8('c'));
  await alice.secure(q, senderKey.publicKey);
  await bob.send(q.sndId, senderKey.privateKey, utf8('d'));

  const g1 = await alice.get(q);
  assert.ok(g1 !== null);
  assert.equal(text(q, g1), 'c');
  const again = await alice.get(q);
  assert.ok(again !== null);
  assert.deepEqual(Buffer.from(again.msgId), Buffer.from(g1.msgId), 'GET without ACK returns the same message');
  await assert.rejects(alice.ack(q, randomId()), refusedWith('NO_MSG'));
  await alice.ack(q, g1.msgId);

  await alice.suspend(q);
  await assert.rejects(bob.send(q.sndId, senderKey.privateKey, utf8('after OFF')), refusedWith('AUTH'), 'SEND to a suspended queue');
  const g2 = await alice.get(q);
  assert.ok(g2 !== null, 'the recipient can still drain a suspended queue');
  assert.equal(text(q, g2), 'd');
  await alice.ack(q, g2.msgId);
  assert.equal(await alice.get(q), null, 'GET on an empty queue: NO_MSG');

  const watcher = await connect();
  await watcher.subscribe(q); // the recipient's keys work from any connection
  const ended = new Promise<Uint8Array>((r) => watcher.once('end', r));
  await alice.deleteQueue(q);
  assert.deepEqual(Buffer.from(await ended), Buffer.from(q.rcvId), 'DEL ends the subscription of another connection');
  const mallory = await connect();
  const checks: [string, () => Promise<unknown>][] = [
    ['SUB', () => alice.subscribe(q)],
    ['GET', () => alice.get(q)],
    ['ACK', () => alice.ack(q, g2.msgId)],
    ['KEY', () => alice.secure(q, senderKey.publicKey)],
    ['OFF', () => alice.suspend(q)],
    ['DEL', () => alice.deleteQueue(q)],
    ['LSET', () => alice.setLink(q, randomId(), utf8('link'))],
    ['SEND', () => bob.send(q.sndId, senderKey.privateKey, utf8('after DEL'))],
    ['SEND unauthenticated', () => bob.send(q.sndId, null, utf8('after DEL'))],
    ['SUB elsewhere', () => mallory.subscribe(q)],
  ];
  for (const [what, f] of checks) await assert.rejects(f(), refusedWith('AUTH'), `${what} on a deleted queue`);
});

test('an ACK from the connection that did the GET releases the message a subscriber holds: the subscriber gets the next one', async () => {
  const alice = await connect();
  const poller = await connect();
  const bob = await connect();
  const inbox = new Inbox(alice);
  const q = await alice.createQueue();
  const senderKey = generateDhKeyPair();
  await alice.secure(q, senderKey.publicKey);
  await bob.send(q.sndId, senderKey.privateKey, utf8('first'));
  await bob.send(q.sndId, senderKey.privateKey, utf8('second'));
  await alice.subscribe(q);
  await inbox.waitFor(1);
  const held = inbox.messages[0]!;
  assert.equal(text(q, held), 'first');

  const got = await poller.get(q); // another connection may GET while alice is subscribed
  assert.ok(got !== null);
  assert.deepEqual(Buffer.from(got.msgId), Buffer.from(held.msgId), 'GET returns the message the subscriber holds');
  await poller.ack(q, got.msgId);
  await inbox.waitFor(2);
  assert.equal(text(q, inbox.messages[1]!), 'second', 'the subscriber is sent the next message');
  await assert.rejects(alice.ack(q, held.msgId), refusedWith('NO_MSG'), "the subscriber's ACK of the message already acknowledged");
  await alice.ack(q, inbox.messages[1]!.msgId);
  await settle(alice);
  assert.equal(await poller.get(q), null, 'both messages are gone');
});

test('GET, then SUB and the ACK of the fetched message in one block: the ACK is taken and the next message is pushed', async () => {
  const alice = await connect();
  const bob = await connect();
  const q = await alice.createQueue();
  const senderKey = generateDhKeyPair();
  await alice.secure(q, senderKey.publicKey);
  await bob.send(q.sndId, senderKey.privateKey, utf8('first'));
  await bob.send(q.sndId, senderKey.privateKey, utf8('second'));
  const raw = await RawClient.open(relay.port);
  const auth = { kind: 'authenticator', key: q.authKey.privateKey } as const;
  const got = await raw.request(q.rcvId, { type: 'GET' }, auth);
  assert.ok(got.r.type === 'MSG');
  const first = got.r.msgId;
  const sub = raw.build(q.rcvId, { type: 'SUB' }, auth);
  const ack = raw.build(q.rcvId, { type: 'ACK', msgId: first }, auth);
  const replies = [raw.reply(sub.corrId), raw.reply(ack.corrId)];
  raw.sendTransmissions([sub.bytes, ack.bytes]);
  assert.deepEqual((await Promise.all(replies)).map(codeOf), ['OK', 'OK'], 'SUB and the ACK of the fetched message');
  // The subscription may push the first message before the ACK lands; the second comes after it.
  let next = null;
  for (let seen = 0; next === null; seen++) {
    const r = (await raw.nextUnsolicited(seen)).r;
    if (r.type === 'MSG' && !Buffer.from(r.msgId).equals(Buffer.from(first))) next = r;
  }
  assert.equal(Buffer.from(openDelivered(q, next.msgId, next.body).body).toString(), 'second');
  assert.equal(codeOf(await raw.request(q.rcvId, { type: 'ACK', msgId: next.msgId }, auth)), 'OK');
  raw.close();
  await settle(alice);
  assert.equal(await alice.get(q), null, 'both messages are gone');
});

test('LSET/LGET: link data by link id, DUPLICATE for a taken id, removed by an empty LSET and by KEY', async () => {
  const alice = await connect();
  const bob = await connect();
  const carol = await connect();
  const q = await alice.createQueue();
  const other = await carol.createQueue();
  const linkId = randomId();
  const data = randomId(MAX_LINK_DATA);
  await assert.rejects(bob.getLink(linkId), refusedWith('AUTH'), 'LGET of an unknown link id');
  await alice.setLink(q, linkId, data);
  const link = await bob.getLink(linkId);
  assert.deepEqual(Buffer.from(link.sndId), Buffer.from(q.sndId), 'LGET returns the sender id');
  assert.deepEqual(Buffer.from(link.data), Buffer.from(data));

  await assert.rejects(carol.setLink(other, linkId, utf8('mine')), refusedWith('DUPLICATE'), 'a link id held by another queue');
  assert.deepEqual(Buffer.from((await bob.getLink(linkId)).data), Buffer.from(data), 'the DUPLICATE changed nothing');
  await assert.rejects(bob.getLink(q.rcvId), refusedWith('AUTH'), 'the recipient id is not a link id');

  await alice.setLink(q, linkId, new Uint8Array(0));
  await assert.rejects(bob.getLink(linkId), refusedWith('AUTH'), 'an empty LSET removes the link');
  await carol.setLink(other, linkId, utf8('now free')); // the id is free again
  assert.equal(Buffer.from((await bob.getLink(linkId)).data).toString(), 'now free');

  const linkId2 = randomId();
  await alice.setLink(q, linkId2, utf8('invitation'));
  assert.equal(Buffer.from((await bob.getLink(linkId2)).data).toString(), 'invitation');
  await alice.secure(q, generateDhKeyPair().publicKey);
  await assert.rejects(bob.getLink(linkId2), refusedWith('AUTH'), 'KEY removes the link data');
  await assert.rejects(alice.setLink(q, linkId2, utf8('again')), refusedWith('CMD'), 'a secured queue takes no link data');
});

test('PING gets PONG, in a full-size block', async () => {
  const c = await connect();
  await c.ping();
  const raw = await RawClient.open(relay.port);
  const pong = await raw.request(new Uint8Array(0), { type: 'PING' }, { kind: 'none' });
  assert.equal(codeOf(pong), 'PONG');
  assert.equal(pong.block.length, BLOCK_SIZE);
  assert.equal(raw.hello.versions.max, RELAY_VERSION_MAX);
  assert.deepEqual(raw.badFrames, []);
  raw.close();
});

test('a second SUB takes the subscription: END to the first, the unacknowledged message re-delivered with the same msgId', async () => {
  const first = await connect();
  const second = await connect();
  const bob = await connect();
  const q = await first.createQueue();
  const senderKey = generateDhKeyPair();
  await bob.send(q.sndId, null, utf8('one'));
  await first.secure(q, senderKey.publicKey);
  await bob.send(q.sndId, senderKey.privateKey, utf8('two'));

  const inbox1 = new Inbox(first);
  const ends: Uint8Array[] = [];
  first.on('end', (id: Uint8Array) => ends.push(id));
  await first.subscribe(q);
  await inbox1.waitFor(1);
  const held = inbox1.messages[0]!;

  const inbox2 = new Inbox(second);
  await second.subscribe(q);
  await inbox2.waitFor(1);
  await settle(first);
  assert.equal(ends.length, 1, 'the first subscriber got END');
  assert.deepEqual(Buffer.from(ends[0]!), Buffer.from(q.rcvId));
  const redelivered = inbox2.messages[0]!;
  assert.deepEqual(Buffer.from(redelivered.msgId), Buffer.from(held.msgId), 'same msgId, so the client can drop a duplicate');
  assert.equal(text(q, redelivered), 'one');

  await assert.rejects(first.ack(q, held.msgId), refusedWith('NO_MSG'), 'the old subscriber can no longer ACK');
  await second.ack(q, redelivered.msgId);
  await inbox2.waitFor(2);
  assert.equal(text(q, inbox2.messages[1]!), 'two');
  await settle(first);
  assert.equal(inbox1.messages.length, 1, 'nothing more goes to the old subscriber');
  await second.ack(q, inbox2.messages[1]!.msgId);
});

test('messages survive a relay restart (SIGTERM, same data and port) and are delivered after re-SUB', async () => {
  const alice = await RelayClient.connect(relay.address);
  const bob = await RelayClient.connect(relay.address);
  const q = await alice.createQueue();
  const senderKey = generateDhKeyPair();
  await bob.send(q.sndId, null, utf8('before-0'));
  await alice.secure(q, senderKey.publicKey);
  for (let i = 1; i < 5; i++) await bob.send(q.sndId, senderKey.privateKey, utf8(`before-${i}`));
  const inbox = new Inbox(alice);
  await alice.subscribe(q);
  await inbox.waitFor(1);
  const unacked = inbox.messages[0]!;
  const closed = Promise.all([alice, bob].map((c) => new Promise<void>((r) => c.once('close', () => r()))));

  const oldAddress = relay.address;
  assert.equal(await stopRelay(relay), 0, 'SIGTERM exits with 0');
  await closed;
  relay = await startRelay({ dataDir: relay.dataDir, port: relay.port });
  assert.equal(relay.address, oldAddress, 'same identity, same address');

  const alice2 = await connect();
  const bob2 = await connect();
  const inbox2 = new Inbox(alice2);
  await alice2.subscribe(q);
  const got: string[] = [];
  for (let i = 0; i < 5; i++) {
    await inbox2.waitFor(i + 1);
    const m = inbox2.messages[i]!;
    if (i === 0) assert.deepEqual(Buffer.from(m.msgId), Buffer.from(unacked.msgId), 'the unacknowledged message keeps its id');
    got.push(text(q, m));
    await alice2.ack(q, m.msgId);
  }
  assert.deepEqual(got, ['before-0', 'before-1', 'before-2', 'before-3', 'before-4']);
  await bob2.send(q.sndId, senderKey.privateKey, utf8('after'));
  await inbox2.waitFor(6);
  assert.equal(text(q, inbox2.messages[5]!), 'after', 'the sender key survived the restart too');
  await alice2.ack(q, inbox2.messages[5]!.msgId);
});

test('a start that fails on a busy metrics port leaves nothing open: the same folder and port start again', async () => {
  const dir = tempDir();
  const busy = createServer();
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
  const busyPort = (busy.address() as AddressInfo).port;
  const port = await new Promise<number>((resolve) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const p = (probe.address() as AddressInfo).port;
      probe.close(() => resolve(p));
    });
  });
  const openInDir = (): number => readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`).startsWith(dir);
    } catch {
      return false;
    }
  }).length;
  try {
    await assert.rejects(RelayServer.start(relayConfig(dir, { port, metricsPort: busyPort })), (e: NodeJS.ErrnoException) => e.code === 'EADDRINUSE');
    assert.equal(openInDir(), 0, 'the store it opened is closed');
    const server = await RelayServer.start(relayConfig(dir, { port, metricsPort: 0 }));
    assert.equal(server.port, port, 'the relay port was given back');
    const c = await RelayClient.connect(server.address);
    await c.ping();
    c.close();
    await server.stop();
  } finally {
    busy.close();
    cleanup(dir);
  }
});

test('a second relay in the same process on the same folder is refused with IN_USE; the folder is free once the first has stopped', async () => {
  const dir = tempDir();
  const first = await RelayServer.start(relayConfig(dir, { port: 0 }));
  let firstRunning = true;
  try {
    await assert.rejects(RelayServer.start(relayConfig(dir, { port: 0 })), (e: unknown) => DataLockError.is(e, 'IN_USE'));
    const c = await RelayClient.connect(first.address);
    await c.ping();
    c.close();
    await first.stop();
    firstRunning = false;
    const second = await RelayServer.start(relayConfig(dir, { port: 0 }));
    try {
      assert.deepEqual(second.identity.fingerprint, first.identity.fingerprint, 'the same folder, the same relay');
    } finally {
      await second.stop();
    }
  } finally {
    if (firstRunning) await first.stop();
    cleanup(dir);
  }
});

test('a relay whose store could not be closed keeps the folder locked: the store stays open, so no second relay may open it', async () => {
  const dir = tempDir();
  const inner = SqliteQueueStore.open({ path: join(dir, 'relay.sqlite') });
  let failClose = true;
  const store = new Proxy(inner, {
    get(target, prop) {
      if (prop === 'close') return () => (failClose ? Promise.reject(new StoreError('IO', 'injected close failure')) : target.close());
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  }) as QueueStore;
  const server = await RelayServer.start(relayConfig(dir, { port: 0 }), { store });
  try {
    await assert.rejects(server.stop(), (e: unknown) => StoreError.is(e, 'IO'));
    await assert.rejects(RelayServer.start(relayConfig(dir, { port: 0 })), (e: unknown) => DataLockError.is(e, 'IN_USE'));
  } finally {
    failClose = false;
    await inner.close();
    cleanup(dir);
  }
});

test('expiry (injected clock): messages go after messageTtlMs, unused queues after queueTtlMs', async () => {
  const HOUR = 3_600_000;
  const DAY = 24 * HOUR;
  const dir = tempDir();
  let fakeNow = Date.UTC(2030, 0, 1, 12);
  const server = await RelayServer.start(relayConfig(dir, { port: 0, messageTtlMs: 2 * HOUR, queueTtlMs: 3 * DAY, expiryIntervalMs: 3_600_000 }), {
    now: () => fakeNow,
  });
  try {
    const alice = await RelayClient.connect(server.address);
    const bob = await RelayClient.connect(server.address);
    const used = await alice.createQueue();
    const unused = await alice.createQueue();
    await bob.send(used.sndId, null, utf8('old'));
    fakeNow += HOUR;
    await bob.send(used.sndId, null, utf8('newer')); // an unsecured queue takes more than one unauthenticated SEND
    fakeNow += HOUR + 60_000; // 'old' is now past its TTL, 'newer' not
    await server.expire();
    const first = await alice.get(used);
    assert.ok(first !== null);
    assert.equal(text(used, first), 'newer', 'the expired message is gone, the younger one stays');
    fakeNow += 2 * HOUR;
    await server.expire();
    assert.equal(await alice.get(used), null, 'a delivered but unacknowledged message expires as well');
    assert.equal(server.metrics.messagesExpired, 2);

    fakeNow += 2 * DAY; // both queues were last active 2 days ago
    await alice.subscribe(used); // SUB marks the queue used today
    await sleep(50);
    const commits = server.metrics.storeCommits;
    const again = await RelayClient.connect(server.address);
    await again.subscribe(used); // the mark is already today's: this SUB writes nothing
    await sleep(50);
    assert.equal(server.metrics.storeCommits, commits, 'a SUB on a queue already marked today commits nothing');
    again.close();
    await server.expire();
    assert.equal(server.metrics.queuesExpired, 0, 'no queue is older than queueTtlMs yet');
    fakeNow += 2 * DAY;
    await server.expire();
    assert.equal(server.metrics.queuesExpired, 1);
    await assert.rejects(alice.get(unused), refusedWith('AUTH'), 'the unused queue was deleted');
    await bob.send(used.sndId, null, utf8('still here'));
    alice.close();
    bob.close();
  } finally {
    await server.stop();
    cleanup(dir);
  }
});

/**
 * The real SQLite store, with its queue reads of one queue held back (as a networked store's
 * reads are asynchronous) until the test lets them go, and its message reads counted.
 */
function gatedStore(inner: SqliteQueueStore) {
  let onHeld = (): void => undefined;
  const ctl = {
    gate: null as Uint8Array | null,
    release: (): void => undefined,
    held: Promise.resolve(),
    messageReads: 0,
    failReads: 0,
    /** Holds the next read of `rcvId`; `held` resolves once that read has been taken. */
    arm(rcvId: Uint8Array): void {
      ctl.gate = rcvId;
      ctl.held = new Promise((r) => (onHeld = r));
    },
  };
  const gated = (rcvId: Uint8Array): Promise<Awaited<ReturnType<QueueStore['queueByRecipient']>>> => {
    const read = inner.queueByRecipient(rcvId); // the read is taken now, its answer given later
    if (ctl.gate === null || !Buffer.from(ctl.gate).equals(Buffer.from(rcvId))) return read;
    ctl.gate = null;
    return new Promise((resolve) => {
      ctl.release = () => resolve(read);
      onHeld();
    });
  };
  const store = new Proxy(inner, {
    get(target, prop) {
      // A store whose reads wait, as a database server's would: the SQLite store's immediate
      // lookups (taken when offered) leave no read to hold.
      if (prop === 'queueByRecipientNow' || prop === 'queueBySenderNow') return undefined;
      if (prop === 'queueByRecipient') return gated;
      if (prop === 'oldestMessages') {
        return (rcvId: Uint8Array, limit: number, aheadBytes?: number) => {
          ctl.messageReads++;
          if (ctl.failReads > 0) {
            ctl.failReads--;
            return Promise.reject(new StoreError('IO', 'injected read failure'));
          }
          return target.oldestMessages(rcvId, limit, aheadBytes);
        };
      }
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  }) as QueueStore;
  return { store, ctl };
}

test('SUB on an empty queue reads no message; a message committed while the SUB reads the queue is still delivered', { timeout: 60_000 }, async () => {
  const dir = tempDir();
  const { store, ctl } = gatedStore(SqliteQueueStore.open({ path: join(dir, 'relay.sqlite') }));
  const server = await RelayServer.start(relayConfig(dir, { port: 0 }), { store });
  try {
    const alice = await RelayClient.connect(server.address);
    const bob = await RelayClient.connect(server.address);
    const q = await alice.createQueue();

    // An empty queue: the SUB answers OK and reads no message.
    let reads = ctl.messageReads;
    await alice.subscribe(q);
    await settle(alice);
    assert.equal(ctl.messageReads, reads, 'a SUB on an empty queue reads no message');

    // A queue holding a message: the SUB reads it and delivers it.
    const alice2 = await RelayClient.connect(server.address);
    const inbox2 = new Inbox(alice2);
    await bob.send(q.sndId, null, utf8('waiting'));
    reads = ctl.messageReads;
    await alice2.subscribe(q);
    await inbox2.waitFor(1);
    assert.ok(ctl.messageReads > reads, 'a SUB on a queue with messages reads them');
    assert.equal(text(q, inbox2.messages[0]!), 'waiting');
    await alice2.ack(q, inbox2.messages[0]!.msgId);
    await settle(alice2);

    // The race: the SUB reads the queue empty, a SEND commits, then the SUB's read is answered.
    const alice3 = await RelayClient.connect(server.address);
    const inbox3 = new Inbox(alice3);
    ctl.arm(q.rcvId);
    const subscribed = alice3.subscribe(q);
    await ctl.held; // the SUB's read is taken (the queue is empty) and held
    await bob.send(q.sndId, null, utf8('raced')); // committed before the read is answered
    ctl.release();
    await subscribed;
    await inbox3.waitFor(1, 5_000);
    assert.equal(text(q, inbox3.messages[0]!), 'raced', 'the message committed during the read is pushed');
    for (const c of [alice, alice2, alice3, bob]) c.close();
  } finally {
    await server.stop();
    cleanup(dir);
  }
});

test('a message read that fails after SUB was answered: no second answer, the log says so, and delivery comes on the retry', { timeout: 60_000 }, async () => {
  const dir = tempDir();
  const { store, ctl } = gatedStore(SqliteQueueStore.open({ path: join(dir, 'relay.sqlite') }));
  const events: string[] = [];
  const logger: Logger = { log: (_level, event) => void events.push(event) };
  const server = await RelayServer.start(relayConfig(dir, { port: 0 }), { store, logger });
  try {
    const alice = await RelayClient.connect(server.address);
    const bob = await RelayClient.connect(server.address);
    const q = await alice.createQueue();
    await bob.send(q.sndId, null, utf8('kept'));
    const inbox = new Inbox(alice);
    ctl.failReads = 2;
    await alice.subscribe(q); // answered OK; the reads after it fail twice
    await settle(alice);
    assert.equal(server.metrics.errors.get('STORE'), undefined, 'the SUB got no ERR STORE after its OK');
    assert.ok(events.includes('store read failed'), 'the failed read is logged');
    await inbox.waitFor(1, 8_000);
    assert.equal(text(q, inbox.messages[0]!), 'kept', 'the message is delivered once a read succeeds');
    assert.equal(ctl.failReads, 0);
    await alice.ack(q, inbox.messages[0]!.msgId);
    alice.close();
    bob.close();
  } finally {
    await server.stop();
    cleanup(dir);
  }
});

test('expiry (injected clock): a queue its recipient stays subscribed to is never unused, however old the SUB', async () => {
  const HOUR = 3_600_000;
  const DAY = 24 * HOUR;
  const dir = tempDir();
  let fakeNow = Date.UTC(2030, 0, 1, 12);
  const server = await RelayServer.start(relayConfig(dir, { port: 0, queueTtlMs: 3 * DAY, expiryIntervalMs: 3_600_000 }), { now: () => fakeNow });
  try {
    const alice = await RelayClient.connect(server.address);
    const bob = await RelayClient.connect(server.address);
    const held = await alice.createQueue();
    const left = await alice.createQueue();
    const inbox = new Inbox(alice);
    await alice.subscribe(held);
    for (let day = 0; day < 5; day++) {
      fakeNow += 2 * DAY;
      await server.expire();
    }
    assert.equal(server.metrics.queuesExpired, 1, 'only the queue nobody held expired');
    await assert.rejects(alice.get(left), refusedWith('AUTH'));
    await bob.send(held.sndId, null, utf8('ten days later'));
    await inbox.waitFor(1);
    assert.equal(text(held, inbox.messages[0]!), 'ten days later', 'the held queue still works');
    alice.close();
    bob.close();
  } finally {
    await server.stop();
    cleanup(dir);
  }
});

test('a signed NEW from a key other than rcvSigKey is refused', async () => {
  const raw = await RawClient.open(relay.port);
  const sig = generateSigningKeyPair();
  const other = generateSigningKeyPair();
  const cmd = { type: 'NEW' as const, rcvSigKey: sig.publicKey, rcvAuthKey: generateDhKeyPair().publicKey, rcvDhKey: generateDhKeyPair().publicKey };
  assert.equal(codeOf(await raw.request(new Uint8Array(0), cmd, { kind: 'signature', key: other.privateKey })), 'AUTH');
  assert.equal(codeOf(await raw.request(new Uint8Array(0), cmd, { kind: 'none' })), 'AUTH');
  assert.equal(codeOf(await raw.request(new Uint8Array(0), cmd, { kind: 'signature', key: sig.privateKey })), 'IDS');
  raw.close();
});
