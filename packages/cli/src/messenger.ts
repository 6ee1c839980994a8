// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The messaging commands of `murmure`: init, invite, connect, sync, contacts, send, messages,
 * verify, delete-contact, receipts, passphrase change. Global options (--home, --json,
 * --profile) may stand before or after the command. With --json every result is one JSON object
 * per line on stdout, and errors are `{"error": {"code", "message"}}` with a non-zero exit.
 * @module
 */

import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

import { Chat, ChatError, parseSocks5Proxy, type ChatEvent, type ContactView, type MessageView, type Socks5Proxy } from '@murmure/chat';
import QRCode from 'qrcode';

import { runChatTui, sanitizeLine, sanitizeText } from './tui.js';

/** Where output goes. */
export type Out = { write(s: string): unknown; isTTY?: boolean };

/** A usage error: exit code 2. */
export class UsageError extends Error {}

/** Default quiet time before `sync` exits when relays report nothing pending. */
export const SYNC_SETTLE_MS = 700;
/** Longest `sync` waits for unreachable relays before it exits anyway. */
export const SYNC_MAX_CONNECT_MS = 15_000;

const OPTIONS = {
  home: { type: 'string' },
  json: { type: 'boolean' },
  profile: { type: 'string' },
  socks5: { type: 'string' },
  name: { type: 'string' },
  relay: { type: 'string' },
  address: { type: 'boolean' },
  incognito: { type: 'boolean' },
  wait: { type: 'string' },
  limit: { type: 'string' },
  mark: { type: 'boolean' },
  on: { type: 'boolean' },
  off: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** The commands this module runs. */
export const MESSENGER_COMMANDS = ['init', 'invite', 'connect', 'sync', 'contacts', 'send', 'messages', 'verify', 'delete-contact', 'receipts', 'switch', 'passphrase', 'chat'] as const;

type Ctx = Readonly<{ out: Out; err: Out; json: boolean; home: string; profile: string | undefined; socks5?: Socks5Proxy | undefined }>;

/** The SOCKS5 proxy from --socks5 HOST:PORT or MURMURE_SOCKS5 (e.g. Tor's 127.0.0.1:9050). */
function socks5Option(value: string | undefined): Socks5Proxy | undefined {
  const text = value ?? process.env['MURMURE_SOCKS5'];
  if (text === undefined || text === '') return undefined;
  try {
    return parseSocks5Proxy(text);
  } catch (e) {
    throw new UsageError(e instanceof Error ? e.message : 'bad --socks5');
  }
}

function parse(argv: readonly string[]) {
  try {
    return parseArgs({ args: [...argv], options: OPTIONS, strict: true, allowPositionals: true });
  } catch (e) {
    throw new UsageError(e instanceof Error ? (e.message.split('\n')[0] ?? 'bad options') : 'bad options');
  }
}

/** Reads the passphrase from MURMURE_PASSPHRASE or asks for it on the terminal (twice with `confirm`). */
async function passphrase(prompt: string, confirm = false): Promise<string> {
  const env = process.env['MURMURE_PASSPHRASE'];
  if (env !== undefined && env.length > 0) return env;
  if (!process.stdin.isTTY) throw new UsageError('set MURMURE_PASSPHRASE or run in a terminal to type the passphrase');
  const typed = confirm ? await askTwice(prompt) : await ask(prompt);
  if (typed.length === 0) throw new UsageError('the passphrase is empty');
  return typed;
}

async function askTwice(prompt: string): Promise<string> {
  const first = await ask(prompt);
  if ((await ask('Repeat it: ')) !== first) throw new UsageError('the passphrases differ');
  return first;
}

function ask(prompt: string): Promise<string> {
  return new Promise((resolveAsk) => {
    const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true });
    const rlOut = rl as unknown as { _writeToOutput: (s: string) => void; output: NodeJS.WritableStream };
    rlOut._writeToOutput = (s: string) => {
      if (s.startsWith(prompt)) rlOut.output.write(prompt);
    };
    rl.question(prompt, (answer) => {
      rl.close();
      process.stderr.write('\n');
      resolveAsk(answer);
    });
  });
}

function print(ctx: Ctx, obj: Record<string, unknown>, text: string): void {
  ctx.out.write(ctx.json ? `${JSON.stringify(obj)}\n` : `${text}\n`);
}

function time(ms: number): string {
  return new Date(ms).toISOString().replace('T', ' ').slice(0, 19);
}

