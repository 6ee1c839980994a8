// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that relay addresses (host names, IPv4, IPv6 in brackets) round-trip through format and parse, and that parse refuses any other text with BAD_ADDRESS only.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { isIPv6 } from 'node:net';

import { MAX_ADDRESS_LENGTH, MAX_PASSWORD_LENGTH, ProtocolError, formatRelayAddress, isRelayPassword, parseRelayAddress, relayName, toBase64Url } from '@murmure/protocol';
import type { RelayAddress } from '@murmure/protocol';

/** Parses hostile text: BAD_ADDRESS is fine, any other exception fails. Returns the address, if any. */
function parseOrRefuse(text: string): RelayAddress | undefined {
  try {
    return parseRelayAddress(text);
  } catch (e) {
    if (ProtocolError.is(e, 'BAD_ADDRESS')) return undefined;
    throw new Error(`threw something other than ProtocolError BAD_ADDRESS: ${String(e)}`, { cause: e });
  }
}

const fingerprint = fc.uint8Array({ minLength: 32, maxLength: 32 });
const host = fc.oneof(fc.domain(), fc.ipV4(), fc.ipV6(), fc.constantFrom('localhost', '127.0.0.1', '::1', 'relay-1.example.org', 'A.B'));
const port = fc.integer({ min: 1, max: 65_535 });
const address: fc.Arbitrary<RelayAddress> = fc.tuple(fingerprint, host, port).map(([f, h, p]) => ({ fingerprint: f, host: h, port: p }));

const FP = toBase64Url(new Uint8Array(32).map((_, i) => i));

describe('relay address round trip', () => {
  test('parseRelayAddress(formatRelayAddress(a)) equals a for host names, IPv4 and IPv6', () => {
    fc.assert(
      fc.property(address, (a) => {
        const text = formatRelayAddress(a);
        assert.equal(text.includes(`[${a.host}]`), a.host.includes(':'));
        assert.deepEqual(parseRelayAddress(text), a);
      }),
      { numRuns: 3000 },
    );
  });

  test('the text form: base64url fingerprint, host (IPv6 in brackets), port', () => {
    const fp = new Uint8Array(32).map((_, i) => i);
    assert.equal(formatRelayAddress({ fingerprint: fp, host: 'relay.example.org', port: 5224 }), `murmure://${FP}@relay.example.org:5224`);
    assert.equal(formatRelayAddress({ fingerprint: fp, host: '2001:db8::1', port: 443 }), `murmure://${FP}@[2001:db8::1]:443`);
    assert.deepEqual(parseRelayAddress(`murmure://${FP}@[::1]:1`), { fingerprint: fp, host: '::1', port: 1 });
    assert.deepEqual(parseRelayAddress(`murmure://${FP}@10.0.0.1:65535`), { fingerprint: fp, host: '10.0.0.1', port: 65_535 });
    assert.deepEqual(parseRelayAddress(`  murmure://${FP}@relay:0443\n`), { fingerprint: fp, host: 'relay', port: 443 });
  });

  test('any address that parses formats to text that parses to the same address', () => {
    const hostText = fc.oneof(
      host,
      host.map((h) => `[${h}]`),
      fc.string({ unit: fc.constantFrom(...'0123456789abcdefABCDEF:.'), minLength: 1, maxLength: 12 }).map((h) => `[${h}]`),
      fc.string({ unit: fc.constantFrom(...'az09-.'), minLength: 1, maxLength: 12 }),
    );
    const text = fc.tuple(hostText, fc.stringMatching(/^\d{1,5}$/)).map(([h, p]) => `murmure://${FP}@${h}:${p}`);
    fc.assert(
      fc.property(text, (t) => {
        const a = parseOrRefuse(t);
        if (a === undefined) return;
        assert.deepEqual(parseRelayAddress(formatRelayAddress(a)), a);
      }),
      { numRuns: 4000 },
    );
  });

  test('a bracketed host with no colon is not an IPv6 address and is refused', () => {
    for (const h of ['[..]', '[.]', '[0.]', '[1.2.3.4]', '[abcd]']) {
      assert.throws(() => parseRelayAddress(`murmure://${FP}@${h}:443`), (e) => ProtocolError.is(e, 'BAD_ADDRESS'), h);
    }
  });
});

