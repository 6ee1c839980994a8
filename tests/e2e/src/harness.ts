// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Test support: starts a relay as a real `murmure relay start` process on loopback, reads its
 * address, and stops or kills it; plus small helpers for driving it with the real client.
 * @module
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import type { PushedMessage, RelayClient } from '@murmure/agent';

/** The `murmure` executable of this checkout. */
export const MURMURE_BIN = resolve(dirname(fileURLToPath(import.meta.url)), '../../../packages/cli/bin/murmure.js');

/** A relay process under test. */
export type RelayProcess = {
  readonly dataDir: string;
  address: string;
  port: number;
  metricsPort: number | null;
  proc: ChildProcess;
  /** Everything the relay wrote to stderr (its log). */
  readonly log: string[];
};

/** A fresh temporary folder, removed by `cleanup`. */
export function tempDir(prefix = 'murmure-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Removes a folder made by `tempDir`. */
export function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/**
 * Starts `murmure relay start --json` on 127.0.0.1 and resolves once it printed its address.
 * `port` defaults to 0 (a free port); pass the previous port to restart on the same address.
 */
export function startRelay(opts: Readonly<{ dataDir?: string; port?: number; args?: string[]; env?: NodeJS.ProcessEnv; log?: string[] }> = {}): Promise<RelayProcess> {
  const dataDir = opts.dataDir ?? tempDir();
  const args = [MURMURE_BIN, 'relay', 'start', '--data', dataDir, '--host', '127.0.0.1', '--port', String(opts.port ?? 0), '--json', ...(opts.args ?? [])];
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
  const log = opts.log ?? [];
  proc.stderr?.setEncoding('utf8').on('data', (s: string) => log.push(s));
  return new Promise<RelayProcess>((resolvePromise, reject) => {
    const lines = createInterface({ input: proc.stdout! });
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`relay did not start in time: ${log.join('')}`));
    }, 20_000);
    lines.once('line', (line) => {
      clearTimeout(timer);
      try {
        const j = JSON.parse(line) as { address: string; metricsPort?: number; error?: unknown };
        if (typeof j.address !== 'string') throw new Error(line);
        const port = Number(/:(\d+)$/.exec(j.address)?.[1]);
        resolvePromise({ dataDir, address: j.address, port, metricsPort: j.metricsPort ?? null, proc, log });
      } catch (e) {
        reject(new Error(`relay printed an unexpected first line: ${line} ${log.join('')}`, { cause: e }));
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`relay exited with ${code}: ${log.join('')}`));
    });
  });
}

/** Sends SIGTERM and resolves with the exit code. */
export function stopRelay(r: RelayProcess): Promise<number | null> {
  return signalAndWait(r, 'SIGTERM');
}

/** Sends SIGKILL and resolves once the process is gone. */
export function killRelay(r: RelayProcess): Promise<number | null> {
  return signalAndWait(r, 'SIGKILL');
}

function signalAndWait(r: RelayProcess, sig: NodeJS.Signals): Promise<number | null> {
  if (r.proc.exitCode !== null || r.proc.signalCode !== null) return Promise.resolve(r.proc.exitCode);
  return new Promise((res) => {
    r.proc.once('exit', (code) => res(code));
    r.proc.kill(sig);
  });
}

/** Collects pushed messages of a client, and lets a test wait for the next ones. */
export class Inbox {
  readonly messages: PushedMessage[] = [];
  private waiters: { n: number; resolve: () => void }[] = [];

  constructor(client: RelayClient) {
    client.on('message', (m: PushedMessage) => {
      this.messages.push(m);
      this.waiters = this.waiters.filter((w) => {
        if (this.messages.length >= w.n) w.resolve();
        return this.messages.length < w.n;
      });
    });
  }

  /** Resolves once `n` messages in all have arrived, or rejects after `ms`. */
  waitFor(n: number, ms = 10_000): Promise<void> {
    if (this.messages.length >= n) return Promise.resolve();
    return new Promise((resolveWait, reject) => {
      const timer = setTimeout(() => reject(new Error(`expected ${n} messages, got ${this.messages.length}`)), ms);
      this.waiters.push({
        n,
        resolve: () => {
          clearTimeout(timer);
          resolveWait();
        },
      });
    });
  }
}

/** Bytes of a UTF-8 string. */
export function utf8(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

/** Sleeps. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
