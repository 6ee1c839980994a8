// SPDX-License-Identifier: AGPL-3.0-or-later
// Bad input to a real relay process: garbage and wrong-sized frames, text frames, truncated and
// malformed blocks, unknown tags, wrong signatures, commands replayed on another TLS session,
// commands on other people's queues, plain HTTP and stalled TLS handshakes. Each gets an ERR or
// a close; none crashes the relay or disturbs a client that keeps sending and receiving
// throughout (checked after every test).
import assert from 'node:assert/strict';
import { request } from 'node:https';
import { connect as netConnect, type Socket } from 'node:net';
import { after, afterEach, before, test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';

import { RelayClient, openDelivered, type PushedMessage, type RecipientQueue } from '@murmure/agent';
import {
  BLOCK_SIZE,
  CORR_ID_LENGTH,
  MAX_MESSAGE_BODY,
  PAD_BYTE,
  Writer,
  encodeBlock,
  encodeCommand,
  pad,
  type Command,
} from '@murmure/protocol';
import { generateDhKeyPair, generateSigningKeyPair, randomId, type KeyPair } from '@murmure/queue-crypto';
import fc from 'fast-check';

import { cleanup, sleep, startRelay, stopRelay, utf8, type RelayProcess } from './harness.js';
import { NO_ENTITY, RawClient, codeOf, withTimeout, type RawAuth, type Reply } from './wire.js';

const HANDSHAKE_TIMEOUT_MS = 1500;

/** A pair of clients that keep a conversation going through the relay for the whole file. */
class Chatter {
  sent = 0;
  received = 0;
  readonly errors: string[] = [];
  private running = true;
  private loop: Promise<void> = Promise.resolve();

  private constructor(
    readonly recipient: RelayClient,
    readonly sender: RelayClient,
    readonly q: RecipientQueue,
    readonly key: KeyPair,
  ) {}

  static async start(address: string): Promise<Chatter> {
    const recipient = await RelayClient.connect(address);
    const sender = await RelayClient.connect(address);
    const q = await recipient.createQueue();
    const key = generateDhKeyPair();
    await recipient.secure(q, key.publicKey);
    const c = new Chatter(recipient, sender, q, key);
    recipient.on('message', (m: PushedMessage) => c.onMessage(m));
    await recipient.subscribe(q);
    c.loop = c.run();
    return c;
  }

  private onMessage(m: PushedMessage): void {
    const body = Buffer.from(openDelivered(this.q, m.msgId, m.body).body).toString();
    if (body !== `chat ${this.received}`) this.errors.push(`expected chat ${this.received}, got ${body}`);
    this.received++;
    this.recipient.ack(this.q, m.msgId).catch((e: Error) => this.errors.push(`ACK failed: ${e.message}`));
  }

  private async run(): Promise<void> {
    while (this.running) {
      try {
        await this.sender.send(this.q.sndId, this.key.privateKey, utf8(`chat ${this.sent}`));
        this.sent++;
      } catch (e) {
        this.errors.push(`SEND failed: ${(e as Error).message}`);
        return;
      }
      await sleep(10);
    }
  }

  /** Resolves once `n` more messages went through. */
  async progress(n = 3): Promise<void> {
    const target = this.received + n;
    const deadline = Date.now() + 10_000;
    while (this.received < target) {
      assert.deepEqual(this.errors, []);
      assert.ok(Date.now() < deadline, `the chatting client made no progress (${this.received}/${target})`);
      await sleep(10);
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
    const deadline = Date.now() + 10_000;
    while (this.received < this.sent && Date.now() < deadline) await sleep(10);
    this.recipient.close();
    this.sender.close();
  }
}

let relay: RelayProcess;
let chatter: Chatter;
let owner: RelayClient;

before(async () => {
  relay = await startRelay({ args: ['--handshake-timeout-ms', String(HANDSHAKE_TIMEOUT_MS)] });
  chatter = await Chatter.start(relay.address);
  owner = await RelayClient.connect(relay.address);
});

afterEach(async () => {
  assert.equal(relay.proc.exitCode, null, 'the relay process is alive');
  assert.equal(relay.proc.signalCode, null, 'the relay process is alive');
  await chatter.progress();
  assert.ok(!chatter.recipient.isClosed && !chatter.sender.isClosed, "the chatting client's connections stay open");
});

after(async () => {
  await chatter.stop();
  owner.close();
  assert.deepEqual(chatter.errors, []);
  assert.ok(chatter.sent > 50, `the chatting client kept going (${chatter.sent} messages)`);
  assert.equal(chatter.received, chatter.sent, 'every message sent during the bad input was received, once');
  assert.equal(await stopRelay(relay), 0, 'the relay still stops cleanly');
  assert.ok(!relay.log.join('').includes('"level":"error"'), `no error in the relay log: ${relay.log.join('')}`);
  cleanup(relay.dataDir);
});

/** Asserts the connection still answers a PING. */
async function answersPing(c: RawClient): Promise<void> {
  assert.equal(codeOf(await c.request(NO_ENTITY, { type: 'PING' }, { kind: 'none' })), 'PONG');
}

/** A block with exactly `content` after its 2-byte length prefix, `#`-padded. */
function blockOf(content: Uint8Array): Uint8Array {
  return pad(content, BLOCK_SIZE);
}

function errCodes(rs: readonly Reply[]): string[] {
  return rs.map(codeOf);
}

async function ownQueue(): Promise<{ q: RecipientQueue; sender: KeyPair }> {
  const q = await owner.createQueue();
  const sender = generateDhKeyPair();
  await owner.secure(q, sender.publicKey);
  return { q, sender };
}

test('garbage block-size frames: before the hello ERR VERSION and close, after it ERR BLOCK and close', async () => {
  const early = await RawClient.open(relay.port, { hello: false });
  early.sendFrame(randomId(BLOCK_SIZE));
  assert.equal((await early.waitClosed(5000)).code, 1002);
  assert.deepEqual(errCodes(early.unsolicited), ['VERSION']);

  await fc.assert(
    fc.asyncProperty(fc.uint8Array({ minLength: BLOCK_SIZE, maxLength: BLOCK_SIZE }), async (frame) => {
      const c = await RawClient.open(relay.port);
      c.sendFrame(frame);
      const ping = c.build(NO_ENTITY, { type: 'PING' }, { kind: 'none' });
      const pong = c.reply(ping.corrId).catch(() => null);
      c.sendTransmissions([ping.bytes]);
      const r = await pong;
      if (r === null) {
        // Refused: an ERR BLOCK first, then a policy close.
        assert.equal((await c.waitClosed(5000)).code, 1008);
        assert.deepEqual(errCodes(c.unsolicited), ['BLOCK']);
      } else {
        assert.equal(codeOf(r), 'PONG');
        c.close();
      }
      assert.deepEqual(c.badFrames, []);
    }),
    { numRuns: 25, seed: 20261126 },
  );
});

test('blocks with valid framing but random transmissions get ERR answers, never a crash', async () => {
  const transmission = fc.oneof(
    fc.uint8Array({ minLength: 1, maxLength: 200 }),
    fc
      .record({
        kind: fc.constantFrom(0, 1, 2, 3),
        auth: fc.uint8Array({ minLength: 0, maxLength: 64 }),
        corrId: fc.uint8Array({ minLength: CORR_ID_LENGTH, maxLength: CORR_ID_LENGTH }),
        entityLen: fc.constantFrom(0, 24, 5, 255),
        entity: fc.uint8Array({ minLength: 0, maxLength: 24 }),
        tag: fc.integer({ min: 0, max: 15 }),
        rest: fc.uint8Array({ minLength: 0, maxLength: 120 }),
      })
      .map(({ kind, auth, corrId, entityLen, entity, tag, rest }) =>
        new Writer(512).u8(kind).bytes(auth).bytes(corrId).u8(entityLen).bytes(entity).u8(tag).bytes(rest).finish(),
      ),
  );
  let c = await RawClient.open(relay.port);
  let answers = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(transmission, { minLength: 1, maxLength: 8 }), async (ts) => {
      if (c.isClosed) c = await RawClient.open(relay.port);
      const before = c.unsolicited.length;
      const ping = c.build(NO_ENTITY, { type: 'PING' }, { kind: 'none' });
      const pong = c.reply(ping.corrId);
      c.sendTransmissions([...ts, ping.bytes]);
      assert.equal(codeOf(await pong), 'PONG', 'the connection keeps answering after bad transmissions');
      answers += c.unsolicited.length - before;
      assert.deepEqual(c.badFrames, []);
    }),
    { numRuns: 150, seed: 42 },
  );
  assert.ok(answers > 0, 'bad transmissions were answered with errors');
  await answersPing(c);
  c.close();
});

