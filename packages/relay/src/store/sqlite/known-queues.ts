// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * What the SQLite store knows a queue holds without reading it. A subscribed queue is read after
 * every SEND (to push the message just committed) and after every ACK (to find the next one),
 * and on a relay where queues mostly hold nothing or one message, those two reads were a fifth
 * of its CPU per message: each is a read transaction of its own, with its WAL locks. The store
 * learns a queue's whole content from a read that found fewer messages than it asked for, then
 * keeps it in step with its own commits, so later reads of that queue need no query. A queue
 * holding as many as a read asked for is read whole once if its count is small enough to keep.
 *
 * Only the store's own commits change what it holds: every write that adds or deletes messages
 * updates the entry of its queue, or forgets it, after its transaction; a batch whose
 * transaction fails forgets everything. Bounded: KNOWN_QUEUES queues, KNOWN_MESSAGES_PER_QUEUE
 * messages and KNOWN_BYTES_PER_QUEUE bytes each, KNOWN_BYTES in all; the queue used longest ago
 * is dropped first.
 * @module
 */

import { sameBytes } from '../../bytes.js';
import type { StoredMessage } from '../queue-store.js';

/** Most queues whose content the store keeps in memory. */
export const KNOWN_QUEUES = 65_536;
/**
 * A queue holding more messages than this is not kept (it is read from the store). Above what a
 * subscription reads ahead (PREFETCH_MESSAGES, 8): a queue that never empties while its recipient
 * reads (a busy conversation) is kept too.
 */
export const KNOWN_MESSAGES_PER_QUEUE = 32;
/** A queue holding more bytes of sealed messages than this is not kept. */
export const KNOWN_BYTES_PER_QUEUE = 32_768;
/**
 * Most bytes kept over every queue: their messages, and ENTRY_BYTES and MESSAGE_BYTES each (so
 * KNOWN_QUEUES queues that hold nothing take all of it).
 */
export const KNOWN_BYTES = 16 * 1024 * 1024;
/** What a kept queue is counted for besides its messages (its key, entry and list). */
const ENTRY_BYTES = 256;
/** What a kept message is counted for besides its sealed bytes (its object, id and buffers). */
const MESSAGE_BYTES = 160;

type Entry = { messages: StoredMessage[]; bytes: number };

/** Whether a queue of `count` messages holding `sealedBytes` bytes in all may be kept. */
export const keepable = (count: number, sealedBytes: number): boolean => count <= KNOWN_MESSAGES_PER_QUEUE && sealedBytes <= KNOWN_BYTES_PER_QUEUE;

const sealedSize = (ms: readonly StoredMessage[]): number => ms.reduce((n, m) => n + m.sealed.length, 0);
/** What an entry holding `ms` is counted for. */
const entrySize = (ms: readonly StoredMessage[]): number => ENTRY_BYTES + sealedSize(ms) + MESSAGE_BYTES * ms.length;

/**
 * A message in buffers of its own: a small buffer of the caller's may be a view into a pool
 * shared with other buffers, which keeping it would keep alive.
 */
const own = (m: StoredMessage): StoredMessage => ({ msgId: new Uint8Array(m.msgId), receivedAt: m.receivedAt, sealed: new Uint8Array(m.sealed) });

/** Every message of some queues, oldest first, by queue key (`idKey` of the recipient id). */
export class KnownQueues {
  /** In order of use: the first entry is the one used longest ago. */
  private readonly entries = new Map<string, Entry>();
  private totalBytes = 0;

  constructor(
    private readonly maxQueues = KNOWN_QUEUES,
    private readonly maxBytes = KNOWN_BYTES,
  ) {}

  /** Queues kept, and the bytes they are counted for (for tests). */
  get size(): { queues: number; bytes: number } {
    return { queues: this.entries.size, bytes: this.totalBytes };
  }

  /** Every message the queue holds, oldest first, or undefined if the store must read it. Not to be changed. */
  messages(key: string): readonly StoredMessage[] | undefined {
    const e = this.entries.get(key);
    if (e === undefined) return undefined;
    this.entries.delete(key);
    this.entries.set(key, e);
    return e.messages;
  }

  /** A read found these to be every message the queue holds (in buffers of their own). */
  learn(key: string, messages: StoredMessage[]): void {
    this.forget(key);
    if (!keepable(messages.length, sealedSize(messages))) return;
    const bytes = entrySize(messages);
    this.entries.set(key, { messages, bytes });
    this.totalBytes += bytes;
    this.trim();
  }

  /** A message was committed to the queue (behind every message it holds). */
  added(key: string, m: StoredMessage): void {
    const e = this.entries.get(key);
    if (e === undefined) return;
    if (!keepable(e.messages.length + 1, sealedSize(e.messages) + m.sealed.length)) {
      this.forget(key);
      return;
    }
    e.messages.push(own(m));
    e.bytes += m.sealed.length + MESSAGE_BYTES;
    this.totalBytes += m.sealed.length + MESSAGE_BYTES;
    this.trim();
  }

  /** The deletion of a message of the queue was committed. */
  removed(key: string, msgId: Uint8Array): void {
    const e = this.entries.get(key);
    if (e === undefined) return;
    const i = e.messages.findIndex((m) => sameBytes(m.msgId, msgId));
    if (i < 0) {
      // Not a message this entry holds: the entry is wrong, so it goes.
      this.forget(key);
      return;
    }
    const [m] = e.messages.splice(i, 1);
    e.bytes -= m!.sealed.length + MESSAGE_BYTES;
    this.totalBytes -= m!.sealed.length + MESSAGE_BYTES;
  }

  /** The queue changed in a way not followed here (deleted, expired): read it again. */
  forget(key: string): void {
    const e = this.entries.get(key);
    if (e === undefined) return;
    this.entries.delete(key);
    this.totalBytes -= e.bytes;
  }

  /**
   * Forgets every queue: after a failed transaction, whose writes may have updated entries, and
   * after a failed sync, whose commits may be lost from the file.
   */
  clear(): void {
    this.entries.clear();
    this.totalBytes = 0;
  }

  private trim(): void {
    while (this.entries.size > this.maxQueues || this.totalBytes > this.maxBytes) {
      const oldest = this.entries.keys().next();
      if (oldest.done === true) return;
      this.forget(oldest.value);
    }
  }
}
