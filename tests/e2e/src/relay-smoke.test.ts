// SPDX-License-Identifier: AGPL-3.0-or-later
// The shortest complete use of a relay: create, secure, send, receive, acknowledge, stop.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { RelayClient, RelayClientError, openDelivered } from '@murmure/agent';
import { generateDhKeyPair } from '@murmure/queue-crypto';

import { Inbox, cleanup, startRelay, stopRelay, utf8, type RelayProcess } from './harness.js';

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
