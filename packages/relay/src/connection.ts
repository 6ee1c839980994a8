// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * One client connection: the hello exchange, block framing, rate limiting and the outgoing
 * batcher. Commands are handed to the `CommandHandler`; responses come back as transmissions
 * and are packed, several to a block, before they are sent.
 * @module
 */

import type { Duplex } from 'node:stream';

import {
  BLOCK_SIZE,
  ProtocolError,
  RELAY_VERSIONS,
  SESSION_NONCE_LENGTH,
  decodeBlock,
  decodeClientHello,
  decodeClientTransmission,
  encodeResponseTransmission,
  encodeServerHello,
  BlockPacker,
  blockFrame,
  recycleWhenWritten,
  type ClientTransmission,
  type ErrorCode,
  type Response,
} from '@murmure/protocol';
import { isPadFillNative, plainSessionId, randomId } from '@murmure/queue-crypto';
import { WebSocket } from 'ws';

import type { RelayConfig } from './config.js';
import type { RelayMetrics } from './metrics.js';
import type { SessionKey } from './session-keys.js';
import type { SourceSlot } from './sources.js';
import type { UnsentBudget, UnsentHolder } from './unsent-budget.js';
import { TokenBucket } from './token-bucket.js';
import type { TurnTaker } from './turns.js';
import type { QueueRecord } from './store/queue-store.js';

const EMPTY = new Uint8Array(0);
/** Most entries in a connection's cache of derived authenticator keys. */
export const AUTH_KEY_CACHE_SIZE = 1024;

/**
 * Command tokens a refused authorisation (ERR AUTH) costs on top of its own. Checking one cost
 * a key agreement or a signature verification (60-110 µs, some 20 times a command on a cached
 * key), so a stream of bad keys or unknown ids is held to 1/AUTH_FAILURE_TOKENS of the command
 * rate, while an honest client, which rarely meets ERR AUTH, never notices.
 */
export const AUTH_FAILURE_TOKENS = 20;

/**
 * Most commands of one connection handled at once. Past it the relay stops reading the
 * connection until half of them are done, and TCP holds the client back: what one client can
 * make the relay hold (its blocks and sealed messages) while the disk syncs slowly is bounded.
 */
export const MAX_COMMANDS_IN_FLIGHT = 256;

/** Started slots at the head of a connection's waiting list past which it is cut. */
const WAITING_COMPACT_AT = 256;

/**
 * Bytes of blocks waiting unsent (written to the socket, not yet taken by the kernel) that a
 * push may not take a connection past, counting a block for each push under way; past them the
 * connection is backed up, and the relay reads nothing more from it until they have gone out.
 * A client on a slow link (or one that stops reading) is held back by TCP, as its messages wait
 * on the relay, instead of being cut off once `maxBufferedBytes` wait: a client subscribing to a
 * hundred queues, each with a full block waiting, used to be. 16 blocks: enough to keep a link
 * of a few Mbit/s busy between two wake-ups of the socket.
 */
export const OUTPUT_HIGH_BYTES = 256 * 1024;

/** A push waiting for room on a connection (`Connection.whenWritable`); `run` is null once called or cancelled. */
export interface PushWait {
  run: (() => void) | null;
}

/** What the server does with a connection's commands. */
export interface CommandHandler {
  /** Handles one transmission; resolves once its response is queued, with true if it was refused authorisation (ERR AUTH). */
  handle(conn: Connection, t: ClientTransmission): Promise<boolean>;
  /** The connection closed: drop its subscriptions. */
  closed(conn: Connection): void;
}

/** WebSocket close codes used by the relay. */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL: 1002,
  UNSUPPORTED: 1003,
  POLICY: 1008,
  TOO_BIG: 1009,
} as const;

