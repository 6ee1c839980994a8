// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that the chat screen lays out contacts, conversation, input and status bar for a given
// state and size, wraps long lines by columns, shows delivery marks, never lets contact-supplied
// text put control or escape characters on the terminal, that keys edit the input as expected,
// and that runChatTui (on fake streams and a fake Chat) restores the terminal however it ends.
import { EventEmitter } from 'node:events';
import { PassThrough } from 'node:stream';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import type { Chat, ChatEvent } from '@murmure/chat';

import {
  HELP,
  clock,
  cursorPosition,
  displayWidth,
  fit,
  handleKey,
  initialState,
  layout,
  maxScroll,
  paintScreen,
  renderScreen,
  runChatTui,
  sanitizeLine,
  sanitizeText,
  wrap,
  type TuiContact,
  type TuiMessage,
  type TuiState,
} from './tui.js';

const T0 = new Date(2024, 4, 1, 9, 30).getTime();

function msg(id: number, over: Partial<TuiMessage> = {}): TuiMessage {
  return { id, contact: 'Alice', direction: 'in', kind: 'text', text: `message ${id}`, sentAt: T0 + id * 60_000, receivedAt: T0 + id * 60_000, status: 'received', ...over };
}

function contact(id: string, name: string, over: Partial<TuiContact> = {}): TuiContact {
  return { id, name, status: 'connected', unread: 0, ...over };
}

function state(over: Partial<TuiState> = {}): TuiState {
  return {
    ...initialState('Bob'),
    connection: 'online',
    contacts: [contact('a1', 'Alice'), contact('c2', 'Carol', { unread: 3 }), contact('d3', 'Dave', { status: 'pending' })],
    selected: 0,
    messages: [msg(1), msg(2, { direction: 'out', text: 'hi Alice', status: 'delivered' })],
    input: 'draft',
    cursor: 5,
    ...over,
  };
}

/** Every character C0, DEL or C1: none of them may reach the terminal from contact text. */
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

function assertGrid(lines: string[], cols: number, rows: number): void {
  assert.equal(lines.length, rows);
  lines.forEach((l, i) => assert.equal(displayWidth(l), cols, `row ${i} is ${displayWidth(l)} columns: ${JSON.stringify(l)}`));
}

describe('renderScreen layout', () => {
  test('contacts on the left, conversation on the right, input and status at the bottom', () => {
    const s = state();
    const lines = renderScreen(s, 80, 20);
    assertGrid(lines, 80, 20);
    const l = layout(80, 20);
    const left = lines.map((x) => Array.from(x).slice(0, l.leftW).join(''));
    const right = lines.map((x) => Array.from(x).slice(l.rightX).join(''));
    assert.match(left[0]!, /Contacts \(3\)/);
    assert.match(right[0]!, /Alice · connected/);
    // Contacts with a selection marker, status dot, unread count and status word.
    assert.match(left[1]!, /^>● Alice/);
    assert.match(left[2]!, /^ ● Carol +\(3\)$/);
    assert.match(left[3]!, /^ ○ Dave +pending$/);
    // The pane separator runs down the body.
    for (let r = 0; r <= l.bodyH; r++) assert.equal(Array.from(lines[r]!)[l.leftW], '│');
    // The conversation is bottom-aligned: a day line, then the messages, oldest first.
    const body = right.slice(1, 1 + l.bodyH);
    assert.equal(body[l.bodyH - 1]!.trimEnd(), `${clock(T0 + 120_000)} you: hi Alice ✓✓`);
    assert.equal(body[l.bodyH - 2]!.trimEnd(), `${clock(T0 + 60_000)} Alice: message 1`);
    assert.equal(body[l.bodyH - 3]!.trimEnd(), '── 2024-05-01 ──');
    assert.equal(body[0]!.trim(), '');
    assert.match(lines[l.sepRow]!, /^─+┴─+$/);
    assert.equal(lines[l.inputRow]!.trimEnd(), '> draft');
    assert.deepEqual(cursorPosition(s, 80, 20), { row: 18, col: 7 });
    assert.match(lines[l.statusRow]!, /● online │ Bob │ Tab/);
  });

  test('the status bar shows offline, notices and the quit prompt', () => {
    const cols = 120;
    assert.match(renderScreen(state({ connection: 'offline' }), cols, 10)[9]!, /○ offline │ Bob │ /);
    assert.ok(renderScreen(state(), cols, 10)[9]!.includes(HELP));
    assert.match(renderScreen(state({ notice: 'the relay cannot be reached now' }), cols, 10)[9]!, /! the relay cannot be reached now/);
    assert.match(renderScreen(state({ quitPending: true }), cols, 10)[9]!, /Press q to quit/);
  });

  test('narrow terminals hide the contact list but keep the conversation; tiny ones say so', () => {
    const lines = renderScreen(state({ selected: 1, messages: [] }), 30, 8);
    assertGrid(lines, 30, 8);
    assert.match(lines[0]!, /^ \[2\/3\] Carol · connected/);
    assert.ok(!lines.slice(0, -1).some((l) => l.includes('│')));
    const tiny = renderScreen(state(), 10, 3);
    assertGrid(tiny, 10, 3);
    assert.match(tiny[0]!, /^Terminal ?…$/);
  });

  test('no contacts: a hint instead of a conversation', () => {
    const lines = renderScreen(state({ contacts: [], selected: -1, messages: [] }), 80, 12);
    assertGrid(lines, 80, 12);
    assert.ok(lines.join('\n').includes('No contacts yet'));
  });

  test('a long contact list scrolls to keep the selection visible', () => {
    const contacts = Array.from({ length: 30 }, (_, i) => contact(`id${i}`, `Person ${i}`));
    const lines = renderScreen(state({ contacts, selected: 25, messages: [] }), 80, 12);
    assertGrid(lines, 80, 12);
    assert.ok(lines.some((l) => l.startsWith('>● Person 25')));
  });

  test('PageUp scrolls the conversation, within bounds', () => {
    const messages = Array.from({ length: 40 }, (_, i) => msg(i + 1));
    const s = state({ messages, scroll: 0 });
    const bottom = renderScreen(s, 80, 12);
    assert.ok(bottom[8]!.includes('message 40'));
    const max = maxScroll(s, 80, 12);
    assert.equal(max, 41 - 8);
    const top = renderScreen({ ...s, scroll: 1000 }, 80, 12);
    assert.ok(top[1]!.includes('── 2024-05-01 ──'));
    assert.ok(top[2]!.includes('message 1'));
    assert.match(top[0]!, /↑33 \(PgDn\)$/);
  });
});

