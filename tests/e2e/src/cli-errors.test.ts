// SPDX-License-Identifier: AGPL-3.0-or-later
// How the `murmure` command fails, as scripts see it: a wrong passphrase is refused with
// WRONG_PASSPHRASE and changes no byte of the home; damaged links (truncated, altered, with a bad
// relay fingerprint, or not a link at all) give BAD_LINK, a link whose data is for another
// version gives VERSION; an unknown command is a usage error (exit 2); an unknown contact, a
// too long message and a missing home have their own codes. Every failure is one line (one JSON
// object under --json) with exit code 1 or 2, never a stack trace.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { RelayClient } from '@murmure/agent';
import { QUEUE_BOX_NONCE_LENGTH, encodeInvitationData, formatInvitationLink, parseRelayAddress } from '@murmure/protocol';
import { randomId, sealWithNonce } from '@murmure/queue-crypto';

import { cleanup, filesUnder, runMurmure, startRelay, stopRelay, tempDir, type CliRun, type RelayProcess } from './harness.js';

// The chat package is no build dependency of these tests: its limit is read when they run.
const CHAT_PACKAGE = '@murmure/chat';
const { MAX_TEXT_LENGTH } = (await import(CHAT_PACKAGE)) as { MAX_TEXT_LENGTH: number };

/** The associated data of link data, as the agent seals it (packages/agent/src/agent.ts). */
const LINK_AAD = new TextEncoder().encode('murmure-link-v1');

const PASS = 'the right passphrase';

let relay: RelayProcess;
let root: string;
let alice: string;
let bob: string;
/** A live one-time link of Alice's. */
let link = '';

/** `murmure --home DIR ARGS...` with the right passphrase, --json unless `plain`. */
function cli(home: string, args: readonly string[], opts: Readonly<{ plain?: boolean; passphrase?: string }> = {}): Promise<CliRun> {
  return runMurmure(['--home', home, ...(opts.plain === true ? [] : ['--json']), ...args], { passphrase: opts.passphrase ?? PASS });
}

/** No line of the output is a stack frame. */
function noStack(r: CliRun): void {
  for (const line of `${r.stdout}\n${r.stderr}`.split('\n')) assert.equal(line.startsWith('    at '), false, `a stack trace was printed:\n${r.stdout}${r.stderr}`);
}

/** A --json failure: the exit code, one error object with `code` and a one-line message, nothing on stderr. */
function assertFails(r: CliRun, code: string, exit = 1): string {
  noStack(r);
  assert.equal(r.code, exit, `exit code (${r.stdout}${r.stderr})`);
  assert.equal(r.stderr, '');
  assert.equal(r.stdout.split('\n').filter((l) => l !== '').length, 1, `one line: ${r.stdout}`);
  assert.equal(r.json.length, 1);
  const e = r.json[0]!['error'] as { code?: unknown; message?: unknown } | undefined;
  assert.equal(e?.code, code, r.stdout);
  assert.equal(typeof e?.message, 'string');
  assert.ok(String(e?.message).length > 0);
  return String(e?.message);
}

/** A failure without --json: nothing on stdout, one `murmure: ...` line on stderr. */
function assertFailsPlain(r: CliRun, exit = 1): void {
  noStack(r);
  assert.equal(r.code, exit, `exit code (${r.stdout}${r.stderr})`);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, /^murmure: [^\n]+\n$/);
}

/** SHA-256 of every file of a folder. */
function hashes(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of filesUnder(dir).sort()) out[f] = createHash('sha256').update(readFileSync(f)).digest('hex');
  return out;
}

