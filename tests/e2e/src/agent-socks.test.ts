// SPDX-License-Identifier: AGPL-3.0-or-later
// Relay connections through SOCKS5 (THREATS N3, DESIGN "Network privacy"). Two agents set to a
// proxy connect through a one-time link on a real relay process and talk both ways:
// - through a recording SOCKS5 stub, the relay is named by a host name no resolver knows, and
//   every request carries it as a DOMAIN (ATYP 3); each queue (the two receive queues, and the two
//   send queues) uses credentials of its own, kept across reconnections; the relay counts exactly
//   as many connections as the proxy made, so nothing reached it directly;
// - through microsocks, a real SOCKS5 server from Debian (installed here if missing), the same,
//   with the relay's connections matched against the proxy's log;
// - the CLI hands --socks5 HOST:PORT and MURMURE_SOCKS5 to the agent, and refuses a bad value.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, connect as netConnect, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { AGENT_MIGRATIONS, Agent, LocalDatabase, type IncomingEvent, type Socks5Proxy } from '@murmure/agent';

import { cleanup, metric, runMurmure, sleep, startRelay, stopRelay, tempDir, utf8, type CliRun, type RelayProcess } from './harness.js';
import { SocksStub } from './socks-stub.js';

/** A name for the relay that no resolver knows (.invalid is reserved, RFC 6761). */
const RELAY_NAME = 'relay.murmure.invalid';

let dir: string;
const relays: RelayProcess[] = [];
const agents: { agent: Agent; db: LocalDatabase }[] = [];
const procs: ChildProcess[] = [];

before(() => {
  dir = tempDir();
});
after(async () => {
  for (const a of agents) {
    await a.agent.stop();
    a.db.close();
  }
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
  for (const r of relays) {
    await stopRelay(r);
    cleanup(r.dataDir);
  }
  cleanup(dir);
});

async function relayWithMetrics(): Promise<RelayProcess> {
  const r = await startRelay({ args: ['--metrics-port', '0'] });
  relays.push(r);
  return r;
}

function makeAgent(name: string, socks5: Socks5Proxy) {
  const db = LocalDatabase.open(join(dir, `${name}-${randomBytes(4).toString('hex')}.db`), new Uint8Array(randomBytes(32)), AGENT_MIGRATIONS);
  const events: IncomingEvent[] = [];
  const agent = new Agent({
    db,
    socks5,
    handler: {
      incoming: (ev) => events.push(ev),
      sent: () => undefined,
      connected: () => undefined,
      failed: () => undefined,
      replyPayload: () => utf8(name),
    },
  });
  agents.push({ agent, db });
  return { agent, events };
}

type Side = ReturnType<typeof makeAgent>;

async function until(f: () => boolean, what: string, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`${what}: not in time`);
    await sleep(20);
  }
}

const text = (ev: IncomingEvent): string | null => (ev.type === 'message' ? Buffer.from(ev.payload).toString('utf8') : null);

/** Alice invites on `relay`, Bob joins it with his queue on the same relay; resolves once both are connected. */
async function pair(alice: Side, bob: Side, relay: string): Promise<{ aliceConn: string; bobConn: string }> {
  alice.agent.start();
  bob.agent.start();
  const { connId: aliceConn, link } = await alice.agent.createInvitation(relay);
  const bobConn = await bob.agent.join(link, relay, utf8('Bob'));
  await until(() => alice.agent.connections().find((c) => c.id === aliceConn)?.status === 'connected', 'alice connected');
  await until(() => bob.agent.connections().find((c) => c.id === bobConn)?.status === 'connected', 'bob connected');
  return { aliceConn, bobConn };
}

