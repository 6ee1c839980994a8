// SPDX-License-Identifier: AGPL-3.0-or-later
// What a relay's answers, metrics, log and database give away, on a real relay process.
// R8: a command on a queue that does not exist and one with a wrong key get byte-identical
// answers in indistinguishable time (Welch's t over interleaved probes), both when repeated on
// one connection, as the first probe of an id on a fresh connection, and when one id is probed as
// a sender id and as a recipient id in turn. Metrics: Prometheus text
// with counts only, no id and no address. R7: after a session of traffic the database links a
// sender id to its recipient id only in the queue's own row, and the log holds no id at all.
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test, type TestContext } from 'node:test';

import { RelayClient, type PushedMessage, type RecipientQueue } from '@murmure/agent';
import { CORR_ID_LENGTH, ID_LENGTH, type Command } from '@murmure/protocol';
import { generateDhKeyPair, generateSigningKeyPair, randomId, type KeyPair } from '@murmure/queue-crypto';
import { STORE_FILE } from '@murmure/relay';
import Database from '@signalapp/sqlcipher';

import { Inbox, cleanup, startRelay, stopRelay, utf8, type RelayProcess } from './harness.js';
import { NO_ENTITY, RawClient, codeOf, idSpellings, type Built, type RawAuth, type Reply } from './wire.js';

let relay: RelayProcess;
let owner: RelayClient;
let secured: { q: RecipientQueue; sender: KeyPair };

/** Every id the clients saw, by kind, for the R7 checks. */
const seen = { rcv: [] as Uint8Array[], snd: [] as Uint8Array[], msg: [] as Uint8Array[], link: [] as Uint8Array[], sndKey: [] as Uint8Array[] };
/** Queue pairs (rcvId, sndId) that still exist at the end. */
const live: { rcvId: Uint8Array; sndId: Uint8Array }[] = [];
let stored = 0;

before(async () => {
  // The timing probes are thousands of refused commands on one connection: at the default rate
  // the cost of each ERR AUTH (AUTH_FAILURE_TOKENS) would have most of them answered LIMIT.
  relay = await startRelay({ args: ['--metrics-port', '0', '--log-level', 'debug', '--commands-per-second', '1000000', '--command-burst', '1000000'] });
  owner = await RelayClient.connect(relay.address);
  const q = await owner.createQueue();
  const sender = generateDhKeyPair();
  await owner.secure(q, sender.publicKey);
  secured = { q, sender };
  note(q, sender);
});

after(async () => {
  owner.close();
  if (relay.proc.exitCode === null) await stopRelay(relay);
  cleanup(relay.dataDir);
});

function note(q: RecipientQueue, sender?: KeyPair, alive = true): void {
  seen.rcv.push(q.rcvId);
  seen.snd.push(q.sndId);
  if (sender !== undefined) seen.sndKey.push(sender.publicKey);
  if (alive) live.push({ rcvId: q.rcvId, sndId: q.sndId });
}

/** The reply block with the echoed corrId and entity id zeroed, after checking they are the ones sent. */
function shape(r: Reply, sent: Built, entity: Uint8Array): Buffer {
  assert.deepEqual(Buffer.from(r.t.corrId), Buffer.from(sent.corrId));
  assert.deepEqual(Buffer.from(r.t.entityId), Buffer.from(entity));
  const off = r.raw.byteOffset - r.block.byteOffset;
  const b = Buffer.from(r.block);
  b.fill(0, off + 1, off + 1 + CORR_ID_LENGTH);
  b.fill(0, off + 2 + CORR_ID_LENGTH, off + 2 + CORR_ID_LENGTH + entity.length);
  return b;
}

