// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Transmissions (one command or response with its correlation id, entity and authorisation)
 * and the fixed-size blocks that carry them. docs/protocol.md, "Blocks" and "Transmissions".
 * @module
 */

import { PAD_BYTE, unpad, type FillCheck } from '../encoding/padding.js';
import { Reader } from '../encoding/reader.js';
import { Writer } from '../encoding/writer.js';
import { ProtocolError } from '../errors.js';
import {
  AUTHENTICATOR_LENGTH,
  BLOCK_SIZE,
  CORR_ID_LENGTH,
  ID_LENGTH,
  MAX_TRANSMISSIONS_PER_BLOCK,
  SESSION_ID_LENGTH,
  SIGNATURE_LENGTH,
} from '../limits.js';
import { writeResponse, type Response } from './commands.js';
import { newBlock } from './frame.js';

/** How a command is authorised. */
export type Authorization =
  | { kind: 'none' }
  /** Ed25519 signature over `authorizedBytes`. */
  | { kind: 'signature'; bytes: Uint8Array }
  /** HMAC-SHA256 over `authorizedBytes`, keyed by a per-session key agreement. */
  | { kind: 'authenticator'; bytes: Uint8Array };

const AUTH_KIND = { none: 0, signature: 1, authenticator: 2 } as const;

/** A command as it travels from client to relay. `command` is the encoded command. */
export type ClientTransmission = Readonly<{
  auth: Authorization;
  corrId: Uint8Array;
  entityId: Uint8Array;
  command: Uint8Array;
}>;

/** A response as it travels from relay to client. `corrId` is empty for pushed messages. */
export type ServerTransmission = Readonly<{
  corrId: Uint8Array;
  entityId: Uint8Array;
  response: Uint8Array;
}>;

/** Encodes a client transmission. */
export function encodeClientTransmission(t: ClientTransmission): Uint8Array {
  const w = new Writer(t.command.length + 160);
  w.u8(AUTH_KIND[t.auth.kind]);
  if (t.auth.kind === 'signature') w.bytesN(t.auth.bytes, SIGNATURE_LENGTH, 'signature');
  else if (t.auth.kind === 'authenticator') w.bytesN(t.auth.bytes, AUTHENTICATOR_LENGTH, 'authenticator');
  w.bytesN(t.corrId, CORR_ID_LENGTH, 'corrId');
  writeEntity(w, t.entityId);
  return w.bytes(t.command).finish();
}

/** Decodes a client transmission (the command itself stays encoded). */
export function decodeClientTransmission(bytes: Uint8Array): ClientTransmission {
  const r = new Reader(bytes);
  const kind = r.u8('auth kind');
  let auth: Authorization;
  if (kind === AUTH_KIND.none) auth = { kind: 'none' };
  else if (kind === AUTH_KIND.signature) auth = { kind: 'signature', bytes: r.bytesN(SIGNATURE_LENGTH, 'signature') };
  else if (kind === AUTH_KIND.authenticator) auth = { kind: 'authenticator', bytes: r.bytesN(AUTHENTICATOR_LENGTH, 'authenticator') };
  else throw new ProtocolError('BAD_TAG', `unknown auth kind ${kind}`);
  const corrId = r.bytesN(CORR_ID_LENGTH, 'corrId');
  const entityId = readEntity(r);
  const command = r.rest();
  if (command.length === 0) throw new ProtocolError('TRUNCATED', 'transmission has no command');
  return { auth, corrId, entityId, command };
}

/** Encodes a server transmission. */
export function encodeServerTransmission(t: ServerTransmission): Uint8Array {
  return writeServerHeader(new Writer(t.response.length + 64), t.corrId, t.entityId).bytes(t.response).finish();
}

/**
 * Encodes a server transmission carrying `r`: the bytes of `encodeServerTransmission` over
 * `encodeResponse(r)`, with the response written in place rather than encoded apart and copied.
 * The Writer borrows a scratch buffer, which holds the largest response (`MAX_BOXED_BODY` and
 * its fields) and grows past it if it must.
 */
export function encodeResponseTransmission(corrId: Uint8Array, entityId: Uint8Array, r: Response): Uint8Array {
  return writeResponse(writeServerHeader(new Writer(), corrId, entityId), r).finish();
}

