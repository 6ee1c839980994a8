// SPDX-License-Identifier: AGPL-3.0-or-later
// The relay's limits, set small with command-line flags on real relay processes: commands per
// second (ERR LIMIT), queues per connection (ERR LIMIT), total connections (extra ones refused,
// existing ones served), the handshake deadline, the idle timeout (a PINGing client stays), the
// per-queue quota (ERR QUOTA until drained), the listen backlog, connections per source (S2),
// giant WebSocket frames refused from their header with bounded memory (S3), and connections that
// trickle bytes to stay open (S4).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import type { KeyObject } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer, connect as netConnect, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';

import { RelayClient, RelayClientError, openDelivered, type PushedMessage } from '@murmure/agent';
import { BLOCK_SIZE, MAX_MESSAGE_BODY } from '@murmure/protocol';
import { generateDhKeyPair, generateSigningKeyPair, randomId } from '@murmure/queue-crypto';
import { AUTH_FAILURE_TOKENS } from '@murmure/relay';

import { cleanup, metric, sleep, startRelay, stopRelay, utf8, type RelayProcess } from './harness.js';
import { NO_ENTITY, RawClient, codeOf, rssKiB, withTimeout, type RawAuth } from './wire.js';

async function withRelay(args: string[], body: (relay: RelayProcess) => Promise<void>): Promise<void> {
  const relay = await startRelay({ args });
  try {
    await body(relay);
    assert.equal(relay.proc.exitCode, null, 'the relay process is alive');
  } finally {
    assert.equal(await stopRelay(relay), 0, 'SIGTERM exits with 0');
    cleanup(relay.dataDir);
  }
}

function isCode(code: string) {
  return (e: unknown): boolean => RelayClientError.is(e) && e.code === code;
}

test('commands per second: past the burst, ERR LIMIT with the corrId; other connections are unaffected; tokens refill', async () => {
  await withRelay(['--commands-per-second', '20', '--command-burst', '10'], async (relay) => {
    const c = await RawClient.open(relay.port);
    const other = await RawClient.open(relay.port);
    const pings = Array.from({ length: 40 }, () => c.build(NO_ENTITY, { type: 'PING' }, { kind: 'none' }));
    const replies = Promise.all(pings.map((p) => c.reply(p.corrId)));
    c.sendTransmissions(pings.map((p) => p.bytes));
    const codes = (await replies).map(codeOf);
    const pongs = codes.filter((x) => x === 'PONG').length;
    const limited = codes.filter((x) => x === 'LIMIT').length;
    assert.equal(pongs + limited, 40, `only PONG or LIMIT: ${codes.join(' ')}`);
    assert.ok(pongs >= 10 && pongs <= 14, `the burst of 10 (plus a little refill) is served: ${pongs}`);
    assert.ok(limited >= 26, `the rest is refused: ${limited}`);
    assert.deepEqual(codes.slice(0, 10), Array(10).fill('PONG'), 'the first commands are served');
    assert.equal(codeOf(await other.request(NO_ENTITY, { type: 'PING' }, { kind: 'none' })), 'PONG', 'limits are per connection');
    assert.ok(!c.isClosed, 'rate limiting does not close the connection');
    await sleep(600);
    assert.equal(codeOf(await c.request(NO_ENTITY, { type: 'PING' }, { kind: 'none' })), 'PONG', 'tokens refill');
    c.close();
    other.close();
  });
});

test('a refused authorisation costs AUTH_FAILURE_TOKENS: a stream of ERR AUTH is held far below the command rate, other connections are served', async () => {
  // 100 tokens a second, a burst of 10 failures' worth and one token more, so that the 11th
  // probe is let in however quickly the probes follow each other: that failure leaves the bucket
  // in debt, so the next command (a PING, which 12 PINGs alone would never be) gets LIMIT.
  const burst = 10 * (AUTH_FAILURE_TOKENS + 1) + 1;
  await withRelay(['--commands-per-second', '100', '--command-burst', String(burst)], async (relay) => {
    const c = await RawClient.open(relay.port);
    const other = await RawClient.open(relay.port);
    const wrong: RawAuth = { kind: 'authenticator', key: generateDhKeyPair().privateKey };
    for (let i = 0; i < 11; i++) assert.equal(codeOf(await c.request(randomId(), { type: 'SUB' }, wrong)), 'AUTH', `probe ${i}`);
    assert.equal(codeOf(await c.request(NO_ENTITY, { type: 'PING' }, { kind: 'none' })), 'LIMIT', 'the failures spent the burst');
    assert.equal(codeOf(await other.request(NO_ENTITY, { type: 'PING' }, { kind: 'none' })), 'PONG', 'limits are per connection');
    const pings = [];
    for (let i = 0; i < 11; i++) pings.push(codeOf(await other.request(NO_ENTITY, { type: 'PING' }, { kind: 'none' })));
    assert.deepEqual(pings, Array(11).fill('PONG'), 'as many commands that succeed cost one token each');
    // The debt (about 20 tokens) is paid by the refill within a second.
    await sleep(1000);
    assert.equal(codeOf(await c.request(NO_ENTITY, { type: 'PING' }, { kind: 'none' })), 'PONG', 'tokens refill');
    c.close();
    other.close();
  });
});

test('queues per connection: the next NEW gets ERR LIMIT; a new connection may create again', async () => {
  await withRelay(['--queues-per-connection', '3'], async (relay) => {
    const c = await RelayClient.connect(relay.address);
    const qs = [await c.createQueue(), await c.createQueue(), await c.createQueue()];
    await assert.rejects(c.createQueue(), isCode('LIMIT'));
    await assert.rejects(c.createQueue(), isCode('LIMIT'));
    // The connection and its queues still work.
    await c.send(qs[0]!.sndId, null, utf8('hi'));
    assert.notEqual(await c.get(qs[0]!), null);
    const d = await RelayClient.connect(relay.address);
    await d.createQueue();
    c.close();
    d.close();
  });
});

test('queues per connection: NEWs sent together in one block cannot pass the limit before their writes land', async () => {
  await withRelay(['--queues-per-connection', '3'], async (relay) => {
    const c = await RawClient.open(relay.port);
    const news = Array.from({ length: 8 }, () => {
      const sig = generateSigningKeyPair();
      const cmd = { type: 'NEW' as const, rcvSigKey: sig.publicKey, rcvAuthKey: generateDhKeyPair().publicKey, rcvDhKey: generateDhKeyPair().publicKey };
      return c.build(NO_ENTITY, cmd, { kind: 'signature', key: sig.privateKey });
    });
    const replies = Promise.all(news.map((n) => c.reply(n.corrId)));
    c.sendTransmissions(news.map((n) => n.bytes));
    const codes = (await replies).map(codeOf);
    assert.deepEqual(codes, [...Array(3).fill('IDS'), ...Array(5).fill('LIMIT')], codes.join(' '));
    c.close();
  });
});

