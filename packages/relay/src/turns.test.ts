// SPDX-License-Identifier: AGPL-3.0-or-later
// Turns, on a simulated event loop: a source with many busy connections takes one turn, not one
// per connection; many busy sources together hold a pass for the pass budget; a client whose
// block arrives while they are busy is served in that pass; arrivals of one pass share a budget.
import assert from 'node:assert/strict';
import { BlockList } from 'node:net';
import { describe, test } from 'node:test';

import fc from 'fast-check';

import { LOOPBACK_BLOCKS, SourceLimiter, sourceBlocks } from './sources.js';
import { Rotation, TurnGroup, TurnScheduler, type TurnClock, type TurnTaker } from './turns.js';

const TURN = 1;
const PASS = 4;
const EPS = 1e-9;

/** A simulated event loop: a clock that commands advance, and passes that end with the deferred work. */
class Loop {
  t = 0;
  private deferred: (() => void)[] = [];
  readonly clock: TurnClock = { now: () => this.t, defer: (f) => void this.deferred.push(f) };
  readonly scheduler = new TurnScheduler(this.clock, TURN, PASS);

  /** Ends the pass: what was deferred before it ended runs, in order; returns the time it took. */
  endPass(): number {
    const start = this.t;
    for (const f of this.deferred.splice(0)) f();
    return this.t - start;
  }

  group(): TurnGroup {
    return new TurnGroup(this.scheduler);
  }
}

/** A connection whose waiting commands each take `costMs` of the loop's clock. */
class Conn implements TurnTaker {
  waiting = 0;
  started = 0;
  constructor(
    private readonly loop: Loop,
    private readonly costMs: number,
    private readonly log: string[] = [],
    private readonly name = '',
  ) {}

  takeTurn(deadline: number): boolean {
    while (this.waiting > 0) {
      if (this.loop.t >= deadline) return true;
      this.waiting--;
      this.started++;
      this.loop.t += this.costMs;
      this.log.push(this.name);
    }
    return false;
  }

  /** A block of `n` commands arrives. */
  receive(group: TurnGroup, n: number): void {
    this.waiting += n;
    group.ready(this);
  }
}

describe('turns', () => {
  test('a source with 50 busy connections holds a pass for its budget, and each of its connections has its first turn within a pass of its block', () => {
    const loop = new Loop();
    const group = loop.group();
    const conns = Array.from({ length: 50 }, () => new Conn(loop, 0.3));
    const before = loop.t;
    for (const c of conns) c.receive(group, 100);
    // The first arrivals take turns for the arrivals' budget (the last turn may overrun it); the others wait.
    assert.ok(loop.t - before < PASS + TURN + 0.3 + EPS, `the arrivals took ${loop.t - before} ms`);
    const firstTurnPass: number[] = conns.map((c) => (c.started > 0 ? 0 : -1));
    let passes = 0;
    while (group.pending) {
      const took = loop.endPass();
      passes++;
      assert.ok(took < PASS + TURN + 0.3 + EPS, `pass ${passes} took ${took.toFixed(2)} ms`);
      conns.forEach((c, i) => {
        if (firstTurnPass[i] === -1 && c.started > 0) firstTurnPass[i] = passes;
      });
      assert.ok(passes < 10_000);
    }
    assert.ok(conns.every((c) => c.started === 100), 'every command started');
    // New blocks take their turns in the order they came, one source's turn a pass beside the busy rotation.
    assert.deepEqual(firstTurnPass, [...firstTurnPass].sort((a, b) => a - b), 'first turns in order of arrival');
    assert.ok(Math.max(...firstTurnPass) <= 50, `every connection had a turn within 50 passes (${Math.max(...firstTurnPass)})`);
  });

  test('48 busy sources hold a pass for the pass budget, and a client whose block arrives meanwhile is served in that pass', () => {
    const loop = new Loop();
    const flood = Array.from({ length: 48 }, () => ({ group: loop.group(), conn: new Conn(loop, 0.4) }));
    for (const f of flood) f.conn.receive(f.group, 10_000);
    const honestGroup = loop.group();
    const honest = new Conn(loop, 0.05);
    for (let pass = 0; pass < 200; pass++) {
      const took = loop.endPass();
      assert.ok(took < PASS + TURN + 0.4 + EPS, `pass ${pass}: the busy sources took ${took.toFixed(2)} ms`);
      // The poll phase: the honest client's ACK arrives and starts at once.
      const before = honest.started;
      const at = loop.t;
      honest.receive(honestGroup, 1);
      assert.equal(honest.started, before + 1, `pass ${pass}: the honest command started on arrival`);
      assert.ok(loop.t - at <= 0.05 + EPS);
      // A busy source's new block waits for its turn: it does not start on arrival.
      const f = flood[pass % flood.length]!;
      const s = f.conn.started;
      f.conn.receive(f.group, 60);
      assert.equal(f.conn.started, s, 'a busy source does not take an extra turn when a block arrives');
    }
    // Every source had its turns: 3 commands each, and 3 more for the few that began on arrival.
    const started = flood.map((f) => f.conn.started);
    assert.ok(Math.min(...started) > 0, 'every busy source had turns');
    assert.ok(Math.max(...started) - Math.min(...started) <= 2 * 3, `turns are even across sources (${Math.min(...started)}-${Math.max(...started)} commands)`);
  });

  test('arrivals of one pass share a budget: past it, the rest wait for the rotation', () => {
    const loop = new Loop();
    const conns = Array.from({ length: 40 }, () => ({ group: loop.group(), conn: new Conn(loop, 0.1) }));
    const start = loop.t;
    // Each block takes 0.2 ms, well under a turn; 40 of them take 8 ms.
    for (const c of conns) c.conn.receive(c.group, 2);
    assert.ok(loop.t - start < PASS + 0.2 + EPS, `the arrivals of one pass took ${(loop.t - start).toFixed(2)} ms`);
    assert.ok(loop.scheduler.waiting > 0, 'the rest wait');
    let passes = 0;
    while (loop.scheduler.waiting > 0) {
      assert.ok(loop.endPass() < PASS + TURN + 0.1 + EPS);
      assert.ok(++passes < 100);
    }
    assert.ok(conns.every((c) => c.conn.waiting === 0));
    // A new pass: arrivals start at once again.
    const c = conns[0]!;
    c.conn.receive(c.group, 1);
    assert.equal(c.conn.waiting, 0);
  });

  test('a client sharing its address with a flood is served when its block arrives, not after every connection of the flood', () => {
    const loop = new Loop();
    const group = loop.group();
    const flood = Array.from({ length: 200 }, () => new Conn(loop, 0.5));
    for (const c of flood) c.receive(group, 1_000);
    // Until each connection of the flood had its first turn, their first blocks come first.
    while (group.hasFresh) loop.endPass();
    const neighbour = new Conn(loop, 0.05);
    for (let pass = 0; pass < 50; pass++) {
      loop.endPass();
      const before = neighbour.started;
      neighbour.receive(group, 1);
      assert.equal(neighbour.started, before + 1, `pass ${pass}: the neighbour's command started on arrival`);
    }
  });

  test('a block that arrives once the arrivals of a pass have spent their budget starts first thing at the end of the pass, before the busy groups', () => {
    const loop = new Loop();
    const busy = Array.from({ length: 30 }, () => ({ group: loop.group(), conn: new Conn(loop, 0.5) }));
    for (const b of busy) b.conn.receive(b.group, 10_000);
    while (busy.some((b) => b.group.hasFresh)) loop.endPass();
    // A pass in which light clients' blocks take the arrivals' budget before the honest one's.
    const light = Array.from({ length: 4 }, () => ({ group: loop.group(), conn: new Conn(loop, 1.1) }));
    for (const l of light) l.conn.receive(l.group, 1);
    const honest = new Conn(loop, 0.05);
    honest.receive(loop.group(), 1);
    assert.equal(honest.started, 0, 'past the budget, the block waits');
    const busyBefore = busy.map((b) => b.conn.started);
    loop.endPass();
    assert.equal(honest.started, 1, 'it starts at the end of the pass');
    assert.ok(busy.filter((b, i) => b.conn.started > busyBefore[i]!).length <= PASS / TURN + 1, 'and the busy groups had their turns of that pass after it');
  });

  test('a closed connection gets no further turn', () => {
    const loop = new Loop();
    const group = loop.group();
    const flood = Array.from({ length: 20 }, () => new Conn(loop, 0.5));
    for (const c of flood) c.receive(group, 1_000);
    const started = flood.map((c) => c.started);
    for (const c of flood) group.drop(c);
    assert.equal(group.pending, false);
    loop.endPass();
    loop.endPass();
    assert.deepEqual(
      flood.map((c) => c.started),
      started,
    );
    assert.equal(loop.scheduler.waiting, 0);
  });
});

