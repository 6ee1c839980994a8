#!/usr/bin/env -S node --initial-old-space-size=48
// SPDX-License-Identifier: AGPL-3.0-or-later
// The first line's flag gives V8's old generation a limit of at least 48 MiB. V8 starts a
// mark-compact once the old generation, plus the growth of external memory since the last one
// (every socket read is a new 16 KiB buffer, freed by the next scavenge), comes within the young
// generation's capacity (one semi-space, 16 MiB) of that limit. Under load the relay's old
// generation holds ~10 MB and its limit, left to V8, was ~34 MB, so a mark-compact started as soon
// as the last one ended, each stopping every client 5-12 ms; with the floor there are none in a
// steady load from a few clients (docs/operations.md, "The relay's heap"). NODE_OPTIONS cannot
// carry this flag: `npm start` passes it to node itself, and `relay start` warns without it.
import { main } from '../dist/main.js';

// Everything is written, committed and closed once main resolves: exit as soon as stdout has
// flushed, rather than wait for the runtime to drain handles nothing needs any more.
const code = await main(process.argv.slice(2));
process.stdout.write('', () => process.exit(code));
