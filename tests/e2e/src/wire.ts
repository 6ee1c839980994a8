// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Test support: a relay client that speaks the wire format by hand over a plain `ws` WebSocket,
 * so tests can send malformed frames, replay captured transmissions on another connection and
 * look at the exact bytes the relay answers. The real client is `RelayClient` in @murmure/agent.
 * @module
 */

import { readFileSync } from 'node:fs';
import type { KeyObject } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';

import { SESSION_EXPORTER_LABEL } from '@murmure/agent';
import {
  BLOCK_SIZE,
  CORR_ID_LENGTH,
  RELAY_VERSION_MAX,
  authorizedBytes,
  decodeBlock,
  decodeResponse,
  decodeServerHello,
  decodeServerTransmission,
  encodeBlock,
  encodeClientHello,
  encodeClientTransmission,
  encodeCommand,
  type Authorization,
  type Command,
  type Response,
  type ServerHello,
  type ServerTransmission,
} from '@murmure/protocol';
import { agree, authenticate, authenticatorKey, plainSessionId, randomId, signBytes } from '@murmure/queue-crypto';
import WebSocket from 'ws';

/** How a raw command is authorised: like the real client's signers, or given bytes as they are. */
export type RawAuth =
  | { kind: 'none' }
  | { kind: 'signature'; key: KeyObject }
  | { kind: 'authenticator'; key: KeyObject }
  | { kind: 'raw'; auth: Authorization };

/** One transmission from the relay, with the block that carried it. */
export type Reply = Readonly<{ block: Uint8Array; raw: Uint8Array; t: ServerTransmission; r: Response }>;

/** How a connection ended: the WebSocket close code (1006 when cut without a close frame). */
export type Closed = Readonly<{ code: number; reason: string }>;

/** A transmission ready to send, with its corrId. */
export type Built = Readonly<{ corrId: Uint8Array; bytes: Uint8Array }>;

const EMPTY = new Uint8Array(0);

function key(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.length).toString('latin1');
}

/** A hand-driven connection to a relay on 127.0.0.1. */
export class RawClient {
  /** Pushed transmissions (empty corrId): MSG, END, and errors the relay could not tie to a command. */
  readonly unsolicited: Reply[] = [];
  /** Frames from the relay that were not one binary block of BLOCK_SIZE bytes, or did not decode. */
  readonly badFrames: string[] = [];
  /** Resolves when the connection is closed. */
  readonly closed: Promise<Closed>;
  private closedValue: Closed | null = null;
  private readonly pending = new Map<string, (r: Reply) => void>();
  private readonly waiters: (() => void)[] = [];
  private readonly authKeys = new Map<KeyObject, Uint8Array>();

  private constructor(
    readonly ws: WebSocket,
    /** The socket under the WebSocket (TLS unless plain), for writing raw bytes. */
    readonly socket: TLSSocket,
    readonly sessionId: Uint8Array,
    readonly hello: ServerHello,
    /** The version of the client hello this client sends, whose layouts `build` encodes commands in. */
    readonly version: number,
  ) {
    this.closed = new Promise<Closed>((resolve) => {
      ws.on('close', (code, reason) => {
        this.closedValue = { code, reason: reason.toString() };
        for (const w of this.waiters.splice(0)) w();
        resolve(this.closedValue);
      });
    });
    ws.on('error', () => undefined);
    ws.on('message', (data: Buffer, isBinary: boolean) => this.onFrame(data, isBinary));
  }

