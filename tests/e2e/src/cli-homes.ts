// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Test support for the tests that drive one home per person through the real `murmure` command
 * in --json mode (cli-identity, cli-order, agent-stale-backup; `byType` also cli-messaging and
 * cli-clock-skew): running a command for a home, connecting Alice's and Bob's homes through a
 * one-time link, syncing them in turn, and opening a home's database beside it.
 * @module
 */

import assert from 'node:assert/strict';
import { join } from 'node:path';

import { AGENT_MIGRATIONS, LocalDatabase, deriveDatabaseKey, loadSalt } from '@murmure/agent';

import { runMurmure } from './harness.js';

/** One JSON line a command printed. */
export type Json = Record<string, unknown>;

/** A person: a home folder, its passphrase, and the profile name the other one sees. */
export type Home = Readonly<{ dir: string; pass: string; name: string }>;

/** Runs `murmure --home DIR --json ARGS...` for a home; fails unless it exited with 0; resolves with its JSON lines. */
export async function ok(h: Home, ...args: string[]): Promise<Json[]> {
  const r = await runMurmure(['--home', h.dir, '--json', ...args], { passphrase: h.pass });
  assert.equal(r.code, 0, `murmure ${args.join(' ')} failed: ${r.stdout}${r.stderr}`);
  return r.json;
}

/** The plain-text output (no --json) of a successful command. */
export async function plain(h: Home, ...args: string[]): Promise<string> {
  const r = await runMurmure(['--home', h.dir, ...args], { passphrase: h.pass });
  assert.equal(r.code, 0, `murmure ${args.join(' ')} failed: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** The events of one `type`. */
export function byType(events: readonly Json[], type: string): Json[] {
  return events.filter((e) => e['type'] === type);
}

/**
 * Alice's and Bob's homes under `root`, made on the relay at `relayAddress` and connected through
 * Alice's one-time link (each syncs in turn until both list the other as connected, five rounds
 * at most). With a `prefix`, the folders are `PREFIX-alice` and `PREFIX-bob` and the names carry
 * it (`Alice PREFIX TAG`); without, they are `alice` and `bob` (`Alice TAG`).
 */
export async function connectedHomes(root: string, relayAddress: string, tag: string, prefix?: string): Promise<{ alice: Home; bob: Home }> {
  const home = (who: 'alice' | 'bob', name: string): Home => ({
    dir: join(root, prefix === undefined ? who : `${prefix}-${who}`),
    pass: `${who} ${tag}`,
    name: prefix === undefined ? `${name} ${tag}` : `${name} ${prefix} ${tag}`,
  });
  const alice = home('alice', 'Alice');
  const bob = home('bob', 'Bob');
  await ok(alice, 'init', '--name', alice.name, '--relay', relayAddress);
  await ok(bob, 'init', '--name', bob.name, '--relay', relayAddress);
  const [inv] = await ok(alice, 'invite');
  await ok(bob, 'connect', inv!['link'] as string);
  for (let i = 0; i < 5; i++) {
    await ok(alice, 'sync');
    await ok(bob, 'sync');
    const [ca] = await ok(alice, 'contacts');
    const [cb] = await ok(bob, 'contacts');
    if (ca?.['status'] === 'connected' && cb?.['status'] === 'connected' && ca['name'] === bob.name) break;
  }
  return { alice, bob };
}

/** Syncs both in turn until `done` holds or `max` rounds passed; resolves with all events each printed. */
export async function syncUntil(alice: Home, bob: Home, done: (a: Json[], b: Json[]) => boolean, max = 5): Promise<{ a: Json[]; b: Json[] }> {
  const a: Json[] = [];
  const b: Json[] = [];
  for (let i = 0; i < max && !done(a, b); i++) {
    a.push(...(await ok(alice, 'sync')));
    b.push(...(await ok(bob, 'sync')));
  }
  return { a, b };
}

/**
 * Opens a home's database (the agent's tables) with the key of its passphrase, runs `f`, and
 * closes it. No `murmure` process may run on the home meanwhile.
 */
export function withDatabase<T>(h: Home, f: (db: LocalDatabase) => T): T {
  const key = deriveDatabaseKey(h.pass, loadSalt(join(h.dir, 'murmure.salt'), false));
  const db = LocalDatabase.open(join(h.dir, 'murmure.db'), key, AGENT_MIGRATIONS);
  try {
    return f(db);
  } finally {
    db.close();
  }
}
