// SPDX-License-Identifier: AGPL-3.0-or-later
// N1 on the wire: a packet capture (tcpdump on loopback) of real sessions with a relay over TLS.
// After the handshake, every TLS record either side sends carries block frames (a client's, one
// frame per record); the same session with 10-byte and with 16,000-byte messages puts exactly as
// many bytes on the wire in each direction of each connection; and no plaintext marker of a
// message appears in the capture.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { RelayClient, type PushedMessage } from '@murmure/agent';
import { BLOCK_SIZE } from '@murmure/protocol';
import { generateDhKeyPair } from '@murmure/queue-crypto';

import { cleanup, metric, sleep, startRelay, stopRelay, tempDir, utf8 } from './harness.js';

const TCPDUMP = '/usr/bin/tcpdump';
/** A TLS 1.3 record adds its content type (1 byte) and AEAD tag (16) to what it carries. */
const RECORD_OVERHEAD = 17;
/** A WebSocket frame of one block: 4 header bytes from the relay, 8 (with the mask) from a client. */
const SERVER_FRAME = BLOCK_SIZE + 4;
const CLIENT_FRAME = BLOCK_SIZE + 8;

type Packet = { src: string; dst: string; seq: number; syn: boolean; payload: Buffer };

/** The IPv4 TCP packets of a pcap file (Ethernet, Linux cooked or BSD loopback link layer). */
function parsePcap(buf: Buffer): Packet[] {
  const le = buf.readUInt32LE(0) === 0xa1b2c3d4 || buf.readUInt32LE(0) === 0xa1b23c4d;
  assert.ok(le || buf.readUInt32BE(0) === 0xa1b2c3d4 || buf.readUInt32BE(0) === 0xa1b23c4d, 'a pcap file');
  const u32 = (o: number): number => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const linkHeader = ({ 0: 4, 1: 14, 113: 16, 276: 20 } as Record<number, number>)[u32(20)];
  assert.ok(linkHeader !== undefined, `a known link type (${u32(20)})`);
  const packets: Packet[] = [];
  for (let o = 24; o + 16 <= buf.length;) {
    const incl = u32(o + 8);
    const ip = buf.subarray(o + 16 + linkHeader, o + 16 + incl);
    o += 16 + incl;
    if (ip[0]! >> 4 !== 4 || ip[9] !== 6) continue;
    const tcp = ip.subarray((ip[0]! & 15) * 4, ip.readUInt16BE(2));
    packets.push({
      src: `${ip.subarray(12, 16).join('.')}:${tcp.readUInt16BE(0)}`,
      dst: `${ip.subarray(16, 20).join('.')}:${tcp.readUInt16BE(2)}`,
      seq: tcp.readUInt32BE(4),
      syn: (tcp[13]! & 2) !== 0,
      payload: tcp.subarray((tcp[12]! >> 4) * 4),
    });
  }
  return packets;
}

/** Each direction of each connection, reassembled in sequence order, in the order connections opened. */
function streams(packets: Packet[]): { key: string; bytes: Buffer }[] {
  const m = new Map<string, { next: number | null; chunks: Buffer[] }>();
  for (const p of packets) {
    const key = `${p.src}>${p.dst}`;
    let s = m.get(key);
    if (s === undefined) m.set(key, (s = { next: null, chunks: [] }));
    if (p.syn) {
      s.next = (p.seq + 1) >>> 0;
      continue;
    }
    if (p.payload.length === 0) continue;
    s.next ??= p.seq;
    const ahead = (p.seq - s.next) | 0;
    assert.ok(ahead <= 0, `no bytes missing from the capture of ${key}`);
    if (-ahead >= p.payload.length) continue; // a retransmission of bytes already taken
    s.chunks.push(p.payload.subarray(-ahead));
    s.next = (s.next + p.payload.length + ahead) >>> 0;
  }
  return [...m].map(([key, s]) => ({ key, bytes: Buffer.concat(s.chunks) }));
}

/** The lengths of the TLS records of a stream, by content type. */
function records(b: Buffer): { type: number; len: number }[] {
  const out = [];
  let o = 0;
  while (o + 5 <= b.length) {
    out.push({ type: b[o]!, len: b.readUInt16BE(o + 3) });
    o += 5 + b.readUInt16BE(o + 3);
  }
  assert.equal(o, b.length, 'the stream is whole TLS records');
  return out;
}

/**
 * One scripted session under capture: Bob sends Alice five messages of `size` bytes (each with
 * a marker), she takes and ACKs each, PINGs, and both close. Returns the streams and markers.
 */