test('frames of the wrong size are closed: 0, 1 and BLOCK_SIZE - 1 bytes with 1008, BLOCK_SIZE + 1 bytes and 1 MiB with 1009', async () => {
  for (const [size, code] of [
    [0, 1008],
    [1, 1008],
    [BLOCK_SIZE - 1, 1008],
    [BLOCK_SIZE + 1, 1009],
    [1 << 20, 1009],
  ] as const) {
    const c = await RawClient.open(relay.port);
    await answersPing(c);
    c.sendFrame(new Uint8Array(size).fill(PAD_BYTE));
    assert.equal((await c.waitClosed(5000)).code, code, `a frame of ${size} bytes`);
  }
  // The same before the hello.
  const early = await RawClient.open(relay.port, { hello: false });
  early.sendFrame(new Uint8Array(BLOCK_SIZE + 1));
  assert.equal((await early.waitClosed(5000)).code, 1009);
});

test('text frames are closed with 1008', async () => {
  for (const t of ['hello', '#'.repeat(BLOCK_SIZE)]) {
    const c = await RawClient.open(relay.port);
    c.sendFrame(t, false);
    assert.equal((await c.waitClosed(5000)).code, 1008);
  }
  const early = await RawClient.open(relay.port, { hello: false });
  early.sendFrame('#'.repeat(BLOCK_SIZE), false);
  assert.equal((await early.waitClosed(5000)).code, 1008);
});

