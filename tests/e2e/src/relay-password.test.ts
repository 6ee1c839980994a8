// SPDX-License-Identifier: AGPL-3.0-or-later
// A relay whose queue creation needs a password (THREATS S1, "optional create password"): init
// makes and keeps it, start prints it in the address, a NEW without it or with another is refused
// ERR AUTH while sending to the queues made on the relay needs none, version 1 clients keep
// working with open relays, and the password shows in no log.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync, statSync, existsSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';

import { RelayClient, RelayClientError, openDelivered } from '@murmure/agent';
import {
  RELAY_VERSION_MAX,
  V_CREATE_PASSWORD,
  V_INITIAL,
  asciiBytes,
  decodeBlock,
  decodeClientHello,
  decodeClientTransmission,
  decodeCommand,
  encodeBlock,
  encodeCommand,
  encodeResponse,
  encodeServerHello,
  encodeServerTransmission,
  formatRelayAddress,
  parseRelayAddress,
  type Command,
} from '@murmure/protocol';
import { generateDhKeyPair, generateSigningKeyPair, randomId } from '@murmure/queue-crypto';
import { WebSocketServer } from 'ws';

import { Inbox, cleanup, runMurmure, startRelay, stopRelay, tempDir, utf8 } from './harness.js';
import { NO_ENTITY, RawClient, codeOf } from './wire.js';

/** Whether creating a queue through `c` with `password` is refused with ERR AUTH. */
async function refused(c: RelayClient, password: string | null): Promise<boolean> {
  try {
    await c.createQueue(password);
    return false;
  } catch (e) {
    if (RelayClientError.is(e, 'AUTH')) return true;
    throw e;
  }
}

/** A NEW over a raw connection that chose `version`, with or without a password field. */
async function rawNew(port: number, version: number, password?: string): Promise<string> {
  const raw = await RawClient.open(port, { version });
  try {
    const sig = generateSigningKeyPair();
    const keys = { rcvSigKey: sig.publicKey, rcvAuthKey: generateDhKeyPair().publicKey, rcvDhKey: generateDhKeyPair().publicKey };
    const cmd = password === undefined ? { type: 'NEW' as const, ...keys } : { type: 'NEW' as const, ...keys, password: asciiBytes(password) };
    // Version 1 has no password field: a NEW with one, in version 2's layout, has bytes too many.
    const command = password !== undefined && version < V_CREATE_PASSWORD ? encodeCommand(cmd, V_CREATE_PASSWORD) : cmd;
    return codeOf(await raw.request(NO_ENTITY, command, { kind: 'signature', key: sig.privateKey }));
  } finally {
    raw.close();
  }
}

test('relay init --password random: the address carries the password, relay.json keeps it for its owner only, start serves it', async () => {
  const root = tempDir();
  const dir = join(root, 'relay');
  const log: string[] = [];
  try {
    const init = await runMurmure(['relay', 'init', '--data', dir, '--port', '47130', '--password', 'random', '--json']);
    assert.equal(init.code, 0, init.stderr);
    const address = init.json[0]?.['address'] as string;
    const password = parseRelayAddress(address).password;
    assert.ok(password !== undefined && /^[A-Za-z0-9_-]{32}$/.test(password), `a random password of 192 bits: ${address}`);
    assert.match(address, /^murmure:\/\/[A-Za-z0-9_-]{43}:[A-Za-z0-9_-]{32}@127\.0\.0\.1:47130$/);
    const settings = join(dir, 'relay.json');
    assert.equal(statSync(settings).mode & 0o777, 0o600, 'relay.json is for the owner only');
    assert.equal((JSON.parse(readFileSync(settings, 'utf8')) as { password?: string }).password, password);

    const relay = await startRelay({ dataDir: dir, log });
    try {
      const served = parseRelayAddress(relay.address);
      assert.equal(served.password, password, 'start prints the address with the kept password');
      const alice = await RelayClient.connect(relay.address);
      const bob = await RelayClient.connect(formatRelayAddress(served)); // no password: a sender
      try {
        // The address's password creates queues; none, or another, is refused like a bad key.
        const q = await alice.createQueue();
        assert.equal(await refused(alice, null), true, 'no password: ERR AUTH');
        assert.equal(await refused(alice, `${password}x`), true, 'another password: ERR AUTH');
        assert.equal(await refused(bob, null), true, 'a client without the password cannot create queues');
        assert.equal(await rawNew(relay.port, V_INITIAL), 'AUTH', 'a version 1 client has no password to give');
        assert.equal(await rawNew(relay.port, V_CREATE_PASSWORD, password), 'IDS', 'the password on the wire, version 2');

        // Sending to a queue needs no password: bob's client has none.
        const senderKey = generateDhKeyPair();
        await alice.secure(q, senderKey.publicKey);
        const inbox = new Inbox(alice);
        await alice.subscribe(q);
        await bob.send(q.sndId, senderKey.privateKey, utf8('sent without the password'));
        await inbox.waitFor(1);
        const m = inbox.messages[0]!;
        assert.equal(Buffer.from(openDelivered(q, m.msgId, m.body).body).toString(), 'sent without the password');
      } finally {
        alice.close();
        bob.close();
      }
    } finally {
      assert.equal(await stopRelay(relay), 0);
    }
    assert.ok(!log.join('').includes(password), 'the password is in no log line');
    assert.match(log.join(''), /"createPassword":true/, 'the log says that queue creation needs a password');
  } finally {
    cleanup(root);
  }
});

