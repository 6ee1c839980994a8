// SPDX-License-Identifier: AGPL-3.0-or-later
// `murmure relay init` as an operator uses it: it makes the relay's key and certificate and
// prints the address clients pin, `relay start` on the same folder serves that identity, a
// second init and options of `start` given to `init` are usage errors that change nothing.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';

import { RelayClient, openDelivered } from '@murmure/agent';
import { parseRelayAddress } from '@murmure/protocol';
import { generateDhKeyPair } from '@murmure/queue-crypto';

import { Inbox, MURMURE_BIN, cleanup, killRelay, runMurmure, startRelay, stopRelay, tempDir, utf8 } from './harness.js';

test('relay init prints the address; relay start on the same folder serves the same fingerprint', async () => {
  const dir = join(tempDir(), 'relay');
  try {
    const init = await runMurmure(['relay', 'init', '--data', dir, '--host', '127.0.0.1', '--port', '47123', '--json']);
    assert.equal(init.code, 0, init.stderr);
    const address = init.json[0]?.['address'];
    assert.equal(typeof address, 'string');
    const parsed = parseRelayAddress(address as string);
    assert.equal(parsed.host, '127.0.0.1');
    assert.equal(parsed.port, 47123);

    const plain = await runMurmure(['relay', 'init', '--data', join(dir, '..', 'second')]);
    assert.equal(plain.code, 0, plain.stderr);
    assert.match(plain.stdout, /^murmure:\/\/[^@\s]+@127\.0\.0\.1:5224\n$/, 'without --json: the address alone, on the default host and port');

    // Port 0 on start overrides the port init recorded and prints the real one.
    const relay = await startRelay({ dataDir: dir });
    try {
      const served = parseRelayAddress(relay.address);
      assert.deepEqual(Buffer.from(served.fingerprint), Buffer.from(parsed.fingerprint), 'start serves the key init made');
      assert.notEqual(served.port, 0);
      const c = await RelayClient.connect(relay.address); // pins the certificate init made
      await c.ping();
      c.close();
    } finally {
      assert.equal(await stopRelay(relay), 0);
    }
    // Started as `node murmure.js`, without the flags of the command's first line: it serves, and
    // its log says what it runs without.
    assert.match(relay.log.join(''), /"level":"warn","event":"started without a heap floor","flag":"--initial-old-space-size"/);
  } finally {
    cleanup(join(dir, '..'));
  }
});

test('relay init on a folder that holds a relay, or with an option of start, is a usage error that changes nothing', async () => {
  const root = tempDir();
  try {
    const dir = join(root, 'relay');
    const first = await runMurmure(['relay', 'init', '--data', dir]);
    assert.equal(first.code, 0, first.stderr);
    const files = readdirSync(dir).sort();
    const again = await runMurmure(['relay', 'init', '--data', dir]);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /already holds a relay/);
    assert.deepEqual(readdirSync(dir).sort(), files, 'the existing relay is untouched');

    const other = join(root, 'other');
    const quota = await runMurmure(['relay', 'init', '--data', other, '--quota', '5']);
    assert.equal(quota.code, 2);
    assert.match(quota.stderr, /--quota is an option of 'murmure relay start'/);
    assert.doesNotMatch(quota.stderr, /\n\s+at /, 'no stack trace');
    assert.equal(existsSync(other), false, 'nothing was created');

    // An address clients could not use is refused too: port 0 or a host that is not one.
    for (const args of [['--port', '0'], ['--host', 'my_host'], ['--host', 'a b']]) {
      const bad = await runMurmure(['relay', 'init', '--data', other, ...args]);
      assert.equal(bad.code, 2, args.join(' '));
      assert.match(bad.stderr, args[0] === '--port' ? /port 0, a free port, is for 'relay start'/ : /relay host must be a host name or an IP address/);
      assert.equal(existsSync(other), false, `${args.join(' ')}: nothing was created`);
    }
  } finally {
    cleanup(root);
  }
});

