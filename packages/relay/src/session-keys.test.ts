// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that one session key pair serves the connections of a period and that a new one comes
// once the period is over, by the monotonic clock it is given.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { SESSION_KEY_LIFETIME_MS, SessionKeys } from './session-keys.js';

describe('SessionKeys', () => {
  test('one pair within its lifetime, a new pair after it', () => {
    let now = 1_000;
    const keys = new SessionKeys(SESSION_KEY_LIFETIME_MS, () => now);
    const first = keys.current();
    now += SESSION_KEY_LIFETIME_MS - 1;
    assert.equal(keys.current(), first, 'the same pair until the lifetime is over');
    now += 1;
    const second = keys.current();
    assert.notEqual(second, first);
    assert.notDeepEqual(Buffer.from(second.publicKey), Buffer.from(first.publicKey), 'a fresh key, not the old one again');
    assert.equal(keys.current(), second);
  });

  test('a lifetime of 0 gives every connection its own pair', () => {
    const keys = new SessionKeys(0, () => 5);
    assert.notEqual(keys.current(), keys.current());
  });
});
