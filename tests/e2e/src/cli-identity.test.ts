// SPDX-License-Identifier: AGPL-3.0-or-later
// A contact's identity key changes, as the user sees it through the `murmure` command (--json,
// real relay process, one home per person). Bob's side of the connection loses its libsignal
// state and gets a new identity key pair under the same libsignal name (what whoever holds the
// per-queue box key can also do, docs/protocol/agent.md "Session reset"). Alice's next message
// cannot be decrypted by Bob, whose agent asks for a session reset carrying a bundle of the new
// identity; Alice's agent accepts it. Alice must be told loudly: `murmure sync` prints
// {"type":"identity-changed"}, `murmure messages` shows the notice between `!!!` marks, the
// safety number is new, and a contact she had marked verified is verified no more. The session
// then works both ways again.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';

import { byType, connectedHomes, ok, plain, syncUntil, withDatabase, type Home } from './cli-homes.js';
import { cleanup, startRelay, stopRelay, tempDir, type RelayProcess } from './harness.js';

// The libsignal wrapper is no build dependency of these tests: it is loaded when they run.
const CRYPTO_PACKAGE = '@murmure/crypto';
type LocalIdentity = { name: string; identity: unknown; registrationId: number };
const crypto = (await import(CRYPTO_PACKAGE)) as {
  generateIdentity(): LocalIdentity;
  encodeLocalIdentity(l: LocalIdentity): Uint8Array;
  decodeLocalIdentity(bytes: Uint8Array): LocalIdentity;
};

const tag = randomBytes(4).toString('hex');
let relay: RelayProcess;
let root: string;

before(async () => {
  relay = await startRelay();
  root = tempDir('murmure-identity-');
});

after(async () => {
  await stopRelay(relay);
  cleanup(relay.dataDir);
  cleanup(root);
});

/** Two people connected through a one-time link, Alice with one message from Bob. */
async function pair(prefix: string): Promise<{ alice: Home; bob: Home }> {
  const { alice, bob } = await connectedHomes(root, relay.address, tag, prefix);
  await ok(bob, 'send', alice.name, 'hello alice');
  await ok(bob, 'sync');
  assert.deepEqual(byType(await ok(alice, 'sync'), 'message').map((m) => m['text']), ['hello alice']);
  return { alice, bob };
}

test("a contact's new identity key: sync warns, the conversation shows it loudly, verification is lost", async () => {
  const { alice, bob } = await pair('id');

  // Alice checks the safety number and marks Bob verified.
  const [before] = await ok(alice, 'verify', bob.name, '--mark');
  assert.equal(before?.['verified'], true);
  const [marked] = await ok(alice, 'contacts');
  assert.equal(marked?.['verified'], true, 'Bob is verified after --mark');

  // Bob's side of the connection loses its libsignal state (sessions, prekeys, the pinned key of
  // Alice) and gets a new identity key pair under the same libsignal name.
  withDatabase(bob, (db) => {
    const rows = db.db.prepare("SELECT id, state_owner, local_identity FROM agent_connections WHERE status = 'connected'").all() as { id: string; state_owner: string; local_identity: Uint8Array }[];
    assert.equal(rows.length, 1, 'Bob has one connection');
    const row = rows[0]!;
    const old = crypto.decodeLocalIdentity(row.local_identity);
    const fresh = crypto.generateIdentity();
    const replaced = crypto.encodeLocalIdentity({ ...fresh, name: old.name });
    db.transaction(() => {
      db.db.prepare('UPDATE agent_connections SET local_identity = ? WHERE id = ?').run([replaced, row.id] as never);
      db.db.prepare('DELETE FROM agent_signal_state WHERE owner = ?').run([row.state_owner] as never);
    });
  });

  // Alice writes; Bob cannot decrypt it and asks for a reset with his new identity; Alice's agent
  // accepts it and answers; Bob reads the answer.
  await ok(alice, 'send', bob.name, 'lost on the old session');
  const { a, b } = await syncUntil(alice, bob, (ea, eb) => byType(ea, 'identity-changed').length > 0 && byType(eb, 'resync').length > 0);
  assert.ok(
    byType(b, 'problem').some((p) => String(p['message']).includes('the secure session is being reset')),
    `Bob says his session is being reset: ${JSON.stringify(b)}`,
  );

  // `murmure sync --json` tells Alice, once, who changed.
  const changed = byType(a, 'identity-changed');
  assert.equal(changed.length, 1, JSON.stringify(a));
  assert.equal(changed[0]!['contact'], bob.name);
  assert.equal(typeof changed[0]!['contactId'], 'string');
  assert.equal(byType(a, 'resync').length, 1, JSON.stringify(a));
  // Alice's identity key did not change: Bob is told of no identity change.
  assert.deepEqual(byType(b, 'identity-changed'), [], JSON.stringify(b));

  // The conversation shows it: one identity notice in `messages`, between `!!!` marks.
  const listed = await ok(alice, 'messages', bob.name, '--limit', '1000');
  const notices = listed.filter((m) => m['kind'] === 'identity');
  assert.equal(notices.length, 1, JSON.stringify(listed));
  assert.match(String(notices[0]!['text']), /^SAFETY NUMBER CHANGED/);
  assert.equal(notices[0]!['direction'], 'in');
  const lines = (await plain(alice, 'messages', bob.name)).split('\n');
  const loud = lines.filter((l) => l.includes('SAFETY NUMBER CHANGED'));
  assert.equal(loud.length, 1, lines.join('\n'));
  assert.match(loud[0]!, /!!! .*SAFETY NUMBER CHANGED.* !!!$/);

  // Bob is verified no more, and the safety number is new (and the same on both sides again).
  const [contact] = await ok(alice, 'contacts');
  assert.equal(contact?.['name'], bob.name);
  assert.equal(contact?.['verified'], false, 'Bob is no longer verified');
  const [afterNumber] = await ok(alice, 'verify', bob.name);
  assert.equal(afterNumber?.['verified'], false);
  assert.notEqual(afterNumber?.['digits'], before?.['digits'], 'the safety number changed');
  // The mark itself was cleared, not merely left behind by the new number.
  const mark = withDatabase(alice, (db) => db.db.prepare('SELECT verified_key FROM chat_contacts WHERE id = ?', { pluck: true }).get([changed[0]!['contactId']] as never));
  assert.equal(mark, null, 'the stored verification is cleared');
  const [bobAfter] = await ok(bob, 'verify', alice.name);
  assert.equal(bobAfter?.['digits'], afterNumber?.['digits'], 'both see the new safety number');

  // The new session works both ways, and nothing more is reported as changed.
  await ok(alice, 'send', bob.name, 'after the change a');
  await ok(bob, 'send', alice.name, 'after the change b');
  const later = await syncUntil(alice, bob, (ea, eb) => byType(ea, 'message').length > 0 && byType(eb, 'message').length > 0);
  assert.deepEqual(byType(later.a, 'message').map((m) => m['text']), ['after the change b'], JSON.stringify(later.a));
  assert.deepEqual(byType(later.b, 'message').map((m) => m['text']), ['after the change a'], JSON.stringify(later.b));
  for (const events of [later.a, later.b]) {
    assert.deepEqual(byType(events, 'identity-changed'), [], JSON.stringify(events));
    assert.deepEqual(byType(events, 'problem'), [], JSON.stringify(events));
  }
});