async function capturedSession(size: number): Promise<{ streams: { key: string; bytes: Buffer }[]; markers: string[]; port: number }> {
  // Metrics on a port of their own, outside the capture: they tell when both connections closed.
  const relay = await startRelay({ args: ['--metrics-port', '0'] });
  const dir = tempDir('murmure-capture-');
  const file = join(dir, 'session.pcap');
  const dump = spawn(TCPDUMP, ['-i', 'lo', '-w', file, '-U', '-s', '0', `tcp port ${relay.port}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  try {
    await new Promise<void>((resolve, reject) => {
      dump.stderr.on('data', (d: Buffer) => {
        if (d.toString().includes('listening on')) resolve();
      });
      dump.once('exit', (code) => reject(new Error(`tcpdump exited with ${code}`)));
    });
    const markers = Array.from({ length: 5 }, (_, i) => `N1-MARKER-${i}-${Math.random().toString(36).slice(2)}`);
    const alice = await RelayClient.connect(relay.address);
    const bob = await RelayClient.connect(relay.address);
    const q = await alice.createQueue();
    const key = generateDhKeyPair();
    await alice.secure(q, key.publicKey);
    const got: PushedMessage[] = [];
    alice.on('message', (m: PushedMessage) => got.push(m));
    await alice.subscribe(q);
    for (let i = 0; i < markers.length; i++) {
      await bob.send(q.sndId, key.privateKey, utf8(markers[i]!.padEnd(size, '.')));
      while (got.length <= i) await sleep(5);
      await alice.ack(q, got[i]!.msgId);
    }
    await alice.ping();
    alice.close();
    bob.close();
    // Both close handshakes done on the relay's side, then time for the last packets.
    const end = Date.now() + 10_000;
    while ((await metric(relay.metricsPort!, 'murmure_connections_open')) > 0 && Date.now() < end) await sleep(20);
    await sleep(300);
    dump.kill('SIGINT');
    await new Promise((r) => dump.once('exit', r));
    return { streams: streams(parsePcap(readFileSync(file))), markers, port: relay.port };
  } finally {
    dump.kill('SIGKILL');
    assert.equal(await stopRelay(relay), 0);
    cleanup(relay.dataDir);
    cleanup(dir);
  }
}

test('N1 on the wire: after the handshake every TLS record is part of a block, a 10-byte and a 16,000-byte message cost the same bytes, and no plaintext is seen', { timeout: 120_000 }, async (t) => {
  assert.ok(existsSync(TCPDUMP), 'tcpdump is installed');
  const small = await capturedSession(10);
  const large = await capturedSession(16_000);
  for (const s of [small, large]) {
    assert.equal(s.streams.length, 4, 'two connections, two directions each');
    for (const { key, bytes } of s.streams) {
      for (const m of s.markers) assert.ok(!bytes.includes(m), `no plaintext marker in ${key}`);
      const toRelay = key.split('>')[1]!.endsWith(`:${s.port}`);
      const frame = toRelay ? CLIENT_FRAME : SERVER_FRAME;
      // A close frame (code 1000, no reason) may end the stream: 2 bytes, plus header and mask.
      const closeFrame = toRelay ? 8 : 4;
      // From the first block frame on (the relay's hello, or the client's), every
      // application-data record carries block frames: each a record of its own (BLOCK_SIZE is
      // chosen for that), or pieces of several that the relay wrote at once; never anything of
      // its own size. A client's frame fills a record exactly, so its records are all frames.
      const app = records(bytes).filter((r) => r.type === 23);
      const first = app.findIndex((r) => r.len === frame + RECORD_OVERHEAD);
      assert.ok(first >= 0, `${key} carries blocks`);
      const after = app.slice(first).map((r) => r.len - RECORD_OVERHEAD);
      t.diagnostic(`${key}: records after the handshake ${after.join(' ')}`);
      if (toRelay) assert.ok(after.every((len, i) => len === frame || (i === after.length - 1 && len === closeFrame)), `${key}: one block frame per record`);
      const carried = after.reduce((n, len) => n + len, 0);
      assert.ok([0, closeFrame].includes(carried % frame), `${key}: ${carried} bytes after the handshake are whole ${frame}-byte block frames (and a close)`);
    }
  }
  // The same session with messages 1,600 times larger: the same bytes in every direction.
  const sizes = (s: typeof small): number[] => s.streams.map((x) => x.bytes.length);
  t.diagnostic(`bytes per direction, 10-byte messages: ${sizes(small).join(', ')}; 16,000-byte messages: ${sizes(large).join(', ')}`);
  assert.deepEqual(sizes(large), sizes(small), 'message size does not show on the wire');
});
