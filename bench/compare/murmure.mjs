// SPDX-License-Identifier: AGPL-3.0-or-later
// Murmure adapter of the comparison bench: `murmure relay start` on a fresh data folder, driven
// by the agent's real RelayClient (valid authorisation, padded blocks, opaque payloads), over
// plain WebSocket on loopback (`--plain-loopback`) or over TLS 1.3; the idle sessions of W4 and W7
// by a lean client of the same protocol (murmure-session.mjs).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { RelayClient, openDelivered } from '@murmure/agent';
import { generateDhKeyPair } from '@murmure/queue-crypto';

import { MURMURE_BIN, relayAddressLine, relayNodeArgs, sleep } from '../lib.mjs';
import { openRawSession } from './murmure-session.mjs';
import { LISTEN_BACKLOG, cmdOutput, spawnServer, stopChild } from './proc.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const BODY_SIZE = 100;

/** A 100-byte opaque body carrying the sequence number in its first 4 bytes. */
function body(seq) {
  const b = new Uint8Array(BODY_SIZE);
  new DataView(b.buffer).setUint32(0, seq);
  b.fill(0x5a, 4);
  return b;
}

function seqOf(q, m) {
  const plain = openDelivered(q, m.msgId, m.body);
  return new DataView(plain.body.buffer, plain.body.byteOffset, plain.body.length).getUint32(0);
}

/** Relay limits raised out of the way: the comparison runs without rate limits or quotas. */
const NO_LIMITS = [
  '--quota', '1000000',
  '--max-connections', '100000',
  '--commands-per-second', '1000000',
  '--command-burst', '1000000',
  '--queues-per-connection', '1000000',
  '--handshake-timeout-ms', '60000',
  '--idle-timeout-ms', '86400000',
  '--log-level', 'warn',
  '--listen-backlog', String(LISTEN_BACKLOG),
];

function connectOpts(endpoint, extra = {}) {
  return endpoint.plain ? { plain: true, ...extra } : extra;
}

function client() {
  return {
    /** A pair: a subscriber that created, secured and subscribed a queue, and a sender. */
    async openPair(endpoint, _i, onMessage) {
      let sub = await RelayClient.connect(endpoint.address, connectOpts(endpoint));
      const snd = await RelayClient.connect(endpoint.address, connectOpts(endpoint));
      const q = await sub.createQueue();
      const senderKey = generateDhKeyPair();
      await sub.secure(q, senderKey.publicKey);
      const listen = (c) =>
        c.on('message', (m) => {
          let seq;
          try {
            seq = seqOf(q, m);
          } catch {
            onMessage(-1);
            return;
          }
          c.ack(q, m.msgId).catch(() => undefined);
          onMessage(seq);
        });
      listen(sub);
      await sub.subscribe(q);
      return {
        send: (seq) => {
          snd.send(q.sndId, senderKey.privateKey, body(seq)).catch(() => undefined);
        },
        close() {
          sub.close();
          snd.close();
        },
        dropReceiver: () => sub.terminate(),
        async reconnectReceiver() {
          sub = await RelayClient.connect(endpoint.address, connectOpts(endpoint, { timeoutMs: 120_000 }));
          listen(sub);
          await sub.subscribe(q);
        },
      };
    },

    /**
     * An idle session: one connection with one queue it created and subscribed, held by a lean
     * client of the relay protocol (murmure-session.mjs), as the XMPP sessions are raw c2s.
     */
    openSession: (endpoint) => openRawSession(endpoint, 120_000),

    /** Store-and-forward: a queue whose recipient created and secured it, then went offline. */
    async offlineSetup(endpoint) {
      const c = await RelayClient.connect(endpoint.address, connectOpts(endpoint));
      const q = await c.createQueue();
      const senderKey = generateDhKeyPair();
      await c.secure(q, senderKey.publicKey);
      c.close();
      return { q, senderKey };
    },
    async openOfflineSender(endpoint, info) {
      const c = await RelayClient.connect(endpoint.address, connectOpts(endpoint));
      const sends = [];
      const ackedSeqs = new Set();
      return {
        send(seq) {
          // SEND is answered once the message is committed: the answer is the acknowledgement.
          sends.push(
            c.send(info.q.sndId, info.senderKey.privateKey, body(seq)).then(
              () => void ackedSeqs.add(seq),
              () => undefined,
            ),
          );
        },
        barrier: () => Promise.all(sends.splice(0)),
        /** Sequence numbers whose SEND was answered OK (null for XMPP: all before the barrier). */
        ackedSeqs: () => ackedSeqs,
        close: () => c.close(),
      };
    },
    async openRecipient(endpoint, info, onMessage) {
      const c = await RelayClient.connect(endpoint.address, connectOpts(endpoint));
      c.on('message', (m) => {
        let seq;
        try {
          seq = seqOf(info.q, m);
        } catch {
          onMessage(-1);
          return;
        }
        c.ack(info.q, m.msgId).catch(() => undefined);
        onMessage(seq);
      });
      await c.subscribe(info.q);
      return { close: () => c.close() };
    },
  };
}

