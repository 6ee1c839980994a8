// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Turns: how connections share the event loop (THREATS.md S1, S2). Commands start in turns:
 * what a command does before its first wait (its decoding, its token, its signature check or
 * key agreement) counts against the turn that starts it. A command that reads its queue before
 * its check reads it at once from a store that can answer so (the SQLite one), and checks in the
 * same turn; with a store that must wait, its check runs after the read, outside the budget.
 *
 * - The connections of one source form a group (a connection from an unlimited source, such as
 *   loopback, through which a local reverse proxy or an onion service brings every client, is a
 *   group of its own: there the address says nothing of who sent). A group's turn lasts at most
 *   TURN_BUDGET_MS; its busy connections take it in rotation, each starting where the last one
 *   stopped.
 * - A block that arrives for a connection with nothing left over is fresh: its commands start
 *   at once, as long as the arrivals of this pass have not taken PASS_BUDGET_MS; past that, at
 *   the end of the pass, before any busy group. What a turn leaves over makes its connection
 *   (and group) busy.
 * - Once a pass, after the event loop has read every socket, the groups take their turns while
 *   less than PASS_BUDGET_MS has passed (a turn begun is a whole turn): first those with fresh
 *   blocks left, in order of arrival, then the busy ones, in rotation from where the last pass
 *   stopped; each at most one turn of each kind a pass.
 *
 * So however many connections or sources keep the relay busy with expensive commands, a pass of
 * the event loop holds at most about twice PASS_BUDGET_MS (and a turn) of command starts, and a
 * client that sends a few commands at a time, even one sharing its address with the flood, is
 * served in the pass its block arrives, or the next. Floods whose blocks are all fresh (new
 * connections, each block answered before the next) share the fresh turns with it in order of
 * arrival. Before, each busy connection had a turn of its own every pass: 48 of them made each
 * pass last about 100 ms, and a conversation, which waits a pass for every ACK, fell seconds
 * behind.
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

type RotationList<T> = { items: (T | undefined)[]; head: number; base: number; at: Map<T, number> };

/** Members in turn order, each at most once; push, delete and shift in constant time. */
export class Rotation<T> {
  /**
   * The only member, while there is one and no list: the usual case (one connection of a source
   * with a block waiting), which then takes no list, array or Map to be made and dropped again.
   */
  private one: T | undefined = undefined;
  /**
   * The members in order from `head`, and where each is, counted from `base` (the items cut off
   * the front). Made when a second member joins `one`, and dropped once empty: an idle
   * connection's group holds no list.
   */
  private list: RotationList<T> | null = null;

  get size(): number {
    return this.list?.at.size ?? (this.one === undefined ? 0 : 1);
  }

  has(t: T): boolean {
    return this.list?.at.has(t) ?? this.one === t;
  }

  /** Adds `t` at the back, unless it is a member. */
  push(t: T): void {
    if (this.list === null) {
      if (this.one === undefined) {
        this.one = t;
        return;
      }
      if (this.one === t) return;
      this.list = { items: [this.one], head: 0, base: 0, at: new Map<T, number>([[this.one, 0]]) };
      this.one = undefined;
    }
    const l = this.list;
    if (l.at.has(t)) return;
    l.at.set(t, l.base + l.items.length);
    l.items.push(t);
  }

  /** Removes `t`, and lets go of it at once. */
  delete(t: T): void {
    const l = this.list;
    if (l === null) {
      if (this.one === t) this.one = undefined;
      return;
    }
    const i = l.at.get(t);
    if (i === undefined) return;
    l.at.delete(t);
    l.items[i - l.base] = undefined;
    this.compact(l);
  }

  /** Removes and returns the member at the front. */
  shift(): T | undefined {
    const l = this.list;
    if (l === null) {
      const t = this.one;
      this.one = undefined;
      return t;
    }
    while (l.head < l.items.length) {
      const t = l.items[l.head];
      l.items[l.head++] = undefined;
      if (t !== undefined) {
        l.at.delete(t);
        this.compact(l);
        return t;
      }
    }
    this.compact(l);
    return undefined;
  }

  private compact(l: RotationList<T>): void {
    if (l.at.size === 0) this.list = null;
    else if (l.head > 64 && l.head * 2 > l.items.length) {
      l.base += l.head;
      l.items = l.items.slice(l.head);
      l.head = 0;
    }
  }
}

/** What the scheduler gives turns to: the connections of one source (`TurnGroup`). */
export interface TurnGroupLike {
  /** Whether a connection of the group received a block with nothing left over before it. */
  readonly hasFresh: boolean;
  /** Whether connections of the group have commands left over from their turns. */
  readonly hasBusy: boolean;
  /** Starts the commands of the fresh connections, in order of arrival, until the deadline. */
  freshTurn(deadline: number): void;
  /** Starts the busy connections' commands, in rotation, until the deadline. */
  busyTurn(deadline: number): void;
}