/** The backlog the kernel reports for the relay's listening socket (`ss`: Send-Q of a listener). */
function listenBacklog(port: number): number {
  const line = execFileSync('ss', ['-Hltn', `sport = :${port}`], { encoding: 'utf8' }).trim();
  const fields = line.split(/\s+/);
  assert.ok(fields.length >= 4, `ss shows the listener: ${line}`);
  return Number(fields[2]);
}

test('listen backlog: 4,096 by default (capped by the kernel), as set with --listen-backlog', async () => {
  const somaxconn = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8'));
  await withRelay([], async (relay) => {
    assert.equal(listenBacklog(relay.port), Math.min(4096, somaxconn));
  });
  await withRelay(['--listen-backlog', '100'], async (relay) => {
    assert.equal(listenBacklog(relay.port), 100);
  });
});

test('a client that stops reading: once 256 KiB wait unsent the relay reads no more from it, and closes it at the idle timeout; commands after the close leave nothing behind', { timeout: 120_000 }, async () => {
  await withRelay(['--metrics-port', '0', '--command-burst', '1000000', '--commands-per-second', '1000000', '--idle-timeout-ms', '8000'], async (relay) => {
    const creator = await RelayClient.connect(relay.address);
    const q = await creator.createQueue();
    const sender = generateDhKeyPair();
    await creator.secure(q, sender.publicKey);
    creator.close();
    // The creator's close is seen by the relay before the reader connects.
    const isOpen = async (): Promise<boolean> => (await metric(relay.metricsPort!, 'murmure_connections_open')) > 0;
    for (let i = 0; i < 200 && (await isOpen()); i++) await sleep(20);
    assert.equal(await isOpen(), false, 'the creator is gone');
    const reader = await RawClient.open(relay.port);
    // Stop reading: the answers fill the kernel's buffers, then 256 KiB of the relay's.
    reader.socket.pause();
    // Every block: 63 PINGs and a SUB, so the relay's answers fill whole blocks.
    const pings = Array.from({ length: 63 }, () => reader.build(NO_ENTITY, { type: 'PING' }, { kind: 'none' }).bytes);
    const rssBefore = rssKiB(relay.proc.pid!);
    const blocksIn = await metric(relay.metricsPort!, 'murmure_blocks_in_total');
    let blocks = 0;
    // Sent only as fast as the relay takes them: once it stops reading, what the reader sends
    // stays in its own buffers.
    let taken = true;
    while (taken && blocks < 6000) {
      for (let i = 0; i < 50; i++) {
        const sub = reader.build(q.rcvId, { type: 'SUB' }, { kind: 'authenticator', key: q.authKey.privateKey });
        reader.sendTransmissions([...pings, sub.bytes]);
      }
      blocks += 50;
      const until = performance.now() + 1000;
      while (reader.ws.bufferedAmount > 0 && performance.now() < until) await sleep(5);
      taken = reader.ws.bufferedAmount === 0;
    }
    assert.ok(!taken, `the relay stopped reading the reader (after ${blocks} blocks sent)`);
    assert.equal(await metric(relay.metricsPort!, 'murmure_connections_backed_up'), 1, 'the reader is backed up');
    assert.equal(await metric(relay.metricsPort!, 'murmure_connections_open'), 1, 'and still open');
    const read = (await metric(relay.metricsPort!, 'murmure_blocks_in_total')) - blocksIn;
    const rssGrowth = rssKiB(relay.proc.pid!) - rssBefore;
    process.stderr.write(`# the relay read ${read} of ${blocks} blocks, then stopped; its RSS grew by ${rssGrowth} KiB\n`);
    // What it read is what the kernel's buffers on both sides and OUTPUT_HIGH_BYTES of its own
    // take of the answers (a block of answers for each block read): a few MiB, not what was sent.
    assert.ok(read < 1000, `the relay read ${read} blocks before it stopped`);
    // Silent and not reading: closed at the idle timeout (counted from its last read).
    const closeBy = performance.now() + 30_000;
    while ((await isOpen()) && performance.now() < closeBy) await sleep(50);
    assert.equal(await isOpen(), false, 'the relay closed the reader');
    assert.equal(await metric(relay.metricsPort!, 'murmure_connections_backed_up'), 0);
    assert.equal(await metric(relay.metricsPort!, 'murmure_subscriptions'), 0, 'no subscription outlives its connection');
    // The queue works for its owner: a SUB, and a message pushed to it.
    const owner = await RelayClient.connect(relay.address);
    const got = new Promise<PushedMessage>((r) => owner.once('message', r));
    await owner.subscribe(q);
    const other = await RelayClient.connect(relay.address);
    await other.send(q.sndId, sender.privateKey, utf8('after the close'));
    const m = await withTimeout(got, 10_000, 'the message after the close');
    assert.equal(Buffer.from(openDelivered(q, m.msgId, m.body).body).toString(), 'after the close');
    assert.equal(await metric(relay.metricsPort!, 'murmure_subscriptions'), 1);
    reader.ws.terminate();
    owner.close();
    other.close();
  });
});

/**
 * A TCP proxy to `port` whose way back to the client can be held (a train in a tunnel): while
 * held, it reads nothing from the relay, whose kernel buffers then fill.
 */
