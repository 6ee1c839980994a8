// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Relay connections through a SOCKS5 proxy (Tor). `socks5Connection` makes a `createConnection`
 * for `RelayClient.connect`: it opens the proxy's port, authenticates with a username and
 * password (Tor's IsolateSOCKSAuth puts streams with different credentials on different
 * circuits), asks for the relay by name (a host name goes as a SOCKS5 DOMAIN, ATYP 0x03, so
 * nothing is looked up locally; an IP address goes as itself), and runs TLS over the proxied
 * stream without SNI. The relay's certificate is checked by RelayClient against the pin in its
 * address, so the TLS layer does not verify it.
 *
 * `ws` needs the socket synchronously, so the TLS socket is made at once over a stream that
 * holds TLS's first bytes until the proxy has connected, then passes bytes both ways.
 * @module
 */

import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';

import { SocksClient } from 'socks';

/** Where the SOCKS5 proxy listens (Tor: 127.0.0.1:9050). */
export type Socks5Proxy = Readonly<{ host: string; port: number }>;

/** SOCKS5 username and password (1-255 bytes each). */
export type Socks5Credentials = Readonly<{ username: string; password: string }>;

/** How long the proxy may take to reach the relay (Tor may have to build a circuit first). */
export const SOCKS_CONNECT_TIMEOUT_MS = 30_000;

/** Fresh random credentials: a proxy like Tor gives each distinct pair its own circuit. */
export function randomSocksCredentials(): Socks5Credentials {
  return { username: randomBytes(16).toString('hex'), password: randomBytes(16).toString('hex') };
}

/** Parses `HOST:PORT` (or `[IPv6]:PORT`); throws a RangeError a person can act on. */
export function parseSocks5Proxy(text: string): Socks5Proxy {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(text.trim());
  const port = m === null ? NaN : Number(m[3]);
  if (m === null || !(port >= 1 && port <= 65_535)) throw new RangeError(`the SOCKS5 proxy must be HOST:PORT, not '${text}'`);
  return { host: m[1] ?? m[2] ?? '', port };
}

/** A duplex that buffers writes until `attach` gives it the proxied socket, then relays both ways. */
class ProxiedStream extends Duplex {
  private socket: Socket | null = null;
  private waiting: (() => void) | null = null;

  attach(socket: Socket): void {
    if (this.destroyed) {
      socket.destroy();
      return;
    }
    this.socket = socket;
    socket.on('data', (b: Buffer) => {
      if (!this.push(b)) socket.pause();
    });
    socket.on('end', () => this.push(null));
    socket.on('error', (e) => this.destroy(e));
    socket.on('close', () => this.destroy());
    socket.resume();
    const w = this.waiting;
    this.waiting = null;
    w?.();
  }

  override _read(): void {
    this.socket?.resume();
  }

  override _write(chunk: Buffer, encoding: BufferEncoding, cb: (e?: Error | null) => void): void {
    if (this.socket === null) {
      this.waiting = () => this._write(chunk, encoding, cb);
      return;
    }
    this.socket.write(chunk, cb);
  }

  override _final(cb: (e?: Error | null) => void): void {
    if (this.socket === null) {
      this.waiting = () => this._final(cb);
      return;
    }
    this.socket.end();
    cb();
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    this.waiting = null;
    this.socket?.destroy();
    cb(err);
  }
}

/**
 * A `createConnection` for `RelayClient.connect` that reaches the relay through the SOCKS5 proxy
 * `proxy`, authenticating with `credentials` (use distinct ones to isolate circuits).
 */
export function socks5Connection(proxy: Socks5Proxy, credentials: Socks5Credentials, timeoutMs = SOCKS_CONNECT_TIMEOUT_MS): (opts: ConnectionOptions) => TLSSocket {
  return (opts: ConnectionOptions): TLSSocket => {
    const stream = new ProxiedStream();
    // No SNI: the relay does not need it, and it would name the relay to anyone on the path.
    const tls = tlsConnect({ ...opts, socket: stream, servername: '', rejectUnauthorized: false });
    const host = opts.host ?? '';
    const port = Number(opts.port);
    SocksClient.createConnection({
      command: 'connect',
      proxy: { host: proxy.host, port: proxy.port, type: 5, userId: credentials.username, password: credentials.password },
      destination: { host, port },
      timeout: timeoutMs,
    }).then(
      ({ socket }) => stream.attach(socket),
      (e: unknown) => tls.destroy(new Error(`no connection to the relay through the SOCKS5 proxy at ${proxy.host}:${proxy.port}: ${e instanceof Error ? e.message : String(e)}`, { cause: e })),
    );
    return tls;
  };
}
