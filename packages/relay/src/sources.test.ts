// SPDX-License-Identifier: AGPL-3.0-or-later
// The per-source connection limit: which source an address counts against (an IPv4 address, an
// IPv6 /64, checked against Node's own parser with random addresses), the unlimited blocks, and
// the counting itself.
import assert from 'node:assert/strict';
import { BlockList } from 'node:net';
import { describe, test } from 'node:test';

import fc from 'fast-check';

import { LOOPBACK_BLOCKS, SourceBlockError, SourceLimiter, sourceBlocks, sourceKey } from './sources.js';

const notMapped = (a: string): boolean => !/^::ffff:\d/i.test(a);

describe('sourceKey', () => {
  test('IPv4 as it is, IPv4-mapped IPv6 as IPv4, IPv6 as its /64, anything else undefined', () => {
    assert.equal(sourceKey('192.0.2.7'), '192.0.2.7');
    assert.equal(sourceKey('::ffff:192.0.2.7'), '192.0.2.7');
    assert.equal(sourceKey('::FFFF:192.0.2.7'), '192.0.2.7');
    assert.equal(sourceKey('2001:db8:1:2:3:4:5:6'), '2001:db8:1:2::/64');
    assert.equal(sourceKey('2001:0db8:0001:0002::9'), '2001:db8:1:2::/64');
    assert.equal(sourceKey('2001:db8::'), '2001:db8:0:0::/64');
    assert.equal(sourceKey('::1'), '0:0:0:0::/64');
    assert.equal(sourceKey('fe80::1%eth0'), 'fe80:0:0:0::/64');
    assert.equal(sourceKey('64:ff9b::192.0.2.7'), '64:ff9b:0:0::/64');
    for (const bad of ['', 'example.org', '1.2.3', '2001:db8:::1', '::ffff:1.2.3.999']) assert.equal(sourceKey(bad), undefined, bad);
  });

  test('two IPv6 addresses share a source exactly when they share their first 64 bits', () => {
    fc.assert(
      // IPv4-mapped addresses count as their IPv4 address, not as a /64 (the unit test above).
      fc.property(fc.ipV6().filter(notMapped), fc.ipV6().filter(notMapped), (a, b) => {
        const ka = sourceKey(a);
        const kb = sourceKey(b);
        assert.ok(ka !== undefined && kb !== undefined);
        const prefix = new BlockList();
        prefix.addSubnet(a, 64, 'ipv6');
        assert.equal(ka === kb, prefix.check(b, 'ipv6'), `${a} ${b}`);
        assert.equal(sourceKey(a), sourceKey(a.toUpperCase()));
      }),
      { numRuns: 2000 },
    );
  });

  test('an address in the same /64 as a random one shares its source', () => {
    fc.assert(
      fc.property(fc.ipV6().filter(notMapped), fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 4, maxLength: 4 }), (a, tail) => {
        const head = sourceKey(a)!.slice(0, -'::/64'.length);
        assert.equal(sourceKey(`${head}:${tail.map((g) => g.toString(16)).join(':')}`), sourceKey(a));
      }),
    );
  });
});

describe('sourceBlocks', () => {
  test('addresses and blocks of both families; anything else is refused by name', () => {
    const b = sourceBlocks([...LOOPBACK_BLOCKS, '10.0.0.0/8', '2001:db8::/32', '192.0.2.9']);
    assert.ok(b.check('127.0.0.2', 'ipv4') && b.check('::1', 'ipv6'));
    assert.ok(b.check('10.9.8.7', 'ipv4') && b.check('2001:db8:ffff::1', 'ipv6') && b.check('192.0.2.9', 'ipv4'));
    assert.ok(!b.check('192.0.2.10', 'ipv4') && !b.check('2001:db9::1', 'ipv6'));
    for (const bad of ['10.0.0.0/33', '::/129', 'localhost', '10.0.0.0/8/8', '10.0.0.0/', '10.0.0.0/x', '']) {
      assert.throws(() => sourceBlocks([bad]), (e) => e instanceof SourceBlockError && e.message.includes(`'${bad}'`), bad);
    }
  });
});

describe('SourceLimiter', () => {
  test('a source gets `max` slots, given back on release (once each); other sources and unlimited blocks are apart', () => {
    const limiter = new SourceLimiter(2, sourceBlocks(LOOPBACK_BLOCKS));
    const a1 = limiter.admit('192.0.2.1');
    const a2 = limiter.admit('::ffff:192.0.2.1');
    assert.ok(a1 !== null && a2 !== null);
    assert.equal(limiter.admit('192.0.2.1'), null, 'the third from one source is refused');
    assert.ok(limiter.admit('192.0.2.2') !== null, 'another source is not');
    assert.ok(limiter.admit('2001:db8::1') !== null && limiter.admit('2001:db8::2') !== null);
    assert.equal(limiter.admit('2001:db8::3'), null, 'one IPv6 /64 is one source');
    assert.ok(limiter.admit('2001:db8:0:1::1') !== null, 'the next /64 is another');
    for (let i = 0; i < 10; i++) assert.ok(limiter.admit(i % 2 === 0 ? '127.0.0.1' : '::1') !== null, 'loopback is unlimited');
    assert.ok(limiter.admit(undefined) !== null, 'a socket closed before it was counted takes no slot');
    a1.release();
    a1.release();
    assert.ok(limiter.admit('192.0.2.1') !== null, 'a released slot is free again');
    assert.equal(limiter.admit('192.0.2.1'), null, 'releasing twice frees one slot only');
    a2.release();
    assert.equal(limiter.sources, 4);
  });
});

describe('refused authorisations per source', () => {
  test('a source reserves one refusal per key check from one budget over its connections, gets back those that pass, and keeps it spent across reconnects', () => {
    let now = 0;
    const limiter = new SourceLimiter(10, sourceBlocks(['127.0.0.0/8']), 5, () => now);
    const a = limiter.admit('192.0.2.1')!;
    const b = limiter.admit('192.0.2.1')!;
    const other = limiter.admit('192.0.2.2')!;
    // Twice the rate at once, on either connection.
    for (let i = 0; i < 10; i++) assert.equal((i % 2 === 0 ? a : b).reserve(), true, `reservation ${i}`);
    assert.equal(a.reserve(), false, 'the burst of ten is spent');
    assert.equal(b.reserve(), false);
    assert.equal(other.reserve(), true, 'another source has its own');
    other.refund();
    // A check that passes gives its reservation back.
    a.refund();
    assert.equal(b.reserve(), true);
    assert.equal(a.reserve(), false);
    now += 200; // one refusal's worth refilled
    assert.equal(a.reserve(), true);
    assert.equal(a.reserve(), false);
    // Reconnecting does not refill the budget; once it has refilled, the source is forgotten.
    a.release();
    b.release();
    const again = limiter.admit('192.0.2.1')!;
    assert.equal(again.reserve(), false, 'a new connection of the source finds the budget spent');
    again.release();
    limiter.sweep();
    assert.equal(limiter.sources, 2, 'a spent budget is kept while it refills (192.0.2.1, and 192.0.2.2 still open)');
    now += 1_999;
    limiter.sweep();
    assert.equal(limiter.sources, 2);
    now += 1;
    limiter.sweep();
    assert.equal(limiter.sources, 1, 'once refilled, a source with no connection is forgotten');
    other.release();
    assert.equal(limiter.sources, 0, 'a full budget goes with its last connection');
    const lo = limiter.admit('127.0.0.1')!;
    for (let i = 0; i < 1000; i++) assert.equal(lo.reserve(), true);
    assert.equal(limiter.sources, 0, 'loopback is not limited per source');
  });
});
