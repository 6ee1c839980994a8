// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that every agent-level codec (invitation links, invitation data, queue frame, session
// payload, envelope) round-trips, with a few committed hex vectors; that arbitrary and mutated
// bytes (or text, for links) make the decoders throw ProtocolError only, and that whatever they
// accept re-encodes to something that decodes the same (C1); and that lengths and counts declared
// far beyond the input are refused quickly without allocating for them (C2).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import {
  AGENT_VERSION,
  HASH_LENGTH,
  ID_LENGTH,
  KEY_LENGTH,
  LINK_KEY_LENGTH,
  MAX_ADDRESS_LENGTH,
  MAX_BATCH_PAYLOADS,
  MAX_BATCH_SIZE,
  MAX_CHAT_PAYLOAD,
  MAX_INVITATION_DATA,
  MAX_RECEIPT_SEQS,
  ProtocolError,
  QUEUE_BOX_NONCE_LENGTH,
  QUEUE_BOX_PADDED,
  decodeEnvelope,
  decodeInvitationData,
  decodeQueueFrame,
  decodeSessionBatch,
  decodeSessionPayload,
  decodeSessionReset,
  encodeEnvelope,
  encodeInvitationData,
  encodeQueueFrame,
  encodeSessionBatch,
  encodeSessionPayload,
  encodeSessionReset,
  formatInvitationLink,
  parseInvitationLink,
  toBase64Url,
  toHex,
} from '@murmure/protocol';
import type { Envelope, EnvelopeBody, InvitationData, InvitationLink, QueueAddress, QueueFrame, RelayAddress, SessionPayload } from '@murmure/protocol';

/** Runs a decoder on hostile input: a ProtocolError is fine, any other exception fails the test. */
function decodeOrRefuse<TIn, TOut>(input: TIn, decode: (i: TIn) => TOut): TOut | undefined {
  try {
    return decode(input);
  } catch (e) {
    if (ProtocolError.is(e)) return undefined;
    throw new Error(`threw something other than ProtocolError: ${String(e)}`, { cause: e });
  }
}

/**
 * Hostile input: refused with ProtocolError, or accepted as a value that encodes to bytes which
 * decode to the same value (text fields such as the relay address are normalised on the way).
 */
function refusedOrStable<TIn, TOut>(input: TIn, decode: (i: TIn) => TOut, encode: (x: TOut) => TIn): void {
  const v = decodeOrRefuse(input, decode);
  if (v === undefined) return;
  assert.deepEqual(decode(encode(v)), v);
}

/** fc.record with ordinary objects (deepEqual compares prototypes). */
const rec = <T>(model: { [K in keyof T]: fc.Arbitrary<T[K]> }): fc.Arbitrary<T> => fc.record(model, { noNullPrototype: true });
const bytesN = (n: number) => fc.uint8Array({ minLength: n, maxLength: n });
const host = fc.oneof(fc.domain(), fc.ipV4(), fc.ipV6(), fc.constantFrom('localhost', '127.0.0.1', '::1'));
const relay: fc.Arbitrary<RelayAddress> = fc
  .tuple(bytesN(32), host, fc.integer({ min: 1, max: 65_535 }))
  .map(([fingerprint, h, port]) => ({ fingerprint, host: h, port }));
