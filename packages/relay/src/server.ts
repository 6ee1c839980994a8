// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The relay server: WebSocket over TLS 1.3, a fixed block size, connection limits and
 * timeouts, expiry, metrics and a graceful stop.
 * @module
 */

import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';

import { BLOCK_SIZE, MAX_PASSWORD_LENGTH, SESSION_EXPORTER_LABEL, SESSION_ID_LENGTH, formatRelayAddress, isLoopbackHost, isRelayPassword } from '@murmure/protocol';
import { WebSocketServer } from 'ws';

import type { RelayConfig } from './config.js';
import { CloseCode, Connection } from './connection.js';
import { DataLock } from './data-lock.js';
import { RelayHandlers } from './handlers.js';
import { loadOrCreateIdentity, type RelayIdentity } from './identity.js';
import { silentLogger, type Logger } from './log.js';
import { RelayMetrics } from './metrics.js';
import { SessionKeys } from './session-keys.js';
import { SOURCE_SWEEP_MS, SourceBlockError, SourceLimiter, sourceBlocks, type SourceSlot } from './sources.js';
import { UnsentBudget } from './unsent-budget.js';
import type { QueueStore } from './store/queue-store.js';
import { SqliteQueueStore, type StoreEvent } from './store/sqlite/sqlite-queue-store.js';

/** Name of the store file inside the data folder. */
export const STORE_FILE = 'relay.sqlite';

/** Options for starting a relay. */
export type StartOptions = Readonly<{ logger?: Logger; store?: QueueStore; now?: () => number }>;

/** The relay cannot start with these settings. */
export class RelayStartError extends Error {}

/** Counts and logs what the store reports; a failing disk is logged once, not at every retry. */
function storeEvent(event: StoreEvent, metrics: RelayMetrics, logger: Logger): void {
  switch (event) {
    case 'sync-failed':
      metrics.storeSyncFailures++;
      metrics.storeWritable = 0;
      logger.log('error', 'store sync failed: writes refused until a checkpoint succeeds');
      break;
    case 'recovered':
      metrics.storeRecoveries++;
      metrics.storeWritable = 1;
      logger.log('info', 'store recovered: checkpoint done, writes taken again');
      break;
    case 'delete-retry':
      metrics.storeRetries++;
      break;
    case 'recovery-failed':
      logger.log('warn', 'store recovery failed: checkpoint not possible yet, writes still refused');
      break;
    case 'checkpoint':
      metrics.storeCheckpoints++;
      metrics.storeCheckpointFailing = false;
      break;
    case 'checkpoint-failed':
      metrics.storeCheckpointFailures++;
      // Logged once until a checkpoint succeeds again.
      if (!metrics.storeCheckpointFailing) logger.log('warn', 'store checkpoint failed: tried again at a later commit');
      metrics.storeCheckpointFailing = true;
      break;
    case 'broken':
      metrics.storeCheckpointFailures++;
      metrics.storeWritable = 0;
      logger.log('error', 'store database file sync failed: writes refused until the relay starts again');
      break;
    case 'checkpoint-thread-failed':
      logger.log('error', 'store checkpoint thread failed: checkpoints run on the event loop from now on');
      break;
  }
}

/** The key of a connection in the handshakes under way: the addresses and ports of both ends. */
function handshakeKey(socket: Socket): string | null {
  const { remoteAddress, remotePort, localAddress, localPort } = socket;
  if (remoteAddress === undefined || remotePort === undefined || localAddress === undefined || localPort === undefined) return null;
  return `${remoteAddress} ${remotePort} ${localAddress} ${localPort}`;
}

/** A running relay. */
export class RelayServer {
  private readonly connections = new Set<Connection>();
  private readonly handshakeTimers = new WeakMap<object, NodeJS.Timeout>();
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly sessionKeys = new SessionKeys();
  /** TCP connections closed at the per-source limit, or evicted before their handshake ended. */
  private readonly refused = new WeakSet<object>();
  /** TCP connections open, handshakes under way included (at most `maxConnections`). */
  private open = 0;
  /**
   * Connections whose handshake (TLS, upgrade, client hello) is under way, oldest first, by
   * their addresses and ports at both ends (the TCP socket and the TLS socket over it report
   * the same; two live connections never do).
   */
  private readonly pending = new Map<string, { socket: Socket; free: () => void }>();
  /** The source slot of every connection open, by the same key: its connection shares the source's budget. */
  private readonly slots = new Map<string, SourceSlot>();
  private metricsServer: HttpServer | null = null;
  private stopping: Promise<void> | null = null;
  /** The data folder's lock, held from the start until the store has closed. */
  private lock: DataLock | null = null;
  /** The expiry run going on, if any: a long one is not overlapped by the next. */
  private expiring: Promise<void> | null = null;
  /** Bytes waiting unsent on backed-up connections, over all of them (`unsentBudgetBytes`). */
  private readonly unsent: UnsentBudget;