test('truncated blocks and blocks with a huge declared length: ERR BLOCK, then a close', async () => {
  const ping = (c: RawClient) => c.build(NO_ENTITY, { type: 'PING' }, { kind: 'none' }).bytes;
  const bad: [string, (c: RawClient) => Uint8Array][] = [
    ['declared content length 0xFFFF', () => new Uint8Array(BLOCK_SIZE).fill(0xff)],
    ['declared content length one over the block', () => Uint8Array.from([...[(BLOCK_SIZE - 1) >>> 8, (BLOCK_SIZE - 1) & 0xff], ...new Uint8Array(BLOCK_SIZE - 2).fill(PAD_BYTE)])],
    ['count says 2, one transmission present', (c) => blockOf(new Writer(256).u8(2).longBytes(ping(c), 16_000, 't').finish())],
    ['transmission length beyond the content', (c) => blockOf(new Writer(256).u8(1).u16(5000).bytes(ping(c)).finish())],
    ['transmission length 0xFFFF', () => blockOf(new Writer(8).u8(1).u16(0xffff).u8(0).finish())],
    ['no transmission', () => blockOf(Uint8Array.of(0))],
    ['65 transmissions', (c) => blockOf(new Writer(8000).u8(65).bytes(new Writer(8000).longBytes(ping(c), 100, 't').finish()).finish())],
    ['empty content', () => blockOf(new Uint8Array(0))],
    ['fill that is not #', (c) => {
      const b = encodeBlock([ping(c)]);
      b[BLOCK_SIZE - 1] = 0;
      return b;
    }],
    ['trailing bytes after the transmissions', (c) => blockOf(new Writer(256).u8(1).longBytes(ping(c), 16_000, 't').u8(7).finish())],
  ];
  for (const [what, make] of bad) {
    const c = await RawClient.open(relay.port);
    c.sendFrame(make(c));
    assert.equal((await c.waitClosed(5000)).code, 1008, what);
    assert.deepEqual(errCodes(c.unsolicited), ['BLOCK'], what);
  }
});