/** A client connection after the WebSocket upgrade. */
export class Connection implements TurnTaker, UnsentHolder {
  /** Chosen protocol version, once the client hello arrived. */
  version = 0;
  /** Queues created on this connection. */
  queuesCreated = 0;
  /** Recipient ids (latin1 keys) this connection is subscribed to. */
  readonly subscriptions = new Set<string>();
  /** Message ids handed out by GET, by recipient id key, awaiting ACK. */
  readonly fetched = new Map<string, Uint8Array>();
  /**
   * Derived authenticator keys, by entity id key, with the secured queue a SEND proved it may
   * use (so further SENDs to it need no store read).
   */
  readonly authKeys = new Map<string, { peer: Uint8Array; key: Uint8Array; queue?: QueueRecord }>();
  /** The id commands are bound to: the TLS exporter's, or (plain loopback) one from the session key. */
  readonly sessionId: Uint8Array;
  /** When the connection last sent something (monotonic ms: clock jumps do not close or keep connections). */
  lastActivity = performance.now();
  /** The command rate: `commandsPerSecond`, `commandBurst`. */
  private readonly bucket: TokenBucket;
  /**
   * Where this connection stands with the relay's key checks: 'passed' once a key stored for a
   * queue accepted one of its commands, and 'failed' for good once a check of it failed or a
   * command of it was refused authorisation. Only 'passed' may start checks when its source has
   * no refusals left.
   */
  private standing: 'unproven' | 'passed' | 'failed' = 'unproven';
  /** Responses waiting to go out: a full block goes at once, the rest at the next turn. */
  private readonly packer = new BlockPacker();
  private flushScheduled = false;
  private inflight = 0;
  /**
   * Transmissions received and not yet started (past its source's turn), oldest first from
   * `waitingFrom`; a started one's slot is cleared at once, so the blocks it points into are not
   * kept, and the list is cut when its started part is the larger.
   */
  private waiting: (Uint8Array | undefined)[] = [];
  private waitingFrom = 0;
  private idleWaiters: (() => void)[] = [];
  private closedFlag = false;
  /** Set when the relay stops: blocks that arrive from then on are not taken. */
  private draining = false;
  /** Set while more than OUTPUT_HIGH_BYTES wait unsent, until the socket has sent them all ('drain'). */
  private backedUp = false;
  /** Pushes begun (`takePushSlot`) whose message is not yet queued. */
  private pushesUnderWay = 0;
  /** Pushes waiting for room (`whenWritable`), oldest first from `writableFrom`; cancelled ones stay until reached. */
  private writableWaiters: (PushWait | undefined)[] = [];
  private writableFrom = 0;
  /** Pushes in `writableWaiters` neither called nor cancelled. */
  private waitersLive = 0;
  private pumping = false;
  private drainAwaited = false;

  constructor(
    readonly ws: WebSocket,
    /** The TLS (or plain TCP) socket under `ws`, which block frames are written to. */
    private readonly socket: Duplex,
    tlsSessionId: Uint8Array | null,
    /** The relay's X25519 session key for authenticators (shared by the connections of a period). */
    readonly sessionKey: SessionKey,
    private readonly config: RelayConfig,
    private readonly metrics: RelayMetrics,
    private readonly handler: CommandHandler,
    /** The connection's place in its source, whose budget of refused authorisations it shares. */
    private readonly source: SourceSlot,
    /** The relay-wide budget of what waits unsent on backed-up connections. */
    private readonly unsent: UnsentBudget,
    private readonly onHello: () => void,
  ) {
    // Random per connection: in plain loopback mode it keeps the session id (and so every
    // authorisation) distinct per connection while the session key is shared.
    const sessionNonce = randomId(SESSION_NONCE_LENGTH);
    this.sessionId = tlsSessionId ?? plainSessionId(sessionKey.publicKey, sessionNonce);
    this.bucket = new TokenBucket(config.commandsPerSecond, config.commandBurst);
    ws.binaryType = 'nodebuffer';
    ws.on('message', (data, isBinary) => this.onMessage(data as Buffer, isBinary));
    ws.on('close', () => this.onClose());
    ws.on('error', () => this.close(CloseCode.PROTOCOL));
    this.sendRaw(encodeServerHello({ versions: RELAY_VERSIONS, sessionKey: sessionKey.publicKey, sessionNonce }));
  }

