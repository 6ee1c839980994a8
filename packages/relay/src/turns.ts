// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Turns: how connections share the event loop (THREATS.md S1, S2). Commands start (their
 * signature checks and key agreements, before they wait for the store) in turns:
 *
 * - The connections of one source form a group (a connection from an unlimited source, such as
 *   loopback, through which a local reverse proxy or an onion service brings every client, is a
 *   group of its own: there the address says nothing of who sent). A group's turn lasts at most
 *   TURN_BUDGET_MS; its busy connections take it in rotation, each starting where the last one
 *   stopped.
 * - A group with nothing left over takes its turn as soon as a block arrives: a client sending a
 *   few commands at a time is served at once. What is left after its turn waits in the rotation
 *   of busy groups, and so do arrivals once those of one pass have taken PASS_BUDGET_MS.
 * - Once a pass, after the event loop has read every socket, the busy groups take their turns in
 *   rotation while less than PASS_BUDGET_MS has passed (a turn begun is a whole turn), and the
 *   next pass goes on where it stopped.
 *
 * So however many connections or sources keep the relay busy with expensive commands, a pass of
 * the event loop holds at most about twice PASS_BUDGET_MS (and a turn) of command starts, and a client whose
 * blocks are few is served in the pass its block arrives. Before, each busy connection had a
 * turn of its own every pass: 48 of them made each pass last about 100 ms, and a conversation,
 * which waits a pass for every ACK, fell seconds behind.
 * @module
 */

/**
 * Longest one group's commands (a source's) may hold the event loop in one turn. A client with a
 * few commands at a time never reaches it.
 */
export const TURN_BUDGET_MS = 1;

/**
 * Longest the busy groups' turns may hold the event loop in one pass, and again the turns of the
 * groups whose blocks arrived in that pass.
 */
export const PASS_BUDGET_MS = 4;

/** A connection, or a group of them, with commands waiting to start. */
export interface TurnTaker {
  /**
   * Starts waiting commands in order until none is left or the clock passes `deadline`; returns
   * whether some are still waiting.
   */
  takeTurn(deadline: number): boolean;
}

/** The clock, and the deferral to the end of the event loop's pass (replaceable in tests). */
export type TurnClock = Readonly<{ now: () => number; defer: (f: () => void) => void }>;

const REAL_CLOCK: TurnClock = { now: () => performance.now(), defer: (f) => setImmediate(f) };

/** Members in turn order, each at most once; shift and push in constant time. */
class Rotation<T> {
  private items: (T | undefined)[] = [];
  private head = 0;
  private readonly members = new Set<T>();

  get size(): number {
    return this.members.size;
  }

  has(t: T): boolean {
    return this.members.has(t);
  }

  /** Adds `t` at the back, unless it is a member. */
  push(t: T): void {
    if (this.members.has(t)) return;
    this.members.add(t);
    this.items.push(t);
  }

  /** Removes `t` (its place is skipped when it comes). */
  delete(t: T): void {
    this.members.delete(t);
  }

  /** Removes and returns the member at the front. */
  shift(): T | undefined {
    while (this.head < this.items.length) {
      const t = this.items[this.head];
      this.items[this.head++] = undefined;
      if (t !== undefined && this.members.delete(t)) {
        this.compact();
        return t;
      }
    }
    this.compact();
    return undefined;
  }

  private compact(): void {
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head > 64 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }
}

/** The rotation of busy groups, and the budgets of the event loop's pass. */
export class TurnScheduler {
  private readonly busy = new Rotation<TurnTaker>();
  /** Time the turns of arriving groups took since the pass began. */
  private arrivalsSpentMs = 0;
  private passEnding = false;
  private rotationScheduled = false;
  /** The group taking its turn now: a block it receives meanwhile waits for that turn's end. */
  private current: TurnTaker | null = null;

  constructor(
    readonly clock: TurnClock = REAL_CLOCK,
    private readonly turnMs = TURN_BUDGET_MS,
    private readonly passMs = PASS_BUDGET_MS,
  ) {}

  /** Busy groups waiting for a turn (for tests). */
  get waiting(): number {
    return this.busy.size;
  }

  /** A group has commands waiting: its turn comes now if it was idle and the pass has room, else in the rotation. */
  ready(g: TurnTaker): void {
    if (g === this.current || this.busy.has(g)) return;
    if (this.arrivalsSpentMs >= this.passMs) {
      this.enqueue(g);
      return;
    }
    if (!this.passEnding) {
      this.passEnding = true;
      this.clock.defer(() => {
        this.passEnding = false;
        this.arrivalsSpentMs = 0;
      });
    }
    const started = this.clock.now();
    const left = this.turn(g, started + this.turnMs);
    this.arrivalsSpentMs += this.clock.now() - started;
    if (left) this.enqueue(g);
  }

  private turn(g: TurnTaker, deadline: number): boolean {
    this.current = g;
    try {
      return g.takeTurn(deadline);
    } finally {
      this.current = null;
    }
  }

  private enqueue(g: TurnTaker): void {
    this.busy.push(g);
    if (!this.rotationScheduled) {
      this.rotationScheduled = true;
      this.clock.defer(() => this.rotate());
    }
  }

  /** The busy groups' turns of this pass, from where the last pass stopped. */
  private rotate(): void {
    this.rotationScheduled = false;
    const passEnd = this.clock.now() + this.passMs;
    for (let n = this.busy.size; n > 0; n--) {
      const now = this.clock.now();
      if (now >= passEnd) break;
      const g = this.busy.shift();
      if (g === undefined) break;
      if (this.turn(g, now + this.turnMs)) this.busy.push(g);
    }
    if (this.busy.size > 0) {
      this.rotationScheduled = true;
      this.clock.defer(() => this.rotate());
    }
  }
}

/** The process's scheduler: every relay in a process shares its event loop. */
const SCHEDULER = new TurnScheduler();

/** The connections of one source that have commands waiting; it takes its turns as one. */
export class TurnGroup implements TurnTaker {
  /** In turn order; a connection still busy after its turn goes to the back. */
  private readonly conns = new Rotation<TurnTaker>();

  constructor(private readonly scheduler: TurnScheduler = SCHEDULER) {}

  /** Whether the group has connections with commands waiting. */
  get pending(): boolean {
    return this.conns.size > 0;
  }

  /** A connection has commands waiting. */
  ready(c: TurnTaker): void {
    this.conns.push(c);
    this.scheduler.ready(this);
  }

  /** A connection closed: its commands are no longer waiting. */
  drop(c: TurnTaker): void {
    this.conns.delete(c);
  }

  /** Each busy connection at most once, in rotation, until the deadline. */
  takeTurn(deadline: number): boolean {
    for (let n = this.conns.size; n > 0 && this.scheduler.clock.now() < deadline; n--) {
      const c = this.conns.shift();
      if (c === undefined) break;
      if (c.takeTurn(deadline)) this.conns.push(c);
    }
    return this.conns.size > 0;
  }
}