describe('queue-creation passwords in addresses', () => {
  const password = fc.string({ unit: fc.constantFrom(...'abcXYZ019-._~'), minLength: 1, maxLength: MAX_PASSWORD_LENGTH });
  const withPassword: fc.Arbitrary<RelayAddress> = fc.tuple(address, password).map(([a, p]) => ({ ...a, password: p }));

  test('an address with a password round-trips when formatted with it, and formats without it by default', () => {
    fc.assert(
      fc.property(withPassword, (a) => {
        const text = formatRelayAddress(a, { withPassword: true });
        assert.ok(text.includes(`:${a.password}@`));
        assert.deepEqual(parseRelayAddress(text), a);
        const bare = { fingerprint: a.fingerprint, host: a.host, port: a.port };
        assert.deepEqual(parseRelayAddress(formatRelayAddress(a)), bare, 'the default form has no password');
        assert.equal(relayName(text), formatRelayAddress(bare), 'the name of a relay has no password');
        assert.ok(!formatRelayAddress(a).includes(`:${a.password}@`), 'the password is not in the default form');
      }),
      { numRuns: 2000 },
    );
  });

  test('the text form: the password after the fingerprint and a colon', () => {
    const fp = new Uint8Array(32).map((_, i) => i);
    assert.deepEqual(parseRelayAddress(`murmure://${FP}:s3cret-Pass.word~1@relay.example.org:5224`), { fingerprint: fp, host: 'relay.example.org', port: 5224, password: 's3cret-Pass.word~1' });
    assert.equal(formatRelayAddress({ fingerprint: fp, host: '::1', port: 1, password: 'pw' }, { withPassword: true }), `murmure://${FP}:pw@[::1]:1`);
    assert.equal(parseRelayAddress(`murmure://${FP}:${'p'.repeat(MAX_PASSWORD_LENGTH)}@relay:1`).password?.length, MAX_PASSWORD_LENGTH);
    assert.ok(isRelayPassword('a') && isRelayPassword('A-z_0.9~') && !isRelayPassword('') && !isRelayPassword('a b') && !isRelayPassword('p'.repeat(MAX_PASSWORD_LENGTH + 1)));
  });

  const PASSWORD_REASON = /a relay password must have 1-128 characters, each a letter, a digit or one of - \. _ ~/;
  const SHAPE_REASON = /relay address must look like murmure:\/\/FINGERPRINT@HOST:PORT/;
  for (const [what, pw, reason] of [
    ['an empty password', '', PASSWORD_REASON],
    ['a password over MAX_PASSWORD_LENGTH', 'p'.repeat(MAX_PASSWORD_LENGTH + 1), PASSWORD_REASON],
    ['a space in the password', 'two words', PASSWORD_REASON],
    ['a colon in the password', 'a:b', PASSWORD_REASON],
    ['a slash in the password', 'a/b', PASSWORD_REASON],
    ['a percent sign in the password', 'a%20b', PASSWORD_REASON],
    ['a non-ASCII password', 'mot-de-passe-\u00e9', PASSWORD_REASON],
    // The host may not hold an @, so a second one leaves no host: the shape is wrong.
    ['an @ in the password', 'a@b', SHAPE_REASON],
  ] as const) {
    test(`an address with ${what} is BAD_ADDRESS, with a reason`, () => {
      assert.throws(
        () => parseRelayAddress(`murmure://${FP}:${pw}@relay:1`),
        (e) => ProtocolError.is(e, 'BAD_ADDRESS') && reason.test(e.message),
      );
    });
  }
});

