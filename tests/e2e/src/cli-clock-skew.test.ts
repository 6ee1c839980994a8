// SPDX-License-Identifier: AGPL-3.0-or-later
// Clock skew and jumps (THREATS F6): the clients and the relay run under libfaketime (Debian
// `faketime`, preloaded into node through LD_PRELOAD and FAKETIME; installed here if missing),
// each at its own offset, some sped up ten times (`x10`, which also speeds up the monotonic
// clock and so node's timers). Ordering is by sender sequence, never by wall clock; the relay's
// expiry reads its own clock only; nothing crashes.
//
// Two homes talk through the `murmure` command and a real relay process. The relay runs at
// +12 h and ten times fast, with a message TTL of one day (the least it takes). Alice starts at
// +1 day, Bob at -1 day; then their clocks jump, Alice to -1 day and Bob to +1 day, both ten times
// fast, so Alice's later messages carry earlier send times than her first ones; while Bob is away
// Alice's messages wait on the relay, which restarts (its expiry runs at start) and must keep them,
// although Alice's clock is 36 hours behind its own; then the clocks jump back once more. Every
// message arrives exactly once, in the order it was sent (R3/R4), no sequence gap or broken chain
// is shown, every message went out, and the relay expired nothing.
//
// Two more tests: receipts gathered for RECEIPT_DELAY_MS are not lost by a `sync` that settles
// meanwhile (ten times fast, the settle time shrinks to 70 ms), so every message ends
// 'delivered'; and a message composed at -1 day whose first attempt fails after a jump to
// +1 day is not given up at once (giving up counts failed attempts, not only wall-clock age).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';

import { byType, type Json } from './cli-homes.js';
import { cleanup, isRunning, metric, runMurmure, startRelay, stopRelay, tempDir, type RelayProcess } from './harness.js';

/** Where Debian's libfaketime lives, if installed (installing it if missing, as root). */
function libfaketime(): string | null {
  const find = (): string | null => {
    const r = spawnSync('dpkg', ['-L', 'libfaketime'], { encoding: 'utf8' });
    const path = r.status === 0 ? r.stdout.split('\n').find((l) => l.endsWith('/libfaketime.so.1')) : undefined;
    return path !== undefined && existsSync(path) ? path : null;
  };
  const found = find();
  if (found !== null || process.getuid?.() !== 0) return found;
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  spawnSync('apt-get', ['update', '-qq'], { stdio: 'ignore', env, timeout: 300_000 });
  spawnSync('apt-get', ['install', '-y', '-qq', 'faketime'], { stdio: 'ignore', env, timeout: 300_000 });
  return find();
}

const LIB = libfaketime();
/** Why the tests cannot run here, or null. */
const SKIP = LIB === null ? 'libfaketime is not installed and could not be installed (apt-get install faketime)' : null;

/** The environment that runs node at the fake time `spec` (e.g. '+1d', '-1d x10'). */
function clock(spec: string): NodeJS.ProcessEnv {
  return { LD_PRELOAD: LIB ?? '', FAKETIME: spec };
}

const RELAY_CLOCK = '+12h x10';
const RELAY_ARGS = ['--message-ttl-days', '1', '--metrics-port', '0'];

let root: string | null = null;
let relay: RelayProcess | null = null;
const dataDirs: string[] = [];

after(async () => {
  if (relay !== null) await stopRelay(relay);
  for (const d of dataDirs) cleanup(d);
  if (root !== null) cleanup(root);
});

/** What each run of the command printed, for a failure's message. */
const trace: string[] = [];
type Home = { name: string; dir: string; pass: string; clock: string };

/** Runs `murmure --home DIR --json ARGS...` at the home's current fake time; fails unless it succeeded. */
async function ok(h: Home, ...args: string[]): Promise<Json[]> {
  const r = await runMurmure(['--home', h.dir, '--json', ...args], { passphrase: h.pass, env: clock(h.clock) });
  trace.push(`${h.name} (${h.clock}) ${args[0]}: ${r.json.map((e) => JSON.stringify(e)).join(' ')}`);
  assert.equal(r.code, 0, `${h.name} (${h.clock}): murmure ${args.join(' ')} failed: ${r.stdout}${r.stderr}`);
  assert.equal(r.stderr, '', `${h.name} (${h.clock}): murmure ${args.join(' ')} wrote to stderr`);
  return r.json;
}