describe('wrapping', () => {
  test('long messages wrap at word boundaries to the pane width, with a hanging indent', () => {
    const words = Array.from({ length: 40 }, (_, i) => `word${i}`);
    const s = state({ messages: [msg(1, { text: words.join(' ') })] });
    const cols = 60;
    const lines = renderScreen(s, cols, 30);
    assertGrid(lines, cols, 30);
    const l = layout(cols, 30);
    const body = lines.slice(1, 1 + l.bodyH).map((x) => Array.from(x).slice(l.rightX).join('').trimEnd()).filter((x) => /word/.test(x));
    assert.ok(body.length > 5, `wrapped into ${body.length} lines`);
    for (const b of body) assert.ok(displayWidth(b) <= l.rightW);
    for (const b of body.slice(1)) assert.match(b, /^ {6}word/);
    // Nothing lost, nothing reordered, no word split.
    assert.deepEqual(body.join(' ').split(/\s+/).filter((w) => w.startsWith('word')), words);
  });

  test('wrap counts columns, not bytes or UTF-16 units, and cuts words longer than a line', () => {
    assert.deepEqual(wrap('ééééé ééééé', 5), ['ééééé', 'ééééé']);
    assert.deepEqual(wrap('漢字漢字漢字', 4), ['漢字', '漢字', '漢字']);
    assert.deepEqual(wrap('😀😀😀', 4), ['😀😀', '😀']);
    assert.deepEqual(wrap('abcdefghij', 4), ['abcd', 'efgh', 'ij']);
    assert.deepEqual(wrap('one\ntwo three', 5), ['one', 'two', 'three']);
    assert.deepEqual(wrap('', 5), ['']);
    assert.equal(displayWidth('e\u0301'), 1);
    assert.equal(fit('漢字漢字', 5), '漢字…');
    assert.equal(fit('漢字漢字', 6), '漢字… ');
    assert.equal(fit('ab', 4), 'ab  ');
    assert.equal(displayWidth(fit('😀😀😀', 5)), 5);
  });

  test('wide characters keep every row exactly as wide as the terminal', () => {
    const s = state({ contacts: [contact('a1', '山田太郎山田太郎山田太郎山田太郎')], messages: [msg(1, { contact: '山田太郎', text: '日本語のメッセージ😀'.repeat(12) })], input: '入力😀'.repeat(30), cursor: 90 });
    for (const cols of [40, 63, 80, 101]) assertGrid(renderScreen(s, cols, 15), cols, 15);
    const c = cursorPosition(s, 63, 15);
    assert.ok(c.col <= 62);
  });
});

