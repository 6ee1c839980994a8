// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that a conversation is listed in sender order (R3, F6): messages that arrived out of
// order are shown by their sender's sequence number, never by arrival or by a sender's clock
// within one direction; notices keep their places; the two directions interleave by send time;
// and for any arrival order (fast-check permutations) each direction comes out sorted by
// sequence number with every message exactly once.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import fc from 'fast-check';

import { orderConversation, type Orderable } from './order.js';

type Row = Orderable & { text: string };

function rows(spec: ReadonlyArray<readonly [Row['direction'], number | null, number, string]>): Row[] {
  return spec.map(([direction, seq, sent_at, text], i) => ({ id: i + 1, direction, seq, sent_at, text }));
}

describe('orderConversation', () => {
  test('a late message is shown where its sender put it, not where it arrived', () => {
    // The contact's 2 arrived after its 3 and after our reply.
    const r = rows([
      ['in', 1, 100, 'one'],
      ['in', 3, 300, 'three'],
      ['out', 1, 350, 'reply'],
      ['in', 2, 200, 'two'],
    ]);
    assert.deepEqual(orderConversation(r).map((m) => m.text), ['one', 'two', 'three', 'reply']);
  });

  test("within one sender the sequence wins over the sender's clock", () => {
    // The contact's clock jumped back a day between its messages 1 and 2.
    const r = rows([
      ['in', 1, 90_000_000, 'first'],
      ['in', 2, 3_600_000, 'second'],
    ]);
    assert.deepEqual(orderConversation(r).map((m) => m.text), ['first', 'second']);
  });

  test('notices without a number keep their places among the numbered messages', () => {
    const r = rows([
      ['in', 1, 100, 'one'],
      ['in', null, 150, '1 message missing'],
      ['in', 4, 400, 'four'],
      ['in', 3, 300, 'three'],
    ]);
    assert.deepEqual(orderConversation(r).map((m) => m.text), ['one', '1 message missing', 'three', 'four']);
  });

  test('any arrival order: each direction sorted by sequence, nothing lost or repeated', () => {
    const conv = fc.tuple(fc.integer({ min: 0, max: 30 }), fc.integer({ min: 0, max: 30 })).chain(([nIn, nOut]) => {
      const all: Array<Omit<Row, 'id'>> = [];
      for (let s = 1; s <= nIn; s++) all.push({ direction: 'in', seq: s, sent_at: s * 10, text: `in ${s}` });
      for (let s = 1; s <= nOut; s++) all.push({ direction: 'out', seq: s, sent_at: s * 10 + 5, text: `out ${s}` });
      return fc.shuffledSubarray(all, { minLength: all.length, maxLength: all.length });
    });
    fc.assert(
      fc.property(conv, (arrived) => {
        const shown = orderConversation(arrived.map((m, i) => ({ ...m, id: i + 1 })));
        assert.equal(shown.length, arrived.length);
        for (const dir of ['in', 'out'] as const) {
          const seqs = shown.filter((m) => m.direction === dir).map((m) => m.seq);
          assert.deepEqual(seqs, [...seqs].sort((a, b) => (a as number) - (b as number)));
          assert.equal(new Set(seqs).size, seqs.length);
        }
        // Both directions interleave by send time, as every sender's clock is consistent here.
        const times = shown.map((m) => m.sent_at);
        assert.deepEqual(times, [...times].sort((a, b) => a - b));
      }),
      { numRuns: 300 },
    );
  });

  test("a contact's clock cannot place its reply above the message it answers", () => {
    const r = [
      { id: 1, direction: 'out' as const, seq: 1, sent_at: 1_000, received_at: null, text: 'question' },
      { id: 2, direction: 'in' as const, seq: 1, sent_at: 500, received_at: 2_000, text: 'early answer' },
      { id: 3, direction: 'in' as const, seq: 2, sent_at: 9_000_000, received_at: 3_000, text: 'answer' },
      { id: 4, direction: 'out' as const, seq: 2, sent_at: 4_000, received_at: null, text: 'thanks' },
    ];
    assert.deepEqual(orderConversation(r).map((m) => m.text), ['question', 'early answer', 'answer', 'thanks']);
  });
});
