// SPDX-License-Identifier: AGPL-3.0-or-later
// The key check of a command that reads its queue first runs in the turn that starts the
// command (turns.ts): before handle() returns, where the store answers at once; and the
// connection learns its outcome then, passing only by a key the relay stores for a queue.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import {
  AUTHENTICATOR_LENGTH,
  CORR_ID_LENGTH,
  ID_LENGTH,
  RELAY_VERSION_MAX,
  SESSION_ID_LENGTH,
  SIGNATURE_LENGTH,
  authorizedBytes,
  encodeCommand,
  type ClientTransmission,
  type Command,
  type Response,
} from '@murmure/protocol';
import { agree, authenticate, authenticatorKey, generateDhKeyPair, generateSigningKeyPair, randomId, signBytes } from '@murmure/queue-crypto';

import { relayConfig } from './config.js';
import type { Connection } from './connection.js';
import { RelayHandlers } from './handlers.js';
import { silentLogger } from './log.js';
import { RelayMetrics } from './metrics.js';
import { SessionKey } from './session-keys.js';
import type { QueueStore } from './store/queue-store.js';
import { SqliteQueueStore } from './store/sqlite/sqlite-queue-store.js';

/** A session key that counts its key agreements. */
class CountingSessionKey extends SessionKey {
  made = 0;
  override agree(peer: Uint8Array): Uint8Array | null {
    this.made++;
    return super.agree(peer);
  }
}

/**
 * A connection as the handlers see it, counting the uses of its session key (its own, or one it
 * shares with other connections of a period) and session id.
 */
function countingConnection(sessionKey = new CountingSessionKey(generateDhKeyPair())) {
  const sessionId = randomId(SESSION_ID_LENGTH);
  const uses = {
    // Every key agreement of the session key (authenticatorValid).
    get agreements() {
      return sessionKey.made;
    },
    boundChecks: 0,
    passed: 0,
    failed: 0,
  };
  const conn = {
    version: RELAY_VERSION_MAX,
    authKeys: new Map(),
    fetched: new Map(),
    subscriptions: new Set(),
    isClosed: false,
    queuesCreated: 0,
    sessionKey,
    // Read by every check (authorizedBytes; an authenticator's key derivation reads it too).
    get sessionId() {
      uses.boundChecks++;
      return sessionId;
    },
    keyChecked(passed: boolean) {
      if (passed) uses.passed++;
      else uses.failed++;
    },
    error() {},
    respond() {},
    end() {},
  };
  return { conn: conn as unknown as Connection, uses, sessionPublicKey: sessionKey.publicKey };
}

function transmission(cmd: Command, auth: ClientTransmission['auth']): ClientTransmission {
  return { auth, corrId: randomId(CORR_ID_LENGTH), entityId: randomId(ID_LENGTH), command: encodeCommand(cmd) };
}

const COMMANDS: [string, Command, 'signature' | 'authenticator'][] = [
  ['SUB', { type: 'SUB' }, 'authenticator'],
  ['GET', { type: 'GET' }, 'authenticator'],
  ['ACK', { type: 'ACK', msgId: new Uint8Array(ID_LENGTH) }, 'authenticator'],
  ['SEND', { type: 'SEND', flags: 0, body: new Uint8Array(10) }, 'authenticator'],
  ['DEL', { type: 'DEL' }, 'signature'],
  ['OFF', { type: 'OFF' }, 'signature'],
  ['KEY', { type: 'KEY', sndAuthKey: generateDhKeyPair().publicKey }, 'signature'],
];

/** Runs `n` commands of each kind for unknown ids with bad keys; what was checked before handle() returned. */
type TurnUses = { kind: string; agreements: number; boundChecks: number; passed: number; failed: number; refused: number };
async function checkedInTheTurn(store: QueueStore, n: number): Promise<Map<string, TurnUses>> {
  const handlers = new RelayHandlers(store, relayConfig('/nonexistent'), new RelayMetrics(), silentLogger);
  const out = new Map<string, TurnUses>();
  for (const [name, cmd, kind] of COMMANDS) {
    const { conn, uses } = countingConnection();
    const pending: Promise<boolean>[] = [];
    for (let i = 0; i < n; i++) {
      const bytes = randomId(kind === 'signature' ? SIGNATURE_LENGTH : AUTHENTICATOR_LENGTH);
      pending.push(handlers.handle(conn, transmission(cmd, { kind, bytes })));
    }
    // What ran before any of them waited: the turn's share.
    const inTurn = { ...uses };
    const refused = (await Promise.all(pending)).filter((r) => r).length;
    out.set(name, { kind, ...inTurn, refused });
  }
  return out;
}

