// SPDX-License-Identifier: AGPL-3.0-or-later
// No leak around the SOCKS5 proxy (THREATS N3): the `murmure` command set to --socks5 contacts
// the proxy's port and nothing else, looks up no name (no DNS), and names the relay to the proxy
// as a DOMAIN (ATYP 3).
//
// Design. Every client run happens inside a network namespace of its own (`ip netns`) that has
// only loopback, with a default route through loopback so that any packet to anywhere (the
// resolver of /etc/resolv.conf, the relay's port, another host) passes the OUTPUT hook. There
// nftables accepts only TCP to 127.0.0.1:9050 (and the answers from it), counts and drops DNS
// (UDP or TCP port 53), and counts and drops everything else. On 127.0.0.1:9050 of the namespace
// a forwarder carries each connection to a Unix socket, where the recording SOCKS5 stub of the
// test listens; the stub reaches the relay, a real relay process on loopback outside the
// namespace. The relay is named by a host name no resolver knows (.invalid, RFC 6761): looking it
// up locally would show as DNS packets, and connecting anywhere but the proxy as dropped ones.
//
// Three homes (Alice, Bob, Carol) on that relay connect through a one-time link and a long-term
// address, talk for six rounds, Bob moves his queue and Carol deletes the conversation (some sixty runs
// of the command, each opening its own proxied connections).
// Then: the drop and DNS counters are 0, every SOCKS request named the relay by domain, the relay
// counted exactly the proxy's connections, and every message arrived once, in order. A control
// run in the namespace that does look a name up and connect directly moves both counters, so the
// zeros mean something. Root, `ip` and `nft` are needed; without them the test is skipped.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, test } from 'node:test';

import { cleanup, metric, runMurmure, startRelay, stopRelay, tempDir, type CliRun, type RelayProcess } from './harness.js';
import { SocksStub } from './socks-stub.js';

/** A name for the relay that no resolver knows (.invalid is reserved, RFC 6761). */
const RELAY_NAME = 'relay.murmure.invalid';
/** The proxy's port inside the namespace (Tor's). */
const SOCKS_PORT = 9050;
/** Rounds of messages each way between Alice and each of her two contacts. */
const ROUNDS = 6;

const NS = `murmure-n3-${randomBytes(4).toString('hex')}`;
let nsMade = false;
let dir: string | null = null;
let relay: RelayProcess | null = null;
let stub: SocksStub | null = null;
let forwarder: ChildProcess | null = null;

after(async () => {
  if (forwarder !== null && forwarder.exitCode === null && forwarder.signalCode === null) forwarder.kill('SIGKILL');
  if (nsMade) spawnSync('ip', ['netns', 'del', NS]);
  await stub?.close();
  if (relay !== null) {
    await stopRelay(relay);
    cleanup(relay.dataDir);
  }
  if (dir !== null) cleanup(dir);
});