const MARK: Record<MessageView['status'], string> = { queued: '…', sent: '✓', delivered: '✓✓', received: '', failed: '✗' };

function messageLine(m: MessageView): string {
  if (m.kind === 'identity') return `${time(m.receivedAt ?? m.sentAt)}  !!! ${sanitizeLine(m.contact)}: ${sanitizeText(m.text)} !!!`;
  if (m.kind !== 'text') return `${time(m.receivedAt ?? m.sentAt)}  ! ${sanitizeLine(m.contact)}: ${sanitizeText(m.text)}`;
  const who = m.direction === 'out' ? 'you' : sanitizeLine(m.contact);
  return `${time(m.sentAt)}  ${who}: ${sanitizeText(m.text)}${m.direction === 'out' ? ` ${MARK[m.status]}` : ''}`;
}

function messageJson(m: MessageView): Record<string, unknown> {
  return { type: 'message', id: m.id, contact: m.contact, contactId: m.contactId, direction: m.direction, kind: m.kind, text: m.text, sentAt: m.sentAt, receivedAt: m.receivedAt, status: m.status };
}

function contactJson(c: ContactView): Record<string, unknown> {
  return { type: 'contact', id: c.id, name: c.name, status: c.status, incognito: c.incognito, verified: c.verified, receipts: c.receipts };
}

async function openChat(ctx: Ctx, create = false): Promise<Chat> {
  return Chat.open({ home: ctx.home, passphrase: await passphrase('Passphrase: ', create), create, ...(ctx.socks5 === undefined ? {} : { socks5: ctx.socks5 }) });
}

async function withChat<T>(ctx: Ctx, f: (chat: Chat) => Promise<T> | T): Promise<T> {
  const chat = await openChat(ctx);
  try {
    return await f(chat);
  } finally {
    await chat.close();
  }
}

async function qr(ctx: Ctx, text: string): Promise<void> {
  if (ctx.json || ctx.out.isTTY !== true) return;
  ctx.out.write(await QRCode.toString(text, { type: 'terminal', small: true }));
}