/** Runs `f` on a SQLite store in a fresh folder; closes and deletes it after. */
async function withSqliteStore(f: (store: SqliteQueueStore) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'murmure-handlers-'));
  const store = SqliteQueueStore.open({ path: join(dir, 'relay.db') });
  try {
    await f(store);
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

test('with a store that answers at once, every key check of a command that reads its queue runs before handle() returns: inside the turn that started it', () =>
  withSqliteStore(async (store) => {
    for (const [name, r] of await checkedInTheTurn(store, 20)) {
      assert.equal(r.refused, 20, `${name}: every one refused (ERR AUTH)`);
      if (r.kind === 'authenticator') assert.equal(r.agreements, 20, `${name}: every key agreement made in the turn`);
      else assert.equal(r.boundChecks, 20, `${name}: every signature checked in the turn`);
      // The connection learns each failure in the turn too: its exception from the source's
      // budget of refusals ends before the next command starts.
      assert.deepEqual([r.failed, r.passed], [20, 0], `${name}: every failed check told to the connection in the turn`);
    }
  }));

test('with a store that must wait, the same checks run once its reads are answered, and refuse the same', () =>
  withSqliteStore(async (inner) => {
    // Only the asynchronous reads: as a database server's store would offer.
    const waiting = new Proxy(inner, {
      get: (target, prop) => {
        if (prop === 'queueByRecipientNow' || prop === 'queueBySenderNow') return undefined;
        const v = Reflect.get(target, prop) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    for (const [name, r] of await checkedInTheTurn(waiting, 20)) {
      assert.equal(r.refused, 20, `${name}: every one refused (ERR AUTH)`);
      assert.deepEqual([r.agreements, r.boundChecks, r.failed], [0, 0, 0], `${name}: no check before the read is answered`);
    }
  }));

test('a connection passes a check only when a key stored for a queue accepts its command: not by a NEW with its own key, nor by a PING with any authorisation; a NEW with a bad signature fails one', () =>
  withSqliteStore(async (store) => {
    const handlers = new RelayHandlers(store, relayConfig('/nonexistent'), new RelayMetrics(), silentLogger);
    const { conn, uses, sessionPublicKey } = countingConnection();
    let ids: Uint8Array | undefined;
    (conn as unknown as { respond: (c: Uint8Array, e: Uint8Array, r: Response) => void }).respond = (_c, _e, r) => {
      if (r.type === 'IDS') ids = r.rcvId;
    };
    const sig = generateSigningKeyPair();
    const auth = generateDhKeyPair();
    const newCmd = encodeCommand({ type: 'NEW', rcvSigKey: sig.publicKey, rcvAuthKey: auth.publicKey, rcvDhKey: generateDhKeyPair().publicKey });
    const corrId = randomId(CORR_ID_LENGTH);
    const data = authorizedBytes(conn.sessionId, corrId, new Uint8Array(0), newCmd);
    assert.equal(await handlers.handle(conn, { auth: { kind: 'signature', bytes: signBytes(sig.privateKey, data) }, corrId, entityId: new Uint8Array(0), command: newCmd }), false);
    assert.ok(ids !== undefined, 'the queue was made');
    const ping = transmission({ type: 'PING' }, { kind: 'signature', bytes: randomId(SIGNATURE_LENGTH) });
    assert.equal(await handlers.handle(conn, { ...ping, entityId: new Uint8Array(0) }), false);
    assert.deepEqual([uses.passed, uses.failed], [0, 0], 'neither a NEW nor a PING checked a stored key');
    // A SUB of the new queue, authorised with its recipient key: checked against the stored key.
    const sub = encodeCommand({ type: 'SUB' });
    const subCorr = randomId(CORR_ID_LENGTH);
    const key = authenticatorKey(agree(auth.privateKey, sessionPublicKey) as Uint8Array, conn.sessionId);
    const mac = authenticate(key, authorizedBytes(conn.sessionId, subCorr, ids, sub));
    const pending = handlers.handle(conn, { auth: { kind: 'authenticator', bytes: mac }, corrId: subCorr, entityId: ids, command: sub });
    assert.deepEqual([uses.passed, uses.failed], [1, 0], 'the pass is told before handle() returns');
    assert.equal(await pending, false);
    // A NEW whose signature fails its own key is a failed check, told before handle() returns.
    const badNew = handlers.handle(conn, { auth: { kind: 'signature', bytes: randomId(SIGNATURE_LENGTH) }, corrId: randomId(CORR_ID_LENGTH), entityId: new Uint8Array(0), command: newCmd });
    assert.deepEqual([uses.passed, uses.failed], [1, 1]);
    assert.equal(await badNew, true, 'refused (ERR AUTH)');
  }));

test('a passing check keeps its agreement for the connections of the period, sparing the queue holder one; a failed check keeps none and costs one agreement, for a used queue, an unused one or none', () =>
  withSqliteStore(async (store) => {
    const handlers = new RelayHandlers(store, relayConfig('/nonexistent'), new RelayMetrics(), silentLogger);
    const shared = new CountingSessionKey(generateDhKeyPair());
    /** Two queues made on a connection of the period: one its holder will use, one nobody will. */
    const made: Uint8Array[] = [];
    const auth = generateDhKeyPair();
    const maker = countingConnection(shared);
    (maker.conn as unknown as { respond: (c: Uint8Array, e: Uint8Array, r: Response) => void }).respond = (_c, _e, r) => {
      if (r.type === 'IDS') made.push(r.rcvId);
    };
    for (let i = 0; i < 2; i++) {
      const sig = generateSigningKeyPair();
      const cmd = encodeCommand({ type: 'NEW', rcvSigKey: sig.publicKey, rcvAuthKey: i === 0 ? auth.publicKey : generateDhKeyPair().publicKey, rcvDhKey: generateDhKeyPair().publicKey });
      const corrId = randomId(CORR_ID_LENGTH);
      const data = authorizedBytes(maker.conn.sessionId, corrId, new Uint8Array(0), cmd);
      assert.equal(await handlers.handle(maker.conn, { auth: { kind: 'signature', bytes: signBytes(sig.privateKey, data) }, corrId, entityId: new Uint8Array(0), command: cmd }), false);
    }
    const [used, unused] = made as [Uint8Array, Uint8Array];
    /** A SUB of `rcvId` on a new connection of the period: what it cost in agreements, whether it was refused, what is kept after it. */
    const sub = async (rcvId: Uint8Array, right: boolean): Promise<{ agreements: number; refused: boolean; kept: number }> => {
      const { conn } = countingConnection(shared);
      const before = shared.made;
      const cmd = encodeCommand({ type: 'SUB' });
      const corrId = randomId(CORR_ID_LENGTH);
      const key = authenticatorKey(agree((right ? auth : generateDhKeyPair()).privateKey, shared.publicKey) as Uint8Array, conn.sessionId);
      const mac = authenticate(key, authorizedBytes(conn.sessionId, corrId, rcvId, cmd));
      const refused = await handlers.handle(conn, { auth: { kind: 'authenticator', bytes: mac }, corrId, entityId: rcvId, command: cmd });
      return { agreements: shared.made - before, refused, kept: shared.size };
    };
    assert.deepEqual(await sub(unused, false), { agreements: 1, refused: true, kept: 0 }, 'a wrong key keeps nothing');
    assert.deepEqual(await sub(randomId(ID_LENGTH), false), { agreements: 1, refused: true, kept: 0 }, 'nor does a queue that does not exist (the dummy key)');
    assert.deepEqual(await sub(used, true), { agreements: 1, refused: false, kept: 1 }, 'the first SUB of the period agrees, and keeps it');
    assert.deepEqual(await sub(used, true), { agreements: 0, refused: false, kept: 1 }, 'its holder reconnecting: the kept agreement');
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(await sub(used, false), { agreements: 1, refused: true, kept: 1 }, 'a wrong key on the used queue: made again');
      assert.deepEqual(await sub(unused, false), { agreements: 1, refused: true, kept: 1 }, 'a wrong key on the unused queue');
      assert.deepEqual(await sub(randomId(ID_LENGTH), false), { agreements: 1, refused: true, kept: 1 }, 'a queue that does not exist');
    }
    assert.deepEqual(await sub(used, true), { agreements: 0, refused: false, kept: 1 }, 'the holder still spared');
    shared.retire();
    assert.deepEqual(await sub(used, true), { agreements: 1, refused: false, kept: 0 }, 'a retired key agrees every time and keeps nothing');
  }));