async function one(h: Home, ...args: string[]): Promise<Json> {
  const out = await ok(h, ...args);
  assert.equal(out.length, 1, `${h.name}: murmure ${args.join(' ')} printed ${JSON.stringify(out)}`);
  return out[0]!;
}

async function startSkewedRelay(dataDir?: string, port?: number): Promise<RelayProcess> {
  const r = await startRelay({ args: RELAY_ARGS, env: clock(RELAY_CLOCK), ...(dataDir === undefined ? {} : { dataDir }), ...(port === undefined ? {} : { port }) });
  if (dataDir === undefined) dataDirs.push(r.dataDir);
  return r;
}

let alice: Home;
let bob: Home;
/** The conversations as each side shows them at the end of the first test. */
let views: Record<'Alice' | 'Bob', Json[]> | null = null;

test('skewed and jumping clocks (±1 day, x10): every message once, in sender order; the relay keeps fresh messages', { skip: SKIP ?? false }, async () => {
  root = tempDir('murmure-f6-');
  relay = await startSkewedRelay();
  alice = { name: 'Alice', dir: join(root, 'alice'), pass: 'passphrase of Alice', clock: '+1d' };
  bob = { name: 'Bob', dir: join(root, 'bob'), pass: 'passphrase of Bob', clock: '-1d' };
  await Promise.all([one(alice, 'init', '--name', 'Alice', '--relay', relay.address), one(bob, 'init', '--name', 'Bob', '--relay', relay.address)]);
  const link = String((await one(alice, 'invite'))['link']);
  await one(bob, 'connect', link);
  await ok(bob, 'sync');
  assert.deepEqual(byType(await ok(alice, 'sync'), 'connected').map((e) => e['contact']), ['Bob']);
  assert.deepEqual(byType(await ok(bob, 'sync'), 'connected').map((e) => e['contact']), ['Alice']);

  const sent = { ab: [] as string[], ba: [] as string[] };
  const sentAt: Record<string, number> = {};
  const say = async (from: Home, to: Home, list: string[]): Promise<void> => {
    const text = `${from.name}→${to.name} #${list.length + 1} at ${from.clock}`;
    list.push(text);
    const m = await one(from, 'send', to.name, text);
    sentAt[text] = Number(m['sentAt']);
  };
  const both = async (n: number): Promise<void> => {
    await Promise.all([
      (async () => {
        for (let i = 0; i < n; i++) await say(alice, bob, sent.ab);
      })(),
      (async () => {
        for (let i = 0; i < n; i++) await say(bob, alice, sent.ba);
      })(),
    ]);
  };

  // Skewed by two days from each other, the relay between them.
  await both(2);
  await Promise.all([ok(alice, 'sync'), ok(bob, 'sync')]);
  await ok(alice, 'sync');

  // Both clocks jump by two days, in opposite directions, and run ten times fast.
  alice.clock = '-1d x10';
  bob.clock = '+1d x10';
  await both(2);
  await Promise.all([ok(alice, 'sync'), ok(bob, 'sync')]);
  const earlier = sent.ab[2]!;
  const later = sent.ab[1]!;
  assert.ok(sentAt[earlier]! < sentAt[later]! - 86_400_000, 'Alice #3 carries a send time over a day before her #2');

  // Bob is away: Alice's messages wait on the relay, which restarts, and so expires messages
  // older than a day by its own clock, 36 hours ahead of Alice's.
  await say(alice, bob, sent.ab);
  await say(alice, bob, sent.ab);
  await ok(alice, 'sync');
  // (Both may go in one relay message: what the outbox holds at once is sent as a batch.)
  assert.ok((await metric(relay, 'murmure_messages')) >= 1, 'messages wait on the relay');
  const { dataDir, port } = relay;
  assert.equal(await stopRelay(relay), 0);
  relay = await startSkewedRelay(dataDir, port);
  assert.equal(await metric(relay, 'murmure_messages_expired_total'), 0, 'the relay expired nothing at start');
  assert.ok((await metric(relay, 'murmure_messages')) >= 1, 'the waiting messages are still there');

  // The clocks jump back; Bob reads everything, replies; a last exchange.
  alice.clock = '+1d';
  bob.clock = '-1d x10';
  await both(2);
  await ok(bob, 'sync');
  await ok(alice, 'sync');
  // At ten times the speed Bob's sync waits only 70 ms of real time for what is pushed to it, so
  // on a busy machine the last receipts may need another round: at most five, while the relay
  // still holds anything (a receipt that is really lost never arrives, and fails below).
  for (let round = 0; round < 5 && (round === 0 || (await metric(relay, 'murmure_messages')) > 0); round++) {
    await ok(bob, 'sync');
    await ok(alice, 'sync');
  }

  // Every message exactly once, in the order it was sent, nothing missing or broken; every
  // message sent is delivered (receipts are on).
  const [bobView, aliceView] = await Promise.all([ok(bob, 'messages', 'Alice', '--limit', '1000'), ok(alice, 'messages', 'Bob', '--limit', '1000')]);
  const texts = (view: Json[], direction: string): string[] => view.filter((m) => m['direction'] === direction).map((m) => String(m['text']));
  assert.deepEqual(texts(bobView, 'in'), sent.ab, 'Bob got Alice messages once each, in her order');
  assert.deepEqual(texts(aliceView, 'in'), sent.ba, 'Alice got Bob messages once each, in his order');
  views = { Alice: aliceView, Bob: bobView };
  for (const [who, view] of Object.entries(views)) {
    assert.deepEqual(
      view.filter((m) => m['kind'] !== 'text'),
      [],
      `${who} shows no gap or notice`,
    );
    assert.deepEqual(
      view.filter((m) => m['direction'] === 'out' && m['status'] !== 'sent' && m['status'] !== 'delivered').map((m) => [m['text'], m['status']]),
      [],
      `everything ${who} sent went out`,
    );
  }
  assert.equal(await metric(relay, 'murmure_messages_expired_total'), 0);
  assert.equal(await metric(relay, 'murmure_messages'), 0, 'the relay queues drained');
  assert.ok(isRunning(relay), 'the relay is still running');
});

