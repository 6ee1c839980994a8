#!/usr/bin/env node
// SPDX-License-Identifier: AGPL-3.0-or-later
// Comparison bench: the same workloads (W1-W7) against a Murmure relay (plain WebSocket on
// loopback, and TLS), Prosody and ejabberd, each started fresh on loopback with a throwaway
// config and stopped by PID. One JSON line per run in bench/results/compare-<date>.jsonl, then
// tables with Murmure/ejabberd and Murmure/Prosody ratios. bench/README.md explains the method.
//
// Usage: npm run bench:compare   (or: node bench/compare/run.mjs after `npx tsc -b`)
// Env: BENCH_QUICK, BENCH_ONLY, BENCH_SERVERS, BENCH_PIN, BENCH_REPEATS, BENCH_WARMUP_S,
//      BENCH_DURATION_S, BENCH_W2_PAIRS, BENCH_W4_SESSIONS, BENCH_W5_MESSAGES, BENCH_W7_SESSIONS,
//      BENCH_NO_INSTALL, BENCH_QUIET_WAIT_S, BENCH_NO_RESULTS (bench/README.md).

import { execFileSync, spawnSync } from 'node:child_process';
import { cpus, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { appendResult, driverSemiSpaceMiB, envList, envNum, relayNodeArgs, rerunWithDriverHeap, resultsFile, round, runMain, waitQuiet } from '../lib.mjs';
import { closedLoop, crashAfterAck, idleSessions, reconnectStorm, storeAndForward } from './core.mjs';
import { allCpus, alive, cmdOutput, killLiveServers, pinProcess } from './proc.mjs';
import { SERVERS } from './servers.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '../..');
const ALL_WORKLOADS = ['W1', 'W2', 'W3', 'W4', 'W5', 'W6', 'W7', 'E2E'];
/** Messages of the end-to-end row (two real agents through a relay): bench/client-bench.mjs. */
const E2E_MESSAGES = { quick: 1000, full: 3000 };

// ---------------------------------------------------------------------------------------------
// Settings

function settings() {
  const quick = process.env.BENCH_QUICK === '1';
  const cfg = {
    quick,
    only: envList('BENCH_ONLY', ALL_WORKLOADS).map((w) => w.toUpperCase()),
    servers: envList('BENCH_SERVERS', ['prosody', 'ejabberd', 'murmure', 'murmure-tls']),
    pin: envList('BENCH_PIN', quick ? ['pinned'] : ['pinned', 'unpinned']),
    repeats: envNum('BENCH_REPEATS', quick ? 1 : 3),
    warmupS: envNum('BENCH_WARMUP_S', quick ? 0.5 : 2),
    durationS: envNum('BENCH_DURATION_S', quick ? 2 : 10),
    w2Pairs: envList('BENCH_W2_PAIRS', ['10', '100', '500']).map(Number),
    w4Sessions: envList('BENCH_W4_SESSIONS', quick ? ['1000'] : ['1000', '10000']).map(Number),
    offlineMessages: envNum('BENCH_W5_MESSAGES', quick ? 2000 : 10000),
    w7Sessions: envNum('BENCH_W7_SESSIONS', quick ? 1000 : 10000),
    perWorker: envNum('BENCH_PER_WORKER', 2500),
    loginConcurrency: envNum('BENCH_LOGIN_CONCURRENCY', 32),
    stormConcurrency: envNum('BENCH_STORM_CONCURRENCY', 0),
    stormDeadlineS: envNum('BENCH_STORM_DEADLINE_S', 300),
    install: process.env.BENCH_NO_INSTALL !== '1',
    quietWaitS: envNum('BENCH_QUIET_WAIT_S', 0),
    writeResults: process.env.BENCH_NO_RESULTS !== '1',
  };
  for (const s of cfg.servers) if (!(s in SERVERS)) throw new Error(`BENCH_SERVERS: unknown server ${s} (known: ${Object.keys(SERVERS).join(', ')})`);
  for (const w of cfg.only) if (!ALL_WORKLOADS.includes(w)) throw new Error(`BENCH_ONLY: unknown workload ${w}`);
  for (const p of cfg.pin) if (p !== 'pinned' && p !== 'unpinned') throw new Error('BENCH_PIN lists pinned and/or unpinned');
  if (cfg.repeats < 1) throw new Error('BENCH_REPEATS must be >= 1');
  return cfg;
}

/** The workload cases in run order; `accounts` is what an XMPP server needs registered. */
function cases(cfg) {
  const list = [];
  const add = (w, label, accounts, run) => cfg.only.includes(w) && list.push({ w, label, accounts, run });
  add('W1', '1 pair × 1', 2, (s) => closedLoop(s, cfg, 1, 1));
  for (const n of cfg.w2Pairs) add('W2', `${n} pairs × 1`, 2 * n, (s) => closedLoop(s, cfg, n, 1));
  add('W3', '100 pairs × 10', 200, (s) => closedLoop(s, cfg, 100, 10));
  for (const n of cfg.w4Sessions) add('W4', `${n.toLocaleString('en-US')} idle sessions`, n + 16, (s) => idleSessions(s, cfg, n));
  add('W5', `${cfg.offlineMessages.toLocaleString('en-US')} to an offline recipient`, 2, (s) => storeAndForward(s, cfg));
  add('W6', `kill -9 after ${cfg.offlineMessages.toLocaleString('en-US')} acked`, 2, (s, cpu) => crashAfterAck(s, cfg, cpu));
  add('W7', `${cfg.w7Sessions.toLocaleString('en-US')} sessions drop and resubscribe`, cfg.w7Sessions + 4, (s) => reconnectStorm(s, cfg, cfg.w7Sessions));
  return list;
}

// ---------------------------------------------------------------------------------------------
// Machine, versions, installation

function ensureInstalled(cfg) {
  const missing = [];
  if (cfg.servers.includes('prosody') && cmdOutput('sh', ['-c', 'command -v prosody']) === null) missing.push('prosody');
  if (cfg.servers.includes('ejabberd') && cmdOutput('sh', ['-c', 'command -v ejabberdctl && command -v erl']) === null) missing.push('ejabberd');
  for (const tool of ['taskset', 'strace']) if (cmdOutput('sh', ['-c', `command -v ${tool}`]) === null) missing.push(tool === 'taskset' ? 'util-linux' : tool);
  if (missing.length === 0) return;
  if (!cfg.install) throw new Error(`missing: ${missing.join(', ')} (BENCH_NO_INSTALL=1 forbids installing them)`);
  console.log(`installing ${missing.join(', ')} with apt-get`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () => execFileSync('apt-get', ['install', '-y', '-q', '--no-install-recommends', ...missing], { stdio: 'inherit', env });
  try {
    install();
  } catch {
    execFileSync('apt-get', ['update', '-q'], { stdio: 'inherit', env });
    install();
  }
}

function machine() {
  return {
    cpuModel: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memGiB: round(totalmem() / 2 ** 30, 1),
    kernel: cmdOutput('uname', ['-r']),
  };
}

function versions(cfg) {
  const dirty = cmdOutput('git', ['-C', ROOT, 'status', '--porcelain', '--untracked-files=no']);
  return {
    node: process.version,
    driverSemiSpaceMiB: driverSemiSpaceMiB(),
    relayNodeArgs: relayNodeArgs(),
    murmure: SERVERS.murmure.version(),
    murmureDirty: dirty === null ? null : dirty !== '',
    prosody: cfg.servers.includes('prosody') ? SERVERS.prosody.version() : null,
    ejabberd: cfg.servers.includes('ejabberd') ? SERVERS.ejabberd.version() : null,
    erlang: cfg.servers.includes('ejabberd') ? cmdOutput('erl', ['-noshell', '-eval', 'io:format("~s",[erlang:system_info(otp_release)]),halt().']) : null,
  };
}

const epmdPids = () => new Set((cmdOutput('pgrep', ['-x', 'epmd']) ?? '').split('\n').filter((s) => s !== '').map(Number));

// ---------------------------------------------------------------------------------------------
// Tables

const num = (v, d) => (v === null || v === undefined || !Number.isFinite(v) ? '-' : v >= 1000 ? Math.round(v).toLocaleString('en-US') : String(round(v, d)));

/** What each workload's table shows: [field, label, higher is better, decimals]. */
const METRICS = {
  W1: [['p50Ms', 'p50 ms (one-way)', false, 3], ['p99Ms', 'p99 ms', false, 3], ['maxMs', 'max ms', false, 2], ['msgsPerS', 'msgs/s', true, 0], ['serverUsPerMsg', 'server µs/msg', false, 1]],
  W2: [['msgsPerS', 'msgs/s', true, 0], ['p50Ms', 'p50 ms', false, 3], ['p99Ms', 'p99 ms', false, 3], ['serverUsPerMsg', 'server µs/msg', false, 1]],
  W3: [['msgsPerS', 'msgs/s', true, 0], ['p99Ms', 'p99 ms', false, 2], ['serverUsPerMsg', 'server µs/msg', false, 1], ['serverCores', 'server cores', null, 2]],
  W4: [['kbPerSession', 'KB/session', false, 1], ['rssAfterMiB', 'server RSS MiB', false, 1], ['loginsPerS', 'logins/subscribes per s', true, 0], ['serverUsPerLogin', 'server µs/login', false, 0]],
  W5: [['storeMsgsPerS', 'store msgs/s', true, 0], ['drainMsgsPerS', 'drain msgs/s', true, 0], ['firstMsgMs', 'first msg after login ms', false, 1], ['serverUsPerMsg', 'server µs/msg (store+drain)', false, 1]],
  W6: [['lost', 'acked but lost', false, 0], ['acked', 'acked', null, 0], ['fsyncsPerMsg', 'fsync+fdatasync per msg', null, 3]],
  W7: [['allServedS', 'all served (s)', false, 2], ['resubscribesPerS', 'resubscribes/s', true, 0], ['lost', 'not back', false, 0], ['serverUsPerSession', 'server µs/session', false, 0]],
};

/** Whether a run had errors, failed logins or undelivered messages: its figures cover less. */
function incomplete(r) {
  return (
    (r.errors ?? 0) > 0 ||
    (r.undelivered ?? 0) > 0 ||
    (r.failed ?? 0) > 0 ||
    (r.loginFailures ?? 0) > 0 ||
    (r.workload === 'W5' && r.received < r.messages) ||
    (r.workload === 'W6' && r.acked < r.messages) ||
    (r.workload === 'W7' && (r.probeDelivered === false || r.lost > 0))
  );
}

function median(xs) {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return null;
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Median ratio a/b over the repeats where both ran, with min-max. */
function ratio(runsA, runsB, field) {
  const rs = [];
  for (const a of runsA) {
    const b = runsB.find((r) => r.repeat === a.repeat);
    if (b === undefined || !Number.isFinite(a[field]) || !Number.isFinite(b[field]) || b[field] === 0) continue;
    rs.push(a[field] / b[field]);
  }
  if (rs.length === 0) return { text: '-', median: null };
  const m = median(rs);
  const lo = Math.min(...rs);
  const hi = Math.max(...rs);
  return { text: rs.length === 1 ? `${round(m, 2)}` : `${round(m, 2)} [${round(lo, 2)}–${round(hi, 2)}]`, median: m };
}

function printTables(cfg, results) {
  const servers = cfg.servers;
  const ratioCols = [];
  if (servers.includes('murmure') && servers.includes('ejabberd')) ratioCols.push(['murmure', 'ejabberd']);
  if (servers.includes('murmure') && servers.includes('prosody')) ratioCols.push(['murmure', 'prosody']);
  if (servers.includes('murmure') && servers.includes('murmure-tls')) ratioCols.push(['murmure-tls', 'murmure']);
  for (const pin of cfg.pin) {
    for (const c of cases(cfg)) {
      const runs = (srv) => results.filter((r) => r.pin === pin && r.case === c.label && r.server === srv && r.error === undefined);
      const header = ['', ...servers, ...ratioCols.map(([a, b]) => `${a}/${b}`)];
      const rows = [header];
      for (const [field, label, , d] of METRICS[c.w]) {
        const row = [label];
        for (const s of servers) {
          const rs = runs(s);
          const mark = rs.some((r) => r.driverBound) ? '*' : '';
          const noisy = rs.some((r) => r.noisy) ? '~' : '';
          const partial = rs.some(incomplete) ? '!' : '';
          row.push(rs.length === 0 ? (results.some((r) => r.pin === pin && r.case === c.label && r.server === s) ? 'error' : '-') : `${num(median(rs.map((r) => r[field])), d)}${mark}${noisy}${partial}`);
        }
        // Counts (lost, acked) and fsyncs per message are read side by side, not as ratios.
        for (const [a, b] of ratioCols) row.push(c.w === 'W6' ? '' : ratio(runs(a), runs(b), field).text);
        rows.push(row);
      }
      const widths = header.map((_, i) => Math.max(...rows.map((r) => String(r[i]).length)));
      console.log(`\n${c.w} ${c.label} — ${pin === 'pinned' ? 'pinned (server CPU 1, driver CPU 0)' : 'unpinned'}`);
      for (const [i, r] of rows.entries()) {
        console.log(r.map((cell, j) => (j === 0 ? String(cell).padEnd(widths[j]) : String(cell).padStart(widths[j]))).join('  '));
        if (i === 0) console.log(widths.map((w) => '-'.repeat(w)).join('  '));
      }
      const errs = results.filter((r) => r.pin === pin && r.case === c.label && r.error !== undefined);
      for (const e of errs) console.log(`  ${e.server} (repeat ${e.repeat}): ${e.error}`);
    }
  }
  console.log('\nValues: median of the repeats; ratios: median [min–max] of per-repeat ratios. * driver-bound run (driver ≥ 0.95 core: read µs/msg), ~ noisy run (other processes ≥ 0.15 core), ! run with errors, failed logins or messages not delivered (see its JSON line).');
}

/** The issue's targets, from the pinned runs (unpinned when no pinned run). */
function printTargets(cfg, results) {
  const pin = cfg.pin.includes('pinned') ? 'pinned' : cfg.pin[0];
  const runs = (srv, w, label) => results.filter((r) => r.pin === pin && r.server === srv && r.workload === w && (label === undefined || r.case === label) && r.error === undefined);
  const med = (rs, f) => median(rs.map((r) => r[f]));
  const checks = [];
  // Ratio targets are judged on the median of the per-repeat ratios, the figure the tables show.
  const cmp = (what, w, label, field, other, ok) => {
    const ra = runs('murmure', w, label);
    const rb = runs(other, w, label);
    const a = med(ra, field);
    const b = med(rb, field);
    const r = ratio(ra, rb, field);
    checks.push([what, r.median === null ? null : ok(r.median), r.median === null ? 'not measured' : `${num(a, 3)} vs ${num(b, 3)} (ratio ${r.text})`]);
  };
  cmp('W3 msgs/s ≥ 1.0× ejabberd (fsync-durable, group commit)', 'W3', undefined, 'msgsPerS', 'ejabberd', (x) => x >= 1);
  for (const c of cases(cfg).filter((x) => x.w === 'W2')) cmp(`W2 ${c.label} p99 ≤ ejabberd's`, 'W2', c.label, 'p99Ms', 'ejabberd', (x) => x <= 1);
  const w4 = cases(cfg).filter((x) => x.w === 'W4').at(-1);
  if (w4 !== undefined) {
    cmp(`W4 ${w4.label}: KB/session ≤ 0.5× Prosody's`, 'W4', w4.label, 'kbPerSession', 'prosody', (x) => x <= 0.5);
    const a = med(runs('murmure', 'W4', w4.label), 'kbPerSession');
    checks.push([`W4 ${w4.label}: KB/session ≤ 17`, a === null ? null : a <= 17, a === null ? 'not measured' : num(a, 1)]);
  }
  cmp('W5 store msgs/s ≥ 3× Prosody (fsync-durable)', 'W5', undefined, 'storeMsgsPerS', 'prosody', (x) => x >= 3);
  // A repeat that ended in an error fails W6 and W7 instead of dropping out of them.
  const errored = (w) => results.filter((r) => r.pin === pin && r.server === 'murmure' && r.workload === w && r.error !== undefined).length;
  const erroredNote = (w) => (errored(w) > 0 ? `; ${errored(w)} repeat(s) failed with an error` : '');
  // Every message must have been acknowledged too: a run whose SENDs failed loses nothing acked.
  const w6 = runs('murmure', 'W6');
  checks.push([
    'W6 0 acknowledged messages lost (all acknowledged)',
    w6.length === 0 && errored('W6') === 0 ? null : errored('W6') === 0 && w6.every((r) => r.lost === 0 && r.acked === r.messages),
    (w6.length === 0 ? 'no run' : w6.map((r) => (r.acked === r.messages ? `${r.lost}` : `${r.lost} (only ${r.acked} of ${r.messages} acked)`)).join(', ')) + erroredNote('W6'),
  ]);
  // A repeat whose probe was not delivered has no time: it fails the target, it is not skipped.
  const w7 = runs('murmure', 'W7');
  const w7s = med(w7, 'allServedS');
  const w7failed = w7.filter((r) => r.allServedS === null || r.lost !== 0);
  checks.push([
    `W7 ${cfg.w7Sessions.toLocaleString('en-US')} resubscribed within 5 s${cfg.w7Sessions < 10000 ? ' (target is for 10,000)' : ''}`,
    w7.length === 0 && errored('W7') === 0 ? null : errored('W7') === 0 && w7s !== null && w7s <= 5 && w7failed.length === 0,
    `${w7s === null ? 'no time' : `${num(w7s, 2)} s`}${w7failed.length > 0 ? `; ${w7failed.length} repeat(s) with sessions not back or the probe not delivered` : ''}${erroredNote('W7')}`,
  ]);
  console.log(`\nTargets of the issue (${pin}, Murmure = plain WebSocket row):`);
  for (const [what, ok, got] of checks) console.log(`  ${ok === null ? '  -   ' : ok ? 'met   ' : 'MISSED'}  ${what}: ${got}`);
}

// ---------------------------------------------------------------------------------------------
// Main

async function main() {
  const cfg = settings();
  ensureInstalled(cfg);
  const epmdBefore = epmdPids();
  const runId = new Date().toISOString();
  const meta = { runId, machine: machine(), versions: versions(cfg), quick: cfg.quick, warmupS: cfg.warmupS, durationS: cfg.durationS, bodyBytes: 100 };
  const list = cases(cfg);
  const accounts = Math.max(2, ...list.map((c) => c.accounts));
  const nCpu = cpus().length;
  if (cfg.pin.includes('pinned') && nCpu < 2) throw new Error('pinned runs need 2 CPUs (BENCH_PIN=unpinned)');
  console.log(`murmure bench:compare — ${meta.machine.cores} CPU (${meta.machine.cpuModel}), node ${meta.versions.node}, murmure ${meta.versions.murmure}${meta.versions.murmureDirty ? '+dirty' : ''}, prosody ${meta.versions.prosody ?? '-'}, ejabberd ${meta.versions.ejabberd ?? '-'}`);
  console.log(`servers ${cfg.servers.join(', ')}; workloads ${list.map((c) => `${c.w} ${c.label}`).join('; ')}`);
  console.log(`${cfg.repeats} repeat(s), ${cfg.pin.join(' and ')}; warm-up ${cfg.warmupS} s, measured ${cfg.durationS} s, 100 B bodies, TLS off except murmure-tls`);
  const file = resultsFile('compare', runId);
  const results = [];
  const everything = allCpus();
  try {
    for (let repeat = 1; repeat <= cfg.repeats; repeat++) {
      for (const pin of cfg.pin) {
        pinProcess(process.pid, pin === 'pinned' ? '0' : everything);
        const serverCpu = pin === 'pinned' ? '1' : null;
        for (const c of list) {
          for (const name of cfg.servers) {
            const srv = SERVERS[name];
            const bg = await waitQuiet(cfg);
            process.stdout.write(`[${repeat}/${cfg.repeats} ${pin}] ${c.w} ${c.label} — ${name} ... `);
            let r;
            let server = null;
            try {
              server = await srv.start({ cpu: serverCpu, accounts, templateCpu: everything });
              r = await c.run(server, serverCpu);
            } catch (e) {
              r = { error: String(e?.message ?? e).slice(0, 500) };
            } finally {
              if (server !== null) await server.stop().catch(() => undefined);
            }
            const line = { ...meta, repeat, pin, server: name, workload: c.w, case: c.label, backgroundCoresBefore: bg, ...r };
            results.push(line);
            console.log(r.error !== undefined ? `ERROR ${r.error}` : summary(c.w, r));
            if (cfg.writeResults) appendResult(file, line);
          }
        }
      }
    }
    if (cfg.only.includes('E2E')) {
      // Unpinned, as its rows say: after a pinned repeat the driver is on CPU 0, and the client
      // bench with its agents and relay would inherit that.
      pinProcess(process.pid, everything);
      for (let repeat = 1; repeat <= cfg.repeats; repeat++) {
        const bg = await waitQuiet(cfg);
        process.stdout.write(`[${repeat}/${cfg.repeats} unpinned] E2E two real agents end to end — murmure-tls ... `);
        const r = endToEnd(cfg);
        const line = { ...meta, repeat, pin: 'unpinned', server: 'murmure-tls', workload: 'E2E', case: 'two agents, one way', backgroundCoresBefore: bg, ...r };
        results.push(line);
        console.log(r.error !== undefined ? `ERROR ${r.error}` : `msgs/s ${r.msgsPerS}, bare libsignal ${r.bareMsgsPerS} msgs/s, ratio ${r.ratio}`);
        if (cfg.writeResults) appendResult(file, line);
      }
    }
  } finally {
    pinProcess(process.pid, everything);
    for (const name of cfg.servers) SERVERS[name].cleanup();
    // epmd is left running by the Erlang VM: stop the one this bench started, by PID.
    for (const pid of epmdPids()) if (!epmdBefore.has(pid) && alive(pid)) process.kill(pid, 'SIGTERM');
  }
  printTables(cfg, results);
  const e2e = results.filter((r) => r.workload === 'E2E' && r.error === undefined);
  if (e2e.length > 0) {
    console.log(
      `\nE2E two real Murmure agents (libsignal, encrypted stores, receipts) through the relay over TLS: ` +
        `${median(e2e.map((r) => r.msgsPerS))} msgs/s one way; bare libsignal ${median(e2e.map((r) => r.bareMsgsPerS))} msgs/s (median of ${e2e.length})`,
    );
  }
  printTargets(cfg, results);
  if (cfg.writeResults) console.log(`\nJSON lines appended to ${file}`);
}

/**
 * The end-to-end row: bench/client-bench.mjs runs two real agents (libsignal sessions, encrypted
 * stores, receipts) through a relay over TLS, beside bare libsignal, so the cost of end-to-end
 * encryption shows next to the relay-only rows. XMPP has no counterpart (no E2EE in these servers).
 */
function endToEnd(cfg) {
  const messages = cfg.quick ? E2E_MESSAGES.quick : E2E_MESSAGES.full;
  const run = spawnSync(process.execPath, [join(ROOT, 'bench/client-bench.mjs')], {
    // Its own BENCH_ONLY names its rows, not this bench's workloads.
    env: { ...process.env, BENCH_MESSAGES: String(messages), BENCH_ONLY: 'two,bare' },
    encoding: 'utf8',
    timeout: 600_000,
  });
  const out = run.stdout ?? '';
  const full = /two client processes, one way\s+(\d+) msg\/s/.exec(out);
  const bare = /bare libsignal encrypt\+decrypt.*?\s(\d+) msg\/s/.exec(out);
  if (run.status !== 0 || full === null || bare === null) return { error: `client bench failed (${run.status}): ${(run.stderr ?? '').slice(-300)}` };
  const msgsPerS = Number(full[1]);
  const bareMsgsPerS = Number(bare[1]);
  return { messages, msgsPerS, bareMsgsPerS, ratio: Math.round((msgsPerS / bareMsgsPerS) * 100) / 100 };
}

function summary(w, r) {
  const f = METRICS[w].map(([field, label, , d]) => `${label} ${num(r[field], d)}`).join(', ');
  const notes = [r.driverBound ? 'DRIVER-BOUND' : '', r.noisy ? `NOISY (others ${r.otherCores} cores)` : '', r.errors > 0 ? `${r.errors} errors` : '', r.failed > 0 ? `${r.failed} failed` : '', r.outOfOrder > 0 ? `${r.outOfOrder} out of order` : ''].filter(Boolean);
  return notes.length === 0 ? f : `${f} [${notes.join(', ')}]`;
}

if (!(await rerunWithDriverHeap())) await runMain(main, killLiveServers);
