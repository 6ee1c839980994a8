// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * What the relay puts inside its relay-to-recipient box: the time it received the message,
 * the sender's flags and the body. docs/protocol.md, "Delivered messages".
 * @module
 */

import { Reader } from '../encoding/reader.js';
import { Writer } from '../encoding/writer.js';
import { ProtocolError } from '../errors.js';
import { MAX_MESSAGE_BODY } from '../limits.js';

/** A message as the recipient reads it once the relay's box is opened. */
export type ReceivedMessage = Readonly<{ receivedAt: number; flags: number; body: Uint8Array }>;

/** Encodes the boxed content. */
export function encodeReceivedMessage(m: ReceivedMessage): Uint8Array {
  return receivedWriter(m).finish();
}

/**
 * Hands the bytes of `encodeReceivedMessage` to `use`, which must take them at once (the relay
 * seals them) and not keep them: a view of a scratch buffer, valid only while `use` runs.
 */
export function useReceivedMessage<T>(m: ReceivedMessage, use: (bytes: Uint8Array) => T): T {
  return receivedWriter(m).use(use);
}

function receivedWriter(m: ReceivedMessage): Writer {
  return new Writer(m.body.length + 16).u64(m.receivedAt).u8(m.flags).bytes(m.body);
}

/** Decodes the boxed content. */
export function decodeReceivedMessage(bytes: Uint8Array): ReceivedMessage {
  const r = new Reader(bytes);
  const receivedAt = r.u64('receivedAt');
  const flags = r.u8('flags');
  const body = r.rest();
  if (body.length > MAX_MESSAGE_BODY) throw new ProtocolError('TOO_LARGE', 'message body is over the limit');
  return { receivedAt, flags, body };
}
