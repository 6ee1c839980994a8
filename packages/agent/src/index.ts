// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The Murmure agent: connections as queue pairs over relays. This release holds its relay
 * transport.
 * @module
 */

export * from './transport/relay-client.js';
