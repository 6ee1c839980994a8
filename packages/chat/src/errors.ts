// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The chat layer's error class; agent errors are mapped to it at the boundary.
 * @module
 */

import { AgentError } from '@murmure/agent';

/** Why a chat operation failed. */
export type ChatErrorCode =
  | 'WRONG_PASSPHRASE'
  | 'NO_HOME'
  | 'HOME_EXISTS'
  | 'NO_PROFILE'
  | 'PROFILE_EXISTS'
  | 'NO_CONTACT'
  | 'AMBIGUOUS_CONTACT'
  | 'NOT_CONNECTED'
  | 'BAD_LINK'
  | 'LINK_USED'
  | 'VERSION'
  | 'RELAY'
  | 'RELAY_PASSWORD'
  | 'TOO_LARGE'
  | 'INVALID'
  | 'CORRUPT';

/** A failed chat operation, with a message fit to show a person. */
export class ChatError extends Error {
  override readonly name = 'ChatError';
  constructor(
    readonly code: ChatErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** Type guard. */
  static is(err: unknown, code?: ChatErrorCode): err is ChatError {
    return err instanceof ChatError && (code === undefined || err.code === code);
  }

  /** Normalises anything thrown below the chat layer. */
  static from(e: unknown): ChatError {
    if (e instanceof ChatError) return e;
    if (e instanceof AgentError) {
      const map: Record<string, ChatErrorCode> = {
        WRONG_PASSPHRASE: 'WRONG_PASSPHRASE',
        NOT_FOUND: 'NO_CONTACT',
        CORRUPT: 'CORRUPT',
        BAD_LINK: 'BAD_LINK',
        LINK_USED: 'LINK_USED',
        VERSION: 'VERSION',
        RELAY: 'RELAY',
        RELAY_PASSWORD: 'RELAY_PASSWORD',
        NOT_CONNECTED: 'NOT_CONNECTED',
        TOO_LARGE: 'TOO_LARGE',
        INVALID: 'INVALID',
      };
      return new ChatError(map[e.code] ?? 'INVALID', e.message, { cause: e });
    }
    return new ChatError('INVALID', 'unexpected failure', { cause: e });
  }
}
