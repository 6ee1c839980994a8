// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Relay counters and gauges, rendered in the Prometheus text format. Only counts: no label ever
 * holds an id, a key or an address.
 * @module
 */

/** Counters the relay keeps. */
export class RelayMetrics {
  connectionsOpen = 0;
  connectionsTotal = 0;
  connectionsRejected = 0;
  connectionsRejectedPerSource = 0;
  /** Connections closed before their handshake ended, to make room at the connection limit. */
  handshakesEvicted = 0;
  handshakeFailures = 0;
  blocksIn = 0;
  blocksOut = 0;
  queuesCreated = 0;
  messagesStored = 0;
  messagesDelivered = 0;
  messagesAcked = 0;
  messagesExpired = 0;
  queuesExpired = 0;
  subscriptions = 0;
  /** Commands being handled, over every connection. */
  commandsInFlight = 0;
  /** Commands received and waiting for their source's next turn, over every connection. */
  commandsWaiting = 0;
  /** Bytes of messages read ahead for subscriptions, and held for reads under way. */
  prefetchBytes = 0;
  /** Connections with more than OUTPUT_HIGH_BYTES waiting unsent: not read, and pushed nothing, until it has gone out. */
  connectionsBackedUp = 0;
  /** Bytes waiting unsent on backed-up connections, over all of them. */
  unsentBytes = 0;
  connectionsEvictedUnsent = 0;
  /** Subscriptions with a message to push, waiting for room on their connection. */
  pushesWaiting = 0;
  storeCommits = 0;
  /** 1 while the store takes writes; 0 from a failed sync until a checkpoint succeeds, and after a lost writeback of the database file until the relay starts again. */
  storeWritable = 1;
  storeSyncFailures = 0;
  storeRecoveries = 0;
  storeRetries = 0;
  /** Checkpoint passes run by the store's checkpoint thread, and those that failed (with failed syncs of the database file). */
  storeCheckpoints = 0;
  storeCheckpointFailures = 0;
  /** Whether the last checkpoint pass failed (its failure is logged once). */
  storeCheckpointFailing = false;
  readonly commands = new Map<string, number>();
  readonly errors = new Map<string, number>();

  /** Counts one command of a type. */
  command(type: string): void {
    this.commands.set(type, (this.commands.get(type) ?? 0) + 1);
  }

  /** Counts one error response of a code. */
  error(code: string): void {
    this.errors.set(code, (this.errors.get(code) ?? 0) + 1);
  }

  /** The Prometheus text exposition. */
  render(extra: Readonly<{ queues: number; messages: number; rssBytes: number }>): string {
    const lines: string[] = [];
    const metric = (name: string, type: 'counter' | 'gauge', help: string, value: number, labels = ''): void => {
      if (!lines.some((l) => l.startsWith(`# TYPE ${name} `))) {
        lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      }
      lines.push(`${name}${labels} ${value}`);
    };
    metric('murmure_connections_open', 'gauge', 'Open client connections.', this.connectionsOpen);
    metric('murmure_connections_total', 'counter', 'Client connections accepted.', this.connectionsTotal);
    metric('murmure_connections_rejected_total', 'counter', 'Connections refused at the connection limit.', this.connectionsRejected);
    metric('murmure_connections_rejected_per_source_total', 'counter', 'Connections refused at the per-source connection limit.', this.connectionsRejectedPerSource);
    metric('murmure_handshakes_evicted_total', 'counter', 'Connections closed before their handshake ended, to make room at the connection limit.', this.handshakesEvicted);
    metric('murmure_handshake_failures_total', 'counter', 'Connections closed before the handshake completed.', this.handshakeFailures);
    metric('murmure_blocks_in_total', 'counter', 'Blocks received.', this.blocksIn);
    metric('murmure_blocks_out_total', 'counter', 'Blocks sent.', this.blocksOut);
    metric('murmure_queues_created_total', 'counter', 'Queues created.', this.queuesCreated);
    metric('murmure_messages_stored_total', 'counter', 'Messages accepted and stored.', this.messagesStored);
    metric('murmure_messages_delivered_total', 'counter', 'Messages pushed or fetched.', this.messagesDelivered);
    metric('murmure_messages_acked_total', 'counter', 'Messages acknowledged and deleted.', this.messagesAcked);
    metric('murmure_messages_expired_total', 'counter', 'Messages deleted by expiry.', this.messagesExpired);
    metric('murmure_queues_expired_total', 'counter', 'Unused queues deleted by expiry.', this.queuesExpired);
    metric('murmure_subscriptions', 'gauge', 'Queues with a subscriber.', this.subscriptions);
    metric('murmure_commands_in_flight', 'gauge', 'Commands being handled, over every connection.', this.commandsInFlight);
    metric('murmure_commands_waiting', 'gauge', "Commands received and waiting for their source's next turn.", this.commandsWaiting);
    metric('murmure_connections_backed_up', 'gauge', 'Connections whose unsent blocks passed 256 KiB: not read, and pushed no message, until those have gone out.', this.connectionsBackedUp);
    metric('murmure_unsent_bytes', 'gauge', 'Bytes waiting unsent on backed-up connections, over all of them, as counted at their last write (at most unsentBudgetBytes).', this.unsentBytes);
    metric('murmure_connections_evicted_unsent_total', 'counter', 'Backed-up connections cut off because the unsent bytes of all of them passed unsentBudgetBytes (the one backed up longest first).', this.connectionsEvictedUnsent);
    metric('murmure_pushes_waiting', 'gauge', 'Subscriptions with a message to push, waiting until their connection has sent what it holds (a slow link).', this.pushesWaiting);
    metric('murmure_prefetch_bytes', 'gauge', 'Bytes of messages read ahead for subscriptions, and held for reads under way.', this.prefetchBytes);
    metric('murmure_store_commits_total', 'counter', 'Group commits of the store.', this.storeCommits);
    metric('murmure_store_writable', 'gauge', '1 while the store takes writes; 0 from a failed sync until a checkpoint succeeds, and after a lost writeback of the database file until the relay starts again.', this.storeWritable);
    metric('murmure_store_sync_failures_total', 'counter', 'Failed syncs of the store; writes are refused until a checkpoint succeeds.', this.storeSyncFailures);
    metric('murmure_store_recoveries_total', 'counter', 'Checkpoints that made the store take writes again after a failed sync.', this.storeRecoveries);
    metric('murmure_store_retries_total', 'counter', 'Store operations tried again after a failure (message reads for delivery, deletions after ACK).', this.storeRetries);
    metric('murmure_store_checkpoints_total', 'counter', 'Checkpoint passes run by the checkpoint thread (copies of the WAL into the database file).', this.storeCheckpoints);
    metric('murmure_store_checkpoint_failures_total', 'counter', 'Checkpoint passes that failed (tried again at the first commit a second or more later), and failed syncs of the database file (writes refused until the relay starts again).', this.storeCheckpointFailures);
    metric('murmure_queues', 'gauge', 'Queues in the store.', extra.queues);
    metric('murmure_messages', 'gauge', 'Undelivered messages in the store.', extra.messages);
    metric('murmure_process_rss_bytes', 'gauge', 'Resident memory of the relay process.', extra.rssBytes);
    for (const [type, n] of this.commands) metric('murmure_commands_total', 'counter', 'Commands received, by type.', n, `{command="${type}"}`);
    for (const [code, n] of this.errors) metric('murmure_errors_total', 'counter', 'Error responses, by code.', n, `{code="${code}"}`);
    return `${lines.join('\n')}\n`;
  }
}
