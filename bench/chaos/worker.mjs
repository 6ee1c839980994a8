// SPDX-License-Identifier: AGPL-3.0-or-later
// A client process of `bench/chaos-bench.mjs`: it hosts some Murmure homes (one per person, each
// its own SQLCipher database unlocked with MURMURE_PASSPHRASE, through the chat API the CLI
// uses) and runs them as the orchestrator asks over the IPC channel. It may be killed with
// SIGKILL at any moment; started again on the same folders, it reopens the homes and carries on
// from what they stored.
//
// What the people saw is written to `show.log` of the worker with a synchronous write, line by
// line, so a line is on file before a kill can hit (a killed process loses no written line):
//   show PAIR NUM TIME live    the chat emitted the message (a live conversation shows it)
//   show PAIR NUM TIME open    the message was in the stored conversation when the home opened
//   dup PAIR NUM TIME          the chat emitted a message that was already shown
//   ooo PAIR NUM TIME          the chat emitted a message older than one it showed before
//   sent PAIR NUM TIME         send() resolved: the message is committed to the sender's home
//   event KIND PAIR TIME TEXT  missing messages, session resets, problems, send errors
// The stored conversations themselves are read at the end (`report`).
import { mkdirSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';

import { Chat } from '@murmure/chat';

const passphrase = process.env.MURMURE_PASSPHRASE ?? '';
if (passphrase === '') throw new Error('MURMURE_PASSPHRASE is not set');

/** Text of message NUM of pair PAIR, and back. */
export const textOf = (pair, num) => `p${pair} m${num}`;
const TEXT_RE = /^p(\d+) m(\d+)$/;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let cfg = null;
let logFd = -1;
/** Homes by `${role}${pair}`: { role, pair, chat, contactId, known: Set<num>, lastShown, lastSent } */
const homes = new Map();
let sending = false;
let stopping = false;

function log(line) {
  writeSync(logFd, `${line}\n`);
}

function send(msg) {
  if (process.connected) process.send(msg);
}

function contactOf(h) {
  if (h.contactId !== null) return h.contactId;
  const c = h.chat.contacts()[0];
  if (c !== undefined) h.contactId = c.id;
  return h.contactId;
}

/** Every stored message of a home's conversation, in the order the chat shows them. */
function conversation(h) {
  const id = contactOf(h);
  if (id === null) return [];
  return h.chat.messages(undefined, id, 1_000_000);
}

function onEvent(h, ev) {
  const now = Date.now();
  switch (ev.type) {
    case 'message': {
      const m = TEXT_RE.exec(ev.text);
      if (ev.kind !== 'text' || m === null || Number(m[1]) !== h.pair) {
        log(`event strange ${h.pair} ${now} ${JSON.stringify(`${ev.kind}: ${ev.text}`)}`);
        return;
      }
      const num = Number(m[2]);
      if (h.known.has(num)) {
        log(`dup ${h.pair} ${num} ${now}`);
        return;
      }
      h.known.add(num);
      log(`show ${h.pair} ${num} ${now} live`);
      if (num < h.lastShown) log(`ooo ${h.pair} ${num} ${now}`);
      h.lastShown = Math.max(h.lastShown, num);
      return;
    }
    case 'missing':
      log(`event missing ${h.pair} ${now} ${JSON.stringify(`${ev.from}-${ev.to}`)}`);
      return;
    case 'resync':
    case 'identity-changed':
      log(`event ${ev.type} ${h.pair} ${now} ${JSON.stringify(ev.restored ?? '')}`);
      return;
    case 'problem':
      log(`event problem ${h.pair} ${now} ${JSON.stringify(ev.message)}`);
      return;
    default:
      return;
  }
}

/** Opens (or creates) every home of this worker and starts its agent. */
function openHomes() {
  const t0 = performance.now();
  let openMs = 0;
  for (const { role, pair } of cfg.homes) {
    const home = join(cfg.dir, `${role}-${pair}`);
    const o0 = performance.now();
    const chat = Chat.open({ home, passphrase, create: cfg.create });
    openMs += performance.now() - o0;
    if (cfg.create && chat.profiles().length === 0) chat.createProfile(`${role}${pair}`, cfg.relay);
    const h = { role, pair, chat, contactId: null, known: new Set(), lastShown: 0, lastSent: 0 };
    homes.set(`${role}${pair}`, h);
    const now = Date.now();
    for (const m of conversation(h)) {
      const t = TEXT_RE.exec(m.text);
      if (m.kind !== 'text' || t === null) continue;
      const num = Number(t[2]);
      if (m.direction === 'in') {
        h.known.add(num);
        h.lastShown = Math.max(h.lastShown, num);
        log(`show ${pair} ${num} ${now} open`);
      } else {
        h.lastSent = Math.max(h.lastSent, num);
      }
    }
    chat.on('event', (ev) => onEvent(h, ev));
    chat.start();
  }
  const cpu = process.cpuUsage();
  return { openMs: Math.round(openMs), totalMs: Math.round(performance.now() - t0), homes: homes.size, cpuMs: Math.round((cpu.user + cpu.system) / 1000) };
}

function connected(h) {
  const c = h.chat.contacts()[0];
  return c !== undefined && c.status === 'connected' && h.chat.idle();
}

async function sendLoop(h, messages, intervalMs, startAt) {
  // The first run keeps the schedule (each pair its own phase); a restarted sender resumes at
  // the same pace from the next number, as a person back online would.
  let num = h.lastSent + 1;
  let at = h.lastSent === 0 ? startAt + ((h.pair * 0.618034) % 1) * intervalMs : Date.now() + Math.random() * intervalMs;
  while (num <= messages && !stopping) {
    const wait = at - Date.now();
    if (wait > 0) await sleep(wait);
    if (stopping) return;
    try {
      await h.chat.send(undefined, h.contactId, textOf(h.pair, num));
    } catch (e) {
      log(`event send-error ${h.pair} ${Date.now()} ${JSON.stringify(e instanceof Error ? e.message : String(e))}`);
      at = Date.now() + 1000;
      continue;
    }
    log(`sent ${h.pair} ${num} ${Date.now()}`);
    h.lastSent = num;
    num++;
    at = Math.max(at + intervalMs, Date.now());
  }
}

function progress() {
  const sent = {};
  const shown = {};
  for (const h of homes.values()) {
    if (h.role === 's') sent[h.pair] = h.lastSent;
    else shown[h.pair] = h.known.size;
  }
  const cpu = process.cpuUsage();
  send({ type: 'progress', sent, shown, cpuMs: Math.round((cpu.user + cpu.system) / 1000), rssMb: Math.round(process.memoryUsage.rss() / 1048576) });
}

async function handle(msg) {
  switch (msg.cmd) {
    case 'open': {
      cfg = msg;
      mkdirSync(cfg.dir, { recursive: true });
      logFd = openSync(join(cfg.dir, `show-${cfg.index}.log`), 'a');
      const r = openHomes();
      setInterval(progress, 1000).unref();
      send({ type: 'opened', ...r });
      progress();
      return;
    }
    case 'invite': {
      const links = {};
      await Promise.all(
        [...homes.values()]
          .filter((h) => h.role === 'r')
          .map(async (h) => {
            links[h.pair] = await h.chat.invite(undefined);
          }),
      );
      send({ type: 'links', links });
      return;
    }
    case 'join': {
      await Promise.all(
        Object.entries(msg.links).map(async ([pair, link]) => {
          const h = homes.get(`s${pair}`);
          h.contactId = (await h.chat.connect(undefined, link)).id;
        }),
      );
      send({ type: 'joined' });
      return;
    }
    case 'await-connected': {
      for (;;) {
        const waiting = [...homes.values()].filter((h) => !connected(h)).length;
        if (waiting === 0) break;
        await sleep(100);
      }
      for (const h of homes.values()) contactOf(h);
      send({ type: 'connected' });
      return;
    }
    case 'send': {
      if (sending) return;
      sending = true;
      for (const h of homes.values()) if (h.role === 's') void sendLoop(h, msg.messages, msg.intervalMs, msg.startAt);
      return;
    }
    case 'report': {
      const receivers = {};
      const senders = {};
      for (const h of homes.values()) {
        const rows = conversation(h).map((m) => ({ d: m.direction, k: m.kind, seq: m.seq, text: m.text, sentAt: m.sentAt, relayAt: m.receivedAt, status: m.status }));
        if (h.role === 'r') receivers[h.pair] = rows.filter((r) => r.d === 'in');
        else senders[h.pair] = rows.filter((r) => r.d === 'out');
      }
      send({ type: 'report', receivers, senders, idle: [...homes.values()].every((h) => h.chat.idle()) });
      return;
    }
    case 'stop': {
      stopping = true;
      for (const h of homes.values()) await h.chat.close();
      send({ type: 'stopped' });
      process.disconnect();
      process.exit(0);
    }
  }
}

process.on('message', (msg) => {
  handle(msg).catch((e) => {
    send({ type: 'error', message: e instanceof Error ? (e.stack ?? e.message) : String(e) });
  });
});
process.on('disconnect', () => {
  // The orchestrator is gone: nothing more to do.
  if (!stopping) process.exit(3);
});