async function stallingLink(port: number): Promise<{ port: number; hold: () => void; release: () => void; close: () => void }> {
  const ups = new Set<Socket>();
  let held = false;
  const server = createServer((down) => {
    const up = netConnect(port, '127.0.0.1');
    ups.add(up);
    down.pipe(up);
    up.pipe(down);
    if (held) up.pause();
    const end = (): void => {
      ups.delete(up);
      up.destroy();
      down.destroy();
    };
    for (const s of [up, down]) s.on('error', end).on('close', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    hold: () => {
      held = true;
      for (const up of ups) up.pause();
    },
    release: () => {
      held = false;
      for (const up of ups) up.resume();
    },
    close: () => server.close(),
  };
}

type TestQueue = Awaited<ReturnType<RelayClient['createQueue']>>;

/** Queues of a fresh relay, each secured; `fill` sends each one full message whose bytes are its index. */
async function securedQueues(relay: RelayProcess, n: number): Promise<{ queues: TestQueue[]; fill: () => Promise<void> }> {
  const owner = await RelayClient.connect(relay.address);
  const queues: TestQueue[] = [];
  const senderKeys: KeyObject[] = [];
  for (let i = 0; i < n; i++) {
    const q = await owner.createQueue();
    const key = generateDhKeyPair();
    await owner.secure(q, key.publicKey);
    queues.push(q);
    senderKeys.push(key.privateKey);
  }
  owner.close();
  const fill = async (): Promise<void> => {
    const sender = await RelayClient.connect(relay.address);
    for (let i = 0; i < n; i++) await sender.send(queues[i]!.sndId, senderKeys[i]!, new Uint8Array(MAX_MESSAGE_BODY).fill(i & 0xff));
    sender.close();
  };
  return { queues, fill };
}

/** Queues of a fresh relay, each secured and holding one full message whose bytes are its index. */
async function fullQueues(relay: RelayProcess, n: number): Promise<TestQueue[]> {
  const { queues, fill } = await securedQueues(relay, n);
  await fill();
  return queues;
}

/** Polls `check` every 20 ms until it holds; throws, naming `what`, once `ms` have passed. */
async function until(check: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = performance.now() + ms;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** Polls the relay's murmure_pushes_waiting until it is positive and then stops growing. */
async function pushesWaitingSettled(relay: RelayProcess, stop: () => boolean): Promise<number> {
  let waiting = 0;
  const until = performance.now() + 20_000;
  while (waiting === 0 && !stop() && performance.now() < until) {
    waiting = await metric(relay.metricsPort!, 'murmure_pushes_waiting');
    await sleep(20);
  }
  let last = -1;
  while (waiting !== last && !stop()) {
    last = waiting;
    await sleep(300);
    waiting = await metric(relay.metricsPort!, 'murmure_pushes_waiting');
  }
  return waiting;
}

test('a client whose link stalls while it subscribes to 500 queues, each with a full block waiting, is not cut off: the relay holds the messages until the link moves, then delivers every one', { timeout: 120_000 }, async () => {
  await withRelay(['--metrics-port', '0'], async (relay) => {
    // 7.8 MiB of messages: more than loopback's kernel buffers take (about 4 MiB here).
    const QUEUES = 500;
    const queues = await fullQueues(relay, QUEUES);
    const link = await stallingLink(relay.port);
    let client: RelayClient | undefined;
    try {
      const c = await RelayClient.connect(relay.address.replace(/:\d+$/, `:${link.port}`), { timeoutMs: 60_000 });
      client = c;
      let closed = false;
      c.on('close', () => (closed = true));
      const byId = new Map(queues.map((q, i) => [Buffer.from(q.rcvId).toString('hex'), { q, i }]));
      const got = new Set<number>();
      let wrong = 0;
      c.on('message', (m: PushedMessage) => {
        const { q, i } = byId.get(Buffer.from(m.rcvId).toString('hex'))!;
        const body = openDelivered(q, m.msgId, m.body).body;
        if (body.length !== MAX_MESSAGE_BODY || body[0] !== (i & 0xff)) wrong++;
        got.add(i);
        c.ack(q, m.msgId).catch(() => undefined);
      });
      // The link stalls; the client subscribes to every queue.
      link.hold();
      const subscribed = Promise.all(queues.map((q) => c.subscribe(q)));
      subscribed.catch(() => undefined);
      // Every SUB has reached the relay once the waiting stops growing.
      const waiting = await pushesWaitingSettled(relay, () => closed);
      assert.equal(closed, false, 'the relay did not cut the client off');
      // While the link stays stalled, nothing more is written.
      const held = await metric(relay.metricsPort!, 'murmure_messages_delivered_total');
      await sleep(500);
      assert.equal(await metric(relay.metricsPort!, 'murmure_messages_delivered_total'), held, 'nothing is written while the link is stalled');
      assert.equal(await metric(relay.metricsPort!, 'murmure_pushes_waiting'), waiting, 'the pushes keep waiting');
      process.stderr.write(`# once every SUB was read: ${held} written, ${waiting} waiting, for 500 ms\n`);
      assert.ok(waiting > 0, 'the relay holds messages back while its output waits');
      assert.ok(held + waiting <= QUEUES && held < QUEUES, `${held} written, ${waiting} waiting`);
      assert.equal(await metric(relay.metricsPort!, 'murmure_connections_open'), 1, 'the client stays connected while stalled');
      link.release();
      await withTimeout(subscribed, 30_000, 'every SUB answered');
      await until(() => got.size === QUEUES || closed, 30_000, 'every message');
      assert.equal(closed, false, 'the relay did not cut the client off');
      assert.equal(got.size, QUEUES, 'every message arrived');
      assert.equal(wrong, 0, 'each with its own body');
      await until(async () => (await metric(relay.metricsPort!, 'murmure_messages')) === 0, 10_000, 'every message acknowledged');
      await until(async () => (await metric(relay.metricsPort!, 'murmure_pushes_waiting')) === 0, 10_000, 'no push waiting');
    } finally {
      // A failure must not leave the link held and the client open: the test would never end.
      link.release();
      client?.close();
      link.close();
    }
  });
});

test('subscriptions taken over from a client whose link stalls leave none of their pushes waiting there: the new subscriber gets every message', { timeout: 120_000 }, async () => {
  await withRelay(['--metrics-port', '0'], async (relay) => {
    // 7.8 MiB of messages: more than loopback's kernel buffers take (about 4 MiB here).
    const QUEUES = 500;
    const { queues, fill } = await securedQueues(relay, QUEUES);
    const link = await stallingLink(relay.port);
    const clients: RelayClient[] = [];
    try {
      const stalled = await RelayClient.connect(relay.address.replace(/:\d+$/, `:${link.port}`), { timeoutMs: 60_000 });
      clients.push(stalled);
      // The client holds every queue before its link stalls: none of its SUBs can be left unread
      // behind the pushes (a backed-up connection is not read) to take a queue back later.
      await Promise.all(queues.map((q) => stalled.subscribe(q)));
      assert.equal(await metric(relay.metricsPort!, 'murmure_subscriptions'), QUEUES);
      link.hold();
      await fill();
      const waiting = await pushesWaitingSettled(relay, () => stalled.isClosed);
      assert.ok(waiting > 0, 'pushes wait on the stalled connection');
      // The same party subscribes again from a connection that moves (a phone back from the tunnel).
      const fresh = await RelayClient.connect(relay.address);
      clients.push(fresh);
      const byId = new Map(queues.map((q, i) => [Buffer.from(q.rcvId).toString('hex'), { q, i }]));
      const got = new Set<number>();
      fresh.on('message', (m: PushedMessage) => {
        const { q, i } = byId.get(Buffer.from(m.rcvId).toString('hex'))!;
        if (openDelivered(q, m.msgId, m.body).body[0] === (i & 0xff)) got.add(i);
        fresh.ack(q, m.msgId).catch(() => undefined);
      });
      await Promise.all(queues.map((q) => fresh.subscribe(q)));
      await until(() => got.size === QUEUES, 30_000, 'every message at the new subscriber');
      // The fresh client's last ACKs may wait for a slot for a moment; then nothing waits.
      let after = -1;
      await until(async () => (after = await metric(relay.metricsPort!, 'murmure_pushes_waiting')) === 0, 10_000, 'no push waiting').catch(() => undefined);
      process.stderr.write(`# ${waiting} pushes waited on the stalled connection; after the takeover, ${after}\n`);
      assert.equal(after, 0, 'no push waits for the stalled connection once its subscriptions moved');
      assert.equal(await metric(relay.metricsPort!, 'murmure_subscriptions'), QUEUES);
    } finally {
      link.release();
      for (const c of clients) c.close();
      link.close();
    }
  });
});

test('clients that do not read hold at most --unsent-budget-bytes of the relay all together: past it the connection backed up longest is cut off; the others, and clients that read, are served', { timeout: 120_000 }, async () => {
  const BUDGET = 1_048_576;
  let log: string[] = [];
  let evictedSeen = 0;
  await withRelay(['--metrics-port', '0', '--unsent-budget-bytes', String(BUDGET)], async (relay) => {
    log = relay.log;
    const [q] = await fullQueues(relay, 1);
    const link = await stallingLink(relay.port);
    const viaLink = relay.address.replace(/:\d+$/, `:${link.port}`);
    const m = (name: string): Promise<number> => metric(relay.metricsPort!, name);
    const clients: RelayClient[] = [];
    try {
      for (let i = 0; i < 5; i++) clients.push(await RelayClient.connect(viaLink, { timeoutMs: 60_000, commandTimeoutMs: 120_000 }));
      link.hold();
      // One by one, each client asks for the full message again and again and reads nothing:
      // each answer is a block, which waits in the relay once the kernel's buffers are full.
      // Ten at a time, so that the answers to what it sent before the connection backed up never
      // take it to maxBufferedBytes (which would close it for that).
      for (let i = 0; i < clients.length; i++) {
        await until(
          async () => {
            if ((await m('murmure_connections_backed_up')) + (await m('murmure_connections_evicted_unsent_total')) === i + 1) return true;
            for (let k = 0; k < 10; k++) clients[i]!.get(q!).catch(() => undefined);
            return false;
          },
          30_000,
          `client ${i} backed up`,
        );
        assert.ok((await m('murmure_unsent_bytes')) <= BUDGET, 'what waits unsent stays within the budget');
      }
      const evicted = await m('murmure_connections_evicted_unsent_total');
      const backedUp = await m('murmure_connections_backed_up');
      process.stderr.write(`# ${evicted} cut off, ${backedUp} backed up, ${await m('murmure_unsent_bytes')} bytes unsent\n`);
      assert.ok(evicted >= 1 && backedUp >= 1, `some cut off (${evicted}), some kept (${backedUp})`);
      assert.equal(evicted + backedUp, clients.length);
      // A client that reads is served meanwhile.
      const reader = await RelayClient.connect(relay.address);
      assert.notEqual(await reader.get(q!), null);
      reader.close();
      // Those cut off were the oldest: their clients see it once the link moves; the newest is
      // sent what it asked for.
      link.release();
      await until(() => clients.slice(0, evicted).every((c) => c.isClosed), 20_000, 'the clients cut off to see their connection closed');
      const newest = clients[clients.length - 1]!;
      assert.equal(newest.isClosed, false);
      assert.notEqual(await newest.get(q!), null, 'the newest is served once its link moves');
      await until(async () => (await m('murmure_unsent_bytes')) === 0, 20_000, 'nothing left unsent');
      evictedSeen = await m('murmure_connections_evicted_unsent_total');
    } finally {
      link.release();
      for (const c of clients) c.close();
      link.close();
    }
  });
  // The operator reads the cut-offs in the log too: the stats line written as the relay stops.
  const stats = log
    .join('')
    .split('\n')
    .filter((l) => l.includes('"event":"stats"'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.ok(stats.length > 0, 'a stats line as the relay stops');
  assert.equal(stats[stats.length - 1]!['connectionsEvictedUnsent'], evictedSeen);
});

test('max connections: extra connections are refused before TLS while existing ones keep working', async () => {
  await withRelay(['--max-connections', '3', '--metrics-port', '0'], async (relay) => {
    const held = [await RelayClient.connect(relay.address), await RelayClient.connect(relay.address), await RelayClient.connect(relay.address)];
    for (let i = 0; i < 3; i++) {
      await assert.rejects(RelayClient.connect(relay.address, { timeoutMs: 5000 }), isCode('CLOSED'), 'a connection over the limit');
    }
    // A refused connection never got a TLS answer.
    const tlsAnswered = await new Promise<boolean>((resolve) => {
      const s = tlsConnect({ host: '127.0.0.1', port: relay.port, rejectUnauthorized: false }, () => resolve(true));
      s.on('error', () => resolve(false));
      s.on('close', () => resolve(false));
    });
    assert.equal(tlsAnswered, false);
    assert.ok((await metric(relay.metricsPort!, 'murmure_connections_rejected_total')) >= 4);

    const [a, b] = held as [RelayClient, RelayClient, RelayClient];
    const q = await a.createQueue();
    await b.send(q.sndId, null, utf8('still served'));
    const m = await a.get(q);
    assert.ok(m !== null);
    for (const c of held) await c.ping();

    held[2]!.close();
    let again: RelayClient | null = null;
    for (let i = 0; i < 50 && again === null; i++) {
      again = await RelayClient.connect(relay.address, { timeoutMs: 5000 }).catch(() => null);
      if (again === null) await sleep(50);
    }
    assert.ok(again !== null, 'a slot freed by a close is usable again');
    await again.ping();
    for (const c of [a, b, again]) c.close();
  });
});

test('at the connection limit the oldest unfinished handshake makes room: stalled connections give way to an honest client, established ones never do (S2)', async () => {
  await withRelay(['--max-connections', '3', '--metrics-port', '0'], async (relay) => {
    const a = await RelayClient.connect(relay.address);
    const b = await RelayClient.connect(relay.address);
    await a.ping();
    await b.ping(); // both are past their hello on the relay's side too
    // A TCP connection that never starts TLS takes the third slot.
    const stalled = netConnect(relay.port, '127.0.0.1');
    const stalledClosed = new Promise<void>((r) => stalled.once('close', () => r()));
    stalled.on('error', () => undefined);
    await new Promise<void>((r) => stalled.once('connect', () => r()));
    await sleep(50);
    const c = await RelayClient.connect(relay.address, { timeoutMs: 5000 });
    await c.ping();
    await withTimeout(stalledClosed, 5000, 'the stalled connection was closed');
    assert.equal(await metric(relay.metricsPort!, 'murmure_handshakes_evicted_total'), 1);
    // All three slots hold established connections: a fourth is refused, and nothing is evicted.
    await assert.rejects(RelayClient.connect(relay.address, { timeoutMs: 5000 }), isCode('CLOSED'), 'a connection over the limit');
    assert.equal(await metric(relay.metricsPort!, 'murmure_handshakes_evicted_total'), 1);
    assert.ok((await metric(relay.metricsPort!, 'murmure_connections_rejected_total')) >= 1);
    for (const x of [a, b, c]) await x.ping();
    for (const x of [a, b, c]) x.close();
  });
});

test('a connection its source may not make evicts nobody: at both limits, the other source keeps its handshake (S2)', async () => {
  await withRelay(['--max-connections', '2', '--max-connections-per-source', '1', '--unlimited-sources', 'none', '--metrics-port', '0'], async (relay) => {
    const x = await RelayClient.connect(relay.address, from('127.0.0.5'));
    await x.ping();
    // Another source's handshake under way takes the second slot.
    const h = netConnect({ host: '127.0.0.1', port: relay.port, localAddress: '127.0.0.6' });
    let hClosed = false;
    h.on('close', () => (hClosed = true));
    h.on('error', () => undefined);
    await new Promise<void>((r) => h.once('connect', () => r()));
    await sleep(50);
    // The first source, at its own limit, tries again: refused, and the handshake stays.
    await assert.rejects(RelayClient.connect(relay.address, from('127.0.0.5')), isCode('CLOSED'));
    await sleep(100);
    assert.equal(hClosed, false, "the other source's handshake was not evicted");
    assert.equal(await metric(relay.metricsPort!, 'murmure_handshakes_evicted_total'), 0);
    assert.equal(await metric(relay.metricsPort!, 'murmure_connections_rejected_per_source_total'), 1);
    h.destroy();
    x.close();
  });
});

test('refused authorisations are budgeted per source: past it key checks of the source get ERR LIMIT on any new or refused connection, and on one that checked no stored key; not on one that passed a check of a stored key until it fails one, nor from other sources; it refills', async () => {
  // 1 a second, a burst of 2: the next refill comes a second after the burst is spent, far
  // beyond the round trips of the probes below, so the counts hold on a slow machine too.
  const args = ['--auth-refusals-per-source', '1', '--unlimited-sources', 'none', '--commands-per-second', '1000000', '--command-burst', '1000000'];
  await withRelay(args, async (relay) => {
    // Clients of the source connected before the flood. The sibling passed a key check of a
    // stored key (a SUB of a queue it made); so did `proven`, by hand.
    const sibling = await RelayClient.connect(relay.address, from('127.0.0.7'));
    const [own, own2] = [await sibling.createQueue(), await sibling.createQueue()];
    await sibling.subscribe(own);
    const proven = await RawClient.open(relay.port, { localAddress: '127.0.0.7' });
    const sig = generateSigningKeyPair();
    const recipientKey = generateDhKeyPair();
    const made = await proven.request(NO_ENTITY, { type: 'NEW', rcvSigKey: sig.publicKey, rcvAuthKey: recipientKey.publicKey, rcvDhKey: generateDhKeyPair().publicKey }, { kind: 'signature', key: sig.privateKey });
    assert.equal(made.r.type, 'IDS');
    const provenQueue = made.r.type === 'IDS' ? made.r.rcvId : NO_ENTITY;
    const mine: RawAuth = { kind: 'authenticator', key: recipientKey.privateKey };
    assert.equal(codeOf(await proven.request(provenQueue, { type: 'SUB' }, mine)), 'OK');
    // These two checked no stored key: the maker's NEW is signed with the key it brings, the
    // pinger's PING carries a signature of random bytes, which nothing checks.
    const maker = await RelayClient.connect(relay.address, from('127.0.0.7'));
    const makersQueue = await maker.createQueue();
    const pinger = await RawClient.open(relay.port, { localAddress: '127.0.0.7' });
    assert.equal(codeOf(await pinger.request(NO_ENTITY, { type: 'PING' }, { kind: 'raw', auth: { kind: 'signature', bytes: randomId(64) } })), 'PONG');
    // Three connections from the same source share its budget: 2 at once (twice the rate).
    const conns = await Promise.all([0, 1, 2].map(() => RawClient.open(relay.port, { localAddress: '127.0.0.7' })));
    const other = await RawClient.open(relay.port, { localAddress: '127.0.0.8' });
    const wrong: RawAuth = { kind: 'authenticator', key: generateDhKeyPair().privateKey };
    const probe = (c: RawClient): Promise<string> => c.request(randomId(), { type: 'SUB' }, wrong).then(codeOf);
    const codes: string[] = [];
    for (let i = 0; i < 6; i++) codes.push(await probe(conns[i % 3]!));
    assert.deepEqual(codes, ['AUTH', 'AUTH', 'LIMIT', 'LIMIT', 'LIMIT', 'LIMIT'], 'the burst of 2 is refused with AUTH, then LIMIT on every connection of the source');
    assert.equal(codeOf(await conns[0]!.request(NO_ENTITY, { type: 'PING' }, { kind: 'none' })), 'PONG', 'a command that checks no key is served');
    // A new connection of the source gets no fresh budget: its first check waits too.
    const fresh = await RawClient.open(relay.port, { localAddress: '127.0.0.7' });
    assert.equal(await probe(fresh), 'LIMIT', 'reconnecting does not refill the budget');
    await sibling.subscribe(own2); // a client that passed its checks and failed none is served
    await assert.rejects(maker.subscribe(makersQueue), isCode('LIMIT'), 'a NEW signed with its own key is no passed check');
    assert.equal(await probe(pinger), 'LIMIT', 'nor is a PING with a signature');
    // A failed check ends the exception before the next command of the same block starts.
    const [a, b] = [proven.build(randomId(), { type: 'SUB' }, wrong), proven.build(randomId(), { type: 'SUB' }, wrong)];
    const replies = Promise.all([proven.reply(a.corrId), proven.reply(b.corrId)]);
    proven.sendTransmissions([a.bytes, b.bytes]);
    assert.deepEqual((await replies).map(codeOf), ['AUTH', 'LIMIT'], 'one failed check, then the source budget again');
    assert.equal(codeOf(await proven.request(provenQueue, { type: 'SUB' }, mine)), 'LIMIT', 'for its own queue too');
    assert.equal(await probe(other), 'AUTH', 'another source has its own budget');
    await sleep(1500); // 1 a second: one comes back, or two
    assert.equal(await probe(fresh), 'AUTH', 'the budget refills');
    for (const c of [...conns, fresh, other, proven, pinger]) c.close();
    sibling.close();
    maker.close();
  });
});

/** Connection options that make a client connect from `local` (any 127.0.0.0/8 address). */
function from(local: string) {
  return {
    timeoutMs: 5000,
    createConnection: (o: ConnectionOptions): TLSSocket => tlsConnect({ ...o, socket: netConnect({ host: o.host ?? '127.0.0.1', port: o.port ?? 0, localAddress: local }) }),
  };
}

test('connections per source: a source at its limit is refused before TLS, other sources are served; loopback is unlimited unless the operator says so (S2)', async () => {
  await withRelay(['--max-connections-per-source', '3', '--unlimited-sources', 'none', '--metrics-port', '0'], async (relay) => {
    const held = [];
    for (let i = 0; i < 3; i++) held.push(await RelayClient.connect(relay.address, from('127.0.0.3')));
    for (let i = 0; i < 3; i++) {
      await assert.rejects(RelayClient.connect(relay.address, from('127.0.0.3')), isCode('CLOSED'), 'a fourth connection from the same source');
    }
    // The refused connection never got a TLS answer.
    const tlsAnswered = await new Promise<boolean>((resolve) => {
      const s = tlsConnect({ socket: netConnect({ host: '127.0.0.1', port: relay.port, localAddress: '127.0.0.3' }), rejectUnauthorized: false }, () => resolve(true));
      s.on('error', () => resolve(false));
      s.on('close', () => resolve(false));
    });
    assert.equal(tlsAnswered, false, 'refused before the TLS handshake');
    assert.equal(await metric(relay.metricsPort!, 'murmure_connections_rejected_per_source_total'), 4);
    await sleep(100);
    assert.equal(await metric(relay.metricsPort!, 'murmure_handshake_failures_total'), 0, 'a refusal is not counted as a failed handshake');
    // Other sources are served meanwhile, and so are the connections held.
    const other = await RelayClient.connect(relay.address, from('127.0.0.4'));
    const q = await other.createQueue();
    await held[0]!.send(q.sndId, null, utf8('from the full source'));
    assert.ok((await other.get(q)) !== null);
    // A slot given back is usable again.
    held.pop()!.close();
    let again: RelayClient | null = null;
    for (let i = 0; i < 50 && again === null; i++) {
      again = await RelayClient.connect(relay.address, from('127.0.0.3')).catch(() => null);
      if (again === null) await sleep(50);
    }
    assert.ok(again !== null, 'a slot freed by a close is usable again');
    await again.ping();
    for (const c of [...held, other, again]) c.close();
  });
  // By default loopback sources (a local proxy, an onion service) are not limited per source.
  await withRelay(['--max-connections-per-source', '3', '--metrics-port', '0'], async (relay) => {
    const held = [];
    for (let i = 0; i < 6; i++) held.push(await RelayClient.connect(relay.address, from('127.0.0.3')));
    for (const c of held) await c.ping();
    assert.equal(await metric(relay.metricsPort!, 'murmure_connections_rejected_per_source_total'), 0);
    for (const c of held) c.close();
  });
});

test('handshake deadline: connections that stall before TLS, before the upgrade or before the hello are closed', async () => {
  await withRelay(['--handshake-timeout-ms', '1000'], async (relay) => {
    const tcpClosed = (s: Socket) => withTimeout(new Promise<void>((r) => s.once('close', () => r())), 8000, 'the stalled connection was not closed');
    const silentTcp = netConnect(relay.port, '127.0.0.1');
    silentTcp.on('error', () => undefined);
    const tlsOnly = tlsConnect({ host: '127.0.0.1', port: relay.port, rejectUnauthorized: false });
    tlsOnly.on('error', () => undefined);
    const tlsReady = new Promise<void>((r) => tlsOnly.once('secureConnect', () => r()));
    const noHello = await RawClient.open(relay.port, { hello: false });
    await tlsReady;
    const honest = await RelayClient.connect(relay.address);
    await Promise.all([tcpClosed(silentTcp), tcpClosed(tlsOnly), noHello.waitClosed(8000)]);
    await honest.ping();
    await sleep(1000);
    await honest.ping(); // a connection past its hello is not subject to the handshake deadline
    honest.close();
  });
});

/** Waits for `event` on a new socket; fails (rather than hangs) if it closes first. */
function opened(s: Socket, event: 'connect' | 'secureConnect'): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    s.once(event, () => resolve());
    s.once('close', () => reject(new Error(`the connection closed before ${event} (a machine too slow for the deadline?)`)));
  });
}

/** Writes `bytes` one at a time, one every `everyMs`, until the socket closes; resolves with the close time. */
function drip(socket: Socket, bytes: Uint8Array, everyMs: number): Promise<number> {
  socket.on('error', () => undefined);
  let i = 0;
  const timer = setInterval(() => {
    if (!socket.destroyed && i < bytes.length) socket.write(bytes.subarray(i, i + 1));
    i++;
  }, everyMs);
  return new Promise<number>((resolve) =>
    socket.once('close', () => {
      clearInterval(timer);
      resolve(performance.now());
    }),
  );
}

test('slow drip (S4): a byte every 200 ms through the TLS handshake, the upgrade or the WebSocket hello does not extend the deadline; an honest client is served meanwhile', { timeout: 60_000 }, async (t) => {
  const deadlineMs = 1500;
  const perPhase = 100;
  const everyMs = 200;
  await withRelay(['--handshake-timeout-ms', String(deadlineMs)], async (relay) => {
    // 1. Before TLS: a ClientHello record header announcing 512 bytes, then its body a byte at a time.
    const tlsHello = Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]), Buffer.alloc(500, 7)]);
    // 2. After TLS: an upgrade request a byte at a time.
    const upgrade = Buffer.from(`GET / HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${'A'.repeat(22)}==\r\n\r\n`);
    // 3. After the upgrade: a masked binary frame of one block, its header and body a byte at a time.
    const frame = Buffer.concat([Buffer.from([0x82, 0xfe, BLOCK_SIZE >>> 8, BLOCK_SIZE & 0xff, 1, 2, 3, 4]), Buffer.alloc(2048, 9)]);
    const started = performance.now();
    const phases = await Promise.all([
      ...Array.from({ length: perPhase }, async () => {
        const s = netConnect(relay.port, '127.0.0.1');
        await opened(s, 'connect');
        const from = performance.now();
        return { phase: 'TLS handshake', ms: (await drip(s, tlsHello, everyMs)) - from };
      }),
      ...Array.from({ length: perPhase }, async () => {
        const s = tlsConnect({ host: '127.0.0.1', port: relay.port, rejectUnauthorized: false });
        s.on('error', () => undefined);
        await opened(s, 'secureConnect');
        const from = performance.now();
        return { phase: 'upgrade', ms: (await drip(s, upgrade, everyMs)) - from };
      }),
      ...Array.from({ length: perPhase }, async () => {
        const raw = await RawClient.open(relay.port, { hello: false });
        const from = performance.now();
        return { phase: 'hello', ms: (await drip(raw.socket, frame, everyMs)) - from };
      }),
      (async () => {
        // The honest client, connected while the others drip, is served throughout.
        const honest = await RelayClient.connect(relay.address, { timeoutMs: 5000 });
        let pings = 0;
        while (performance.now() - started < deadlineMs + 1000) {
          await honest.ping();
          pings++;
          await sleep(50);
        }
        honest.close();
        return { phase: 'honest', ms: pings };
      })(),
    ]);
    for (const name of ['TLS handshake', 'upgrade', 'hello']) {
      const ms = phases.filter((p) => p.phase === name).map((p) => p.ms);
      const longest = Math.max(...ms);
      const soonest = Math.min(...ms);
      t.diagnostic(`${name}: ${ms.length} dripping connections closed after ${Math.round(soonest)}–${Math.round(longest)} ms (deadline ${deadlineMs} ms)`);
      // Closed by the deadline, not at once for some other fault (such as a frame header the
      // relay refuses on sight).
      assert.ok(soonest > deadlineMs / 2, `${name}: no dripping connection was closed before the deadline (soonest ${Math.round(soonest)} ms)`);
      // Each was still dripping when it was closed: without a fixed deadline the drip would keep
      // it open (a byte every 200 ms, far below any idle timer) for 30 s or more.
      assert.ok(longest < deadlineMs + 2000, `${name}: every dripping connection is closed by the deadline (longest ${Math.round(longest)} ms)`);
    }
    assert.ok(phases.find((p) => p.phase === 'honest')!.ms >= 10, 'the honest client was answered throughout');
  });
});

