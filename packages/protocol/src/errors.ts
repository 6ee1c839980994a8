// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The one error class of the protocol layer. Every decoder in this package throws only
 * `ProtocolError`, whatever bytes it is given.
 * @module
 */

/** Why a piece of wire data was refused. */
export type ProtocolErrorCode =
  /** Input ended before a field was complete. */
  | 'TRUNCATED'
  /** Bytes were left over after the last field. */
  | 'TRAILING'
  /** A length or count is over the limit named for it in `limits.ts`. */
  | 'TOO_LARGE'
  /** A tag byte names no known command, response, error or auth kind. */
  | 'BAD_TAG'
  /** A fixed-size field has the wrong length. */
  | 'BAD_LENGTH'
  /** A field's value is out of its range. */
  | 'BAD_VALUE'
  /** Padding is malformed (declared length beyond the block, or fill that is not `#`). */
  | 'BAD_PADDING'
  /** The peer speaks only versions older than ours. */
  | 'VERSION_TOO_OLD'
  /** The peer speaks only versions newer than ours. */
  | 'VERSION_UNSUPPORTED'
  /** A relay address does not parse. */
  | 'BAD_ADDRESS';

/** A malformed or unsupported piece of wire data. */
export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  constructor(
    readonly code: ProtocolErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** Type guard: `err` is a ProtocolError, with the given code if one is named. */
  static is(err: unknown, code?: ProtocolErrorCode): err is ProtocolError {
    return err instanceof ProtocolError && (code === undefined || err.code === code);
  }
}