/** Sends `n` messages each way and waits until all arrived. */
async function talk(alice: Side, bob: Side, c: { aliceConn: string; bobConn: string }, tag: string, n = 3): Promise<void> {
  for (let i = 0; i < n; i++) {
    await alice.agent.send(c.aliceConn, utf8(`${tag} a→b ${i}`));
    await bob.agent.send(c.bobConn, utf8(`${tag} b→a ${i}`));
  }
  const got = (s: Side, prefix: string) => s.events.map(text).filter((t) => t?.startsWith(prefix)).length;
  await until(() => got(bob, `${tag} a→b`) === n && got(alice, `${tag} b→a`) === n, `${tag}: ${n} messages each way`);
}

test('through a SOCKS5 stub: the relay by name only (ATYP 3), credentials of its own per queue, no direct connection', async () => {
  const relay = await relayWithMetrics();
  const named = relay.address.replace('@127.0.0.1:', `@${RELAY_NAME}:`);
  const stub = new SocksStub(new Map([[`${RELAY_NAME}:${relay.port}`, relay.port]]));
  const proxy: Socks5Proxy = { host: '127.0.0.1', port: await stub.listen() };
  try {
    const alice = makeAgent('Alice', proxy);
    const bob = makeAgent('Bob', proxy);
    const c = await pair(alice, bob, named);
    await talk(alice, bob, c, 'first');

    // Every request named the relay as a domain, authenticated, and succeeded.
    assert.ok(stub.requests.length > 0);
    assert.equal(stub.noAuthOffers, 0, 'username/password was always offered');
    for (const r of stub.requests) {
      assert.deepEqual({ atyp: r.atyp, host: r.host, port: r.port, ok: r.ok }, { atyp: 3, host: RELAY_NAME, port: relay.port, ok: true });
      assert.match(r.username, /^[0-9a-f]{32}$/);
      assert.match(r.password, /^[0-9a-f]{32}$/);
    }
    // Four queues in use (each agent's receive queue and its send queue toward the other): four
    // distinct credential pairs, one connection each, no username shared between pairs.
    const pairs = new Set(stub.requests.map((r) => `${r.username}:${r.password}`));
    const users = new Set(stub.requests.map((r) => r.username));
    assert.equal(pairs.size, 4, `distinct credentials: ${[...pairs].join(' ')}`);
    assert.equal(users.size, 4);
    assert.equal(stub.requests.length, 4, 'one connection per queue');
    // The relay accepted exactly the connections the proxy made: none came to it directly.
    assert.equal(await metric(relay, 'murmure_connections_total'), stub.requests.length);

    // Cut every proxied connection: each queue reconnects with its own credentials (no new ones),
    // the receive queues are subscribed again on their own connections, and messages flow.
    const before = stub.requests.length;
    stub.cutAll();
    await until(() => stub.requests.length >= before + 4, 'four reconnections');
    await talk(alice, bob, c, 'after-cut');
    const again = stub.requests.slice(before);
    assert.ok(again.every((r) => pairs.has(`${r.username}:${r.password}`)), 'reconnections reuse each queue its credentials');
    assert.equal(new Set(again.map((r) => r.username)).size, 4);
    assert.ok(again.every((r) => r.atyp === 3 && r.host === RELAY_NAME && r.ok));
    assert.equal(await metric(relay, 'murmure_connections_total'), stub.requests.length);
  } finally {
    await stub.close();
  }
});

/** The microsocks executable, installed from Debian if missing; null if it cannot be had. */
function microsocks(): string | null {
  const find = () => {
    const r = spawnSync('sh', ['-c', 'command -v microsocks'], { encoding: 'utf8' });
    return r.status === 0 ? r.stdout.trim() : null;
  };
  const found = find();
  if (found !== null || process.getuid?.() !== 0) return found;
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  spawnSync('apt-get', ['update', '-qq'], { stdio: 'ignore', env, timeout: 300_000 });
  spawnSync('apt-get', ['install', '-y', '-qq', 'microsocks'], { stdio: 'ignore', env, timeout: 300_000 });
  return find();
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

async function listening(port: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = netConnect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(25);
  }
  throw new Error(`nothing listens on ${port}`);
}

