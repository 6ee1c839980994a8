// SPDX-License-Identifier: AGPL-3.0-or-later
// Helpers shared by the relay bench (relay-bench.mjs) and the comparison bench (compare/):
// settings from the environment, CPU and memory read from /proc, latency samples, percentiles
// and rounding, the machine's background load, results files, and the main wrapper.

import { execFileSync, spawn } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

/** Where the benches append their JSON lines (the folder is kept in git by .gitkeep). */
export const RESULTS_DIR = join(dirname(fileURLToPath(import.meta.url)), 'results');
/** A run during which other processes used this much CPU (cores) is flagged as noisy. */
export const NOISY_CORES = 0.15;
/** A run during which the driver used this much CPU (cores) is flagged as driver-bound. */
export const DRIVER_BOUND_CORES = 0.95;

// ---------------------------------------------------------------------------------------------
// The relay's node flags

/** The `murmure` command. */
export const MURMURE_BIN = join(dirname(fileURLToPath(import.meta.url)), '../packages/cli/bin/murmure.js');

/**
 * The Node flags on the `murmure` command's first line (`#!/usr/bin/env -S node FLAGS`), which
 * `npx murmure` and `npm start` run the relay with. The benches start it as `node FLAGS
 * murmure.js`, so that they measure the relay as it runs for its users.
 */
export function relayNodeFlags() {
  const first = readFileSync(MURMURE_BIN, 'utf8').split('\n', 1)[0];
  const m = /^#!\/usr\/bin\/env -S node((?: --[a-z0-9-]+=[0-9]+)*)$/.exec(first);
  if (m === null) throw new Error(`${MURMURE_BIN}: unexpected first line ${JSON.stringify(first)}`);
  return m[1].split(' ').filter((a) => a !== '');
}

/**
 * What the benches give node before `murmure.js` when they start a relay: its own flags
 * (`relayNodeFlags`), then BENCH_RELAY_NODE_ARGS, split at white space only (e.g. `--cpu-prof
 * --cpu-prof-dir=DIR` or `--trace-gc`, which NODE_OPTIONS does not accept; a later flag wins, so
 * `--initial-old-space-size=0` runs the relay without its heap floor).
 */
export function relayNodeArgs() {
  return [...relayNodeFlags(), ...(process.env.BENCH_RELAY_NODE_ARGS ?? '').split(/\s+/).filter((a) => a !== '')];
}

// ---------------------------------------------------------------------------------------------
// The driver's heap

/**
 * V8's young generation for the process that drives a bench and times its messages, in MiB per
 * semi-space (`node --max-semi-space-size`). A driver carrying 4,000–6,000 messages/s allocates
 * ~90 MB/s while its old generation holds only ~10 MB. With V8's default young generation
 * (growing to 16 MiB per semi-space) the old generation's headroom stays below the young
 * generation's size, so V8 starts the next mark-compact as soon as the last one ends: 40 to 100
 * of them in 15 s, 4–6 ms each, which the latencies the driver measures then include (W2 at 10
 * pairs: p99 9.2–9.8 ms with the default against 4.2–4.4 ms with 4 MiB, the relay's own figures
 * unchanged; ejabberd's W2 and W3 the same either way). The relay runs with its own flags
 * (`relayNodeFlags`), the session holders with V8's defaults.
 */
export const DRIVER_SEMI_SPACE_MIB = 4;
const DRIVER_HEAP_FLAG = `--max-semi-space-size=${DRIVER_SEMI_SPACE_MIB}`;

/**
 * Runs this script again in a child with the driver's young generation, unless the process
 * already has a `--max-semi-space-size` of its own or is that child (then resolves to false and
 * the caller goes on). Otherwise resolves to true once the child has exited, with its exit code
 * set as this process's (128 + the signal's number if a signal ended it); SIGINT and SIGTERM are
 * passed on to the child.
 */
export async function rerunWithDriverHeap() {
  if (process.env.BENCH_DRIVER_CHILD === '1' || driverSemiSpaceMiB() !== null) return false;
  const child = spawn(process.execPath, [DRIVER_HEAP_FLAG, ...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: { ...process.env, BENCH_DRIVER_CHILD: '1' },
  });
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig));
  process.exitCode = await new Promise((res) => {
    child.once('error', (e) => {
      console.error(`could not start the driver: ${e.message}`);
      res(1);
    });
    child.once('exit', (code, signal) => res(code ?? 128 + (signal === null ? 0 : (osConstants.signals[signal] ?? 0))));
  });
  return true;
}

/** The `--max-semi-space-size` this process runs with (MiB), or null for V8's default. */
export function driverSemiSpaceMiB() {
  const own = [...(process.env.NODE_OPTIONS ?? '').split(/\s+/), ...process.execArgv].map((a) => a.replaceAll('_', '-'));
  let mib = null;
  own.forEach((a, i) => {
    if (a === '--max-semi-space-size') mib = Number(own[i + 1]);
    else if (a.startsWith('--max-semi-space-size=')) mib = Number(a.split('=')[1]);
  });
  return mib;
}

