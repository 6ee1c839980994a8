#!/usr/bin/env node
// SPDX-License-Identifier: AGPL-3.0-or-later
import { main } from '../dist/main.js';

// Everything is written, committed and closed once main resolves: exit as soon as stdout has
// flushed, rather than wait for the runtime to drain handles nothing needs any more.
const code = await main(process.argv.slice(2));
process.stdout.write('', () => process.exit(code));
