// SPDX-License-Identifier: AGPL-3.0-or-later
// The plain loopback mode used by benchmarks that compare servers with TLS off: it serves the
// same protocol over ws://, binds commands to a session id derived from the relay's session key
// and the connection's nonce, and is refused anywhere but on a loopback host.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';

import { RelayClient, RelayClientError, openDelivered } from '@murmure/agent';
import { BLOCK_SIZE, RELAY_VERSION_MAX, encodeServerHello, pad } from '@murmure/protocol';
import { generateDhKeyPair, randomId } from '@murmure/queue-crypto';
import { WebSocketServer } from 'ws';

import { Inbox, cleanup, runMurmure, startRelay, stopRelay, tempDir, utf8, type RelayProcess } from './harness.js';
import { RawClient, codeOf } from './wire.js';

let relay: RelayProcess;
before(async () => {
  relay = await startRelay({ args: ['--plain-loopback'] });
});
after(async () => {
  assert.equal(await stopRelay(relay), 0, 'SIGTERM exits with 0');
  cleanup(relay.dataDir);
});

test('a plain loopback relay carries the full queue life cycle over ws://', async () => {
  const alice = await RelayClient.connect(relay.address, { plain: true });
  const bob = await RelayClient.connect(relay.address, { plain: true });
  const q = await alice.createQueue();
  const inbox = new Inbox(alice);
  await alice.subscribe(q);
  const senderKey = generateDhKeyPair();
  await bob.send(q.sndId, null, utf8('confirmation'));
  await alice.secure(q, senderKey.publicKey);
  await bob.send(q.sndId, senderKey.privateKey, utf8('hello'));
  await inbox.waitFor(1);
  const first = inbox.messages[0]!;
  assert.equal(Buffer.from(openDelivered(q, first.msgId, first.body).body).toString(), 'confirmation');
  await alice.ack(q, first.msgId);
  await inbox.waitFor(2);
  const second = inbox.messages[1]!;
  assert.equal(Buffer.from(openDelivered(q, second.msgId, second.body).body).toString(), 'hello');
  await alice.ack(q, second.msgId);
  assert.notDeepEqual(alice.sessionId, bob.sessionId, 'each connection has its own session id');
  alice.close();
  bob.close();
});

test('plain connections share the relay session key, not the session id: a command captured on one is refused on another', async () => {
  const owner = await RelayClient.connect(relay.address, { plain: true });
  const q = await owner.createQueue();
  const senderKey = generateDhKeyPair();
  await owner.secure(q, senderKey.publicKey);
  let a = await RawClient.open(relay.port, { plain: true });
  const b = await RawClient.open(relay.port, { plain: true });
  if (!Buffer.from(a.hello.sessionKey).equals(b.hello.sessionKey)) {
    // The key's period ended between the two opens; the next connection is in b's period.
    a.close();
    a = await RawClient.open(relay.port, { plain: true });
  }
  assert.deepEqual(Buffer.from(a.hello.sessionKey), Buffer.from(b.hello.sessionKey), 'one session key serves the connections of a period');
  assert.notDeepEqual(Buffer.from(a.hello.sessionNonce), Buffer.from(b.hello.sessionNonce), 'each connection gets its own nonce');
  assert.notDeepEqual(Buffer.from(a.sessionId), Buffer.from(b.sessionId), 'so each has its own session id');

  const send = a.build(q.sndId, { type: 'SEND', flags: 0, body: utf8('once') }, { kind: 'authenticator', key: senderKey.privateKey });
  assert.equal(codeOf(await a.send(send)), 'OK');
  assert.equal(codeOf(await b.send(send)), 'AUTH', 'SEND replayed on another connection');
  const sub = a.build(q.rcvId, { type: 'SUB' }, { kind: 'authenticator', key: q.authKey.privateKey });
  assert.equal(codeOf(await b.send(sub)), 'AUTH', 'SUB replayed on another connection');
  const del = a.build(q.rcvId, { type: 'DEL' }, { kind: 'signature', key: q.sigKey.privateKey });
  assert.equal(codeOf(await b.send(del)), 'AUTH', 'DEL replayed on another connection');

  const first = await owner.get(q);
  assert.ok(first !== null);
  assert.equal(Buffer.from(openDelivered(q, first.msgId, first.body).body).toString(), 'once');
  await owner.ack(q, first.msgId);
  assert.equal(await owner.get(q), null, 'the replayed SEND stored nothing');
  a.close();
  b.close();
  owner.close();
});

test('a TLS client cannot talk to a plain relay, and a plain client refuses a non-loopback host', async () => {
  await assert.rejects(RelayClient.connect(relay.address, { timeoutMs: 3000 }), (e) => RelayClientError.is(e));
  const remote = relay.address.replace('@127.0.0.1:', '@192.0.2.1:');
  await assert.rejects(RelayClient.connect(remote, { plain: true }), (e) => RelayClientError.is(e, 'PINNING'));
});

test('murmure relay start refuses --plain-loopback on a non-loopback host', async () => {
  const dir = tempDir();
  try {
    const r = await runMurmure(['relay', 'start', '--data', dir, '--host', '0.0.0.0', '--port', '0', '--plain-loopback']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--plain-loopback needs a loopback --host/);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  } finally {
    cleanup(dir);
  }
});

test('a relay that speaks only newer protocol versions is refused with RELAY_TOO_NEW, an unusable hello with HANDSHAKE', async () => {
  // A stand-in relay on loopback that sends a given hello block and nothing else.
  const serve = async (hello: Uint8Array): Promise<{ address: string; close: () => void }> => {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await once(wss, 'listening');
    wss.on('connection', (ws) => ws.send(hello));
    const port = (wss.address() as AddressInfo).port;
    return { address: relay.address.replace(/@127\.0\.0\.1:\d+$/, `@127.0.0.1:${port}`), close: () => wss.close() };
  };
  const newer = await serve(
    encodeServerHello({ versions: { min: RELAY_VERSION_MAX + 1, max: RELAY_VERSION_MAX + 2 }, sessionKey: generateDhKeyPair().publicKey, sessionNonce: randomId(32) }),
  );
  const garbage = await serve(pad(new Uint8Array([0x5a, 0x5a]), BLOCK_SIZE));
  try {
    await assert.rejects(RelayClient.connect(newer.address, { plain: true, timeoutMs: 3000 }), (e) => {
      assert.ok(RelayClientError.is(e, 'RELAY_TOO_NEW'), String(e));
      assert.match(e.message, /newer client/);
      return true;
    });
    await assert.rejects(RelayClient.connect(garbage.address, { plain: true, timeoutMs: 3000 }), (e) => RelayClientError.is(e, 'HANDSHAKE'));
  } finally {
    newer.close();
    garbage.close();
  }
});