test('a truncated transmission in a well-formed block gets ERR BLOCK and the connection goes on', async () => {
  const c = await RawClient.open(relay.port);
  const full = c.build(NO_ENTITY, { type: 'PING' }, { kind: 'none' }).bytes;
  for (const cut of [1, 10, 25, 26]) {
    const before = c.unsolicited.length;
    const p = c.build(NO_ENTITY, { type: 'PING' }, { kind: 'none' });
    const pong = c.reply(p.corrId);
    c.sendTransmissions([full.subarray(0, cut), p.bytes]);
    assert.equal(codeOf(await pong), 'PONG', `cut at ${cut}`);
    assert.deepEqual(errCodes(c.unsolicited.slice(before)), ['BLOCK'], `cut at ${cut}`);
  }
  // Unknown auth kind, and an entity id of a length other than 0 or 24.
  const t = c.build(NO_ENTITY, { type: 'PING' }, { kind: 'none' }).bytes;
  const badKind = Uint8Array.from(t);
  badKind[0] = 3;
  const badEntity = new Writer(64).u8(0).bytes(randomId(CORR_ID_LENGTH)).u8(5).bytes(randomId(5)).u8(0x0b).finish();
  const before = c.unsolicited.length;
  c.sendTransmissions([badKind, badEntity]);
  await answersPing(c);
  assert.deepEqual(errCodes(c.unsolicited.slice(before)), ['BLOCK', 'BLOCK']);
  c.close();
});

test('unknown command tags, trailing bytes and oversized bodies get ERR CMD or LARGE_MSG with the corrId', async () => {
  const c = await RawClient.open(relay.port);
  for (const tag of [0x00, 0x0c, 0x7f, 0x81, 0x87, 0xff]) {
    const r = await c.request(NO_ENTITY, Uint8Array.of(tag), { kind: 'none' });
    assert.equal(codeOf(r), 'CMD', `tag ${tag}`);
  }
  assert.equal(codeOf(await c.request(NO_ENTITY, Uint8Array.of(0x0b, 0x00), { kind: 'none' })), 'CMD', 'PING with a trailing byte');
  assert.equal(codeOf(await c.request(NO_ENTITY, Uint8Array.of(0x02, 1, 2, 3), { kind: 'none' })), 'CMD', 'KEY with a short key');
  const big = new Writer(16_200).u8(0x08).u8(0).longBytes(new Uint8Array(MAX_MESSAGE_BODY + 1), 20_000, 'body').finish();
  const { q, sender } = await ownQueue();
  assert.equal(codeOf(await c.request(q.sndId, big, { kind: 'authenticator', key: sender.privateKey })), 'LARGE_MSG');
  const newWithEntity = encodeCommand({ type: 'NEW', rcvSigKey: randomId(32), rcvAuthKey: randomId(32), rcvDhKey: randomId(32) });
  assert.equal(codeOf(await c.request(randomId(), newWithEntity, { kind: 'none' })), 'CMD', 'NEW with an entity id');
  const sig = generateSigningKeyPair();
  const zeroDh = encodeCommand({ type: 'NEW', rcvSigKey: sig.publicKey, rcvAuthKey: new Uint8Array(32), rcvDhKey: new Uint8Array(32) });
  assert.equal(codeOf(await c.request(NO_ENTITY, zeroDh, { kind: 'signature', key: sig.privateKey })), 'CMD', 'NEW with a low-order DH key');
  const zeroAuth = encodeCommand({ type: 'NEW', rcvSigKey: sig.publicKey, rcvAuthKey: new Uint8Array(32), rcvDhKey: generateDhKeyPair().publicKey });
  assert.equal(codeOf(await c.request(NO_ENTITY, zeroAuth, { kind: 'signature', key: sig.privateKey })), 'CMD', 'NEW with a low-order authenticator key');
  // KEY with a sender key of low order (here the point of order 8 with u = 1) is refused and
  // leaves the queue unsecured: the right key is taken afterwards.
  const unsecured = await owner.createQueue();
  const lowOrder = new Uint8Array(32);
  lowOrder[0] = 1;
  const signedByOwner: RawAuth = { kind: 'signature', key: unsecured.sigKey.privateKey };
  assert.equal(codeOf(await c.request(unsecured.rcvId, { type: 'KEY', sndAuthKey: lowOrder }, signedByOwner)), 'CMD', 'KEY with a low-order key');
  const good = generateDhKeyPair();
  assert.equal(codeOf(await c.request(unsecured.rcvId, { type: 'KEY', sndAuthKey: good.publicKey }, signedByOwner)), 'OK', 'KEY with a usable key after it');
  await chatter.sender.send(unsecured.sndId, good.privateKey, utf8('secured with the second key'));
  const badSigKey = encodeCommand({ type: 'NEW', rcvSigKey: new Uint8Array(32).fill(0xff), rcvAuthKey: randomId(32), rcvDhKey: randomId(32) });
  assert.equal(codeOf(await c.request(NO_ENTITY, badSigKey, { kind: 'raw', auth: { kind: 'signature', bytes: randomId(64) } })), 'AUTH', 'NEW with an invalid key');
  await answersPing(c);
  c.close();
});