const kind = fc.constantFrom('invitation' as const, 'address' as const);
const queue: fc.Arbitrary<QueueAddress> = rec({ relay, sndId: bytesN(ID_LENGTH), e2eKey: bytesN(KEY_LENGTH) });
const link: fc.Arbitrary<InvitationLink> = rec({ kind, relay, linkId: bytesN(ID_LENGTH), key: bytesN(LINK_KEY_LENGTH) });
/** Mostly short fields, now and then one at its limit. */
const field = (max: number) => fc.oneof({ arbitrary: fc.uint8Array({ maxLength: 64 }), weight: 8 }, { arbitrary: fc.uint8Array({ maxLength: max }), weight: 1 }, { arbitrary: bytesN(max), weight: 1 });
const invitationData: fc.Arbitrary<InvitationData> = rec({ version: fc.constant(AGENT_VERSION), kind, queue, bundle: field(MAX_INVITATION_DATA) });
const queueFrame: fc.Arbitrary<QueueFrame> = rec({
  senderKey: fc.option(bytesN(KEY_LENGTH), { nil: null }),
  nonce: bytesN(QUEUE_BOX_NONCE_LENGTH),
  sealed: fc.uint8Array({ minLength: 16, maxLength: 256 }),
});
const printable = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 64 });
const sessionPayload: fc.Arbitrary<SessionPayload> = fc.oneof(
  rec({ prekey: fc.constant(true), senderName: printable, body: field(QUEUE_BOX_PADDED) }),
  rec({ prekey: fc.constant(false), senderName: fc.constant(null), body: field(QUEUE_BOX_PADDED) }),
);
/** Batches of small payloads (a batch's payloads share one box). */
const sessionBatch: fc.Arbitrary<SessionPayload[]> = fc.array(
  fc.oneof(
    rec({ prekey: fc.constant(true), senderName: printable, body: fc.uint8Array({ maxLength: 200 }) }),
    rec({ prekey: fc.constant(false), senderName: fc.constant(null), body: fc.uint8Array({ maxLength: 200 }) }),
  ),
  { minLength: 2, maxLength: MAX_BATCH_PAYLOADS },
);
const encodeBatch = (ps: readonly SessionPayload[]) => encodeSessionBatch(ps.map(encodeSessionPayload));
const seq = fc.oneof(fc.maxSafeNat(), fc.constantFrom(0, 1, 2 ** 32, Number.MAX_SAFE_INTEGER));
const payload = field(MAX_CHAT_PAYLOAD);
const envelopeBody: fc.Arbitrary<EnvelopeBody> = fc.oneof(
  rec({ type: fc.constant('CONFIRMATION' as const), replyQueue: queue, replySenderKey: bytesN(KEY_LENGTH), senderAuthKey: bytesN(KEY_LENGTH), payload }),
  rec({ type: fc.constant('REPLY' as const), newQueue: fc.option(queue, { nil: null }), payload }),
  rec({ type: fc.constant('MESSAGE' as const), payload }),
  rec({ type: fc.constant('RECEIPT' as const), seqs: fc.array(seq, { maxLength: MAX_RECEIPT_SEQS }) }),
  rec({ type: fc.constant('SWITCH' as const), newQueue: queue, senderKey: bytesN(KEY_LENGTH) }),
  rec({ type: fc.constant('RESYNC' as const), lastRcvSeq: seq, lastRcvHash: bytesN(HASH_LENGTH), senderRestored: fc.boolean() }),
);
const envelope: fc.Arbitrary<Envelope> = rec({ seq, prevHash: bytesN(HASH_LENGTH), sentAt: seq, body: envelopeBody });

/** Edits of valid bytes: flip, set, delete, insert, truncate, append; each at a random place. */
type Edit = { op: 'flip' | 'set' | 'delete' | 'insert' | 'truncate' | 'append'; at: number; value: number; data: Uint8Array };
const edits = fc.array(
  rec({
    op: fc.constantFrom('flip' as const, 'set' as const, 'delete' as const, 'insert' as const, 'truncate' as const, 'append' as const),
    at: fc.nat(),
    value: fc.integer({ min: 0, max: 255 }),
    data: fc.uint8Array({ maxLength: 8 }),
  }),
  { minLength: 1, maxLength: 4 },
);
function mutate(bytes: Uint8Array, es: readonly Edit[]): Uint8Array {
  let b = Uint8Array.from(bytes);
  for (const e of es) {
    const i = b.length === 0 ? 0 : e.at % b.length;
    switch (e.op) {
      case 'flip':
        if (b.length > 0) b[i] = (b[i] as number) ^ (1 << e.value % 8);
        break;
      case 'set':
        if (b.length > 0) b[i] = e.value;
        break;
      case 'delete':
        b = Uint8Array.from([...b.subarray(0, i), ...b.subarray(i + 1)]);
        break;
      case 'insert':
        b = Uint8Array.from([...b.subarray(0, i), ...e.data, ...b.subarray(i)]);
        break;
      case 'truncate':
        b = b.slice(0, i);
        break;
      case 'append':
        b = Uint8Array.from([...b, ...e.data]);
        break;
    }
  }
  return b;
}

