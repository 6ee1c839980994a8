// SPDX-License-Identifier: AGPL-3.0-or-later
// What a relay keeps and logs (DESIGN "Relay": an untrusted mailbox; THREATS R7, D1 on the relay
// side). After a session of traffic whose bodies are test-encrypted and carry 'CANARY-…' markers,
// the raw bytes of every file in the relay's data folder (store, WAL, keys) hold no marker and
// no part of any body as the sender sent it (the relay boxes what it stores), and its stderr log
// holds none of those either, nor the client's IP address, nor any queue or message id in raw,
// hex or base64 form. Positive controls show the search does find what the store does hold.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';

import { RelayClient, RelayClientError, openDelivered, type PushedMessage } from '@murmure/agent';
import { generateDhKeyPair } from '@murmure/queue-crypto';

import { cleanup, launchRelay, seededRandom, signalRelay, sleep, tempDir, testOpen, testSeal, utf8 } from './harness.js';

/** What the session sent and saw, to look for afterwards. */
type Session = {
  /** The plaintext markers inside the test-encrypted bodies. */
  markers: string[];
  /** Every SEND body exactly as the client put it on the wire. */
  sentBodies: Uint8Array[];
  /** Recipient and sender ids of every queue, and every message id the relay handed out. */
  ids: Uint8Array[];
  /** Sealed bodies of messages the relay still stores, exactly as it delivered them. */
  storedSealed: Uint8Array[];
  /** Recipient ids of the queues that still exist. */
  liveRcvIds: Uint8Array[];
};

const SLICE = 32;

/** Cuts `b` into SLICE-byte pieces (the last one ends at the end), so a body split over pages is still found. */
function slices(b: Uint8Array): Buffer[] {
  const out: Buffer[] = [];
  const buf = Buffer.from(b);
  if (buf.length <= SLICE) return [buf];
  for (let i = 0; i + SLICE <= buf.length; i += SLICE) out.push(buf.subarray(i, i + SLICE));
  out.push(buf.subarray(buf.length - SLICE));
  return out;
}

/**
 * The first needle found in `hay`, or null. Needles are at least 4 bytes long; they are indexed
 * by their first 4 bytes, so the scan is one pass over `hay` however many needles there are.
 */
function findAny(hay: Buffer, needles: readonly Buffer[]): Buffer | null {
  const index = new Map<number, Buffer[]>();
  for (const n of needles) {
    if (n.length < 4) throw new Error('needles must be at least 4 bytes');
    const k = n.readUInt32LE(0);
    const list = index.get(k);
    if (list === undefined) index.set(k, [n]);
    else list.push(n);
  }
  for (let i = 0; i + 4 <= hay.length; i++) {
    const list = index.get(hay.readUInt32LE(i));
    if (list === undefined) continue;
    for (const n of list) if (i + n.length <= hay.length && hay.compare(n, 0, n.length, i, i + n.length) === 0) return n;
  }
  return null;
}

/** Every file under `dir`, by relative path. */
function readTree(dir: string, prefix = ''): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) for (const [k, v] of readTree(p, `${prefix}${name}/`)) out.set(k, v);
    else out.set(`${prefix}${name}`, readFileSync(p));
  }
  return out;
}

/** The forms an id could take in a text log. */
function idForms(id: Uint8Array): Buffer[] {
  const b = Buffer.from(id);
  return [b, b.toString('hex'), b.toString('hex').toUpperCase(), b.toString('base64'), b.toString('base64url')].map((x) => (typeof x === 'string' ? Buffer.from(x) : x));
}

/**
 * A session over three queues: one drained and acknowledged, one left full, one unsecured whose
 * confirmation is fetched with GET and left unacknowledged; plus commands the relay refuses.
 */
async function session(address: string, seed: number): Promise<Session> {
  const rng = seededRandom(seed);
  const key = randomBytes(32);
  const s: Session = { markers: [], sentBodies: [], ids: [], storedSealed: [], liveRcvIds: [] };
  const body = (): Uint8Array => {
    const marker = `CANARY-${randomBytes(8).toString('hex')}`;
    s.markers.push(marker);
    // Sizes from a line to most of a block, so some bodies span several database pages.
    const plain = utf8(`${marker} ${'m'.repeat(Math.floor(rng() * 11_000))} ${marker}`);
    const sealed = testSeal(key, plain);
    s.sentBodies.push(sealed);
    return sealed;
  };

  const alice = await RelayClient.connect(address, fromClient);
  const bob = await RelayClient.connect(address, fromClient);
  const carol = await RelayClient.connect(address, fromClient);
  const drained = await alice.createQueue();
  const kept = await alice.createQueue();
  const unsecured = await carol.createQueue();
  const dKey = generateDhKeyPair();
  const kKey = generateDhKeyPair();
  await alice.secure(drained, dKey.publicKey);
  await alice.secure(kept, kKey.publicKey);
  for (const q of [drained, kept, unsecured]) s.ids.push(q.rcvId, q.sndId);

  // Queue 1: every message delivered and acknowledged.
  const got: PushedMessage[] = [];
  alice.on('message', (m: PushedMessage) => {
    got.push(m);
    s.ids.push(m.msgId);
    const open = testOpen(key, openDelivered(drained, m.msgId, m.body).body);
    assert.ok(open !== null && Buffer.from(open).toString().startsWith('CANARY-'), 'the subscriber opens what was sent');
    void alice.ack(drained, m.msgId);
  });
  await alice.subscribe(drained);
  const count = 12;
  for (let i = 0; i < count; i++) await bob.send(drained.sndId, dKey.privateKey, body());
  for (let i = 0; i < 400 && got.length < count; i++) await sleep(10);
  assert.equal(got.length, count, 'every message of the drained queue arrived');

  // Queue 2: messages left stored.
  for (let i = 0; i < count; i++) await bob.send(kept.sndId, kKey.privateKey, body());

  // Queue 3: an unauthorised confirmation, fetched with GET and not acknowledged.
  await bob.send(unsecured.sndId, null, body());
  const fetched = await carol.get(unsecured);
  assert.ok(fetched !== null, 'GET returns the confirmation');
  s.ids.push(fetched.msgId);
  s.storedSealed.push(fetched.body);

  // Commands the relay refuses: a SEND to an unknown queue, an ACK of a message not held.
  await assert.rejects(bob.send(randomBytes(24), kKey.privateKey, body()), (e) => RelayClientError.is(e));
  await assert.rejects(alice.ack(kept, randomBytes(24)), (e) => RelayClientError.is(e));

  // A second reader of the kept queue sees its oldest stored message (sealed as it is at rest).
  const reader = await RelayClient.connect(address, fromClient);
  const oldest = await reader.get(kept);
  assert.ok(oldest !== null, 'the kept queue holds messages');
  s.ids.push(oldest.msgId);
  s.storedSealed.push(oldest.body);
  reader.terminate();
  s.liveRcvIds.push(drained.rcvId, kept.rcvId, unsecured.rcvId);

  await alice.ping();
  alice.close();
  bob.close();
  carol.close();
  return s;
}

