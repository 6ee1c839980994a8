// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The relay's logger: one JSON object per line on a stream (stderr by default). It carries
 * events, counts and error codes; callers never pass queue ids, keys or addresses.
 * @module
 */

/** Log levels, least severe first. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

/** Fields a log line may carry: counts, durations, codes and fixed words. */
export type LogFields = Readonly<Record<string, number | string | boolean>>;

/** A structured logger. */
export type Logger = Readonly<{
  log(level: LogLevel, event: string, fields?: LogFields): void;
}>;

/** A logger writing JSON lines to `out` at or above `level`. */
export function jsonLogger(out: { write(s: string): unknown }, level: LogLevel = 'info'): Logger {
  return {
    log(l, event, fields = {}) {
      if (ORDER[l] < ORDER[level]) return;
      out.write(`${JSON.stringify({ time: new Date().toISOString(), level: l, event, ...fields })}\n`);
    },
  };
}

/** A logger that drops everything. */
export const silentLogger: Logger = { log() {} };
