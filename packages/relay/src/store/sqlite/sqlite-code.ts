// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * SQLite's result code of a failure (`SQLITE_FULL`, `SQLITE_IOERR_FSYNC`, ...), or '' for
 * anything else. Only the code: the message may hold a path.
 * @module
 */

/** The `code` of a failure thrown by the SQLite binding, or ''. */
export function sqliteCode(e: unknown): string {
  return typeof e === 'object' && e !== null && 'code' in e ? String((e as { code: unknown }).code) : '';
}
