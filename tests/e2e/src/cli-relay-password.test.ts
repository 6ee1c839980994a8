// SPDX-License-Identifier: AGPL-3.0-or-later
// A profile on a relay whose queue creation needs a password, through the real `murmure` command:
// Alice's invitation link and address carry no password, Bob on an open relay connects and they
// talk, a contact who comes through Alice's long-term address gets a queue made with the password
// Alice's home kept, and a switch onto the same relay needs no password given again. Without the
// password, or with a wrong one, making a queue fails with RELAY_PASSWORD and a line that says
// what to do, and leaves nothing behind. When the operator changes the password, a contact
// coming through Alice's address waits (her sync says why) until she gives the new address with
// set-relay. No file of Bob's or Carol's home holds the password.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { formatRelayAddress, parseRelayAddress } from '@murmure/protocol';

import { byType, ok, withDatabase, type Home, type Json } from './cli-homes.js';
import { cleanup, runMurmure, startRelay, stopRelay, tempDir, type RelayProcess } from './harness.js';

const tag = randomBytes(4).toString('hex');
const PASSWORD = `family-${tag}.pw`;

let guarded: RelayProcess;
let open: RelayProcess;
/** The guarded relay's address with its password, and its name (without). */
let withPassword = '';
let bare = '';
let root = '';
const home = (who: string): Home => ({ dir: join(root, who), pass: `passphrase of ${who} ${tag}`, name: `${who} ${tag}` });

before(async () => {
  guarded = await startRelay({ args: ['--password', PASSWORD] });
  open = await startRelay();
  withPassword = guarded.address;
  bare = formatRelayAddress(parseRelayAddress(withPassword));
  assert.equal(parseRelayAddress(withPassword).password, PASSWORD);
  root = tempDir('murmure-cli-pw-');
});

after(async () => {
  await stopRelay(guarded);
  await stopRelay(open);
  cleanup(guarded.dataDir);
  cleanup(open.dataDir);
  cleanup(root);
});

/** Syncs each home in turn until `done` holds (six rounds at most); resolves with every event each printed. */
async function syncUntil(homes: Home[], done: (events: Json[][]) => boolean): Promise<Json[][]> {
  const events: Json[][] = homes.map(() => []);
  for (let round = 0; round < 6 && !done(events); round++) {
    for (const [i, h] of homes.entries()) events[i]!.push(...(await ok(h, 'sync')));
  }
  return events;
}

/** Every text and blob value in every table of a home's database, as text. */
function everyValue(h: Home): string[] {
  return withDatabase(h, (ldb) => {
    const tables = ldb.db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'", { pluck: true }).all() as string[];
    return tables.flatMap((t) =>
      (ldb.db.prepare(`SELECT * FROM "${t}"`).all() as Record<string, unknown>[]).flatMap((row) =>
        Object.values(row).map((v) => (v instanceof Uint8Array ? Buffer.from(v).toString('latin1') : String(v))),
      ),
    );
  });
}

const alice = (): Home => home('alice');
const bob = (): Home => home('bob');

