// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that the relay codecs match the committed hex vectors in test-vectors/relay.json in both directions (encode gives the hex, decoding the hex gives the fields).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import {
  BLOCK_SIZE,
  decodeBlock,
  decodeClientHello,
  decodeClientTransmission,
  decodeCommand,
  decodeReceivedMessage,
  decodeResponse,
  decodeServerHello,
  decodeServerTransmission,
  encodeBlock,
  encodeClientHello,
  encodeClientTransmission,
  encodeCommand,
  encodeReceivedMessage,
  encodeResponse,
  encodeServerHello,
  encodeServerTransmission,
  formatRelayAddress,
  parseRelayAddress,
  toHex,
  RELAY_VERSION_MAX,
  V_CREATE_PASSWORD,
  V_INITIAL,
} from '@murmure/protocol';
import type { ClientHello, ClientTransmission, Command, ReceivedMessage, RelayAddress, Response, ServerHello, ServerTransmission } from '@murmure/protocol';

type Json = string | number | boolean | null | Json[] | { [k: string]: Json };
type Vector = { name: string; value: { [k: string]: Json }; hex: string; protocolVersion?: number };
/** A block: its `head` (the bytes before the fill, and a few of the fill), then `fill` up to `length`. */
type BlockVector = { name: string; length: number; head: string; fill: string };
type VectorFile = {
  version: number;
  commands: Vector[];
  responses: Vector[];
  clientTransmissions: Vector[];
  serverTransmissions: Vector[];
  blocks: (BlockVector & { transmissions: string[] })[];
  serverHellos: (BlockVector & { value: { [k: string]: Json } })[];
  clientHellos: (BlockVector & { value: { [k: string]: Json } })[];
  receivedMessages: Vector[];
  addresses: { name: string; value: { [k: string]: Json }; text: string }[];
};

// The compiled test sits in dist/relay/, two levels below the package root.
const vectors = JSON.parse(readFileSync(new URL('../../test-vectors/relay.json', import.meta.url), 'utf8')) as VectorFile;

function fromHex(hex: string): Uint8Array {
  assert.match(hex, /^(?:[0-9a-f]{2})*$/, 'vector hex must be lower-case pairs');
  return new Uint8Array(Buffer.from(hex, 'hex'));
}

/** Fields whose JSON strings are text; every other string in a value is hex bytes. */
const TEXT_FIELDS = new Set(['type', 'code', 'kind', 'host']);
/** In an address, the password is text too (in a NEW it is bytes). */
const ADDRESS_TEXT_FIELDS = new Set([...TEXT_FIELDS, 'password']);

function revive<T>(value: Json, key = '', text: ReadonlySet<string> = TEXT_FIELDS): T {
  if (typeof value === 'string') return (text.has(key) ? value : fromHex(value)) as T;
  if (Array.isArray(value)) return value.map((v) => revive(v, '', text)) as T;
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, revive(v, k, text)])) as T;
  }
  return value as T;
}

/** The full block a block vector describes: its head, then fill to `length`. */
function fullBlock(v: BlockVector): Uint8Array {
  const out = new Uint8Array(v.length).fill(Number.parseInt(v.fill, 16));
  out.set(fromHex(v.head));
  return out;
}

function assertBlock(block: Uint8Array, v: BlockVector): void {
  assert.equal(block.length, v.length);
  assert.equal(v.length, BLOCK_SIZE);
  assert.equal(toHex(block.subarray(0, v.head.length / 2)), v.head);
  assert.deepEqual(block, fullBlock(v));
}

describe('relay test vectors', () => {
  test('the vector file is for relay protocol versions up to 2 and has vectors of every kind', () => {
    assert.equal(vectors.version, RELAY_VERSION_MAX);
    assert.deepEqual(
      vectors.commands.filter((v) => v.protocolVersion !== undefined).map((v) => v.protocolVersion),
      [V_INITIAL, V_CREATE_PASSWORD, V_CREATE_PASSWORD],
      "NEW in version 1's layout, and in version 2's without and with a password",
    );
    for (const list of [vectors.commands, vectors.responses, vectors.clientTransmissions, vectors.serverTransmissions, vectors.blocks, vectors.serverHellos, vectors.clientHellos, vectors.receivedMessages, vectors.addresses]) {
      assert.ok(list.length > 0);
    }
  });

  for (const v of vectors.commands) {
    test(`command: ${v.name}`, () => {
      const c = revive<Command>(v.value);
      for (const version of v.protocolVersion === undefined ? [V_INITIAL, V_CREATE_PASSWORD] : [v.protocolVersion]) {
        assert.equal(toHex(encodeCommand(c, version)), v.hex, `version ${version}`);
        assert.deepEqual(decodeCommand(fromHex(v.hex), version), c, `version ${version}`);
      }
    });
  }

  for (const v of vectors.responses) {
    test(`response: ${v.name}`, () => {
      const r = revive<Response>(v.value);
      assert.equal(toHex(encodeResponse(r)), v.hex);
      assert.deepEqual(decodeResponse(fromHex(v.hex)), r);
    });
  }

  for (const v of vectors.clientTransmissions) {
    test(`client transmission: ${v.name}`, () => {
      const t = revive<ClientTransmission>(v.value);
      assert.equal(toHex(encodeClientTransmission(t)), v.hex);
      assert.deepEqual(decodeClientTransmission(fromHex(v.hex)), t);
    });
  }

  for (const v of vectors.serverTransmissions) {
    test(`server transmission: ${v.name}`, () => {
      const t = revive<ServerTransmission>(v.value);
      assert.equal(toHex(encodeServerTransmission(t)), v.hex);
      assert.deepEqual(decodeServerTransmission(fromHex(v.hex)), t);
    });
  }

  for (const v of vectors.blocks) {
    test(`block: ${v.name}`, () => {
      const ts = v.transmissions.map(fromHex);
      assertBlock(encodeBlock(ts), v);
      assert.deepEqual(decodeBlock(fullBlock(v)), ts);
    });
  }

  for (const v of vectors.serverHellos) {
    test(`server hello: ${v.name}`, () => {
      const h = revive<ServerHello>(v.value);
      assertBlock(encodeServerHello(h), v);
      assert.deepEqual(decodeServerHello(fullBlock(v)), h);
    });
  }

  for (const v of vectors.clientHellos) {
    test(`client hello: ${v.name}`, () => {
      const h = revive<ClientHello>(v.value);
      assertBlock(encodeClientHello(h), v);
      assert.deepEqual(decodeClientHello(fullBlock(v)), h);
    });
  }

  for (const v of vectors.receivedMessages) {
    test(`received message: ${v.name}`, () => {
      const m = revive<ReceivedMessage>(v.value);
      assert.equal(toHex(encodeReceivedMessage(m)), v.hex);
      assert.deepEqual(decodeReceivedMessage(fromHex(v.hex)), m);
    });
  }

  for (const v of vectors.addresses) {
    test(`relay address: ${v.name}`, () => {
      const a = revive<RelayAddress>(v.value, '', ADDRESS_TEXT_FIELDS);
      assert.equal(formatRelayAddress(a, { withPassword: true }), v.text);
      assert.deepEqual(parseRelayAddress(v.text), a);
    });
  }
});
