// SPDX-License-Identifier: AGPL-3.0-or-later
// D1 and the relay's side of it: after a conversation carrying plaintext canaries (in messages,
// in the joiner's profile and in the inviter's reply), no canary and no database key appears in
// any file of either home (database, -wal, -shm), in the relay's data folder or in its log, in
// any common encoding, neither while the homes are open nor after they closed; a home database
// does not start with the SQLite header. And a wrong key is refused with WRONG_PASSPHRASE without
// changing a byte of a closed home or of one another process has open; a home left with a live
// WAL by a kill -9 loses nothing (SQLite checkpoints that WAL when the refused connection closes).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { AGENT_MIGRATIONS, Agent, AgentError, LocalDatabase, type IncomingEvent } from '@murmure/agent';

import { cleanup, launchRelay, sleep, stopRelay, tempDir, utf8, type LaunchedRelay } from './harness.js';

const DRIVER = join(dirname(fileURLToPath(import.meta.url)), 'agent-driver.js');
const SQLITE_HEADER = Buffer.from('SQLite format 3\0', 'latin1');

let relay: LaunchedRelay;
let dir: string;
const open: { db: LocalDatabase; agent?: Agent }[] = [];

before(async () => {
  relay = await launchRelay({ args: ['--log-level', 'debug'] });
  dir = tempDir();
});
after(async () => {
  for (const o of open) {
    await o.agent?.stop();
    try {
      o.db.close();
    } catch {
      // closed by the test already
    }
  }
  await stopRelay(relay);
  cleanup(relay.dataDir);
  cleanup(dir);
});

/** Every regular file under `root`. */
function filesUnder(root: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(root)) {
    const p = join(root, e);
    const st = statSync(p);
    if (st.isDirectory()) out.push(...filesUnder(p));
    else if (st.isFile()) out.push(p);
  }
  return out;
}

/** A secret and the byte patterns it would show as on disk. */
function forms(name: string, secret: Buffer): { name: string; bytes: Buffer }[] {
  const text = secret.toString('utf8');
  return [
    { name: `${name} (raw)`, bytes: secret },
    { name: `${name} (utf-16)`, bytes: Buffer.from(text, 'utf16le') },
    { name: `${name} (hex)`, bytes: Buffer.from(secret.toString('hex')) },
    { name: `${name} (HEX)`, bytes: Buffer.from(secret.toString('hex').toUpperCase()) },
    { name: `${name} (base64)`, bytes: Buffer.from(secret.toString('base64').replace(/=+$/, '')) },
    { name: `${name} (base64url)`, bytes: Buffer.from(secret.toString('base64url')) },
  ];
}

/** Names of the needles found in `haystacks` (file → bytes). */
function findAll(haystacks: Map<string, Buffer>, needles: { name: string; bytes: Buffer }[]): string[] {
  const found: string[] = [];
  for (const [file, bytes] of haystacks) for (const n of needles) if (bytes.includes(n.bytes)) found.push(`${n.name} in ${file}`);
  return found;
}

function makeSide(name: string, profile: string) {
  const key = randomBytes(32);
  const home = join(dir, name);
  const db = LocalDatabase.open(join(home, 'home.db'), new Uint8Array(key), AGENT_MIGRATIONS);
  db.db.exec('CREATE TABLE IF NOT EXISTS test_inbox (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, text TEXT NOT NULL)');
  const insert = db.db.prepare('INSERT INTO test_inbox (kind, text) VALUES (?, ?)');
  const events: IncomingEvent[] = [];
  const agent = new Agent({
    db,
    handler: {
      // The owner keeps what arrives (messages and profiles) in the same encrypted database.
      incoming: (ev) => {
        if (ev.type === 'message' || ev.type === 'confirmation' || ev.type === 'reply') insert.run([ev.type, Buffer.from(ev.payload).toString()] as never);
      },
      sent: () => undefined,
      connected: () => undefined,
      failed: () => undefined,
      replyPayload: () => utf8(profile),
    },
  });
  agent.on('event', (ev: IncomingEvent) => events.push(ev));
  open.push({ db, agent });
  return { name, key, home, db, agent, events };
}

