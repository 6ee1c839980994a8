// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The hello blocks exchanged after the WebSocket opens: the relay offers its version range, its
 * current X25519 session key and a random nonce of this connection; the client answers with the
 * version it chose.
 * docs/protocol.md, "Handshake".
 * @module
 */

import { padInto, unpad, type FillCheck } from '../encoding/padding.js';
import { Reader } from '../encoding/reader.js';
import { Writer } from '../encoding/writer.js';
import { ProtocolError } from '../errors.js';
import { BLOCK_SIZE, KEY_LENGTH, SESSION_NONCE_LENGTH } from '../limits.js';
import type { VersionRange } from '../version.js';
import { newBlock } from './frame.js';

const SERVER_HELLO = 0x48; // 'H'
const CLIENT_HELLO = 0x68; // 'h'

/** The relay's first block. */
export type ServerHello = Readonly<{ versions: VersionRange; sessionKey: Uint8Array; sessionNonce: Uint8Array }>;
/** The client's first block. */
export type ClientHello = Readonly<{ version: number }>;

/**
 * Encodes the relay's hello as one padded block, made by `newBlock` as every block is: every
 * connection sends one, and the sender gives it back to the pool once written (`recycleBlock`).
 */
export function encodeServerHello(h: ServerHello): Uint8Array {
  const w = new Writer(5 + KEY_LENGTH + SESSION_NONCE_LENGTH)
    .u8(SERVER_HELLO)
    .u16(h.versions.min)
    .u16(h.versions.max)
    .bytesN(h.sessionKey, KEY_LENGTH, 'session key')
    .bytesN(h.sessionNonce, SESSION_NONCE_LENGTH, 'session nonce');
  return padInto(w.finish(), newBlock());
}

/** Decodes the relay's hello; `checkFill` as for `unpad`. */
export function decodeServerHello(block: Uint8Array, checkFill?: FillCheck): ServerHello {
  const r = new Reader(unpad(block, BLOCK_SIZE, checkFill));
  if (r.u8('hello tag') !== SERVER_HELLO) throw new ProtocolError('BAD_TAG', 'not a relay hello');
  const min = r.u16('min version');
  const max = r.u16('max version');
  if (min === 0 || min > max) throw new ProtocolError('BAD_VALUE', 'relay hello has an empty version range');
  const sessionKey = r.bytesN(KEY_LENGTH, 'session key');
  const sessionNonce = r.bytesN(SESSION_NONCE_LENGTH, 'session nonce');
  // Later versions may append fields; version 1 ignores them.
  return { versions: { min, max }, sessionKey, sessionNonce };
}

/** Encodes the client's hello as one padded block (made by `newBlock`, as the relay's). */
export function encodeClientHello(h: ClientHello): Uint8Array {
  return padInto(new Writer(8).u8(CLIENT_HELLO).u16(h.version).finish(), newBlock());
}

/** Decodes the client's hello; `checkFill` as for `unpad`. */
export function decodeClientHello(block: Uint8Array, checkFill?: FillCheck): ClientHello {
  const r = new Reader(unpad(block, BLOCK_SIZE, checkFill));
  if (r.u8('hello tag') !== CLIENT_HELLO) throw new ProtocolError('BAD_TAG', 'not a client hello');
  const version = r.u16('version');
  r.end('the client hello');
  return { version };
}