test('idle timeout: a silent connection is closed, one that PINGs stays', async () => {
  await withRelay(['--idle-timeout-ms', '800'], async (relay) => {
    const idle = await RelayClient.connect(relay.address);
    const busy = await RelayClient.connect(relay.address);
    const idleClosed = new Promise<void>((r) => idle.once('close', () => r()));
    let busyClosed = false;
    busy.once('close', () => (busyClosed = true));
    let pinging = true;
    const pinger = (async () => {
      while (pinging) {
        await busy.ping();
        await sleep(100);
      }
    })();
    await withTimeout(idleClosed, 10_000, 'the idle connection was not closed');
    await sleep(2000); // more than twice the idle timeout
    pinging = false;
    await pinger;
    assert.equal(busyClosed, false, 'the PINGing connection stays');
    await busy.ping();
    await assert.rejects(idle.ping(), isCode('CLOSED'));
    busy.close();
  });
});

test('read-ahead for subscriptions stays within --prefetch-budget-bytes, and every message is still delivered in order', async () => {
  const BUDGET = 40_000;
  await withRelay(['--prefetch-budget-bytes', String(BUDGET), '--metrics-port', '0'], async (relay) => {
    const owner = await RelayClient.connect(relay.address);
    const sender = await RelayClient.connect(relay.address);
    // Six queues of five 8 KB messages: each subscription could hold 16 KB read ahead, 96 KB in all.
    const queues = [];
    for (let i = 0; i < 6; i++) {
      const q = await owner.createQueue();
      const key = generateDhKeyPair();
      await owner.secure(q, key.publicKey);
      for (let m = 0; m < 5; m++) await sender.send(q.sndId, key.privateKey, utf8(`q${i} m${m} `.padEnd(8000, '.')));
      queues.push(q);
    }
    const got = new Map<string, string[]>();
    const pushed: PushedMessage[] = [];
    owner.on('message', (m: PushedMessage) => pushed.push(m));
    for (const q of queues) await owner.subscribe(q);
    const until = async (n: number): Promise<void> => {
      for (let i = 0; i < 500 && pushed.length < n; i++) await sleep(10);
      assert.ok(pushed.length >= n, `${n} messages pushed`);
    };
    await until(6);
    const held = await metric(relay.metricsPort!, 'murmure_prefetch_bytes');
    assert.ok(held > 0 && held <= BUDGET + 16_384, `read ahead: ${held} bytes`);
    // Drain: ACK each message as it comes.
    for (let done = 0; done < 30; done++) {
      await until(done + 1);
      const m = pushed[done]!;
      const q = queues.find((x) => Buffer.from(x.rcvId).equals(Buffer.from(m.rcvId)))!;
      const text = Buffer.from(openDelivered(q, m.msgId, m.body).body).toString().split(' ').slice(0, 2).join(' ');
      const key = text.split(' ')[0]!;
      got.set(key, [...(got.get(key) ?? []), text]);
      await owner.ack(q, m.msgId);
    }
    for (let i = 0; i < 6; i++) assert.deepEqual(got.get(`q${i}`), [0, 1, 2, 3, 4].map((m) => `q${i} m${m}`), `queue ${i} in order`);
    assert.equal(await metric(relay.metricsPort!, 'murmure_prefetch_bytes'), 0, 'nothing held once drained');
    owner.close();
    sender.close();
  });
});