test('a second relay start or init on a folder a relay is using is refused at once and changes nothing; after kill -9 the folder starts again', async () => {
  const root = tempDir();
  const dir = join(root, 'relay');
  try {
    const init = await runMurmure(['relay', 'init', '--data', dir, '--host', '127.0.0.1', '--port', '47125']);
    assert.equal(init.code, 0, init.stderr);
    const relay = await startRelay({ dataDir: dir });
    let running = true;
    try {
      const alice = await RelayClient.connect(relay.address);
      const bob = await RelayClient.connect(relay.address);
      const q = await alice.createQueue();
      const senderKey = generateDhKeyPair();
      await alice.secure(q, senderKey.publicKey);
      await bob.send(q.sndId, senderKey.privateKey, utf8('sent before the second start'));
      alice.close();

      const kept = ['tls-key.pem', 'tls-cert.pem', 'relay.json'];
      const digest = (): string[] => kept.map((f) => createHash('sha256').update(readFileSync(join(dir, f))).digest('hex'));
      const files = readdirSync(dir).sort();
      const before = digest();
      for (const args of [['relay', 'start', '--data', dir, '--host', '127.0.0.1', '--port', '0'], ['relay', 'init', '--data', dir, '--port', '47126']]) {
        const started = Date.now();
        const second = await runMurmure(args);
        assert.ok(Date.now() - started < 10_000, `${args[1]}: refused at once, not after a wait for the lock`);
        assert.equal(second.code, 1, `${args[1]}: exit code 1`);
        assert.equal(second.stdout, '', `${args[1]}: no address is printed`);
        assert.equal(second.stderr, `murmure: the data folder ${dir} is in use by another relay\n`, `${args[1]}: one line that says why`);
        const json = await runMurmure([...args, '--json']);
        assert.equal(json.code, 1);
        assert.deepEqual(json.json, [{ error: { code: 'IN_USE', message: `the data folder ${dir} is in use by another relay` } }]);
      }
      assert.deepEqual(readdirSync(dir).sort(), files, 'no file was added or removed');
      assert.deepEqual(digest(), before, 'the key, the certificate and relay.json are as they were');

      // The running relay goes on as if nothing had happened.
      const again = await RelayClient.connect(relay.address);
      const inbox = new Inbox(again);
      await again.subscribe(q);
      await inbox.waitFor(1);
      const m = inbox.messages[0]!;
      assert.equal(Buffer.from(openDelivered(q, m.msgId, m.body).body).toString(), 'sent before the second start');
      await again.ack(q, m.msgId);
      again.close();
      bob.close();

      // A relay killed with -9 holds nothing: the kernel freed the lock with the process.
      await killRelay(relay);
      running = false;
      const restarted = await startRelay({ dataDir: dir });
      try {
        assert.deepEqual(parseRelayAddress(restarted.address).fingerprint, parseRelayAddress(relay.address).fingerprint);
        const c = await RelayClient.connect(restarted.address);
        await c.ping();
        c.close();
      } finally {
        assert.equal(await stopRelay(restarted), 0);
      }
    } finally {
      if (running) await stopRelay(relay);
    }
  } finally {
    cleanup(root);
  }
});

test('a relay.lock that is not a lock file: relay start says so in one line (JSON code LOCK_FAILED) and leaves it as it is', async () => {
  const root = tempDir();
  const dir = join(root, 'relay');
  try {
    mkdirSync(dir);
    const junk = 'this is not a lock file\n'.repeat(100);
    writeFileSync(join(dir, 'relay.lock'), junk);
    const args = ['relay', 'start', '--data', dir, '--host', '127.0.0.1', '--port', '0'];
    const r = await runMurmure(args);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr, `murmure: relay.lock in the data folder is not a lock file: stop any relay on ${dir} and remove it\n`);
    const j = await runMurmure([...args, '--json']);
    assert.equal(j.code, 1);
    assert.equal((j.json[0]?.['error'] as { code?: string } | undefined)?.code, 'LOCK_FAILED');
    assert.equal(readFileSync(join(dir, 'relay.lock'), 'utf8'), junk, 'the file is left as it was');
    assert.deepEqual(readdirSync(dir), ['relay.lock'], 'nothing else was made');
  } finally {
    cleanup(root);
  }
});

