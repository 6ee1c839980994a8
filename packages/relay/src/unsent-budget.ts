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
  /** What waits unsent on it now. */
  readonly unsentNow: number;
  /** Cut off to free what waits unsent: the budget has already forgotten it. */
  evictUnsent(): void;
}

/** Bytes waiting unsent on backed-up connections, over the whole relay. */
export class UnsentBudget {
  /** By connection, in the order they backed up (longest first), as counted at their last write. */
  private readonly held = new Map<UnsentHolder, number>();
  private total = 0;
  private passScheduled = false;

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
   * while it is). Over the budget, a pass is scheduled: it cuts off the connections backed up
   * longest, this one too if it alone is over. The pass runs once the current call has returned
   * (a microtask), never in the middle of a write to another connection, or of a command.
   */
  hold(conn: UnsentHolder, bytes: number): void {
    // Setting a key already there keeps its place: a connection stays as old as its backing up.
    this.total += bytes - (this.held.get(conn) ?? 0);
    this.held.set(conn, bytes);
    this.onChange(this.total);
    if (this.total > this.budgetBytes && !this.passScheduled) {
      this.passScheduled = true;
      queueMicrotask(() => this.pass());
    }
  }

  /** The connection is no longer backed up, or closed. A connection not held is ignored. */
  release(conn: UnsentHolder): void {
    const bytes = this.held.get(conn);
    if (bytes === undefined) return;
    this.held.delete(conn);
    this.total -= bytes;
    this.onChange(this.total);
  }

  /**
   * Counts what each connection holds now (a slow reader may have sent part of it since its last
   * write), then cuts off the connections backed up longest while the total is over the budget.
   */
  private pass(): void {
    this.passScheduled = false;
    if (this.total <= this.budgetBytes) return;
    let total = 0;
    for (const conn of this.held.keys()) {
      const now = conn.unsentNow;
      this.held.set(conn, now);
      total += now;
    }
    this.total = total;
    while (this.total > this.budgetBytes) {
      const oldest = this.held.keys().next().value as UnsentHolder;
      this.release(oldest);
      oldest.evictUnsent();
    }
    this.onChange(this.total);
  }
}
