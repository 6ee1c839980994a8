// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Test support: starts a relay as a real `murmure relay start` process on loopback, reads its
 * address, and stops or kills it; plus small helpers for driving it with the real client.
 * @module
 */

import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { get as httpGet } from 'node:http';
import { createInterface } from 'node:readline';
import { StringDecoder } from 'node:string_decoder';
import { fileURLToPath } from 'node:url';

import { RelayClient, type PushedMessage } from '@murmure/agent';

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
  /** Where the relay writes a diagnostic report if it does not stop in time. */
  readonly reportDir: string;
};

/** A fresh temporary folder, removed by `cleanup`. */
export function tempDir(prefix = 'murmure-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Removes a folder made by `tempDir`. */
export function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

// A process under test that hangs is asked for Node's diagnostic report (its JavaScript stack and
// open handles) before it is killed, so a hang seen only on another machine can be read from the
// test's output.

/** How long a hung process has to write its report after SIGUSR2. */
const REPORT_WAIT_MS = 2_000;

/** The environment that makes a Node process write a diagnostic report into `dir` on SIGUSR2. */
function reportEnv(env: NodeJS.ProcessEnv, dir: string): NodeJS.ProcessEnv {
  const opts = `--report-on-signal --report-signal=SIGUSR2 --report-directory=${dir}`;
  return { ...env, NODE_OPTIONS: [env['NODE_OPTIONS'], opts].filter((o) => o !== undefined && o !== '').join(' ') };
}

/** A short account of the reports in `dir`: where JavaScript was, and which handles were open. */
function reportSummary(dir: string): string {
  let files: string[];
  try {
    files = readdirSync(dir).filter((f) => f.endsWith('.json'));
  } catch {
    return 'no diagnostic report (the process exited meanwhile)';
  }
  if (files.length === 0) return 'no diagnostic report (the event loop did not run, or the process was not Node)';
  return files
    .map((f) => {
      try {
        const r = JSON.parse(readFileSync(join(dir, f), 'utf8')) as {
          javascriptStack?: { message?: string; stack?: string[] };
          libuv?: { type: string; is_active: boolean; is_referenced?: boolean; remoteEndpoint?: unknown; localEndpoint?: unknown; firesInMsFromNow?: number }[];
        };
        const stack = [r.javascriptStack?.message ?? '', ...(r.javascriptStack?.stack ?? []).slice(0, 12)].join('\n    ');
        const handles = (r.libuv ?? [])
          .filter((h) => h.is_active && h.is_referenced !== false)
          .map((h) => `${h.type}${h.remoteEndpoint === undefined ? '' : ` to ${JSON.stringify(h.remoteEndpoint)}`}${h.firesInMsFromNow === undefined ? '' : ` in ${h.firesInMsFromNow} ms`}`);
        return `stack: ${stack}\n  active handles: ${handles.join(', ') || 'none'}`;
      } catch (e) {
        return `unreadable report ${f}: ${String(e)}`;
      }
    })
    .join('\n');
}

/** Asks a hung process for its diagnostic report, kills it, and resolves with the report's summary. */
async function killWithReport(proc: ChildProcess, reportDir: string): Promise<string> {
  if (proc.exitCode !== null || proc.signalCode !== null) return 'the process had already exited';
  proc.kill('SIGUSR2');
  await sleep(REPORT_WAIT_MS);
  proc.kill('SIGKILL');
  return reportSummary(reportDir);
}

/**
 * Starts `murmure relay start --json` on 127.0.0.1 and resolves once it printed its address.
 * `port` defaults to 0 (a free port); pass the previous port to restart on the same address.
 */
export function startRelay(opts: Readonly<{ dataDir?: string; port?: number; args?: string[]; env?: NodeJS.ProcessEnv; log?: string[] }> = {}): Promise<RelayProcess> {
  const dataDir = opts.dataDir ?? tempDir();
  const args = [MURMURE_BIN, 'relay', 'start', '--data', dataDir, '--host', '127.0.0.1', '--port', String(opts.port ?? 0), '--json', ...(opts.args ?? [])];
  const reportDir = tempDir('murmure-report-');
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: reportEnv({ ...process.env, ...opts.env }, reportDir) });
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
        resolvePromise({ dataDir, address: j.address, port, metricsPort: j.metricsPort ?? null, proc, log, reportDir });
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