describe('relay address edge cases', () => {
  const bad: [string, string][] = [
    ['another scheme', `https://${FP}@relay.example.org:443`],
    ['no port', `murmure://${FP}@relay.example.org`],
    ['port 0', `murmure://${FP}@relay.example.org:0`],
    ['port 65536', `murmure://${FP}@relay.example.org:65536`],
    ['a six-digit port', `murmure://${FP}@relay.example.org:100000`],
    ['a 31-byte fingerprint', `murmure://${toBase64Url(new Uint8Array(31))}@relay:1`],
    ['a 33-byte fingerprint', `murmure://${toBase64Url(new Uint8Array(33))}@relay:1`],
    ['a non-canonical fingerprint', `murmure://${FP.slice(0, -1)}B@relay:1`],
    ['a padded fingerprint', `murmure://${FP}=@relay:1`],
    ['no fingerprint', 'murmure://@relay:1'],
    ['an underscore in the host', `murmure://${FP}@re_lay:1`],
    ['a label starting with a hyphen', `murmure://${FP}@-relay.org:1`],
    ['an empty label', `murmure://${FP}@relay..org:1`],
    ['a 64-character label', `murmure://${FP}@${'a'.repeat(64)}.org:1`],
    ['an unbracketed IPv6 address', `murmure://${FP}@::1:443`],
    ['a path', `murmure://${FP}@relay:1/x`],
    ['a zone id', `murmure://${FP}@[fe80::1%eth0]:1`],
    ['a host name over 253 characters', `murmure://${FP}@${'a.'.repeat(127)}a:1`],
    ['text longer than MAX_ADDRESS_LENGTH', `murmure://${FP}@${'a.'.repeat(120)}a:1${'1'.repeat(MAX_ADDRESS_LENGTH)}`],
    ['an IPv4 octet over 255', `murmure://${FP}@999.1.1.1:1`],
    ['three IPv4 octets', `murmure://${FP}@1.2.3:1`],
    ['an IPv4 octet with a leading zero', `murmure://${FP}@01.2.3.4:1`],
    ['an IPv4 address as one number', `murmure://${FP}@2130706433:1`],
    ['an IPv4 address in hex', `murmure://${FP}@0x7f000001:1`],
    ['an IPv4 address with a hex octet', `murmure://${FP}@0x7f.0.0.1:1`],
    ['an IPv4 address with a short form', `murmure://${FP}@127.1:1`],
    ['a name ending in a hex number', `murmure://${FP}@relay.0x1:1`],
    ['a name ending in a decimal label', `murmure://${FP}@relay.example.1:1`],
    ['a bare 0x', `murmure://${FP}@0x:1`],
    ['nine IPv6 groups', `murmure://${FP}@[1:2:3:4:5:6:7:8:9]:1`],
    ['two :: in IPv6', `murmure://${FP}@[::1::2]:1`],
    ['a five-digit IPv6 group', `murmure://${FP}@[12345::]:1`],
    ['an IPv6 address with a bad IPv4 tail', `murmure://${FP}@[::ffff:1.2.3.256]:1`],
    ['an IPv4 part before ::', `murmure://${FP}@[1.2.3.4::]:1`],
    ['an IPv4 part in the middle', `murmure://${FP}@[1:2:1.2.3.4::]:1`],
    ['nothing', ''],
  ];
  test('names whose last label only looks like a number, or which have numbers elsewhere, are host names', () => {
    for (const h of ['0xrelay.example', 'relay.0xg', 'relay1.example', '1.relay.org', '127.0.0.1.example', 'x0x1', 'relay.1a']) {
      assert.equal(parseRelayAddress(`murmure://${FP}@${h}:1`).host, h);
    }
  });
  test('white space around an address does not count towards MAX_ADDRESS_LENGTH', () => {
    const a = parseRelayAddress(`${' '.repeat(MAX_ADDRESS_LENGTH)}murmure://${FP}@relay:1\n`);
    assert.equal(a.host, 'relay');
  });
  test('a bracketed host is taken exactly when it is an IPv6 address (checked against node:net for 20,000 strings)', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: fc.constantFrom(...'0123456789abcdefABCDEF:.'), minLength: 1, maxLength: 45 }), fc.ipV6()), (h) => {
        const parsed = parseOrRefuse(`murmure://${FP}@[${h}]:1`);
        assert.equal(parsed !== undefined, h.includes(':') && isIPv6(h), h);
      }),
      { numRuns: 20_000 },
    );
  });
  for (const [what, text] of bad) {
    test(`an address with ${what} is BAD_ADDRESS`, () => {
      assert.throws(() => parseRelayAddress(text), (e) => ProtocolError.is(e, 'BAD_ADDRESS'));
    });
  }
});

describe('relay address fuzz', () => {
  test('arbitrary text throws only ProtocolError BAD_ADDRESS', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'binary', maxLength: 80 }), fc.string({ unit: 'grapheme', maxLength: 600 })), (t) => {
        parseOrRefuse(t);
      }),
      { numRuns: 3000 },
    );
  });

  test('valid addresses with characters changed, removed or inserted throw only BAD_ADDRESS, and what parses re-parses the same', () => {
    const edit = fc.tuple(fc.constantFrom('set', 'delete', 'insert'), fc.nat(), fc.constantFrom(...'[]:@/._-=%#0aZ ', '\u0000', '\u00e9', '\u{1f600}'));
    const mutatedText = fc.tuple(address.map(formatRelayAddress), fc.array(edit, { minLength: 1, maxLength: 3 })).map(([t, edits]) =>
      edits.reduce((s, [kind, pos, ch]) => {
        const at = pos % (s.length + 1);
        if (kind === 'delete') return s.slice(0, at) + s.slice(at + 1);
        if (kind === 'insert') return s.slice(0, at) + ch + s.slice(at);
        return s.slice(0, at) + ch + s.slice(at + 1);
      }, t),
    );
    fc.assert(
      fc.property(mutatedText, (t) => {
        const a = parseOrRefuse(t);
        if (a !== undefined) assert.deepEqual(parseRelayAddress(formatRelayAddress(a, { withPassword: true })), a);
      }),
      { numRuns: 4000 },
    );
  });
});
