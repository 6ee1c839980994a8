// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The order a conversation is shown in: each direction in its sender's sequence order (a
 * message that arrived late is shown where it was sent, never by the wall clock within one
 * sender), and the two directions interleaved by time: our messages by when we sent them,
 * received ones by when they arrived (the sender's clock is the sender's to set, so it could
 * otherwise place a reply above the message it answers).
 * @module
 */

/** What ordering needs of a message row. */
export type Orderable = Readonly<{ id: number; direction: 'in' | 'out'; seq: number | null; sent_at: number; received_at?: number | null }>;

/** The time a row is merged by: when we sent it, or when it arrived. */
function mergeTime(r: Orderable): number {
  return r.direction === 'in' && r.received_at !== undefined && r.received_at !== null ? r.received_at : r.sent_at;
}

/**
 * Orders the rows of one conversation (given in arrival order, by `id`). Within a direction,
 * the rows with a sequence number are sorted by it and take the places the direction's
 * numbered rows had; rows without one (notices, gaps) keep their places. The two directions
 * are then merged by `mergeTime`, arrival order breaking ties, each keeping its own order.
 */
export function orderConversation<T extends Orderable>(rows: readonly T[]): T[] {
  const byArrival = [...rows].sort((a, b) => a.id - b.id);
  const side = (dir: 'in' | 'out'): T[] => {
    const list = byArrival.filter((r) => r.direction === dir);
    const numbered = list.filter((r) => r.seq !== null).sort((a, b) => (a.seq as number) - (b.seq as number) || a.id - b.id);
    let i = 0;
    return list.map((r) => (r.seq === null ? r : (numbered[i++] as T)));
  };
  const ins = side('in');
  const outs = side('out');
  const merged: T[] = [];
  let i = 0;
  let o = 0;
  while (i < ins.length || o < outs.length) {
    const a = ins[i];
    const b = outs[o];
    if (b === undefined || (a !== undefined && (mergeTime(a) < mergeTime(b) || (mergeTime(a) === mergeTime(b) && a.id < b.id)))) {
      merged.push(a as T);
      i++;
    } else {
      merged.push(b);
      o++;
    }
  }
  return merged;
}
