// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * A child-process driver of one agent home, for the fault tests that kill -9 an agent: it opens
 * the home's SQLCipher database (path from `--db`, hex key from `--key` or MURMURE_DRIVER_KEY)
 * and runs one mode, printing one line per fact on stdout (synchronous on a pipe, so a line is
 * out before a kill can hit).
 *
 *   invite  --relay R             make an invitation; prints `link L`, then `connected ID` once
 *                                 the contact joined and our reply went out, and exits.
 *   join    --relay R --link L --profile P
 *                                 join L with profile P; prints `connected ID` once the reply came.
 *   send    --count N [--from K] [--pause-every P --pause-ms MS]
 *                                 send messages `m:K`..`m:N` to the single contact. Prints
 *                                 `recovered NUM SEQ` for numbers already stored by an earlier run
 *                                 (read from the database, so nothing is composed twice), `ready K`,
 *                                 `stored NUM SEQ` as each send() resolves, `idle` and exits once
 *                                 the relay took everything. With --pause-every, waits MS ms after
 *                                 every P messages (the outbox sends what waits meanwhile as one
 *                                 batch), so that delivery takes a while.
 *   receive [--until N]           receive, storing each message in `driver_inbox` inside the
 *                                 agent's own transaction; prints `got SEQ TEXT`, `gap A B`,
 *                                 `bad-hash SEQ`, `problem CODE`. With --until, exits gracefully
 *                                 once the inbox holds N rows (after a short quiet time).
 *
 * SIGTERM stops the agent and closes the database; `error MESSAGE` and exit 1 on failure.
 * @module
 */

import { parseArgs } from 'node:util';

import { AGENT_MIGRATIONS, Agent, LocalDatabase, type IncomingEvent } from '@murmure/agent';

/** Tables the driver keeps in the home database, beside the agent's. */
export const DRIVER_TABLES = `
  CREATE TABLE IF NOT EXISTS driver_inbox (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, text TEXT NOT NULL);
  CREATE TABLE IF NOT EXISTS driver_events (id INTEGER PRIMARY KEY, type TEXT NOT NULL, a INTEGER NOT NULL, b INTEGER NOT NULL);
  CREATE TABLE IF NOT EXISTS driver_composed (num INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
`;

function out(line: string): void {
  process.stdout.write(`${line}\n`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    db: { type: 'string' },
    key: { type: 'string' },
    relay: { type: 'string' },
    link: { type: 'string' },
    profile: { type: 'string' },
    count: { type: 'string' },
    from: { type: 'string' },
    until: { type: 'string' },
    'pause-every': { type: 'string' },
    'pause-ms': { type: 'string' },
  },
});

function need(v: string | undefined, what: string): string {
  if (v === undefined || v === '') throw new Error(`missing ${what}`);
  return v;
}

const mode = positionals[0] ?? '';
const dbPath = need(values.db, '--db');
const keyHex = need(values.key ?? process.env['MURMURE_DRIVER_KEY'], '--key or MURMURE_DRIVER_KEY');
if (!/^[0-9a-f]{64}$/i.test(keyHex)) throw new Error('the key must be 64 hex digits');

const db = LocalDatabase.open(dbPath, new Uint8Array(Buffer.from(keyHex, 'hex')), AGENT_MIGRATIONS);
db.db.exec(DRIVER_TABLES);
const insertInbox = db.db.prepare('INSERT INTO driver_inbox (seq, text) VALUES (?, ?)');
const insertEvent = db.db.prepare('INSERT INTO driver_events (type, a, b) VALUES (?, ?, ?)');
const insertComposed = db.db.prepare('INSERT INTO driver_composed (num, seq) VALUES (?, ?)');
const countInbox = db.db.prepare('SELECT count(*) FROM driver_inbox', { pluck: true });

const decoder = new TextDecoder();
const profile = values.profile ?? '';

/** Records what the owner must keep, inside the agent's receive transaction. */
function record(ev: IncomingEvent): void {
  if (ev.type === 'message') insertInbox.run([ev.seq, decoder.decode(ev.payload)] as never);
  else if (ev.type === 'gap') insertEvent.run(['gap', ev.from, ev.to] as never);
  else if (ev.type === 'bad-hash') insertEvent.run(['bad-hash', ev.seq, ev.seq] as never);
}

