// SPDX-License-Identifier: AGPL-3.0-or-later
// Two agents with encrypted stores connect through a one-time link on a real relay and exchange
// messages both ways, with delivery receipts; a used link is refused.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { AGENT_MIGRATIONS, Agent, AgentError, LocalDatabase, type IncomingEvent } from '@murmure/agent';

import { cleanup, sleep, startRelay, stopRelay, tempDir, utf8, type RelayProcess } from './harness.js';

let relay: RelayProcess;
let dir: string;
before(async () => {
  relay = await startRelay();
  dir = tempDir();
});
after(async () => {
  await stopRelay(relay);
  cleanup(relay.dataDir);
  cleanup(dir);
});

function makeAgent(name: string, onIncoming?: (ev: IncomingEvent) => void, key: Uint8Array = new Uint8Array(randomBytes(32))) {
  const db = LocalDatabase.open(join(dir, `${name}.db`), key, AGENT_MIGRATIONS);
  const events: IncomingEvent[] = [];
  const sent: number[] = [];
  const agent = new Agent({
    db,
    handler: {
      incoming: (ev) => {
        events.push(ev);
        onIncoming?.(ev);
      },
      sent: (_c, seq) => sent.push(seq),
      connected: () => undefined,
      failed: () => undefined,
      replyPayload: () => utf8(`{"name":"${name}"}`),
    },
  });
  return { agent, db, events, sent };
}

async function until(f: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(20);
  }
}

test('invite, join, talk both ways, receipts', async () => {
  const alice = makeAgent('alice');
  const bob = makeAgent('bob');
  alice.agent.start();
  bob.agent.start();
  const { connId: aliceConn, link } = await alice.agent.createInvitation(relay.address);
  assert.match(link, /^murmure:\/\/.+\/i#/);
  const bobConn = await bob.agent.join(link, relay.address, utf8('{"name":"Bob"}'));
  await until(() => alice.agent.connections().find((c) => c.id === aliceConn)?.status === 'connected');
  await until(() => bob.agent.connections().find((c) => c.id === bobConn)?.status === 'connected');
  const conf = alice.events.find((e) => e.type === 'confirmation');
  assert.ok(conf && Buffer.from(conf.payload).toString() === '{"name":"Bob"}');

  const s1 = await bob.agent.send(bobConn, utf8('hello alice'));
  const s2 = await alice.agent.send(aliceConn, utf8('hello bob'));
  await until(() => alice.events.some((e) => e.type === 'message'));
  await until(() => bob.events.some((e) => e.type === 'message'));
  const toAlice = alice.events.find((e) => e.type === 'message');
  const toBob = bob.events.find((e) => e.type === 'message');
  assert.equal(toAlice?.type === 'message' && Buffer.from(toAlice.payload).toString(), 'hello alice');
  assert.equal(toBob?.type === 'message' && Buffer.from(toBob.payload).toString(), 'hello bob');
  await until(() => bob.events.some((e) => e.type === 'receipt' && e.seqs.includes(s1)));
  await until(() => alice.events.some((e) => e.type === 'receipt' && e.seqs.includes(s2)));
  assert.ok(bob.sent.includes(s1));

  const an = alice.agent.safetyNumber(aliceConn);
  const bn = bob.agent.safetyNumber(bobConn);
  assert.ok(an !== null && bn !== null);
  assert.equal(an.digits, bn.digits);

  // The one-time link is used: a third party is refused with a clear error.
  const carol = makeAgent('carol');
  carol.agent.start();
  await assert.rejects(carol.agent.join(link, relay.address, utf8('{}')), (e) => AgentError.is(e, 'LINK_USED'));
  for (const a of [alice, bob, carol]) {
    await a.agent.stop();
    a.db.close();
  }
});

test('a session resync that answers no reset of ours is ignored: no restore notice, no jump of our numbers', async () => {
  const alice = makeAgent('alice-resync');
  const bob = makeAgent('bob-resync');
  const problems: string[] = [];
  alice.agent.on('problem', (p: { message: string }) => problems.push(p.message));
  alice.agent.start();
  bob.agent.start();
  const { connId: aliceConn, link } = await alice.agent.createInvitation(relay.address);
  const bobConn = await bob.agent.join(link, relay.address, utf8('{"name":"Bob"}'));
  await until(() => alice.agent.connections().find((c) => c.id === aliceConn)?.status === 'connected');
  await until(() => bob.agent.connections().find((c) => c.id === bobConn)?.status === 'connected');

  // Bob's agent (a faulty or hostile contact) sends a RESYNC out of the blue, claiming to have
  // received 100 more of Alice's messages than she sent and that she was restored.
  const unsolicited = { type: 'RESYNC', lastRcvSeq: 100, lastRcvHash: new Uint8Array(32).fill(7), senderRestored: true };
  await (bob.agent as unknown as { sendBody(c: string, b: unknown, k: string): Promise<number> }).sendBody(bobConn, unsolicited, 'message');
  await bob.agent.send(bobConn, utf8('after the resync'));
  await until(() => alice.events.some((e) => e.type === 'message' && Buffer.from(e.payload).toString() === 'after the resync'));
  assert.ok(problems.some((m) => m.includes('answers no reset')), `a problem was reported: ${problems.join('; ')}`);
  assert.deepEqual(alice.events.filter((e) => e.type === 'resync' || e.type === 'gap' || e.type === 'bad-hash'), [], 'no restore notice and no gap at Alice');

  // Alice's numbers did not jump: her next message reaches Bob with no gap reported.
  await alice.agent.send(aliceConn, utf8('still in step'));
  await until(() => bob.events.some((e) => e.type === 'message' && Buffer.from(e.payload).toString() === 'still in step'));
  assert.deepEqual(bob.events.filter((e) => e.type === 'gap' || e.type === 'bad-hash' || e.type === 'resync'), [], 'no gap or resync at Bob');
  for (const a of [alice, bob]) {
    await a.agent.stop();
    a.db.close();
  }
});

test('a message received while the agent stops still gets its receipt: it goes out at the next start', async () => {
  // Bob stops the moment a message is shown, while its receipt is not gathered yet.
  let stopping: Promise<void> | null = null;
  let bob: ReturnType<typeof makeAgent> | null = null;
  const bobKey = new Uint8Array(randomBytes(32));
  const alice = makeAgent('alice-late-receipt');
  bob = makeAgent('bob-late-receipt', (ev) => {
    if (ev.type === 'message' && stopping === null) stopping = bob!.agent.stop();
  }, bobKey);
  alice.agent.start();
  bob.agent.start();
  const { connId: aliceConn, link } = await alice.agent.createInvitation(relay.address);
  const bobConn = await bob.agent.join(link, relay.address, utf8('{"name":"Bob"}'));
  await until(() => alice.agent.connections().find((c) => c.id === aliceConn)?.status === 'connected');
  await until(() => bob!.agent.connections().find((c) => c.id === bobConn)?.status === 'connected');
  const seq = await alice.agent.send(aliceConn, utf8('read just before the stop'));
  await until(() => stopping !== null);
  await stopping;
  bob.db.close();
  // Nothing went out for it before the stop.
  await sleep(300);
  assert.ok(!alice.events.some((e) => e.type === 'receipt'), 'no receipt while Bob is away');
  // Bob comes back: the receipt waited in his outbox.
  const again = makeAgent('bob-late-receipt', undefined, bobKey);
  again.agent.start();
  await until(() => alice.events.some((e) => e.type === 'receipt' && e.seqs.includes(seq)));
  for (const a of [alice, again]) {
    await a.agent.stop();
    a.db.close();
  }
});