test('relay start --password overrides the kept password for one run, none opens creation; bad passwords are usage errors', async () => {
  const root = tempDir();
  const dir = join(root, 'relay');
  try {
    const init = await runMurmure(['relay', 'init', '--data', dir, '--password', 'kept-Password.1~']);
    assert.equal(init.code, 0, init.stderr);
    assert.match(init.stdout, /^murmure:\/\/[A-Za-z0-9_-]{43}:kept-Password\.1~@127\.0\.0\.1:5224\n$/);

    const other = await startRelay({ dataDir: dir, args: ['--password', 'for-this-run'] });
    try {
      assert.equal(parseRelayAddress(other.address).password, 'for-this-run');
      const c = await RelayClient.connect(other.address);
      await c.createQueue();
      assert.equal(await refused(c, 'kept-Password.1~'), true, 'the kept password is not the one of this run');
      c.close();
    } finally {
      assert.equal(await stopRelay(other), 0);
    }
    const open = await startRelay({ dataDir: dir, args: ['--password', 'none'] });
    try {
      assert.equal(parseRelayAddress(open.address).password, undefined, 'no password in the address');
      const c = await RelayClient.connect(open.address);
      await c.createQueue();
      await c.createQueue('any'); // a relay without a password takes a NEW with one
      c.close();
      assert.equal(await rawNew(open.port, V_INITIAL), 'IDS', 'version 1 clients keep working with open relays');
      assert.equal(await rawNew(open.port, V_INITIAL, 'pw'), 'CMD', 'version 1 has no password field');
    } finally {
      assert.equal(await stopRelay(open), 0);
    }
    assert.equal((JSON.parse(readFileSync(join(dir, 'relay.json'), 'utf8')) as { password?: string }).password, 'kept-Password.1~', 'start saved nothing');

    const fresh = join(root, 'fresh');
    for (const [cmd, pw, why] of [
      ['init', 'two words', /--password must be 'random' or have 1-128 characters/],
      ['init', 'a'.repeat(129), /--password must be 'random' or have 1-128 characters/],
      ['init', 'pass@word', /--password must be 'random' or have/],
      ['init', 'none', /a new relay has no password unless --password gives one/],
      ['start', 'é', /--password must be 'random', 'none' or have 1-128 characters/],
    ] as const) {
      const r = await runMurmure(['relay', cmd, '--data', fresh, '--password', pw]);
      assert.equal(r.code, 2, `${cmd} --password ${pw}: usage error`);
      assert.match(r.stderr, why);
      assert.equal(existsSync(fresh), false, `${cmd} --password ${pw}: nothing was created`);
    }
  } finally {
    cleanup(root);
  }
});

test('a relay without a password speaks version 1 and 2 and creates queues for both', async () => {
  const relay = await startRelay();
  try {
    assert.equal(RELAY_VERSION_MAX, V_CREATE_PASSWORD);
    assert.equal(parseRelayAddress(relay.address).password, undefined);
    assert.equal(await rawNew(relay.port, V_INITIAL), 'IDS');
    assert.equal(await rawNew(relay.port, V_CREATE_PASSWORD), 'IDS');
  } finally {
    assert.equal(await stopRelay(relay), 0);
    cleanup(relay.dataDir);
  }
});

test('a client given a password, facing a relay of version 1 only, sends NEW in version 1\'s layout, without the password', async () => {
  // A stand-in relay on loopback (plain WebSocket) that speaks version 1 only and answers one NEW.
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await once(wss, 'listening');
  const seen: { version?: number; command?: Command; error?: string } = {};
  wss.on('connection', (ws) => {
    ws.send(encodeServerHello({ versions: { min: V_INITIAL, max: V_INITIAL }, sessionKey: generateDhKeyPair().publicKey, sessionNonce: randomId(32) }));
    ws.on('message', (data: Buffer) => {
      const block = new Uint8Array(data);
      try {
        if (seen.version === undefined) {
          seen.version = decodeClientHello(block).version;
          return;
        }
        for (const raw of decodeBlock(block)) {
          const t = decodeClientTransmission(raw);
          seen.command = decodeCommand(t.command, V_INITIAL); // throws TRAILING on version 2's layout
          const ids = encodeResponse({ type: 'IDS', rcvId: randomId(24), sndId: randomId(24), srvDhKey: generateDhKeyPair().publicKey });
          ws.send(encodeBlock([encodeServerTransmission({ corrId: t.corrId, entityId: t.entityId, response: ids })]));
        }
      } catch (e) {
        seen.error = String(e);
      }
    });
  });
  const fingerprint = new Uint8Array(32);
  const address = formatRelayAddress({ fingerprint, host: '127.0.0.1', port: (wss.address() as AddressInfo).port, password: 'pw' }, { withPassword: true });
  try {
    const c = await RelayClient.connect(address, { plain: true, timeoutMs: 5000, commandTimeoutMs: 5000 });
    try {
      assert.equal(c.version, V_INITIAL);
      const q = await c.createQueue();
      assert.equal(q.rcvId.length, 24);
      assert.equal(seen.error, undefined);
      assert.equal(seen.version, V_INITIAL, 'the client chose version 1');
      assert.equal(seen.command?.type, 'NEW');
      assert.equal(seen.command?.type === 'NEW' ? seen.command.password : 'none', undefined, 'no password field');
    } finally {
      c.close();
    }
  } finally {
    wss.close();
  }
});