test('wrong signatures and authenticators get ERR AUTH and change nothing', async () => {
  const { q, sender } = await ownQueue();
  const c = await RawClient.open(relay.port);
  const mallory = generateSigningKeyPair();
  const malloryDh = generateDhKeyPair();
  const cases: [string, Command, RawAuth, Uint8Array?][] = [
    ['KEY signed by another key', { type: 'KEY', sndAuthKey: malloryDh.publicKey }, { kind: 'signature', key: mallory.privateKey }],
    ['KEY with random signature bytes', { type: 'KEY', sndAuthKey: malloryDh.publicKey }, { kind: 'raw', auth: { kind: 'signature', bytes: randomId(64) } }],
    ['KEY with a zero signature', { type: 'KEY', sndAuthKey: malloryDh.publicKey }, { kind: 'raw', auth: { kind: 'signature', bytes: new Uint8Array(64) } }],
    ['KEY with an authenticator', { type: 'KEY', sndAuthKey: malloryDh.publicKey }, { kind: 'authenticator', key: q.authKey.privateKey }],
    ['DEL unsigned', { type: 'DEL' }, { kind: 'none' }],
    ['DEL signed by another key', { type: 'DEL' }, { kind: 'signature', key: mallory.privateKey }],
    ['OFF signed by another key', { type: 'OFF' }, { kind: 'signature', key: mallory.privateKey }],
    ['SUB with a wrong authenticator', { type: 'SUB' }, { kind: 'authenticator', key: malloryDh.privateKey }],
    ['SUB with random authenticator bytes', { type: 'SUB' }, { kind: 'raw', auth: { kind: 'authenticator', bytes: randomId(32) } }],
    ['SUB signed instead of authenticated', { type: 'SUB' }, { kind: 'signature', key: q.sigKey.privateKey }],
    ['GET with a wrong authenticator', { type: 'GET' }, { kind: 'authenticator', key: malloryDh.privateKey }],
    ['SEND with a wrong authenticator', { type: 'SEND', flags: 0, body: utf8('x') }, { kind: 'authenticator', key: malloryDh.privateKey }, q.sndId],
    ['SEND signed by the recipient', { type: 'SEND', flags: 0, body: utf8('x') }, { kind: 'signature', key: q.sigKey.privateKey }, q.sndId],
    ['SEND with the sender key used for a signature', { type: 'SEND', flags: 0, body: utf8('x') }, { kind: 'raw', auth: { kind: 'signature', bytes: randomId(64) } }, q.sndId],
  ];
  for (const [what, cmd, auth, entity] of cases) {
    assert.equal(codeOf(await c.request(entity ?? q.rcvId, cmd, auth)), 'AUTH', what);
  }
  // The queue is intact: the owner subscribes, the real sender sends.
  const got = new Promise<PushedMessage>((r) => owner.once('message', r));
  await owner.subscribe(q);
  await chatter.sender.send(q.sndId, sender.privateKey, utf8('still works'));
  const m = await got;
  assert.equal(Buffer.from(openDelivered(q, m.msgId, m.body).body).toString(), 'still works');
  await owner.ack(q, m.msgId);
  c.close();
});