/** The rotations of groups with fresh blocks and of busy groups, and the budgets of the pass. */
export class TurnScheduler {
  /** Groups whose fresh blocks arrived once the arrivals of the pass had spent their budget. */
  private readonly fresh = new Rotation<TurnGroupLike>();
  private readonly busy = new Rotation<TurnGroupLike>();
  /** Time the turns of arriving blocks took since the pass began. */
  private arrivalsSpentMs = 0;
  private passEnding = false;
  private rotationScheduled = false;
  /** The group taking its turn now: blocks it receives meanwhile are looked at after that turn. */
  private current: TurnGroupLike | null = null;

  constructor(
    readonly clock: TurnClock = REAL_CLOCK,
    private readonly turnMs = TURN_BUDGET_MS,
    private readonly passMs = PASS_BUDGET_MS,
  ) {}

  /** Groups waiting for a turn, fresh or busy (for tests). */
  get waiting(): number {
    return this.fresh.size + this.busy.size;
  }

  /**
   * A connection of `g` received a block with nothing left over: it starts now if the arrivals
   * of this pass have budget left, else first thing at the end of the pass.
   */
  ready(g: TurnGroupLike): void {
    if (g === this.current || this.fresh.has(g)) return;
    if (this.arrivalsSpentMs >= this.passMs) {
      this.fresh.push(g);
      this.schedule();
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
    this.turn(g, true, started + this.turnMs);
    this.arrivalsSpentMs += this.clock.now() - started;
  }

  /** One turn of `g`; then it joins the rotations it has work for. */
  private turn(g: TurnGroupLike, fresh: boolean, deadline: number): void {
    const outer = this.current;
    this.current = g;
    try {
      if (fresh) g.freshTurn(deadline);
      else g.busyTurn(deadline);
    } finally {
      this.current = outer;
    }
    if (g.hasFresh) this.fresh.push(g);
    if (g.hasBusy) this.busy.push(g);
    if (this.waiting > 0) this.schedule();
  }

  private schedule(): void {
    if (this.rotationScheduled) return;
    this.rotationScheduled = true;
    this.clock.defer(() => this.rotate());
  }

  /**
   * The turns of this pass: the groups with fresh blocks first, then the busy groups from where
   * the last pass stopped, while less than PASS_BUDGET_MS has passed.
   */
  private rotate(): void {
    this.rotationScheduled = false;
    const passEnd = this.clock.now() + this.passMs;
    for (const [lane, fresh] of [[this.fresh, true], [this.busy, false]] as const) {
      for (let n = lane.size; n > 0; n--) {
        const now = this.clock.now();
        if (now >= passEnd) break;
        const g = lane.shift();
        if (g === undefined) break;
        this.turn(g, fresh, now + this.turnMs);
      }
    }
    if (this.waiting > 0) this.schedule();
  }
}

/** The process's scheduler: every relay in a process shares its event loop. */
const SCHEDULER = new TurnScheduler();

/**
 * The connections of one source that have commands waiting. A connection whose block arrives
 * with nothing left over is fresh and has its commands started before the busy ones: a client
 * that shares its address with a flood (a carrier's NAT, a Tor exit) waits for a pass at most,
 * not for every connection of the flood.
 */
export class TurnGroup implements TurnGroupLike {
  private readonly fresh = new Rotation<TurnTaker>();
  /** In turn order; a connection still busy after its turn goes to the back. */
  private readonly busy = new Rotation<TurnTaker>();

  constructor(private readonly scheduler: TurnScheduler = SCHEDULER) {}

  get hasFresh(): boolean {
    return this.fresh.size > 0;
  }

  get hasBusy(): boolean {
    return this.busy.size > 0;
  }

  /** Whether the group has connections with commands waiting. */
  get pending(): boolean {
    return this.hasFresh || this.hasBusy;
  }

  /** A connection received a block; one with commands left over waits for its turn in the rotation. */
  ready(c: TurnTaker): void {
    if (this.busy.has(c) || this.fresh.has(c)) return;
    this.fresh.push(c);
    this.scheduler.ready(this);
  }

  /** A connection closed: its commands are no longer waiting. */
  drop(c: TurnTaker): void {
    this.fresh.delete(c);
    this.busy.delete(c);
  }

  freshTurn(deadline: number): void {
    this.take(this.fresh, deadline);
  }

  busyTurn(deadline: number): void {
    this.take(this.busy, deadline);
  }

  /** Each connection of `from` at most once, in order, until the deadline; what is left over goes to the busy rotation. */
  private take(from: Rotation<TurnTaker>, deadline: number): void {
    for (let n = from.size; n > 0 && this.scheduler.clock.now() < deadline; n--) {
      const c = from.shift();
      if (c === undefined) break;
      if (c.takeTurn(deadline)) this.busy.push(c);
    }
  }
}