describe('turn groups of sources', () => {
  test('connections of one limited source share a group; other sources and unlimited ones have their own', () => {
    const limiter = new SourceLimiter(10, sourceBlocks(LOOPBACK_BLOCKS));
    const a1 = limiter.admit('192.0.2.7');
    const a2 = limiter.admit('::ffff:192.0.2.7');
    const b = limiter.admit('192.0.2.8');
    const v6a = limiter.admit('2001:db8:1:2::1');
    const v6b = limiter.admit('2001:db8:1:2::99');
    const l1 = limiter.admit('127.0.0.1');
    const l2 = limiter.admit('127.0.0.1');
    assert.ok(a1 !== null && a2 !== null && b !== null && v6a !== null && v6b !== null && l1 !== null && l2 !== null);
    assert.equal(a1.turns, a2.turns);
    assert.notEqual(a1.turns, b.turns);
    assert.equal(v6a.turns, v6b.turns, 'an IPv6 /64 is one source');
    assert.notEqual(l1.turns, l2.turns, 'a loopback connection takes turns on its own');
    const none = new SourceLimiter(10, new BlockList());
    const n1 = none.admit('127.0.0.1');
    const n2 = none.admit('127.0.0.1');
    assert.equal(n1?.turns, n2?.turns, 'loopback is one source when it is limited');
  });
});

describe('Rotation', () => {
  test('behaves as a list of distinct members in order, whether it holds one member or more', () => {
    const op = fc.oneof(
      fc.record({ kind: fc.constant('push' as const), m: fc.nat(4) }),
      fc.record({ kind: fc.constant('delete' as const), m: fc.nat(4) }),
      fc.record({ kind: fc.constant('shift' as const) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const members = [0, 1, 2, 3, 4].map((i) => ({ i }));
        const r = new Rotation<{ i: number }>();
        const model: { i: number }[] = [];
        for (const o of ops) {
          if (o.kind === 'push') {
            const t = members[o.m]!;
            r.push(t);
            if (!model.includes(t)) model.push(t);
          } else if (o.kind === 'delete') {
            const t = members[o.m]!;
            r.delete(t);
            const at = model.indexOf(t);
            if (at >= 0) model.splice(at, 1);
          } else {
            assert.equal(r.shift(), model.shift());
          }
          assert.equal(r.size, model.length);
          for (const t of members) assert.equal(r.has(t), model.includes(t));
        }
        const rest = [];
        for (let t = r.shift(); t !== undefined; t = r.shift()) rest.push(t);
        assert.deepEqual(rest, model);
      }),
      { numRuns: 500 },
    );
  });
});
