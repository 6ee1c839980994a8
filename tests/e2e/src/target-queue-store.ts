// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Test support for an evil relay (agent-evil-relay, cli-order): the relay's queue store, run
 * in-process over the real SQLite store, with one queue (the target) whose messages a test hands
 * out in an order it chooses. The store keeps a mirror of what the target queue holds, each
 * message with a delivery rank, and answers from it, lowest rank first.
 * @module
 */

import type { QueueRecord, QueueStore, SqliteQueueStore, StoredMessage } from '@murmure/relay';

/** A message of the target queue, with its delivery rank (lower first). */
export type Ranked = { m: StoredMessage; rank: number };

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a).equals(Buffer.from(b));
}

/**
 * A queue store delegating to SQLite that hands out the target queue's messages by rank.
 * Subclasses decide what a message added to the target becomes (`addToTarget`), usually through
 * `storeRanked`; every other queue is left to SQLite.
 */
export abstract class TargetQueueStore implements QueueStore {
  /** The queue whose messages are handed out by rank (the receiver's). */
  target: Uint8Array | null = null;
  /** Holds deliveries of the target back (oldestMessage answers "empty") while set. */
  hold = false;
  /** Messages added to the target so far. */
  added = 0;
  /** What the target queue holds, with ranks, mirroring the SQLite store. */
  protected readonly present: Ranked[] = [];

  constructor(readonly inner: SqliteQueueStore) {}

  /** Whether `rcvId` is the target queue. */
  protected isTarget(rcvId: Uint8Array): boolean {
    return this.target !== null && same(this.target, rcvId);
  }

  /** Messages the target queue still holds. */
  pending(): number {
    return this.present.length;
  }

  /** Adds a message to the mirror of the target queue. */
  protected mirror(m: StoredMessage, rank: number): Ranked {
    const entry = { m, rank };
    this.present.push(entry);
    return entry;
  }

  /** Takes a message out of the mirror again. */
  protected unmirror(entry: Ranked): void {
    const i = this.present.indexOf(entry);
    if (i >= 0) this.present.splice(i, 1);
  }

  /** Stores `msg` in the target queue under `rank`, keeping the mirror in step with SQLite. */
  protected async storeRanked(rcvId: Uint8Array, msg: StoredMessage, rank: number, quota: number, now: number): Promise<'ok' | 'quota' | 'gone'> {
    // The store makes a message visible at commit, before the write resolves (after its sync):
    // the mirror takes it at once too, so it never lags behind what the relay can read.
    const entry = this.mirror(msg, rank);
    const r = await this.inner.addMessage(rcvId, msg, quota, now).catch((e: unknown) => {
      this.unmirror(entry);
      throw e;
    });
    if (r !== 'ok') this.unmirror(entry);
    return r;
  }

  /** What becomes of the `added`-th message added to the target (counted already). */
  protected abstract addToTarget(rcvId: Uint8Array, msg: StoredMessage, quota: number, now: number): Promise<'ok' | 'quota' | 'gone'>;

  async addMessage(rcvId: Uint8Array, msg: StoredMessage, quota: number, now: number, committed?: (r: 'ok' | 'quota' | 'gone') => void): Promise<'ok' | 'quota' | 'gone'> {
    // Other queues behave as on a real relay, pushed at commit; the target's messages are
    // handed out by rank, after the SEND's OK.
    if (!this.isTarget(rcvId)) return this.inner.addMessage(rcvId, msg, quota, now, committed);
    this.added++;
    return this.addToTarget(rcvId, msg, quota, now);
  }

  async oldestMessage(rcvId: Uint8Array): Promise<StoredMessage | undefined> {
    if (!this.isTarget(rcvId)) return this.inner.oldestMessage(rcvId);
    if (this.hold) return undefined;
    let best: Ranked | undefined;
    for (const p of this.present) if (best === undefined || p.rank < best.rank) best = p;
    return best?.m ?? (await this.inner.oldestMessage(rcvId));
  }

  async oldestMessages(rcvId: Uint8Array, limit: number, aheadBytes?: number): Promise<StoredMessage[]> {
    if (!this.isTarget(rcvId)) return this.inner.oldestMessages(rcvId, limit, aheadBytes);
    if (this.hold) return [];
    if (this.present.length === 0) return this.inner.oldestMessages(rcvId, limit, aheadBytes);
    const out: StoredMessage[] = [];
    let ahead = 0;
    for (const { m } of [...this.present].sort((a, b) => a.rank - b.rank)) {
      if (out.length > 0 && (ahead += m.sealed.length) > (aheadBytes ?? Infinity)) break;
      out.push(m);
      if (out.length === limit) break;
    }
    return out;
  }

  async deleteMessage(rcvId: Uint8Array, msgId: Uint8Array, now: number): Promise<boolean> {
    // As the interface asks: from the call on, oldestMessage no longer returns the message.
    const pending = this.inner.deleteMessage(rcvId, msgId, now);
    const i = this.isTarget(rcvId) ? this.present.findIndex((p) => same(p.m.msgId, msgId)) : -1;
    const removed = i >= 0 ? this.present.splice(i, 1)[0] : undefined;
    const r = await pending;
    if (!r && removed !== undefined) this.present.push(removed);
    return r;
  }

  createQueue(q: Omit<QueueRecord, 'msgCount' | 'sndAuthKey' | 'suspended' | 'activeDay'>, now: number): Promise<void> {
    return this.inner.createQueue(q, now);
  }
  queueByRecipient(rcvId: Uint8Array): Promise<QueueRecord | undefined> {
    return this.inner.queueByRecipient(rcvId);
  }
  queueBySender(sndId: Uint8Array): Promise<QueueRecord | undefined> {
    return this.inner.queueBySender(sndId);
  }
  secureQueue(rcvId: Uint8Array, sndAuthKey: Uint8Array, now: number): Promise<'ok' | 'conflict'> {
    return this.inner.secureQueue(rcvId, sndAuthKey, now);
  }
  touchQueue(rcvId: Uint8Array, now: number): Promise<void> {
    return this.inner.touchQueue(rcvId, now);
  }
  suspendQueue(rcvId: Uint8Array): Promise<void> {
    return this.inner.suspendQueue(rcvId);
  }
  deleteQueue(rcvId: Uint8Array): Promise<void> {
    return this.inner.deleteQueue(rcvId);
  }
  setLink(rcvId: Uint8Array, linkId: Uint8Array, data: Uint8Array): Promise<'ok' | 'taken' | 'secured'> {
    return this.inner.setLink(rcvId, linkId, data);
  }
  linkData(linkId: Uint8Array): Promise<{ sndId: Uint8Array; data: Uint8Array } | undefined> {
    return this.inner.linkData(linkId);
  }
  expire(messagesBefore: number, queuesUnusedSince: number, onRound?: (r: { messages: number; queues: number }) => void): Promise<{ messages: number; queues: number }> {
    return this.inner.expire(messagesBefore, queuesUnusedSince, onRound);
  }
  stats(): Promise<{ queues: number; messages: number }> {
    return this.inner.stats();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