test('R8: ERR AUTH for a missing queue and for a wrong key are the same bytes', async () => {
  const { q, sender } = secured;
  const suspended = await owner.createQueue();
  const suspendedKey = generateDhKeyPair();
  await owner.secure(suspended, suspendedKey.publicKey);
  await owner.suspend(suspended);
  note(suspended, suspendedKey);
  const unsecured = await owner.createQueue();
  note(unsecured);

  const p = await RawClient.open(relay.port);
  const wrongDh = generateDhKeyPair();
  const wrongSig = generateSigningKeyPair();
  const authn: RawAuth = { kind: 'authenticator', key: wrongDh.privateKey };
  const signed: RawAuth = { kind: 'signature', key: wrongSig.privateKey };
  const body = utf8('probe');
  type Probe = { what: string; cmd: Command; variants: [string, Uint8Array, RawAuth][] };
  const missing = randomId();
  const probes: Probe[] = [
    { what: 'SUB', cmd: { type: 'SUB' }, variants: [['missing', missing, authn], ['wrong key', q.rcvId, authn], ['signed', q.rcvId, { kind: 'signature', key: q.sigKey.privateKey }]] },
    { what: 'GET', cmd: { type: 'GET' }, variants: [['missing', missing, authn], ['wrong key', q.rcvId, authn]] },
    { what: 'ACK', cmd: { type: 'ACK', msgId: randomId() }, variants: [['missing', missing, authn], ['wrong key', q.rcvId, authn]] },
    { what: 'KEY', cmd: { type: 'KEY', sndAuthKey: wrongDh.publicKey }, variants: [['missing', missing, signed], ['wrong key', q.rcvId, signed], ['unsigned', q.rcvId, { kind: 'none' }]] },
    { what: 'OFF', cmd: { type: 'OFF' }, variants: [['missing', missing, signed], ['wrong key', q.rcvId, signed]] },
    { what: 'DEL', cmd: { type: 'DEL' }, variants: [['missing', missing, signed], ['wrong key', q.rcvId, signed], ['sender id', q.sndId, { kind: 'signature', key: q.sigKey.privateKey }]] },
    { what: 'LSET', cmd: { type: 'LSET', linkId: randomId(), data: body }, variants: [['missing', missing, signed], ['wrong key', unsecured.rcvId, signed]] },
    {
      what: 'SEND (authenticator)',
      cmd: { type: 'SEND', flags: 0, body },
      variants: [
        ['missing', missing, authn],
        ['wrong key', q.sndId, authn],
        ['suspended, right key', suspended.sndId, { kind: 'authenticator', key: suspendedKey.privateKey }],
        ['unsecured, with authenticator', unsecured.sndId, authn],
        ['recipient id', q.rcvId, { kind: 'authenticator', key: sender.privateKey }],
      ],
    },
    { what: 'SEND (none)', cmd: { type: 'SEND', flags: 0, body }, variants: [['missing', missing, { kind: 'none' }], ['secured', q.sndId, { kind: 'none' }], ['suspended', suspended.sndId, { kind: 'none' }]] },
  ];
  for (const probe of probes) {
    const shapes: [string, Buffer, Reply][] = [];
    for (const [name, entity, auth] of probe.variants) {
      const b = p.build(entity, probe.cmd, auth);
      const r = await p.send(b);
      assert.deepEqual(r.r, { type: 'ERR', code: 'AUTH' }, `${probe.what}, ${name}`);
      shapes.push([name, shape(r, b, entity), r]);
    }
    const [firstName, first, firstReply] = shapes[0]!;
    for (const [name, s, r] of shapes.slice(1)) {
      assert.equal(r.raw.length, firstReply.raw.length, `${probe.what}: ${name} vs ${firstName}, transmission length`);
      assert.deepEqual(Buffer.from(r.t.response), Buffer.from(firstReply.t.response), `${probe.what}: ${name} vs ${firstName}, response bytes`);
      const afterIds = 2 + CORR_ID_LENGTH + ID_LENGTH;
      assert.deepEqual(Buffer.from(r.raw.subarray(afterIds)), Buffer.from(firstReply.raw.subarray(afterIds)), `${probe.what}: ${name} vs ${firstName}, bytes after corrId and entity`);
      assert.ok(s.equals(first), `${probe.what}: ${name} vs ${firstName}, whole block`);
    }
  }
  assert.deepEqual(p.badFrames, []);
  p.close();
});

