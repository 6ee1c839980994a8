// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The agent's error class. Lower-layer errors (relay, crypto, protocol) are wrapped with a
 * code a user interface can act on; messages never hold keys, ids or message text.
 * @module
 */

/** Why an agent operation failed. */
export type AgentErrorCode =
  | 'WRONG_PASSPHRASE'
  | 'NOT_FOUND'
  | 'CORRUPT'
  | 'BAD_LINK'
  | 'LINK_USED'
  | 'VERSION'
  | 'RELAY'
  /** The relay makes queues only with a password, and none or another was given. */
  | 'RELAY_PASSWORD'
  | 'NOT_CONNECTED'
  | 'TOO_LARGE'
  | 'INVALID';

/** A failed agent operation. */
export class AgentError extends Error {
  override readonly name = 'AgentError';
  constructor(
    readonly code: AgentErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** Type guard. */
  static is(err: unknown, code?: AgentErrorCode): err is AgentError {
    return err instanceof AgentError && (code === undefined || err.code === code);
  }
}
