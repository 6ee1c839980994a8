// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The relay's storage interface. Command handling sees only this, so a PostgreSQL backend can
 * sit beside the SQLite one without touching the handlers. Every write resolves only once it is
 * durable; a write that could not be made durable rejects with `StoreError`. A rejected write
 * changes nothing, except one whose commit succeeded and whose sync then failed: its changes may
 * survive (docs/threat-model.md, "Durability"), as they may when an answer is lost.
 * @module
 */

/** A queue as stored. Keys are raw 32-byte public keys; `boxKey` is the derived box secret. */
export type QueueRecord = Readonly<{
  rcvId: Uint8Array;
  sndId: Uint8Array;
  rcvSigKey: Uint8Array;
  rcvAuthKey: Uint8Array;
  sndAuthKey: Uint8Array | null;
  boxKey: Uint8Array;
  suspended: boolean;
  /**
   * Messages the queue holds, as of the read: every committed message not yet deleted. 0 must
   * mean empty, since a SUB that reads 0 looks for no message (docs/protocol.md, "SUB").
   */
  msgCount: number;
  /** The day (`dayOf`) of the queue's last recorded activity, for the expiry of unused queues. */
  activeDay: number;
}>;

/** A message waiting in a queue, already sealed in the relay-to-recipient box. */
export type StoredMessage = Readonly<{ msgId: Uint8Array; receivedAt: number; sealed: Uint8Array }>;

/** What an expiry pass removed. */
export type ExpiryResult = Readonly<{ messages: number; queues: number }>;

/** Why a store operation failed. */
export type StoreErrorCode = 'FULL' | 'IO' | 'CORRUPT' | 'CLOSED' | 'INTERNAL';

/** A store failure: nothing the failed call asked for was changed. */
export class StoreError extends Error {
  override readonly name = 'StoreError';
  constructor(
    readonly code: StoreErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** Type guard. */
  static is(err: unknown, code?: StoreErrorCode): err is StoreError {
    return err instanceof StoreError && (code === undefined || err.code === code);
  }
}

/**
 * Every operation the relay performs on its queues and messages. A write resolves once it is
 * durable (it survives a power cut), except `touchQueue` and `deleteMessage`, which resolve once
 * committed and become durable with the next durable write: losing one brings back an older
 * activity mark or a message its recipient recognises as a repeat.
 */
export interface QueueStore {
  /** Adds a new queue; ids are random and assumed unique (a clash rejects with INTERNAL). */
  createQueue(q: Omit<QueueRecord, 'msgCount' | 'sndAuthKey' | 'suspended' | 'activeDay'>, now: number): Promise<void>;
  /** The queue with this recipient id. */
  queueByRecipient(rcvId: Uint8Array): Promise<QueueRecord | undefined>;
  /** The queue with this sender id. */
  queueBySender(sndId: Uint8Array): Promise<QueueRecord | undefined>;
  /**
   * The same two reads answered at once, by a store that can (an embedded database); throw
   * `StoreError`. A store that must wait (a database server) leaves them out. With them the key
   * check that follows the read runs in the turn that started its command (see turns.ts), and
   * counts against its budget.
   */
  queueByRecipientNow?(rcvId: Uint8Array): QueueRecord | undefined;
  queueBySenderNow?(sndId: Uint8Array): QueueRecord | undefined;
  /** Sets the sender key once; `'ok'` also when the same key is set again, `'conflict'` for another key. */
  secureQueue(rcvId: Uint8Array, sndAuthKey: Uint8Array, now: number): Promise<'ok' | 'conflict'>;
  /** Records that the queue was used today (for expiry of unused queues). */
  touchQueue(rcvId: Uint8Array, now: number): Promise<void>;
  /** Suspends a queue: SENDs are refused from now on. */
  suspendQueue(rcvId: Uint8Array): Promise<void>;
  /** Deletes a queue, its link data and all its messages. */
  deleteQueue(rcvId: Uint8Array): Promise<void>;
  /**
   * Appends a message unless the queue holds `quota` already (`'gone'`: the queue was deleted
   * or suspended meanwhile, so a caller may check the sender against a queue record it cached).
   * Resolves once the message is durable; `committed`, if given, is told the result as soon as
   * it is committed (and readable), before it is durable.
   */
  addMessage(rcvId: Uint8Array, msg: StoredMessage, quota: number, now: number, committed?: (r: 'ok' | 'quota' | 'gone') => void): Promise<'ok' | 'quota' | 'gone'>;
  /**
   * The oldest message of a queue, skipping messages whose deletion has been asked for. The
   * messages a store returns may be the ones it keeps: they are not to be changed.
   */
  oldestMessage(rcvId: Uint8Array): Promise<StoredMessage | undefined>;
  /**
   * Up to `limit` oldest messages of a queue, oldest first, skipping those being deleted (not to
   * be changed): the first whatever its size, the others only while their sealed bytes together
   * stay within `aheadBytes` (no bound if not given). A store reads no more than it returns where
   * it can: a read ahead of messages of 16 KB that are not returned costs more than the read.
   */
  oldestMessages(rcvId: Uint8Array, limit: number, aheadBytes?: number): Promise<StoredMessage[]>;
  /**
   * Deletes a message by id; false if the queue has no such message. Messages are acknowledged
   * oldest first, so a store should find the oldest one fast. From the call on, `oldestMessage`
   * no longer returns it, even before the deletion is durable. If the deletion fails (the
   * promise rejects), the store keeps trying it until it succeeds or the store closes, and the
   * message stays hidden meanwhile: the subscriber has been sent the next one.
   */
  deleteMessage(rcvId: Uint8Array, msgId: Uint8Array, now: number): Promise<boolean>;
  /**
   * Stores link data under `linkId` (empty data removes it); `'taken'` if another queue holds the
   * id, `'secured'` (nothing stored) if the queue has its sender key by the time of the write: a
   * secured queue has no link, even when a `KEY` lands just before an `LSET` read it unsecured.
   */
  setLink(rcvId: Uint8Array, linkId: Uint8Array, data: Uint8Array): Promise<'ok' | 'taken' | 'secured'>;
  /** The link data under `linkId`, with its queue's sender id. */
  linkData(linkId: Uint8Array): Promise<{ sndId: Uint8Array; data: Uint8Array } | undefined>;
  /**
   * Removes messages received before `messagesBefore` and queues unused since `queuesUnusedSince`,
   * telling `onRound` what each step deleted (a run that fails part way has done those steps).
   */
  expire(messagesBefore: number, queuesUnusedSince: number, onRound?: (r: ExpiryResult) => void): Promise<ExpiryResult>;
  /** Counts, for metrics. */
  stats(): Promise<{ queues: number; messages: number }>;
  /** Finishes pending writes and closes. A second call settles as the first, once it has. */
  close(): Promise<void>;
}

/** One day in milliseconds: queue activity is recorded at day granularity to save writes. */
export const DAY_MS = 86_400_000;

/** The day of a time in ms since the epoch (UTC days): activity is recorded at this grain. */
export function dayOf(ms: number): number {
  return Math.floor(ms / DAY_MS);
}