test('Alice on a relay with a password invites Bob on an open relay: the link has no password, they connect and talk', async () => {
  const [profile] = await ok(alice(), 'init', '--name', alice().name, '--relay', withPassword);
  assert.equal(profile!['relay'], bare, 'the profile shows the relay without its password');
  await ok(bob(), 'init', '--name', bob().name, '--relay', open.address);
  const [inv] = await ok(alice(), 'invite');
  const link = String(inv!['link']);
  assert.ok(link.startsWith(`${bare}/i#`), `the link names the relay without its password: ${link}`);
  assert.ok(!link.includes(PASSWORD));
  await ok(bob(), 'connect', link);
  const [a, b] = await syncUntil([bob(), alice()], ([eb, ea]) => byType(eb!, 'connected').length > 0 && byType(ea!, 'connected').length > 0);
  assert.deepEqual(byType(a!, 'connected').map((e) => e['contact']), [alice().name]);
  assert.deepEqual(byType(b!, 'connected').map((e) => e['contact']), [bob().name]);

  await ok(alice(), 'send', bob().name, `hello from the family relay ${tag}`);
  await ok(bob(), 'send', alice().name, `hello from the open relay ${tag}`);
  const [ga, gb] = await syncUntil([alice(), bob()], ([ea, eb]) => byType(ea!, 'message').length > 0 && byType(eb!, 'message').length > 0);
  assert.deepEqual(byType(ga!, 'message').map((m) => m['text']), [`hello from the open relay ${tag}`]);
  assert.deepEqual(byType(gb!, 'message').map((m) => m['text']), [`hello from the family relay ${tag}`]);

  // Alice's rows name the relay without the password; the password is kept once, by name.
  withDatabase(alice(), (ldb) => {
    assert.deepEqual(ldb.db.prepare('SELECT DISTINCT rcv_relay FROM agent_connections', { pluck: true }).all(), [bare]);
    assert.deepEqual(ldb.db.prepare('SELECT relay, password FROM agent_relay_passwords').all(), [{ relay: bare, password: PASSWORD }]);
  });
  assert.ok(!everyValue(bob()).some((v) => v.includes(PASSWORD)), "no value in Bob's home holds the password");
});

test("a contact through Alice's long-term address gets a queue made with the kept password; a switch needs it not given again", async () => {
  const carol = home('carol');
  await ok(carol, 'init', '--name', carol.name, '--relay', open.address);
  const [addr] = await ok(alice(), 'invite', '--address');
  const addressLink = String(addr!['link']);
  assert.ok(!addressLink.includes(PASSWORD));
  await ok(carol, 'connect', addressLink);
  // Alice makes Carol's queue when Carol's request arrives, from the relay's name in her rows.
  const [, ea] = await syncUntil([carol, alice(), carol], ([ec, ea2]) => byType(ea2!, 'connected').length > 0 && byType(ec!, 'connected').length > 0);
  assert.deepEqual(byType(ea!, 'connected').map((e) => e['contact']), [carol.name]);

  const [moved] = await ok(alice(), 'switch', bob().name);
  assert.equal(moved!['relay'], bare, 'the switch reports the relay by name');
  await ok(alice(), 'send', bob().name, `after the switch ${tag}`);
  const [, gb] = await syncUntil([alice(), bob()], ([, eb]) => byType(eb!, 'message').length > 0);
  assert.deepEqual(byType(gb!, 'message').map((m) => m['text']), [`after the switch ${tag}`]);
  assert.ok(!everyValue(carol).some((v) => v.includes(PASSWORD)), "no value in Carol's home holds the password");
});

test('without the password, or with a wrong one, making a queue fails with RELAY_PASSWORD and leaves nothing', async () => {
  for (const [who, relay, why] of [
    ['dave', bare, /the relay makes queues only with its password: use its address with the password/],
    ['erin', bare.replace('@', ':not-the-password@'), /the relay refused the password: ask its operator for its current address/],
  ] as const) {
    const h = home(who);
    await ok(h, 'init', '--name', h.name, '--relay', relay);
    for (const args of [['invite'], ['invite', '--address']]) {
      const r = await runMurmure(['--home', h.dir, '--json', ...args], { passphrase: h.pass });
      assert.equal(r.code, 1, `${who} ${args.join(' ')}: ${r.stdout}${r.stderr}`);
      const err = r.json[0]?.['error'] as { code: string; message: string };
      assert.equal(err.code, 'RELAY_PASSWORD');
      assert.match(err.message, why);
      const text = await runMurmure(['--home', h.dir, ...args], { passphrase: h.pass });
      assert.equal(text.code, 1);
      assert.match(text.stderr, why);
      assert.doesNotMatch(text.stderr, /\n\s+at /, 'no stack trace');
    }
    const [inv] = await ok(alice(), 'invite');
    const joined = await runMurmure(['--home', h.dir, '--json', 'connect', String(inv!['link'])], { passphrase: h.pass });
    assert.equal((joined.json[0]?.['error'] as { code: string }).code, 'RELAY_PASSWORD', `${who}: connect needs a queue too`);
    assert.deepEqual(await ok(h, 'contacts'), [], `${who}: no contact was left behind`);
    withDatabase(h, (ldb) => {
      assert.equal(ldb.db.prepare('SELECT count(*) FROM agent_connections', { pluck: true }).get(), 0, `${who}: no connection row`);
      assert.equal(ldb.db.prepare('SELECT count(*) FROM agent_outbox', { pluck: true }).get(), 0, `${who}: nothing queued`);
    });
    // Given the address with the password, the same profile makes its queues.
    const [set] = await ok(h, 'set-relay', withPassword);
    assert.equal(set!['relay'], bare);
    const [fixed] = await ok(h, 'invite');
    assert.ok(String(fixed!['link']).startsWith(`${bare}/i#`));
  }
});