function writeServerHeader(w: Writer, corrId: Uint8Array, entityId: Uint8Array): Writer {
  if (corrId.length !== 0 && corrId.length !== CORR_ID_LENGTH) {
    throw new ProtocolError('BAD_LENGTH', `corrId must be empty or ${CORR_ID_LENGTH} bytes`);
  }
  w.shortBytes(corrId, CORR_ID_LENGTH, 'corrId');
  writeEntity(w, entityId);
  return w;
}

/** Decodes a server transmission (the response itself stays encoded). */
export function decodeServerTransmission(bytes: Uint8Array): ServerTransmission {
  const r = new Reader(bytes);
  const corrId = r.shortBytes(CORR_ID_LENGTH, 'corrId');
  if (corrId.length !== 0 && corrId.length !== CORR_ID_LENGTH) throw new ProtocolError('BAD_LENGTH', 'corrId has a wrong length');
  const entityId = readEntity(r);
  const response = r.rest();
  if (response.length === 0) throw new ProtocolError('TRUNCATED', 'transmission has no response');
  return { corrId, entityId, response };
}

function writeEntity(w: Writer, id: Uint8Array): void {
  if (id.length !== 0 && id.length !== ID_LENGTH) throw new ProtocolError('BAD_LENGTH', `entity id must be empty or ${ID_LENGTH} bytes`);
  w.shortBytes(id, ID_LENGTH, 'entity id');
}

function readEntity(r: Reader): Uint8Array {
  const id = r.shortBytes(ID_LENGTH, 'entity id');
  if (id.length !== 0 && id.length !== ID_LENGTH) throw new ProtocolError('BAD_LENGTH', 'entity id has a wrong length');
  return id;
}

const AUTH_DOMAIN = new Uint8Array([0x4d, 0x55, 0x52, 0x4d, 0x55, 0x52, 0x45, 0x2d, 0x41, 0x55, 0x54, 0x48, 0x2d, 0x31]); // "MURMURE-AUTH-1"

/**
 * The bytes a signature or authenticator covers: a domain label, the TLS session id (never sent;
 * both ends export it from TLS, which binds the command to this connection), the corrId, the
 * length-prefixed entity id and the encoded command.
 */
export function authorizedBytes(sessionId: Uint8Array, corrId: Uint8Array, entityId: Uint8Array, command: Uint8Array): Uint8Array {
  return authorizedWriter(sessionId, corrId, entityId, command).finish();
}

/**
 * Hands the bytes of `authorizedBytes` to `use`, which must take them at once (a MAC or a
 * signature check) and not keep them: they are a view of a scratch buffer, valid only while
 * `use` runs (`Writer.use`). The relay checks every command this way without a copy.
 */
export function useAuthorizedBytes<T>(sessionId: Uint8Array, corrId: Uint8Array, entityId: Uint8Array, command: Uint8Array, use: (bytes: Uint8Array) => T): T {
  return authorizedWriter(sessionId, corrId, entityId, command).use(use);
}

function authorizedWriter(sessionId: Uint8Array, corrId: Uint8Array, entityId: Uint8Array, command: Uint8Array): Writer {
  return new Writer(AUTH_DOMAIN.length + SESSION_ID_LENGTH + CORR_ID_LENGTH + 1 + entityId.length + command.length)
    .bytes(AUTH_DOMAIN)
    .bytesN(sessionId, SESSION_ID_LENGTH, 'sessionId')
    .bytesN(corrId, CORR_ID_LENGTH, 'corrId')
    .shortBytes(entityId, ID_LENGTH, 'entity id')
    .bytes(command);
}

/** Content bytes a block can hold: the block minus its length prefix and count byte. */
export const BLOCK_CAPACITY = BLOCK_SIZE - 2 - 1;

/** Bytes a transmission takes inside a block (its 2-byte length prefix included). */
export function transmissionCost(t: Uint8Array): number {
  return 2 + t.length;
}