test('quota: the 6th SEND to a queue holding 5 gets ERR QUOTA; after draining, SEND works again', async () => {
  await withRelay(['--quota', '5'], async (relay) => {
    const alice = await RelayClient.connect(relay.address);
    const bob = await RelayClient.connect(relay.address);
    const q = await alice.createQueue();
    const other = await alice.createQueue();
    const key = generateDhKeyPair();
    await bob.send(q.sndId, null, utf8('0'));
    await alice.secure(q, key.publicKey);
    for (let i = 1; i < 5; i++) await bob.send(q.sndId, key.privateKey, utf8(String(i)));
    await assert.rejects(bob.send(q.sndId, key.privateKey, utf8('5')), isCode('QUOTA'));
    await assert.rejects(bob.send(q.sndId, key.privateKey, utf8('5')), isCode('QUOTA'));
    await bob.send(other.sndId, null, utf8('another queue has its own quota'));

    const m0 = await alice.get(q);
    assert.ok(m0 !== null);
    await alice.ack(q, m0.msgId);
    await bob.send(q.sndId, key.privateKey, utf8('5'));
    await assert.rejects(bob.send(q.sndId, key.privateKey, utf8('6')), isCode('QUOTA'), 'one freed slot, one more message');
    for (;;) {
      const m = await alice.get(q);
      if (m === null) break;
      await alice.ack(q, m.msgId);
    }
    for (let i = 6; i < 11; i++) await bob.send(q.sndId, key.privateKey, utf8(String(i)));
    await assert.rejects(bob.send(q.sndId, key.privateKey, utf8('11')), isCode('QUOTA'));
    alice.close();
    bob.close();
  });
});