before(async () => {
  relay = await startRelay();
  root = tempDir('murmure-cli-errors-');
  alice = join(root, 'alice');
  bob = join(root, 'bob');
  for (const [home, name] of [[alice, 'Alice'], [bob, 'Bob']] as const) {
    const r = await cli(home, ['init', '--name', name, '--relay', relay.address]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
  }
  const inv = await cli(alice, ['invite']);
  assert.equal(inv.code, 0, inv.stdout + inv.stderr);
  link = String(inv.json[0]?.['link']);
});

after(async () => {
  await stopRelay(relay);
  cleanup(relay.dataDir);
  cleanup(root);
});

test('a wrong passphrase is refused with WRONG_PASSPHRASE and changes nothing', async () => {
  const contactId = String((await cli(alice, ['contacts'])).json[0]?.['id']);
  const before = hashes(alice);
  assert.ok(Object.keys(before).length >= 2, JSON.stringify(before));
  for (const args of [['contacts'], ['send', contactId, 'hello'], ['invite'], ['passphrase', 'change']]) {
    const r = await runMurmure(['--home', alice, '--json', ...args], { passphrase: 'not the passphrase', env: { MURMURE_NEW_PASSPHRASE: 'another one' } });
    assertFails(r, 'WRONG_PASSPHRASE');
  }
  assertFailsPlain(await cli(alice, ['contacts'], { plain: true, passphrase: 'not the passphrase' }));
  assert.deepEqual(hashes(alice), before, 'no file of the home changed');
  assert.equal((await cli(alice, ['contacts'])).code, 0, 'the right passphrase still opens it');
});

test('damaged links are refused with BAD_LINK, in one line', async () => {
  const m = /^(murmure:\/\/)([^@]+)(@[^/]+\/i#[^.]+\.)(.+)$/.exec(link);
  assert.ok(m !== null, link);
  const [, scheme, fingerprint, middle, key] = m as unknown as [string, string, string, string, string];
  // Change a character in the middle of the key (the last one may only carry padding bits).
  const i = Math.floor(key.length / 2);
  const alteredKey = `${key.slice(0, i)}${key[i] === 'A' ? 'B' : 'A'}${key.slice(i + 1)}`;
  const damaged: Record<string, string> = {
    'truncated key': link.slice(0, -6),
    'truncated in the relay address': link.slice(0, 40),
    'altered key': `${scheme}${fingerprint}${middle}${alteredKey}`,
    'invalid fingerprint': `${scheme}${fingerprint.slice(0, 20)}${middle}${key}`,
    'fingerprint with a bad character': `${scheme}${fingerprint.slice(0, -1)}!${middle}${key}`,
    'plain string': 'see you at the usual place',
  };
  for (const [what, bad] of Object.entries(damaged)) {
    const message = assertFails(await cli(bob, ['connect', bad]), 'BAD_LINK');
    assert.equal(message.includes('\n'), false, what);
    assertFailsPlain(await cli(bob, ['connect', bad], { plain: true }));
  }
  assert.deepEqual((await cli(bob, ['contacts'])).json, [], 'no contact was made');
  // The real link still works: the damaged ones did not use it up.
  const ok = await cli(bob, ['connect', link]);
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  assert.equal(ok.json[0]?.['status'], 'pending');
});

test('a link whose data is for another version is refused with VERSION', async () => {
  const client = await RelayClient.connect(relay.address, { timeoutMs: 5000 });
  try {
    for (const version of [99, 0]) {
      // As the agent's createInvitation does, with the version byte of the data changed.
      const q = await client.createQueue();
      const data = encodeInvitationData({
        version,
        kind: 'invitation',
        queue: { relay: parseRelayAddress(relay.address), sndId: q.sndId, e2eKey: new Uint8Array(randomBytes(32)) },
        bundle: new Uint8Array(randomBytes(200)),
      });
      assert.equal(data[0], version);
      const linkId = randomId();
      const key = new Uint8Array(randomBytes(32));
      const nonce = new Uint8Array(randomBytes(QUEUE_BOX_NONCE_LENGTH));
      await client.setLink(q, linkId, Buffer.concat([nonce, sealWithNonce(key, nonce, LINK_AAD, data)]));
      const future = formatInvitationLink({ kind: 'invitation', relay: parseRelayAddress(relay.address), linkId, key });
      assertFails(await cli(bob, ['connect', future]), 'VERSION');
      assertFailsPlain(await cli(bob, ['connect', future], { plain: true }));
    }
  } finally {
    client.close();
  }
});

test('an unknown command or option is a usage error, exit code 2', async () => {
  assertFails(await runMurmure(['frobnicate', '--json', '--home', alice], { passphrase: PASS }), 'USAGE', 2);
  assertFails(await runMurmure(['contacts', '--frobnicate', '--json', '--home', alice], { passphrase: PASS }), 'USAGE', 2);
  assertFailsPlain(await runMurmure(['frobnicate', '--home', alice], { passphrase: PASS }), 2);
});

test('sending to an unknown contact gives NO_CONTACT; a too long message gives TOO_LARGE', async () => {
  assertFails(await cli(bob, ['send', 'Nobody', 'hello']), 'NO_CONTACT');
  assertFails(await cli(bob, ['send', 'ffff', 'hello']), 'NO_CONTACT');
  const contactId = String((await cli(bob, ['contacts'])).json[0]?.['id']);
  assert.match(contactId, /^[0-9a-f-]{36}$/);
  assertFails(await cli(bob, ['send', contactId, 'x'.repeat(MAX_TEXT_LENGTH + 1)]), 'TOO_LARGE');
  const longest = await cli(bob, ['send', contactId, 'x'.repeat(MAX_TEXT_LENGTH)]);
  assert.equal(longest.code, 0, longest.stdout + longest.stderr);
  assert.equal(longest.json[0]?.['status'], 'queued');
});

test('a command on a folder with no home gives NO_HOME and creates nothing', async () => {
  const nowhere = join(root, 'nowhere');
  assertFails(await cli(nowhere, ['contacts']), 'NO_HOME');
  assertFailsPlain(await cli(nowhere, ['contacts'], { plain: true }));
  assert.equal(existsSync(nowhere), false);
});
