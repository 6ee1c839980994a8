// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Client-to-relay commands and relay-to-client responses, each a 1-byte tag followed by its
 * fields. docs/protocol.md, "Commands" and "Responses".
 * @module
 */

import { Reader } from '../encoding/reader.js';
import { Writer } from '../encoding/writer.js';
import { ProtocolError } from '../errors.js';
import { BOX_TAG_LENGTH, ID_LENGTH, KEY_LENGTH, MAX_LINK_DATA, MAX_MESSAGE_BODY, RCV_HEADER_LENGTH } from '../limits.js';
import { RELAY_VERSION_MAX, V_CREATE_PASSWORD } from '../version.js';
import { MAX_PASSWORD_LENGTH } from './address.js';

/** Command tags. */
export const CommandTag = {
  NEW: 0x01,
  KEY: 0x02,
  SUB: 0x03,
  ACK: 0x04,
  GET: 0x05,
  OFF: 0x06,
  DEL: 0x07,
  SEND: 0x08,
  LSET: 0x09,
  LGET: 0x0a,
  PING: 0x0b,
} as const;

/** A command a client sends to a relay. */
export type Command =
  /**
   * Create a queue. Entity: none. Signed with `rcvSigKey`. `password` (from version 2,
   * V_CREATE_PASSWORD; never empty) is the relay's queue-creation password, when it has one.
   */
  | { type: 'NEW'; rcvSigKey: Uint8Array; rcvAuthKey: Uint8Array; rcvDhKey: Uint8Array; password?: Uint8Array }
  /** Secure a queue with the sender's key. Entity: recipient id. Signed. */
  | { type: 'KEY'; sndAuthKey: Uint8Array }
  /** Subscribe this connection to a queue. Entity: recipient id. Authenticator. */
  | { type: 'SUB' }
  /** Delete the delivered message `msgId` and allow the next. Entity: recipient id. Authenticator. */
  | { type: 'ACK'; msgId: Uint8Array }
  /** Fetch the oldest message without subscribing. Entity: recipient id. Authenticator. */
  | { type: 'GET' }
  /** Suspend a queue: further SENDs are refused. Entity: recipient id. Signed. */
  | { type: 'OFF' }
  /** Delete a queue and its messages. Entity: recipient id. Signed. */
  | { type: 'DEL' }
  /** Put a message in a queue. Entity: sender id. Authenticator once the queue is secured. */
  | { type: 'SEND'; flags: number; body: Uint8Array }
  /** Store (or with empty data, remove) link data for a queue. Entity: recipient id. Signed. */
  | { type: 'LSET'; linkId: Uint8Array; data: Uint8Array }
  /** Read link data. Entity: link id. No authorisation. */
  | { type: 'LGET' }
  /** Keep the connection alive. Entity: none. No authorisation. */
  | { type: 'PING' };

/** The names of the commands. */
export type CommandType = Command['type'];

/**
 * Encodes a command body (tag and fields) in the layout of protocol `version` (by default the
 * newest; a connection uses the version it negotiated).
 */
export function encodeCommand(c: Command, version: number = RELAY_VERSION_MAX): Uint8Array {
  const w = new Writer(c.type === 'SEND' ? c.body.length + 8 : 128);
  switch (c.type) {
    case 'NEW':
      w.u8(CommandTag.NEW).bytesN(c.rcvSigKey, KEY_LENGTH, 'rcvSigKey').bytesN(c.rcvAuthKey, KEY_LENGTH, 'rcvAuthKey').bytesN(c.rcvDhKey, KEY_LENGTH, 'rcvDhKey');
      if (version >= V_CREATE_PASSWORD) w.shortBytes(c.password === undefined ? NO_PASSWORD : nonEmpty(c.password), MAX_PASSWORD_LENGTH, 'password');
      else if (c.password !== undefined) throw new ProtocolError('BAD_VALUE', `a NEW carries a password from protocol version ${V_CREATE_PASSWORD} on`);
      return w.finish();
    case 'KEY':
      return w.u8(CommandTag.KEY).bytesN(c.sndAuthKey, KEY_LENGTH, 'sndAuthKey').finish();
    case 'ACK':
      return w.u8(CommandTag.ACK).bytesN(c.msgId, ID_LENGTH, 'msgId').finish();
    case 'SEND':
      return w.u8(CommandTag.SEND).u8(c.flags).longBytes(c.body, MAX_MESSAGE_BODY, 'message body').finish();
    case 'LSET':
      return w.u8(CommandTag.LSET).bytesN(c.linkId, ID_LENGTH, 'linkId').longBytes(c.data, MAX_LINK_DATA, 'link data').finish();
    case 'SUB':
    case 'GET':
    case 'OFF':
    case 'DEL':
    case 'LGET':
    case 'PING':
      return w.u8(CommandTag[c.type]).finish();
    default:
      return unreachable(c);
  }
}