/** Arbitrary bytes, biased toward the first bytes a decoder checks (version, tags). */
function hostileBytes(prefixes: readonly number[][]): fc.Arbitrary<Uint8Array> {
  return fc.oneof(
    fc.uint8Array({ maxLength: 600 }),
    fc.tuple(fc.constantFrom(...prefixes), fc.uint8Array({ maxLength: 600 })).map(([p, rest]) => Uint8Array.from([...p, ...rest])),
  );
}

const FP = new Uint8Array(32).map((_, i) => i);
const RELAY: RelayAddress = { fingerprint: FP, host: 'relay.example', port: 5224 };
const QUEUE: QueueAddress = { relay: RELAY, sndId: new Uint8Array(ID_LENGTH).fill(0x11), e2eKey: new Uint8Array(KEY_LENGTH).fill(0x22) };
const RELAY_HEX = toHex(new TextEncoder().encode(`murmure://${toBase64Url(FP)}@relay.example:5224`));

describe('agent codecs round trip', () => {
  test('parseInvitationLink(formatInvitationLink(l)) equals l', () => {
    fc.assert(
      fc.property(link, (l) => {
        const text = formatInvitationLink(l);
        assert.match(text, l.kind === 'invitation' ? /^murmure:\/\/[^/]+\/i#/ : /^murmure:\/\/[^/]+\/a#/);
        assert.deepEqual(parseInvitationLink(text), l);
        assert.deepEqual(parseInvitationLink(`  ${text}\n`), l, 'surrounding white space (a pasted link) is ignored');
      }),
      { numRuns: 1000 },
    );
  });

  test('a link whose relay address carries a password is refused: links are made without it', () => {
    const text = formatInvitationLink({ kind: 'invitation', relay: { fingerprint: new Uint8Array(32), host: 'relay.example', port: 5224 }, linkId: new Uint8Array(ID_LENGTH), key: new Uint8Array(32) });
    const withPassword = text.replace('@relay.example', ':secret@relay.example');
    assert.throws(() => parseInvitationLink(withPassword), (e) => ProtocolError.is(e, 'BAD_ADDRESS') && e.message === 'an invitation link carries no relay password');
    assert.doesNotThrow(() => parseInvitationLink(text));
  });

  test('a queue address that carries a relay password is refused: queues are written without it', () => {
    const relay = { fingerprint: new Uint8Array(32), host: 'relay.example', port: 5224 };
    const good = encodeInvitationData({ version: 1, kind: 'invitation', queue: { relay, sndId: new Uint8Array(ID_LENGTH), e2eKey: new Uint8Array(KEY_LENGTH) }, bundle: new Uint8Array(10) });
    const len = (good[2]! << 8) | good[3]!;
    const address = Buffer.from(good.subarray(4, 4 + len)).toString('ascii').replace('@relay.example', ':secret@relay.example');
    const bad = Buffer.concat([good.subarray(0, 2), Buffer.from([address.length >> 8, address.length & 0xff]), Buffer.from(address, 'ascii'), good.subarray(4 + len)]);
    assert.throws(() => decodeInvitationData(new Uint8Array(bad)), (e) => ProtocolError.is(e, 'BAD_ADDRESS') && e.message === 'a queue address carries no relay password');
    assert.equal(decodeInvitationData(good).queue.relay.password, undefined);
  });

  test('invitation data', () => {
    fc.assert(
      fc.property(invitationData, (d) => assert.deepEqual(decodeInvitationData(encodeInvitationData(d)), d)),
      { numRuns: 500 },
    );
  });

  test('queue frame', () => {
    fc.assert(
      fc.property(queueFrame, (f) => {
        const bytes = encodeQueueFrame(f);
        assert.equal(bytes.length, 2 + (f.senderKey === null ? 0 : KEY_LENGTH) + QUEUE_BOX_NONCE_LENGTH + f.sealed.length);
        assert.deepEqual(decodeQueueFrame(bytes), f);
      }),
      { numRuns: 1000 },
    );
  });

  test('session payload', () => {
    fc.assert(
      fc.property(sessionPayload, (p) => assert.deepEqual(decodeSessionPayload(encodeSessionPayload(p)), p)),
      { numRuns: 500 },
    );
  });

  test('session reset', () => {
    fc.assert(
      fc.property(rec({ sentAt: seq, nextSendSeq: seq, lastRcvSeq: seq, lastRcvHash: bytesN(HASH_LENGTH), bundle: field(MAX_INVITATION_DATA) }), (p) => assert.deepEqual(decodeSessionReset(encodeSessionReset(p)), p)),
      { numRuns: 300 },
    );
  });

  test('session batch', () => {
    fc.assert(
      fc.property(sessionBatch, (ps) => assert.deepEqual(decodeSessionBatch(encodeBatch(ps)), ps)),
      { numRuns: 300 },
    );
  });

  test('envelope, every body type', () => {
    fc.assert(
      fc.property(envelope, (e) => assert.deepEqual(decodeEnvelope(encodeEnvelope(e)), e)),
      { numRuns: 1000 },
    );
  });

  test('encoders refuse values the decoders would refuse', () => {
    const tooMany = { seq: 1, prevHash: new Uint8Array(HASH_LENGTH), sentAt: 0, body: { type: 'RECEIPT' as const, seqs: new Array<number>(MAX_RECEIPT_SEQS + 1).fill(1) } };
    assert.throws(() => encodeEnvelope(tooMany), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    const big = { seq: 1, prevHash: new Uint8Array(HASH_LENGTH), sentAt: 0, body: { type: 'MESSAGE' as const, payload: new Uint8Array(MAX_CHAT_PAYLOAD + 1) } };
    assert.throws(() => encodeEnvelope(big), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.throws(() => encodeInvitationData({ version: AGENT_VERSION, kind: 'invitation', queue: QUEUE, bundle: new Uint8Array(MAX_INVITATION_DATA + 1) }), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    assert.throws(() => encodeSessionPayload({ prekey: true, senderName: 'é', body: new Uint8Array(1) }), (e) => ProtocolError.is(e, 'BAD_VALUE'));
    assert.throws(() => encodeQueueFrame({ senderKey: null, nonce: new Uint8Array(11), sealed: new Uint8Array(16) }), (e) => ProtocolError.is(e));
    const one = encodeSessionPayload({ prekey: false, senderName: null, body: Uint8Array.of(9) });
    assert.throws(() => encodeSessionBatch([one]), (e) => ProtocolError.is(e, 'BAD_VALUE'));
    assert.throws(() => encodeSessionBatch(new Array<Uint8Array>(MAX_BATCH_PAYLOADS + 1).fill(one)), (e) => ProtocolError.is(e, 'BAD_VALUE'));
    const half = encodeSessionPayload({ prekey: false, senderName: null, body: new Uint8Array(MAX_BATCH_SIZE / 2) });
    assert.throws(() => encodeSessionBatch([half, half]), (e) => ProtocolError.is(e, 'TOO_LARGE'));
    const reset = encodeSessionReset({ sentAt: 1, nextSendSeq: 1, lastRcvSeq: 0, lastRcvHash: new Uint8Array(HASH_LENGTH), bundle: Uint8Array.of(1) });
    assert.throws(() => encodeSessionBatch([one, reset]), (e) => ProtocolError.is(e, 'BAD_TAG'));
    const shortKey = { seq: 1, prevHash: new Uint8Array(HASH_LENGTH), sentAt: 0, body: { type: 'SWITCH' as const, newQueue: QUEUE, senderKey: new Uint8Array(KEY_LENGTH - 1) } };
    assert.throws(() => encodeEnvelope(shortKey), (e) => ProtocolError.is(e));
  });
});

describe('agent codecs: committed vectors', () => {
  test('queue frame with and without the sender key', () => {
    const nonce = new Uint8Array(QUEUE_BOX_NONCE_LENGTH).fill(0x0a);
    const sealed = new Uint8Array(16).fill(0xee);
    const first = encodeQueueFrame({ senderKey: new Uint8Array(KEY_LENGTH).fill(0x33), nonce, sealed });
    assert.equal(toHex(first), '01' + '00' + '33'.repeat(32) + '0a'.repeat(12) + 'ee'.repeat(16));
    const later = encodeQueueFrame({ senderKey: null, nonce, sealed });
    assert.equal(toHex(later), '01' + '01' + '0a'.repeat(12) + 'ee'.repeat(16));
    assert.deepEqual(decodeQueueFrame(later), { senderKey: null, nonce, sealed });
  });

  test('session payloads: PreKey (type 3, with sender name) and normal (type 2)', () => {
    assert.equal(toHex(encodeSessionPayload({ prekey: true, senderName: 'ab', body: Uint8Array.of(1, 2) })), '03' + '02' + '6162' + '0002' + '0102');
    assert.equal(toHex(encodeSessionPayload({ prekey: false, senderName: null, body: Uint8Array.of(9) })), '02' + '0001' + '09');
  });

  test('session reset (type 4): a libsignal payload decoder refuses it, and the reset decoder refuses the others', () => {
    const reset = encodeSessionReset({ sentAt: 5, nextSendSeq: 7, lastRcvSeq: 3, lastRcvHash: new Uint8Array(HASH_LENGTH).fill(0xcd), bundle: Uint8Array.of(1, 2) });
    assert.equal(toHex(reset), '04' + '0000000000000005' + '0000000000000007' + '0000000000000003' + 'cd'.repeat(32) + '0002' + '0102');
    assert.throws(() => decodeSessionPayload(reset), (e) => ProtocolError.is(e, 'BAD_TAG'));
    assert.throws(() => decodeSessionReset(encodeSessionPayload({ prekey: false, senderName: null, body: Uint8Array.of(9) })), (e) => ProtocolError.is(e, 'BAD_TAG'));
    assert.throws(() => decodeSessionReset(Uint8Array.of(4, ...new Uint8Array(24), ...new Uint8Array(HASH_LENGTH), 0xff, 0xff)), (e) => ProtocolError.is(e, 'TOO_LARGE'));
  });

  test('session batch (type 5): a count, then each payload with its length; the payload decoder refuses it', () => {
    const a = encodeSessionPayload({ prekey: false, senderName: null, body: Uint8Array.of(9) });
    const b = encodeSessionPayload({ prekey: true, senderName: 'ab', body: Uint8Array.of(1, 2) });
    const batch = encodeSessionBatch([a, b]);
    assert.equal(toHex(batch), '05' + '02' + '0004' + '02000109' + '0008' + '0302616200020102');
    assert.throws(() => decodeSessionPayload(batch), (e) => ProtocolError.is(e, 'BAD_TAG'));
    assert.throws(() => decodeSessionBatch(a), (e) => ProtocolError.is(e, 'BAD_TAG'));
    assert.throws(() => decodeSessionBatch(Uint8Array.of(5, 1, 0, 4, 2, 0, 1, 9)), (e) => ProtocolError.is(e, 'BAD_VALUE'));
    assert.throws(() => decodeSessionBatch(Uint8Array.of(5, 2, 0, 4, 2, 0, 1, 9, 0, 5, ...batch.subarray(0, 5))), (e) => ProtocolError.is(e, 'BAD_TAG'));
  });

  test('envelopes: message, receipt, reply without and with a queue', () => {
    const head = '01' + '0000000000000007' + 'ab'.repeat(32) + '0000018c00000000';
    const base = { seq: 7, prevHash: new Uint8Array(HASH_LENGTH).fill(0xab), sentAt: 0x18c_0000_0000 };
    assert.equal(toHex(encodeEnvelope({ ...base, body: { type: 'MESSAGE', payload: Uint8Array.of(0x68, 0x69) } })), head + '03' + '0002' + '6869');
    assert.equal(toHex(encodeEnvelope({ ...base, body: { type: 'RECEIPT', seqs: [1, 2] } })), head + '04' + '0002' + '0000000000000001' + '0000000000000002');
    assert.equal(toHex(encodeEnvelope({ ...base, body: { type: 'REPLY', newQueue: null, payload: new Uint8Array(0) } })), head + '02' + '00' + '0000');
    const withQueue = encodeEnvelope({ ...base, body: { type: 'REPLY', newQueue: QUEUE, payload: new Uint8Array(0) } });
    const addrLen = RELAY_HEX.length / 2;
    assert.equal(toHex(withQueue), head + '02' + '01' + addrLen.toString(16).padStart(4, '0') + RELAY_HEX + '11'.repeat(24) + '22'.repeat(32) + '0000');
  });

  test('envelope: switch (new queue and sender key)', () => {
    const head = '01' + '0000000000000007' + 'ab'.repeat(32) + '0000018c00000000';
    const e = { seq: 7, prevHash: new Uint8Array(HASH_LENGTH).fill(0xab), sentAt: 0x18c_0000_0000, body: { type: 'SWITCH' as const, newQueue: QUEUE, senderKey: new Uint8Array(KEY_LENGTH).fill(0x44) } };
    const bytes = encodeEnvelope(e);
    const addrLen = RELAY_HEX.length / 2;
    assert.equal(toHex(bytes), head + '05' + addrLen.toString(16).padStart(4, '0') + RELAY_HEX + '11'.repeat(24) + '22'.repeat(32) + '44'.repeat(32));
    assert.deepEqual(decodeEnvelope(bytes), e);
    assert.throws(() => decodeEnvelope(bytes.subarray(0, -1)), (x) => ProtocolError.is(x, 'TRUNCATED'));
    assert.throws(() => decodeEnvelope(Uint8Array.from([...bytes, 0])), (x) => ProtocolError.is(x, 'TRAILING'));
  });

  test('invitation data and an invitation link', () => {
    const d = encodeInvitationData({ version: 1, kind: 'address', queue: QUEUE, bundle: Uint8Array.of(0xbb) });
    assert.equal(toHex(d), '01' + '02' + (RELAY_HEX.length / 2).toString(16).padStart(4, '0') + RELAY_HEX + '11'.repeat(24) + '22'.repeat(32) + '0001' + 'bb');
    const l = formatInvitationLink({ kind: 'invitation', relay: RELAY, linkId: new Uint8Array(ID_LENGTH), key: new Uint8Array(LINK_KEY_LENGTH).fill(0xff) });
    assert.equal(l, `murmure://${toBase64Url(FP)}@relay.example:5224/i#${'A'.repeat(32)}.${'_'.repeat(42)}8`);
  });
});

describe('agent decoders throw only ProtocolError (C1)', () => {
  test('arbitrary bytes', () => {
    const v = AGENT_VERSION;
    fc.assert(
      fc.property(hostileBytes([[v, 1], [v, 2], [0], [v + 1]]), (b) => refusedOrStable(b, decodeInvitationData, encodeInvitationData)),
      { numRuns: 5000 },
    );
    fc.assert(
      fc.property(hostileBytes([[v, 0], [v, 1], [v, 2], [0]]), (b) => refusedOrStable(b, decodeQueueFrame, encodeQueueFrame)),
      { numRuns: 5000 },
    );
    fc.assert(
      fc.property(hostileBytes([[2], [3], [3, 0], [2, 0, 0]]), (b) => refusedOrStable(b, decodeSessionPayload, encodeSessionPayload)),
      { numRuns: 5000 },
    );
    fc.assert(
      fc.property(hostileBytes([[5], [5, 2], [5, 2, 0], [5, 2, 0, 1, 2], [5, 3, 0, 2, 2, 0]]), (b) => refusedOrStable(b, decodeSessionBatch, encodeBatch)),
      { numRuns: 5000 },
    );
    const envelopeHead = (t: number) => [v, ...new Array<number>(8 + HASH_LENGTH + 8).fill(0), t];
    fc.assert(
      fc.property(hostileBytes([[v], envelopeHead(1), envelopeHead(2), envelopeHead(3), envelopeHead(4), envelopeHead(5)]), (b) => refusedOrStable(b, decodeEnvelope, encodeEnvelope)),
      { numRuns: 5000 },
    );
  });

  test('mutated valid encodings', () => {
    const check = <T>(arb: fc.Arbitrary<T>, encode: (x: T) => Uint8Array, decode: (b: Uint8Array) => T) =>
      fc.assert(
        fc.property(arb, edits, (x, es) => refusedOrStable(mutate(encode(x), es), decode, encode)),
        { numRuns: 1500 },
      );
    check(invitationData, encodeInvitationData, decodeInvitationData);
    check(queueFrame, encodeQueueFrame, decodeQueueFrame);
    check(sessionPayload, encodeSessionPayload, decodeSessionPayload);
    check(sessionBatch, encodeBatch, decodeSessionBatch);
    check(envelope, encodeEnvelope, decodeEnvelope);
  });

  test('parseInvitationLink on arbitrary and mutated text throws only ProtocolError BAD_ADDRESS', () => {
    const parse = (t: string) => {
      try {
        return parseInvitationLink(t);
      } catch (e) {
        if (ProtocolError.is(e, 'BAD_ADDRESS')) return undefined;
        throw new Error(`threw something other than ProtocolError BAD_ADDRESS: ${String(e)}`, { cause: e });
      }
    };
    const stable = (t: string) => {
      const l = parse(t);
      if (l !== undefined) assert.deepEqual(parseInvitationLink(formatInvitationLink(l)), l);
    };
    fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 700 }), stable), { numRuns: 3000 });
    fc.assert(fc.property(fc.string({ maxLength: 200 }).map((s) => `murmure://${s}`), stable), { numRuns: 3000 });
    const alphabet = fc.constantFrom(...'Aa0_-./#:@[]i\u0000\u202e ');
    fc.assert(
      fc.property(link, fc.array(fc.tuple(fc.nat(), alphabet, fc.boolean()), { minLength: 1, maxLength: 4 }), (l, changes) => {
        let t = formatInvitationLink(l);
        for (const [at, ch, insert] of changes) {
          const i = at % (t.length + 1);
          t = t.slice(0, i) + ch + t.slice(insert ? i : i + 1);
        }
        stable(t);
      }),
      { numRuns: 3000 },
    );
  });
});

