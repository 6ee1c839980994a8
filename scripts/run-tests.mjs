#!/usr/bin/env node
// SPDX-License-Identifier: AGPL-3.0-or-later
// Runs the compiled tests with node's test runner: `unit` (next to the code), `e2e` (real
// processes on loopback) or both. Test files run one at a time, so the e2e tests that start
// relays and measure them do not compete with each other on a 2-core machine.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const which = process.argv[2] ?? 'all';
const roots = {
  unit: ['packages/protocol/dist', 'packages/queue-crypto/dist', 'packages/crypto/dist', 'packages/relay/dist', 'packages/agent/dist', 'packages/chat/dist', 'packages/cli/dist'],
  e2e: ['tests/e2e/dist'],
};
const dirs = which === 'all' ? [...roots.unit, ...roots.e2e] : roots[which];
if (dirs === undefined) {
  console.error(`usage: run-tests.mjs [unit|e2e|all]`);
  process.exit(2);
}

function find(dir) {
  let out = [];
  let entries;
  try {
    entries = readdirSync(dir);
  } catch {
    return out;
  }
  for (const e of entries) {
    const p = join(dir, e);
    if (statSync(p).isDirectory()) out = out.concat(find(p));
    else if (e.endsWith('.test.js')) out.push(p);
  }
  return out;
}

const files = dirs.flatMap(find).sort();
if (files.length === 0) {
  console.error('no test files found: run `npm run build` first');
  process.exit(1);
}
// A test file that runs longer than this fails (its process is ended) instead of holding the
// whole run: the longest file takes about two minutes on a 2-core machine.
const FILE_TIMEOUT_MS = 15 * 60_000;
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', `--test-timeout=${FILE_TIMEOUT_MS}`, ...files], { stdio: 'inherit' });
process.exit(r.status ?? 1);
