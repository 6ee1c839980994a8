// SPDX-License-Identifier: AGPL-3.0-or-later
// The relay and the client write block frames straight to the socket, past ws's sender
// (Connection.sendRaw, RelayClient.sendBlock). That is only right while ws, with compression
// off, writes its own frames (ping, pong, close) at once and queues nothing. This shows it for
// the ws that is installed: frames written both ways, in turns with ws's own, arrive in the order
// of the calls.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { test } from 'node:test';

import { blockFrame, encodeBlock } from '@murmure/protocol';
import { WebSocket, WebSocketServer } from 'ws';

/** A block frame carrying one 1-byte transmission, `n`. */
function frame(n: number, from: 'client' | 'relay'): Uint8Array {
  const f = blockFrame(encodeBlock([Uint8Array.of(n)]), from);
  assert.ok(f !== null);
  return f;
}

/** What `ws` receives, in order: `block N`, `ping`, `pong`, `close`. */
function received(ws: WebSocket): string[] {
  const log: string[] = [];
  // The transmission's byte: after the content length (2), the count (1) and its own length (2).
  ws.on('message', (d: Buffer) => log.push(`block ${d[5]}`));
  ws.on('ping', () => log.push('ping'));
  ws.on('pong', () => log.push('pong'));
  ws.on('close', () => log.push('close'));
  return log;
}

async function until(f: () => boolean): Promise<void> {
  for (const end = Date.now() + 10_000; !f(); await new Promise((r) => setTimeout(r, 5))) {
    if (Date.now() > end) throw new Error('not in time');
  }
}

test('block frames written past ws keep the order of the calls among its own frames, both ways (compression off)', async () => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, autoPong: false });
  await once(wss, 'listening');
  try {
    const port = (wss.address() as AddressInfo).port;
    const accepted = new Promise<[WebSocket, Duplex]>((resolve) => wss.once('connection', (ws, req) => resolve([ws, req.socket])));
    const client = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false, autoPong: false, generateMask: (m) => m.fill(0) });
    let clientSocket: Duplex | null = null;
    client.on('upgrade', (res) => (clientSocket = res.socket));
    await once(client, 'open');
    const [server, serverSocket] = await accepted;
    assert.ok(clientSocket !== null);
    const atClient = received(client);
    const atServer = received(server);

    // Relay to client: ws's frames and ours in turns, all in one turn of the event loop.
    server.ping();
    serverSocket.write(frame(1, 'relay'));
    server.pong();
    serverSocket.write(frame(2, 'relay'));
    server.ping();
    serverSocket.write(frame(3, 'relay'));
    await until(() => atClient.length === 6);
    assert.deepEqual(atClient, ['ping', 'block 1', 'pong', 'block 2', 'ping', 'block 3']);

    // Client to relay, the same.
    (clientSocket as Duplex).write(frame(4, 'client'));
    client.ping();
    (clientSocket as Duplex).write(frame(5, 'client'));
    client.pong();
    (clientSocket as Duplex).write(frame(6, 'client'));
    client.close(1000);
    await until(() => atServer.includes('close'));
    assert.deepEqual(atServer, ['block 4', 'ping', 'block 5', 'pong', 'block 6', 'close']);
  } finally {
    wss.close();
  }
});
