// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Every size limit of the relay protocol, named once. docs/protocol.md ("Limits") lists them.
 * @module
 */

/**
 * Every WebSocket message between a client and a relay is exactly this many bytes: one block.
 * Framed by WebSocket (4 header bytes from the relay; 8 from a client, with the masking key) a
 * block fits one TLS record, whose plaintext is at most 16,384 bytes (RFC 8446 §5.1): 16,384 - 8.
 * A 16,384-byte block would take two records, and its reader would have to join two pieces.
 */
export const BLOCK_SIZE = 16_376;
/** Bytes of a block before its content: the 2-byte content length. */
export const BLOCK_HEADER = 2;
/** Most transmissions one block may carry. */
export const MAX_TRANSMISSIONS_PER_BLOCK = 64;
/** Length of queue ids (recipient id, sender id), link ids and message ids. */
export const ID_LENGTH = 24;
/** Length of a correlation id, chosen at random by the client for each command. */
export const CORR_ID_LENGTH = 24;
/** Length of Ed25519 and X25519 public keys in their raw form. */
export const KEY_LENGTH = 32;
/** Length of an Ed25519 signature. */
export const SIGNATURE_LENGTH = 64;
/** Length of a session authenticator (HMAC-SHA256). */
export const AUTHENTICATOR_LENGTH = 32;
/** Label of the TLS exporter (RFC 8446 §7.5) that yields the session id, with an empty context. */
export const SESSION_EXPORTER_LABEL = 'EXPORTER-murmure-relay-session';
/**
 * Label of the session id of a plain (no TLS) loopback connection, used only by a relay started
 * with `--plain-loopback` for benchmarks: SHA-256(label || relay session key || session nonce).
 */
export const PLAIN_SESSION_LABEL = 'murmure-relay-plain-loopback-session';
/** Length of the random nonce of each connection in the relay's hello. */
export const SESSION_NONCE_LENGTH = 32;
/** Length of the TLS session id both sides export from the TLS session. */
export const SESSION_ID_LENGTH = 32;
/** Length of the AEAD tag of the relay-to-recipient box. */
export const BOX_TAG_LENGTH = 16;
/** Bytes of a delivered message header inside the relay-to-recipient box: time (8) and flags (1). */
export const RCV_HEADER_LENGTH = 9;
/**
 * Largest SEND body. A SEND is the only transmission in its block at this size:
 * block (16,376) - block header (2) - count (1) - transmission length (2) - auth (1 + 32)
 * - corrId (24) - entity (1 + 24) - tag (1) - flags (1) - body length (2) = 16,285;
 * the relay adds its box (9 header + 16 tag) and the MSG fields on delivery, so the body is
 * capped lower, at a round figure that leaves room for both directions.
 */
export const MAX_MESSAGE_BODY = 16_064;
/** Largest invitation link data (LSET). */
export const MAX_LINK_DATA = 15_872;