/** How long a relay may take to stop after SIGTERM before it is killed (its exit code is then null). */
const RELAY_STOP_TIMEOUT_MS = 30_000;

/**
 * Sends SIGTERM and resolves with the exit code. A relay that does not stop in time is killed
 * (the exit code is then null) and its diagnostic report is written to the test's stderr.
 */
export function stopRelay(r: RelayProcess): Promise<number | null> {
  const timer = setTimeout(() => {
    void killWithReport(r.proc, r.reportDir).then((report) => process.stderr.write(`the relay did not stop within ${RELAY_STOP_TIMEOUT_MS} ms:\n  ${report}\n`));
  }, RELAY_STOP_TIMEOUT_MS);
  return signalAndWait(r, 'SIGTERM').finally(() => {
    clearTimeout(timer);
    cleanup(r.reportDir);
  });
}

/** Sends SIGKILL and resolves once the process is gone. */
export function killRelay(r: RelayProcess): Promise<number | null> {
  return signalAndWait(r, 'SIGKILL');
}

function signalAndWait(r: RelayProcess, sig: NodeJS.Signals): Promise<number | null> {
  if (r.proc.exitCode !== null || r.proc.signalCode !== null) return Promise.resolve(r.proc.exitCode);
  return new Promise((res) => {
    // 'close', not 'exit': by then its stderr is read to the end, so `log` holds its last lines.
    r.proc.once('close', (code) => res(code));
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

/**
 * The text of a relay's /metrics, by its metrics port or the relay process. Each call opens a
 * connection of its own and closes it: a connection kept alive from an earlier call could be
 * closed by the relay just as the next request goes out (under a sped-up clock the relay's
 * keep-alive time is a tenth in real time). A failure says whether the relay still runs, and
 * the end of its log.
 */
export function metricsText(source: RelayProcess | number | null): Promise<string> {
  const relay = typeof source === 'object' ? source : null;
  const port = relay !== null ? relay.metricsPort : (source as number | null);
  assert.ok(port !== null, 'the relay serves /metrics');
  return new Promise((resolveText, reject) => {
    const fail = (e: unknown): void => {
      const state = relay === null ? '' : isRunning(relay) ? '; the relay is running' : `; the relay has exited (${relay.proc.exitCode ?? relay.proc.signalCode}), its log ends: ${relay.log.join('').slice(-2000)}`;
      reject(new Error(`GET /metrics on port ${port} failed: ${e instanceof Error ? e.message : String(e)}${state}`, { cause: e }));
    };
    const req = httpGet({ host: '127.0.0.1', port, path: '/metrics', agent: false, timeout: METRICS_TIMEOUT_MS }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (s: string) => (text += s));
      res.once('end', () => (res.statusCode === 200 ? resolveText(text) : fail(new Error(`status ${res.statusCode}`))));
      res.once('error', fail);
    });
    req.once('timeout', () => req.destroy(new Error(`no answer in ${METRICS_TIMEOUT_MS} ms`)));
    req.once('error', fail);
  });
}

/** How long a test waits for /metrics. */
const METRICS_TIMEOUT_MS = 10_000;

/** A counter or gauge from a relay's /metrics, by its metrics port or the relay process. */
export async function metric(source: RelayProcess | number | null, name: string): Promise<number> {
  const text = await metricsText(source);
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(text);
  assert.ok(m !== null, `${name} in /metrics`);
  return Number(m[1]);
}

/** Sleeps. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// Helpers for fault and privacy tests (relay-crash, relay-privacy, relay-faults).

/** Options of `launchRelay`: those of `startRelay`, plus a command to run the relay under. */
export type LaunchOptions = Readonly<{
  dataDir?: string;
  port?: number;
  args?: readonly string[];
  env?: NodeJS.ProcessEnv;
  /** A command the relay runs under, e.g. `['strace', '-f', ...]`; the relay's argv follows it. */
  wrapper?: readonly string[];
}>;

/** A relay started by `launchRelay`: its log also as raw bytes, and whether a wrapper runs it. */
export type LaunchedRelay = RelayProcess & {
  /** Everything the relay (and its wrapper) wrote to stderr, as raw bytes. */
  readonly stderrBytes: Buffer[];
  readonly wrapped: boolean;
};

/**
 * Like `startRelay`, but keeps the raw bytes of stderr and can run the relay under a wrapper
 * such as strace. `proc` is then the wrapper; `signalRelay` reaches the relay itself.
 */
export function launchRelay(opts: LaunchOptions = {}): Promise<LaunchedRelay> {
  const dataDir = opts.dataDir ?? tempDir();
  const relayArgv = [process.execPath, MURMURE_BIN, 'relay', 'start', '--data', dataDir, '--host', '127.0.0.1', '--port', String(opts.port ?? 0), '--json', ...(opts.args ?? [])];
  const argv = [...(opts.wrapper ?? []), ...relayArgv];
  const reportDir = tempDir('murmure-report-');
  const proc = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: reportEnv({ ...process.env, ...opts.env }, reportDir) });
  const log: string[] = [];
  const stderrBytes: Buffer[] = [];
  const decoder = new StringDecoder('utf8');
  proc.stderr?.on('data', (b: Buffer) => {
    stderrBytes.push(b);
    log.push(decoder.write(b));
  });
  return new Promise<LaunchedRelay>((resolvePromise, reject) => {
    const lines = createInterface({ input: proc.stdout! });
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`relay did not start in time: ${log.join('')}`));
    }, 20_000);
    lines.once('line', (line) => {
      clearTimeout(timer);
      try {
        const j = JSON.parse(line) as { address: string; metricsPort?: number };
        if (typeof j.address !== 'string') throw new Error(line);
        const port = Number(/:(\d+)$/.exec(j.address)?.[1]);
        resolvePromise({ dataDir, address: j.address, port, metricsPort: j.metricsPort ?? null, proc, log, reportDir, stderrBytes, wrapped: opts.wrapper !== undefined });
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

/** The pid of the relay process itself (the wrapper's child when it runs under one). */
export function relayPid(r: LaunchedRelay): number {
  const pid = r.proc.pid;
  if (pid === undefined) throw new Error('the relay process has no pid');
  if (!r.wrapped) return pid;
  const children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/);
  const child = Number(children[0]);
  if (!Number.isInteger(child) || child <= 0) throw new Error('the relay wrapper has no child process');
  return child;
}

/** Whether the relay (or its wrapper) is still running. */
export function isRunning(r: RelayProcess): boolean {
  return r.proc.exitCode === null && r.proc.signalCode === null;
}

/**
 * Sends `sig` to the relay itself (not to a wrapper, which would only detach) and resolves with
 * the exit code of `proc` (strace exits with its tracee's code), or the signal name.
 */
export function signalRelay(r: LaunchedRelay, sig: NodeJS.Signals): Promise<number | NodeJS.Signals | null> {
  if (!isRunning(r)) return Promise.resolve(r.proc.exitCode ?? r.proc.signalCode);
  return new Promise((res) => {
    r.proc.once('exit', (code, signal) => res(code ?? signal));
    process.kill(relayPid(r), sig);
  });
}

/** Connects, retrying every `everyMs` while the relay is down, until `timeoutMs` has passed. */
export async function connectRetry(address: string, timeoutMs = 15_000, everyMs = 20): Promise<RelayClient> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await RelayClient.connect(address, { timeoutMs: 3000 });
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await sleep(everyMs);
    }
  }
}