  /**
   * Opens a WebSocket to the relay, reads its hello and (unless `hello` is false) answers with
   * a client hello for our newest version. `plain`: a relay in plain loopback mode (ws://, the
   * session id from the hello's key and nonce).
   */
  static open(port: number, opts: Readonly<{ hello?: boolean; version?: number; timeoutMs?: number; plain?: boolean; localAddress?: string }> = {}): Promise<RawClient> {
    const plain = opts.plain === true;
    return new Promise<RawClient>((resolve, reject) => {
      const ws = new WebSocket(`${plain ? 'ws' : 'wss'}://127.0.0.1:${port}/`, {
        rejectUnauthorized: false,
        perMessageDeflate: false,
        handshakeTimeout: opts.timeoutMs ?? 10_000,
        ...(opts.localAddress === undefined ? {} : { localAddress: opts.localAddress }),
      });
      ws.binaryType = 'nodebuffer';
      let socket: TLSSocket | null = null;
      let sessionId: Uint8Array | null = null;
      const fail = (e: Error): void => {
        ws.removeAllListeners();
        ws.on('error', () => undefined);
        ws.terminate();
        reject(e);
      };
      ws.once('upgrade', (res: IncomingMessage) => {
        socket = res.socket as TLSSocket;
        if (!plain) sessionId = new Uint8Array(socket.exportKeyingMaterial(32, SESSION_EXPORTER_LABEL, Buffer.alloc(0)));
      });
      ws.once('message', (data: Buffer, isBinary: boolean) => {
        try {
          if (!isBinary || data.length !== BLOCK_SIZE || socket === null) throw new Error('the relay hello is not one block');
          const hello = decodeServerHello(new Uint8Array(data));
          if (plain) sessionId = plainSessionId(hello.sessionKey, hello.sessionNonce);
          if (sessionId === null) throw new Error('no TLS session id');
          ws.removeAllListeners();
          const version = opts.version ?? RELAY_VERSION_MAX;
          const c = new RawClient(ws, socket, sessionId, hello, version);
          if (opts.hello !== false) ws.send(encodeClientHello({ version }));
          resolve(c);
        } catch (e) {
          fail(e as Error);
        }
      });
      ws.once('error', (e) => fail(e));
      ws.once('close', (code) => fail(new Error(`closed during the handshake (${code})`)));
    });
  }

  /** Whether the connection has closed. */
  get isClosed(): boolean {
    return this.closedValue !== null;
  }

  /** Sends a frame as it is. */
  sendFrame(data: Uint8Array | string, binary = true): void {
    this.ws.send(data, { binary });
  }

  /** Builds one transmission, authorised for this connection's session. */
  build(entityId: Uint8Array, command: Command | Uint8Array, auth: RawAuth, corrId: Uint8Array = randomId(CORR_ID_LENGTH)): Built {
    const cmd = command instanceof Uint8Array ? command : encodeCommand(command, this.version);
    const a = this.authorize(auth, corrId, entityId, cmd);
    return { corrId, bytes: encodeClientTransmission({ auth: a, corrId, entityId, command: cmd }) };
  }

  private authorize(auth: RawAuth, corrId: Uint8Array, entityId: Uint8Array, command: Uint8Array): Authorization {
    if (auth.kind === 'none') return { kind: 'none' };
    if (auth.kind === 'raw') return auth.auth;
    const data = authorizedBytes(this.sessionId, corrId, entityId, command);
    if (auth.kind === 'signature') return { kind: 'signature', bytes: signBytes(auth.key, data) };
    let k = this.authKeys.get(auth.key);
    if (k === undefined) {
      const secret = agree(auth.key, this.hello.sessionKey);
      if (secret === null) throw new Error('unusable relay session key');
      k = authenticatorKey(secret, this.sessionId);
      this.authKeys.set(auth.key, k);
    }
    return { kind: 'authenticator', bytes: authenticate(k, data) };
  }

  /** Sends transmissions (as built bytes) in one block and resolves with the replies to those with a corrId. */
  sendTransmissions(ts: readonly Uint8Array[]): void {
    this.sendFrame(encodeBlock(ts));
  }