  /** Whether the connection has closed. */
  get isClosed(): boolean {
    return this.closedFlag;
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    if (this.closedFlag || this.draining) return;
    this.lastActivity = performance.now();
    if (!isBinary || data.length !== BLOCK_SIZE) {
      this.close(CloseCode.POLICY);
      return;
    }
    this.metrics.blocksIn++;
    const block = new Uint8Array(data.buffer, data.byteOffset, data.length);
    if (this.version === 0) {
      this.onClientHello(block);
      return;
    }
    let transmissions: Uint8Array[];
    try {
      transmissions = decodeBlock(block, isPadFillNative);
    } catch {
      this.error(EMPTY, EMPTY, 'BLOCK');
      this.close(CloseCode.POLICY);
      return;
    }
    for (const raw of transmissions) this.waiting.push(raw);
    this.metrics.commandsWaiting += transmissions.length;
    // The block under way is taken whole; the next waits until half of what is taken is done.
    if (this.inflight + this.waitingCount >= MAX_COMMANDS_IN_FLIGHT) this.ws.pause();
    this.source.turns.ready(this);
  }

  /** Transmissions waiting for a turn. */
  private get waitingCount(): number {
    return this.waiting.length - this.waitingFrom;
  }

  /**
   * Starts waiting transmissions, in order, until none is left or the clock passes `deadline`
   * (the end of its source's turn, `TurnGroup`); returns whether some are still waiting.
   */
  takeTurn(deadline: number): boolean {
    while (this.waitingCount > 0) {
      // A response can close the connection (a client that does not read): what follows it
      // is not carried out.
      if (this.closedFlag || this.draining) {
        this.dropWaiting();
        return false;
      }
      if (performance.now() >= deadline) return true;
      const raw = this.waiting[this.waitingFrom] as Uint8Array;
      this.waiting[this.waitingFrom++] = undefined;
      this.metrics.commandsWaiting--;
      if (this.waitingFrom === this.waiting.length) this.dropWaiting();
      else if (this.waitingFrom > WAITING_COMPACT_AT && this.waitingFrom * 2 > this.waiting.length) {
        this.waiting = this.waiting.slice(this.waitingFrom);
        this.waitingFrom = 0;
      }
      this.start(raw);
    }
    // Commands refused at once (ERR LIMIT, BLOCK) leave nothing in flight to resume reading.
    this.maybeResume();
    return false;
  }

  /**
   * Reads the connection again once what it has in flight and waiting is down to half the limit,
   * and its output is not backed up.
   */
  private maybeResume(): void {
    if (this.ws.isPaused && this.inflight + this.waitingCount <= MAX_COMMANDS_IN_FLIGHT / 2 && !this.closedFlag && !this.backedUp) this.ws.resume();
  }

  /**
   * Listens for the socket's next 'drain' (everything written has gone to the kernel), once. It
   * comes when it matters: when the connection is backed up, or pushes wait with none under way,
   * more than OUTPUT_HIGH_BYTES − BLOCK_SIZE wait unsent, far past the socket's high-water mark
   * (16 KiB), and a write that passes that mark makes the socket announce when it has sent
   * everything. Pushes that wait while others are under way are called at their end, by
   * `pushDone` (a listener registered then may never fire, which costs nothing).
   */
  private awaitDrain(): void {
    if (this.drainAwaited) return;
    this.drainAwaited = true;
    this.socket.once('drain', () => {
      this.drainAwaited = false;
      this.onDrain();
    });
  }

