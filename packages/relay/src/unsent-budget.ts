// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The relay-wide budget of bytes waiting unsent on backed-up connections (`unsentBudgetBytes`).
 *
 * A connection whose client does not read is backed up once OUTPUT_HIGH_BYTES wait unsent: the
 * relay then reads nothing more from it and pushes it nothing, but what waits stays in the relay's
 * memory until the client reads or the idle timeout closes it (15 minutes). One such connection
 * holds a few hundred KiB at most (`maxBufferedBytes` closes it at 1 MiB); many at once, opened
 * for that purpose (a client that asks for large answers and never reads them), would hold
 * gigabytes. Past the budget the connection that has been backed up longest is cut off, its
 * buffers freed at once; its client, if it comes back, gets what it had not acknowledged again.
 * A client on a slow or stalled link keeps its connection while the budget has room.
 * @module
 */

/** A connection the budget can cut off. */
export interface UnsentHolder {
  /** Cut off to free what waits unsent: the budget has already forgotten it. */
  evictUnsent(): void;
}

/** Bytes waiting unsent on backed-up connections, over the whole relay. */
export class UnsentBudget {
  /** By connection, in the order they backed up (longest first). */
  private readonly held = new Map<UnsentHolder, number>();
  private total = 0;

  constructor(
    private readonly budgetBytes: number,
    /** Told the new total after every change. */
    private readonly onChange: (bytes: number) => void = () => undefined,
  ) {}

  /** Bytes held now over every backed-up connection. */
  get bytes(): number {
    return this.total;
  }

  /** Backed-up connections counted now. */
  get connections(): number {
    return this.held.size;
  }

  /**
   * A backed-up connection has `bytes` waiting unsent (when it backs up, and after each write
   * while it is). Over the budget, the connections backed up longest are cut off until the total
   * is within it again: this one too, if it alone is over it.
   */
  hold(conn: UnsentHolder, bytes: number): void {
    // Setting a key already there keeps its place: a connection stays as old as its backing up.
    this.total += bytes - (this.held.get(conn) ?? 0);
    this.held.set(conn, bytes);
    while (this.total > this.budgetBytes) {
      const oldest = this.held.keys().next().value as UnsentHolder;
      this.release(oldest);
      oldest.evictUnsent();
    }
    this.onChange(this.total);
  }

  /** The connection is no longer backed up, or closed. A connection not held is ignored. */
  release(conn: UnsentHolder): void {
    const bytes = this.held.get(conn);
    if (bytes === undefined) return;
    this.held.delete(conn);
    this.total -= bytes;
    this.onChange(this.total);
  }
}
