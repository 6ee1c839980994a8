// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * A client of one relay: connects over WebSocket/TLS, pins the relay's certificate to the
 * fingerprint in its address, binds every command to the TLS session and batches commands into
 * fixed-size blocks. Queue operations are typed methods; pushed messages arrive as events.
 * docs/protocol.md describes the wire.
 * @module
 */

import { createHash, type KeyObject } from 'node:crypto';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';

import {
  BLOCK_SIZE,
  CORR_ID_LENGTH,
  RELAY_VERSIONS,
  V_CREATE_PASSWORD,
  asciiBytes,
  SESSION_EXPORTER_LABEL,
  SESSION_ID_LENGTH,
  decodeBlock,
  decodeReceivedMessage,
  decodeResponse,
  decodeServerHello,
  decodeServerTransmission,
  encodeClientHello,
  encodeClientTransmission,
  encodeCommand,
  isLoopbackHost,
  negotiateVersion,
  BlockPacker,
  blockFrame,
  recycleWhenWritten,
  parseRelayAddress,
  useAuthorizedBytes,
  ProtocolError,
  type Authorization,
  type Command,
  type ErrorCode,
  type ReceivedMessage,
  type RelayAddress,
  type Response,
} from '@murmure/protocol';
import {
  agree,
  authenticate,
  authenticatorKey,
  generateDhKeyPair,
  generateSigningKeyPair,
  isPadFillNative,
  openRecipientBox,
  plainSessionId,
  randomId,
  recipientBoxKey,
  signBytes,
  type KeyPair,
} from '@murmure/queue-crypto';
import WebSocket from 'ws';

export { SESSION_EXPORTER_LABEL };
/** How long `connect` waits for TLS, the upgrade and the relay's hello. */
export const CONNECT_TIMEOUT_MS = 10_000;
/** How long a command waits for its response before it fails with TIMEOUT. */
export const COMMAND_TIMEOUT_MS = 30_000;

/** Why a relay operation failed: a relay error code, or a local transport failure. */
export type RelayClientErrorCode =
  | ErrorCode
  | 'CLOSED'
  | 'TIMEOUT'
  | 'PINNING'
  | 'HANDSHAKE'
  | 'BAD_RESPONSE'
  /** The relay speaks only protocol versions older than this client's oldest: the relay needs an update. */
  | 'RELAY_TOO_OLD'
  /** The relay speaks only protocol versions newer than this client's newest: this client needs an update. */
  | 'RELAY_TOO_NEW';

/** A failed relay operation. */
export class RelayClientError extends Error {
  override readonly name = 'RelayClientError';
  constructor(
    readonly code: RelayClientErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** Type guard. */
  static is(err: unknown, code?: RelayClientErrorCode): err is RelayClientError {
    return err instanceof RelayClientError && (code === undefined || err.code === code);
  }
}

/** The error of a server hello the client cannot use, telling which side needs an update. */
function handshakeError(e: unknown): RelayClientError {
  if (RelayClientError.is(e)) return e;
  if (ProtocolError.is(e, 'VERSION_TOO_OLD')) return new RelayClientError('RELAY_TOO_OLD', `the relay is older than this client: ${e.message}`, { cause: e });
  if (ProtocolError.is(e, 'VERSION_UNSUPPORTED')) return new RelayClientError('RELAY_TOO_NEW', `the relay needs a newer client: ${e.message}`, { cause: e });
  return new RelayClientError('HANDSHAKE', 'the relay sent an unusable hello', { cause: e });
}

/** The recipient side of a queue: ids and the three private keys. */
export type RecipientQueue = Readonly<{
  rcvId: Uint8Array;
  sndId: Uint8Array;
  sigKey: KeyPair;
  authKey: KeyPair;
  /** Key of the relay-to-recipient box (derived from our DH key and the relay's queue key). */
  boxKey: Uint8Array;
}>;

/** How a command is authorised by the client. */
export type Signer =
  | { kind: 'none' }
  | { kind: 'signature'; key: KeyObject }
  | { kind: 'authenticator'; key: KeyObject };

/** A message pushed by the relay to a subscription. */
export type PushedMessage = Readonly<{ rcvId: Uint8Array; msgId: Uint8Array; body: Uint8Array }>;

/** Options of `RelayClient.connect`. */
export type ConnectOptions = Readonly<{
  /** Opens the TCP/TLS connection another way, e.g. through a SOCKS5 proxy. */
  createConnection?: (opts: ConnectionOptions) => TLSSocket;
  timeoutMs?: number;
  commandTimeoutMs?: number;
  /**
   * Plain WebSocket without TLS, to a relay started with `--plain-loopback` on a loopback host
   * (benchmarks only): no certificate to pin, the session id comes from the relay's session key.
   */
  plain?: boolean;
}>;

type Pending = { resolve: (r: Response) => void; reject: (e: Error) => void; timer: NodeJS.Timeout };

function key(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.length).toString('latin1');
}

