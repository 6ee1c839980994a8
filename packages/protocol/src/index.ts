// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Murmure's wire formats: pure codecs with no I/O, shared by the relay and its clients.
 * @module
 */

export * from './errors.js';
export * from './limits.js';
export * from './version.js';
export { Reader } from './encoding/reader.js';
export { Writer, WRITER_SCRATCH_BYTES, WRITER_SCRATCH_POOL } from './encoding/writer.js';
export { pad, padInto, unpad, isPadFill, PAD_BYTE, type FillCheck } from './encoding/padding.js';
export { toBase64Url, fromBase64Url, toHex } from './encoding/base64url.js';
export { asciiBytes, asciiString } from './encoding/ascii.js';
export * from './relay/commands.js';
export * from './relay/transmission.js';
export * from './relay/frame.js';
export * from './relay/handshake.js';
export * from './relay/address.js';
export * from './relay/message.js';
export * from './agent/agent-messages.js';