test('a signed or authenticated command captured on one connection is refused (AUTH) on another', async () => {
  const { q, sender } = await ownQueue();
  const a = await RawClient.open(relay.port);
  const b = await RawClient.open(relay.port);
  assert.notDeepEqual(Buffer.from(a.sessionId), Buffer.from(b.sessionId), 'each TLS session exports its own id');

  // KEY with the same key is idempotent, so a refusal on B can only come from the session binding.
  const key = a.build(q.rcvId, { type: 'KEY', sndAuthKey: sender.publicKey }, { kind: 'signature', key: q.sigKey.privateKey });
  assert.equal(codeOf(await a.send(key)), 'OK');
  assert.equal(codeOf(await b.send(key)), 'AUTH', 'KEY replayed on another connection');
  assert.equal(codeOf(await b.request(q.rcvId, { type: 'KEY', sndAuthKey: sender.publicKey }, { kind: 'signature', key: q.sigKey.privateKey })), 'OK');

  const send = a.build(q.sndId, { type: 'SEND', flags: 0, body: utf8('once') }, { kind: 'authenticator', key: sender.privateKey });
  assert.equal(codeOf(await a.send(send)), 'OK');
  assert.equal(codeOf(await b.send(send)), 'AUTH', 'SEND replayed on another connection');

  const sub = a.build(q.rcvId, { type: 'SUB' }, { kind: 'authenticator', key: q.authKey.privateKey });
  assert.equal(codeOf(await b.send(sub)), 'AUTH', 'SUB replayed on another connection');

  const del = a.build(q.rcvId, { type: 'DEL' }, { kind: 'signature', key: q.sigKey.privateKey });
  assert.equal(codeOf(await b.send(del)), 'AUTH', 'DEL replayed on another connection');
  // Only one message was stored and the queue still exists.
  const first = await owner.get(q);
  assert.ok(first !== null);
  assert.equal(Buffer.from(openDelivered(q, first.msgId, first.body).body).toString(), 'once');
  await owner.ack(q, first.msgId);
  assert.equal(await owner.get(q), null, 'the replayed SEND stored nothing');
  a.close();
  b.close();
});

test("commands on other people's queues get AUTH; ids of one side do not work on the other", async () => {
  const { q, sender } = await ownQueue();
  const mallory = await RelayClient.connect(relay.address);
  const mine = await mallory.createQueue();
  // Mallory's own keys on Alice's recipient id.
  const stolen: RecipientQueue = { ...mine, rcvId: q.rcvId, sndId: q.sndId };
  const attempts: [string, () => Promise<unknown>][] = [
    ['SUB', () => mallory.subscribe(stolen)],
    ['GET', () => mallory.get(stolen)],
    ['ACK', () => mallory.ack(stolen, randomId())],
    ['KEY', () => mallory.secure(stolen, generateDhKeyPair().publicKey)],
    ['OFF', () => mallory.suspend(stolen)],
    ['DEL', () => mallory.deleteQueue(stolen)],
    ['LSET', () => mallory.setLink(stolen, randomId(), utf8('x'))],
    ['SEND with own key', () => mallory.send(q.sndId, generateDhKeyPair().privateKey, utf8('x'))],
    ['SEND to the recipient id', () => mallory.send(q.rcvId, sender.privateKey, utf8('x'))],
    ['SUB on the sender id', () => mallory.subscribe({ ...q, rcvId: q.sndId })],
    ['DEL on the sender id', () => mallory.deleteQueue({ ...q, rcvId: q.sndId })],
    ['LGET of the recipient id', () => mallory.getLink(q.rcvId)],
  ];
  for (const [what, f] of attempts) {
    await assert.rejects(f(), (e: Error & { code?: string }) => e.code === 'AUTH', what);
  }
  // Alice's queue is untouched.
  await chatter.sender.send(q.sndId, sender.privateKey, utf8('for alice'));
  const m = await owner.get(q);
  assert.ok(m !== null);
  assert.equal(Buffer.from(openDelivered(q, m.msgId, m.body).body).toString(), 'for alice');
  await owner.ack(q, m.msgId);
  mallory.close();
});

