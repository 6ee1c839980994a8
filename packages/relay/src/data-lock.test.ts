// SPDX-License-Identifier: AGPL-3.0-or-later
// The data folder's lock: one holder at a time, in this process or another; the kernel frees it
// when the holder is killed; a file that is not a lock file is reported, not overwritten.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';

import { DataLock, DataLockError, LOCK_FILE } from './data-lock.js';

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'murmure-lock-'));
}

test('a second take in the same process is refused at once until the first lets go', () => {
  const dir = tempDir();
  try {
    const first = DataLock.take(dir);
    assert.throws(() => DataLock.take(dir), (e: unknown) => DataLockError.is(e, 'IN_USE') && e.message === `the data folder ${dir} is in use by another relay`);
    first.release();
    first.release(); // a second release does nothing
    const second = DataLock.take(dir);
    second.release();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the folder is made if missing; two folders are locked apart', () => {
  const root = tempDir();
  try {
    const a = DataLock.take(join(root, 'a', 'relay'));
    const b = DataLock.take(join(root, 'b'));
    a.release();
    b.release();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a lock held by another process refuses this one; killing that process with SIGKILL frees it', async () => {
  const dir = tempDir();
  const moduleUrl = new URL('./data-lock.js', import.meta.url).href;
  const holder = spawn(
    process.execPath,
    ['--input-type=module', '-e', `const { DataLock } = await import(${JSON.stringify(moduleUrl)}); globalThis.held = DataLock.take(${JSON.stringify(dir)}); console.log('held'); setInterval(() => {}, 1000);`],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  try {
    // A holder that fails (to import, say) ends the wait instead of leaving it to the runner's timeout.
    const first = await Promise.race([
      once(createInterface({ input: holder.stdout }), 'line').then(([line]) => String(line)),
      once(holder, 'exit').then(([code]) => `exited with ${String(code)}`),
    ]);
    assert.equal(first, 'held');
    const t0 = performance.now();
    assert.throws(() => DataLock.take(dir), (e: unknown) => DataLockError.is(e, 'IN_USE'));
    assert.ok(performance.now() - t0 < 1000, 'refused at once: SQLite does not wait for the lock');
    const exited = once(holder, 'exit');
    holder.kill('SIGKILL');
    await exited;
    const lock = DataLock.take(dir);
    lock.release();
  } finally {
    holder.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a lock file that is not one is reported with what to do, and left as it is', () => {
  const dir = tempDir();
  try {
    const junk = Buffer.from('not a lock file, but something an operator put here\n'.repeat(200));
    writeFileSync(join(dir, LOCK_FILE), junk);
    assert.throws(
      () => DataLock.take(dir),
      (e: unknown) => DataLockError.is(e, 'LOCK_FAILED') && e.message.includes(`${LOCK_FILE} in the data folder is not a lock file`),
    );
    assert.deepEqual(readFileSync(join(dir, LOCK_FILE)), junk);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a folder that cannot be made is reported as a lock failure, not thrown raw', () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'a-file');
    writeFileSync(file, 'x');
    assert.throws(() => DataLock.take(join(file, 'relay')), (e: unknown) => DataLockError.is(e, 'LOCK_FAILED') && /could not be locked \(ENOTDIR\)/.test(e.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
