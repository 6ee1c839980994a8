// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Test support: a small SOCKS5 server (RFC 1928, username/password of RFC 1929, CONNECT only)
 * that records every request: the credentials, the address type (ATYP) and the address. It
 * insists on username/password authentication, as Tor does when a client offers it, and maps
 * the names it is told about to loopback ports, so a test can use names that no resolver knows
 * (a client that looked one up itself would fail).
 * @module
 */

import { connect as netConnect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

/** One CONNECT request the stub received. */
export type SocksRequest = Readonly<{
  username: string;
  password: string;
  /** 1: IPv4, 3: domain name, 4: IPv6. */
  atyp: number;
  host: string;
  port: number;
  /** Whether the stub reached the target and answered success. */
  ok: boolean;
}>;

/** Reads exact byte counts from a socket until `detach`. */
class Reader {
  private buf = Buffer.alloc(0);
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private readonly onData = (b: Buffer): void => {
    this.buf = Buffer.concat([this.buf, b]);
    this.pump();
  };
  private readonly onEnd = (): void => this.want?.reject(new Error('the client went away'));

  constructor(private readonly socket: Socket) {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('error', this.onEnd);
  }

  private pump(): void {
    if (this.want === null || this.buf.length < this.want.n) return;
    const w = this.want;
    this.want = null;
    const b = this.buf.subarray(0, w.n);
    this.buf = this.buf.subarray(w.n);
    w.resolve(b);
  }

  read(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.want = { n, resolve, reject };
      this.pump();
    });
  }

  /** Stops reading; returns bytes already received past the handshake. */
  detach(): Buffer {
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('error', this.onEnd);
    this.socket.pause();
    return this.buf;
  }
}

/** A recording SOCKS5 server on 127.0.0.1. */
export class SocksStub {
  readonly requests: SocksRequest[] = [];
  /** Greetings that did not offer username/password (refused). */
  noAuthOffers = 0;
  private readonly sockets = new Set<Socket>();
  private readonly server: Server;

  /** `targets` maps a requested `host:port` (a name or an address) to a loopback port. */
  constructor(private readonly targets: Map<string, number>) {
    this.server = createServer((s) => void this.serve(s).catch(() => s.destroy()));
  }

  /** Starts listening on a free port and resolves with it. */
  listen(): Promise<number> {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => resolve((this.server.address() as AddressInfo).port)));
  }

  /**
   * Listens on a Unix socket at `path` instead, for clients in another network namespace (a
   * socket file is reachable from any of them): a forwarder there carries their TCP to it.
   */
  listenPath(path: string): Promise<void> {
    return new Promise((resolve) => this.server.listen(path, () => resolve()));
  }

  /** Cuts every proxied connection, as a proxy restart or a broken circuit would. */
  cutAll(): void {
    for (const s of this.sockets) s.destroy();
  }

  /** Stops the server and cuts every connection. */
  close(): Promise<void> {
    this.cutAll();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private async serve(client: Socket): Promise<void> {
    this.sockets.add(client);
    client.on('close', () => this.sockets.delete(client));
    client.on('error', () => undefined);
    const r = new Reader(client);
    const [ver, nMethods] = await r.read(2);
    if (ver !== 5) throw new Error('not SOCKS5');
    const methods = await r.read(nMethods ?? 0);
    if (!methods.includes(2)) {
      this.noAuthOffers++;
      client.end(Buffer.from([5, 0xff]));
      return;
    }
    client.write(Buffer.from([5, 2]));
    const [authVer, uLen] = await r.read(2);
    if (authVer !== 1) throw new Error('bad auth version');
    const username = (await r.read(uLen ?? 0)).toString('utf8');
    const [pLen] = await r.read(1);
    const password = (await r.read(pLen ?? 0)).toString('utf8');
    client.write(Buffer.from([1, 0]));
    const [v, cmd, , atyp] = await r.read(4);
    if (v !== 5 || cmd !== 1) throw new Error('only CONNECT is served');
    let host: string;
    if (atyp === 1) host = [...(await r.read(4))].join('.');
    else if (atyp === 3) host = (await r.read((await r.read(1))[0] ?? 0)).toString('latin1');
    else if (atyp === 4) host = (await r.read(16)).toString('hex').replace(/(.{4})(?!$)/g, '$1:');
    else throw new Error('bad ATYP');
    const port = (await r.read(2)).readUInt16BE(0);
    const target = this.targets.get(`${host}:${port}`);
    const fail = (code: number): void => {
      this.requests.push({ username, password, atyp, host, port, ok: false });
      client.end(Buffer.from([5, code, 0, 1, 0, 0, 0, 0, 0, 0]));
    };
    if (target === undefined) {
      fail(4); // host unreachable
      return;
    }
    const upstream = netConnect(target, '127.0.0.1');
    let connected = false;
    this.sockets.add(upstream);
    upstream.on('close', () => {
      this.sockets.delete(upstream);
      if (connected) client.destroy();
    });
    client.on('close', () => upstream.destroy());
    upstream.once('error', () => fail(5)); // connection refused
    upstream.once('connect', () => {
      connected = true;
      upstream.removeAllListeners('error');
      upstream.on('error', () => undefined);
      this.requests.push({ username, password, atyp, host, port, ok: true });
      client.write(Buffer.from([5, 0, 0, 1, 0, 0, 0, 0, 0, 0]));
      const rest = r.detach();
      if (rest.length > 0) upstream.write(rest);
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
  }
}