test('through microsocks, a real SOCKS5 server: everything works, and the relay saw only the proxy its connections', async (t) => {
  const bin = microsocks();
  if (bin === null) {
    t.skip('microsocks is not installed and could not be installed (apt-get install microsocks)');
    return;
  }
  const relay = await relayWithMetrics();
  const port = await freePort();
  // Without -u/-P microsocks takes no authentication: the client offers both, it picks none.
  const ms = spawn(bin, ['-i', '127.0.0.1', '-p', String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(ms);
  let log = '';
  ms.stdout.setEncoding('utf8').on('data', (s: string) => (log += s));
  ms.stderr.setEncoding('utf8').on('data', (s: string) => (log += s));
  await listening(port);
  const connects = () => log.split('\n').filter((l) => l.includes(`connected to 127.0.0.1:${relay.port}`)).length;
  const alice = makeAgent('Alice', { host: '127.0.0.1', port });
  const bob = makeAgent('Bob', { host: '127.0.0.1', port });
  const c = await pair(alice, bob, relay.address);
  await talk(alice, bob, c, 'microsocks');
  await until(() => connects() >= 4, 'microsocks logged the connections');
  assert.equal(connects(), 4, `one connection per queue:\n${log}`);
  assert.equal(await metric(relay, 'murmure_connections_total'), connects(), 'every relay connection came through the proxy');
  ms.kill('SIGTERM');
});

/** The CLI with `env` on top of the runner's, without the runner's MURMURE_SOCKS5; killed if it hangs. */
function murmure(args: string[], env: NodeJS.ProcessEnv): Promise<CliRun> {
  return runMurmure(args, { env: { MURMURE_SOCKS5: '', ...env } });
}

test('the CLI takes --socks5 HOST:PORT or MURMURE_SOCKS5, and refuses a bad value', async () => {
  const relay = await relayWithMetrics();
  const named = relay.address.replace('@127.0.0.1:', `@${RELAY_NAME}:`);
  const stub = new SocksStub(new Map([[`${RELAY_NAME}:${relay.port}`, relay.port]]));
  const stubPort = await stub.listen();
  try {
    const home = join(dir, 'cli-home');
    const env = { MURMURE_PASSPHRASE: 'correct horse', MURMURE_HOME: home };
    const init = await murmure(['init', '--name', 'Ann', '--relay', named, '--json'], env);
    assert.equal(init.code, 0, init.stdout + init.stderr);

    const viaOption = await murmure(['invite', '--json', '--socks5', `127.0.0.1:${stubPort}`], env);
    assert.equal(viaOption.code, 0, viaOption.stdout + viaOption.stderr);
    assert.match(viaOption.stdout, /"type":"invitation"/);
    assert.equal(stub.requests.length, 1);

    const viaEnv = await murmure(['invite', '--json'], { ...env, MURMURE_SOCKS5: `127.0.0.1:${stubPort}` });
    assert.equal(viaEnv.code, 0, viaEnv.stdout + viaEnv.stderr);
    assert.equal(stub.requests.length, 2);
    assert.ok(stub.requests.every((r) => r.atyp === 3 && r.host === RELAY_NAME && r.ok));
    assert.notEqual(stub.requests[0]?.username, stub.requests[1]?.username);
    assert.equal(await metric(relay, 'murmure_connections_total'), 2);

    for (const bad of [['--socks5', 'nonsense'], ['--socks5', '127.0.0.1:0']]) {
      const r = await murmure(['invite', '--json', ...bad], env);
      assert.equal(r.code, 2, r.stdout + r.stderr);
      assert.match(r.stdout, /"code":"USAGE"/);
    }
    const badEnv = await murmure(['invite', '--json'], { ...env, MURMURE_SOCKS5: 'host-without-port' });
    assert.equal(badEnv.code, 2, badEnv.stdout + badEnv.stderr);
    assert.equal(stub.requests.length, 2, 'nothing was attempted with a bad proxy setting');
  } finally {
    await stub.close();
  }
});
