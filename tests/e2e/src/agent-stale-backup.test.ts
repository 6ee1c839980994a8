// SPDX-License-Identifier: AGPL-3.0-or-later
// D3, a stale backup restored: Alice's home is copied, a hundred messages go both ways, and then
// the copy is put back while Bob keeps sending. Nothing may be accepted or lost silently: Alice's
// restored copy cannot decrypt Bob's messages and says so, asks for a session reset, and learns
// from Bob's answer that it was restored (its messages since the copy never reached Bob); Bob is
// told that Alice restored an old backup; Alice is told which of Bob's messages she no longer
// has. Then the session works again: later messages go both ways, each shown once, and their
// sequence numbers continue after those Bob saw, so none is taken for a repeat.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { cpSync, rmSync } from 'node:fs';
import { after, before, test } from 'node:test';

import { byType, connectedHomes, ok, syncUntil, type Home, type Json } from './cli-homes.js';
import { cleanup, startRelay, stopRelay, tempDir, type RelayProcess } from './harness.js';

const tag = randomBytes(4).toString('hex');
let relay: RelayProcess;
let root: string;

before(async () => {
  relay = await startRelay();
  root = tempDir('murmure-d3-');
});

after(async () => {
  await stopRelay(relay);
  cleanup(relay.dataDir);
  cleanup(root);
});

/** Texts of the text messages in a `messages` listing, by direction. */
function texts(list: readonly Json[], direction: 'in' | 'out'): string[] {
  return list.filter((m) => m['kind'] === 'text' && m['direction'] === direction).map((m) => m['text'] as string);
}

/** Two people connected through a one-time link, each with one message from the other. */
async function pair(prefix: string): Promise<{ alice: Home; bob: Home }> {
  const { alice, bob } = await connectedHomes(root, relay.address, tag, prefix);
  await ok(alice, 'send', bob.name, 'hello bob');
  await ok(alice, 'sync');
  await ok(bob, 'sync');
  await ok(bob, 'send', alice.name, 'hello alice');
  await ok(bob, 'sync');
  await ok(alice, 'sync');
  return { alice, bob };
}

/** Sends `rounds` × (`per` from each side), syncing both after each round. */
async function chatter(alice: Home, bob: Home, rounds: number, per: number): Promise<void> {
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < per; i++) {
      await ok(alice, 'send', bob.name, `old a ${r}.${i}`);
      await ok(bob, 'send', alice.name, `old b ${r}.${i}`);
    }
    await ok(alice, 'sync');
    await ok(bob, 'sync');
  }
}

test('a restored stale home: errors and notices, never silence; the session resyncs and works both ways', async () => {
  const { alice, bob } = await pair('stale');
  const snapshot = `${alice.dir}.snapshot`;
  cpSync(alice.dir, snapshot, { recursive: true });
  await chatter(alice, bob, 5, 10); // 100 messages after the copy
  rmSync(alice.dir, { recursive: true, force: true });
  cpSync(snapshot, alice.dir, { recursive: true });

  // Bob keeps sending; the restored Alice sends too, on her stale session.
  for (let i = 0; i < 3; i++) await ok(bob, 'send', alice.name, `while stale b ${i}`);
  for (let i = 0; i < 2; i++) await ok(alice, 'send', bob.name, `while stale a ${i}`);

  const restored = (events: Json[], who: string) => byType(events, 'resync').some((e) => e['restored'] === who);
  const { a, b } = await syncUntil(alice, bob, (ea, eb) => restored(ea, 'self') && restored(eb, 'contact'), 6);
  // Both sides may have asked for a reset (each failed to decrypt the other): one more round
  // lets the second answer arrive.
  a.push(...(await ok(alice, 'sync')));
  b.push(...(await ok(bob, 'sync')));
  // One side (or both) could not read the other's messages and said so; Alice learnt she was the stale copy.
  assert.ok([...a, ...b].some((p) => p['type'] === 'problem' && String(p['message']).includes('the secure session is being reset')), JSON.stringify({ a, b }));
  assert.ok(restored(a, 'self') && !restored(a, 'contact'), JSON.stringify(a));
  assert.ok(byType(a, 'resync').length <= 2, JSON.stringify(a));
  // Bob's messages the copy never got are reported missing, not dropped silently.
  assert.ok(byType(a, 'missing').length > 0, JSON.stringify(a));
  // Bob is told that Alice restored an old backup.
  assert.ok(restored(b, 'contact') && !restored(b, 'self'), JSON.stringify(b));
  assert.ok(byType(b, 'resync').length <= 2, JSON.stringify(b));
  // The stale copy's messages never show up as Bob's messages under used numbers.
  const bobSeen = await ok(bob, 'messages', alice.name, '--limit', '1000');
  assert.deepEqual(texts(bobSeen, 'in').filter((t) => t.startsWith('while stale')), []);
  assert.ok(bobSeen.some((m) => m['kind'] === 'notice' && String(m['text']).includes('restored an old backup')), 'Bob has a notice in the conversation');
  const aliceSeen = await ok(alice, 'messages', bob.name, '--limit', '1000');
  assert.ok(aliceSeen.some((m) => m['kind'] === 'notice' && String(m['text']).includes('restored from an old backup')), 'Alice has a notice in the conversation');
  assert.ok(aliceSeen.some((m) => m['kind'] === 'gap'), 'Alice has a missing-messages notice');

  // The session works again, both ways, each message shown once and no chain broken.
  for (let i = 0; i < 3; i++) {
    await ok(alice, 'send', bob.name, `after resync a ${i}`);
    await ok(bob, 'send', alice.name, `after resync b ${i}`);
  }
  const later = await syncUntil(alice, bob, (ea, eb) => byType(ea, 'message').length >= 3 && byType(eb, 'message').length >= 3, 6);
  for (const [events, who] of [[later.a, 'Alice'], [later.b, 'Bob']] as const) {
    assert.deepEqual(byType(events, 'problem'), [], `${who} had problems after the resync: ${JSON.stringify(events)}`);
    assert.deepEqual(byType(events, 'resync'), [], `${who} reset again: ${JSON.stringify(events)}`);
  }
  const bobAfter = await ok(bob, 'messages', alice.name, '--limit', '1000');
  const aliceAfter = await ok(alice, 'messages', bob.name, '--limit', '1000');
  assert.deepEqual(texts(bobAfter, 'in').filter((t) => t.startsWith('after resync')), ['after resync a 0', 'after resync a 1', 'after resync a 2']);
  assert.deepEqual(texts(aliceAfter, 'in').filter((t) => t.startsWith('after resync')), ['after resync b 0', 'after resync b 1', 'after resync b 2']);
  assert.ok(!bobAfter.some((m) => String(m['text']).includes('broke the conversation chain')), 'no broken chain after the resync');
  // Alice's new messages reach Bob under new numbers, so he delivers them (receipts come back).
  const aliceOut = aliceAfter.filter((m) => m['direction'] === 'out' && String(m['text']).startsWith('after resync'));
  assert.deepEqual(aliceOut.map((m) => m['status']), ['delivered', 'delivered', 'delivered']);
});