/** Sends `raw` over TLS to the relay and resolves with everything it answered before closing. */
function tlsExchange(port: number, raw: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => s.write(raw));
    let got = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => (got += d));
    s.on('error', () => undefined);
    s.on('close', () => resolve(got));
    setTimeout(() => {
      s.destroy();
      reject(new Error(`no close; got ${JSON.stringify(got)}`));
    }, 8000).unref();
  });
}

test('non-WebSocket HTTP gets 426 or 400 and a close; plain TCP garbage is dropped', async () => {
  // An upgrade offering subprotocols is taken without one (the protocol has none); one that is
  // not a GET gets 405.
  const upgrade = (method: string, extra: string): string =>
    `${method} / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${extra}\r\n`;
  const offered = await tlsExchange(relay.port, upgrade('GET', 'Sec-WebSocket-Protocol: chat, superchat\r\n'));
  assert.match(offered, /^HTTP\/1\.1 101/);
  assert.doesNotMatch(offered.split('\r\n\r\n')[0]!, /sec-websocket-protocol/i, 'no subprotocol chosen');
  assert.match(await tlsExchange(relay.port, upgrade('POST', '')), /^HTTP\/1\.1 405/);
  const status = await new Promise<number>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: relay.port, path: '/', method: 'GET', rejectUnauthorized: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
  assert.equal(status, 426);
  assert.match(await tlsExchange(relay.port, 'POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc'), /^HTTP\/1\.1 426/);
  assert.match(await tlsExchange(relay.port, 'GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'), /^HTTP\/1\.1 400/);
  assert.match(await tlsExchange(relay.port, '\x00\x01\x02garbage\r\n\r\n'), /^HTTP\/1\.1 400/);
  assert.match(await tlsExchange(relay.port, `GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${'a'.repeat(8000)}\r\n\r\n`), /^HTTP\/1\.1 431/);
  // No TLS at all.
  const plain = await new Promise<string>((resolve) => {
    const s = netConnect(relay.port, '127.0.0.1', () => s.write('GET / HTTP/1.1\r\nHost: a\r\n\r\n'));
    let got = '';
    s.on('data', (d) => (got += d.toString('latin1')));
    s.on('error', () => undefined);
    s.on('close', () => resolve(got));
  });
  assert.ok(!plain.startsWith('HTTP'), 'no HTTP answer without TLS');
});

test('a TLS client that never completes its handshake is closed by the handshake timeout', async () => {
  const opened = (s: Socket) => new Promise<void>((r) => s.once('connect', () => r()));
  const closed = (s: Socket) => withTimeout(new Promise<void>((r) => s.once('close', () => r())), HANDSHAKE_TIMEOUT_MS + 8000, 'the stalled connection was not closed');
  const silent = netConnect(relay.port, '127.0.0.1');
  const partial = netConnect(relay.port, '127.0.0.1');
  for (const s of [silent, partial]) s.on('error', () => undefined);
  await Promise.all([opened(silent), opened(partial)]);
  // The first bytes of a TLS 1.3 ClientHello record, then nothing.
  partial.write(Buffer.from('160301020001', 'hex'));
  const done = Promise.all([closed(silent), closed(partial)]);
  // Meanwhile the relay serves everyone else.
  const c = await RawClient.open(relay.port);
  await answersPing(c);
  await done;
  await answersPing(c);
  c.close();
});
