// SPDX-License-Identifier: AGPL-3.0-or-later
// The `murmure` command as a person uses it, in --json mode, with one home per person in a temp
// folder and real relay processes: two homes connect through a one-time link and talk both ways
// (delivery status queued → sent → delivered, equal safety numbers, verified mark); a used link is
// refused; a home holds several profiles with their own contacts; a long-term address serves two
// people as two contacts with two conversations and keeps working for a third whose profile is on
// another relay; who connects incognito shows a random name, never the real one; a deleted
// contact's queue goes from the relay and its later messages are not shown, and deleting the
// address leaves the contacts made through it working; a passphrase change keeps every message;
// and no file of a home or a relay, nor a relay's log, holds a message text or a profile name.
// The tests run in order and build on each other (the homes carry over).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { STORE_FILE } from '@murmure/relay';
import Database from '@signalapp/sqlcipher';

import { byType, type Json } from './cli-homes.js';
import { cleanup, filesUnder, runMurmure, startRelay, stopRelay, tempDir, type CliRun, type RelayProcess } from './harness.js';

/** A person: a home folder, its passphrase and everything the command printed for it. */
type Home = { dir: string; pass: string; readonly outputs: string[] };

const tag = randomBytes(4).toString('hex');
/** Profile names long and unique enough that finding one in a file is no accident. */
const NAMES = {
  alice: `Alice Liddell ${tag}`,
  aliceWork: `Alice at Work ${tag}`,
  bob: `Bob Sponge ${tag}`,
  carol: `Carol Danvers ${tag}`,
  dave: `Dave Bowman ${tag}`,
  erin: `Erin Brockovich ${tag}`,
} as const;
/** Every message text sent in this file, for the privacy check at the end. */
const texts: string[] = [];
function text(what: string): string {
  const t = `${what} (${tag})`;
  texts.push(t);
  return t;
}

let relayA: RelayProcess;
let relayB: RelayProcess;
let root: string;
const homes: Record<'alice' | 'bob' | 'carol' | 'dave' | 'erin', Home> = {} as never;

before(async () => {
  relayA = await startRelay();
  relayB = await startRelay();
  root = tempDir('murmure-cli-');
  for (const n of ['alice', 'bob', 'carol', 'dave', 'erin'] as const) homes[n] = { dir: join(root, n), pass: `passphrase of ${n} ${tag}`, outputs: [] };
});

after(async () => {
  await stopRelay(relayA);
  await stopRelay(relayB);
  cleanup(relayA.dataDir);
  cleanup(relayB.dataDir);
  cleanup(root);
});

/** Runs `murmure --home DIR --json ARGS...` for a person. */
async function cli(h: Home, ...args: string[]): Promise<CliRun> {
  const r = await runMurmure(['--home', h.dir, '--json', ...args], { passphrase: h.pass });
  h.outputs.push(r.stdout, r.stderr);
  return r;
}

/** Like `cli`, and fails unless the command succeeded; resolves with its JSON lines. */
async function ok(h: Home, ...args: string[]): Promise<Json[]> {
  const r = await cli(h, ...args);
  assert.equal(r.code, 0, `murmure ${args.join(' ')} failed: ${r.stdout}${r.stderr}`);
  assert.equal(r.stderr, '', `murmure ${args.join(' ')} wrote to stderr`);
  return r.json;
}

/** The one JSON object a command printed. */
async function one(h: Home, ...args: string[]): Promise<Json> {
  const out = await ok(h, ...args);
  assert.equal(out.length, 1, `murmure ${args.join(' ')} printed ${JSON.stringify(out)}`);
  return out[0]!;
}

/** Syncs each person in turn; resolves with the events each printed. */
async function syncAll(...people: Home[]): Promise<Json[][]> {
  const out: Json[][] = [];
  for (const h of people) out.push(await ok(h, 'sync'));
  return out;
}

/** How many queues a relay's database holds (read beside the running relay). */
function queueCount(r: RelayProcess): number {
  const db = new Database(join(r.dataDir, STORE_FILE));
  try {
    db.pragma('query_only = ON');
    return db.prepare('SELECT count(*) FROM queues', { pluck: true }).get() as number;
  } finally {
    db.close();
  }
}

function contact(list: Json[], name: string): Json {
  const c = list.filter((x) => x['name'] === name);
  assert.equal(c.length, 1, `one contact named '${name}' in ${JSON.stringify(list)}`);
  return c[0]!;
}