  private constructor(
    readonly config: RelayConfig,
    readonly identity: RelayIdentity,
    private readonly https: HttpsServer | HttpServer,
    private readonly wss: WebSocketServer,
    private readonly store: QueueStore,
    private readonly handlers: RelayHandlers,
    readonly metrics: RelayMetrics,
    private readonly logger: Logger,
    private readonly now: () => number,
    private readonly sources: SourceLimiter,
  ) {
    this.unsent = new UnsentBudget(config.unsentBudgetBytes, (bytes) => {
      metrics.unsentBytes = bytes;
    });
  }

  /** The port the relay listens on. */
  get port(): number {
    return (this.https.address() as AddressInfo).port;
  }

  /**
   * The address clients use: `murmure://<fingerprint>@host:port`, with `:<password>` after the
   * fingerprint when queue creation needs a password.
   */
  get address(): string {
    const password = this.config.createPassword;
    const a = { fingerprint: this.identity.fingerprint, host: this.config.host, port: this.port };
    return formatRelayAddress(password === null ? a : { ...a, password }, { withPassword: true });
  }

  /** The port of the metrics endpoint, if it runs. */
  get metricsPort(): number | null {
    return this.metricsServer === null ? null : (this.metricsServer.address() as AddressInfo).port;
  }

  /** Loads (or makes) the identity, opens the store and starts listening. */
  static async start(config: RelayConfig, opts: StartOptions = {}): Promise<RelayServer> {
    // Settings are checked before anything is opened or created.
    if (config.plainLoopback && !isLoopbackHost(config.host)) {
      throw new RelayStartError('plain WebSocket without TLS is only served on a loopback host');
    }
    if (!Number.isSafeInteger(config.maxConnectionsPerSource) || config.maxConnectionsPerSource < 1) {
      throw new RelayStartError('the connection limit per source must be a whole number of at least 1');
    }
    if (config.createPassword !== null && !isRelayPassword(config.createPassword)) {
      throw new RelayStartError(`the queue-creation password must have 1-${MAX_PASSWORD_LENGTH} characters, each a letter, a digit or one of - . _ ~`);
    }
    let sources: SourceLimiter;
    try {
      sources = new SourceLimiter(config.maxConnectionsPerSource, sourceBlocks(config.unlimitedSources), config.authRefusalsPerSource);
    } catch (e) {
      if (e instanceof SourceBlockError) throw new RelayStartError(`unlimited sources: ${e.message}`);
      throw e;
    }
    const logger = opts.logger ?? silentLogger;
    // The data folder's lock before the store is opened or anything in the folder is made: a
    // second relay on the same folder stops here, having changed nothing (see data-lock.ts).
    const lock = DataLock.take(config.dataDir);
    const metrics = new RelayMetrics();
    let store: QueueStore | null = null;
    let https: HttpsServer | HttpServer | null = null;
    try {
      const identity = await loadOrCreateIdentity(config.dataDir);
      const opened = (store = opts.store ?? SqliteQueueStore.open({
        path: join(config.dataDir, STORE_FILE),
        onCommit: () => metrics.storeCommits++,
        onEvent: (event) => storeEvent(event, metrics, logger),
      }));
      const handlers = new RelayHandlers(opened, config, metrics, logger, opts.now);
      const http = {
        requestTimeout: config.handshakeTimeoutMs,
        headersTimeout: config.handshakeTimeoutMs,
        keepAliveTimeout: 1000,
        maxHeaderSize: 4096,
      };
      const server = (https = config.plainLoopback
        ? createHttpServer(http)
        : createHttpsServer({
            ...http,
            key: identity.keyPem,
            cert: identity.certPem,
            minVersion: 'TLSv1.3',
            maxVersion: 'TLSv1.3',
            handshakeTimeout: config.handshakeTimeoutMs,
          }));
      const wss = new WebSocketServer({
        noServer: true,
        maxPayload: BLOCK_SIZE,
        // Also what lets block frames bypass ws's sender (Connection.sendRaw): uncompressed, it
        // queues nothing, so its own frames and ours reach the socket in the order of the calls.
        perMessageDeflate: false,
        clientTracking: false,
        skipUTF8Validation: true,
        // The protocol has no subprotocol: one a client offers is not taken (ws takes the first).
        handleProtocols: () => false,
      });
      const relay = new RelayServer(config, identity, server, wss, opened, handlers, metrics, logger, opts.now ?? Date.now, sources);
      relay.lock = lock;
      relay.wire();
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(config.port, config.host, config.listenBacklog, () => {
          server.off('error', reject);
          resolve();
        });
      });
      server.on('error', (e: NodeJS.ErrnoException) => logger.log('error', 'listener error', { code: e.code ?? 'unknown' }));
      if (config.metricsPort !== null) await relay.startMetrics(config.metricsPort);
      relay.startTimers();
      logger.log('info', 'relay started', { port: relay.port, createPassword: config.createPassword !== null });
      if (config.plainLoopback) logger.log('warn', 'serving plain WebSocket without TLS (loopback benchmark mode)');
      return relay;
    } catch (e) {
      // A port in use, a key that does not match its certificate...: nothing is left open (the
      // listener, the store this call opened, the lock), so the same folder and port can be
      // started again. A store that could not be closed cleanly stays open on purpose until the
      // process exits (see sqlite-queue-store.ts), and so does the lock that covers it.
      const server = https as HttpsServer | HttpServer | null;
      if (server?.listening === true) await new Promise<void>((resolve) => server.close(() => resolve()));
      const closed = opts.store !== undefined || store === null || (await (store as QueueStore).close().then(() => true, () => false));
      if (closed) lock.release();
      throw e;
    }
  }

  private wire(): void {
    const { https, wss, config, metrics } = this;
    // Before any TLS handshake: a source at its limit is cut as soon as its TCP connection is
    // accepted (Node has wrapped it in a TLS socket by then, but has read nothing from it).
    https.on('connection', (socket: Socket) => {
      // The source first: a connection its source may not make must not evict anyone.
      const slot = this.sources.admit(socket.remoteAddress);
      if (slot === null) {
        metrics.connectionsRejectedPerSource++;
        this.refused.add(socket);
        socket.destroy();
        return;
      }
      if (this.open >= config.maxConnections && !this.evictOldestHandshake()) {
        slot.release();
        metrics.connectionsRejected++;
        this.refused.add(socket);
        socket.destroy();
        return;
      }
      // The slot is freed once: at the close, or at once when the connection is evicted.
      this.open++;
      const key = handshakeKey(socket);
      let held = true;
      const free = (): void => {
        if (!held) return;
        held = false;
        this.open--;
        if (key !== null && this.pending.get(key)?.socket === socket) this.pending.delete(key);
        if (key !== null && this.slots.get(key) === slot) this.slots.delete(key);
        slot.release();
      };
      if (key !== null) this.slots.set(key, slot);
      if (key !== null) this.pending.set(key, { socket, free });
      socket.once('close', free);
    });
    https.on(config.plainLoopback ? 'connection' : 'secureConnection', (socket: Socket) => {
      const timer = setTimeout(() => {
        metrics.handshakeFailures++;
        socket.destroy();
      }, config.handshakeTimeoutMs);
      timer.unref();
      this.handshakeTimers.set(socket, timer);
      socket.once('close', () => clearTimeout(timer));
    });
    // A connection refused per source ends its TLS socket before any handshake; that is not a
    // handshake failure (the TLS socket's `_parent` is the TCP socket it wraps).
    https.on('tlsClientError', (_e, tls) => {
      if (!this.refused.has((tls as unknown as { _parent?: object })._parent ?? tls)) metrics.handshakeFailures++;
    });
    https.on('request', (_req, res) => {
      res.writeHead(426, { connection: 'close', 'content-type': 'text/plain' });
      res.end('murmure relay: WebSocket only\n');
    });
    https.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      if (this.stopping !== null) {
        socket.destroy();
        return;
      }
      let sessionId: Uint8Array | null = null;
      if (!config.plainLoopback) {
        try {
          const tls = socket as TLSSocket;
          sessionId = new Uint8Array(tls.exportKeyingMaterial(SESSION_ID_LENGTH, SESSION_EXPORTER_LABEL, Buffer.alloc(0)));
        } catch {
          socket.destroy();
          return;
        }
      }
      // The connection's source slot, taken when it was accepted; none if it closed meanwhile.
      const key = handshakeKey(socket);
      const slot = key === null ? undefined : this.slots.get(key);
      if (slot === undefined) {
        socket.destroy();
        return;
      }
      wss.handleUpgrade(req, socket, head, (ws) => {
        metrics.connectionsTotal++;
        metrics.connectionsOpen++;
        const conn = new Connection(ws, socket, sessionId, this.sessionKeys.current(), config, metrics, this.handlers, slot, this.unsent, () => {
          clearTimeout(this.handshakeTimers.get(socket));
          if (key !== null) this.pending.delete(key);
        });
        this.connections.add(conn);
        ws.once('close', () => {
          this.connections.delete(conn);
          metrics.connectionsOpen--;
        });
      });
    });
  }

  /**
   * At the connection limit, makes room by closing the connection whose handshake began
   * longest ago, if one is under way. Connections that stall their handshake (S2, S4) then
   * hold slots only until newer ones arrive, not for the whole handshake deadline: to keep
   * honest clients out, a flood must open connections faster than `maxConnections` per
   * honest handshake time. Established connections are never evicted.
   */
  private evictOldestHandshake(): boolean {
    const oldest = this.pending.entries().next();
    if (oldest.done === true) return false;
    const { socket, free } = oldest.value[1];
    free();
    this.refused.add(socket);
    this.metrics.handshakesEvicted++;
    socket.destroy();
    return true;
  }

  private startTimers(): void {
    const { config } = this;
    const sweep = Math.max(250, Math.min(30_000, Math.floor(config.idleTimeoutMs / 4)));
    const idle = setInterval(() => {
      const cutoff = performance.now() - config.idleTimeoutMs;
      for (const c of this.connections) if (c.lastActivity < cutoff) c.close(CloseCode.NORMAL);
    }, sweep);
    const sources = setInterval(() => this.sources.sweep(), SOURCE_SWEEP_MS);
    const expiry = setInterval(() => void this.expire(), config.expiryIntervalMs);
    const stats = setInterval(() => this.logStats(), config.statsIntervalMs);
    for (const t of [idle, sources, expiry, stats]) t.unref();
    this.timers.push(idle, sources, expiry, stats);
    void this.expire();
  }

  private logStats(): void {
    const m = this.metrics;
    this.logger.log('info', 'stats', {
      connections: m.connectionsOpen,
      subscriptions: m.subscriptions,
      queuesCreated: m.queuesCreated,
      messagesStored: m.messagesStored,
      messagesDelivered: m.messagesDelivered,
      connectionsRejected: m.connectionsRejected,
      connectionsRejectedPerSource: m.connectionsRejectedPerSource,
      handshakesEvicted: m.handshakesEvicted,
      handshakeFailures: m.handshakeFailures,
      connectionsBackedUp: m.connectionsBackedUp,
      connectionsEvictedUnsent: m.connectionsEvictedUnsent,
      refusedLimit: m.errors.get('LIMIT') ?? 0,
    });
  }

  /** Deletes expired messages and unused queues now, or joins the run going on (and its clock). */
  expire(): Promise<void> {
    this.expiring ??= this.runExpiry().finally(() => {
      this.expiring = null;
    });
    return this.expiring;
  }

  private async runExpiry(): Promise<void> {
    const now = this.now();
    // Counted round by round, so that a run that fails part way still counts what it deleted.
    const done = { messages: 0, queues: 0 };
    try {
      // A queue its recipient is subscribed to is in use, however long ago the SUB was.
      this.handlers.markSubscribed(now);
      await this.store.expire(now - this.config.messageTtlMs, now - this.config.queueTtlMs, (r) => {
        done.messages += r.messages;
        done.queues += r.queues;
        this.metrics.messagesExpired += r.messages;
        this.metrics.queuesExpired += r.queues;
      });
    } catch (e) {
      // A stop closes the store under a run: that is no failure.
      if (this.stopping === null) this.logger.log('warn', 'expiry failed', { code: (e as { code?: string }).code ?? 'unknown' });
    }
    if (done.messages > 0 || done.queues > 0) this.logger.log('info', 'expired', done);
  }

  private async startMetrics(port: number): Promise<void> {
    const server = createHttpServer((req, res) => {
      if (req.method !== 'GET' || req.url !== '/metrics') {
        res.writeHead(404).end();
        return;
      }
      this.store
        .stats()
        .then((s) => {
          res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
          res.end(this.metrics.render({ ...s, rssBytes: process.memoryUsage.rss() }));
        })
        .catch(() => res.writeHead(500).end());
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, this.config.metricsHost, () => resolve());
    });
    this.metricsServer = server;
  }

  /**
   * Stops gracefully: no new connections, commands in flight finish and are answered, then
   * every connection is closed and the store is closed.
   */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    const closed = new Promise<void>((resolve) => this.https.close(() => resolve()));
    // Handshakes under way have no command to finish: they are closed now, not at their deadline.
    for (const { socket } of [...this.pending.values()]) socket.destroy();
    await Promise.all([...this.connections].map((c) => c.drain()));
    for (const c of this.connections) c.close(CloseCode.GOING_AWAY);
    this.https.closeAllConnections();
    await closed;
    await new Promise<void>((resolve) => (this.metricsServer === null ? resolve() : this.metricsServer.close(() => resolve())));
    // The counts of the whole run, as the periodic line gives them (a run shorter than the
    // interval has no other), written before the store closes: a close that fails must not lose them.
    this.logStats();
    // A store that could not be closed cleanly stays open until the process exits, and so
    // does the lock that keeps a second relay from opening the folder beside it.
    await this.store.close();
    this.lock?.release();
    this.lock = null;
    this.logger.log('info', 'relay stopped');
  }
}