  /** Waits for the reply with this corrId. Rejects if the connection closes first or after `ms`. */
  reply(corrId: Uint8Array, ms = 10_000): Promise<Reply> {
    return new Promise<Reply>((resolve, reject) => {
      if (this.closedValue !== null) {
        reject(new Error(`connection closed (${this.closedValue.code})`));
        return;
      }
      const k = key(corrId);
      const timer = setTimeout(() => {
        this.pending.delete(k);
        reject(new Error('no reply in time'));
      }, ms);
      const onClose = (): void => {
        clearTimeout(timer);
        this.pending.delete(k);
        reject(new Error(`connection closed (${this.closedValue?.code ?? 0})`));
      };
      this.waiters.push(onClose);
      this.pending.set(k, (r) => {
        clearTimeout(timer);
        const i = this.waiters.indexOf(onClose);
        if (i >= 0) this.waiters.splice(i, 1);
        resolve(r);
      });
    });
  }

  /** Sends one transmission alone in a block and resolves with its reply. */
  request(entityId: Uint8Array, command: Command | Uint8Array, auth: RawAuth): Promise<Reply> {
    const b = this.build(entityId, command, auth);
    return this.send(b);
  }

  /** Sends a built transmission alone in a block and resolves with its reply. */
  send(b: Built): Promise<Reply> {
    const p = this.reply(b.corrId);
    this.sendTransmissions([b.bytes]);
    return p;
  }

  /** Waits for the next unsolicited transmission after the first `seen`. */
  async nextUnsolicited(seen: number, ms = 10_000): Promise<Reply> {
    const deadline = Date.now() + ms;
    while (this.unsolicited.length <= seen) {
      if (this.closedValue !== null) throw new Error(`connection closed (${this.closedValue.code})`);
      if (Date.now() > deadline) throw new Error('no unsolicited transmission in time');
      await new Promise((r) => setTimeout(r, 5));
    }
    return this.unsolicited[seen]!;
  }

  /** Waits until the connection closes, or rejects after `ms`. */
  waitClosed(ms = 10_000): Promise<Closed> {
    return withTimeout(this.closed, ms, 'the relay did not close the connection');
  }

  /** Closes the connection. */
  close(): void {
    this.ws.close(1000);
  }

  private onFrame(data: Buffer, isBinary: boolean): void {
    if (!isBinary || data.length !== BLOCK_SIZE) {
      this.badFrames.push(`frame of ${data.length} bytes, binary ${isBinary}`);
      return;
    }
    const block = new Uint8Array(data.buffer, data.byteOffset, data.length);
    let raws: Uint8Array[];
    try {
      raws = decodeBlock(block);
    } catch (e) {
      this.badFrames.push(`block does not decode: ${(e as Error).message}`);
      return;
    }
    for (const raw of raws) {
      let reply: Reply;
      try {
        const t = decodeServerTransmission(raw);
        reply = { block, raw, t, r: decodeResponse(t.response) };
      } catch (e) {
        this.badFrames.push(`transmission does not decode: ${(e as Error).message}`);
        continue;
      }
      const p = reply.t.corrId.length === 0 ? undefined : this.pending.get(key(reply.t.corrId));
      if (p === undefined) {
        this.unsolicited.push(reply);
      } else {
        this.pending.delete(key(reply.t.corrId));
        p(reply);
      }
    }
  }
}

/** Rejects with `what` if `p` does not settle within `ms`. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** The error code of a reply, or its type when it is not an error. */
export function codeOf(r: Reply): string {
  return r.r.type === 'ERR' ? r.r.code : r.r.type;
}

/** An entity id for commands that take none. */
export const NO_ENTITY = EMPTY;

/** Resident memory of a process in KiB (`VmRSS`, or its peak so far, `VmHWM`), from /proc/PID/status. */
export function rssKiB(pid: number, field: 'VmRSS' | 'VmHWM' = 'VmRSS'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (m === null) throw new Error(`no ${field} for process ${pid}`);
  return Number(m[1]);
}

/** Every way an id may be written in text: hex, base64 and base64url. */
export function idSpellings(id: Uint8Array): string[] {
  const b = Buffer.from(id);
  return [b.toString('hex'), b.toString('base64').replace(/=+$/, ''), b.toString('base64url')];
}
