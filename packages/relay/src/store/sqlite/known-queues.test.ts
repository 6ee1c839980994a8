// SPDX-License-Identifier: AGPL-3.0-or-later
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';

import type { StoredMessage } from '../queue-store.js';
import { KNOWN_BYTES_PER_QUEUE, KNOWN_MESSAGES_PER_QUEUE, KnownQueues } from './known-queues.js';

const msg = (size = 16): StoredMessage => ({ msgId: new Uint8Array(randomBytes(24)), receivedAt: 0, sealed: new Uint8Array(size) });
const ids = (ms: readonly StoredMessage[] | undefined): string[] | undefined => ms?.map((m) => Buffer.from(m.msgId).toString('hex'));

test('a message added is kept in buffers of its own', () => {
  const k = new KnownQueues();
  k.learn('q', []);
  const m = msg();
  k.added('q', m);
  const idBefore = Buffer.from(m.msgId).toString('hex');
  m.sealed.fill(1);
  m.msgId.fill(0);
  const [kept] = k.messages('q')!;
  assert.deepEqual([...kept!.sealed], new Array(16).fill(0));
  assert.equal(Buffer.from(kept!.msgId).toString('hex'), idBefore);
});

test('a learned queue follows the commits made to it: added behind, removed by id, forgotten on a deletion it does not hold', () => {
  const k = new KnownQueues();
  assert.equal(k.messages('q'), undefined, 'unknown until learned');
  const [a, b, c] = [msg(), msg(), msg()];
  k.learn('q', [a!]);
  k.added('q', b!);
  k.added('other', c!);
  assert.deepEqual(ids(k.messages('q')), ids([a!, b!]));
  assert.equal(k.messages('other'), undefined, 'a queue never learned stays unknown');
  k.removed('q', a!.msgId);
  assert.deepEqual(ids(k.messages('q')), ids([b!]));
  assert.equal(k.size.queues, 1);
  k.removed('q', c!.msgId);
  assert.equal(k.messages('q'), undefined, 'a deletion of a message it does not hold means the entry was wrong');
  assert.deepEqual(k.size, { queues: 0, bytes: 0 });
});

test('a queue over KNOWN_MESSAGES_PER_QUEUE messages or KNOWN_BYTES_PER_QUEUE bytes is not kept', () => {
  const k = new KnownQueues();
  k.learn('many', Array.from({ length: KNOWN_MESSAGES_PER_QUEUE + 1 }, () => msg()));
  assert.equal(k.messages('many'), undefined);
  k.learn('full', Array.from({ length: KNOWN_MESSAGES_PER_QUEUE }, () => msg()));
  k.added('full', msg());
  assert.equal(k.messages('full'), undefined, 'forgotten when a message takes it over');
  k.learn('big', [msg(KNOWN_BYTES_PER_QUEUE)]);
  assert.equal(k.messages('big')?.length, 1);
  k.added('big', msg(1));
  assert.equal(k.messages('big'), undefined);
  assert.deepEqual(k.size, { queues: 0, bytes: 0 });
});

test('past its limits of queues and bytes, the queue used longest ago is dropped first', () => {
  const empty = new KnownQueues();
  empty.learn('x', []);
  const entryBytes = empty.size.bytes;
  empty.added('x', msg(60));
  const withMessage = empty.size.bytes;
  assert.ok(entryBytes > 0 && withMessage > entryBytes + 60, 'an entry and a message count for more than their sealed bytes');
  const k = new KnownQueues(3, 3 * entryBytes + (withMessage - entryBytes) + 10);
  for (const q of ['a', 'b', 'c']) k.learn(q, []);
  k.messages('a');
  k.learn('d', []);
  assert.equal(k.messages('b'), undefined, 'b was used longest ago');
  assert.deepEqual(['a', 'c', 'd'].map((q) => k.messages(q) !== undefined), [true, true, true]);
  k.added('c', msg(60));
  k.added('d', msg(60));
  assert.deepEqual(['a', 'c', 'd'].map((q) => k.messages(q) !== undefined), [false, true, true], 'one message too many: a, used before c and d, goes');
  k.added('a', msg(1));
  k.added('d', msg(60));
  assert.deepEqual(['c', 'd'].map((q) => k.messages(q) !== undefined), [false, true], 'and then c');
  assert.equal(k.size.queues, 1);
  k.clear();
  assert.deepEqual(k.size, { queues: 0, bytes: 0 });
});
