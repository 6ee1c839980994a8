// SPDX-License-Identifier: AGPL-3.0-or-later
// Process and machine helpers of the comparison bench: CPU pinning, free ports, spawning servers
// with a raised fd limit, stopping them by PID, syscall counts with strace. CPU and memory read
// from /proc are in ../lib.mjs, shared with the relay bench.

import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

import { sleep } from '../lib.mjs';

/**
 * The listen backlog every server of the comparison gets (Murmure's default; Linux caps it at
 * net.core.somaxconn), so a reconnect storm meets the same accept queue everywhere.
 */
export const LISTEN_BACKLOG = 4096;

/** Pins every thread of `pid` to `cpus` (a taskset list such as "0" or "0-1"). */
export function pinProcess(pid, cpus) {
  execFileSync('taskset', ['-a', '-pc', cpus, String(pid)], { stdio: 'ignore' });
}

/** All CPUs of the machine as a taskset list. */
export function allCpus() {
  const n = Number(execFileSync('nproc', ['--all'], { encoding: 'utf8' }).trim()) || 1;
  return n === 1 ? '0' : `0-${n - 1}`;
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Servers started and not stopped yet (child processes), killed if the bench is interrupted. */
export const liveServers = new Set();

/**
 * Spawns `cmd args` through `sh` with `ulimit -n` raised, optionally pinned with taskset. Every
 * step execs, so the child's PID is the server's.
 */
export function spawnServer(cmd, args, { cpu = null, env = process.env, cwd, fdLimit = 20000, stdout = 'ignore' } = {}) {
  const pin = cpu === null ? '' : `exec taskset -c ${cpu} "$@"`;
  const script = `ulimit -n ${fdLimit} 2>/dev/null || ulimit -n $(ulimit -Hn); ${pin || 'exec "$@"'}`;
  const child = spawn('sh', ['-c', script, 'sh', cmd, ...args], { env, cwd, stdio: ['ignore', stdout, 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-4000);
  });
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  liveServers.add(child);
  exited.then(() => liveServers.delete(child));
  return { child, exited, stderr: () => stderr };
}

/** Stops a spawned server by PID: SIGTERM, then SIGKILL after `graceMs`. */
export async function stopChild(child, exited, graceMs = 15_000) {
  if (child.exitCode === null && child.signalCode === null) {
    child.kill('SIGTERM');
    const r = await Promise.race([exited, sleep(graceMs).then(() => null)]);
    if (r === null) {
      child.kill('SIGKILL');
      await exited;
    }
  }
  return exited;
}

export function killLiveServers() {
  for (const c of liveServers) {
    try {
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** Runs `strace -f -c` on a running process; `stop()` resolves with the syscall counts. */
export function straceCount(pid, syscalls, outFile) {
  const child = spawn('strace', ['-f', '-c', '-e', `trace=${syscalls.join(',')}`, '-o', outFile, '-p', String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => {
    err += d;
  });
  const exited = new Promise((r) => child.once('exit', r));
  liveServers.add(child);
  exited.then(() => liveServers.delete(child));
  // strace prints "Process N attached" (one line per thread) once it is tracing.
  let wasAttached = false;
  const attached = new Promise((resolve) => {
    const check = () => {
      if (err.includes('attached')) {
        wasAttached = true;
        resolve();
      } else setTimeout(check, 20);
    };
    check();
    setTimeout(resolve, 3000);
  });
  return {
    attached,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
      await Promise.race([exited, sleep(10_000)]);
      // Never attached: no count at all, rather than zeros that read as "no syncs".
      if (!wasAttached && !err.includes('attached')) return null;
      const counts = {};
      try {
        for (const line of readFileSync(outFile, 'utf8').split('\n')) {
          const f = line.trim().split(/\s+/);
          // % time, seconds, usecs/call, calls, [errors,] syscall
          if (f.length >= 5 && syscalls.includes(f[f.length - 1])) counts[f[f.length - 1]] = Number(f[3]);
        }
      } catch {
        return null;
      }
      return counts;
    },
  };
}

/** Whether a process with this PID exists. */
export function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export function cmdOutput(cmd, args) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 20_000 }).trim();
  } catch {
    return null;
  }
}