test(
  'every message sent shows as delivered (receipts)',
  { skip: SKIP ?? false },
  () => {
    assert.ok(views !== null, 'runs after the first test');
    for (const [who, view] of Object.entries(views)) {
      assert.deepEqual(
        view.filter((m) => m['direction'] === 'out' && m['status'] !== 'delivered').map((m) => [m['text'], m['status']]),
        [],
        `everything ${who} sent is delivered; what each run printed:\n${trace.join('\n')}`,
      );
    }
  },
);

test(
  'a message composed at -1 day whose first attempt fails after a jump to +1 day is still sent',
  { skip: SKIP ?? false },
  async () => {
    assert.ok(relay !== null, 'runs after the first test');
    const { dataDir, port } = relay;
    assert.equal(await stopRelay(relay), 0);
    alice.clock = '-1d';
    const text = 'composed at -1d, the relay down';
    await one(alice, 'send', 'Bob', text);
    // Ten times fast, the sync gives the unreachable relay 1.5 s instead of 15 s.
    alice.clock = '+1d x10';
    const down = await runMurmure(['--home', alice.dir, '--json', 'sync'], { passphrase: alice.pass, env: clock(alice.clock) });
    assert.equal(down.code, 0, down.stdout + down.stderr);
    relay = await startSkewedRelay(dataDir, port);
    alice.clock = '+1d';
    await ok(alice, 'sync');
    // At normal speed: at ten times, the sync would wait only 70 ms for the message.
    bob.clock = '-1d';
    const got = await ok(bob, 'sync');
    assert.deepEqual(
      byType(got, 'message').map((m) => m['text']),
      [text],
      `Alice's view: ${JSON.stringify((await ok(alice, 'messages', 'Bob', '--limit', '1')).map((m) => m['status']))}`,
    );
  },
);