describe('delivery marks and notices', () => {
  test('queued …, sent ✓, delivered ✓✓, failed ✗; missing messages as a notice', () => {
    const s = state({
      messages: [
        msg(1, { direction: 'out', text: 'q', status: 'queued' }),
        msg(2, { direction: 'out', text: 's', status: 'sent' }),
        msg(3, { direction: 'out', text: 'd', status: 'delivered' }),
        msg(4, { direction: 'out', text: 'f', status: 'failed' }),
        msg(5, { kind: 'gap', text: '3 messages missing', receivedAt: T0 + 5 * 60_000 }),
        msg(6, { text: 'incoming has no mark' }),
      ],
    });
    const text = renderScreen(s, 80, 16).map((l) => l.trimEnd());
    const has = (re: RegExp) => assert.ok(text.some((l) => re.test(l)), `no line matches ${re}`);
    has(/ you: q …$/);
    has(/ you: s ✓$/);
    has(/ you: d ✓✓$/);
    has(/ you: f ✗$/);
    has(/ ! 3 messages missing$/);
    has(/ Alice: incoming has no mark$/);
    // Styles: the failed message and the notice are highlighted.
    const painted = paintScreen(s, 80, 16);
    assert.ok(painted.includes('\x1b[33m'));
  });

  test('a changed safety number is a loud notice, unlike the others', () => {
    const s = state({ messages: [msg(1, { kind: 'identity', text: 'SAFETY NUMBER CHANGED', receivedAt: T0 }), msg(2, { kind: 'notice', text: 'quiet notice', receivedAt: T0 })] });
    const text = renderScreen(s, 80, 16).map((l) => l.trimEnd());
    assert.ok(text.some((l) => / !!! SAFETY NUMBER CHANGED !!!$/.test(l)), text.join('\n'));
    assert.ok(text.some((l) => / ! quiet notice$/.test(l)));
    // Shown in reverse video, which no other message uses.
    assert.match(paintScreen(s, 80, 16), /\x1b\[7m[^\x1b]*!!! SAFETY NUMBER CHANGED !!!/);
    assert.doesNotMatch(paintScreen(s, 80, 16), /\x1b\[7m[^\x1b]*! quiet notice/);
  });
});

describe('contact-supplied text cannot reach the terminal as control sequences', () => {
  const evilName = 'Eve\x1b[2J\x1b]0;pwned\x07\u009b31m\u202eevil\r\n\x00\x7f';
  const evilText = 'hi\x1b[31mred\x1b[0m \x1b]52;c;Y2xpcGJvYXJk\x07 \u009b2J \x08\x08\x08 bell\x07 \u200bzw\u2066iso\u2069 \ud800 end';

  test('sanitizers drop C0, DEL, C1 and format characters, keeping line breaks only in text', () => {
    assert.equal(sanitizeLine(evilName), 'Eve[2J]0;pwned31mevil  ');
    assert.equal(sanitizeText('a\r\nb\tc\x1bd'), 'a\nb    cd');
    assert.doesNotMatch(sanitizeText(evilText), CONTROL);
    assert.ok(sanitizeText(evilText).includes('\ufffd'));
  });

  test('renderScreen and paintScreen never pass them through', () => {
    const s = state({
      contacts: [contact('e1', evilName, { unread: 1 }), contact('e2', evilName, { status: 'invited' })],
      messages: [msg(1, { contact: evilName, text: evilText }), msg(2, { kind: 'notice', text: evilText }), msg(3, { direction: 'out', text: evilText, status: 'sent' })],
      notice: `problem with ${evilName}: ${evilText}`,
      profile: `Bob${evilName}`,
    });
    for (const [cols, rows] of [[80, 24], [30, 10], [120, 40]] as const) {
      const lines = renderScreen(s, cols, rows);
      assertGrid(lines, cols, rows);
      for (const l of lines) assert.doesNotMatch(l, CONTROL);
      assert.ok(lines.join('').includes('Eve[2J]0;pwned'));
      // The only escape sequences in the painted frame are our own cursor moves, line clears,
      // colours and cursor visibility.
      const painted = paintScreen(s, cols, rows);
      const rest = painted.replace(/\x1b\[\d+;\d+H|\x1b\[2K|\x1b\[[0-9]*m|\x1b\[\?25[hl]/g, '');
      assert.doesNotMatch(rest, CONTROL);
      assert.ok(!painted.includes('\u009b') && !painted.includes('\x07') && !painted.includes('\u202e'));
    }
  });

  test('typed or pasted control characters are not inserted into the input', () => {
    const s = state({ input: '', cursor: 0 });
    assert.equal(handleKey(s, '\x1b[31m', { sequence: '\x1b[31m' }, 5).state.input, '');
    assert.equal(handleKey(s, '\x07', { name: undefined, sequence: '\x07', ctrl: true }, 5).state.input, '');
  });
});

describe('keys', () => {
  const press = (s: TuiState, keys: Array<string | { name: string; ctrl?: boolean; shift?: boolean; meta?: boolean }>) => {
    let st = s;
    const actions: string[] = [];
    for (const k of keys) {
      const r = typeof k === 'string' ? handleKey(st, k, { name: k.length === 1 ? k.toLowerCase() : undefined, sequence: k }, 5) : handleKey(st, undefined, { sequence: '', ...k }, 5);
      st = r.state;
      actions.push(r.action);
    }
    return { st, actions };
  };

  test('typing, Left/Right, Home/End, Backspace and Delete edit the input by characters', () => {
    const { st } = press(state({ input: '', cursor: 0 }), ['h', 'é', '漢', 'o', { name: 'left' }, { name: 'backspace' }, 'X', { name: 'home' }, { name: 'delete' }, { name: 'end' }, '!', { name: 'right' }]);
    assert.equal(st.input, 'éXo!');
    assert.equal(st.cursor, 4);
    const w = press(state({ input: 'one two three', cursor: 13 }), [{ name: 'w', ctrl: true }]);
    assert.equal(w.st.input, 'one two ');
    const u = press(state({ input: 'abc', cursor: 2 }), [{ name: 'u', ctrl: true }]);
    assert.equal(u.st.input, 'c');
  });

  test('Enter sends non-empty input; Tab, Shift-Tab and Ctrl-Up/Down change contact', () => {
    assert.equal(press(state(), [{ name: 'return' }]).actions[0], 'send');
    assert.equal(press(state({ input: '   ' }), [{ name: 'return' }]).actions[0], 'redraw');
    const t = press(state(), [{ name: 'tab' }, { name: 'tab' }, { name: 'tab' }, { name: 'tab', shift: true }]);
    assert.deepEqual(t.actions, ['select', 'select', 'select', 'select']);
    assert.equal(t.st.selected, 2);
    assert.equal(press(state(), [{ name: 'down', ctrl: true }]).st.selected, 1);
    assert.equal(press(state(), [{ name: 'up', ctrl: true }]).st.selected, 2);
    assert.equal(press(state({ contacts: [], selected: -1 }), [{ name: 'tab' }]).st.selected, -1);
  });

  test('PageUp/PageDown scroll; Ctrl-C, Esc q and Alt-q quit; Esc then another key does not', () => {
    const p = press(state(), [{ name: 'pageup' }, { name: 'pageup' }, { name: 'pagedown' }]);
    assert.equal(p.st.scroll, 5);
    assert.equal(press(state(), [{ name: 'pagedown' }]).st.scroll, 0);
    assert.equal(press(state(), [{ name: 'c', ctrl: true }]).actions[0], 'quit');
    assert.deepEqual(press(state(), [{ name: 'escape' }, 'q']).actions, ['redraw', 'quit']);
    assert.equal(press(state(), [{ name: 'q', meta: true }]).actions[0], 'quit');
    const stay = press(state({ input: '', cursor: 0 }), [{ name: 'escape' }, 'x', 'q']);
    assert.deepEqual(stay.actions, ['redraw', 'redraw', 'redraw']);
    assert.equal(stay.st.input, 'xq');
    assert.equal(stay.st.quitPending, false);
  });

  test('any key clears a notice', () => {
    assert.equal(press(state({ notice: 'oops' }), ['a']).st.notice, null);
  });
});

describe('runChatTui on a fake terminal', () => {
  function terminal() {
    const rawModes: boolean[] = [];
    const input = Object.assign(new PassThrough(), { isTTY: true, setRawMode: (on: boolean) => rawModes.push(on) });
    let written = '';
    const output = Object.assign(new PassThrough(), { isTTY: true, columns: 80, rows: 20 });
    output.on('data', (d: Buffer) => (written += d.toString('utf8')));
    return { input, output, rawModes, written: () => written, io: { input: input as unknown as NodeJS.ReadStream, output: output as unknown as NodeJS.WriteStream } };
  }

  function fakeChat(over: Record<string, unknown> = {}) {
    const sent: string[][] = [];
    const messages = new Map<string, TuiMessage[]>([['a1', [msg(1, { text: 'earlier' })]], ['c2', []]]);
    let started = false;
    const chat = Object.assign(new EventEmitter(), {
      profile: (name?: string) => ({ id: 'p', name: name ?? 'Bob', relay: 'r', created_at: 0 }),
      contacts: () => [
        { id: 'a1', name: 'Alice', status: 'connected', incognito: null, verified: false, receipts: true },
        { id: 'c2', name: 'Carol\x1b[2J', status: 'connected', incognito: null, verified: false, receipts: true },
      ],
      messages: (_p: string | undefined, id: string) => messages.get(id) ?? [],
      send: async (p: string, id: string, text: string) => {
        sent.push([p, id, text]);
        messages.get(id)!.push(msg(9, { direction: 'out', text, status: 'queued' }));
        return msg(9);
      },
      start: () => {
        started = true;
      },
      agent: { online: async () => [] },
      ...over,
    });
    return { chat: chat as unknown as Chat, emitter: chat, sent, isStarted: () => started };
  }

  const tick = (ms = 20) => new Promise((r) => setTimeout(r, ms));
  const LEAVE = '\x1b[?1049l';

  test('goes online, sends on Enter, counts unread, quits on Ctrl-C and restores the terminal', async () => {
    const t = terminal();
    const f = fakeChat();
    const run = runChatTui(f.chat, undefined, t.io);
    await tick();
    assert.ok(f.isStarted());
    assert.ok(t.written().startsWith('\x1b[?1049h'));
    assert.ok(t.written().includes('earlier'));
    assert.ok(t.written().includes('online'));
    t.input.write('hi there');
    t.input.write('\r');
    await tick();
    assert.deepEqual(f.sent, [['Bob', 'a1', 'hi there']]);
    assert.ok(t.written().includes('you: hi there …'));
    f.emitter.emit('event', { type: 'message', ...msg(5, { contact: 'Carol', text: 'psst' }), contactId: 'c2' } satisfies ChatEvent);
    await tick();
    assert.ok(t.written().includes('Carol[2J'));
    assert.match(t.written(), /Carol\[2J +\(1\)/);
    t.input.write('\x03');
    assert.equal(await run, 0);
    assert.deepEqual(t.rawModes, [true, false]);
    assert.ok(t.written().endsWith(`\x1b[0m\x1b[?7h\x1b[?25h${LEAVE}`));
    assert.equal(f.emitter.listenerCount('event'), 0);
  });

  test('a failing send keeps the text and shows why', async () => {
    const t = terminal();
    const f = fakeChat({ send: async () => Promise.reject(new Error("'Alice' has not connected yet")) });
    const run = runChatTui(f.chat, 'Bob', t.io);
    await tick();
    t.input.write('keep me\r');
    await tick();
    assert.ok(t.written().includes("! 'Alice' has not connected yet"));
    assert.ok(t.written().replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '').includes('> keep me'));
    t.input.write('\x1bq');
    assert.equal(await run, 0);
  });

  test('an error thrown while running still restores the terminal, then propagates', async () => {
    const t = terminal();
    let calls = 0;
    const base = fakeChat();
    const contacts = (base.chat as unknown as { contacts: () => unknown[] }).contacts;
    const f = fakeChat({
      contacts: () => {
        if (++calls > 1) throw new Error('database is gone');
        return contacts();
      },
    });
    // The first refresh after start (on going online, or on a ChatEvent) throws.
    const rejected = assert.rejects(runChatTui(f.chat, undefined, t.io), /database is gone/);
    f.emitter.emit('event', { type: 'connected', contact: 'Alice', contactId: 'a1' } satisfies ChatEvent);
    await rejected;
    assert.deepEqual(t.rawModes, [true, false]);
    assert.ok(t.written().endsWith(LEAVE));
  });

  test('an error before the first frame restores the terminal too', async () => {
    const t = terminal();
    const f = fakeChat({
      contacts: () => {
        throw new Error('boom');
      },
    });
    await assert.rejects(runChatTui(f.chat, undefined, t.io), /boom/);
    assert.deepEqual(t.rawModes, [true, false]);
    assert.ok(t.written().endsWith(LEAVE));
  });
});