/**
 * The WebSocket masking key of the frames `ws` sends for this client (the hello, pongs, close):
 * all zero, as in the block frames this client builds itself (`blockFrame`), so the relay's `ws`
 * neither copies nor XORs a block. Masking protects proxies from frames that a web page's script
 * controls (RFC 6455 §10.3); this client is not a browser, over TLS no intermediary sees the
 * frames, and a block's bytes are ciphertext and fill either way.
 */
function zeroMask(mask: Buffer): void {
  mask.fill(0);
}

/** The last X25519 agreement of each party key, with the relay session key it was made with. */
const lastAgreements = new WeakMap<KeyObject, { relayKey: string; secret: Uint8Array }>();

/** A connection to one relay. Events: `message` (PushedMessage), `end` (rcvId), `close` (). */
export class RelayClient extends EventEmitter {
  private readonly pending = new Map<string, Pending>();
  private readonly authKeys = new Map<KeyObject, Uint8Array>();
  /** Commands waiting to go out: a full block goes at once, the rest at the next turn. */
  private readonly packer = new BlockPacker();
  private flushScheduled = false;
  private closed = false;

  private constructor(
    private readonly ws: WebSocket,
    /** The TLS (or plain TCP) socket under `ws`, which block frames are written to. */
    private readonly socket: Duplex,
    readonly address: RelayAddress,
    readonly sessionId: Uint8Array,
    private readonly sessionKey: Uint8Array,
    readonly version: number,
    private readonly commandTimeoutMs: number,
  ) {
    super();
    ws.on('message', (data: Buffer) => this.onBlock(data));
    ws.on('close', () => this.onClose());
    ws.on('error', () => this.onClose());
  }

  /** Connects to a relay by address and completes the hello exchange. */
  static connect(address: string | RelayAddress, opts: ConnectOptions = {}): Promise<RelayClient> {
    const addr = typeof address === 'string' ? parseRelayAddress(address) : address;
    const host = addr.host.includes(':') ? `[${addr.host}]` : addr.host;
    const pinned = (socket: TLSSocket): boolean => {
      const cert = socket.getPeerX509Certificate();
      return cert !== undefined && createHash('sha256').update(cert.raw).digest().equals(addr.fingerprint);
    };
    // The pin is checked as soon as TLS completes, before the HTTP upgrade request is sent.
    const open = opts.createConnection ?? ((o: ConnectionOptions) => tlsConnect(o));
    let sessionId: Uint8Array | null = null;
    const createConnection = (o: ConnectionOptions): TLSSocket => {
      const socket = open(o);
      socket.once('secureConnect', () => {
        if (!pinned(socket)) {
          socket.destroy(new RelayClientError('PINNING', "the relay's certificate does not match the fingerprint in its address"));
          return;
        }
        sessionId = new Uint8Array(socket.exportKeyingMaterial(SESSION_ID_LENGTH, SESSION_EXPORTER_LABEL, Buffer.alloc(0)));
      });
      return socket;
    };
    const plain = opts.plain === true;
    if (plain && !isLoopbackHost(addr.host)) {
      return Promise.reject(new RelayClientError('PINNING', 'plain WebSocket without TLS is only used on a loopback host'));
    }
    return new Promise<RelayClient>((resolve, reject) => {
      const ws = plain
        ? new WebSocket(`ws://${host}:${addr.port}/`, {
            maxPayload: BLOCK_SIZE,
            // Also what lets block frames bypass ws's sender: uncompressed, it queues nothing.
            perMessageDeflate: false,
            skipUTF8Validation: true,
            generateMask: zeroMask,
            handshakeTimeout: opts.timeoutMs ?? CONNECT_TIMEOUT_MS,
          })
        : new WebSocket(`wss://${host}:${addr.port}/`, {
            // The relay speaks TLS 1.3 only; a server that offers less is not a Murmure relay.
            minVersion: 'TLSv1.3',
            rejectUnauthorized: false,
            maxPayload: BLOCK_SIZE,
            // Also what lets block frames bypass ws's sender: uncompressed, it queues nothing.
            perMessageDeflate: false,
            skipUTF8Validation: true,
            generateMask: zeroMask,
            handshakeTimeout: opts.timeoutMs ?? CONNECT_TIMEOUT_MS,
            createConnection: createConnection as never,
          });
      ws.binaryType = 'nodebuffer';
      let settled = false;
      const fail = (e: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        ws.terminate();
        reject(e);
      };
      const onHandshakeClose = (): void => fail(new RelayClientError('CLOSED', 'the relay closed the connection during the handshake'));
      const timer = setTimeout(() => fail(new RelayClientError('TIMEOUT', 'the relay did not answer in time')), opts.timeoutMs ?? CONNECT_TIMEOUT_MS);
      let socket: Duplex | null = null;
      ws.on('upgrade', (res) => {
        socket = res.socket;
        if (!plain && sessionId === null) fail(new RelayClientError('PINNING', "the relay's certificate was not checked"));
      });
      ws.once('message', (data: Buffer) => {
        if (settled || (!plain && sessionId === null) || socket === null) return;
        try {
          const hello = decodeServerHello(new Uint8Array(data.buffer, data.byteOffset, data.length), isPadFillNative);
          if (plain) sessionId = plainSessionId(hello.sessionKey, hello.sessionNonce);
          if (sessionId === null) throw new RelayClientError('PINNING', "the relay's certificate was not checked");
          const version = negotiateVersion(RELAY_VERSIONS, hello.versions);
          const client = new RelayClient(ws, socket, addr, sessionId, hello.sessionKey, version, opts.commandTimeoutMs ?? COMMAND_TIMEOUT_MS);
          client.sendBlock(encodeClientHello({ version }));
          settled = true;
          clearTimeout(timer);
          ws.removeAllListeners('error');
          // Else every later close would build (and drop) an error with its stack trace.
          ws.off('close', onHandshakeClose);
          resolve(client);
        } catch (e) {
          fail(handshakeError(e));
        }
      });
      ws.on('error', (e) => fail(RelayClientError.is(e) ? e : new RelayClientError('CLOSED', 'could not connect to the relay', { cause: e })));
      ws.on('close', onHandshakeClose);
    });
  }

