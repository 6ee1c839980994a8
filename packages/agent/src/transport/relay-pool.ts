// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * One connection per relay, opened on demand and re-opened with exponential backoff and
 * jitter when it drops. After every (re)connection the pool asks its owner for the queues to
 * subscribe on that relay, so subscriptions survive relay restarts and network partitions.
 * Through a proxy the owner may ask for more than one connection to a relay: each isolation key
 * (e.g. one per queue, each with its own SOCKS credentials) has a connection of its own; the
 * empty key is the shared one.
 * @module
 */

import { EventEmitter } from 'node:events';

import { RelayClient, type ConnectOptions, type PushedMessage, type RecipientQueue } from './relay-client.js';

/** First reconnection delay. */
export const RECONNECT_MIN_MS = 250;
/** Longest reconnection delay. */
export const RECONNECT_MAX_MS = 30_000;
/** How often an open connection is pinged, well inside the relay's idle timeout. */
export const KEEPALIVE_MS = 60_000;

/** What the pool needs from its owner. */
export type PoolOwner = Readonly<{
  /** The queues on `relay` this client receives on over `isolation`'s connection, to subscribe after each connection. */
  queuesOn(relay: string, isolation: string): RecipientQueue[];
  /** A message pushed by `relay`. */
  onMessage(relay: string, client: RelayClient, m: PushedMessage): void;
  /** Options for new connections (e.g. a SOCKS5 createConnection). */
  connectOptions?(relay: string, isolation: string): ConnectOptions;
}>;

/** The key of a connection in the pool: a relay address has no newline. */
function entryKey(relay: string, isolation: string): string {
  return isolation === '' ? relay : `${relay}\n${isolation}`;
}

type Entry = { isolation: string; client: RelayClient | null; connecting: Promise<RelayClient> | null; failures: number; timer: NodeJS.Timeout | null; ping: NodeJS.Timeout | null };

/** Relay connections by address (and isolation key). Events: `up` (relay), `down` (relay). */
export class RelayPool extends EventEmitter {
  private readonly entries = new Map<string, Entry>();
  private closed = false;

  constructor(private readonly owner: PoolOwner) {
    super();
  }

  /** A connected client for `relay`, connecting if needed (rejects if it cannot connect now). */
  get(relay: string, isolation = ''): Promise<RelayClient> {
    if (this.closed) return Promise.reject(new Error('the relay pool is closed'));
    let e = this.entries.get(entryKey(relay, isolation));
    if (e === undefined) {
      e = { isolation, client: null, connecting: null, failures: 0, timer: null, ping: null };
      this.entries.set(entryKey(relay, isolation), e);
    }
    if (e.client !== null && !e.client.isClosed) return Promise.resolve(e.client);
    e.connecting ??= this.open(relay, e);
    return e.connecting;
  }

  /** Keeps a connection to `relay` open, reconnecting in the background until `close()`. */
  keep(relay: string, isolation = ''): void {
    this.get(relay, isolation).catch(() => this.schedule(relay, isolation));
  }

  /** Closes and forgets every connection of a (non-empty) isolation key, on any relay. */
  drop(isolation: string): void {
    if (isolation === '') return;
    for (const [k, e] of this.entries) {
      if (e.isolation !== isolation) continue;
      this.entries.delete(k);
      if (e.timer !== null) clearTimeout(e.timer);
      if (e.ping !== null) clearInterval(e.ping);
      e.client?.close();
    }
  }

  private async open(relay: string, e: Entry): Promise<RelayClient> {
    try {
      const client = await RelayClient.connect(relay, this.owner.connectOptions?.(relay, e.isolation) ?? {});
      if (this.closed || this.entries.get(entryKey(relay, e.isolation)) !== e) {
        client.close();
        throw new Error(this.closed ? 'the relay pool is closed' : 'the relay connection was dropped');
      }
      e.client = client;
      e.failures = 0;
      client.on('message', (m: PushedMessage) => this.owner.onMessage(relay, client, m));
      const ping = setInterval(() => void client.ping().catch(() => undefined), KEEPALIVE_MS);
      ping.unref();
      e.ping = ping;
      client.on('close', () => {
        clearInterval(ping);
        if (e.client === client) e.client = null;
        this.emit('down', relay);
        this.schedule(relay, e.isolation);
      });
      await Promise.all(this.owner.queuesOn(relay, e.isolation).map((q) => client.subscribe(q).catch(() => undefined)));
      this.emit('up', relay);
      return client;
    } catch (err) {
      e.failures++;
      throw err;
    } finally {
      e.connecting = null;
    }
  }

  private schedule(relay: string, isolation = ''): void {
    const e = this.entries.get(entryKey(relay, isolation));
    if (this.closed || e === undefined || e.timer !== null) return;
    const base = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** Math.min(e.failures, 16));
    const delay = base / 2 + Math.random() * (base / 2);
    e.timer = setTimeout(() => {
      e.timer = null;
      this.get(relay, isolation).catch(() => this.schedule(relay, isolation));
    }, delay);
    e.timer.unref();
  }

  /** Closes every connection and stops reconnecting. */
  close(): void {
    this.closed = true;
    for (const e of this.entries.values()) {
      if (e.timer !== null) clearTimeout(e.timer);
      if (e.ping !== null) clearInterval(e.ping);
      e.client?.close();
    }
    this.entries.clear();
  }
}
