// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Relay settings and every limit the relay enforces, with their defaults. docs/operations.md
 * lists them for operators; docs/protocol.md lists the ones a client can observe.
 * @module
 */

/** All settings of a running relay. */
export type RelayConfig = Readonly<{
  /** Folder holding the relay's keys, certificate and store. */
  dataDir: string;
  /** Address to listen on. */
  host: string;
  /** Port to listen on; 0 picks a free one. */
  port: number;
  /** Port of the optional Prometheus `/metrics` endpoint (on `metricsHost`); null: off. */
  metricsPort: number | null;
  /** Address of the metrics endpoint. */
  metricsHost: string;
  /** Undelivered messages are deleted after this long. */
  messageTtlMs: number;
  /** Queues with no activity for this long are deleted. */
  queueTtlMs: number;
  /** How often expiry runs. */
  expiryIntervalMs: number;
  /** Most undelivered messages one queue may hold; then SEND gets ERR QUOTA. */
  queueQuota: number;
  /** Most connections open at once; more are closed before any TLS work. */
  maxConnections: number;
  /**
   * Most connections open at once from one source (an IPv4 address, or an IPv6 /64); more are
   * closed before any TLS work. Sources in `unlimitedSources` are not limited this way.
   */
  maxConnectionsPerSource: number;
  /**
   * Address blocks (`10.0.0.0/8`, `::1/128`, a bare address) whose connections are not limited
   * per source: a local reverse proxy or onion service brings every client from one address.
   */
  unlimitedSources: readonly string[];
  /**
   * Connections the kernel may hold waiting to be accepted (the `listen` backlog; Linux caps it
   * at net.core.somaxconn). A small one makes a reconnect storm wait for SYN retransmissions.
   */
  listenBacklog: number;
  /** Commands per second one connection may send (token bucket refill rate). */
  commandsPerSecond: number;
  /** Commands one connection may send in a burst (token bucket size). */
  commandBurst: number;
  /**
   * Refused authorisations (ERR AUTH) one source may cause per second, over all its connections
   * (twice as many at once); past it every command of the source gets ERR LIMIT until the
   * refill. Sources in `unlimitedSources` have no such budget.
   */
  authRefusalsPerSource: number;
  /** Queues one connection may create over its life. */
  queuesPerConnection: number;
  /**
   * The password a NEW must carry to create a queue (a relay for a known group of people); null:
   * anyone may create queues. Sending to a queue never needs it. Part of the relay's address.
   */
  createPassword: string | null;
  /** Time allowed for the TLS handshake, and again from its end to the client hello (upgrade and hello). */
  handshakeTimeoutMs: number;
  /** A connection that sends nothing for this long is closed. Clients PING to stay. */
  idleTimeoutMs: number;
  /** Unsent bytes a connection may have queued before it is closed as too slow. */
  maxBufferedBytes: number;
  /**
   * Bytes waiting unsent on backed-up connections (clients that do not read), over all of them;
   * past it the connection backed up longest is cut off (unsent-budget.ts).
   */
  unsentBudgetBytes: number;
  /**
   * Bytes of messages the relay holds read ahead for its subscriptions, all together (each
   * holds at most PREFETCH_BYTES); past it subscriptions read one message at a time. 0: none.
   */
  prefetchBudgetBytes: number;
  /** How often a line of counts is logged. */
  statsIntervalMs: number;
  /**
   * Serve plain WebSocket without TLS, on a loopback host only: for benchmarks that compare
   * servers with TLS off. Session ids then come from the relay's session key (docs/protocol.md).
   */
  plainLoopback: boolean;
}>;

/** Default settings: the values a relay runs with unless told otherwise. */
export const DEFAULTS = {
  host: '127.0.0.1',
  port: 5224,
  metricsPort: null,
  metricsHost: '127.0.0.1',
  messageTtlMs: 21 * 86_400_000,
  queueTtlMs: 90 * 86_400_000,
  expiryIntervalMs: 3_600_000,
  queueQuota: 128,
  maxConnections: 16_000,
  maxConnectionsPerSource: 1_000,
  unlimitedSources: ['127.0.0.0/8', '::1/128'],
  listenBacklog: 4_096,
  commandsPerSecond: 20_000,
  commandBurst: 40_000,
  authRefusalsPerSource: 2_000,
  queuesPerConnection: 1_000,
  createPassword: null,
  handshakeTimeoutMs: 10_000,
  idleTimeoutMs: 15 * 60_000,
  // 1 MiB: 64 framed blocks (64 × 16,380 bytes) may wait, a 65th is too many.
  maxBufferedBytes: 1_048_576,
  // 256 MiB: about a thousand connections backed up at once (256 KiB and a few blocks each).
  unsentBudgetBytes: 256 * 1024 * 1024,
  prefetchBudgetBytes: 64 * 1024 * 1024,
  statsIntervalMs: 5 * 60_000,
  plainLoopback: false,
} as const satisfies Omit<RelayConfig, 'dataDir'>;

/** A complete config from a data folder and any overrides. */
export function relayConfig(dataDir: string, overrides: Partial<Omit<RelayConfig, 'dataDir'>> = {}): RelayConfig {
  return { ...DEFAULTS, ...overrides, dataDir };
}
