// SPDX-License-Identifier: AGPL-3.0-or-later
// The idle sessions of the comparison bench (W4, W7) for a Murmure relay: Murmure's relay protocol
// (valid authorisation, padded blocks) spoken straight over a TCP or TLS socket, as the XMPP
// adapter speaks c2s over a raw socket. 10,000 sessions share the driver's one core, and with the
// agent's RelayClient (the `ws` library's HTTP client for the upgrade, then its frame reader) they
// cost that core about as much CPU per reconnect as they cost the relay, so W7 timed the
// clients. Here a session is one socket: a fixed upgrade request, the relay's hello, then one
// write with the client hello and the command, and one block back. The relay sees the same bytes
// as from the agent's client.

import { createHash, randomBytes } from 'node:crypto';
import { connect as tcpConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';

import {
  BLOCK_SIZE,
  CORR_ID_LENGTH,
  RELAY_VERSIONS,
  SESSION_EXPORTER_LABEL,
  SESSION_ID_LENGTH,
  V_CREATE_PASSWORD,
  asciiBytes,
  authorizedBytes,
  blockFrame,
  decodeBlock,
  decodeResponse,
  decodeServerHello,
  decodeServerTransmission,
  encodeBlock,
  encodeClientHello,
  encodeClientTransmission,
  encodeCommand,
  negotiateVersion,
  parseRelayAddress,
  recycleWhenWritten,
} from '@murmure/protocol';
import { agree, authenticate, authenticatorKey, generateDhKeyPair, generateSigningKeyPair, isPadFillNative, plainSessionId, randomId, signBytes } from '@murmure/queue-crypto';

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
/** Longest HTTP answer to the upgrade this client reads before it gives up. */
const MAX_UPGRADE_ANSWER = 4096;
/** A relay block frame: FIN + binary opcode, 126, then the 16-bit length of a block. */
const RELAY_FRAME_HEADER = Buffer.from([0x82, 126, BLOCK_SIZE >>> 8, BLOCK_SIZE & 0xff]);
const RELAY_FRAME = RELAY_FRAME_HEADER.length + BLOCK_SIZE;
const NO_BYTES = Buffer.alloc(0);

class SessionError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/**
 * One connection: upgrade, hello, then one command at a time. `onBlock` gets each block after
 * the hello; the socket is all it keeps besides the bytes of a frame not yet whole.
 */
function openConnection(endpoint, addr, timeoutMs) {
  return new Promise((resolve, reject) => {
    const socket = endpoint.plain
      ? tcpConnect({ host: addr.host, port: addr.port })
      : tlsConnect({ host: addr.host, port: addr.port, minVersion: 'TLSv1.3', rejectUnauthorized: false });
    socket.setNoDelay(true);
    const wsKey = randomBytes(16).toString('base64');
    const accept = createHash('sha1').update(wsKey + WS_GUID).digest('base64');
    let sessionId = null;
    let head = null; // the upgrade answer until it is complete, then null
    let pending = NO_BYTES;
    let conn = null;
    const timer = setTimeout(() => fail(new SessionError('TIMEOUT', 'the relay did not answer in time')), timeoutMs);
    const fail = (e) => {
      clearTimeout(timer);
      socket.destroy();
      if (conn === null) reject(e);
      else conn.fail(e);
    };
    const request = () => {
      head = Buffer.alloc(0);
      socket.write(`GET / HTTP/1.1\r\nHost: ${addr.host}:${addr.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${wsKey}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    };
    if (endpoint.plain) socket.once('connect', request);
    else
      socket.once('secureConnect', () => {
        const cert = socket.getPeerX509Certificate();
        if (cert === undefined || !createHash('sha256').update(cert.raw).digest().equals(Buffer.from(addr.fingerprint))) {
          fail(new SessionError('PINNING', "the relay's certificate does not match its address"));
          return;
        }
        sessionId = new Uint8Array(socket.exportKeyingMaterial(SESSION_ID_LENGTH, SESSION_EXPORTER_LABEL, Buffer.alloc(0)));
        request();
      });
    const onBlock = (block) => {
      if (conn !== null) {
        conn.onBlock(block);
        return;
      }
      const hello = decodeServerHello(block, isPadFillNative);
      if (endpoint.plain) sessionId = plainSessionId(hello.sessionKey, hello.sessionNonce);
      clearTimeout(timer);
      // A copy: the hello is a view into a read chunk.
      conn = new Connection(socket, sessionId, new Uint8Array(hello.sessionKey), negotiateVersion(RELAY_VERSIONS, hello.versions), timeoutMs);
      resolve(conn);
    };
    socket.on('data', (chunk) => {
      try {
        if (head !== null) {
          head = Buffer.concat([head, chunk]);
          const end = head.indexOf('\r\n\r\n');
          if (end < 0) {
            if (head.length > MAX_UPGRADE_ANSWER) throw new SessionError('HANDSHAKE', 'the upgrade answer is too long');
            return;
          }
          const text = head.subarray(0, end).toString('latin1');
          if (!text.startsWith('HTTP/1.1 101 ') || !text.toLowerCase().includes(`\r\nsec-websocket-accept: ${accept.toLowerCase()}`)) {
            throw new SessionError('HANDSHAKE', `the relay refused the upgrade: ${text.split('\r\n')[0]}`);
          }
          chunk = head.subarray(end + 4);
          head = null;
        }
        pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
        // The relay sends block frames only (no ping, no fragments); a close frame ends the session.
        while (pending.length >= 2) {
          if (pending[0] === 0x88) throw new SessionError('CLOSED', 'the relay closed the session');
          if (pending.length < RELAY_FRAME) break;
          if (!pending.subarray(0, RELAY_FRAME_HEADER.length).equals(RELAY_FRAME_HEADER)) throw new SessionError('HANDSHAKE', 'the relay sent a frame that is not a block');
          const block = new Uint8Array(pending.buffer, pending.byteOffset + RELAY_FRAME_HEADER.length, BLOCK_SIZE);
          pending = pending.subarray(RELAY_FRAME);
          onBlock(block);
        }
        // Nothing of a read chunk is kept once its frames are taken.
        if (pending.length === 0) pending = NO_BYTES;
      } catch (e) {
        fail(e instanceof SessionError ? e : new SessionError('HANDSHAKE', String(e?.message ?? e)));
      }
    });
    socket.on('error', (e) => fail(new SessionError('CLOSED', `could not reach the relay: ${e.code ?? e.message}`)));
    socket.on('close', () => fail(new SessionError('CLOSED', 'the relay closed the connection')));
  });
}

/** An open connection after the hellos: sends one command at a time and waits for its answer. */
class Connection {
  constructor(socket, sessionId, sessionKey, version, timeoutMs) {
    this.socket = socket;
    this.timeoutMs = timeoutMs;
    this.sessionId = sessionId;
    this.sessionKey = sessionKey;
    this.version = version;
    this.waiting = null;
    this.helloSent = false;
    this.closed = false;
  }

  /** Sends `cmd` for `entityId` (after the client hello if not yet sent) and resolves with its response. */
  command(entityId, cmd, auth) {
    if (this.closed) return Promise.reject(new SessionError('CLOSED', 'the connection is closed'));
    const corrId = randomId(CORR_ID_LENGTH);
    const command = encodeCommand(cmd, this.version);
    const authorization = auth(authorizedBytes(this.sessionId, corrId, entityId, command));
    const block = encodeBlock([encodeClientTransmission({ auth: authorization, corrId, entityId, command })]);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.fail(new SessionError('TIMEOUT', `${cmd.type} got no answer in time`));
        this.socket.destroy();
      }, this.timeoutMs);
      this.waiting = { corrId: Buffer.from(corrId), resolve, reject, timer };
      // The client hello and the first command leave in one write (one segment pair on loopback).
      this.socket.cork();
      if (!this.helloSent) {
        this.helloSent = true;
        const hello = encodeClientHello({ version: this.version });
        this.socket.write(blockFrame(hello, 'client'), recycleWhenWritten(hello));
      }
      this.socket.write(blockFrame(block, 'client'), recycleWhenWritten(block));
      this.socket.uncork();
    });
  }

  onBlock(block) {
    for (const raw of decodeBlock(block, isPadFillNative)) {
      const t = decodeServerTransmission(raw);
      const w = this.waiting;
      if (w === null || !w.corrId.equals(t.corrId)) continue; // a push (none to an idle session)
      this.waiting = null;
      clearTimeout(w.timer);
      const r = decodeResponse(t.response);
      if (r.type === 'ERR') w.reject(new SessionError(r.code, `the relay answered ERR ${r.code}`));
      else w.resolve(r);
    }
  }

  fail(e) {
    this.closed = true;
    const w = this.waiting;
    this.waiting = null;
    if (w === null) return;
    clearTimeout(w.timer);
    w.reject(e);
  }

  close() {
    this.socket.end(Buffer.from([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])); // close 1000, zero mask
  }

  terminate() {
    this.socket.destroy();
  }
}

/**
 * An idle session: one connection with one queue it created (NEW, signed) and subscribed (SUB,
 * authenticated), as the agent does; `reconnect` opens a new connection and subscribes again.
 */
export async function openRawSession(endpoint, timeoutMs) {
  const addr = parseRelayAddress(endpoint.address);
  const sigKey = generateSigningKeyPair();
  const authKey = generateDhKeyPair();
  const dhKey = generateDhKeyPair();
  let c = await openConnection(endpoint, addr, timeoutMs);
  /** Runs `step` on `conn`; a connection whose command failed is closed, not left open (and subscribed). */
  const closing = async (conn, step) => {
    try {
      return await step();
    } catch (e) {
      conn.terminate();
      throw e;
    }
  };
  const keys = { rcvSigKey: sigKey.publicKey, rcvAuthKey: authKey.publicKey, rcvDhKey: dhKey.publicKey };
  // The relay's queue-creation password, if its address has one, as the agent sends it.
  const password = addr.password !== undefined && addr.password !== null && c.version >= V_CREATE_PASSWORD ? { password: asciiBytes(addr.password) } : {};
  const ids = await closing(c, () =>
    c.command(new Uint8Array(0), { type: 'NEW', ...keys, ...password }, (data) => ({ kind: 'signature', bytes: signBytes(sigKey.privateKey, data) })),
  );
  if (ids.type !== 'IDS') {
    c.terminate();
    throw new SessionError('BAD_RESPONSE', `NEW was answered with ${ids.type}`);
  }
  // A copy: the id is a view into a read chunk.
  const rcvId = ids.rcvId.slice();
  // X25519 with the relay's session key, kept while the relay keeps that key (as the agent's client does).
  let agreed = { relayKey: null, secret: null };
  const subscribe = async (conn) => {
    if (agreed.relayKey === null || !Buffer.from(agreed.relayKey).equals(Buffer.from(conn.sessionKey))) {
      const secret = agree(authKey.privateKey, conn.sessionKey);
      if (secret === null) throw new SessionError('HANDSHAKE', 'the relay session key is unusable');
      agreed = { relayKey: conn.sessionKey, secret };
    }
    const k = authenticatorKey(agreed.secret, conn.sessionId);
    const r = await conn.command(rcvId, { type: 'SUB' }, (data) => ({ kind: 'authenticator', bytes: authenticate(k, data) }));
    if (r.type !== 'OK') throw new SessionError('BAD_RESPONSE', `SUB was answered with ${r.type}`);
  };
  await closing(c, () => subscribe(c));
  return {
    close: () => c.close(),
    terminate: () => c.terminate(),
    async reconnect() {
      const next = await openConnection(endpoint, addr, timeoutMs);
      c = next;
      await closing(next, () => subscribe(next));
    },
  };
}