/** A seeded pseudo-random generator (mulberry32): the same seed gives the same numbers in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/**
 * "Test encryption" of a message body, standing in for the end-to-end layer: AES-256-GCM with a
 * random nonce, `nonce || ciphertext || tag`, so no plaintext marker is visible on the wire.
 */
export function testSeal(key: Uint8Array, plaintext: Uint8Array): Uint8Array {
  const nonce = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', key, nonce);
  return new Uint8Array(Buffer.concat([nonce, c.update(plaintext), c.final(), c.getAuthTag()]));
}

/** Opens `testSeal`; null if the bytes were not sealed with `key` or were changed. */
export function testOpen(key: Uint8Array, sealed: Uint8Array): Uint8Array | null {
  if (sealed.length < 28) return null;
  const b = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.length);
  try {
    const d = createDecipheriv('aes-256-gcm', key, b.subarray(0, 12));
    d.setAuthTag(b.subarray(b.length - 16));
    return new Uint8Array(Buffer.concat([d.update(b.subarray(12, b.length - 16)), d.final()]));
  } catch {
    return null;
  }
}

// Helpers for the CLI tests (cli-messaging, cli-errors).

/** What one run of the `murmure` command gave. */
export type CliRun = Readonly<{
  /** The exit code (null if a signal or the timeout ended it). */
  code: number | null;
  stdout: string;
  stderr: string;
  /** The lines of stdout that parse as JSON objects (all of them under --json). */
  json: Record<string, unknown>[];
}>;

