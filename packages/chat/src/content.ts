// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Chat payloads: what contacts say to each other inside the agent's envelopes. A small,
 * versioned JSON object; every field is checked and bounded, and anything else is refused with
 * a ChatError, never a crash. docs/protocol/chat.md.
 * @module
 */

import { ChatError } from './errors.js';

/** Chat payload version. */
export const CHAT_VERSION = 1;
/** Longest display name, in characters. */
export const MAX_NAME_LENGTH = 100;
/** Longest text message, in characters (the agent caps the encoded payload too). */
export const MAX_TEXT_LENGTH = 10_000;

/** What a chat payload says. */
export type ChatContent =
  | { type: 'profile'; name: string }
  | { type: 'text'; text: string };

/** Encodes a chat payload. */
export function encodeContent(c: ChatContent): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({ v: CHAT_VERSION, ...c }));
}

function str(v: unknown, max: number, what: string): string {
  if (typeof v !== 'string' || v.length > max) throw new ChatError('INVALID', `${what} is missing or too long`);
  return v;
}

/** Decodes a chat payload from a contact; throws ChatError('INVALID') on anything malformed. */
export function decodeContent(bytes: Uint8Array): ChatContent {
  let o: unknown;
  try {
    o = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (e) {
    throw new ChatError('INVALID', 'a contact sent a malformed message', { cause: e });
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new ChatError('INVALID', 'a contact sent a malformed message');
  const r = o as Record<string, unknown>;
  if (r['v'] !== CHAT_VERSION) throw new ChatError('INVALID', 'a contact sent a message of an unsupported version');
  switch (r['type']) {
    case 'profile':
      return { type: 'profile', name: cleanName(str(r['name'], MAX_NAME_LENGTH, 'name')) };
    case 'text':
      return { type: 'text', text: str(r['text'], MAX_TEXT_LENGTH, 'text') };
    default:
      throw new ChatError('INVALID', 'a contact sent a message of an unknown kind');
  }
}

/** A display name without control, bidi-control (U+061C too) or zero-width characters, trimmed. */
export function cleanName(name: string): string {
  return name.replace(/[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069]/g, '').trim();
}