describe('declared lengths beyond the input (C2)', () => {
  /**
   * Runs `fn` `n` times, three times over; returns the fastest of the three (a pause of the
   * collector or a busy machine slows one round, not every one) and the growth of ArrayBuffer
   * memory over all of them.
   */
  function measure(n: number, fn: () => void): { ms: number; arrayBuffers: number } {
    const before = process.memoryUsage().arrayBuffers;
    let ms = Infinity;
    for (let round = 0; round < 3; round++) {
      const t0 = performance.now();
      for (let i = 0; i < n; i++) fn();
      ms = Math.min(ms, performance.now() - t0);
    }
    return { ms, arrayBuffers: process.memoryUsage().arrayBuffers - before };
  }
  /** The fastest of three runs of `fn`, in ms. */
  function fastest(fn: () => void): number {
    return measure(1, fn).ms;
  }
  const refuses = (decode: (b: Uint8Array) => unknown, bytes: Uint8Array, codes: readonly string[]) => () =>
    assert.throws(
      () => decode(bytes),
      (e) => ProtocolError.is(e) && codes.includes(e.code),
    );

  const v = AGENT_VERSION;
  const head = [v, ...new Array<number>(8 + HASH_LENGTH + 8).fill(0)];
  const cases: [string, (b: Uint8Array) => unknown, Uint8Array, string[]][] = [
    ['a MESSAGE payload declared 65,535 bytes long, 10 present', decodeEnvelope, Uint8Array.from([...head, 3, 0xff, 0xff, ...new Array<number>(10).fill(0)]), ['TOO_LARGE']],
    ['a MESSAGE payload declared at its limit, none present', decodeEnvelope, Uint8Array.from([...head, 3, MAX_CHAT_PAYLOAD >> 8, MAX_CHAT_PAYLOAD & 0xff]), ['TRUNCATED']],
    ['a RECEIPT declaring 65,535 sequence numbers', decodeEnvelope, Uint8Array.from([...head, 4, 0xff, 0xff]), ['TOO_LARGE']],
    ['a RECEIPT declaring 256 sequence numbers, one present', decodeEnvelope, Uint8Array.from([...head, 4, 1, 0, ...new Array<number>(8).fill(0)]), ['TRUNCATED']],
    ['a CONFIRMATION whose relay address is declared 65,535 bytes long', decodeEnvelope, Uint8Array.from([...head, 1, 0xff, 0xff, 0x6d]), ['TOO_LARGE']],
    ['a SWITCH whose relay address is declared 65,535 bytes long', decodeEnvelope, Uint8Array.from([...head, 5, 0xff, 0xff, 0x6d]), ['TOO_LARGE']],
    ['a SWITCH whose relay address is declared 512 bytes long, none present', decodeEnvelope, Uint8Array.from([...head, 5, MAX_ADDRESS_LENGTH >> 8, MAX_ADDRESS_LENGTH & 0xff]), ['TRUNCATED']],
    ['invitation data whose bundle is declared 65,535 bytes long', decodeInvitationData, Uint8Array.from([...encodeInvitationData({ version: v, kind: 'invitation', queue: QUEUE, bundle: new Uint8Array(0) }).subarray(0, -2), 0xff, 0xff]), ['TOO_LARGE']],
    ['invitation data whose bundle is declared at its limit, none present', decodeInvitationData, Uint8Array.from([...encodeInvitationData({ version: v, kind: 'invitation', queue: QUEUE, bundle: new Uint8Array(0) }).subarray(0, -2), MAX_INVITATION_DATA >> 8, MAX_INVITATION_DATA & 0xff]), ['TRUNCATED']],
    ['invitation data whose relay address is declared 512 bytes long, none present', decodeInvitationData, Uint8Array.from([v, 1, MAX_ADDRESS_LENGTH >> 8, MAX_ADDRESS_LENGTH & 0xff]), ['TRUNCATED']],
    ['a session payload declared 65,535 bytes long', decodeSessionPayload, Uint8Array.from([2, 0xff, 0xff, 1, 2, 3]), ['TOO_LARGE']],
    ['a session payload declared at the padded size, 3 bytes present', decodeSessionPayload, Uint8Array.from([2, QUEUE_BOX_PADDED >> 8, QUEUE_BOX_PADDED & 0xff, 1, 2, 3]), ['TRUNCATED']],
    ['a sender name declared 255 bytes long', decodeSessionPayload, Uint8Array.from([3, 0xff, 0x41]), ['TOO_LARGE']],
    ['a queue frame that ends inside its sender key', decodeQueueFrame, Uint8Array.from([v, 0, 1, 2, 3]), ['TRUNCATED']],
  ];
  for (const [name, decode, bytes, codes] of cases) {
    test(`${name}: refused in well under 100 ms, nothing allocated`, () => {
      refuses(decode, bytes, codes)();
      const r = measure(2000, refuses(decode, bytes, codes));
      assert.ok(r.ms < 100, `2,000 refusals took ${r.ms.toFixed(1)} ms at best`);
      assert.ok(r.arrayBuffers < 1 << 20, `ArrayBuffer memory grew by ${r.arrayBuffers} bytes`);
    });
  }

  test('a megabyte of hostile input is refused quickly by every decoder', () => {
    const big = new Uint8Array(1 << 20).fill(0xff);
    big[0] = v;
    for (const decode of [decodeInvitationData, decodeSessionPayload, decodeSessionBatch, decodeEnvelope]) {
      const ms = fastest(() => assert.throws(() => decode(big), (e) => ProtocolError.is(e)));
      assert.ok(ms < 100, `${decode.name} took ${ms.toFixed(1)} ms at best`);
    }
    const ms = fastest(() => {
      assert.throws(() => parseInvitationLink(`murmure://${'a'.repeat(1 << 20)}`), (e) => ProtocolError.is(e, 'BAD_ADDRESS'));
      assert.throws(() => parseInvitationLink(`murmure://${'a'.repeat(MAX_ADDRESS_LENGTH)}/i#${'A'.repeat(32)}.${'A'.repeat(43)}`), (e) => ProtocolError.is(e, 'BAD_ADDRESS'));
      assert.throws(() => parseInvitationLink(`murmure://x@${'a.'.repeat(120)}!:1/i#${'A'.repeat(32)}.${'A'.repeat(43)}`), (e) => ProtocolError.is(e, 'BAD_ADDRESS'));
    });
    assert.ok(ms < 100, `the links took ${ms.toFixed(1)} ms at best`);
  });
});