/** Runs a messaging command; resolves with the exit code. */
export async function runMessenger(argv: readonly string[], out: Out, err: Out): Promise<number> {
  const { values, positionals } = parse(argv);
  const json = values.json === true;
  const homeOpt = values.home ?? process.env['MURMURE_HOME'] ?? join(homedir(), '.murmure');
  const ctx: Ctx = { out, err, json, home: resolve(homeOpt), profile: values.profile, socks5: socks5Option(values.socks5) };
  const [cmd, ...args] = positionals;
  const need = (n: number, usage: string) => {
    if (args.length !== n) throw new UsageError(`usage: murmure ${usage}`);
  };
  switch (cmd) {
    case 'init': {
      if (typeof values.name !== 'string' || typeof values.relay !== 'string') throw new UsageError('usage: murmure init --name NAME --relay ADDRESS');
      need(0, 'init --name NAME --relay ADDRESS');
      const chat = await openChat(ctx, true);
      try {
        const p = chat.createProfile(values.name, values.relay);
        print(ctx, { type: 'profile', id: p.id, name: p.name, relay: p.relay, home: ctx.home }, `Profile '${p.name}' created in ${ctx.home}.`);
      } finally {
        await chat.close();
      }
      return 0;
    }
    case 'invite':
      need(0, 'invite [--address] [--incognito]');
      return withChat(ctx, async (chat) => {
        const link = await chat.invite(ctx.profile, { address: values.address === true, incognito: values.incognito === true });
        print(ctx, { type: 'invitation', link, address: values.address === true }, link);
        await qr(ctx, link);
        return 0;
      });
    case 'connect':
      need(1, 'connect LINK [--incognito]');
      return withChat(ctx, async (chat) => {
        const c = await chat.connect(ctx.profile, args[0]!, { incognito: values.incognito === true });
        print(ctx, contactJson(c), `Connecting (contact ${c.id.slice(0, 8)}${c.incognito === null ? '' : `, shown to them as '${c.incognito}'`}). Run 'murmure sync' to finish.`);
        return 0;
      });
    case 'sync':
      need(0, 'sync [--wait SECONDS]');
      return withChat(ctx, (chat) => sync(ctx, chat, values.wait));
    case 'contacts':
      need(0, 'contacts');
      return withChat(ctx, (chat) => {
        for (const c of chat.contacts(ctx.profile)) {
          print(ctx, contactJson(c), `${c.id.slice(0, 8)}  ${c.name}  [${c.status}]${c.verified ? ' verified' : ''}${c.incognito === null ? '' : ` (incognito as '${c.incognito}')`}`);
        }
        return 0;
      });
    case 'send':
      need(2, 'send CONTACT TEXT');
      return withChat(ctx, async (chat) => {
        const m = await chat.send(ctx.profile, args[0]!, args[1]!);
        print(ctx, messageJson(m), `Queued for ${m.contact}. Run 'murmure sync' to deliver it.`);
        return 0;
      });
    case 'messages': {
      need(1, 'messages CONTACT [--limit N]');
      const limit = values.limit === undefined ? 50 : Number(values.limit);
      if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new UsageError('--limit must be a whole number from 1 to 10000');
      return withChat(ctx, (chat) => {
        for (const m of chat.messages(ctx.profile, args[0]!, limit)) print(ctx, messageJson(m), messageLine(m));
        return 0;
      });
    }
    case 'verify':
      need(1, 'verify CONTACT [--mark]');
      return withChat(ctx, async (chat) => {
        const v = chat.verify(ctx.profile, args[0]!, values.mark === true);
        const grouped = v.digits.match(/.{5}/g)?.join(' ') ?? v.digits;
        print(ctx, { type: 'safety-number', contact: args[0], digits: v.digits, verified: v.verified }, `Safety number with ${args[0]}:\n${grouped}\n${v.verified ? 'Marked as verified.' : "Compare it with your contact's, then run: murmure verify CONTACT --mark"}`);
        await qr(ctx, Buffer.from(v.scannable).toString('base64'));
        return 0;
      });
    case 'delete-contact':
      need(1, 'delete-contact CONTACT');
      return withChat(ctx, async (chat) => {
        await chat.deleteContact(ctx.profile, args[0]!);
        print(ctx, { type: 'deleted', contact: args[0] }, `Deleted ${args[0]}.`);
        return 0;
      });
    case 'switch':
      need(1, 'switch CONTACT [--relay ADDRESS]');
      return withChat(ctx, async (chat) => {
        const r = await chat.switchQueue(ctx.profile, args[0]!, values.relay);
        print(ctx, { type: 'switch', contact: r.contact.name, contactId: r.contact.id, relay: r.relay }, `Moving ${sanitizeLine(r.contact.name)} to a new queue on ${r.relay}. Run 'murmure sync' to finish.`);
        return 0;
      });
    case 'set-relay':
      need(1, 'set-relay ADDRESS');
      return withChat(ctx, (chat) => {
        const p = chat.setProfileRelay(ctx.profile, args[0]!);
        print(ctx, { type: 'profile', id: p.id, name: p.name, relay: p.relay }, `Profile '${p.name}' makes its new queues on ${p.relay}.`);
        return 0;
      });
    case 'receipts': {
      need(1, 'receipts CONTACT --on|--off');
      if ((values.on === true) === (values.off === true)) throw new UsageError('usage: murmure receipts CONTACT --on|--off');
      return withChat(ctx, (chat) => {
        chat.setReceipts(ctx.profile, args[0]!, values.on === true);
        print(ctx, { type: 'receipts', contact: args[0], on: values.on === true }, `Delivery receipts to ${args[0]} ${values.on === true ? 'on' : 'off'}.`);
        return 0;
      });
    }
    case 'passphrase': {
      if (args[0] !== 'change' || args.length !== 1) throw new UsageError('usage: murmure passphrase change');
      const old = await passphrase('Current passphrase: ');
      // The new passphrase never comes from MURMURE_PASSPHRASE, which holds the current one.
      const next = process.env['MURMURE_NEW_PASSPHRASE'] ?? (process.stdin.isTTY ? await askTwice('New passphrase: ') : undefined);
      if (next === undefined) throw new UsageError('set MURMURE_NEW_PASSPHRASE or run in a terminal to type the new passphrase');
      if (next.length === 0) throw new UsageError('the new passphrase is empty');
      Chat.changePassphrase(ctx.home, old, next);
      print(ctx, { type: 'passphrase-changed' }, 'Passphrase changed.');
      return 0;
    }
    case 'chat':
      need(0, 'chat');
      if (ctx.json) throw new UsageError("'murmure chat' is interactive and has no --json output");
      if (process.stdin.isTTY !== true || process.stdout.isTTY !== true) throw new UsageError("'murmure chat' needs a terminal on stdin and stdout (use 'murmure sync', 'send' and 'messages' in scripts)");
      return withChat(ctx, (chat) => runChatTui(chat, ctx.profile, { input: process.stdin, output: process.stdout }));
    default:
      throw new UsageError(`unknown command '${cmd ?? ''}' (see murmure --help)`);
  }
}