type Sample = { n: number; mean: number; variance: number };

function sample(xs: readonly number[]): Sample {
  const n = xs.length;
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  const variance = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1);
  return { n, mean, variance };
}

/** Drops the slowest 1% (GC pauses, scheduling). */
function trimmed(xs: readonly number[]): number[] {
  const s = [...xs].sort((a, b) => a - b);
  return s.slice(0, Math.floor(s.length * 0.99));
}

function welch(a: Sample, b: Sample): number {
  return (a.mean - b.mean) / Math.sqrt(a.variance / a.n + b.variance / b.n);
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

test('R8: the time of ERR AUTH does not tell a missing queue from a wrong key (Welch |t| < 4.5)', async (t) => {
  const { q } = secured;
  const p = await RawClient.open(relay.port);
  const wrongDh = generateDhKeyPair();
  const wrongSig = generateSigningKeyPair();
  const missingRcv = randomId();
  const missingSnd = randomId();
  const authn: RawAuth = { kind: 'authenticator', key: wrongDh.privateKey };
  const signed: RawAuth = { kind: 'signature', key: wrongSig.privateKey };
  const kinds: [string, (missing: boolean) => Built][] = [
    ['SUB', (m) => p.build(m ? missingRcv : q.rcvId, { type: 'SUB' }, authn)],
    ['SEND', (m) => p.build(m ? missingSnd : q.sndId, { type: 'SEND', flags: 0, body: utf8('timing probe') }, authn)],
    ['KEY', (m) => p.build(m ? missingRcv : q.rcvId, { type: 'KEY', sndAuthKey: wrongDh.publicKey }, signed)],
    ['DEL', (m) => p.build(m ? missingRcv : q.rcvId, { type: 'DEL' }, signed)],
  ];
  const WARMUP = 200;
  const N = 2000;
  const report: string[] = [];
  const ts: number[] = [];
  for (const [name, build] of kinds) {
    const times: Record<'missing' | 'wrong', number[]> = { missing: [], wrong: [] };
    for (let i = 0; i < WARMUP + N; i++) {
      const order = (i & 1) === 0 ? [true, false] : [false, true];
      if (Math.random() < 0.5) order.reverse();
      for (const missing of order) {
        const b = build(missing);
        const start = process.hrtime.bigint();
        const r = await p.send(b);
        const us = Number(process.hrtime.bigint() - start) / 1000;
        if (r.r.type !== 'ERR' || r.r.code !== 'AUTH') assert.fail(`${name} probe answered ${codeOf(r)}`);
        if (i >= WARMUP) times[missing ? 'missing' : 'wrong'].push(us);
      }
    }
    const a = sample(trimmed(times.missing));
    const b = sample(trimmed(times.wrong));
    const tw = welch(a, b);
    ts.push(tw);
    report.push(
      `${name}: missing ${a.mean.toFixed(1)} µs (median ${median(times.missing).toFixed(1)}), wrong key ${b.mean.toFixed(1)} µs (median ${median(times.wrong).toFixed(1)}), t = ${tw.toFixed(2)}`,
    );
  }
  for (const line of report) t.diagnostic(line);
  for (const tw of ts) assert.ok(Math.abs(tw) < 4.5, report.join('\n'));
  p.close();
});

let trafficRun: Promise<void> | undefined;
/** `traffic`, once for the whole file: the metrics and R7 tests both inspect what it left. */
function trafficOnce(): Promise<void> {
  return (trafficRun ??= traffic());
}

/**
 * One probe of each kind and outcome per fresh connection, `FIRST_PROBE_CONNECTIONS` times: the
 * time of the first ERR AUTH for a missing id against a wrong key on the id `real(i, kind)` gives,
 * compared by Welch's t and by a paired t over each connection's difference (which leaves out
 * what varies from one connection to the next). `prepare` runs on each probe connection first;
 * when it answers false the connection is replaced by a new one.
 */
async function firstProbes(
  t: TestContext,
  what: string,
  real: (i: number, kind: 'SUB' | 'SEND') => Uint8Array,
  prepare: (p: RawClient) => Promise<boolean> = async () => true,
): Promise<void> {
  const authn: RawAuth = { kind: 'authenticator', key: generateDhKeyPair().privateKey };
  // Every order of the four probes equally often, so no kind is more often first.
  const orders = permutations<['SUB' | 'SEND', boolean]>([['SUB', true], ['SUB', false], ['SEND', true], ['SEND', false]]);
  const times = { SUB: { missing: [] as number[], wrong: [] as number[] }, SEND: { missing: [] as number[], wrong: [] as number[] } };
  for (let i = 0; i < FIRST_PROBE_CONNECTIONS; i++) {
    let p = await RawClient.open(relay.port);
    while (!(await prepare(p))) {
      p.close();
      await p.closed;
      p = await RawClient.open(relay.port);
    }
    try {
      assert.equal(codeOf(await p.request(NO_ENTITY, { type: 'PING' }, { kind: 'none' })), 'PONG');
      for (const [kind, missing] of orders[i % orders.length]!) {
        const entity = missing ? randomId() : real(i, kind);
        const cmd: Command = kind === 'SUB' ? { type: 'SUB' } : { type: 'SEND', flags: 0, body: utf8('timing probe') };
        const b = p.build(entity, cmd, authn);
        const start = process.hrtime.bigint();
        const r = await p.send(b);
        const us = Number(process.hrtime.bigint() - start) / 1000;
        if (r.r.type !== 'ERR' || r.r.code !== 'AUTH') assert.fail(`${kind} probe answered ${codeOf(r)}`);
        if (i >= FIRST_PROBE_WARMUP) times[kind][missing ? 'missing' : 'wrong'].push(us);
      }
    } finally {
      p.close();
    }
    await p.closed; // the relay's work for this close is not left to land in the next sample
  }
  const report: string[] = [];
  const ts: number[] = [];
  for (const kind of ['SUB', 'SEND'] as const) {
    const { missing, wrong } = times[kind];
    const a = sample(trimmed(missing));
    const b = sample(trimmed(wrong));
    const tw = welch(a, b);
    // Paired: the slowest 1% of differences (either way) left out, as `trimmed` does.
    const d = missing.map((m, k) => m - wrong[k]!).sort((x, y) => Math.abs(x) - Math.abs(y));
    const ds = sample(d.slice(0, Math.floor(d.length * 0.99)));
    const tp = ds.mean / Math.sqrt(ds.variance / ds.n);
    ts.push(tw, tp);
    report.push(
      `${kind}, first probe: missing ${a.mean.toFixed(1)} µs (median ${median(missing).toFixed(1)}), wrong key ${what} ${b.mean.toFixed(1)} µs (median ${median(wrong).toFixed(1)}), t = ${tw.toFixed(2)}; paired: ${ds.mean.toFixed(1)} µs, t = ${tp.toFixed(2)}`,
    );
  }
  for (const line of report) t.diagnostic(line);
  for (const tw of ts) assert.ok(Math.abs(tw) < 4.5, report.join('\n'));
}

const FIRST_PROBE_WARMUP = 30;
/** 40 rounds of the 24 orders of `firstProbes` after the warm-up. */
const FIRST_PROBE_CONNECTIONS = FIRST_PROBE_WARMUP + 24 * 40;

test('R8: the first ERR AUTH on a fresh connection does not tell a missing queue from a wrong key either, also when the queue\'s holder connected a moment ago (Welch and paired |t| < 4.5)', async (t) => {
  // The relay keeps derived keys per connection, so repeated probes (above) compare cached
  // work. What a prober learns from one probe per id and connection is the cold path: a key
  // agreement with the queue's key, or with the dummy key for a queue that does not exist. The
  // session key keeps the agreements of checks that passed on connections of its period: here
  // the queue's holder passes a SUB and a SEND on a connection with the probe connection's
  // session key first, so every probe of the queue finds its agreements kept.
  const used = await owner.createQueue();
  const sender = generateDhKeyPair();
  await owner.secure(used, sender.publicKey);
  note(used, sender);
  let holder: RawClient | null = null;
  const sameKey = (a: RawClient, b: RawClient): boolean => Buffer.from(a.hello.sessionKey).equals(Buffer.from(b.hello.sessionKey));
  const holderOf = async (p: RawClient): Promise<boolean> => {
    if (holder !== null && sameKey(holder, p)) return true;
    holder?.close();
    const h = await RawClient.open(relay.port);
    holder = h;
    // The probe connection's key served its minute just before the holder connected: a new
    // probe connection gets the holder's.
    if (!sameKey(h, p)) return false;
    assert.equal(codeOf(await h.request(used.rcvId, { type: 'SUB' }, { kind: 'authenticator', key: used.authKey.privateKey })), 'OK');
    assert.equal(codeOf(await h.request(used.sndId, { type: 'SEND', flags: 0, body: utf8('holder') }, { kind: 'authenticator', key: sender.privateKey })), 'OK');
    stored++;
    // Taken and acknowledged, as its holder would: the store is left as it was.
    const pushed = (await h.nextUnsolicited(0)).r;
    assert.equal(pushed.type, 'MSG');
    if (pushed.type === 'MSG') assert.equal(codeOf(await h.request(used.rcvId, { type: 'ACK', msgId: pushed.msgId }, { kind: 'authenticator', key: used.authKey.privateKey })), 'OK');
    return true;
  };
  try {
    await firstProbes(t, 'on a queue its holder just used', (_i, kind) => (kind === 'SUB' ? used.rcvId : used.sndId), holderOf);
  } finally {
    (holder as RawClient | null)?.close();
  }
});

test('R8: nor from a wrong key on a queue nobody used in the session key\'s period (Welch and paired |t| < 4.5)', async (t) => {
  // A queue of its own per connection, made and secured by signed commands (which agree
  // nothing with the session key): nothing is kept for it, nor for the dummy key (no check
  // passes with it), so both cost one agreement.
  // Made on connections of their own (a connection may make `queuesPerConnection`, 1,000), and left
  // out of the R7 checks, which look for every id they note in every row.
  const fresh: { rcvId: Uint8Array; sndId: Uint8Array }[] = [];
  for (let i = 0; i < FIRST_PROBE_CONNECTIONS; i += 500) {
    const maker = await RelayClient.connect(relay.address);
    try {
      for (let j = i; j < Math.min(i + 500, FIRST_PROBE_CONNECTIONS); j++) {
        const q = await maker.createQueue();
        await maker.secure(q, generateDhKeyPair().publicKey);
        fresh.push({ rcvId: q.rcvId, sndId: q.sndId });
      }
    } finally {
      maker.close();
    }
  }
  await firstProbes(t, 'on a queue nobody used', (i, kind) => (kind === 'SUB' ? fresh[i]!.rcvId : fresh[i]!.sndId));
});

test('R8: an id used as a sender id and as a recipient id in turn does not tell whether it exists (Welch |t| < 4.5)', async (t) => {
  // The relay caches derived keys per connection by id and role: were it by id alone, SEND and
  // SUB in turn on a real id would derive a key every time (its sender and recipient keys
  // differ), and on a missing id never (the dummy key both ways).
  const { q } = secured;
  const p = await RawClient.open(relay.port);
  const authn: RawAuth = { kind: 'authenticator', key: generateDhKeyPair().privateKey };
  const missing = randomId();
  const WARMUP = 100;
  const N = 1000;
  const report: string[] = [];
  const ts: number[] = [];
  for (const [name, real] of [['sender id', q.sndId], ['recipient id', q.rcvId]] as const) {
    const times: Record<'missing' | 'real', number[]> = { missing: [], real: [] };
    for (let i = 0; i < WARMUP + N; i++) {
      const order = Math.random() < 0.5 ? [true, false] : [false, true];
      for (const isMissing of order) {
        const entity = isMissing ? missing : real;
        const start = process.hrtime.bigint();
        for (const cmd of [{ type: 'SEND', flags: 0, body: utf8('timing probe') }, { type: 'SUB' }] as Command[]) {
          const r = await p.send(p.build(entity, cmd, authn));
          if (r.r.type !== 'ERR' || r.r.code !== 'AUTH') assert.fail(`${cmd.type} probe answered ${codeOf(r)}`);
        }
        const us = Number(process.hrtime.bigint() - start) / 1000;
        if (i >= WARMUP) times[isMissing ? 'missing' : 'real'].push(us);
      }
    }
    const a = sample(trimmed(times.missing));
    const b = sample(trimmed(times.real));
    const tw = welch(a, b);
    ts.push(tw);
    report.push(`SEND then SUB on a missing id ${a.mean.toFixed(1)} µs, on a real ${name} ${b.mean.toFixed(1)} µs, t = ${tw.toFixed(2)}`);
  }
  for (const line of report) t.diagnostic(line);
  for (const tw of ts) assert.ok(Math.abs(tw) < 4.5, report.join('\n'));
  p.close();
});

/** Every ordering of `xs`. */
function permutations<T>(xs: readonly T[]): T[][] {
  if (xs.length <= 1) return [[...xs]];
  return xs.flatMap((x, i) => permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map((rest) => [x, ...rest]));
}

/** A session of ordinary traffic: queue pairs, confirmations, messages (some left unread), links, a deleted queue. */
async function traffic(): Promise<void> {
  const bob = await RelayClient.connect(relay.address);
  const inbox = new Inbox(owner);
  const pairs: { q: RecipientQueue; key: KeyPair }[] = [];
  for (let i = 0; i < 4; i++) {
    const q = await owner.createQueue();
    const key = generateDhKeyPair();
    const link = randomId();
    await owner.setLink(q, link, utf8(`invitation ${i}`));
    seen.link.push(link);
    const got = await bob.getLink(link);
    await bob.send(got.sndId, null, utf8(`confirmation ${i}`));
    stored++;
    if (i < 3) await owner.secure(q, key.publicKey);
    note(q, i < 3 ? key : undefined);
    pairs.push({ q, key });
  }
  for (let round = 0; round < 3; round++) {
    for (const { q, key } of pairs.slice(0, 3)) {
      await bob.send(q.sndId, key.privateKey, utf8(`message ${round}`));
      stored++;
    }
  }
  // Read two queues completely, leave the others holding messages.
  for (const { q } of pairs.slice(0, 2)) {
    const start = inbox.messages.length;
    await owner.subscribe(q);
    for (let k = 0; k < 4; k++) {
      await inbox.waitFor(start + k + 1);
      const m: PushedMessage = inbox.messages[start + k]!;
      seen.msg.push(m.msgId);
      await owner.ack(q, m.msgId);
    }
  }
  const peek = await owner.get(pairs[2]!.q);
  assert.ok(peek !== null);
  seen.msg.push(peek.msgId);
  // A queue that is made, used and deleted.
  const gone = await owner.createQueue();
  await bob.send(gone.sndId, null, utf8('soon gone'));
  stored++;
  await owner.deleteQueue(gone);
  note(gone, undefined, false);
  bob.close();
}

test('metrics: the first line gives metricsPort; /metrics is Prometheus text with counts and no id or address', async () => {
  await trafficOnce();
  assert.equal(typeof relay.metricsPort, 'number');
  assert.ok(relay.metricsPort! > 0);
  const res = await fetch(`http://127.0.0.1:${relay.metricsPort}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const text = await res.text();
  const values = new Map<string, number>();
  for (const line of text.trimEnd().split('\n')) {
    if (line.startsWith('# HELP ') || line.startsWith('# TYPE ')) {
      assert.match(line, /^# (HELP murmure_[a-z_]+ .+|TYPE murmure_[a-z_]+ (counter|gauge))$/);
      continue;
    }
    const m = /^(murmure_[a-z_]+(?:\{(?:command|code)="[A-Z_]+"\})?) (\d+(?:\.\d+)?)$/.exec(line);
    assert.ok(m !== null, `a Prometheus sample line: ${line}`);
    values.set(m[1]!, Number(m[2]));
  }
  for (const name of [
    'murmure_messages_stored_total',
    'murmure_messages_delivered_total',
    'murmure_messages_acked_total',
    'murmure_queues_created_total',
    'murmure_connections_open',
    'murmure_connections_total',
    'murmure_blocks_in_total',
    'murmure_blocks_out_total',
    'murmure_store_commits_total',
    'murmure_queues',
    'murmure_messages',
    'murmure_process_rss_bytes',
  ]) {
    assert.ok(values.has(name), `${name} in /metrics`);
  }
  assert.equal(values.get('murmure_messages_stored_total'), stored);
  assert.ok(values.get('murmure_messages_acked_total')! >= 8);
  assert.ok(values.get('murmure_errors_total{code="AUTH"}')! > 16_000, 'the R8 probes are counted');
  assert.ok(values.has('murmure_commands_total{command="SEND"}'));
  assert.equal(values.get('murmure_messages'), 5, 'messages left in the store: 4 in the peeked queue, 1 in the unsecured one');

  assert.ok(!text.includes('127.0.0.1'), 'no address in /metrics');
  for (const id of [...seen.rcv, ...seen.snd, ...seen.msg, ...seen.link, ...seen.sndKey]) {
    for (const s of idSpellings(id)) assert.ok(!text.includes(s), 'no id in /metrics');
  }
  assert.equal((await fetch(`http://127.0.0.1:${relay.metricsPort}/`)).status, 404);
  assert.equal((await fetch(`http://127.0.0.1:${relay.metricsPort}/metrics`, { method: 'POST' })).status, 404);
});

type Cell = { table: string; column: string; row: Record<string, unknown> };

/** Where in the database the bytes of `id` occur (whole cells or inside them). */
function occurrences(tables: Map<string, Record<string, unknown>[]>, id: Uint8Array): Cell[] {
  const needle = Buffer.from(id);
  const out: Cell[] = [];
  for (const [table, rows] of tables) {
    for (const row of rows) {
      for (const [column, v] of Object.entries(row)) {
        const hay = v instanceof Uint8Array ? Buffer.from(v) : typeof v === 'string' ? Buffer.from(v, 'latin1') : null;
        if (hay !== null && hay.includes(needle)) out.push({ table, column, row });
      }
    }
  }
  return out;
}

test('R7: the database ties a sender id to its recipient id only in its queue row; the log holds no id', async () => {
  await trafficOnce(); // run by the metrics test already, unless only this test is run
  assert.equal(await stopRelay(relay), 0);
  const db = new Database(join(relay.dataDir, STORE_FILE));
  const tables = new Map<string, Record<string, unknown>[]>();
  try {
    db.pragma('query_only = ON');
    const names = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'", { pluck: true }).all() as string[];
    assert.deepEqual([...names].sort(), ['messages', 'queues']);
    for (const name of names) tables.set(name, db.prepare(`SELECT * FROM "${name}"`).all());
  } finally {
    db.close();
  }
  const where = (c: Cell[]) => c.map((x) => `${x.table}.${x.column}`).sort();
  const liveRcv = new Set(live.map((l) => Buffer.from(l.rcvId).toString('hex')));
  const rcvOf = new Map(live.map((l) => [Buffer.from(l.sndId).toString('hex'), Buffer.from(l.rcvId)]));

  for (const sndId of seen.snd) {
    const c = occurrences(tables, sndId);
    const hex = Buffer.from(sndId).toString('hex');
    if (!rcvOf.has(hex)) {
      assert.deepEqual(where(c), [], 'a deleted queue leaves no row');
      continue;
    }
    assert.deepEqual(where(c), ['queues.snd_id'], 'a sender id is only in its queue row');
    assert.deepEqual(Buffer.from(c[0]!.row['rcv_id'] as Uint8Array), rcvOf.get(hex), 'and that row is its own queue');
  }
  for (const rcvId of seen.rcv) {
    const c = occurrences(tables, rcvId);
    if (!liveRcv.has(Buffer.from(rcvId).toString('hex'))) {
      assert.deepEqual(where(c), [], 'a deleted queue leaves no row');
      continue;
    }
    assert.deepEqual([...new Set(where(c))], where(c).includes('messages.rcv_id') ? ['messages.rcv_id', 'queues.rcv_id'] : ['queues.rcv_id']);
    assert.equal(where(c).filter((w) => w === 'queues.rcv_id').length, 1);
  }
  for (const msgId of seen.msg) {
    const w = where(occurrences(tables, msgId));
    assert.ok(w.every((x) => x === 'messages.msg_id'), `a message id only in messages.msg_id: ${w.join(', ')}`);
  }
  assert.equal(where(occurrences(tables, seen.msg.at(-1)!)).length, 1, 'the unacknowledged message is stored under its id');
  const links = seen.link.map((l) => where(occurrences(tables, l)));
  assert.deepEqual(links, [[], [], [], ['queues.link_id']], 'KEY removed the links of secured queues; the unsecured one keeps its link');
  for (const key of seen.sndKey) {
    const w = where(occurrences(tables, key));
    assert.ok(w.every((x) => x === 'queues.snd_auth_key'), `a sender key only in queues.snd_auth_key: ${w.join(', ')}`);
  }

  // No value of a sender-side column appears in a recipient-side column, or the other way round.
  const senderSide = ['queues.snd_id', 'queues.snd_auth_key'];
  const recipientSide = ['queues.rcv_id', 'queues.rcv_sig_key', 'queues.rcv_auth_key', 'queues.box_key', 'queues.link_id', 'messages.rcv_id', 'messages.msg_id', 'messages.body'];
  const valuesOf = (col: string): Buffer[] => {
    const [table, column] = col.split('.') as [string, string];
    return (tables.get(table) ?? []).map((r) => r[column]).filter((v): v is Uint8Array => v instanceof Uint8Array).map((v) => Buffer.from(v));
  };
  for (const s of senderSide) {
    for (const v of valuesOf(s)) {
      for (const r of recipientSide) {
        assert.ok(!valuesOf(r).some((x) => x.includes(v)), `a ${s} value appears in ${r}`);
      }
    }
  }
  for (const r of ['queues.rcv_id', 'messages.msg_id']) {
    for (const v of valuesOf(r)) for (const s of senderSide) assert.ok(!valuesOf(s).some((x) => x.includes(v)), `a ${r} value appears in ${s}`);
  }

  // A deleted queue leaves no trace in the files either (deleted content is overwritten).
  const files = readdirSync(relay.dataDir).filter((f) => f.startsWith(STORE_FILE));
  const raw = Buffer.concat(files.map((f) => readFileSync(join(relay.dataDir, f))));
  for (const id of [...seen.rcv, ...seen.snd]) {
    const hex = Buffer.from(id).toString('hex');
    if (liveRcv.has(hex) || rcvOf.has(hex)) continue;
    assert.ok(!raw.includes(Buffer.from(id)), 'the id of a deleted queue is not in the store files');
  }

  // The log: events and counts only.
  const log = relay.log.join('');
  assert.ok(log.includes('relay started') && log.includes('relay stopped'), 'the log was captured');
  for (const line of log.trimEnd().split('\n')) assert.doesNotThrow(() => JSON.parse(line), `a JSON log line: ${line}`);
  for (const id of [...seen.rcv, ...seen.snd, ...seen.msg, ...seen.link, ...seen.sndKey]) {
    for (const s of idSpellings(id)) assert.ok(!log.includes(s), 'no id in the log');
    assert.ok(!log.includes(Buffer.from(id).toString('latin1')), 'no raw id in the log');
  }
  assert.ok(!log.includes('127.0.0.1'), 'no address in the log');
});