test('quota flood (S5): 10,000 SENDs to a full queue all get ERR QUOTA, store nothing, and leave memory where the warm-up left it', { timeout: 120_000 }, async (t) => {
  await withRelay(['--quota', '5'], async (relay) => {
    const pid = relay.proc.pid!;
    const alice = await RelayClient.connect(relay.address);
    const q = await alice.createQueue();
    const key = generateDhKeyPair();
    await alice.secure(q, key.publicKey);
    const senders = await Promise.all(Array.from({ length: 5 }, () => RelayClient.connect(relay.address)));
    for (let i = 0; i < 5; i++) await senders[0]!.send(q.sndId, key.privateKey, utf8(`kept ${i}`));
    const body = new Uint8Array(16_000).fill(0x42);
    /** `n` SENDs from each sender, 50 in flight on each; returns how each was answered. */
    const flood = async (n: number): Promise<Map<string, number>> => {
      const outcomes = new Map<string, number>();
      await Promise.all(
        senders.map(async (c) => {
          for (let done = 0; done < n; done += 50) {
            const answers = await Promise.all(
              Array.from({ length: Math.min(50, n - done) }, () =>
                c.send(q.sndId, key.privateKey, body).then(
                  () => 'OK',
                  (e: unknown) => (RelayClientError.is(e) ? e.code : 'other'),
                ),
              ),
            );
            for (const a of answers) outcomes.set(a, (outcomes.get(a) ?? 0) + 1);
          }
        }),
      );
      return outcomes;
    };
    const storeBytes = (): number => ['relay.sqlite', 'relay.sqlite-wal'].reduce((n, f) => n + (existsSync(join(relay.dataDir, f)) ? statSync(join(relay.dataDir, f)).size : 0), 0);
    // Warm-up: 30,000 refused SENDs bring the heap and Node's buffers to their working size (about
    // 25-35 MB above an idle relay). RSS reaches it in a step that comes after 10,000 of them or
    // 20,000, seldom later. A leak would show as growth over the 10,000 that follow.
    for (let round = 0; round < 3; round++) await flood(2000);
    await sleep(300);
    const before = rssKiB(pid);
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    const peakBefore = rssKiB(pid, 'VmHWM');
    const diskBefore = storeBytes();
    const outcomes = await flood(2000);
    await sleep(300);
    const after = rssKiB(pid);
    const peakAfter = rssKiB(pid, 'VmHWM');
    t.diagnostic(`answers: ${JSON.stringify(Object.fromEntries(outcomes))}; RSS ${before} → ${after} KiB, peak +${peakAfter - peakBefore} KiB; store ${diskBefore} → ${storeBytes()} bytes`);
    assert.deepEqual(Object.fromEntries(outcomes), { QUOTA: 10_000 }, 'every SEND to the full queue gets ERR QUOTA');
    // 160 MB of bodies were sent: keeping any part of each (a body is 16 KB) would show. The
    // margins leave room for the heap's own growth between collections (up to 12 MB seen).
    assert.ok(after - before < 24 * 1024, `RSS grew by ${after - before} KiB`);
    assert.ok(peakAfter - peakBefore < 40 * 1024, `peak RSS grew by ${peakAfter - peakBefore} KiB`);
    assert.ok(storeBytes() - diskBefore < 64 * 1024, 'nothing of the refused messages reached the store');
    // The queue holds the five it had, and takes messages again once drained.
    const kept: string[] = [];
    for (let m = await alice.get(q); m !== null; m = await alice.get(q)) {
      kept.push(Buffer.from(openDelivered(q, m.msgId, m.body).body).toString());
      await alice.ack(q, m.msgId);
    }
    assert.deepEqual(kept, ['kept 0', 'kept 1', 'kept 2', 'kept 3', 'kept 4']);
    await senders[1]!.send(q.sndId, key.privateKey, utf8('after the flood'));
    for (const c of [alice, ...senders]) c.close();
  });
});