function sh(cmd: string, args: readonly string[], input?: string): { ok: boolean; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input, timeout: 60_000 });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error?.message ?? ''}` };
}

/** `cmd` inside the namespace. */
function inNs(cmd: string, args: readonly string[], input?: string): { ok: boolean; out: string } {
  return sh('ip', ['netns', 'exec', NS, cmd, ...args], input);
}

const has = (cmd: string): boolean => sh('sh', ['-c', `command -v ${cmd}`]).ok;

/** Installs `ip` and `nft` from Debian if missing (as root); true if both are there. */
function tools(): boolean {
  const missing = [has('ip') ? null : 'iproute2', has('nft') ? null : 'nftables'].filter((p): p is string => p !== null);
  if (missing.length > 0 && process.getuid?.() === 0) {
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    spawnSync('apt-get', ['update', '-qq'], { stdio: 'ignore', env, timeout: 300_000 });
    spawnSync('apt-get', ['install', '-y', '-qq', ...missing], { stdio: 'ignore', env, timeout: 300_000 });
  }
  return has('ip') && has('nft');
}

const RULES = `
table inet murmure_n3 {
  counter allowed {}
  counter dns {}
  counter dropped {}
  chain output {
    type filter hook output priority 0; policy accept;
    ip daddr 127.0.0.1 tcp dport ${SOCKS_PORT} counter name allowed accept
    ip saddr 127.0.0.1 tcp sport ${SOCKS_PORT} accept
    meta l4proto { tcp, udp } th dport 53 counter name dns drop
    counter name dropped drop
  }
}
`;

/** Makes the namespace and its rules; null when done, else why it cannot be done here. */
function makeNamespace(): string | null {
  if (process.getuid?.() !== 0) return 'network namespaces and nftables need root';
  if (!tools()) return 'ip (iproute2) or nft (nftables) is not installed and could not be installed';
  const add = sh('ip', ['netns', 'add', NS]);
  if (!add.ok) return `ip netns add failed: ${add.out.trim()}`;
  nsMade = true;
  for (const [cmd, args] of [
    ['ip', ['link', 'set', 'lo', 'up']],
    ['ip', ['route', 'add', 'default', 'dev', 'lo']],
  ] as const) {
    const r = inNs(cmd, args);
    if (!r.ok) return `${cmd} ${args.join(' ')} in a network namespace failed: ${r.out.trim()}`;
  }
  inNs('ip', ['-6', 'route', 'add', 'default', 'dev', 'lo']); // without IPv6 there is nothing to route
  const nft = inNs('nft', ['-f', '-'], RULES);
  if (!nft.ok) return `nftables rules cannot be loaded in a network namespace: ${nft.out.trim()}`;
  return null;
}

/** The namespace's counters, by name. */
function counters(): Record<'allowed' | 'dns' | 'dropped', number> {
  const r = inNs('nft', ['-j', 'list', 'counters', 'table', 'inet', 'murmure_n3']);
  assert.ok(r.ok, r.out);
  const list = (JSON.parse(r.out) as { nftables: { counter?: { name: string; packets: number } }[] }).nftables;
  const get = (name: string): number => {
    const c = list.find((e) => e.counter?.name === name)?.counter;
    assert.ok(c !== undefined, `counter ${name}`);
    return c.packets;
  };
  return { allowed: get('allowed'), dns: get('dns'), dropped: get('dropped') };
}

/** Carries TCP on 127.0.0.1:PORT of the namespace to the Unix socket PATH. */
const FORWARDER = `
const net = require('node:net');
const [port, path] = process.argv.slice(1);
net.createServer((c) => {
  const u = net.connect(path);
  c.pipe(u);
  u.pipe(c);
  c.on('error', () => u.destroy());
  u.on('error', () => c.destroy());
  c.on('close', () => u.destroy());
  u.on('close', () => c.destroy());
}).listen(Number(port), '127.0.0.1', () => console.log('ready'));
`;

function startForwarder(path: string): Promise<ChildProcess> {
  const p = spawn('ip', ['netns', 'exec', NS, process.execPath, '-e', FORWARDER, String(SOCKS_PORT), path], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  p.stderr.setEncoding('utf8').on('data', (s: string) => (err += s));
  return new Promise((resolve, reject) => {
    createInterface({ input: p.stdout }).once('line', () => resolve(p));
    p.once('exit', (code) => reject(new Error(`the forwarder exited with ${code}: ${err}`)));
  });
}

type Json = Record<string, unknown>;
type Home = { name: string; dir: string; pass: string };

let runs = 0;

/** Runs `murmure --home DIR --json --socks5 127.0.0.1:9050 ARGS...` inside the namespace; fails unless it succeeded. */
async function ok(h: Home, ...args: string[]): Promise<Json[]> {
  runs++;
  const r: CliRun = await runMurmure(['--home', h.dir, '--json', '--socks5', `127.0.0.1:${SOCKS_PORT}`, ...args], {
    passphrase: h.pass,
    wrapper: ['ip', 'netns', 'exec', NS],
  });
  assert.equal(r.code, 0, `${h.name}: murmure ${args.join(' ')} failed: ${r.stdout}${r.stderr}`);
  const problems = r.json.filter((e) => e['type'] === 'problem');
  assert.deepEqual(problems, [], `${h.name}: murmure ${args.join(' ')} reported problems`);
  return r.json;
}

async function one(h: Home, ...args: string[]): Promise<Json> {
  const out = await ok(h, ...args);
  assert.equal(out.length, 1, `${h.name}: murmure ${args.join(' ')} printed ${JSON.stringify(out)}`);
  return out[0]!;
}

/** Syncs the homes at the same time (each home runs one command at a time). */
function syncAll(...homes: Home[]): Promise<Json[][]> {
  return Promise.all(homes.map((h) => ok(h, 'sync')));
}

test('through --socks5 the client contacts only the proxy: no direct connection, no DNS, the relay named as a domain (ATYP 3)', async (t) => {
  const why = makeNamespace();
  if (why !== null) {
    t.skip(why);
    return;
  }
  const started = Date.now();
  dir = tempDir('murmure-n3-');
  relay = await startRelay({ args: ['--metrics-port', '0'] });
  const named = relay.address.replace('@127.0.0.1:', `@${RELAY_NAME}:`);
  assert.notEqual(named, relay.address);
  stub = new SocksStub(new Map([[`${RELAY_NAME}:${relay.port}`, relay.port]]));
  const sock = join(dir, 'socks.sock');
  await stub.listenPath(sock);
  forwarder = await startForwarder(sock);

  const tag = randomBytes(3).toString('hex');
  const home = (name: string): Home => ({ name, dir: join(dir!, name), pass: `passphrase of ${name} ${tag}` });
  const alice = home('Alice');
  const bob = home('Bob');
  const carol = home('Carol');

  await Promise.all([alice, bob, carol].map((h) => one(h, 'init', '--name', h.name, '--relay', named)));
  const link = String((await one(alice, 'invite'))['link']);
  const address = String((await one(alice, 'invite', '--address'))['link']);
  assert.ok(link.includes(`@${RELAY_NAME}:`) && address.includes(`@${RELAY_NAME}:`), 'links name the relay by its host name');
  await Promise.all([one(bob, 'connect', link), one(carol, 'connect', address)]);
  // Bob and Carol send their confirmations, Alice accepts both and replies, they read the replies.
  const connected = (events: Json[]): string[] => events.filter((e) => e['type'] === 'connected').map((e) => String(e['contact']));
  await syncAll(bob, carol);
  const [aliceAccepts] = await syncAll(alice);
  const [bobDone, carolDone] = await syncAll(bob, carol);
  assert.deepEqual(connected(aliceAccepts!).sort(), ['Bob', 'Carol']);
  assert.deepEqual(connected(bobDone!), ['Alice']);
  assert.deepEqual(connected(carolDone!), ['Alice']);

  const sent = { ab: [] as string[], ac: [] as string[], ba: [] as string[], ca: [] as string[] };
  const say = async (from: Home, to: Home, list: string[], i: number): Promise<void> => {
    const text = `${from.name}→${to.name} ${i} (${tag})`;
    list.push(text);
    await one(from, 'send', to.name, text);
  };
  for (let i = 0; i < ROUNDS; i++) {
    await Promise.all([
      (async () => {
        await say(alice, bob, sent.ab, i);
        await say(alice, carol, sent.ac, i);
      })(),
      say(bob, alice, sent.ba, i),
      say(carol, alice, sent.ca, i),
    ]);
    await syncAll(alice, bob, carol);
    // Halfway, Bob moves Alice's messages to him onto a new queue; the move finishes on sync.
    if (i === 3) await one(bob, 'switch', 'Alice');
  }
  await syncAll(alice, bob, carol);

  // Every message arrived once, in the order it was sent.
  const texts = async (h: Home, contact: string, direction: 'in' | 'out'): Promise<string[]> =>
    (await ok(h, 'messages', contact, '--limit', '1000')).filter((m) => m['direction'] === direction).map((m) => String(m['text']));
  const [bobIn, carolIn, aliceFromBob, aliceFromCarol] = await Promise.all([
    texts(bob, 'Alice', 'in'),
    texts(carol, 'Alice', 'in'),
    (async () => [await texts(alice, 'Bob', 'in'), await texts(alice, 'Carol', 'in')])(),
  ]).then(([b, c, a]) => [b, c, a[0]!, a[1]!]);
  assert.deepEqual(bobIn, sent.ab);
  assert.deepEqual(carolIn, sent.ac);
  assert.deepEqual(aliceFromBob, sent.ba);
  assert.deepEqual(aliceFromCarol, sent.ca);
  // Carol deletes the conversation, which deletes her queue on the relay.
  await one(carol, 'delete-contact', 'Alice');

  // Nothing but the proxy's port was contacted, and no name was looked up.
  const c = counters();
  assert.ok(c.allowed > 0, 'the clients did reach the proxy through the rules');
  assert.equal(c.dns, 0, 'DNS packets (port 53) from the namespace');
  assert.equal(c.dropped, 0, 'packets to anything but the proxy from the namespace');
  // The proxy was asked for the relay by name every time, and the relay saw only its connections.
  assert.ok(stub.requests.length >= runs / 2, `SOCKS requests: ${stub.requests.length}`);
  for (const r of stub.requests) assert.deepEqual({ atyp: r.atyp, host: r.host, port: r.port, ok: r.ok }, { atyp: 3, host: RELAY_NAME, port: relay.port, ok: true });
  assert.equal(await metric(relay, 'murmure_connections_total'), stub.requests.length, 'every relay connection came through the proxy');

  // Control: in the same namespace, a lookup and a direct connection do move the counters.
  const control = inNs(process.execPath, [
    '-e',
    `require('node:dns').lookup('${RELAY_NAME}', () => {
       const s = require('node:net').connect(${relay.port}, '127.0.0.1');
       s.on('error', () => undefined);
       setTimeout(() => process.exit(0), 300);
     });`,
  ]);
  assert.ok(control.ok, control.out);
  const after = counters();
  assert.ok(after.dns > 0, 'a lookup in the namespace shows as DNS packets');
  assert.ok(after.dropped > 0, 'a direct connection in the namespace shows as dropped packets');
  t.diagnostic(`${runs} runs of the command, ${stub.requests.length} SOCKS requests, ${c.allowed} packets to the proxy, ${Date.now() - started} ms`);
});
