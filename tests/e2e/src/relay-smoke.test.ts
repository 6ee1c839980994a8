// SPDX-License-Identifier: AGPL-3.0-or-later
// The shortest complete use of a relay: create, secure, send, receive, acknowledge, stop.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';

import { RelayClient, RelayClientError, openDelivered } from '@murmure/agent';
import { formatRelayAddress } from '@murmure/protocol';
import { generateDhKeyPair } from '@murmure/queue-crypto';
import { createIdentity } from '@murmure/relay';
import { WebSocketServer } from 'ws';

import { Inbox, cleanup, startRelay, stopRelay, tempDir, utf8, type RelayProcess } from './harness.js';

let relay: RelayProcess;
before(async () => {
  relay = await startRelay();
});
after(async () => {
  assert.equal(await stopRelay(relay), 0, 'SIGTERM exits with 0');
  cleanup(relay.dataDir);
});

test('a message goes from sender to subscriber through a real relay process', async () => {
  const alice = await RelayClient.connect(relay.address);
  const bob = await RelayClient.connect(relay.address);
  const q = await alice.createQueue();
  const inbox = new Inbox(alice);
  await alice.subscribe(q);
  const senderKey = generateDhKeyPair();
  await bob.send(q.sndId, null, utf8('confirmation'));
  await alice.secure(q, senderKey.publicKey);
  await bob.send(q.sndId, senderKey.privateKey, utf8('hello'));
  await inbox.waitFor(1);
  const first = inbox.messages[0]!;
  assert.deepEqual(Buffer.from(openDelivered(q, first.msgId, first.body).body).toString(), 'confirmation');
  await alice.ack(q, first.msgId);
  await inbox.waitFor(2);
  const second = inbox.messages[1]!;
  assert.equal(Buffer.from(openDelivered(q, second.msgId, second.body).body).toString(), 'hello');
  await alice.ack(q, second.msgId);
  alice.close();
  bob.close();
});

test('a relay whose certificate does not match the address is refused before anything is sent', async () => {
  const fp = relay.address.slice('murmure://'.length, relay.address.indexOf('@'));
  const other = fp[0] === 'A' ? `B${fp.slice(1)}` : `A${fp.slice(1)}`;
  const wrong = relay.address.replace(fp, other);
  await assert.rejects(RelayClient.connect(wrong), (e) => RelayClientError.is(e, 'PINNING'));
});

test('the relay refuses a TLS 1.2 handshake', { timeout: 30_000 }, async () => {
  const socket = tlsConnect({ host: '127.0.0.1', port: relay.port, maxVersion: 'TLSv1.2', rejectUnauthorized: false });
  const outcome = await new Promise<NodeJS.ErrnoException | 'secured' | 'closed'>((resolve) => {
    socket.once('secureConnect', () => resolve('secured'));
    socket.once('error', resolve);
    socket.once('close', () => resolve('closed'));
  });
  socket.destroy();
  assert.ok(outcome instanceof Error, `the handshake failed with an error, not: ${String(outcome)}`);
  assert.match(String(outcome.code), /PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL/, String(outcome));
  // The relay is unharmed: a TLS 1.3 client still gets in.
  const c = await RelayClient.connect(relay.address);
  c.close();
});

test('the client refuses a server that offers only TLS 1.2, even with the pinned certificate', async () => {
  const dir = tempDir();
  const identity = await createIdentity(dir);
  const server = createServer({ key: identity.keyPem, cert: identity.certPem, maxVersion: 'TLSv1.2' });
  let secured = 0;
  server.on('secureConnection', () => secured++);
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => ws.close());
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const address = formatRelayAddress({ fingerprint: identity.fingerprint, host: '127.0.0.1', port: (server.address() as AddressInfo).port });
    await assert.rejects(RelayClient.connect(address, { timeoutMs: 5_000 }), (e) => RelayClientError.is(e, 'CLOSED'));
    assert.equal(secured, 0, 'the handshake failed on the version, before any TLS 1.2 session');
  } finally {
    wss.close();
    server.closeAllConnections();
    server.close();
    cleanup(dir);
  }
});