  /** Whether the connection is closed. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Sends one command and resolves with the relay's response; an ERR response rejects. */
  command(entityId: Uint8Array, cmd: Command, signer: Signer): Promise<Response> {
    if (this.closed) return Promise.reject(new RelayClientError('CLOSED', 'the relay connection is closed'));
    const corrId = randomId(CORR_ID_LENGTH);
    let full: Uint8Array | null;
    try {
      const command = encodeCommand(cmd, this.version);
      const auth = this.authorize(signer, corrId, entityId, command);
      full = this.packer.push(encodeClientTransmission({ auth, corrId, entityId, command }));
    } catch (e) {
      return Promise.reject(e instanceof RelayClientError ? e : new RelayClientError('BAD_RESPONSE', `${cmd.type} could not be encoded`, { cause: e }));
    }
    return new Promise<Response>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(key(corrId));
        reject(new RelayClientError('TIMEOUT', `${cmd.type} got no response in time`));
      }, this.commandTimeoutMs);
      timer.unref();
      this.pending.set(key(corrId), { resolve, reject, timer });
      // The block this command did not fit in holds earlier commands only, each already pending.
      if (full !== null) this.sendBlock(full);
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private authorize(signer: Signer, corrId: Uint8Array, entityId: Uint8Array, command: Uint8Array): Authorization {
    if (signer.kind === 'none') return { kind: 'none' };
    if (signer.kind === 'signature') {
      const key = signer.key;
      return { kind: 'signature', bytes: useAuthorizedBytes(this.sessionId, corrId, entityId, command, (data) => signBytes(key, data)) };
    }
    let k = this.authKeys.get(signer.key);
    if (k === undefined) {
      k = authenticatorKey(this.sharedSecret(signer.key), this.sessionId);
      this.authKeys.set(signer.key, k);
    }
    const macKey = k;
    return { kind: 'authenticator', bytes: useAuthorizedBytes(this.sessionId, corrId, entityId, command, (data) => authenticate(macKey, data)) };
  }

  /**
   * X25519(party key, relay session key). A relay keeps one session key for the connections of a
   * period, so a client that reconnects within it reuses the agreement of its last connection
   * (the authenticator key still differs: it is salted with each connection's session id).
   */
  private sharedSecret(party: KeyObject): Uint8Array {
    const relayKey = key(this.sessionKey);
    const last = lastAgreements.get(party);
    if (last !== undefined && last.relayKey === relayKey) return last.secret;
    const secret = agree(party, this.sessionKey);
    if (secret === null) throw new RelayClientError('HANDSHAKE', 'the relay session key is unusable');
    lastAgreements.set(party, { relayKey, secret });
    return secret;
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.closed) return;
    const block = this.packer.take();
    if (block !== null) this.sendBlock(block);
  }

  /**
   * Writes a block frame built in place straight to the socket, one buffer for TLS to encrypt
   * (`ws` would hand it header and block apart, which TLS first copies into one). `ws` writes its
   * own frames (pong, close) to the socket at once too, with nothing queued (no compression, no
   * Blob), so the wire carries the frames in the order of the calls.
   */
  private sendBlock(block: Uint8Array): void {
    // A block is sent once: once written, it goes back to the pool (`recycleBlock`).
    // Once ws has begun to close, its close frame may be on the wire: nothing may follow it.
    if (this.ws.readyState !== WebSocket.OPEN) return;
    const frame = blockFrame(block, 'client');
    if (frame !== null) this.socket.write(frame, recycleWhenWritten(block));
    else this.ws.send(block, { binary: true });
  }

  private onBlock(data: Buffer): void {
    let ts: Uint8Array[];
    try {
      ts = decodeBlock(new Uint8Array(data.buffer, data.byteOffset, data.length), isPadFillNative);
    } catch {
      this.close();
      return;
    }
    for (const raw of ts) {
      try {
        const t = decodeServerTransmission(raw);
        const r = decodeResponse(t.response);
        if (t.corrId.length === 0) {
          this.onPush(t.entityId, r);
          continue;
        }
        const p = this.pending.get(key(t.corrId));
        if (p === undefined) continue;
        this.pending.delete(key(t.corrId));
        clearTimeout(p.timer);
        if (r.type === 'ERR') p.reject(new RelayClientError(r.code, `the relay answered ERR ${r.code}`));
        else p.resolve(r);
      } catch {
        // A malformed transmission from the relay is dropped; its command times out.
      }
    }
  }

  private onPush(entityId: Uint8Array, r: Response): void {
    if (r.type === 'MSG') this.emit('message', { rcvId: entityId, msgId: r.msgId, body: r.body } satisfies PushedMessage);
    else if (r.type === 'END') this.emit('end', entityId);
  }

  private onClose(): void {
    if (this.closed && this.pending.size === 0) return;
    const first = !this.closed;
    this.closed = true;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new RelayClientError('CLOSED', 'the relay connection closed'));
    }
    this.pending.clear();
    if (first) this.emit('close');
  }

  /** Closes the connection. */
  close(): void {
    if (!this.closed) this.flush();
    this.ws.close(1000);
    this.onClose();
  }

  /** Cuts the connection without a close handshake (for tests of abrupt loss). */
  terminate(): void {
    this.ws.terminate();
    this.onClose();
  }

  // Queue operations.

  /**
   * Creates a queue with fresh keys and returns its recipient side. `password` is the relay's
   * queue-creation password, by default the one of the address this client connected to (null:
   * none); a relay of protocol version 1 has none, and is sent none.
   */
  async createQueue(password: string | null = this.address.password ?? null): Promise<RecipientQueue> {
    const sigKey = generateSigningKeyPair();
    const authKey = generateDhKeyPair();
    const dhKey = generateDhKeyPair();
    const keys = { rcvSigKey: sigKey.publicKey, rcvAuthKey: authKey.publicKey, rcvDhKey: dhKey.publicKey };
    const withPassword = password !== null && this.version >= V_CREATE_PASSWORD;
    const r = await this.command(
      new Uint8Array(0),
      withPassword ? { type: 'NEW', ...keys, password: asciiBytes(password) } : { type: 'NEW', ...keys },
      { kind: 'signature', key: sigKey.privateKey },
    );
    if (r.type !== 'IDS') throw new RelayClientError('BAD_RESPONSE', `NEW was answered with ${r.type}`);
    const secret = agree(dhKey.privateKey, r.srvDhKey);
    if (secret === null) throw new RelayClientError('BAD_RESPONSE', 'the relay sent an unusable queue key');
    return { rcvId: r.rcvId, sndId: r.sndId, sigKey, authKey, boxKey: recipientBoxKey(secret) };
  }

  private async expectOk(p: Promise<Response>, what: string): Promise<void> {
    const r = await p;
    if (r.type !== 'OK') throw new RelayClientError('BAD_RESPONSE', `${what} was answered with ${r.type}`);
  }

  /** Secures a queue with the sender's X25519 public key. */
  secure(q: RecipientQueue, sndAuthKey: Uint8Array): Promise<void> {
    return this.expectOk(this.command(q.rcvId, { type: 'KEY', sndAuthKey }, { kind: 'signature', key: q.sigKey.privateKey }), 'KEY');
  }

  /** Subscribes this connection to a queue; messages arrive as `message` events. */
  subscribe(q: RecipientQueue): Promise<void> {
    return this.expectOk(this.command(q.rcvId, { type: 'SUB' }, { kind: 'authenticator', key: q.authKey.privateKey }), 'SUB');
  }

  /** Acknowledges (deletes) the delivered message `msgId`. */
  ack(q: RecipientQueue, msgId: Uint8Array): Promise<void> {
    return this.expectOk(this.command(q.rcvId, { type: 'ACK', msgId }, { kind: 'authenticator', key: q.authKey.privateKey }), 'ACK');
  }

  /** Fetches the oldest message without subscribing; null when the queue is empty. */
  async get(q: RecipientQueue): Promise<{ msgId: Uint8Array; body: Uint8Array } | null> {
    try {
      const r = await this.command(q.rcvId, { type: 'GET' }, { kind: 'authenticator', key: q.authKey.privateKey });
      if (r.type !== 'MSG') throw new RelayClientError('BAD_RESPONSE', `GET was answered with ${r.type}`);
      return { msgId: r.msgId, body: r.body };
    } catch (e) {
      if (RelayClientError.is(e, 'NO_MSG')) return null;
      throw e;
    }
  }

  /** Suspends a queue. */
  suspend(q: RecipientQueue): Promise<void> {
    return this.expectOk(this.command(q.rcvId, { type: 'OFF' }, { kind: 'signature', key: q.sigKey.privateKey }), 'OFF');
  }

  /** Deletes a queue and its messages. */
  deleteQueue(q: RecipientQueue): Promise<void> {
    return this.expectOk(this.command(q.rcvId, { type: 'DEL' }, { kind: 'signature', key: q.sigKey.privateKey }), 'DEL');
  }

  /** Stores link data for a queue under `linkId` (empty data removes it). */
  setLink(q: RecipientQueue, linkId: Uint8Array, data: Uint8Array): Promise<void> {
    return this.expectOk(this.command(q.rcvId, { type: 'LSET', linkId, data }, { kind: 'signature', key: q.sigKey.privateKey }), 'LSET');
  }

  /** Reads link data. */
  async getLink(linkId: Uint8Array): Promise<{ sndId: Uint8Array; data: Uint8Array }> {
    const r = await this.command(linkId, { type: 'LGET' }, { kind: 'none' });
    if (r.type !== 'LNK') throw new RelayClientError('BAD_RESPONSE', `LGET was answered with ${r.type}`);
    return { sndId: r.sndId, data: r.data };
  }

  /** Sends a message to a queue; `senderKey` is null only for the first message to an unsecured queue. */
  send(sndId: Uint8Array, senderKey: KeyObject | null, body: Uint8Array, flags = 0): Promise<void> {
    const signer: Signer = senderKey === null ? { kind: 'none' } : { kind: 'authenticator', key: senderKey };
    return this.expectOk(this.command(sndId, { type: 'SEND', flags, body }, signer), 'SEND');
  }

  /** Keeps the connection alive. */
  async ping(): Promise<void> {
    const r = await this.command(new Uint8Array(0), { type: 'PING' }, { kind: 'none' });
    if (r.type !== 'PONG') throw new RelayClientError('BAD_RESPONSE', `PING was answered with ${r.type}`);
  }
}

/** Opens the relay's box around a delivered message; throws BAD_RESPONSE if it was tampered with. */
export function openDelivered(q: RecipientQueue, msgId: Uint8Array, body: Uint8Array): ReceivedMessage {
  const plain = openRecipientBox(q.boxKey, msgId, body);
  if (plain === null) throw new RelayClientError('BAD_RESPONSE', 'a delivered message failed authentication');
  try {
    return decodeReceivedMessage(plain);
  } catch (e) {
    throw new RelayClientError('BAD_RESPONSE', 'a delivered message is malformed', { cause: e });
  }
}
