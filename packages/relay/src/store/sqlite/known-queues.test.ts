// SPDX-License-Identifier: AGPL-3.0-or-later
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';

import type { StoredMessage } from '../queue-store.js';
import { KNOWN_BYTES_PER_QUEUE, KNOWN_MESSAGES_PER_QUEUE, KnownQueues } from './known-queues.js';

const msg = (size = 16): StoredMessage => ({ msgId: new Uint8Array(randomBytes(24)), receivedAt: 0, sealed: new Uint8Array(size) });
const ids = (ms: readonly StoredMessage[] | undefined): string[] | undefined => ms?.map((m) => Buffer.from(m.msgId).toString('hex'));

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
  assert.deepEqual(k.size, { queues: 1, bytes: 16 });
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
  const k = new KnownQueues(3, 100);
  for (const q of ['a', 'b', 'c']) k.learn(q, []);
  k.messages('a');
  k.learn('d', []);
  assert.equal(k.messages('b'), undefined, 'b was used longest ago');
  assert.deepEqual(['a', 'c', 'd'].map((q) => k.messages(q) !== undefined), [true, true, true]);
  k.added('c', msg(60));
  k.added('d', msg(60));
  assert.deepEqual(['a', 'c', 'd'].map((q) => k.messages(q) !== undefined), [false, false, true], '120 bytes: a, then c, used before d, go');
  assert.deepEqual(k.size, { queues: 1, bytes: 60 });
  k.clear();
  assert.deepEqual(k.size, { queues: 0, bytes: 0 });
});
