#!/usr/bin/env node
// SPDX-License-Identifier: AGPL-3.0-or-later
import { main } from '../dist/main.js';

process.exitCode = await main(process.argv.slice(2));