test('murmure --help names the relay commands; relay start, run as a program as npx runs it, gets the node flags of its first line, prints the bare address first and loads no messenger code', async () => {
  const help = await runMurmure(['--help']);
  assert.equal(help.code, 0, help.stderr);
  assert.match(help.stdout, /murmure relay init/);
  assert.match(help.stdout, /murmure relay start/);

  const dir = join(tempDir(), 'relay');
  let proc: ChildProcess | null = null;
  try {
    const init = await runMurmure(['relay', 'init', '--data', dir, '--json']);
    assert.equal(init.code, 0, init.stderr);
    const made = parseRelayAddress(init.json[0]?.['address'] as string);
    // The script itself, as npx and a shell run it: its first line (`#!/usr/bin/env -S node
    // FLAGS`) gives node the relay's heap flags (docs/operations.md, "The relay's heap").
    const flags = /^#!\/usr\/bin\/env -S node (.+)$/.exec(readFileSync(MURMURE_BIN, 'utf8').split('\n', 1)[0]!)?.[1] ?? '';
    assert.ok(flags.split(' ').some((f) => /^--initial-old-space-size=\d+$/.test(f)), `the first line names the heap floor: ${flags}`);
    const npmStart = (JSON.parse(readFileSync(join(MURMURE_BIN, '../../../../package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts['start'];
    assert.ok(npmStart?.includes(`node ${flags} packages/cli/bin/murmure.js relay start`), `npm start gives node the same flags: ${String(npmStart)}`);
    // The node that runs the tests, first in PATH: the one `env` finds.
    const env = { ...process.env, PATH: `${dirname(process.execPath)}:${process.env['PATH'] ?? ''}` };
    proc = spawn(MURMURE_BIN, ['relay', 'start', '--data', dir, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let log = '';
    proc.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
    // 'close' comes once its stderr is read to the end.
    const closed = once(proc, 'close');
    const exited = once(proc, 'exit');
    const first = await Promise.race([
      once(createInterface({ input: proc.stdout! }), 'line').then(([line]) => line as string),
      exited.then(([code]) => assert.fail(`relay start exited (${String(code)}) before printing its address`)),
    ]);
    const served = parseRelayAddress(first); // the whole first line is the address, nothing else
    assert.deepEqual(Buffer.from(served.fingerprint), Buffer.from(made.fingerprint));
    assert.notEqual(served.port, 0, 'port 0 prints the real port');
    const c = await RelayClient.connect(first);
    await c.ping();
    c.close();
    const argv = readFileSync(`/proc/${proc.pid}/cmdline`, 'utf8').split('\0');
    assert.deepEqual(argv.slice(1, 1 + flags.split(' ').length), flags.split(' '), `node runs with the first line's flags: ${argv.join(' ')}`);
    // A relay loads what it serves with, not the messenger: libsignal is not in its memory.
    const maps = readFileSync(`/proc/${proc.pid}/maps`, 'utf8');
    assert.match(maps, /sqlcipher/, "the store's native module is mapped: the check sees native modules");
    assert.doesNotMatch(maps, /libsignal/, 'no libsignal in a relay process');
    proc.kill('SIGTERM');
    assert.deepEqual(await exited, [0, null], 'SIGTERM: a clean stop, exit code 0');
    await closed;
    assert.match(log, /"event":"relay stopped"/, 'its log is read to the end');
    assert.doesNotMatch(log, /heap floor/, 'with the first line\'s flags, no warning');
  } finally {
    if (proc !== null && proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    cleanup(join(dir, '..'));
  }
});

test('relay start with unlimited sources that are not address blocks is a usage error that creates nothing', async () => {
  const root = tempDir();
  try {
    const dir = join(root, 'relay');
    for (const list of ['10.0.0.0/33', 'localhost', '127.0.0.0/8,,::1', '']) {
      const bad = await runMurmure(['relay', 'start', '--data', dir, '--port', '0', '--unlimited-sources', list]);
      assert.equal(bad.code, 2, `'${list}': ${bad.stderr}`);
      assert.match(bad.stderr, /--unlimited-sources: '.*' is not an address block/);
      assert.doesNotMatch(bad.stderr, /\n\s+at /, 'no stack trace');
      assert.equal(existsSync(dir), false, `'${list}': nothing was created`);
    }
  } finally {
    cleanup(root);
  }
});