test("the operator changes the password: a contact through Alice's address waits until she gives the new address with set-relay; old contacts keep talking", async () => {
  const frank = home('frank');
  await ok(frank, 'init', '--name', frank.name, '--relay', open.address);
  const [addr] = await ok(alice(), 'invite', '--address');
  const addressLink = String(addr!['link']);

  // The same relay (same key and port) with a new password.
  await stopRelay(guarded);
  const newPassword = `changed-${tag}`;
  guarded = await startRelay({ dataDir: guarded.dataDir, port: guarded.port, args: ['--password', newPassword] });
  const renewed = guarded.address;
  assert.equal(formatRelayAddress(parseRelayAddress(renewed)), bare, 'the same relay');

  const refused = await runMurmure(['--home', alice().dir, '--json', 'invite'], { passphrase: alice().pass });
  assert.equal(refused.code, 1);
  const err = refused.json[0]?.['error'] as { code: string; message: string };
  assert.equal(err.code, 'RELAY_PASSWORD');
  assert.match(err.message, /the relay refused the password: ask its operator for its current address; then give it with 'murmure set-relay ADDRESS'/);

  // Frank comes through Alice's address: his request waits, and Alice's sync says why.
  await ok(frank, 'connect', addressLink);
  await ok(frank, 'sync');
  const waiting = await ok(alice(), 'sync');
  const problems = byType(waiting, 'problem').map((p) => String(p['message']));
  assert.ok(problems.some((m) => /a contact who came through your address waits: the relay refused the password/.test(m)), JSON.stringify(waiting));
  assert.equal(byType(waiting, 'connected').length, 0);

  // Old contacts are not concerned: their queues exist, and sending needs no password.
  await ok(bob(), 'send', alice().name, `after the change ${tag}`);
  const [, gotOld] = await syncUntil([bob(), alice()], ([, ea]) => byType(ea!, 'message').length > 0);
  assert.deepEqual(byType(gotOld!, 'message').map((m) => m['text']), [`after the change ${tag}`]);

  await ok(alice(), 'set-relay', renewed);
  const [ea, ef] = await syncUntil([alice(), frank], ([ea2, ef2]) => byType(ea2!, 'connected').length > 0 && byType(ef2!, 'connected').length > 0);
  assert.deepEqual(byType(ea!, 'connected').map((e) => e['contact']), [frank.name]);
  assert.deepEqual(byType(ef!, 'connected').map((e) => e['contact']), [alice().name]);
  withDatabase(alice(), (ldb) => {
    assert.deepEqual(ldb.db.prepare('SELECT relay, password FROM agent_relay_passwords').all(), [{ relay: bare, password: newPassword }]);
  });
  const [inv] = await ok(alice(), 'invite');
  assert.ok(!String(inv!['link']).includes(newPassword));
});
