// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The Murmure relay: an untrusted mailbox of one-way queues that sees only ciphertext.
 * @module
 */

export { RelayServer, RelayStartError, STORE_FILE, type StartOptions } from './server.js';
export { DataLock, DataLockError, LOCK_FILE, type DataLockErrorCode } from './data-lock.js';
export { DEFAULTS, relayConfig, type RelayConfig } from './config.js';
export { createIdentity, loadIdentity, loadOrCreateIdentity, certificateFingerprint, type RelayIdentity } from './identity.js';
export { jsonLogger, silentLogger, type Logger, type LogLevel } from './log.js';
export { RelayMetrics } from './metrics.js';
export { AUTH_FAILURE_TOKENS, AUTH_KEY_CACHE_SIZE, MAX_COMMANDS_IN_FLIGHT } from './connection.js';
export { SourceBlockError, sourceBlocks, sourceKey } from './sources.js';
export { PASS_BUDGET_MS, TURN_BUDGET_MS } from './turns.js';
export { StoreError, type QueueStore, type QueueRecord, type StoredMessage } from './store/queue-store.js';
export { SqliteQueueStore } from './store/sqlite/sqlite-queue-store.js';