async function until(f: () => boolean, what: string, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`${what}: not in time`);
    await sleep(20);
  }
}

test('D1: no plaintext canary or key on disk in either home, the relay data or its log', async () => {
  const tag = randomBytes(6).toString('hex');
  const canaries = {
    profileBob: `CanaryProfileBob${tag}`,
    profileAlice: `CanaryProfileAlice${tag}`,
    ...Object.fromEntries(Array.from({ length: 6 }, (_, i) => [`msg${i}`, `CanaryMessage${i}x${tag}`])),
  } as Record<string, string>;
  const alice = makeSide('alice', JSON.stringify({ name: canaries['profileAlice'] }));
  const bob = makeSide('bob', JSON.stringify({ name: canaries['profileBob'] }));
  alice.agent.start();
  bob.agent.start();
  const { connId: aliceConn, link } = await alice.agent.createInvitation(relay.address);
  const bobConn = await bob.agent.join(link, relay.address, utf8(JSON.stringify({ name: canaries['profileBob'] })));
  await until(() => alice.agent.connections()[0]?.status === 'connected' && bob.agent.connections()[0]?.status === 'connected', 'connected');
  for (let i = 0; i < 6; i++) {
    // Short ones and one that fills most of a page, both ways.
    const text = i === 5 ? `${canaries[`msg${i}`]} ${'padding '.repeat(1000)}` : `hello ${canaries[`msg${i}`]}!`;
    if (i % 2 === 0) await bob.agent.send(bobConn, utf8(text));
    else await alice.agent.send(aliceConn, utf8(text));
  }
  const shown = (s: typeof alice) => s.events.filter((e) => e.type === 'message').length;
  await until(() => shown(alice) === 3 && shown(bob) === 3, 'messages arrived');
  await until(() => alice.events.some((e) => e.type === 'receipt') && bob.events.some((e) => e.type === 'receipt'), 'receipts arrived');
  await until(() => alice.agent.idle() && bob.agent.idle(), 'idle');
  // The canaries are really in the homes: each reads them back through its key.
  const stored = (s: typeof alice) => (s.db.db.prepare('SELECT text FROM test_inbox', { pluck: true }).all() as string[]).join('\n');
  assert.ok(stored(alice).includes(canaries['profileBob']!) && stored(bob).includes(canaries['profileAlice']!), 'profiles stored');
  for (let i = 0; i < 6; i++) assert.ok(stored(i % 2 === 0 ? alice : bob).includes(canaries[`msg${i}`]!), `message ${i} stored`);

  const needles = [
    ...Object.entries(canaries).flatMap(([k, v]) => forms(k, Buffer.from(v))),
    ...forms('alice key', alice.key),
    ...forms('bob key', bob.key),
  ];
  const scan = (when: string): void => {
    const files = new Map<string, Buffer>();
    for (const root of [alice.home, bob.home, relay.dataDir]) for (const f of filesUnder(root)) files.set(f, readFileSync(f));
    files.set('relay log', Buffer.concat(relay.stderrBytes));
    assert.ok([...files.keys()].some((f) => f.endsWith('home.db-wal')), `${when}: a live WAL is scanned too`);
    assert.deepEqual(findAll(files, needles), [], `${when}: nothing found`);
    for (const s of [alice, bob]) {
      const head = readFileSync(join(s.home, 'home.db')).subarray(0, 16);
      assert.ok(!head.equals(SQLITE_HEADER), `${when}: ${s.name}'s database has no plaintext SQLite header`);
    }
  };
  scan('while open');

  // Closed cleanly (WAL checkpointed into the database), relay stopped (its WAL too).
  for (const s of [alice, bob]) {
    await s.agent.stop();
    s.db.close();
  }
  open.length = 0;
  await stopRelay(relay);
  const files = new Map<string, Buffer>();
  for (const root of [alice.home, bob.home, relay.dataDir]) for (const f of filesUnder(root)) files.set(f, readFileSync(f));
  files.set('relay log', Buffer.concat(relay.stderrBytes));
  assert.ok(relay.stderrBytes.length > 0, 'the relay logged something');
  assert.deepEqual(findAll(files, needles), [], 'after closing: nothing found');
  for (const s of [alice, bob]) assert.ok(!readFileSync(join(s.home, 'home.db')).subarray(0, 16).equals(SQLITE_HEADER));
  // The relay's own store is plain SQLite (documented): the test would see text in it.
  assert.ok(readFileSync(join(relay.dataDir, 'relay.sqlite')).subarray(0, 16).equals(SQLITE_HEADER), 'the scan reads real SQLite files');
});

