// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * `murmure chat`: a full-screen terminal chat driven by the keyboard alone. Contacts on the
 * left, the conversation on the right, an input line and a status bar at the bottom. Built on
 * node:readline keypress events, raw mode and ANSI escape sequences; no other dependency.
 *
 * The rendering and key handling are pure functions of a {@link TuiState} (renderScreen,
 * paintScreen, cursorPosition, handleKey) so they can be tested without a terminal;
 * {@link runChatTui} is the thin shell that owns the terminal and the ChatEvents. Every string
 * that reaches the screen passes through sanitizeLine/sanitizeText during layout, so a contact
 * cannot inject escape or control sequences through a name or a message.
 * @module
 */

import { emitKeypressEvents, type Key } from 'node:readline';

import { MAX_TEXT_LENGTH, type Chat, type ChatEvent, type ContactView, type MessageView } from '@murmure/chat';

/** A contact as the chat screen shows it. */
export type TuiContact = Readonly<{ id: string; name: string; status: ContactView['status']; unread: number }>;

/** A message as the chat screen shows it (a MessageView fits). */
export type TuiMessage = Readonly<Pick<MessageView, 'id' | 'contact' | 'direction' | 'kind' | 'text' | 'sentAt' | 'receivedAt' | 'status'>>;

/** Whether the relays in use are reachable. */
export type Connection = 'connecting' | 'online' | 'offline';

/** Everything the screen shows. */
export type TuiState = {
  /** The profile's name. */
  profile: string;
  connection: Connection;
  contacts: TuiContact[];
  /** Index into `contacts`, or -1 when there are none. */
  selected: number;
  /** The selected contact's conversation, oldest first. */
  messages: TuiMessage[];
  input: string;
  /** Cursor position in the input, in code points. */
  cursor: number;
  /** Conversation lines scrolled up from the bottom. */
  scroll: number;
  /** A one-line notice shown in the status bar until the next key. */
  notice: string | null;
  /** Esc was pressed: q now quits. */
  quitPending: boolean;
};

/** The state before anything is loaded. */
export function initialState(profile: string): TuiState {
  return { profile, connection: 'connecting', contacts: [], selected: -1, messages: [], input: '', cursor: 0, scroll: 0, notice: null, quitPending: false };
}

// Text: sanitising, measuring, fitting and wrapping.

/**
 * One line of untrusted text made safe for the terminal: line breaks and tabs become spaces;
 * control characters (C0, DEL, C1, so ESC and CSI) and format characters (bidi overrides,
 * zero-width characters) are removed; lone surrogates become U+FFFD.
 */
export function sanitizeLine(s: string): string {
  return s
    .replace(/[\t\n\r\u2028\u2029]/g, ' ')
    .replace(/[\p{Cc}\p{Cf}]/gu, '')
    .replace(/\p{Cs}/gu, '\ufffd');
}

/** Like {@link sanitizeLine} but keeps line breaks (as `\n`) and turns tabs into spaces. */
export function sanitizeText(s: string): string {
  return s
    .replace(/\r\n?|[\u2028\u2029]/g, '\n')
    .replace(/\t/g, '    ')
    .replace(/(?!\n)[\p{Cc}\p{Cf}]/gu, '')
    .replace(/\p{Cs}/gu, '\ufffd');
}

const WIDE_RANGES: ReadonlyArray<readonly [number, number]> = [
  [0x1100, 0x115f], [0x2e80, 0x303e], [0x3041, 0x33ff], [0x3400, 0x4dbf], [0x4e00, 0x9fff],
  [0xa000, 0xa4cf], [0xa960, 0xa97f], [0xac00, 0xd7a3], [0xf900, 0xfaff], [0xfe10, 0xfe19],
  [0xfe30, 0xfe6f], [0xff00, 0xff60], [0xffe0, 0xffe6], [0x20000, 0x2fffd], [0x30000, 0x3fffd],
];
const ZERO_WIDTH = /^[\p{Mn}\p{Me}\p{Cf}\p{Cc}]$/u;
const EMOJI = /^\p{Emoji_Presentation}$/u;