  /** Everything written has gone to the kernel: the connection reads again and pushes resume. */
  private onDrain(): void {
    if (this.closedFlag) return;
    // A client that takes what the relay sends is active, even while it sends nothing.
    this.lastActivity = performance.now();
    if (this.backedUp) {
      this.backedUp = false;
      this.metrics.connectionsBackedUp--;
      this.unsent.release(this);
    }
    this.maybeResume();
    this.pump();
  }

  /**
   * Whether a message may be pushed now: the output is not backed up, and what waits unsent, with
   * a block for each push under way and one for this one, stays within OUTPUT_HIGH_BYTES.
   * Answers still being packed into a block are not counted: pushes may take the unsent bytes up
   * to a block past the limit, which backs the connection up.
   */
  private mayPush(): boolean {
    return !this.closedFlag && !this.backedUp && this.ws.bufferedAmount + (this.pushesUnderWay + 1) * BLOCK_SIZE <= OUTPUT_HIGH_BYTES;
  }

  /**
   * Begins a push (a message for a subscription) if there is room for it; the caller then calls
   * `pushDone` once its message is queued, or given up. Without room, it asks `whenWritable`.
   */
  takePushSlot(): boolean {
    // Pushes that wait go first (`pump` calls them one by one, and they take their slots here).
    if (!this.pumping && this.waitersLive > 0) return false;
    if (!this.mayPush()) return false;
    this.pushesUnderWay++;
    return true;
  }

  /** A push begun with `takePushSlot` has queued its message (or given it up). */
  pushDone(): void {
    this.pushesUnderWay--;
    if (this.waitersLive > 0) this.pump();
  }

  /**
   * Calls `f` once there is room for a push, after those that asked before it, unless the wait
   * is cancelled first (`cancelWait`).
   */
  whenWritable(f: () => void): PushWait {
    const w: PushWait = { run: this.closedFlag ? null : f };
    if (w.run === null) return w;
    this.writableWaiters.push(w);
    this.waitersLive++;
    this.metrics.pushesWaiting++;
    this.awaitDrain();
    return w;
  }

  /** Cancels a push waiting for room: its subscription has moved or ended. */
  cancelWait(w: PushWait): void {
    if (w.run === null) return;
    w.run = null;
    this.waitersLive--;
    this.metrics.pushesWaiting--;
    if (this.waitersLive === 0 && !this.pumping) this.dropWaiters();
  }

  private dropWaiters(): void {
    for (let i = this.writableFrom; i < this.writableWaiters.length; i++) {
      const w = this.writableWaiters[i];
      if (w !== undefined) w.run = null;
    }
    this.metrics.pushesWaiting -= this.waitersLive;
    this.waitersLive = 0;
    this.writableWaiters = [];
    this.writableFrom = 0;
  }

