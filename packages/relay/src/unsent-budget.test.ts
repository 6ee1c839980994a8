// SPDX-License-Identifier: AGPL-3.0-or-later
import assert from 'node:assert/strict';
import { test } from 'node:test';

import fc from 'fast-check';

import { UnsentBudget, type UnsentHolder } from './unsent-budget.js';

/** A connection that records its eviction and, like a real one, releases itself when closed. */
function holder(name: string, evicted: string[], budget: () => UnsentBudget): UnsentHolder {
  const h: UnsentHolder = {
    evictUnsent: () => {
      evicted.push(name);
      budget().release(h);
    },
  };
  return h;
}

test('past the budget the connections backed up longest are cut off first, until the total is within it', () => {
  const evicted: string[] = [];
  const totals: number[] = [];
  const budget = new UnsentBudget(1000, (b) => totals.push(b));
  const [a, b, c] = ['a', 'b', 'c'].map((n) => holder(n, evicted, () => budget)) as [UnsentHolder, UnsentHolder, UnsentHolder];
  budget.hold(a, 400);
  budget.hold(b, 400);
  // a writes more while backed up: it keeps its place as the oldest.
  budget.hold(a, 500);
  assert.deepEqual([budget.bytes, budget.connections, evicted], [900, 2, []]);
  budget.hold(c, 300);
  assert.deepEqual(evicted, ['a'], 'the one backed up longest goes, though another holds as much');
  assert.deepEqual([budget.bytes, budget.connections], [700, 2]);
  assert.equal(totals.at(-1), 700, 'the gauge follows');
  // b sends what it held: it is no longer counted; releasing again changes nothing.
  budget.release(b);
  budget.release(b);
  assert.deepEqual([budget.bytes, budget.connections], [300, 1]);
  // One connection alone over the budget is cut off too.
  budget.hold(c, 1200);
  assert.deepEqual([evicted, budget.bytes, budget.connections], [['a', 'c'], 0, 0]);
});

test('whatever connections hold and release, the total is the sum of those counted and stays within the budget', () => {
  const op = fc.record({ conn: fc.nat({ max: 7 }), bytes: fc.nat({ max: 600 }), release: fc.boolean() });
  fc.assert(
    fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
      const evicted: string[] = [];
      const budget = new UnsentBudget(1000);
      const conns = Array.from({ length: 8 }, (_, i) => holder(String(i), evicted, () => budget));
      const model = new Map<number, number>();
      for (const o of ops) {
        const conn = conns[o.conn] as UnsentHolder;
        if (o.release) {
          budget.release(conn);
          model.delete(o.conn);
          continue;
        }
        if (!model.has(o.conn)) model.set(o.conn, 0);
        model.set(o.conn, o.bytes);
        let sum = [...model.values()].reduce((x, y) => x + y, 0);
        // The model evicts the oldest (first inserted) while over.
        while (sum > 1000) {
          const [oldest, bytes] = model.entries().next().value as [number, number];
          model.delete(oldest);
          sum -= bytes;
        }
        budget.hold(conn, o.bytes);
        assert.ok(budget.bytes <= 1000);
        assert.equal(budget.bytes, sum);
        assert.equal(budget.connections, model.size);
      }
    }),
  );
});