/** Options of `runMurmure`. */
export type CliOptions = Readonly<{
  /** MURMURE_PASSPHRASE; left unset when undefined. */
  passphrase?: string;
  /** Further environment variables (MURMURE_NEW_PASSPHRASE, MURMURE_HOME...). */
  env?: NodeJS.ProcessEnv;
  /** The run is killed after this long (default 30 s), so a hang fails instead of blocking. */
  timeoutMs?: number;
  /** A command the client runs under, e.g. `['faketime', '-f', '+1d']`; node's argv follows it. */
  wrapper?: readonly string[];
}>;

/**
 * Runs the real `murmure` executable with `args` and resolves once it exited, whatever its exit
 * code. MURMURE_HOME, MURMURE_PASSPHRASE and MURMURE_NEW_PASSPHRASE of the test runner are not
 * passed on; stdin is closed (so the passphrase is never asked for on a terminal).
 */
export function runMurmure(args: readonly string[], opts: CliOptions = {}): Promise<CliRun> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env['MURMURE_HOME'];
  delete env['MURMURE_PASSPHRASE'];
  delete env['MURMURE_NEW_PASSPHRASE'];
  if (opts.passphrase !== undefined) env['MURMURE_PASSPHRASE'] = opts.passphrase;
  Object.assign(env, opts.env);
  const reportDir = tempDir('murmure-report-');
  return new Promise((resolveRun) => {
    const argv = [...(opts.wrapper ?? []), process.execPath, MURMURE_BIN, ...args];
    const proc = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: reportEnv(env, reportDir) });
    let stdout = '';
    let stderr = '';
    let hung: Promise<string> | null = null;
    proc.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    proc.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const timer = setTimeout(() => (hung = killWithReport(proc, reportDir)), timeoutMs);
    proc.once('close', async (code) => {
      clearTimeout(timer);
      if (hung !== null) stderr += `\nmurmure ${args.join(' ')} did not exit within ${timeoutMs} ms and was killed:\n  ${await hung}\n`;
      cleanup(reportDir);
      const json: Record<string, unknown>[] = [];
      for (const line of stdout.split('\n')) {
        if (!line.startsWith('{')) continue;
        try {
          json.push(JSON.parse(line) as Record<string, unknown>);
        } catch {
          // Not JSON: kept in stdout only.
        }
      }
      resolveRun({ code, stdout, stderr, json });
    });
  });
}

/** Every regular file under `root`, recursively (none if it does not exist). */
export function filesUnder(root: string): string[] {
  let entries: string[];
  try {
    entries = readdirSync(root);
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const e of entries) {
    const p = join(root, e);
    const st = statSync(p);
    if (st.isDirectory()) out.push(...filesUnder(p));
    else if (st.isFile()) out.push(p);
  }
  return out;
}
