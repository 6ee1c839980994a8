// SPDX-License-Identifier: AGPL-3.0-or-later
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import Database from '@signalapp/sqlcipher';
import fc from 'fast-check';

import { DAY_MS, dayOf } from '../queue-store.js';
import { WAL_HOLD_PAGES, type Checkpointer } from './checkpointer.js';
import { KNOWN_MESSAGES_PER_QUEUE } from './known-queues.js';
import { EXPIRY_MESSAGES_PER_COMMIT, EXPIRY_QUEUES_PER_COMMIT, LAZY_COMMIT_WRITES, SqliteQueueStore, WAL_SIZE_LIMIT_BYTES, type SqliteStoreOptions, type StoreEvent } from './sqlite-queue-store.js';

const id = (): Uint8Array => new Uint8Array(randomBytes(24));
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** Runs `f` on a store in a fresh folder, opened with `opts`; closes and deletes it after. */
async function withStore(f: (store: SqliteQueueStore, path: string) => Promise<void>, opts: Omit<SqliteStoreOptions, 'path'> = {}): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'murmure-store-'));
  const path = join(dir, 'relay.db');
  const store = SqliteQueueStore.open({ path, ...opts });
  try {
    await f(store, path);
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `withStore`, with one queue created in it. */
function withQueue(f: (store: SqliteQueueStore, rcvId: Uint8Array) => Promise<void>): Promise<void> {
  return withStore(async (store) => {
    const rcvId = id();
    await store.createQueue({ rcvId, sndId: id(), rcvSigKey: id(), rcvAuthKey: id(), boxKey: id() }, Date.now());
    await f(store, rcvId);
  });
}

test('deleting messages by id, oldest first or in any other order, agrees with a list model', async () => {
  // Each step adds a message, deletes the oldest, deletes one further back, or deletes an id the
  // queue does not hold; the store's answers, its oldest messages and its count follow the model.
  const step = fc.oneof(fc.constant({ op: 'add' as const }), fc.constant({ op: 'oldest' as const }), fc.record({ op: fc.constant('other' as const), at: fc.nat() }), fc.constant({ op: 'missing' as const }));
  await fc.assert(
    fc.asyncProperty(fc.array(step, { maxLength: 40 }), async (steps) => {
      await withQueue(async (store, rcvId) => {
        const model: Uint8Array[] = [];
        const now = Date.now();
        for (const s of steps) {
          if (s.op === 'add') {
            const msgId = id();
            assert.equal(await store.addMessage(rcvId, { msgId, receivedAt: now, sealed: msgId }, 1000, now), 'ok');
            model.push(msgId);
          } else {
            const i = s.op === 'oldest' ? 0 : s.op === 'other' ? (model.length === 0 ? -1 : s.at % model.length) : -1;
            const target = i >= 0 && i < model.length ? model[i]! : id();
            assert.equal(await store.deleteMessage(rcvId, target, now), i >= 0 && i < model.length);
            if (i >= 0 && i < model.length) model.splice(i, 1);
          }
        }
        assert.deepEqual((await store.oldestMessages(rcvId, 1000)).map((m) => hex(m.msgId)), model.map(hex));
        assert.equal((await store.queueByRecipient(rcvId))?.msgCount, model.length);
      });
    }),
    { numRuns: 40 },
  );
});

test('what the store keeps in memory of its queues agrees with the file and a list model, through adds, reads (bounded in bytes or not), deletions in any order, failed batches, expiry and deleted queues', async () => {
  // Three queues; after every step each queue's messages, read through the store (from memory
  // once it has read the queue whole) and straight from the file, follow the model.
  const q = fc.nat({ max: 2 });
  // Bytes a read may return past its first message (none: no bound).
  const ahead = fc.option(fc.constantFrom(0, 16, 9000, 20_000), { nil: undefined });
  /** What a read of `limit` messages and `aheadBytes` returns of the model's messages. */
  const expected = (msgs: readonly { msgId: Uint8Array; size: number }[], limit: number, aheadBytes = Infinity): string[] => {
    const out: string[] = [];
    let bytes = 0;
    for (const m of msgs) {
      if (out.length > 0 && (bytes += m.size) > aheadBytes) break;
      out.push(hex(m.msgId));
      if (out.length === limit) break;
    }
    return out;
  };
  const step = fc.oneof(
    fc.record({ op: fc.constant('add' as const), q, old: fc.boolean(), size: fc.constantFrom(16, 9000) }),
    fc.record({ op: fc.constant('read' as const), q, limit: fc.integer({ min: 1, max: 10 }), ahead }),
    fc.record({ op: fc.constant('delete' as const), q, at: fc.nat(), limit: fc.integer({ min: 1, max: 10 }), ahead }),
    fc.record({ op: fc.constant('burst' as const), q, adds: fc.integer({ min: 1, max: 3 }), clash: fc.boolean() }),
    fc.constant({ op: 'expire' as const }),
    fc.record({ op: fc.constant('drop' as const), q, unused: fc.boolean() }),
  );
  await fc.assert(
    fc.asyncProperty(fc.array(step, { maxLength: 30 }), async (steps) => {
      await withStore(async (store, path) => {
        const now = Date.now();
        const cutoff = now - DAY_MS;
        const file = new Database(path);
        try {
          const inFile = file.prepare('SELECT msg_id FROM messages WHERE rcv_id = ? ORDER BY seq', { pluck: true });
          // An unused queue was last used 100 days ago (its messages do not mark it used): expiry
          // deletes it with its messages.
          const newQueue = async (unused = false) => {
            const queue = { rcvId: id(), sndId: id(), usedAt: unused ? now - 100 * DAY_MS : now, msgs: [] as { msgId: Uint8Array; old: boolean; size: number }[] };
            await store.createQueue({ rcvId: queue.rcvId, sndId: queue.sndId, rcvSigKey: id(), rcvAuthKey: id(), boxKey: id() }, queue.usedAt);
            return queue;
          };
          const queues = [await newQueue(), await newQueue(), await newQueue()];
          // Deleted queues: no read finds a message of theirs again.
          const gone: Uint8Array[] = [];
          const add = (i: number, old: boolean, size: number) => {
            const msgId = id();
            queues[i]!.msgs.push({ msgId, old, size });
            return store.addMessage(queues[i]!.rcvId, { msgId, receivedAt: old ? cutoff - 1 : now, sealed: new Uint8Array(size) }, 1000, queues[i]!.usedAt);
          };
          for (const s of steps) {
            if (s.op === 'add') assert.equal(await add(s.q, s.old, s.size), 'ok');
            else if (s.op === 'read') {
              const got = await store.oldestMessages(queues[s.q]!.rcvId, s.limit, s.ahead);
              assert.deepEqual(got.map((m) => hex(m.msgId)), expected(queues[s.q]!.msgs, s.limit, s.ahead));
            } else if (s.op === 'delete') {
              const msgs = queues[s.q]!.msgs;
              const i = msgs.length === 0 ? -1 : s.at % msgs.length;
              const deleted = store.deleteMessage(queues[s.q]!.rcvId, i < 0 ? id() : msgs[i]!.msgId, queues[s.q]!.usedAt);
              if (i >= 0) msgs.splice(i, 1);
              // As after an ACK: the queue is read while its deletion waits for the next commit.
              const during = await store.oldestMessages(queues[s.q]!.rcvId, s.limit, s.ahead);
              assert.deepEqual(during.map((m) => hex(m.msgId)), expected(msgs, s.limit, s.ahead), 'read while the deletion is pending');
              assert.equal(await deleted, i >= 0);
            } else if (s.op === 'burst') {
              // One turn, so one batch: adds, the deletion of the oldest message, and maybe a
              // write that breaks a constraint, which fails the batch's transaction.
              const writes: Promise<unknown>[] = [];
              const oldest = queues[s.q]!.msgs.shift();
              if (oldest !== undefined) writes.push(store.deleteMessage(queues[s.q]!.rcvId, oldest.msgId, queues[s.q]!.usedAt));
              for (let i = 0; i < s.adds; i++) writes.push(add(s.q, false, 16));
              const clash = s.clash
                ? store.createQueue({ rcvId: id(), sndId: queues[0]!.sndId, rcvSigKey: id(), rcvAuthKey: id(), boxKey: id() }, now).then(() => 'made', (e: { code?: string }) => e.code)
                : Promise.resolve('none');
              assert.ok((await Promise.all(writes)).every((r) => r === 'ok' || r === true));
              assert.equal(await clash, s.clash ? 'INTERNAL' : 'none');
            } else if (s.op === 'expire') {
              await store.expire(cutoff, now - 90 * DAY_MS);
              for (const [i, queue] of queues.entries()) {
                queue.msgs = queue.msgs.filter((m) => !m.old);
                if (queue.usedAt === now) continue;
                assert.equal(await store.queueByRecipient(queue.rcvId), undefined, 'the unused queue is gone');
                gone.push(queue.rcvId);
                queues[i] = await newQueue();
              }
            } else {
              await store.deleteQueue(queues[s.q]!.rcvId);
              gone.push(queues[s.q]!.rcvId);
              queues[s.q] = await newQueue(s.unused);
            }
            for (const queue of queues) {
              const want = queue.msgs.map((m) => hex(m.msgId));
              assert.deepEqual((await store.oldestMessages(queue.rcvId, 1000)).map((m) => hex(m.msgId)), want, `after ${s.op}`);
              assert.deepEqual((inFile.all([queue.rcvId] as never) as Uint8Array[]).map(hex), want, `in the file after ${s.op}`);
            }
            for (const rcvId of gone) assert.deepEqual(await store.oldestMessages(rcvId, 10), [], `a deleted queue after ${s.op}`);
          }
        } finally {
          file.close();
        }
      });
    }),
    { numRuns: 100 },
  );
});

/** A new queue of the store holding `n` small messages, made without reading it. */
async function queueOf(store: SqliteQueueStore, n: number, now: number): Promise<Uint8Array> {
  const rcvId = id();
  await store.createQueue({ rcvId, sndId: id(), rcvSigKey: id(), rcvAuthKey: id(), boxKey: id() }, now);
  for (let i = 0; i < n; i++) await store.addMessage(rcvId, { msgId: id(), receivedAt: now, sealed: id() }, 1000, now);
  return rcvId;
}

test('a queue read whole is answered from memory; one holding more than KNOWN_MESSAGES_PER_QUEUE messages is read from the file each time', async () => {
  await withStore(async (store, path) => {
    const now = Date.now();
    const queue = (n: number) => queueOf(store, n, now);
    const small = await queue(1);
    const large = await queue(KNOWN_MESSAGES_PER_QUEUE + 1);
    assert.equal((await store.oldestMessages(small, 10)).length, 1);
    assert.equal((await store.oldestMessages(large, 100)).length, KNOWN_MESSAGES_PER_QUEUE + 1);
    // Rows removed behind the store's back (no relay does this: it alone writes its file) show
    // which answers come from memory.
    const file = new Database(path);
    try {
      file.prepare('DELETE FROM messages WHERE rcv_id IN (?, ?)').run([small, large] as never);
    } finally {
      file.close();
    }
    assert.equal((await store.oldestMessages(small, 10)).length, 1, 'the small queue, from memory');
    assert.equal((await store.oldestMessages(large, 100)).length, 0, 'the large one, from the file');
  });
});

test('a queue holding more than a read asks for, but few enough to keep, is read whole once and then answered from memory', async () => {
  await withStore(async (store, path) => {
    const now = Date.now();
    const queue = (n: number) => queueOf(store, n, now);
    const busy = await queue(10);
    const deep = await queue(KNOWN_MESSAGES_PER_QUEUE + 1);
    // Filled without a read, so the store does not know them yet: the reads of 8 below decide.
    const file = new Database(path);
    const rows = (q: Uint8Array): number => Number(file.prepare('SELECT count(*) FROM messages WHERE rcv_id = ?', { pluck: true }).get([q] as never));
    try {
      const first = await store.oldestMessages(busy, 8);
      assert.equal(first.length, 8);
      assert.equal((await store.oldestMessages(deep, 8)).length, 8);
      file.prepare('DELETE FROM messages WHERE rcv_id IN (?, ?)').run([busy, deep] as never);
      assert.deepEqual([rows(busy), rows(deep)], [0, 0]);
    } finally {
      file.close();
    }
    const again = await store.oldestMessages(busy, 8);
    assert.equal(again.length, 8, 'the queue of 10, from memory');
    assert.equal((await store.oldestMessages(busy, 100)).length, 10, 'whole');
    assert.equal((await store.oldestMessages(deep, 8)).length, 0, `one of ${KNOWN_MESSAGES_PER_QUEUE + 1}, from the file`);
  });
});

test('a deletion is answered once committed, and a second deletion of the same message finds nothing', async () => {
  await withQueue(async (store, rcvId) => {
    const now = Date.now();
    const ids = [id(), id(), id()];
    for (const msgId of ids) await store.addMessage(rcvId, { msgId, receivedAt: now, sealed: msgId }, 10, now);
    const [a, b] = await Promise.all([store.deleteMessage(rcvId, ids[0]!, now), store.deleteMessage(rcvId, ids[0]!, now)]);
    assert.deepEqual([a, b], [true, false]);
    assert.equal(await store.deleteMessage(rcvId, ids[2]!, now), true);
    assert.deepEqual((await store.oldestMessages(rcvId, 10)).map((m) => hex(m.msgId)), [hex(ids[1]!)]);
  });
});

test('deletions after ACK asked for in separate turns share one commit: with the next durable write, after LAZY_COMMIT_MS, or at once past LAZY_COMMIT_WRITES', async () => {
  let commits = 0;
  const turn = (): Promise<void> => new Promise((r) => setImmediate(r));
  // A wait far longer than the test: only a durable write or the count can commit the deletions.
  await withStore(
    async (store) => {
      const rcvId = id();
      await store.createQueue({ rcvId, sndId: id(), rcvSigKey: id(), rcvAuthKey: id(), boxKey: id() }, Date.now());
      const now = Date.now();
      const ids = Array.from({ length: LAZY_COMMIT_WRITES + 6 }, id);
      await Promise.all(ids.map((msgId) => store.addMessage(rcvId, { msgId, receivedAt: now, sealed: msgId }, ids.length, now)));
      commits = 0;
      const settled: boolean[] = [];
      const deletions = ids.slice(0, 5).map(async (msgId, i) => {
        await new Promise((r) => setTimeout(r, i));
        const ok = await store.deleteMessage(rcvId, msgId, now);
        settled[i] = true;
        return ok;
      });
      await new Promise((r) => setTimeout(r, 30));
      for (let i = 0; i < 5; i++) await turn();
      assert.equal(commits, 0, 'five deletions over 30 ms, none committed');
      assert.equal(settled.filter(Boolean).length, 0);
      assert.deepEqual((await store.oldestMessages(rcvId, 2)).map((m) => hex(m.msgId)), [hex(ids[5]!), hex(ids[6]!)], 'reads skip them meanwhile');
      const extra = id();
      await store.addMessage(rcvId, { msgId: extra, receivedAt: now, sealed: extra }, ids.length + 1, now);
      assert.deepEqual(await Promise.all(deletions), [true, true, true, true, true]);
      assert.equal(commits, 1, 'the durable write took them into its commit');
      // Enough of them commit without waiting.
      commits = 0;
      const many = ids.slice(5, 5 + LAZY_COMMIT_WRITES).map((msgId) => store.deleteMessage(rcvId, msgId, now));
      assert.ok((await Promise.all(many)).every((ok) => ok));
      assert.equal(commits, 1);
    },
    { lazyCommitMs: 3_600_000, onCommit: () => void commits++ },
  );
  // With the default wait, a deletion alone commits by itself.
  await withQueue(async (store, rcvId) => {
    const now = Date.now();
    const msgId = id();
    await store.addMessage(rcvId, { msgId, receivedAt: now, sealed: msgId }, 10, now);
    assert.equal(await store.deleteMessage(rcvId, msgId, now), true);
    assert.deepEqual(await store.oldestMessages(rcvId, 10), []);
  });
});

test('a queue record carries the day of its last activity: set at creation, moved by touchQueue and by a message', async () => {
  await withQueue(async (store, rcvId) => {
    const today = dayOf(Date.now());
    assert.equal((await store.queueByRecipient(rcvId))?.activeDay, today);
    const later = Date.now() + 3 * DAY_MS;
    await store.touchQueue(rcvId, later);
    assert.equal((await store.queueByRecipient(rcvId))?.activeDay, today + 3);
    const msgId = id();
    await store.addMessage(rcvId, { msgId, receivedAt: later, sealed: msgId }, 10, Date.now() + 5 * DAY_MS);
    assert.equal((await store.queueByRecipient(rcvId))?.activeDay, today + 5);
  });
});

test('expiry deletes exactly the messages received before the cutoff, in rounds that let the event loop serve, and frees their quota', async () => {
  let commits = 0;
  await withStore(async (store) => {
    const now = Date.now();
    const queues = Array.from({ length: 5 }, id);
    for (const rcvId of queues) await store.createQueue({ rcvId, sndId: id(), rcvSigKey: id(), rcvAuthKey: id(), boxKey: id() }, now);
    // 2.5 commits' worth of old messages and as many new ones, arrival times shuffled over the
    // queues and out of insertion order.
    const total = 5 * EXPIRY_MESSAGES_PER_COMMIT;
    const cutoff = now - DAY_MS;
    const kept = new Map<string, string[]>(queues.map((q) => [hex(q), []]));
    const writes = [];
    for (let i = 0; i < total; i++) {
      const rcvId = queues[(i * 7) % queues.length]!;
      const old = (i * 13) % 2 === 0;
      const receivedAt = old ? cutoff - 1 - ((i * 31) % 10_000) : cutoff + ((i * 17) % 10_000);
      const msgId = id();
      if (!old) kept.get(hex(rcvId))!.push(hex(msgId));
      writes.push(store.addMessage(rcvId, { msgId, receivedAt, sealed: msgId }, total, now));
    }
    await Promise.all(writes);
    const expected = total - [...kept.values()].reduce((n, ids) => n + ids.length, 0);
    // Each round is a commit of its own, and other writes get in between: a message sent once the
    // first round has committed is committed before the last round.
    const before = commits;
    const rounds: number[] = [];
    let sentAfterFirst: Promise<number> | null = null;
    const other = queues[0]!;
    const r = await store.expire(cutoff, now - 90 * DAY_MS, (round) => {
      rounds.push(round.messages);
      if (sentAfterFirst === null) {
        const msgId = id();
        kept.get(hex(other))!.push(hex(msgId));
        sentAfterFirst = new Promise<number>((committed) => void store.addMessage(other, { msgId, receivedAt: now, sealed: msgId }, total * 2, now, () => committed(rounds.length)));
      }
    });
    assert.deepEqual(r, { messages: expected, queues: 0 });
    assert.ok(rounds.every((n) => n <= EXPIRY_MESSAGES_PER_COMMIT) && rounds.length >= Math.ceil(expected / EXPIRY_MESSAGES_PER_COMMIT), `rounds of at most ${EXPIRY_MESSAGES_PER_COMMIT}: ${rounds.join(', ')}`);
    assert.ok(commits - before >= rounds.length, 'a commit per round');
    assert.ok((await sentAfterFirst!) < rounds.length, 'a write asked for after the first round was committed before the last');
    for (const rcvId of queues) {
      const left = (await store.oldestMessages(rcvId, total)).map((m) => hex(m.msgId));
      assert.deepEqual(left, kept.get(hex(rcvId)), 'only the newer messages are left, in order');
      assert.equal((await store.queueByRecipient(rcvId))?.msgCount, left.length, 'the quota count follows');
    }
    const quiet = commits;
    assert.deepEqual(await store.expire(cutoff, now - 90 * DAY_MS), { messages: 0, queues: 0 }, 'a second run finds nothing');
    assert.equal(commits, quiet, 'and writes nothing');
  }, { onCommit: () => commits++ });
});

test('unused queues go with their messages, in rounds of at most EXPIRY_MESSAGES_PER_COMMIT messages, whatever the message TTL', async () => {
  await withStore(async (store) => {
    const now = Date.now();
    const old = now - 100 * DAY_MS;
    // 300 queues unused for 100 days, three of them holding 400 fresh messages in all; one queue in use.
    const unused = Array.from({ length: EXPIRY_QUEUES_PER_COMMIT + 44 }, id);
    const live = id();
    for (const rcvId of unused) await store.createQueue({ rcvId, sndId: id(), rcvSigKey: id(), rcvAuthKey: id(), boxKey: id() }, old);
    await store.createQueue({ rcvId: live, sndId: id(), rcvSigKey: id(), rcvAuthKey: id(), boxKey: id() }, now);
    const writes = [];
    for (let i = 0; i < 400; i++) {
      const msgId = id();
      // The message's own arrival does not count as activity here: `now` of the write is `old`.
      writes.push(store.addMessage(unused[i % 3]!, { msgId, receivedAt: now, sealed: msgId }, 1000, old));
    }
    const liveMsg = id();
    writes.push(store.addMessage(live, { msgId: liveMsg, receivedAt: now, sealed: liveMsg }, 1000, now));
    await Promise.all(writes);
    const rounds: { messages: number; queues: number }[] = [];
    const r = await store.expire(now - 365 * DAY_MS, now - 90 * DAY_MS, (round) => rounds.push(round));
    assert.deepEqual(r, { messages: 400, queues: unused.length });
    assert.ok(rounds.every((x) => x.messages <= EXPIRY_MESSAGES_PER_COMMIT && x.queues <= EXPIRY_QUEUES_PER_COMMIT), JSON.stringify(rounds));
    for (const rcvId of unused) assert.equal(await store.queueByRecipient(rcvId), undefined);
    assert.deepEqual((await store.oldestMessages(live, 10)).map((m) => hex(m.msgId)), [hex(liveMsg)], 'the queue in use keeps its message');
    assert.equal((await store.stats()).messages, 1);
  });
});

test('an unused queue holding more than a round of messages is finished over rounds; used again meanwhile, it keeps the rest with a true count', async () => {
  await withStore(async (store) => {
    const now = Date.now();
    const old = now - 100 * DAY_MS;
    const rcvId = id();
    await store.createQueue({ rcvId, sndId: id(), rcvSigKey: id(), rcvAuthKey: id(), boxKey: id() }, old);
    const total = 2 * EXPIRY_MESSAGES_PER_COMMIT + 88;
    const ids: string[] = [];
    const writes = [];
    for (let i = 0; i < total; i++) {
      const msgId = id();
      ids.push(hex(msgId));
      writes.push(store.addMessage(rcvId, { msgId, receivedAt: now, sealed: msgId }, total, old));
    }
    await Promise.all(writes);
    // The recipient comes back (a SUB marks the queue) once the first round has committed.
    const rounds: { messages: number; queues: number }[] = [];
    let touched: Promise<void> | null = null;
    const r = await store.expire(now - 365 * DAY_MS, now - 90 * DAY_MS, (round) => {
      rounds.push(round);
      touched ??= store.touchQueue(rcvId, now);
    });
    await touched;
    assert.deepEqual(rounds.filter((x) => x.messages + x.queues > 0), [{ messages: EXPIRY_MESSAGES_PER_COMMIT, queues: 0 }], 'one round, then the queue is in use');
    assert.deepEqual(r, { messages: EXPIRY_MESSAGES_PER_COMMIT, queues: 0 });
    const left = (await store.oldestMessages(rcvId, total)).map((m) => hex(m.msgId));
    assert.deepEqual(left, ids.slice(EXPIRY_MESSAGES_PER_COMMIT), 'the oldest went first; the rest stay in order');
    assert.equal((await store.queueByRecipient(rcvId))?.msgCount, left.length, 'the quota count follows');
  });
});

test('a link set in the same commit as the sender key is refused: a secured queue has no link', async () => {
  await withQueue(async (store, rcvId) => {
    const link = id();
    // Both read the queue unsecured (as KEY and LSET in one block do); KEY's write lands first.
    const [secured, set] = await Promise.all([store.secureQueue(rcvId, id(), Date.now()), store.setLink(rcvId, link, new Uint8Array([1, 2, 3]))]);
    assert.equal(secured, 'ok');
    assert.equal(set, 'secured');
    assert.equal(await store.linkData(link), undefined, 'the link serves nothing');
    // Before the key, a link is set and served; the key then removes it; removing it stays possible.
    await withQueue(async (store2, rcvId2) => {
      assert.equal(await store2.setLink(rcvId2, link, new Uint8Array([4])), 'ok');
      assert.deepEqual([...((await store2.linkData(link))?.data ?? [])], [4]);
      assert.equal(await store2.secureQueue(rcvId2, id(), Date.now()), 'ok');
      assert.equal(await store2.linkData(link), undefined);
      assert.equal(await store2.setLink(rcvId2, link, new Uint8Array(0)), 'ok');
    });
  });
});

test("an owner's callback that throws does not fail a committed batch", async () => {
  const broken = {
    onCommit: () => {
      throw new Error('a broken counter');
    },
    onEvent: () => {
      throw new Error('a broken logger');
    },
  };
  await withStore(async (store) => {
    const rcvId = id();
    await store.createQueue({ rcvId, sndId: id(), rcvSigKey: id(), rcvAuthKey: id(), boxKey: id() }, Date.now());
    const msgId = id();
    assert.equal(await store.addMessage(rcvId, { msgId, receivedAt: Date.now(), sealed: msgId }, 10, Date.now()), 'ok');
    assert.equal((await store.queueByRecipient(rcvId))?.msgCount, 1);
  }, broken);
});

test('a write that fails on its own (a clashing id) fails alone: the writes committed with it in one turn succeed', async () => {
  let commits = 0;
  await withStore(async (store) => {
    const rcvId = id();
    const sndId = id();
    await store.createQueue({ rcvId, sndId, rcvSigKey: id(), rcvAuthKey: id(), boxKey: id() }, Date.now());
    const msgId = id();
    const before = commits;
    // Asked for in one turn, so one batch: the second NEW reuses the sender id.
    const [added, clash, other] = await Promise.allSettled([
      store.addMessage(rcvId, { msgId, receivedAt: Date.now(), sealed: msgId }, 10, Date.now()),
      store.createQueue({ rcvId: id(), sndId, rcvSigKey: id(), rcvAuthKey: id(), boxKey: id() }, Date.now()),
      store.createQueue({ rcvId: id(), sndId: id(), rcvSigKey: id(), rcvAuthKey: id(), boxKey: id() }, Date.now()),
    ]);
    assert.deepEqual(added, { status: 'fulfilled', value: 'ok' });
    assert.equal(clash.status, 'rejected');
    assert.equal((clash as PromiseRejectedResult).reason.code, 'INTERNAL');
    assert.equal(other.status, 'fulfilled');
    assert.deepEqual((await store.oldestMessages(rcvId, 10)).map((m) => hex(m.msgId)), [hex(msgId)]);
    assert.equal((await store.queueByRecipient(rcvId))?.msgCount, 1);
    assert.equal((await store.stats()).queues, 2, 'the queue with the clashing id was not made');
    assert.equal(commits - before, 2, 'the two good writes, each in its own commit');
  }, { onCommit: () => commits++ });
});

/** Adds `n` messages of `size` bytes to the queue, `inFlight` at a time; resolves to their ids. */
async function addMany(store: SqliteQueueStore, rcvId: Uint8Array, n: number, size: number, inFlight: number): Promise<Uint8Array[]> {
  const ids: Uint8Array[] = [];
  for (let i = 0; i < n; i += inFlight) {
    const batch = Array.from({ length: Math.min(inFlight, n - i) }, () => id());
    const results = await Promise.all(batch.map((msgId) => store.addMessage(rcvId, { msgId, receivedAt: Date.now(), sealed: new Uint8Array(randomBytes(size)) }, 1_000_000, Date.now())));
    assert.ok(results.every((r) => r === 'ok'));
    ids.push(...batch);
  }
  return ids;
}

/** A store in a fresh folder, with one queue, recording the events it reports. */
async function storeWithEvents() {
  const dir = mkdtempSync(join(tmpdir(), 'murmure-store-'));
  const path = join(dir, 'relay.db');
  const events: StoreEvent[] = [];
  const store = SqliteQueueStore.open({ path, onEvent: (e) => events.push(e) });
  const rcvId = id();
  await store.createQueue({ rcvId, sndId: id(), rcvSigKey: id(), rcvAuthKey: id(), boxKey: id() }, Date.now());
  return { dir, path, events, store, rcvId };
}

/** The checkpoint sequence number in a WAL's header: SQLite adds one each time the WAL starts again. */
function walCheckpointSeq(walPath: string): number {
  const fd = openSync(walPath, 'r');
  try {
    const header = Buffer.alloc(32);
    readSync(fd, header, 0, 32, 0);
    return header.readUInt32BE(12);
  } finally {
    closeSync(fd);
  }
}

test('checkpoints run in their own thread while the store goes on writing; the WAL starts again and nothing is lost', async () => {
  const { dir, path, events, store, rcvId } = await storeWithEvents();
  try {
    const seqBefore = walCheckpointSeq(`${path}-wal`);
    // About 4 pages per message: some 5 checkpoints' worth of WAL, 19 MB.
    const ids = await addMany(store, rcvId, 1200, 16_000, 16);
    // The thread starts with the first checkpoint, and the WAL starts again at the first commit
    // after a pass that copied all of it: small commits until it has.
    for (let i = 0; i < 500 && walCheckpointSeq(`${path}-wal`) === seqBefore; i++) {
      ids.push(...(await addMany(store, rcvId, 1, 100, 1)));
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(walCheckpointSeq(`${path}-wal`) > seqBefore, 'the WAL started again from its beginning');
    await store.close();
    assert.ok(events.includes('checkpoint'), 'the thread checkpointed');
    assert.deepEqual(events.filter((e) => e !== 'checkpoint'), [], 'no checkpoint failed');
    const again = SqliteQueueStore.open({ path });
    try {
      assert.equal((await again.queueByRecipient(rcvId))?.msgCount, ids.length);
      assert.deepEqual((await again.oldestMessages(rcvId, ids.length)).map((m) => hex(m.msgId)), ids.map(hex), 'every message, in order');
    } finally {
      await again.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('while the store does not trust its WAL (a sync failed) no checkpoint pass starts; once it does, passes start again', async () => {
  const { dir, events, store, rcvId } = await storeWithEvents();
  try {
    // What the store does on a failed sync and after its recovery (see startSync, recover).
    const checkpointer = (store as unknown as { checkpointer: Checkpointer }).checkpointer;
    checkpointer.suspend();
    // About 4 pages per message: past the 1,000 pages that start a pass.
    await addMany(store, rcvId, 400, 16_000, 16);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(checkpointer.busy, false, 'no pass runs');
    assert.equal(events.length, 0, 'none ran');
    checkpointer.resume();
    // The next commit starts one, on a connection the thread opens anew.
    await addMany(store, rcvId, 1, 100, 1);
    for (let i = 0; i < 100 && !events.includes('checkpoint'); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(events.includes('checkpoint'), 'a pass ran after the resume');
    await store.close();
    assert.deepEqual(events.filter((e) => e !== 'checkpoint'), [], 'nothing failed');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a reader that keeps an old snapshot does not stop writes: past WAL_HOLD_PAGES they alternate with checkpoints, and the WAL shrinks back once it is gone', async () => {
  const { dir, path, events, store, rcvId } = await storeWithEvents();
  try {
    // Another process's reader (an operator's shell, a backup) holds a snapshot: no checkpoint
    // can copy the WAL past it, so none completes and the WAL cannot start again.
    const reader = new Database(path);
    reader.exec('BEGIN');
    reader.prepare('SELECT count(*) FROM messages').get();
    const pagesPerMessage = 4;
    const ids = await addMany(store, rcvId, Math.ceil((WAL_HOLD_PAGES * 1.25) / pagesPerMessage), 16_000, 64);
    const walPeak = statSync(`${path}-wal`).size;
    assert.ok(walPeak > WAL_HOLD_PAGES * 4096, `the WAL grew past WAL_HOLD_PAGES (${walPeak} bytes)`);
    reader.exec('COMMIT');
    reader.close();
    // The next checkpoint copies it all; the commit after it starts the WAL again, cut back to its limit.
    const more = await addMany(store, rcvId, 400, 16_000, 16);
    await addMany(store, rcvId, 1, 100, 1);
    assert.ok(statSync(`${path}-wal`).size <= WAL_SIZE_LIMIT_BYTES + 16 * 16_384, `the WAL is cut back (${statSync(`${path}-wal`).size} bytes)`);
    assert.equal((await store.queueByRecipient(rcvId))?.msgCount, ids.length + more.length + 1);
    await store.close();
    assert.deepEqual(events.filter((e) => e !== 'checkpoint'), [], 'no checkpoint failed');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a second close() settles once the first has finished, not before', async () => {
  await withQueue(async (store, rcvId) => {
    const now = Date.now();
    const write = store.addMessage(rcvId, { msgId: id(), receivedAt: now, sealed: id() }, 1000, now);
    let firstDone = false;
    const first = store.close().then(() => (firstDone = true));
    await store.close();
    assert.equal(firstDone, true, 'the second close waited for the first');
    assert.equal(await write, 'ok', 'the write asked for before the close was committed');
    await first;
  });
});
