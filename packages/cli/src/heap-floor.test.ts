// SPDX-License-Identifier: AGPL-3.0-or-later
// The relay's heap floor: `relay start` recognises the node flag in the forms node and V8 take,
// and nothing else, so that its warning appears exactly when the flag is missing.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { HEAP_FLOOR_FLAG, hasHeapFloor } from './main.js';

test('hasHeapFloor finds the flag with = or a separate value, and with V8 underscores', () => {
  assert.equal(HEAP_FLOOR_FLAG, '--initial-old-space-size');
  assert.equal(hasHeapFloor(['--initial-old-space-size=48']), true);
  assert.equal(hasHeapFloor(['--cpu-prof', '--initial-old-space-size', '48']), true);
  assert.equal(hasHeapFloor(['--initial_old_space_size=64']), true);
});

test('hasHeapFloor is false without the flag, and for flags that only look like it', () => {
  assert.equal(hasHeapFloor([]), false);
  assert.equal(hasHeapFloor(['--max-old-space-size=48', '--max-semi-space-size=8', '--initial-heap-size=96']), false);
  assert.equal(hasHeapFloor(['--initial-old-space-size-x=1', '-initial-old-space-size=48']), false);
});
