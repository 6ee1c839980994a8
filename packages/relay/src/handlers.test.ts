// SPDX-License-Identifier: AGPL-3.0-or-later
// The key check of a command that reads its queue first runs in the turn that starts the
// command (turns.ts): before handle() returns, where the store answers at once.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { AUTHENTICATOR_LENGTH, CORR_ID_LENGTH, ID_LENGTH, RELAY_VERSION_MAX, SESSION_ID_LENGTH, SIGNATURE_LENGTH, encodeCommand, type ClientTransmission, type Command } from '@murmure/protocol';
import { generateDhKeyPair, randomId } from '@murmure/queue-crypto';

import { relayConfig } from './config.js';
import type { Connection } from './connection.js';
import { RelayHandlers } from './handlers.js';
import { silentLogger } from './log.js';
import { RelayMetrics } from './metrics.js';
import type { QueueStore } from './store/queue-store.js';
import { SqliteQueueStore } from './store/sqlite/sqlite-queue-store.js';

/** A connection as the handlers see it, counting the uses of its session key and session id. */
function countingConnection() {
  const sessionKey = generateDhKeyPair();
  const sessionId = randomId(SESSION_ID_LENGTH);
  const uses = { agreements: 0, boundChecks: 0 };
  const conn = {
    version: RELAY_VERSION_MAX,
    authKeys: new Map(),
    fetched: new Map(),
    subscriptions: new Set(),
    isClosed: false,
    queuesCreated: 0,
    // Read once per key agreement (authenticatorValid).
    get sessionPrivateKey() {
      uses.agreements++;
      return sessionKey.privateKey;
    },
    // Read by every check (authorizedBytes; an authenticator's key derivation reads it too).
    get sessionId() {
      uses.boundChecks++;
      return sessionId;
    },
    error() {},
    respond() {},
    end() {},
  };
  return { conn: conn as unknown as Connection, uses };
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
async function checkedInTheTurn(store: QueueStore, n: number): Promise<Map<string, { kind: string; agreements: number; boundChecks: number; refused: number }>> {
  const handlers = new RelayHandlers(store, relayConfig('/nonexistent'), new RelayMetrics(), silentLogger);
  const out = new Map<string, { kind: string; agreements: number; boundChecks: number; refused: number }>();
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

test('with a store that answers at once, every key check of a command that reads its queue runs before handle() returns: inside the turn that started it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'murmure-handlers-'));
  const store = SqliteQueueStore.open({ path: join(dir, 'relay.db') });
  try {
    for (const [name, r] of await checkedInTheTurn(store, 20)) {
      assert.equal(r.refused, 20, `${name}: every one refused (ERR AUTH)`);
      if (r.kind === 'authenticator') assert.equal(r.agreements, 20, `${name}: every key agreement made in the turn`);
      else assert.equal(r.boundChecks, 20, `${name}: every signature checked in the turn`);
    }
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('with a store that must wait, the same checks run once its reads are answered, and refuse the same', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'murmure-handlers-'));
  const inner = SqliteQueueStore.open({ path: join(dir, 'relay.db') });
  // Only the asynchronous reads: as a database server's store would offer.
  const waiting = new Proxy(inner, {
    get: (target, prop) => {
      if (prop === 'queueByRecipientNow' || prop === 'queueBySenderNow') return undefined;
      const v = Reflect.get(target, prop) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  try {
    for (const [name, r] of await checkedInTheTurn(waiting, 20)) {
      assert.equal(r.refused, 20, `${name}: every one refused (ERR AUTH)`);
      assert.deepEqual([r.agreements, r.boundChecks], [0, 0], `${name}: no check before the read is answered`);
    }
  } finally {
    await inner.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