/** Terminal columns one code point takes: 0 (combining, control), 1, or 2 (East Asian wide, emoji). */
export function charWidth(ch: string): number {
  const cp = ch.codePointAt(0) ?? 0;
  if (cp >= 0x20 && cp < 0x7f) return 1;
  if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0)) return 0;
  if (cp < 0x300) return 1;
  if (ZERO_WIDTH.test(ch)) return 0;
  if (EMOJI.test(ch)) return 2;
  for (const [lo, hi] of WIDE_RANGES) if (cp >= lo && cp <= hi) return 2;
  return 1;
}

/** Terminal columns a string takes (characters, not bytes or UTF-16 units). */
export function displayWidth(s: string): number {
  let w = 0;
  for (const ch of s) w += charWidth(ch);
  return w;
}

/** Exactly `width` columns: padded with spaces, or cut with an ellipsis (or cut bare if `bare`). */
export function fit(s: string, width: number, bare = false): string {
  if (width <= 0) return '';
  const total = displayWidth(s);
  if (total <= width) return s + ' '.repeat(width - total);
  const room = bare ? width : width - 1;
  let out = '';
  let used = 0;
  for (const ch of s) {
    const w = charWidth(ch);
    if (used + w > room) break;
    out += ch;
    used += w;
  }
  return out + (bare ? '' : '…') + ' '.repeat(room - used);
}

/**
 * Word-wraps text to `width` columns (`restWidth` for the continuation lines of each
 * paragraph); words longer than a line are cut. `\n` starts a new paragraph.
 */
export function wrap(text: string, width: number, restWidth = width): string[] {
  const out: string[] = [];
  for (const para of text.split('\n')) {
    const paraStart = out.length;
    const limit = () => Math.max(1, out.length === paraStart ? width : restWidth);
    let line: string[] = [];
    let lw = 0;
    let lastSpace = -1;
    for (const ch of para) {
      const cw = charWidth(ch);
      while (lw + cw > limit() && line.length > 0) {
        if (lastSpace > 0 && ch !== ' ') {
          out.push(line.slice(0, lastSpace).join(''));
          line = line.slice(lastSpace + 1);
        } else {
          out.push(line.join(''));
          line = [];
        }
        lw = displayWidth(line.join(''));
        lastSpace = -1;
      }
      if (ch === ' ' && line.length === 0 && out.length > paraStart) continue;
      line.push(ch);
      lw += cw;
      if (ch === ' ') lastSpace = line.length - 1;
    }
    out.push(line.join(''));
  }
  return out;
}

// Layout.

/** Delivery marks of outgoing messages. */
export const DELIVERY_MARK: Readonly<Record<MessageView['status'], string>> = { queued: '…', sent: '✓', delivered: '✓✓', received: '', failed: '✗' };

/** The key help shown in the status bar. */
export const HELP = 'Tab/Ctrl-↑↓ contact · Enter send · PgUp/PgDn scroll · Esc q quit';

/** Smallest usable terminal. */
export const MIN_COLS = 20;
export const MIN_ROWS = 6;

type Style = 'plain' | 'bold' | 'dim' | 'reverse' | 'notice';
type Segment = Readonly<{ text: string; style: Style }>;
type Line = Readonly<{ text: string; style: Style }>;

/** Where things go on a `cols` × `rows` screen (0-based rows and columns). */
export function layout(cols: number, rows: number) {
  const leftW = cols < 40 ? 0 : Math.min(28, Math.max(14, Math.floor(cols * 0.28)));
  const rightX = leftW === 0 ? 0 : leftW + 1;
  return { leftW, rightX, rightW: cols - rightX, bodyTop: 1, bodyH: rows - 4, sepRow: rows - 3, inputRow: rows - 2, statusRow: rows - 1 };
}

function pad2(n: number): string {
  return String(n).padStart(2, '0');
}

/** The local time of day, HH:MM. */
export function clock(ms: number): string {
  const d = new Date(ms);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
}