  /**
   * Calls the pushes waiting for room, oldest first, while there is room. Those left wait for the
   * next 'drain', or the end of a push under way (`pushDone`): a 'drain' listener that ran before
   * this may have been used up already.
   */
  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.waitersLive > 0 && this.mayPush()) {
        const w = this.writableWaiters[this.writableFrom] as PushWait;
        this.writableWaiters[this.writableFrom++] = undefined;
        const f = w.run;
        if (f === null) continue;
        w.run = null;
        this.waitersLive--;
        this.metrics.pushesWaiting--;
        f();
      }
    } finally {
      this.pumping = false;
      if (this.waitersLive === 0) this.dropWaiters();
      else {
        if (this.writableFrom > WAITING_COMPACT_AT && this.writableFrom * 2 > this.writableWaiters.length) {
          this.writableWaiters = this.writableWaiters.slice(this.writableFrom);
          this.writableFrom = 0;
        }
        if (!this.closedFlag) this.awaitDrain();
      }
    }
  }

  private dropWaiting(): void {
    this.metrics.commandsWaiting -= this.waitingCount;
    this.waiting = [];
    this.waitingFrom = 0;
  }

  /** Starts one transmission: its token, its decoding, its authorisation budget, its handler. */
  private start(raw: Uint8Array): void {
    // Every transmission costs a token, malformed ones too: garbage is not a free way to make
    // the relay answer.
    const allowed = this.bucket.take();
    let t: ClientTransmission;
    try {
      t = decodeClientTransmission(raw);
    } catch {
      this.error(EMPTY, EMPTY, allowed ? 'BLOCK' : 'LIMIT');
      return;
    }
    // A command that checks a key reserves a refusal of the source's budget first, unless this
    // connection has passed a check of a stored key and never failed one: its source being out
    // of refusals (another user behind the same NAT or Tor exit, say) does not hold it back.
    const checked = t.auth.kind !== 'none';
    const reserved = allowed && checked && this.source.reserve();
    if (!allowed || (checked && !reserved && this.standing !== 'passed')) {
      this.error(t.corrId, t.entityId, 'LIMIT');
      return;
    }
    this.inflight++;
    this.metrics.commandsInFlight++;
    this.handler
      .handle(this, t)
      .then(
        (refused) => {
          if (refused) this.refusedAuthorisation();
          else if (reserved) this.source.refund();
        },
        () => this.error(t.corrId, t.entityId, 'INTERNAL'),
      )
      .finally(() => this.doneOne());
  }

  private onClientHello(block: Uint8Array): void {
    try {
      const h = decodeClientHello(block, isPadFillNative);
      if (h.version < RELAY_VERSIONS.min || h.version > RELAY_VERSIONS.max) {
        throw new ProtocolError('VERSION_UNSUPPORTED', 'client chose a version we do not speak');
      }
      this.version = h.version;
      this.onHello();
    } catch {
      this.metrics.handshakeFailures++;
      this.error(EMPTY, EMPTY, 'VERSION');
      this.close(CloseCode.PROTOCOL);
    }
  }

  /**
   * Told by the handlers at the moment a command's authorisation was checked against a key the
   * relay stores for a queue (or, for a queue that does not exist, against the dummy key). A
   * failed check ends the connection's exception from its source's budget before the next command
   * starts, in the same turn; a check of a key the client brought itself (NEW), or an
   * authorisation nothing checked (PING), earns none.
   */
  keyChecked(passed: boolean): void {
    if (!passed) this.standing = 'failed';
    else if (this.standing === 'unproven') this.standing = 'passed';
  }

  /**
   * A command of this connection was refused authorisation (ERR AUTH): its reservation of the
   * source's budget is kept, and it costs AUTH_FAILURE_TOKENS more of the connection's own
   * tokens. That bucket may go below zero: later commands get ERR LIMIT until the refill has
   * paid the debt.
   * The debt is bounded by a burst plus the charges of every command that can be in flight
   * (those were let in before their charges landed), so the charge holds however small the
   * burst is, and the wait after it stays bounded.
   */
  private refusedAuthorisation(): void {
    this.standing = 'failed';
    this.bucket.charge(AUTH_FAILURE_TOKENS, this.config.commandBurst + AUTH_FAILURE_TOKENS * MAX_COMMANDS_IN_FLIGHT);
  }

  private doneOne(): void {
    this.inflight--;
    this.metrics.commandsInFlight--;
    this.maybeResume();
    if (this.inflight === 0) {
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /**
   * Stops taking commands (the relay is stopping): what arrives from now on is neither carried
   * out nor answered, so every command that was carried out is answered before the close.
   */
  drain(): Promise<void> {
    this.draining = true;
    return this.idle();
  }

  /** Resolves when no command of this connection is being handled. */
  idle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Queues a response to a command (or a push, with an empty corrId). */
  respond(corrId: Uint8Array, entityId: Uint8Array, r: Response): void {
    if (r.type === 'ERR') this.metrics.error(r.code);
    this.queue(encodeResponseTransmission(corrId, entityId, r));
  }

  /** Queues an error response. */
  error(corrId: Uint8Array, entityId: Uint8Array, code: ErrorCode): void {
    this.respond(corrId, entityId, { type: 'ERR', code });
  }

  private queue(t: Uint8Array): void {
    if (this.closedFlag) return;
    const full = this.packer.push(t);
    if (full !== null) this.sendBlock(full);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  /** Sends every queued transmission now, packed into blocks. */
  flush(): void {
    this.flushScheduled = false;
    if (this.closedFlag) return;
    const block = this.packer.take();
    if (block !== null) this.sendBlock(block);
  }

  /**
   * Sends a block of responses. Past OUTPUT_HIGH_BYTES waiting unsent the connection is backed
   * up (`onDrain` ends it); a client with more than `maxBufferedBytes` unsent (answers to the
   * commands it had sent before) is cut off.
   */
  private sendBlock(block: Uint8Array): void {
    this.sendRaw(block);
    const unsent = this.ws.bufferedAmount;
    if (unsent > this.config.maxBufferedBytes) this.close(CloseCode.POLICY);
    else if (unsent > OUTPUT_HIGH_BYTES && !this.backedUp) {
      this.backedUp = true;
      this.metrics.connectionsBackedUp++;
      this.ws.pause();
      this.awaitDrain();
    }
    // Counted relay-wide while backed up: past the budget, the connection backed up longest goes.
    if (this.backedUp && !this.closedFlag) this.unsent.hold(this, unsent);
  }

  /** What waits unsent on the connection (for the relay-wide budget, `UnsentBudget`). */
  get unsentNow(): number {
    return this.ws.bufferedAmount;
  }

  /**
   * Cut off by the relay-wide budget of unsent bytes (`UnsentBudget`): it has been backed up
   * longer than any other connection, its client not taking what waits. Its buffers are freed at
   * once (no close frame: it would wait behind them); what it had not acknowledged stays in the
   * store.
   */
  evictUnsent(): void {
    if (this.closedFlag) return;
    this.metrics.connectionsEvictedUnsent++;
    this.closedFlag = true;
    this.ws.terminate();
    this.onClose();
  }

  /**
   * Writes a block frame built in place straight to the socket, one buffer for TLS to encrypt
   * (`ws` would hand it header and block apart, which TLS first copies into one). `ws` writes its
   * own frames (pongs, close) to the socket at once too, with nothing queued (no
   * compression, no Blob), so the wire carries the frames in the order of the calls.
   */
  private sendRaw(block: Uint8Array): void {
    // A block is sent once: once written, it goes back to the pool (`recycleBlock`).
    // Once ws has begun to close, its close frame may be on the wire: nothing may follow it.
    if (this.ws.readyState !== WebSocket.OPEN) return;
    this.metrics.blocksOut++;
    const frame = blockFrame(block, 'relay');
    if (frame !== null) this.socket.write(frame, recycleWhenWritten(block));
    else this.ws.send(block, { binary: true });
  }

  /** Closes the connection with a WebSocket close code. */
  close(code: number): void {
    if (this.closedFlag) return;
    this.flush();
    this.closedFlag = true;
    try {
      this.ws.close(code);
    } catch {
      this.ws.terminate();
    }
    // A peer that does not answer the close handshake is cut off.
    setTimeout(() => this.ws.terminate(), 2000).unref();
    this.onClose();
  }

  private released = false;
  private onClose(): void {
    this.closedFlag = true;
    if (this.released) return;
    this.released = true;
    this.dropWaiting();
    if (this.backedUp) {
      this.backedUp = false;
      this.metrics.connectionsBackedUp--;
    }
    this.unsent.release(this);
    this.dropWaiters();
    this.source.turns.drop(this);
    this.handler.closed(this);
  }

  /** Pushes an END for a subscription another connection took. */
  end(rcvId: Uint8Array): void {
    this.respond(EMPTY, rcvId, { type: 'END' });
  }
}
