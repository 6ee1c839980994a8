// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The Murmure agent: connections as queue pairs over relays, invitations, delivery.
 * @module
 */

export * from './transport/relay-client.js';
export { RelayPool } from './transport/relay-pool.js';
export * from './transport/socks.js';
export * from './agent.js';
export { AgentError, type AgentErrorCode } from './errors.js';
export { LocalDatabase, deriveDatabaseKey, loadSalt, type Migration } from './store/database.js';
export { AGENT_MIGRATIONS, type ConnectionStatus } from './store/agent-store.js';
