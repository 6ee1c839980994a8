// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The `murmure` command line.
 * @module
 */

export { main } from './main.js';