let aliceLink = '';
let aliceBobId = '';
let addressLink = '';
let addressId = '';

test('two homes on one relay connect through a one-time link, talk both ways, see delivery and equal safety numbers', async () => {
  const { alice, bob } = homes;
  const profile = await one(alice, 'init', '--name', NAMES.alice, '--relay', relayA.address);
  assert.deepEqual({ type: profile['type'], name: profile['name'], relay: profile['relay'] }, { type: 'profile', name: NAMES.alice, relay: relayA.address });
  await one(bob, 'init', '--name', NAMES.bob, '--relay', relayA.address);

  const inv = await one(alice, 'invite');
  assert.equal(inv['type'], 'invitation');
  aliceLink = String(inv['link']);
  assert.match(aliceLink, /^murmure:\/\/[^@]+@127\.0\.0\.1:\d+\/i#/);
  const joined = await one(bob, 'connect', aliceLink);
  assert.equal(joined['type'], 'contact');
  assert.equal(joined['status'], 'pending');

  // Bob's sync sends his confirmation, Alice's accepts it and replies, Bob's reads the reply.
  const [, aliceSync, bobSync] = await syncAll(bob, alice, bob);
  assert.deepEqual(byType(aliceSync!, 'connected').map((e) => e['contact']), [NAMES.bob]);
  assert.deepEqual(byType(bobSync!, 'connected').map((e) => e['contact']), [NAMES.alice]);
  // Global options may also follow the command.
  const late = await runMurmure(['contacts', '--json', '--home', alice.dir], { passphrase: alice.pass });
  alice.outputs.push(late.stdout, late.stderr);
  const aliceContacts = late.json;
  assert.deepEqual(aliceContacts.map((c) => [c['name'], c['status'], c['verified']]), [[NAMES.bob, 'connected', false]]);
  const bobContacts = await ok(bob, 'contacts');
  assert.deepEqual(bobContacts.map((c) => [c['name'], c['status']]), [[NAMES.alice, 'connected']]);
  aliceBobId = String(aliceContacts[0]!['id']);

  const hiBob = text('Hello Bob, this is Alice');
  const hiAlice = text('Hi Alice! Bob here');
  const queued = await one(alice, 'send', NAMES.bob, hiBob);
  assert.equal(queued['type'], 'message');
  assert.equal(queued['status'], 'queued');
  assert.equal(queued['direction'], 'out');
  const msgId = queued['id'];
  // Bob addresses Alice by a prefix of her contact id this time.
  const bobAliceId = String(bobContacts[0]!['id']);
  assert.equal((await one(bob, 'send', bobAliceId.slice(0, 6), hiAlice))['status'], 'queued');

  const status = async () => (await ok(alice, 'messages', NAMES.bob)).find((m) => m['id'] === msgId)?.['status'];
  assert.equal(await status(), 'queued');
  const [sent] = await syncAll(alice);
  assert.deepEqual(byType(sent!, 'sent').map((e) => e['id']), [msgId]);
  assert.equal(await status(), 'sent');

  // Bob receives, sends his message and a receipt; Alice receives both.
  const [bobGot, aliceGot] = await syncAll(bob, alice);
  const got = byType(bobGot!, 'message');
  assert.equal(got.length, 1, JSON.stringify(bobGot));
  assert.equal(got[0]!['text'], hiBob);
  assert.equal(got[0]!['contact'], NAMES.alice);
  assert.equal(got[0]!['direction'], 'in');
  assert.equal(typeof got[0]!['id'], 'number');
  assert.equal(typeof got[0]!['sentAt'], 'number');
  assert.deepEqual(byType(aliceGot!, 'message').map((m) => [m['text'], m['contact']]), [[hiAlice, NAMES.bob]]);
  assert.deepEqual(byType(aliceGot!, 'delivered').flatMap((e) => e['ids'] as unknown[]), [msgId]);

  const aliceView = await ok(alice, 'messages', NAMES.bob);
  assert.deepEqual(
    aliceView.map((m) => [m['text'], m['direction'], m['status']]),
    [
      [hiBob, 'out', 'delivered'],
      [hiAlice, 'in', 'received'],
    ],
  );
  const bobView = await ok(bob, 'messages', NAMES.alice, '--limit', '10');
  assert.deepEqual(bobView.map((m) => [m['text'], m['direction']]).sort(), [[hiAlice, 'out'], [hiBob, 'in']].sort());

  const bobSn = await one(bob, 'verify', NAMES.alice);
  assert.match(String(bobSn['digits']), /^\d{60}$/);
  assert.equal(bobSn['verified'], false);
  const aliceSn = await one(alice, 'verify', NAMES.bob, '--mark');
  assert.equal(aliceSn['digits'], bobSn['digits'], 'both sides see the same safety number');
  assert.equal(aliceSn['verified'], true);
  assert.equal(contact(await ok(alice, 'contacts'), NAMES.bob)['verified'], true);
});

test('a one-time link that was used is refused to a third home with LINK_USED', async () => {
  const { carol } = homes;
  await one(carol, 'init', '--name', NAMES.carol, '--relay', relayA.address);
  const r = await cli(carol, 'connect', aliceLink);
  assert.equal(r.code, 1);
  assert.equal((r.json[0]?.['error'] as Json | undefined)?.['code'], 'LINK_USED', r.stdout);
});

test('a home holds several profiles, each with its own contacts', async () => {
  const { alice } = homes;
  const work = await one(alice, 'init', '--name', NAMES.aliceWork, '--relay', relayA.address);
  assert.equal(work['name'], NAMES.aliceWork);
  const address = await one(alice, 'invite', '--address', '--profile', NAMES.aliceWork);
  assert.equal(address['address'], true);
  addressLink = String(address['link']);
  assert.match(addressLink, /\/a#/);
  const workContacts = await ok(alice, 'contacts', '--profile', NAMES.aliceWork);
  assert.deepEqual(workContacts.map((c) => c['status']), ['address'], 'the work profile has only its address');
  addressId = String(workContacts[0]!['id']);
  const mainContacts = await ok(alice, '--profile', NAMES.alice, 'contacts');
  assert.deepEqual(mainContacts.map((c) => c['name']), [NAMES.bob], "Bob is a contact of Alice's first profile only");
});

test('a long-term address used by Bob and Carol gives Alice two contacts with a conversation each', async () => {
  const { alice, bob, carol } = homes;
  const bobJoin = await one(bob, 'connect', addressLink);
  const carolJoin = await one(carol, 'connect', addressLink);
  // Each queues a message at once, to be sent when the handshake is over; contacts by id.
  const fromBob = text('Bob writes to Alice at work');
  const fromCarol = text('Carol writes to Alice at work');
  await one(bob, 'send', String(bobJoin['id']), fromBob);
  await one(carol, 'send', String(carolJoin['id']), fromCarol);

  const [, , aliceAccepts] = await syncAll(bob, carol, alice);
  assert.deepEqual(byType(aliceAccepts!, 'connected').map((e) => e['contact']).sort(), [NAMES.bob, NAMES.carol].sort());
  const workContacts = await ok(alice, 'contacts', '--profile', NAMES.aliceWork);
  assert.equal(workContacts.length, 3, JSON.stringify(workContacts));
  assert.equal(workContacts.filter((c) => c['status'] === 'address').length, 1, 'the address stays');
  const bobAtWork = contact(workContacts, NAMES.bob);
  const carolAtWork = contact(workContacts, NAMES.carol);
  assert.notEqual(bobAtWork['id'], carolAtWork['id']);
  assert.equal(bobAtWork['status'], 'connected');
  assert.equal(carolAtWork['status'], 'connected');
  assert.notEqual(bobAtWork['id'], aliceBobId, "Bob at work is not the contact of Alice's first profile");

  const toBob = text('Alice at work answers Bob');
  const toCarol = text('Alice at work answers Carol');
  await one(alice, 'send', NAMES.bob, toBob, '--profile', NAMES.aliceWork);
  await one(alice, 'send', NAMES.carol, toCarol, '--profile', NAMES.aliceWork);
  const [bobUp, carolUp, aliceGot, bobGot, carolGot] = await syncAll(bob, carol, alice, bob, carol);
  assert.deepEqual(byType(bobUp!, 'connected').map((e) => e['contact']), [NAMES.aliceWork]);
  assert.deepEqual(byType(carolUp!, 'connected').map((e) => e['contact']), [NAMES.aliceWork]);
  assert.deepEqual(byType(aliceGot!, 'message').map((m) => [m['contact'], m['text']]).sort(), [[NAMES.bob, fromBob], [NAMES.carol, fromCarol]].sort());
  assert.deepEqual(byType(bobGot!, 'message').map((m) => [m['contact'], m['text']]), [[NAMES.aliceWork, toBob]]);
  assert.deepEqual(byType(carolGot!, 'message').map((m) => [m['contact'], m['text']]), [[NAMES.aliceWork, toCarol]]);

  const withBob = await ok(alice, 'messages', NAMES.bob, '--profile', NAMES.aliceWork);
  const withCarol = await ok(alice, 'messages', String(carolAtWork['id']), '--profile', NAMES.aliceWork);
  assert.deepEqual(withBob.map((m) => [m['direction'], m['text']]).sort(), [['in', fromBob], ['out', toBob]].sort());
  assert.deepEqual(withCarol.map((m) => [m['direction'], m['text']]).sort(), [['in', fromCarol], ['out', toCarol]].sort());
  // Carol's failed connect (the used link) left nothing.
  assert.deepEqual((await ok(carol, 'contacts')).map((c) => [c['name'], c['status']]), [[NAMES.aliceWork, 'connected']]);
});

test('the address keeps working: Dave, whose profile is on another relay, connects through it and they talk', async () => {
  const { alice, dave } = homes;
  const profile = await one(dave, 'init', '--name', NAMES.dave, '--relay', relayB.address);
  assert.equal(profile['relay'], relayB.address);
  const joined = await one(dave, 'connect', addressLink);
  const fromDave = text('Dave on relay B says hello');
  const toDave = text('Alice on relay A answers Dave');
  await one(dave, 'send', String(joined['id']), fromDave);
  const [, aliceAccepts] = await syncAll(dave, alice);
  assert.deepEqual(byType(aliceAccepts!, 'connected').map((e) => e['contact']), [NAMES.dave]);
  await one(alice, 'send', NAMES.dave, toDave, '--profile', NAMES.aliceWork);
  const [daveUp, aliceGot, daveGot] = await syncAll(dave, alice, dave);
  assert.deepEqual(byType(daveUp!, 'connected').map((e) => e['contact']), [NAMES.aliceWork]);
  assert.deepEqual(byType(aliceGot!, 'message').map((m) => [m['contact'], m['text']]), [[NAMES.dave, fromDave]]);
  assert.deepEqual(byType(daveGot!, 'message').map((m) => [m['contact'], m['text']]), [[NAMES.aliceWork, toDave]]);
  const work = await ok(alice, 'contacts', '--profile', NAMES.aliceWork);
  assert.deepEqual(work.map((c) => c['name']).filter((n) => !String(n).startsWith('contact ')).sort(), [NAMES.bob, NAMES.carol, NAMES.dave].sort());
});

test('incognito: the contact shows a random name to Alice, never its profile name', async () => {
  const { alice, erin } = homes;
  await one(erin, 'init', '--name', NAMES.erin, '--relay', relayA.address);
  const aliceOutputsBefore = alice.outputs.length;
  const inv = await one(alice, 'invite');
  const joined = await one(erin, 'connect', String(inv['link']), '--incognito');
  const shownAs = joined['incognito'];
  assert.equal(typeof shownAs, 'string');
  assert.match(String(shownAs), /^[A-Z][a-z]+ [A-Z][a-z]+$/);
  const secret = text('a message from the incognito contact');
  await one(erin, 'send', String(joined['id']), secret);
  const [, aliceAccepts, , aliceGot] = await syncAll(erin, alice, erin, alice);
  assert.deepEqual(byType(aliceAccepts!, 'connected').map((e) => e['contact']), [shownAs]);
  assert.deepEqual(byType(aliceGot!, 'message').map((m) => [m['contact'], m['text']]), [[shownAs, secret]]);
  const c = contact(await ok(alice, 'contacts'), String(shownAs));
  assert.equal(c['status'], 'connected');
  assert.equal(c['incognito'], null, 'Alice herself is not incognito');
  const erinSide = await ok(erin, 'contacts');
  assert.deepEqual(erinSide.map((x) => [x['name'], x['incognito']]), [[NAMES.alice, shownAs]]);
  const aliceSaw = alice.outputs.slice(aliceOutputsBefore).join('');
  assert.ok(aliceSaw.includes(String(shownAs)));
  assert.equal(alice.outputs.join('').includes(NAMES.erin), false, "Erin's profile name never reached Alice");
  assert.equal(alice.outputs.join('').includes('Erin'), false);
});

test('delete-contact: the contact and its queue go, what it sends later is not shown; a deleted address keeps its contacts', async () => {
  const { alice, bob, carol } = homes;
  const queuesBefore = queueCount(relayA);
  assert.deepEqual(await one(alice, 'delete-contact', NAMES.bob), { type: 'deleted', contact: NAMES.bob });
  assert.equal(queueCount(relayA), queuesBefore - 1, "Alice's queue for Bob is gone from the relay");
  assert.deepEqual((await ok(alice, 'contacts')).map((c) => c['name']).filter((n) => n === NAMES.bob), []);
  // The long-term address goes too; Carol, who came through it, stays a contact that works.
  await one(alice, 'delete-contact', addressId, '--profile', NAMES.aliceWork);
  assert.equal(queueCount(relayA), queuesBefore - 2, "the address's queue is gone from the relay");
  const late = text('Bob writes after being deleted');
  const fromCarol = text('Carol writes after the address was deleted');
  const toCarol = text('Alice answers Carol without the address');
  await one(bob, 'send', NAMES.alice, late);
  await one(carol, 'send', NAMES.aliceWork, fromCarol);
  await one(alice, 'send', NAMES.carol, toCarol, '--profile', NAMES.aliceWork);
  // The relay refuses Bob's message (the queue is gone) and his agent keeps retrying it, so his
  // sync is bounded with --wait.
  await ok(bob, 'sync', '--wait', '0.5');
  const [, aliceSync] = await syncAll(carol, alice);
  assert.deepEqual(byType(aliceSync!, 'message').map((m) => [m['contact'], m['text']]), [[NAMES.carol, fromCarol]]);
  assert.equal(JSON.stringify(aliceSync).includes(aliceBobId), false, 'nothing about the deleted contact');
  assert.equal(JSON.stringify(aliceSync).includes(late), false, 'the late message is not shown');
  const gone = await cli(alice, 'messages', aliceBobId);
  assert.equal(gone.code, 1);
  assert.equal((gone.json[0]?.['error'] as Json | undefined)?.['code'], 'NO_CONTACT');
  const bobSide = (await ok(bob, 'messages', NAMES.alice)).find((m) => m['text'] === late);
  assert.ok(bobSide !== undefined && bobSide['status'] !== 'sent' && bobSide['status'] !== 'delivered', `the relay did not take it: ${JSON.stringify(bobSide)}`);
});

test('passphrase change: the old passphrase is refused, the new one opens every message', async () => {
  const { alice } = homes;
  const before = [await ok(alice, 'messages', NAMES.carol, '--profile', NAMES.aliceWork), await ok(alice, 'messages', NAMES.dave, '--profile', NAMES.aliceWork)];
  assert.equal(before.flat().length, 6);
  const old = alice.pass;
  const next = `a new passphrase ${tag}`;
  const r = await runMurmure(['passphrase', 'change', '--home', alice.dir, '--json'], { passphrase: old, env: { MURMURE_NEW_PASSPHRASE: next } });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.deepEqual(r.json, [{ type: 'passphrase-changed' }]);
  const refused = await cli(alice, 'contacts');
  assert.equal(refused.code, 1);
  assert.equal((refused.json[0]?.['error'] as Json | undefined)?.['code'], 'WRONG_PASSPHRASE');
  alice.pass = next;
  const afterChange = [await ok(alice, 'messages', NAMES.carol, '--profile', NAMES.aliceWork), await ok(alice, 'messages', NAMES.dave, '--profile', NAMES.aliceWork)];
  assert.deepEqual(afterChange, before);
});

test('privacy: no file of any home or relay, nor a relay log, holds a message text or a profile name', async () => {
  assert.ok(texts.length >= 10);
  // Stopped relays have moved their write-ahead logs into the database: both states are searched.
  const search = (): string[] => {
    const found: string[] = [];
    const haystacks = new Map<string, Buffer>();
    for (const dir of [root, relayA.dataDir, relayB.dataDir]) for (const f of filesUnder(dir)) haystacks.set(f, readFileSync(f));
    haystacks.set('relay A log', Buffer.from(relayA.log.join('')));
    haystacks.set('relay B log', Buffer.from(relayB.log.join('')));
    for (const [file, bytes] of haystacks) {
      for (const needle of [...texts, ...Object.values(NAMES)]) {
        for (const form of [Buffer.from(needle), Buffer.from(needle, 'utf16le')]) if (bytes.includes(form)) found.push(`'${needle}' in ${file}`);
      }
    }
    assert.ok(haystacks.size >= 12, `searched ${[...haystacks.keys()].join(', ')}`);
    return found;
  };
  assert.deepEqual(search(), []);
  await stopRelay(relayA);
  await stopRelay(relayB);
  assert.deepEqual(search(), []);
});