const CLIENT = client();

export function murmureVersion() {
  return cmdOutput('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']);
}

/**
 * Starts `murmure relay start` on `dataDir` with the relay flags `flags` (by default its limits
 * raised out of the way); resolves once it printed its address. Also used by bench:flood, which
 * keeps the relay's default limits.
 */
export async function launchRelay(name, dataDir, plain, cpu, flags = NO_LIMITS) {
  const args = [...relayNodeArgs(), MURMURE_BIN, 'relay', 'start', '--data', dataDir, '--host', '127.0.0.1', '--port', '0', '--json', ...flags];
  if (plain) args.push('--plain-loopback');
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const { child, exited, stderr } = spawnServer(process.execPath, args, { cpu, env, cwd: ROOT, stdout: 'pipe' });
  const lines = createInterface({ input: child.stdout });
  // Anything else the relay prints on stdout goes to BENCH_RELAY_STDOUT if set, as in bench:relay.
  const first = await Promise.race([
    relayAddressLine(lines, process.env.BENCH_RELAY_STDOUT ?? ''),
    exited.then(({ code, signal }) => {
      throw new Error(`${name} relay exited before it started (code ${code}, signal ${signal}): ${stderr()}`);
    }),
    sleep(30_000).then(() => {
      throw new Error(`${name} relay did not print its address within 30 s`);
    }),
  ]).catch(async (e) => {
    child.kill('SIGKILL');
    await exited;
    throw e;
  });
  const parsed = JSON.parse(first);
  if (typeof parsed.address !== 'string') throw new Error(`${name} relay failed to start: ${first}`);
  if (plain && parsed.plain !== true) throw new Error(`${name}: the relay did not confirm plain WebSocket mode`);
  return {
    name,
    client: CLIENT,
    pid: child.pid,
    endpoint: { address: parsed.address, plain },
    dir: dataDir,
    stop: async () => {
      await stopChild(child, exited);
      lines.close();
    },
    kill9: async () => {
      child.kill('SIGKILL');
      await exited;
      lines.close();
    },
    restart: (cpu2) => launchRelay(name, dataDir, plain, cpu2, flags),
  };
}

function relayServer(name, plain) {
  const dirs = new Set();
  return {
    name,
    kind: 'murmure',
    version: murmureVersion,
    client: CLIENT,
    async start({ cpu }) {
      const dir = mkdtempSync(join(tmpdir(), `bench-${name}-`));
      dirs.add(dir);
      let s;
      try {
        s = await launchRelay(name, dir, plain, cpu);
      } catch (e) {
        rmSync(dir, { recursive: true, force: true });
        throw e;
      }
      const stop = s.stop;
      return {
        ...s,
        stop: async () => {
          await stop();
          rmSync(dir, { recursive: true, force: true });
          dirs.delete(dir);
        },
      };
    },
    cleanup() {
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
      dirs.clear();
    },
  };
}

/** The main-table row: plain WebSocket on loopback, like the XMPP servers' plain TCP. */
export const murmure = relayServer('murmure', true);
/** The same relay with its default TLS 1.3. */
export const murmureTls = relayServer('murmure-tls', false);
