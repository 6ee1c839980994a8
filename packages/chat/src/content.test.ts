// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that chat payloads round-trip; that decodeContent, fed arbitrary bytes, arbitrary JSON or
// mutated payloads, throws ChatError only (C1); that 100,000 levels of nesting and a 1 MiB string
// are refused quickly with ChatError (C2); and that display names come out without control,
// bidirectional-override or zero-width characters (a contact cannot disguise or reorder text).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import fc from 'fast-check';

import { MAX_NAME_LENGTH, MAX_TEXT_LENGTH, cleanName, decodeContent, encodeContent, type ChatContent } from './content.js';
import { ChatError } from './errors.js';

const utf8 = (s: string) => new TextEncoder().encode(s);

/** Decodes hostile bytes: ChatError is fine, any other exception fails. */
function decodeOrRefuse(b: Uint8Array): ChatContent | undefined {
  try {
    return decodeContent(b);
  } catch (e) {
    if (ChatError.is(e, 'INVALID')) return undefined;
    throw new Error(`threw something other than ChatError INVALID: ${String(e)}`, { cause: e });
  }
}

/** Characters a name must not keep: C0/C1 controls, bidi controls, zero-width characters. */
const FORBIDDEN = /[\p{Cc}\p{Bidi_Control}\u200b-\u200d]/u;
const nasty = fc.constantFrom(
  ...'\u0000\u0007\u0008\t\n\r\u001b\u007f\u0085\u009b\u061c\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069',
);
const nameText = fc.string({ unit: fc.oneof(nasty, fc.constantFrom('a', 'Z', ' ', 'é', '😀', '\u05d0'), fc.string({ unit: 'grapheme', minLength: 1, maxLength: 1 })), maxLength: MAX_NAME_LENGTH });

const content: fc.Arbitrary<ChatContent> = fc.oneof(
  nameText.map((name) => ({ type: 'profile' as const, name: cleanName(name) })),
  fc.string({ unit: 'grapheme', maxLength: 200 }).map((text) => ({ type: 'text' as const, text })),
  fc.constant({ type: 'text' as const, text: 'x'.repeat(MAX_TEXT_LENGTH) }),
);

describe('chat payload round trip', () => {
  test('decodeContent(encodeContent(c)) equals c', () => {
    fc.assert(
      fc.property(content, (c) => assert.deepEqual(decodeContent(encodeContent(c)), c)),
      { numRuns: 2000 },
    );
  });

  test('the layout is a JSON object with its version first', () => {
    assert.equal(new TextDecoder().decode(encodeContent({ type: 'text', text: 'hi' })), '{"v":1,"type":"text","text":"hi"}');
  });
});

describe('decodeContent throws only ChatError (C1)', () => {
  test('arbitrary bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (b) => void decodeOrRefuse(b)), { numRuns: 5000 });
  });

  test('arbitrary JSON values, alone and as fields of a payload', () => {
    const field = fc.jsonValue({ maxDepth: 4 });
    const payload = fc.dictionary(fc.constantFrom('v', 'type', 'name', 'text', '__proto__', 'constructor', 'x'), field, { maxKeys: 5 });
    const withKind = fc.tuple(payload, fc.constantFrom('text', 'profile', 'file', ''), fc.constantFrom(1, 2, '1', null)).map(([p, type, v]) => ({ ...p, v, type }));
    fc.assert(
      fc.property(fc.oneof(field, payload, withKind), (j) => {
        const c = decodeOrRefuse(utf8(JSON.stringify(j) ?? 'null'));
        if (c === undefined) return;
        // Whatever is accepted is one of the two kinds, within its limits.
        if (c.type === 'profile') assert.ok(c.name.length <= MAX_NAME_LENGTH && !FORBIDDEN.test(c.name));
        else assert.ok(c.type === 'text' && typeof c.text === 'string' && c.text.length <= MAX_TEXT_LENGTH);
        assert.deepEqual(Object.keys(c).sort(), c.type === 'profile' ? ['name', 'type'] : ['text', 'type']);
      }),
      { numRuns: 3000 },
    );
  });

  test('mutated payloads (bytes set, deleted, inserted, truncated; invalid UTF-8)', () => {
    const edit = fc.record({ at: fc.nat(), value: fc.integer({ min: 0, max: 255 }), op: fc.constantFrom('set', 'delete', 'insert', 'truncate') }, { noNullPrototype: true });
    fc.assert(
      fc.property(content, fc.array(edit, { minLength: 1, maxLength: 4 }), (c, edits) => {
        let b = Array.from(encodeContent(c));
        for (const e of edits) {
          const i = b.length === 0 ? 0 : e.at % b.length;
          if (e.op === 'set' && b.length > 0) b[i] = e.value;
          else if (e.op === 'delete') b.splice(i, 1);
          else if (e.op === 'insert') b.splice(i, 0, e.value);
          else b = b.slice(0, i);
        }
        decodeOrRefuse(Uint8Array.from(b));
      }),
      { numRuns: 3000 },
    );
  });

  test('wrong versions, kinds and field types are INVALID', () => {
    const bad = [
      '', 'null', '[]', '"text"', '1', '{}', '{"v":2,"type":"text","text":"a"}', '{"v":"1","type":"text","text":"a"}',
      '{"v":1,"type":"file","text":"a"}', '{"v":1,"type":"text"}', '{"v":1,"type":"text","text":1}', '{"v":1,"type":"profile","name":["a"]}',
      `{"v":1,"type":"profile","name":"${'a'.repeat(MAX_NAME_LENGTH + 1)}"}`, `{"v":1,"type":"text","text":"${'a'.repeat(MAX_TEXT_LENGTH + 1)}"}`,
    ];
    for (const s of bad) assert.throws(() => decodeContent(utf8(s)), (e) => ChatError.is(e, 'INVALID'), s);
    assert.throws(() => decodeContent(Uint8Array.of(0x7b, 0xff, 0x7d)), (e) => ChatError.is(e, 'INVALID'), 'invalid UTF-8');
  });
});