const NO_PASSWORD = new Uint8Array(0);

/** A password is never empty: an empty password field means none. */
function nonEmpty(password: Uint8Array): Uint8Array {
  if (password.length === 0) throw new ProtocolError('BAD_LENGTH', 'a password is not empty: leave it out for none');
  return password;
}

/** Decodes a command body in the layout of protocol `version`; throws `ProtocolError` on anything malformed. */
export function decodeCommand(bytes: Uint8Array, version: number = RELAY_VERSION_MAX): Command {
  const r = new Reader(bytes);
  const tag = r.u8('command tag');
  let c: Command;
  switch (tag) {
    case CommandTag.NEW: {
      const keys = { rcvSigKey: r.bytesN(KEY_LENGTH, 'rcvSigKey'), rcvAuthKey: r.bytesN(KEY_LENGTH, 'rcvAuthKey'), rcvDhKey: r.bytesN(KEY_LENGTH, 'rcvDhKey') };
      const password = version >= V_CREATE_PASSWORD ? r.shortBytes(MAX_PASSWORD_LENGTH, 'password') : NO_PASSWORD;
      c = password.length === 0 ? { type: 'NEW', ...keys } : { type: 'NEW', ...keys, password };
      break;
    }
    case CommandTag.KEY:
      c = { type: 'KEY', sndAuthKey: r.bytesN(KEY_LENGTH, 'sndAuthKey') };
      break;
    case CommandTag.SUB:
      c = { type: 'SUB' };
      break;
    case CommandTag.ACK:
      c = { type: 'ACK', msgId: r.bytesN(ID_LENGTH, 'msgId') };
      break;
    case CommandTag.GET:
      c = { type: 'GET' };
      break;
    case CommandTag.OFF:
      c = { type: 'OFF' };
      break;
    case CommandTag.DEL:
      c = { type: 'DEL' };
      break;
    case CommandTag.SEND:
      c = { type: 'SEND', flags: r.u8('flags'), body: r.longBytes(MAX_MESSAGE_BODY, 'message body') };
      break;
    case CommandTag.LSET:
      c = { type: 'LSET', linkId: r.bytesN(ID_LENGTH, 'linkId'), data: r.longBytes(MAX_LINK_DATA, 'link data') };
      break;
    case CommandTag.LGET:
      c = { type: 'LGET' };
      break;
    case CommandTag.PING:
      c = { type: 'PING' };
      break;
    default:
      throw new ProtocolError('BAD_TAG', `unknown command tag ${tag}`);
  }
  r.end('the command');
  return c;
}

/** Wire error codes, mapped both ways to their byte values. */
export const ErrorCodes = {
  /** The block or transmission could not be parsed. */
  BLOCK: 1,
  /** The command could not be parsed, or is not allowed on this entity. */
  CMD: 2,
  /** Not authorised: no such queue, wrong key, or a suspended queue (indistinguishable). */
  AUTH: 3,
  /** The queue holds as many messages as it may. */
  QUOTA: 4,
  /** The message body is over the limit. */
  LARGE_MSG: 5,
  /** ACK named a message that is not the one delivered, or GET found none. */
  NO_MSG: 6,
  /** The relay could not store the change (disk full, I/O error); nothing was changed. */
  STORE: 7,
  /** A per-connection limit was reached (commands per second, queues per connection). */
  LIMIT: 8,
  /** The link id is taken by another queue. */
  DUPLICATE: 9,
  /** An internal error; nothing was changed. */
  INTERNAL: 10,
  /** The version or hello was not acceptable. */
  VERSION: 11,
} as const;

/** A wire error code name. */
export type ErrorCode = keyof typeof ErrorCodes;
const ERROR_BY_BYTE = new Map<number, ErrorCode>(Object.entries(ErrorCodes).map(([k, v]) => [v, k as ErrorCode]));

