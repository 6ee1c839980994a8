// SPDX-License-Identifier: AGPL-3.0-or-later
// `npm start`, as README.md tells a newcomer to run it on a fresh clone: it builds, runs a relay
// on the embedded defaults (data under ./data, 127.0.0.1:5224) and prints its address, which a
// client can use at once; SIGTERM to its process group (as a terminal sends it) stops it cleanly.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';

import { RelayClient } from '@murmure/agent';
import { parseRelayAddress } from '@murmure/protocol';

import { MURMURE_BIN, utf8 } from './harness.js';

const ROOT = resolve(MURMURE_BIN, '../../../..');
const DEFAULT_PORT = 5224;

/** Whether 127.0.0.1:port can be listened on now. */
async function portFree(port: number): Promise<boolean> {
  const s = createServer();
  try {
    s.listen(port, '127.0.0.1');
    await once(s, 'listening');
    return true;
  } catch {
    return false;
  } finally {
    s.close();
  }
}

test('npm start builds, runs a relay on the defaults and prints its address; a client uses it; SIGTERM stops it cleanly', { timeout: 120_000 }, async (t) => {
  if (!(await portFree(DEFAULT_PORT))) {
    t.skip(`port ${DEFAULT_PORT} is in use (a relay started with npm start is running)`);
    return;
  }
  const data = join(ROOT, 'data');
  if (existsSync(data)) {
    t.skip('./data exists: the test does not touch a relay someone made with npm start');
    return;
  }
  // In a process group of its own, stopped as a terminal stops it: the signal goes to the group.
  const npm = spawn('npm', ['start'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const signalGroup = (signal: NodeJS.Signals): void => {
    try {
      process.kill(-npm.pid!, signal);
    } catch {
      // the group is gone
    }
  };
  const exited = once(npm, 'exit');
  // 'close' comes once every process holding npm's output (the relay too) has ended.
  const closed = once(npm, 'close');
  let stderr = '';
  npm.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  let deadline: NodeJS.Timeout | undefined;
  try {
    const address = await Promise.race([
      new Promise<string>((r) => createInterface({ input: npm.stdout }).on('line', (l) => l.startsWith('murmure://') && r(l))),
      exited.then(([code]) => assert.fail(`npm start exited (${String(code)}) before printing an address: ${stderr}`)),
      new Promise<never>((_, reject) => {
        deadline = setTimeout(() => reject(new Error('npm start printed no address in 100 s')), 100_000);
      }),
    ]);
    const parsed = parseRelayAddress(address);
    assert.equal(parsed.host, '127.0.0.1');
    assert.equal(parsed.port, DEFAULT_PORT);
    assert.ok(existsSync(join(data, 'relay.sqlite')), 'the store is under ./data');

    const alice = await RelayClient.connect(address);
    const bob = await RelayClient.connect(address);
    const q = await alice.createQueue();
    await bob.send(q.sndId, null, utf8('hello'));
    assert.ok((await alice.get(q)) !== null, 'a message goes through');
    alice.close();
    bob.close();

    signalGroup('SIGTERM');
    await closed;
    assert.match(stderr, /"event":"relay stopped"/, `the relay stopped cleanly: ${stderr}`);
    assert.doesNotMatch(stderr, /did not stop cleanly|\n\s+at /, 'no failure and no stack trace');
  } finally {
    clearTimeout(deadline);
    signalGroup('SIGKILL');
    rmSync(data, { recursive: true, force: true });
  }
});
