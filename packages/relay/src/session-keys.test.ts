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
  test('keeps what it is given while current, and gives back a copy of it', () => {
    const key = new SessionKey(generateDhKeyPair());
    const peer = generateDhKeyPair();
    assert.equal(key.kept(peer.publicKey), undefined, 'nothing kept before');
    const secret = key.agree(peer.publicKey) as Uint8Array;
    assert.deepEqual(Buffer.from(secret), Buffer.from(agree(peer.privateKey, key.publicKey) as Uint8Array), 'the X25519 secret');
    assert.equal(key.kept(peer.publicKey), undefined, 'agreeing keeps nothing');
    key.keep(peer.publicKey, secret);
    const kept = key.kept(peer.publicKey) as Uint8Array;
    assert.deepEqual(Buffer.from(kept), Buffer.from(secret));
    kept.fill(0);
    secret.fill(0);
    assert.deepEqual(Buffer.from(key.kept(peer.publicKey) as Uint8Array), Buffer.from(agree(peer.privateKey, key.publicKey) as Uint8Array), 'changing a copy changes nothing kept');
    assert.equal(key.size, 1);
    assert.equal(key.agree(new Uint8Array(32)), null, 'the all-zero point gives no secret');
  });

  test('keeps at most its maximum, the oldest leaving first', () => {
    const key = new SessionKey(generateDhKeyPair(), 3);
    const peers = Array.from({ length: 4 }, () => generateDhKeyPair().publicKey);
    for (const p of peers) key.keep(p, key.agree(p) as Uint8Array);
    assert.equal(key.size, 3);
    assert.equal(key.kept(peers[0]!), undefined, 'the oldest was forgotten');
    assert.ok(key.kept(peers[3]!) !== undefined);
  });

  test('a retired key forgets its agreements and keeps no more; the next key of SessionKeys retires the last', () => {
    let now = 0;
    const keys = new SessionKeys(SESSION_KEY_LIFETIME_MS, () => now);
    const first = keys.current();
    const peer = generateDhKeyPair().publicKey;
    const secret = first.agree(peer) as Uint8Array;
    first.keep(peer, secret);
    now += SESSION_KEY_LIFETIME_MS;
    const second = keys.current();
    assert.equal(first.size, 0);
    assert.equal(first.kept(peer), undefined);
    assert.ok(first.agree(peer) !== null, 'a retired key still agrees, for the connections it serves');
    first.keep(peer, secret);
    assert.equal(first.kept(peer), undefined, 'but keeps nothing');
    assert.equal(second.kept(peer), undefined, 'a new key starts with none');
  });
});
