// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that one session key pair serves the connections of a period and that a new one comes
// once the period is over, by the monotonic clock it is given; and that a key keeps its
// agreements only while it is the current one, and never more than its maximum.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { agree, generateDhKeyPair } from '@murmure/queue-crypto';

import { SESSION_KEY_LIFETIME_MS, SessionKey, SessionKeys } from './session-keys.js';

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

describe('SessionKey', () => {
  test('keeps each agreement while current: the same secret, marked kept; an unusable key is kept as null', () => {
    const key = new SessionKey(generateDhKeyPair());
    const peer = generateDhKeyPair();
    const first = key.agreement(peer.publicKey);
    assert.equal(first.kept, false);
    assert.deepEqual(Buffer.from(first.secret as Uint8Array), Buffer.from(agree(peer.privateKey, key.publicKey) as Uint8Array), 'the X25519 secret');
    const again = key.agreement(peer.publicKey);
    assert.equal(again.kept, true);
    assert.deepEqual(Buffer.from(again.secret as Uint8Array), Buffer.from(first.secret as Uint8Array));
    const lowOrder = new Uint8Array(32); // the all-zero point: no usable secret
    assert.deepEqual(key.agreement(lowOrder), { secret: null, kept: false });
    assert.deepEqual(key.agreement(lowOrder), { secret: null, kept: true });
    assert.equal(key.size, 2);
  });

  test('keeps at most its maximum, the oldest leaving first', () => {
    const key = new SessionKey(generateDhKeyPair(), 3);
    const peers = Array.from({ length: 4 }, () => generateDhKeyPair().publicKey);
    for (const p of peers) key.agreement(p);
    assert.equal(key.size, 3);
    assert.equal(key.agreement(peers[0]!).kept, false, 'the oldest was forgotten');
    assert.equal(key.agreement(peers[3]!).kept, true);
  });

  test('a retired key forgets its agreements and keeps no more; the next key of SessionKeys retires the last', () => {
    let now = 0;
    const keys = new SessionKeys(SESSION_KEY_LIFETIME_MS, () => now);
    const first = keys.current();
    const peer = generateDhKeyPair().publicKey;
    first.agreement(peer);
    now += SESSION_KEY_LIFETIME_MS;
    const second = keys.current();
    assert.equal(first.size, 0);
    const after = first.agreement(peer);
    assert.equal(after.kept, false);
    assert.ok(after.secret !== null, 'a retired key still agrees, for the connections it serves');
    assert.equal(first.agreement(peer).kept, false, 'but keeps nothing');
    assert.equal(second.agreement(peer).kept, false, 'a new key starts with none');
  });
});