/** Encodes transmissions into one padded block; throws `TOO_LARGE` if they do not fit. */
export function encodeBlock(transmissions: readonly Uint8Array[]): Uint8Array {
  if (transmissions.length === 0) throw new ProtocolError('BAD_VALUE', 'a block carries at least one transmission');
  if (transmissions.length > MAX_TRANSMISSIONS_PER_BLOCK) throw new ProtocolError('TOO_LARGE', 'too many transmissions for one block');
  // Written straight into the block: the same bytes as `pad` over the encoded content, with one
  // allocation per block (every block sent costs one, so this is on the relay's hot path), which
  // leaves room before the block for its WebSocket frame header (`blockFrame`).
  let contentLength = 1;
  for (const t of transmissions) {
    if (t.length > BLOCK_CAPACITY) throw new ProtocolError('TOO_LARGE', `transmission is ${t.length} bytes, the limit is ${BLOCK_CAPACITY}`);
    contentLength += 2 + t.length;
  }
  if (contentLength > BLOCK_SIZE - 2) throw new ProtocolError('TOO_LARGE', `content of ${contentLength} bytes does not fit a ${BLOCK_SIZE}-byte pad`);
  const block = newBlock();
  block[0] = contentLength >>> 8;
  block[1] = contentLength & 0xff;
  block[2] = transmissions.length;
  let at = 3;
  for (const t of transmissions) {
    block[at] = t.length >>> 8;
    block[at + 1] = t.length & 0xff;
    block.set(t, at + 2);
    at += 2 + t.length;
  }
  block.fill(PAD_BYTE, at);
  return block;
}

/** Decodes a block into its transmissions (views into `block`); `checkFill` as for `unpad`. */
export function decodeBlock(block: Uint8Array, checkFill?: FillCheck): Uint8Array[] {
  const r = new Reader(unpad(block, BLOCK_SIZE, checkFill));
  const count = r.u8('transmission count');
  if (count === 0) throw new ProtocolError('BAD_VALUE', 'block carries no transmission');
  if (count > MAX_TRANSMISSIONS_PER_BLOCK) throw new ProtocolError('TOO_LARGE', `block carries ${count} transmissions`);
  const out: Uint8Array[] = [];
  for (let i = 0; i < count; i++) out.push(r.longBytes(BLOCK_CAPACITY, 'transmission'));
  r.end('the block');
  return out;
}

/**
 * Packs transmissions into blocks as they are made: a block is finished as soon as the next
 * transmission does not fit it, so a sender with a burst of commands can put each full block
 * on the wire while it still encodes the rest. The packing is the same as `packBlocks`.
 */
export class BlockPacker {
  private batch: Uint8Array[] = [];
  private used = 0;

  /**
   * Adds a transmission; returns the block it closed (the one before it, now full), or null.
   * Throws `TOO_LARGE`, adding nothing, for a transmission that does not fit a block on its own.
   */
  push(t: Uint8Array): Uint8Array | null {
    const cost = transmissionCost(t);
    if (cost > BLOCK_CAPACITY) throw new ProtocolError('TOO_LARGE', 'transmission does not fit a block');
    let full: Uint8Array | null = null;
    if (this.batch.length > 0 && (this.used + cost > BLOCK_CAPACITY || this.batch.length === MAX_TRANSMISSIONS_PER_BLOCK)) full = this.take();
    this.batch.push(t);
    this.used += cost;
    return full;
  }

  /** Whether no transmission waits. */
  get isEmpty(): boolean {
    return this.batch.length === 0;
  }

  /** The block of the transmissions added since the last block, or null if there are none. */
  take(): Uint8Array | null {
    if (this.batch.length === 0) return null;
    const block = encodeBlock(this.batch);
    this.batch = [];
    this.used = 0;
    return block;
  }
}

/**
 * Packs transmissions into as few blocks as they fit in, keeping their order. Each must fit
 * a block on its own.
 */
export function packBlocks(transmissions: readonly Uint8Array[]): Uint8Array[] {
  const packer = new BlockPacker();
  const blocks: Uint8Array[] = [];
  for (const t of transmissions) {
    const full = packer.push(t);
    if (full !== null) blocks.push(full);
  }
  const last = packer.take();
  if (last !== null) blocks.push(last);
  return blocks;
}