describe('hostile sizes are refused quickly (C2)', () => {
  /**
   * The fastest of a few refusals must take well under 100 ms: work that grows with the nesting
   * would take seconds, while a pause of the collector or a busy machine slows one try, not all.
   */
  function refusedQuickly(what: string, bytes: Uint8Array): void {
    let fastest = Infinity;
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      assert.throws(() => decodeContent(bytes), (e) => ChatError.is(e, 'INVALID'), what);
      fastest = Math.min(fastest, performance.now() - t0);
    }
    assert.ok(fastest < 100, `${what} took ${fastest.toFixed(1)} ms at best`);
  }
  const DEPTH = 100_000;

  test('100,000 levels of nesting', () => {
    refusedQuickly('a bare array', utf8('['.repeat(DEPTH) + ']'.repeat(DEPTH)));
    refusedQuickly('nested objects', utf8('{"a":'.repeat(DEPTH) + '1' + '}'.repeat(DEPTH)));
    refusedQuickly('nesting inside a text field', utf8('{"v":1,"type":"text","text":' + '['.repeat(DEPTH) + ']'.repeat(DEPTH) + '}'));
    refusedQuickly('unclosed nesting', utf8('['.repeat(DEPTH)));
  });

  test('a 1 MiB string', () => {
    refusedQuickly('a 1 MiB text', encodeContent({ type: 'text', text: 'x'.repeat(1 << 20) }));
    refusedQuickly('a 1 MiB name', encodeContent({ type: 'profile', name: '\u202e'.repeat(1 << 19) }));
    refusedQuickly('a 1 MiB unterminated string', utf8('{"v":1,"type":"text","text":"' + 'x'.repeat(1 << 20)));
  });
});

describe('display names', () => {
  test('cleanName leaves no control, bidi or zero-width character, and trims', () => {
    fc.assert(
      fc.property(nameText, (n) => {
        const c = cleanName(n);
        assert.ok(!FORBIDDEN.test(c), `kept a forbidden character: ${JSON.stringify(c)}`);
        assert.equal(c, c.trim());
        assert.equal(cleanName(c), c, 'cleaning twice changes nothing');
      }),
      { numRuns: 3000 },
    );
  });

  test('names from contacts are cleaned by decodeContent', () => {
    const spoof = 'Alice\u202egnp.exe\u2066\u061c\u200b\u0007\u001b[2J';
    const c = decodeContent(encodeContent({ type: 'profile', name: spoof }));
    assert.deepEqual(c, { type: 'profile', name: 'Alicegnp.exe[2J' });
    fc.assert(
      fc.property(nameText, (n) => {
        const d = decodeContent(encodeContent({ type: 'profile', name: n }));
        assert.ok(d.type === 'profile' && !FORBIDDEN.test(d.name));
      }),
      { numRuns: 2000 },
    );
  });
});
