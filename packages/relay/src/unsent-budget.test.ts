// SPDX-License-Identifier: AGPL-3.0-or-later
import assert from 'node:assert/strict';
import { test } from 'node:test';

import fc from 'fast-check';

import { UnsentBudget, type UnsentHolder } from './unsent-budget.js';

/** Runs the microtasks queued so far (the budget's pass). */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** A connection that records its eviction and, like a real one, releases itself when closed. */
type TestHolder = UnsentHolder & { unsentNow: number };
function holder(name: string, evicted: string[], budget: () => UnsentBudget): TestHolder {
  const h: TestHolder = {
    unsentNow: 0,
    evictUnsent: () => {
      evicted.push(name);
      budget().release(h);
    },
  };
  return h;
}

/** `budget.hold(h, bytes)`, with the connection holding that many now. */
function write(budget: UnsentBudget, h: TestHolder, bytes: number): void {
  h.unsentNow = bytes;
  budget.hold(h, bytes);
}

test('past the budget the connections backed up longest are cut off first, after the call that went over, until the total is within it', async () => {
  const evicted: string[] = [];
  const totals: number[] = [];
  const budget = new UnsentBudget(1000, (b) => totals.push(b));
  const [a, b, c] = ['a', 'b', 'c'].map((n) => holder(n, evicted, () => budget)) as [TestHolder, TestHolder, TestHolder];
  write(budget, a, 400);
  write(budget, b, 400);
  // a writes more while backed up: it keeps its place as the oldest.
  write(budget, a, 500);
  await settle();
  assert.deepEqual([budget.bytes, budget.connections, evicted], [900, 2, []]);
  write(budget, c, 300);
  assert.deepEqual(evicted, [], 'nobody is cut off inside the write that went over');
  await settle();
  assert.deepEqual(evicted, ['a'], 'the one backed up longest goes, though another holds as much');
  assert.deepEqual([budget.bytes, budget.connections], [700, 2]);
  assert.equal(totals.at(-1), 700, 'the gauge follows');
  // b sends what it held: it is no longer counted; releasing again changes nothing.
  budget.release(b);
  budget.release(b);
  assert.deepEqual([budget.bytes, budget.connections], [300, 1]);
  // One connection alone over the budget is cut off too.
  write(budget, c, 1200);
  await settle();
  assert.deepEqual([evicted, budget.bytes, budget.connections], [['a', 'c'], 0, 0]);
});

test('before cutting anyone off the budget counts what each connection holds now: a slow reader that sent part of its bytes is kept', async () => {
  const evicted: string[] = [];
  const budget = new UnsentBudget(1000);
  const [slow, fresh] = ['slow', 'fresh'].map((n) => holder(n, evicted, () => budget)) as [TestHolder, TestHolder];
  write(budget, slow, 600);
  // The slow reader's socket has sent most of it since its last write.
  slow.unsentNow = 100;
  write(budget, fresh, 600);
  await settle();
  assert.deepEqual([evicted, budget.bytes, budget.connections], [[], 700, 2]);
});

test('whatever connections hold and release, after each pass the total is what those counted hold, within the budget, and the oldest went first', async () => {
  const op = fc.record({ conn: fc.nat({ max: 7 }), bytes: fc.nat({ max: 600 }), release: fc.boolean() });
  await fc.assert(
    fc.asyncProperty(fc.array(op, { maxLength: 60 }), async (ops) => {
      const evicted: string[] = [];
      const budget = new UnsentBudget(1000);
      const conns = Array.from({ length: 8 }, (_, i) => holder(String(i), evicted, () => budget));
      const model = new Map<number, number>();
      for (const o of ops) {
        const conn = conns[o.conn] as TestHolder;
        if (o.release) {
          budget.release(conn);
          model.delete(o.conn);
          continue;
        }
        if (!model.has(o.conn)) model.set(o.conn, 0);
        model.set(o.conn, o.bytes);
        write(budget, conn, o.bytes);
        await settle();
        // The model cuts off the oldest (first inserted) while over.
        let sum = [...model.values()].reduce((x, y) => x + y, 0);
        while (sum > 1000) {
          const [oldest, bytes] = model.entries().next().value as [number, number];
          model.delete(oldest);
          sum -= bytes;
        }
        assert.ok(budget.bytes <= 1000);
        assert.equal(budget.bytes, sum);
        assert.equal(budget.connections, model.size);
      }
    }),
    { numRuns: 50 },
  );
});