const agent = new Agent({
  db,
  handler: {
    incoming: record,
    sent: () => undefined,
    connected: () => undefined,
    failed: (_c, seq) => insertEvent.run(['failed', seq, seq] as never),
    replyPayload: () => new TextEncoder().encode(profile),
  },
});
agent.on('event', (ev: IncomingEvent) => {
  if (ev.type === 'message') out(`got ${ev.seq} ${decoder.decode(ev.payload)}`);
  else if (ev.type === 'gap') out(`gap ${ev.from} ${ev.to}`);
  else if (ev.type === 'bad-hash') out(`bad-hash ${ev.seq}`);
  else if (ev.type === 'confirmation') out(`confirmation ${decoder.decode(ev.payload)}`);
});
agent.on('problem', (p: { code: string }) => out(`problem ${p.code}`));

let stopping = false;
async function finish(code: number): Promise<never> {
  if (!stopping) {
    stopping = true;
    await agent.stop();
    db.close();
  }
  process.exit(code);
}
process.on('SIGTERM', () => void finish(0));

async function until(f: () => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error('timed out');
    await sleep(10);
  }
}

function status(connId: string): string | undefined {
  return agent.connections().find((c) => c.id === connId)?.status;
}

async function main(): Promise<void> {
  agent.start();
  switch (mode) {
    case 'invite': {
      const { connId, link } = await agent.createInvitation(need(values.relay, '--relay'));
      out(`link ${link}`);
      await until(() => status(connId) === 'connected' && agent.idle());
      out(`connected ${connId}`);
      return finish(0);
    }
    case 'join': {
      const connId = await agent.join(need(values.link, '--link'), need(values.relay, '--relay'), new TextEncoder().encode(profile));
      await until(() => status(connId) === 'connected' && agent.idle());
      out(`connected ${connId}`);
      return finish(0);
    }
    case 'send': {
      const count = Number(need(values.count, '--count'));
      const contacts = agent.connections().filter((c) => c.status === 'connected');
      if (contacts.length !== 1) throw new Error(`expected one connected contact, found ${contacts.length}`);
      const connId = contacts[0]!.id;
      const from = Number(values.from ?? '1');
      // Numbers stored by an earlier run whose `stored` line may never have been printed.
      const rows = db.db.prepare('SELECT num, seq FROM driver_composed WHERE num >= ? ORDER BY num').all([from] as never) as { num: number; seq: number }[];
      for (const r of rows) out(`recovered ${r.num} ${r.seq}`);
      const next = Math.max(from, ...rows.map((r) => r.num + 1));
      const pauseEvery = Number(values['pause-every'] ?? '0');
      const pauseMs = Number(values['pause-ms'] ?? '0');
      out(`ready ${next}`);
      for (let num = next; num <= count; num++) {
        const seq = await agent.send(connId, new TextEncoder().encode(`m:${num}`), (s) => insertComposed.run([num, s] as never));
        out(`stored ${num} ${seq}`);
        // send() resolves without touching the event loop; yield so the outbox sends meanwhile.
        if (pauseEvery > 0 && (num - next + 1) % pauseEvery === 0) await sleep(pauseMs);
        else await new Promise((r) => setImmediate(r));
      }
      await until(() => agent.idle(), 60_000);
      out('idle');
      return finish(0);
    }
    case 'receive': {
      out('ready');
      if (values.until === undefined) {
        setInterval(() => undefined, 1 << 30); // runs until SIGTERM or kill, even with no relay to talk to
        return;
      }
      const n = Number(values.until);
      await until(() => Number(countInbox.get()) >= n, 120_000);
      await sleep(300); // anything shown twice would show now
      out(`complete ${Number(countInbox.get())}`);
      return finish(0);
    }
    default:
      throw new Error(`unknown mode ${JSON.stringify(mode)}`);
  }
}

main().catch((e: unknown) => {
  out(`error ${e instanceof Error ? e.message : String(e)}`);
  void finish(1);
});