/** sha256 of every file in a folder, by name. */
function folderHash(d: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of readdirSync(d).sort()) out[f] = createHash('sha256').update(readFileSync(join(d, f))).digest('hex');
  return out;
}

/** Starts the agent driver on a home (it opens the database and stays) and waits for it. */
async function holdOpen(path: string, key: Buffer): Promise<{ kill9: () => Promise<unknown> }> {
  const proc = spawn(process.execPath, [DRIVER, 'receive', '--db', path], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, MURMURE_DRIVER_KEY: key.toString('hex') } });
  const exited = new Promise((res) => proc.once('exit', res));
  await new Promise<void>((res, rej) => {
    createInterface({ input: proc.stdout }).on('line', (l) => (l === 'ready' ? res() : undefined));
    proc.once('exit', () => rej(new Error('the driver exited early')));
  });
  return {
    kill9: () => {
      proc.kill('SIGKILL');
      return exited;
    },
  };
}

test('a wrong key: WRONG_PASSPHRASE; the home is unchanged byte for byte (closed or in use) and loses nothing (after a kill -9)', async () => {
  const key = randomBytes(32);
  const wrong = randomBytes(32);
  const refused = (path: string) => assert.throws(() => LocalDatabase.open(path, new Uint8Array(wrong), AGENT_MIGRATIONS), (e) => AgentError.is(e, 'WRONG_PASSPHRASE'));

  // A cleanly closed home.
  const home = join(dir, 'wrong-key-clean');
  const db = LocalDatabase.open(join(home, 'home.db'), new Uint8Array(key), AGENT_MIGRATIONS);
  db.db.exec("CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('kept')");
  db.close();
  const before = folderHash(home);
  assert.deepEqual(Object.keys(before), ['home.db']);
  refused(join(home, 'home.db'));
  assert.deepEqual(folderHash(home), before, 'nothing changed');

  // A home another process has open (a daemon), with its WAL live.
  const home2 = join(dir, 'wrong-key-in-use');
  const path2 = join(home2, 'home.db');
  const holder = await holdOpen(path2, key);
  try {
    assert.ok(statSync(`${path2}-wal`).size > 0, 'the WAL is live');
    const before2 = folderHash(home2);
    refused(path2);
    assert.deepEqual(folderHash(home2), before2, 'nothing changed: database, WAL and shared memory');
  } finally {
    await holder.kill9();
  }

  // The same home after that process was killed: its WAL holds commits not yet in the database.
  // SQLite checkpoints a WAL when the last connection closes, even one that failed its key
  // (the frames are copied still encrypted), so the bytes can move from the WAL into the
  // database here; what must hold is that nothing committed is lost.
  assert.ok(existsSync(`${path2}-wal`), 'the WAL outlived the kill');
  refused(path2);
  const ok = LocalDatabase.open(path2, new Uint8Array(key), AGENT_MIGRATIONS);
  try {
    const tables = ok.db.prepare("SELECT name FROM sqlite_master WHERE name LIKE 'driver_%' ORDER BY name", { pluck: true }).all();
    assert.deepEqual(tables, ['driver_composed', 'driver_events', 'driver_inbox'], 'what the killed process committed is there');
  } finally {
    ok.close();
  }
});