/** Response tags. */
export const ResponseTag = {
  IDS: 0x81,
  OK: 0x82,
  MSG: 0x83,
  END: 0x84,
  ERR: 0x85,
  LNK: 0x86,
  PONG: 0x87,
} as const;

/** A relay's answer to a command, or a message it pushes. */
export type Response =
  /** Answer to NEW. */
  | { type: 'IDS'; rcvId: Uint8Array; sndId: Uint8Array; srvDhKey: Uint8Array }
  | { type: 'OK' }
  /** A message, pushed to the subscriber or answered to GET; `body` is the relay's box. */
  | { type: 'MSG'; msgId: Uint8Array; body: Uint8Array }
  /** The subscription was taken over by another connection. */
  | { type: 'END' }
  | { type: 'ERR'; code: ErrorCode }
  /** Answer to LGET. */
  | { type: 'LNK'; sndId: Uint8Array; data: Uint8Array }
  | { type: 'PONG' };

/** Largest boxed body in a MSG: the body limit plus the box header and tag. */
export const MAX_BOXED_BODY = MAX_MESSAGE_BODY + RCV_HEADER_LENGTH + BOX_TAG_LENGTH;

/** Encodes a response. */
export function encodeResponse(r: Response): Uint8Array {
  return writeResponse(new Writer(r.type === 'MSG' || r.type === 'LNK' ? 64 + (r.type === 'MSG' ? r.body.length : r.data.length) : 96), r).finish();
}

/** Appends an encoded response to `w` (the bytes of `encodeResponse`). */
export function writeResponse(w: Writer, r: Response): Writer {
  switch (r.type) {
    case 'IDS':
      return w.u8(ResponseTag.IDS).bytesN(r.rcvId, ID_LENGTH, 'rcvId').bytesN(r.sndId, ID_LENGTH, 'sndId').bytesN(r.srvDhKey, KEY_LENGTH, 'srvDhKey');
    case 'MSG':
      return w.u8(ResponseTag.MSG).bytesN(r.msgId, ID_LENGTH, 'msgId').longBytes(r.body, MAX_BOXED_BODY, 'boxed body');
    case 'ERR':
      return w.u8(ResponseTag.ERR).u8(ErrorCodes[r.code]);
    case 'LNK':
      return w.u8(ResponseTag.LNK).bytesN(r.sndId, ID_LENGTH, 'sndId').longBytes(r.data, MAX_LINK_DATA, 'link data');
    case 'OK':
    case 'END':
    case 'PONG':
      return w.u8(ResponseTag[r.type]);
    default:
      return unreachable(r);
  }
}

/** Decodes a response; throws `ProtocolError` on anything malformed. */
export function decodeResponse(bytes: Uint8Array): Response {
  const rd = new Reader(bytes);
  const tag = rd.u8('response tag');
  let r: Response;
  switch (tag) {
    case ResponseTag.IDS:
      r = { type: 'IDS', rcvId: rd.bytesN(ID_LENGTH, 'rcvId'), sndId: rd.bytesN(ID_LENGTH, 'sndId'), srvDhKey: rd.bytesN(KEY_LENGTH, 'srvDhKey') };
      break;
    case ResponseTag.OK:
      r = { type: 'OK' };
      break;
    case ResponseTag.MSG:
      r = { type: 'MSG', msgId: rd.bytesN(ID_LENGTH, 'msgId'), body: rd.longBytes(MAX_BOXED_BODY, 'boxed body') };
      break;
    case ResponseTag.END:
      r = { type: 'END' };
      break;
    case ResponseTag.ERR: {
      const b = rd.u8('error code');
      const code = ERROR_BY_BYTE.get(b);
      if (code === undefined) throw new ProtocolError('BAD_TAG', `unknown error code ${b}`);
      r = { type: 'ERR', code };
      break;
    }
    case ResponseTag.LNK:
      r = { type: 'LNK', sndId: rd.bytesN(ID_LENGTH, 'sndId'), data: rd.longBytes(MAX_LINK_DATA, 'link data') };
      break;
    case ResponseTag.PONG:
      r = { type: 'PONG' };
      break;
    default:
      throw new ProtocolError('BAD_TAG', `unknown response tag ${tag}`);
  }
  rd.end('the response');
  return r;
}

function unreachable(x: never): never {
  throw new ProtocolError('BAD_TAG', `unhandled variant ${JSON.stringify(x)}`);
}