/** The local date, YYYY-MM-DD. */
export function day(ms: number): string {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`;
}

const INDENT = 6;

/** The conversation pane's lines for a pane `width` columns wide, oldest first. */
export function conversationLines(state: TuiState, width: number): Line[] {
  const contact = state.contacts[state.selected];
  if (contact === undefined) {
    return wrap("No contacts yet. Quit (Esc q), then run 'murmure invite' or 'murmure connect LINK' and 'murmure sync'.", width).map((text) => ({ text, style: 'dim' }));
  }
  if (state.messages.length === 0) {
    const name = sanitizeLine(contact.name);
    const hint = contact.status === 'connected' ? `No messages with ${name} yet. Type below and press Enter.` : `${name} has not connected yet (${contact.status}).`;
    return wrap(hint, width).map((text) => ({ text, style: 'dim' }));
  }
  const indent = width >= 30 ? INDENT : 0;
  const lines: Line[] = [];
  let lastDay = '';
  for (const m of state.messages) {
    const at = m.kind === 'text' ? m.sentAt : (m.receivedAt ?? m.sentAt);
    const d = day(at);
    if (d !== lastDay) {
      lastDay = d;
      lines.push({ text: `── ${d} ──`, style: 'dim' });
    }
    let body: string;
    let style: Style = 'plain';
    if (m.kind === 'identity') {
      body = `${clock(at)} !!! ${sanitizeText(m.text)} !!!`;
      style = 'reverse';
    } else if (m.kind !== 'text') {
      body = `${clock(at)} ! ${sanitizeText(m.text)}`;
      style = 'notice';
    } else if (m.direction === 'out') {
      const mark = DELIVERY_MARK[m.status];
      body = `${clock(at)} you: ${sanitizeText(m.text)}${mark === '' ? '' : ` ${mark}`}`;
      if (m.status === 'failed') style = 'notice';
    } else {
      body = `${clock(at)} ${sanitizeLine(m.contact)}: ${sanitizeText(m.text)}`;
      style = 'bold';
    }
    wrap(body, width, width - indent).forEach((text, i) => lines.push({ text: i === 0 ? text : ' '.repeat(indent) + text, style }));
  }
  return lines;
}

/** How far the conversation can scroll up. */
export function maxScroll(state: TuiState, cols: number, rows: number): number {
  const l = layout(cols, rows);
  if (cols < MIN_COLS || rows < MIN_ROWS) return 0;
  return Math.max(0, conversationLines(state, l.rightW).length - l.bodyH);
}

function inputWindow(state: TuiState, avail: number): { text: string; cursorCol: number } {
  const cps = Array.from(state.input);
  const cursor = Math.max(0, Math.min(state.cursor, cps.length));
  let start = 0;
  let w = displayWidth(cps.slice(0, cursor).join(''));
  while (w > avail - 1 && start < cursor) {
    w -= charWidth(cps[start]!);
    start++;
  }
  return { text: sanitizeLine(cps.slice(start).join('')), cursorCol: w };
}

const STATUS_DOT: Readonly<Record<ContactView['status'], string>> = { connected: '●', pending: '○', invited: '○', address: '○' };

function contactRow(c: TuiContact, selected: boolean, width: number): Segment {
  const right = c.unread > 0 ? ` (${c.unread > 99 ? '99+' : c.unread})` : c.status === 'connected' ? '' : ` ${c.status}`;
  const head = `${selected ? '>' : ' '}${STATUS_DOT[c.status]} `;
  const nameW = Math.max(1, width - displayWidth(head) - displayWidth(right));
  return { text: fit(head + fit(sanitizeLine(c.name), nameW) + right, width), style: selected ? 'reverse' : c.unread > 0 ? 'bold' : 'plain' };
}

function rowsOf(state: TuiState, cols: number, rows: number): Segment[][] {
  if (cols < MIN_COLS || rows < MIN_ROWS) {
    return Array.from({ length: Math.max(0, rows) }, (_, r) => [{ text: fit(r === 0 ? 'Terminal too small' : '', Math.max(0, cols)), style: 'plain' as Style }]);
  }
  const l = layout(cols, rows);
  const out: Segment[][] = [];
  const sep: Segment = { text: '│', style: 'dim' };
  const left = (seg: Segment): Segment[] => (l.leftW === 0 ? [] : [seg, sep]);
  const contact = state.contacts[state.selected];

  // Header.
  let title: string;
  if (contact === undefined) title = 'Murmure';
  else {
    const pos = l.leftW === 0 && state.contacts.length > 1 ? `[${state.selected + 1}/${state.contacts.length}] ` : '';
    title = `${pos}${sanitizeLine(contact.name)} · ${contact.status}`;
  }
  const scrolled = state.scroll > 0 ? ` ↑${Math.min(state.scroll, maxScroll(state, cols, rows))} (PgDn)` : '';
  const titleW = Math.max(0, l.rightW - displayWidth(scrolled));
  out.push([...left({ text: fit(` Contacts (${state.contacts.length})`, l.leftW), style: 'bold' }), { text: fit(` ${title}`, titleW) + scrolled, style: 'bold' }]);

  // Body: contacts and conversation.
  const n = state.contacts.length;
  const first = n <= l.bodyH ? 0 : Math.max(0, Math.min(state.selected - Math.floor(l.bodyH / 2), n - l.bodyH));
  const lines = conversationLines(state, l.rightW);
  const scroll = Math.min(state.scroll, Math.max(0, lines.length - l.bodyH));
  const end = lines.length - scroll;
  const shown = lines.slice(Math.max(0, end - l.bodyH), end);
  const blank = l.bodyH - shown.length;
  for (let r = 0; r < l.bodyH; r++) {
    const c = state.contacts[first + r];
    const leftSeg: Segment = c === undefined ? { text: ' '.repeat(l.leftW), style: 'plain' } : contactRow(c, first + r === state.selected, l.leftW);
    const line = r < blank ? undefined : shown[r - blank];
    out.push([...left(leftSeg), { text: fit(line?.text ?? '', l.rightW), style: line?.style ?? 'plain' }]);
  }

  // Separator, input, status.
  out.push([{ text: l.leftW === 0 ? '─'.repeat(cols) : `${'─'.repeat(l.leftW)}┴${'─'.repeat(l.rightW)}`, style: 'dim' }]);
  const win = inputWindow(state, cols - 2);
  const empty = state.input.length === 0;
  out.push([
    { text: '> ', style: 'bold' },
    { text: fit(empty ? (contact === undefined ? '' : `Message ${sanitizeLine(contact.name)}`) : win.text, cols - 2, true), style: empty ? 'dim' : 'plain' },
  ]);
  const conn = state.connection === 'online' ? '● online' : state.connection === 'offline' ? '○ offline' : '○ connecting…';
  const tail = state.quitPending ? 'Press q to quit, any other key to stay' : state.notice !== null ? `! ${sanitizeLine(state.notice)}` : HELP;
  out.push([{ text: fit(` ${conn} │ ${sanitizeLine(state.profile)} │ ${tail}`, cols), style: 'reverse' }]);
  return out;
}

/** The screen as `rows` plain lines of exactly `cols` columns each. */
export function renderScreen(state: TuiState, cols: number, rows: number): string[] {
  return rowsOf(state, cols, rows).map((segs) => segs.map((s) => s.text).join(''));
}

/** Where the terminal cursor goes (0-based): in the input line. */
export function cursorPosition(state: TuiState, cols: number, rows: number): { row: number; col: number } {
  if (cols < MIN_COLS || rows < MIN_ROWS) return { row: 0, col: 0 };
  return { row: layout(cols, rows).inputRow, col: Math.min(cols - 1, 2 + inputWindow(state, cols - 2).cursorCol) };
}

const SGR: Readonly<Record<Style, string>> = { plain: '', bold: '\x1b[1m', dim: '\x1b[2m', reverse: '\x1b[7m', notice: '\x1b[33m' };

/** The whole screen as one write: every row redrawn, then the cursor placed in the input line. */
export function paintScreen(state: TuiState, cols: number, rows: number): string {
  let s = '\x1b[?25l';
  rowsOf(state, cols, rows).forEach((segs, r) => {
    s += `\x1b[${r + 1};1H\x1b[2K`;
    for (const seg of segs) s += seg.style === 'plain' ? seg.text : `${SGR[seg.style]}${seg.text}\x1b[0m`;
  });
  const c = cursorPosition(state, cols, rows);
  return `${s}\x1b[${c.row + 1};${c.col + 1}H\x1b[?25h`;
}

// Keys.

/** What the shell does after a key. */
export type Action = 'none' | 'quit' | 'send' | 'select' | 'redraw';

function edit(state: TuiState, cps: string[], cursor: number): TuiState {
  return { ...state, input: cps.join(''), cursor };
}

/**
 * Applies a keypress (as node:readline reports it) to the state. `page` is how many lines
 * PageUp/PageDown scroll. Pure: returns the new state and what the shell must do.
 */
export function handleKey(state: TuiState, str: string | undefined, key: Key | undefined, page: number): { state: TuiState; action: Action } {
  const k = key ?? {};
  const name = k.name;
  const s: TuiState = { ...state, notice: null };
  if (k.ctrl === true && name === 'c') return { state: s, action: 'quit' };
  if (k.meta === true && name === 'q') return { state: s, action: 'quit' };
  if (state.quitPending) {
    s.quitPending = false;
    if (name === 'q' && k.ctrl !== true && k.meta !== true) return { state: s, action: 'quit' };
    if (name === 'escape') return { state: s, action: 'redraw' };
  } else if (name === 'escape') {
    return { state: { ...s, quitPending: true }, action: 'redraw' };
  }
  const cps = Array.from(s.input);
  const cur = Math.max(0, Math.min(s.cursor, cps.length));
  const n = s.contacts.length;
  const move = (d: number): { state: TuiState; action: Action } =>
    n === 0 ? { state: s, action: 'redraw' } : { state: { ...s, selected: (((s.selected < 0 ? 0 : s.selected + d) % n) + n) % n, scroll: 0 }, action: 'select' };
  switch (name) {
    case 'tab':
      return move(k.shift === true ? -1 : 1);
    case 'up':
      return move(-1);
    case 'down':
      return move(1);
    case 'pageup':
      return { state: { ...s, scroll: s.scroll + Math.max(1, page) }, action: 'redraw' };
    case 'pagedown':
      return { state: { ...s, scroll: Math.max(0, s.scroll - Math.max(1, page)) }, action: 'redraw' };
    case 'return':
    case 'enter':
      return { state: s, action: s.input.trim().length > 0 ? 'send' : 'redraw' };
    case 'backspace':
      if (k.meta === true) return { state: deleteWordBack(s, cps, cur), action: 'redraw' };
      return { state: cur === 0 ? s : edit(s, [...cps.slice(0, cur - 1), ...cps.slice(cur)], cur - 1), action: 'redraw' };
    case 'delete':
      return { state: edit(s, [...cps.slice(0, cur), ...cps.slice(cur + 1)], cur), action: 'redraw' };
    case 'left':
      return { state: { ...s, cursor: Math.max(0, cur - 1) }, action: 'redraw' };
    case 'right':
      return { state: { ...s, cursor: Math.min(cps.length, cur + 1) }, action: 'redraw' };
    case 'home':
      return { state: { ...s, cursor: 0 }, action: 'redraw' };
    case 'end':
      return { state: { ...s, cursor: cps.length }, action: 'redraw' };
    default:
      break;
  }
  if (k.ctrl === true) {
    switch (name) {
      case 'a':
        return { state: { ...s, cursor: 0 }, action: 'redraw' };
      case 'e':
        return { state: { ...s, cursor: cps.length }, action: 'redraw' };
      case 'u':
        return { state: edit(s, cps.slice(cur), 0), action: 'redraw' };
      case 'k':
        return { state: edit(s, cps.slice(0, cur), cur), action: 'redraw' };
      case 'w':
        return { state: deleteWordBack(s, cps, cur), action: 'redraw' };
      default:
        return { state: s, action: 'redraw' };
    }
  }
  if (k.meta !== true && str !== undefined && str.length > 0 && sanitizeLine(str) === str) {
    const add = Array.from(str);
    if (s.input.length + str.length > MAX_TEXT_LENGTH) return { state: { ...s, notice: `a message may have at most ${MAX_TEXT_LENGTH} characters` }, action: 'redraw' };
    return { state: edit(s, [...cps.slice(0, cur), ...add, ...cps.slice(cur)], cur + add.length), action: 'redraw' };
  }
  return { state: s, action: 'redraw' };
}

function deleteWordBack(s: TuiState, cps: string[], cur: number): TuiState {
  let i = cur;
  while (i > 0 && cps[i - 1] === ' ') i--;
  while (i > 0 && cps[i - 1] !== ' ') i--;
  return edit(s, [...cps.slice(0, i), ...cps.slice(cur)], i);
}

// The terminal shell.

/** Messages loaded for the selected contact. */
const HISTORY = 500;
/** How often the relays are checked (and statuses refreshed), and how long a check may take. */
const POLL_MS = 5000;
const POLL_TIMEOUT_MS = 2000;

const ENTER = '\x1b[?1049h\x1b[?7l\x1b[H\x1b[2J';
const LEAVE = '\x1b[0m\x1b[?7h\x1b[?25h\x1b[?1049l';

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * Runs the full-screen chat on a terminal until Ctrl-C or Esc q; resolves with the exit code.
 * Goes online when it starts. The terminal is restored (main screen, cursor shown, raw mode
 * off) however it ends, also when something throws.
 */
export async function runChatTui(chat: Chat, profile: string | undefined, io: { input: NodeJS.ReadStream; output: NodeJS.WriteStream }): Promise<number> {
  const { input, output } = io;
  const me = chat.profile(profile);
  let state = initialState(me.name);
  const unread = new Map<string, number>();
  let selectedId: string | null = null;
  let closed = false;
  let restored = false;
  let drawPending = false;
  let sending = false;
  let polling = false;
  let pollTimer: NodeJS.Timeout | undefined;

  let quit: () => void = () => undefined;
  let fail: (e: unknown) => void = () => undefined;
  const done = new Promise<void>((resolveDone, rejectDone) => {
    quit = resolveDone;
    fail = rejectDone;
  });
  const guard = (f: () => void): void => {
    try {
      f();
    } catch (e) {
      fail(e);
    }
  };

  const size = () => ({ cols: output.columns > 0 ? output.columns : 80, rows: output.rows > 0 ? output.rows : 24 });
  const draw = (): void => {
    if (closed) return;
    const { cols, rows } = size();
    state.scroll = Math.min(state.scroll, maxScroll(state, cols, rows));
    output.write(paintScreen(state, cols, rows));
  };
  const scheduleDraw = (): void => {
    if (drawPending) return;
    drawPending = true;
    setImmediate(() => {
      drawPending = false;
      guard(draw);
    });
  };

  const loadMessages = (): void => {
    state.messages = [];
    if (selectedId === null) return;
    try {
      state.messages = chat.messages(me.name, selectedId, HISTORY);
    } catch (e) {
      state.notice = errorMessage(e);
    }
  };
  // Marks the contact at state.selected as the selected one and its messages as read.
  const markSelected = (): void => {
    const id = state.contacts[state.selected]?.id ?? null;
    if (id !== selectedId) state.scroll = 0;
    selectedId = id;
    if (id !== null) unread.delete(id);
    state.contacts = state.contacts.map((c) => (c.id === id ? { ...c, unread: 0 } : c));
  };
  // Reloads contacts (keeping the selection) and the selected conversation.
  const refresh = (): void => {
    state.contacts = chat.contacts(me.name).map((c) => ({ id: c.id, name: c.name, status: c.status, unread: unread.get(c.id) ?? 0 }));
    let i = state.contacts.findIndex((c) => c.id === selectedId);
    if (i < 0 && state.contacts.length > 0) i = Math.min(Math.max(state.selected, 0), state.contacts.length - 1);
    state.selected = i;
    markSelected();
    loadMessages();
  };

  const send = async (): Promise<void> => {
    const c = state.contacts[state.selected];
    if (sending || c === undefined) {
      if (c === undefined) state.notice = 'no contact to send to';
      return;
    }
    const text = state.input;
    state = { ...state, input: '', cursor: 0, scroll: 0 };
    sending = true;
    scheduleDraw();
    try {
      await chat.send(me.name, c.id, text);
    } catch (e) {
      state.notice = errorMessage(e);
      if (state.input.length === 0) state = { ...state, input: text, cursor: Array.from(text).length };
    } finally {
      sending = false;
    }
    if (closed) return;
    refresh();
    scheduleDraw();
  };

  const poll = async (): Promise<void> => {
    if (polling || closed) return;
    polling = true;
    try {
      const unreachable = await chat.agent.online(POLL_TIMEOUT_MS);
      if (closed) return;
      state.connection = unreachable.length === 0 ? 'online' : 'offline';
      refresh();
      scheduleDraw();
    } catch (e) {
      if (!closed) fail(e);
    } finally {
      polling = false;
    }
  };

  const onKey = (str: string | undefined, key: Key | undefined): void =>
    guard(() => {
      const { cols, rows } = size();
      const r = handleKey(state, str, key, Math.max(1, layout(cols, rows).bodyH - 1));
      state = r.state;
      switch (r.action) {
        case 'quit':
          quit();
          return;
        case 'select':
          markSelected();
          loadMessages();
          break;
        case 'send':
          void send().catch(fail);
          break;
        default:
          break;
      }
      draw();
    });
  const onEvent = (ev: ChatEvent): void =>
    guard(() => {
      switch (ev.type) {
        case 'message':
        case 'missing':
          if (ev.contactId !== selectedId) unread.set(ev.contactId, (unread.get(ev.contactId) ?? 0) + 1);
          break;
        case 'connected':
          state.notice = `connected with ${ev.contact}`;
          break;
        case 'problem':
          state.notice = `problem${ev.contact === null ? '' : ` with ${ev.contact}`}: ${ev.message}`;
          break;
        case 'identity-changed':
          state.notice = `WARNING: the safety number with ${ev.contact} CHANGED; they are no longer verified`;
          if (ev.contactId !== selectedId) unread.set(ev.contactId, (unread.get(ev.contactId) ?? 0) + 1);
          break;
        case 'resync':
          state.notice = `the secure session with ${ev.contact} was reset`;
          break;
        default:
          break;
      }
      refresh();
      scheduleDraw();
    });
  const onResize = (): void => guard(draw);
  const onSignal = (): void => quit();
  const onOutputError = (): void => quit();
  const restore = (): void => {
    if (restored) return;
    restored = true;
    try {
      if (input.isTTY) input.setRawMode(false);
    } catch {
      // The terminal may be gone already.
    }
    input.pause();
    try {
      output.write(LEAVE);
    } catch {
      // As above.
    }
  };
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

  try {
    emitKeypressEvents(input);
    if (input.isTTY) input.setRawMode(true);
    output.write(ENTER);
    process.on('exit', restore);
    for (const s of signals) process.on(s, onSignal);
    output.on('error', onOutputError);
    output.on('resize', onResize);
    input.on('keypress', onKey);
    input.resume();
    chat.on('event', onEvent);
    refresh();
    draw();
    chat.start();
    void poll();
    pollTimer = setInterval(() => void poll(), POLL_MS);
    await done;
  } finally {
    closed = true;
    clearInterval(pollTimer);
    restore();
    chat.off('event', onEvent);
    input.off('keypress', onKey);
    output.off('resize', onResize);
    output.off('error', onOutputError);
    for (const s of signals) process.off(s, onSignal);
    process.off('exit', restore);
  }
  return 0;
}