/**
 * The clients connect from 127.0.0.2 while the relay listens on 127.0.0.1, so finding the
 * client's address cannot be confused with the relay's own.
 */
const CLIENT_ADDRESS = '127.0.0.2';
/** The local address of each client connection, as it connected. */
const clientAddresses: (string | undefined)[] = [];
const fromClient = {
  createConnection: (o: ConnectionOptions): TLSSocket => {
    const tcp = netConnect({ host: o.host ?? '127.0.0.1', port: o.port ?? 0, localAddress: CLIENT_ADDRESS });
    tcp.once('connect', () => clientAddresses.push(tcp.localAddress));
    return tlsConnect({ ...o, socket: tcp });
  },
};

async function runAndInspect(stop: 'SIGTERM' | 'SIGKILL', seed: number): Promise<{ files: Map<string, Buffer>; log: Buffer; s: Session }> {
  const dataDir = tempDir('murmure-privacy-');
  try {
    const relay = await launchRelay({ dataDir, args: ['--log-level', 'debug'] });
    const s = await session(relay.address, seed);
    assert.deepEqual(clientAddresses.splice(0), Array(4).fill(CLIENT_ADDRESS), 'the four clients connected from their own address');
    await sleep(50);
    const code = await signalRelay(relay, stop);
    assert.equal(code, stop === 'SIGTERM' ? 0 : 'SIGKILL', `the relay stopped by ${stop}`);
    return { files: readTree(dataDir), log: Buffer.concat(relay.stderrBytes), s };
  } finally {
    cleanup(dataDir);
  }
}

function checkNothingLeaks(files: Map<string, Buffer>, log: Buffer, s: Session): void {
  const markers = s.markers.map((m) => Buffer.from(m));
  const bodySlices = s.sentBodies.flatMap(slices);
  assert.ok(files.has('relay.sqlite'), 'the store is in the data folder');
  // Positive controls: the search finds what the store must hold (ids as raw blobs, and the
  // relay-sealed bodies it delivered), so the absences below mean something.
  const all = Buffer.concat([...files.values()]);
  for (const id of s.liveRcvIds) assert.ok(findAny(all, [Buffer.from(id)]) !== null, 'a live queue id is found in the store');
  for (const sealed of s.storedSealed) assert.ok(findAny(all, slices(sealed)) !== null, 'a stored sealed body is found in the store');

  for (const [name, bytes] of files) {
    assert.equal(findAny(bytes, markers)?.toString() ?? null, null, `${name} holds no plaintext marker`);
    assert.equal(findAny(bytes, bodySlices) === null, true, `${name} holds no part of any SEND body as sent`);
    assert.equal(bytes.includes(CLIENT_ADDRESS), false, `${name} holds no client address`);
  }

  const text = log.toString('utf8');
  assert.match(text, /relay started/, 'the log was captured');
  assert.equal(findAny(log, markers)?.toString() ?? null, null, 'the log holds no marker');
  assert.equal(findAny(log, bodySlices) === null, true, 'the log holds no part of any body');
  assert.equal(text.includes(CLIENT_ADDRESS), false, 'the log holds no client address');
  assert.equal(log.includes(Buffer.from([127, 0, 0, 2])), false, 'the log holds no client address in binary form');
  const idNeedles = s.ids.flatMap(idForms);
  const found = findAny(log, idNeedles);
  assert.equal(found === null, true, `the log holds no queue or message id (found ${found?.toString('hex')})`);
}

test('after a session and a clean stop, no file of the relay and not its log holds a marker, a sent body, the client address or an id', async () => {
  const { files, log, s } = await runAndInspect('SIGTERM', 0x9a1);
  assert.equal(files.has('relay.sqlite-wal'), false, 'a clean stop leaves no WAL');
  assert.match(log.toString(), /relay stopped/, 'the whole log was captured');
  checkNothingLeaks(files, log, s);
});

test('after kill -9, the store, its WAL and shared-memory files and the log leak nothing either', async () => {
  const { files, log, s } = await runAndInspect('SIGKILL', 0x9a2);
  assert.ok(files.has('relay.sqlite-wal') && files.get('relay.sqlite-wal')!.length > 0, 'the WAL is left on disk to inspect');
  checkNothingLeaks(files, log, s);
});