/** Node flags for a helper process the driver forks: its own, without the driver's heap. */
export function forkExecArgv(extra = []) {
  return [...process.execArgv.filter((a) => a !== DRIVER_HEAP_FLAG), ...extra];
}

// ---------------------------------------------------------------------------------------------
// Settings

/**
 * The relay's address line: the first line of its stdout that is a JSON object (`relay start
 * --json`). Every other line (e.g. with BENCH_RELAY_NODE_ARGS=--trace-gc) is appended to the file
 * `keep` if it is not '', and dropped otherwise; reading on also keeps the relay from blocking on
 * a full pipe. `lines` is a readline interface over the relay's stdout.
 */
export function relayAddressLine(lines, keep) {
  let addressSeen = false;
  return new Promise((resolve) =>
    lines.on('line', (line) => {
      if (!addressSeen && line.startsWith('{')) {
        addressSeen = true;
        resolve(line);
      } else if (keep !== '') {
        appendFileSync(keep, `${line}\n`);
      }
    }),
  );
}

export function envNum(name, dflt) {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number`);
  return n;
}

export function envList(name, dflt) {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  return v.split(',').map((s) => s.trim()).filter((s) => s !== '');
}

// ---------------------------------------------------------------------------------------------
// Figures

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export const round = (v, d = 1) => (Number.isFinite(v) ? Math.round(v * 10 ** d) / 10 ** d : null);

export function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

/** Growable Float64 array of latency samples (ms). */
export class Samples {
  constructor() {
    this.a = new Float64Array(1 << 16);
    this.n = 0;
  }
  push(v) {
    if (this.n === this.a.length) {
      const b = new Float64Array(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.n++] = v;
  }
  sorted() {
    return this.a.slice(0, this.n).sort();
  }
}

// ---------------------------------------------------------------------------------------------
// CPU and memory from /proc (the readers of one process throw once it is gone: see orNaN)

function clockTicks() {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
}
const CLK_TCK = clockTicks();

/** utime and stime of a process (all its threads), in clock ticks. */
function procTicks(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the ")" that closes the command name: state is field 3, utime 14, stime 15.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return [Number(f[11]), Number(f[12])];
}

/** utime and stime of a process, in microseconds. */
export function procTimes(pid) {
  const [utime, stime] = procTicks(pid);
  return { user: (utime * 1e6) / CLK_TCK, sys: (stime * 1e6) / CLK_TCK };
}

/** utime+stime of a process, in microseconds. */
export function procCpuUs(pid) {
  const [utime, stime] = procTicks(pid);
  return ((utime + stime) * 1e6) / CLK_TCK;
}

/** VmRSS of a process, in KiB. */
export function procRssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m === null ? NaN : Number(m[1]);
}

/** A reader of one process (procCpuUs, procRssKiB) that gives NaN instead of throwing once it is gone. */
export function orNaN(read) {
  return (pid) => {
    try {
      return read(pid);
    } catch {
      return NaN;
    }
  };
}

/** Busy CPU time of the whole machine (all processes), in microseconds, from /proc/stat. */
export function machineBusyUs() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return ((total - f[3] - f[4]) * 1e6) / CLK_TCK;
}

/** CPU of this driver process, in microseconds. */
export function driverCpuUs() {
  const u = process.cpuUsage();
  return u.user + u.system;
}

/** CPU (cores) the machine uses over `ms` while this bench does nothing. */
async function backgroundCores(ms = 1000) {
  const m0 = machineBusyUs();
  const d0 = driverCpuUs();
  const t0 = performance.now();
  await sleep(ms);
  return Math.max(0, (machineBusyUs() - m0 - (driverCpuUs() - d0)) / ((performance.now() - t0) * 1000));
}

/** Waits (up to BENCH_QUIET_WAIT_S) until other processes leave the machine idle; returns their load. */
export async function waitQuiet(cfg) {
  const until = performance.now() + cfg.quietWaitS * 1000;
  let load = await backgroundCores();
  while (load >= NOISY_CORES && performance.now() < until) {
    console.log(`  (machine busy: ${load.toFixed(2)} cores used by other processes; waiting)`);
    await sleep(4000);
    load = await backgroundCores();
  }
  return round(load, 2);
}

// ---------------------------------------------------------------------------------------------
// Results and main

/** The results file of a bench invocation: bench/results/<name>-<date of runId>.jsonl. */
export function resultsFile(name, runId) {
  return join(RESULTS_DIR, `${name}-${runId.slice(0, 10)}.jsonl`);
}

/** Appends one JSON line to a results file. */
export function appendResult(file, line) {
  mkdirSync(RESULTS_DIR, { recursive: true });
  appendFileSync(file, `${JSON.stringify(line)}\n`);
}

/** Runs a bench's main; `killChildren` kills what it started if it fails or is interrupted. */
export async function runMain(main, killChildren) {
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => {
      killChildren();
      process.exit(130);
    });
  }
  try {
    await main();
  } catch (e) {
    console.error(e);
    killChildren();
    process.exitCode = 1;
  }
  // Sockets that linger after their close handshake must not keep the bench alive.
  setTimeout(() => process.exit(), 200).unref();
}
