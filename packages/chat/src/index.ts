// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Murmure's chat layer: profiles, contacts, conversations; the API the interfaces use.
 * @module
 */

export * from './chat.js';
export { parseSocks5Proxy, type Socks5Proxy } from '@murmure/agent';
export { ChatError, type ChatErrorCode } from './errors.js';
export { MAX_NAME_LENGTH, MAX_TEXT_LENGTH, decodeContent, encodeContent, type ChatContent } from './content.js';
export type { MessageStatus } from './chat-store.js';
