// SPDX-License-Identifier: AGPL-3.0-or-later
// Shows that every relay's certificate has the same length whatever its random serial number:
// a length that varied by relay showed in the sizes of its TLS handshakes.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';

import fc from 'fast-check';

import { SERIAL_BYTES, certificateSerial, createIdentity } from './identity.js';

describe('certificate serial numbers', () => {
  test('are SERIAL_BYTES bytes with the top bit clear and the next one set, and keep the other random bits', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: SERIAL_BYTES, maxLength: SERIAL_BYTES }), (random) => {
        const serial = Buffer.from(certificateSerial(random), 'hex');
        assert.equal(serial.length, SERIAL_BYTES);
        assert.equal(serial[0]! & 0xc0, 0x40);
        assert.equal(serial[0]! & 0x3f, random[0]! & 0x3f);
        assert.deepEqual(serial.subarray(1), Buffer.from(random.subarray(1)));
      }),
    );
    assert.throws(() => certificateSerial(new Uint8Array(SERIAL_BYTES - 1)), RangeError);
  });

  test('give certificates of one length, even from the random bytes whose DER integer would be shorter or longer', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'murmure-identity-'));
    try {
      const edges = [
        new Uint8Array(SERIAL_BYTES), // all zero: a DER integer drops leading zero bytes
        new Uint8Array(SERIAL_BYTES).fill(0xff), // top bit set: DER puts a zero byte in front
        Uint8Array.from({ length: SERIAL_BYTES }, (_, i) => (i === 0 ? 0x00 : 0x7f)),
        Uint8Array.from({ length: SERIAL_BYTES }, (_, i) => (i === 0 ? 0x80 : 0x00)),
        Uint8Array.from({ length: SERIAL_BYTES }, (_, i) => i * 17),
      ];
      const lengths = [];
      for (const [i, random] of edges.entries()) {
        const id = await createIdentity(join(dir, String(i)), random);
        const cert = new X509Certificate(id.certPem);
        assert.equal(cert.serialNumber.toLowerCase(), certificateSerial(random));
        lengths.push(cert.raw.length);
      }
      assert.equal(new Set(lengths).size, 1, `certificate lengths ${lengths.join(', ')}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