/** Goes online, prints events, and exits once quiet. */
async function sync(ctx: Ctx, chat: Chat, wait: string | undefined): Promise<number> {
  let waitMs: number | null = null;
  if (wait !== undefined) {
    const n = Number(wait);
    if (!Number.isFinite(n) || n < 0 || n > 86_400) throw new UsageError('--wait must be a number of seconds from 0 to 86400');
    waitMs = n * 1000;
  }
  let lastEvent = Date.now();
  chat.on('event', (ev: ChatEvent) => {
    lastEvent = Date.now();
    printEvent(ctx, ev);
  });
  chat.start();
  const unreachable = await chat.agent.online(SYNC_MAX_CONNECT_MS);
  if (unreachable.length > 0) {
    print(ctx, { type: 'problem', message: `${unreachable.length} relay(s) could not be reached; messages for them wait` }, `${unreachable.length} relay(s) could not be reached; messages for them wait for the next sync.`);
  }
  lastEvent = Math.max(lastEvent, Date.now());
  const quiet = waitMs ?? SYNC_SETTLE_MS;
  for (;;) {
    await new Promise((r) => setTimeout(r, 100));
    const settled = Date.now() - lastEvent >= quiet;
    if (settled && (waitMs !== null || chat.idle() || unreachable.length > 0)) break;
  }
  return 0;
}

function printEvent(ctx: Ctx, ev: ChatEvent): void {
  switch (ev.type) {
    case 'message':
      print(ctx, messageJson(ev), messageLine(ev));
      return;
    case 'connected':
      print(ctx, { type: 'connected', contact: ev.contact, contactId: ev.contactId }, `Connected with ${ev.contact}.`);
      return;
    case 'sent':
      print(ctx, { type: 'sent', contact: ev.contact, contactId: ev.contactId, id: ev.id }, `Sent message ${ev.id} to ${ev.contact}.`);
      return;
    case 'delivered':
      print(ctx, { type: 'delivered', contact: ev.contact, contactId: ev.contactId, ids: ev.ids }, `Delivered to ${ev.contact}: ${ev.ids.join(', ')}.`);
      return;
    case 'missing':
      print(ctx, { type: 'missing', contact: ev.contact, contactId: ev.contactId, from: ev.from, to: ev.to }, `${ev.to - ev.from + 1} message(s) from ${ev.contact} are missing.`);
      return;
    case 'problem':
      print(ctx, { type: 'problem', contact: ev.contact, message: ev.message }, `Problem${ev.contact === null ? '' : ` with ${ev.contact}`}: ${ev.message}.`);
      return;
    case 'identity-changed':
      print(
        ctx,
        { type: 'identity-changed', contact: ev.contact, contactId: ev.contactId },
        `!!! WARNING: the safety number with ${sanitizeLine(ev.contact)} has CHANGED (their identity key is new). They are no longer verified: compare the new number with them (murmure verify ${sanitizeLine(ev.contact)}) before you trust this conversation. !!!`,
      );
      return;
    case 'resync':
      print(ctx, { type: 'resync', contact: ev.contact, contactId: ev.contactId, restored: ev.restored }, `The secure session with ${sanitizeLine(ev.contact)} was reset${RESYNC_TEXT[ev.restored]}.`);
      return;
  }
}

const RESYNC_TEXT = {
  contact: ': they restored an old backup, so some messages may be missing or out of order',
  self: ': this device was restored from an old backup, so messages sent from it since then did not reach them',
  unknown: ' after messages could not be decrypted; some may be missing',
} as const;

/** Maps a thrown error to a code and message for the user (no stack traces). */
export function describeError(e: unknown): { code: string; message: string; usage: boolean } {
  if (e instanceof UsageError) return { code: 'USAGE', message: e.message, usage: true };
  if (ChatError.is(e, 'RELAY_PASSWORD')) return { code: e.code, message: `${e.message}; then give it with 'murmure set-relay ADDRESS'`, usage: false };
  if (e instanceof ChatError) return { code: e.code, message: e.message, usage: false };
  return { code: 'FAILED', message: e instanceof Error ? e.message : String(e), usage: false };
}