/** Writes a masked binary frame header declaring `length` bytes, then streams up to `stream` bytes of payload. */
async function giantFrame(c: RawClient, length: bigint, stream: number): Promise<void> {
  const header = Buffer.alloc(14);
  header[0] = 0x82; // FIN, binary
  header[1] = 0x80 | 127; // masked, 64-bit length
  header.writeBigUInt64BE(length, 2);
  header.writeUInt32BE(0x12345678, 10);
  c.socket.write(header);
  const chunk = Buffer.alloc(64 * 1024, 0x5a);
  for (let sent = 0; sent < stream && !c.isClosed && !c.socket.destroyed; sent += chunk.length) {
    if (!c.socket.write(chunk)) {
      await Promise.race([new Promise((r) => c.socket.once('drain', r)), c.closed, sleep(1000)]);
    }
  }
}

test('S3: WebSocket frames declaring 200 MiB, 2^31 and 2^63 bytes are refused from the header (1009); RSS and its peak grow < 10 MB', async () => {
  await withRelay([], async (relay) => {
    const pid = relay.proc.pid!;
    // Warm up: ordinary traffic, one oversized (1 MiB) frame, and the giant frames once with
    // 1 MiB streamed behind each header, so that what the path leaves the first time is not
    // counted, while a relay that held the streamed bytes (24 MiB for the first frame below)
    // would still show.
    const warm = await RelayClient.connect(relay.address);
    const q = await warm.createQueue();
    for (let i = 0; i < 20; i++) await warm.send(q.sndId, null, new Uint8Array(16_000));
    const w = await RawClient.open(relay.port);
    w.sendFrame(new Uint8Array(1 << 20));
    assert.equal((await w.waitClosed(5000)).code, 1009);
    const giants = async (cap: number): Promise<void> => {
      for (const [length, stream] of [
        [200n * 1024n * 1024n, 24 << 20],
        [2n ** 31n, 8 << 20],
        [2n ** 63n - 1n, 1 << 20],
      ] as const) {
        const c = await RawClient.open(relay.port);
        await giantFrame(c, length, Math.min(stream, cap));
        const closed = await c.waitClosed(10_000);
        assert.equal(closed.code, 1009, `a frame declaring ${length} bytes`);
      }
    };
    await giants(1 << 20);
    await sleep(300);
    const before = rssKiB(pid);
    // Reset the peak to the present (5: clear the high-water mark), so headroom left from the
    // start and the warm-up cannot hide a buffer held during the frames.
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    const peakBefore = rssKiB(pid, 'VmHWM');
    await giants(Infinity);
    await sleep(300);
    const after = rssKiB(pid);
    assert.ok(after - before < 10 * 1024, `RSS grew by ${after - before} KiB`);
    // The peak too: the streamed bytes were never held, not merely freed by the time of reading.
    const peakAfter = rssKiB(pid, 'VmHWM');
    assert.ok(peakAfter - peakBefore < 10 * 1024, `peak RSS grew by ${peakAfter - peakBefore} KiB`);

    await warm.ping();
    const m = await warm.get(q);
    assert.equal(m?.body.length, 16_000 + 25, 'stored messages are intact');
    warm.close();
  });
});
