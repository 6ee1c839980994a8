// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The `murmure` command: messaging commands (messenger.ts) and `murmure relay init|start`.
 * Every error is printed as one line (or a JSON object under --json), never as a stack trace.
 * @module
 */

import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { MAX_PASSWORD_LENGTH, ProtocolError, formatRelayAddress, isLoopbackHost, isRelayHost, isRelayPassword } from '@murmure/protocol';
import {
  DEFAULTS,
  DataLock,
  DataLockError,
  RelayServer,
  SourceBlockError,
  StoreError,
  createIdentity,
  jsonLogger,
  loadIdentity,
  relayConfig,
  sourceBlocks,
  type RelayConfig,
  type RelayIdentity,
} from '@murmure/relay';

import type * as MessengerModule from './messenger.js';

const USAGE = `murmure: a private messenger with no user ids

Usage:
  murmure init --name NAME --relay ADDRESS   create a home (or add a profile); a relay that
                                           asks a password to make queues has it in its
                                           address: murmure://FINGERPRINT:PASSWORD@HOST:PORT
                                           (kept in the home, never shown or sent on)
  murmure invite [--address] [--incognito]   print a one-time link (or a long-term address)
  murmure connect LINK [--incognito]         connect to a contact's link
  murmure sync [--wait SECONDS]              go online: handshakes, send, receive, print
  murmure contacts                           list contacts
  murmure send CONTACT TEXT                  queue a message
  murmure messages CONTACT [--limit N]       show a conversation
  murmure verify CONTACT [--mark]            show (and record) the safety number
  murmure receipts CONTACT --on|--off        delivery receipts to a contact
  murmure delete-contact CONTACT             delete a contact and its queue
  murmure switch CONTACT [--relay ADDRESS]   move a contact's messages to you onto a new queue
                                           (on ADDRESS, or on the same relay); finishes on sync
  murmure set-relay ADDRESS                  make the profile's new queues on ADDRESS (also to
                                           give the relay's address with a new password)
  murmure passphrase change                  re-key the home with a new passphrase
  murmure chat                               full-screen terminal chat

Global options, before or after the command:
  --home DIR (or MURMURE_HOME; default ~/.murmure)   --profile NAME   --json
  --socks5 HOST:PORT (or MURMURE_SOCKS5)   reach relays through a SOCKS5 proxy such as Tor
                                           (127.0.0.1:9050), each queue on a circuit of its own
The passphrase comes from MURMURE_PASSPHRASE or is asked for on the terminal.

  murmure relay init  --data DIR [--host H] [--port P] [--password PW|random] [--json]
  murmure relay start --data DIR [--host H] [--port P] [--password PW|random|none] [--json]
                      [options]
  murmure --help

--password makes queue creation on the relay need a password, which its address then carries
(murmure://FINGERPRINT:PASSWORD@HOST:PORT): a relay for people you give the address to. Anyone
can still send to the queues made on it. 'random' makes one; init keeps it in relay.json, and
start uses the kept one unless told otherwise for that run ('none': no password).

Relay options (start):
  --metrics-port P           serve Prometheus /metrics on 127.0.0.1:P (off by default)
  --message-ttl-days N       delete undelivered messages after N days (default 21)
  --queue-ttl-days N         delete queues unused for N days (default 90)
  --quota N                  most messages a queue holds until they are acknowledged
                             (default 128)
  --max-connections N        most open connections (default 16000)
  --max-connections-per-source N
                             most open connections from one IPv4 address or IPv6 /64
                             (default 1000)
  --unlimited-sources LIST   address blocks not limited per source, comma-separated, or
                             'none' (default 127.0.0.0/8,::1/128: a local proxy or onion
                             service brings every client from there)
  --listen-backlog N         connections waiting to be accepted (default 4096)
  --commands-per-second N    commands one connection may send per second (default 20000)
  --command-burst N          commands one connection may send in a burst (default 40000)
  --auth-refusals-per-source N
                             refused authorisations one source may cause per second, over
                             all its connections (default 2000; loopback is not limited)
  --queues-per-connection N  queues one connection may create (default 1000)
  --handshake-timeout-ms N   deadline of the TLS handshake, and again from it to the
                             client hello (default 10000)
  --idle-timeout-ms N        close connections silent this long (default 900000)
  --prefetch-budget-bytes N  bytes of messages read ahead for all subscriptions together
                             (default 67108864; 0: none)
  --unsent-budget-bytes N    bytes waiting unsent on connections whose clients do not read,
                             all together; past it the one waiting longest is cut off
                             (default 268435456, at least 1048576)
  --log-level LEVEL          debug, info, warn or error (default info)
  --plain-loopback           serve WebSocket without TLS, on a loopback host only
                             (for benchmarks that compare servers with TLS off)

Port 0 picks a free port. SIGTERM or SIGINT stops the relay cleanly.
Docs: docs/operations.md (running a relay), docs/protocol.md (the wire protocol).
`;

/** A usage or input error: printed as one line, exit code 2. */
class UsageError extends Error {}

/**
 * The messaging commands, loaded only when one is run: a relay does not carry libsignal, the
 * chat store and the terminal UI in its memory (about 16 MiB of its RSS) or its start-up time.
 */
type Messenger = typeof MessengerModule;
let messenger: Messenger | null = null;

/** How an error is told to the user: the messenger's reading once it is loaded, else its message. */
function describe(e: unknown): { code: string; message: string; usage: boolean } {
  if (messenger !== null) return messenger.describeError(e);
  return { code: 'FAILED', message: e instanceof Error ? e.message : String(e), usage: false };
}

const SETTINGS_FILE = 'relay.json';
/**
 * The node flag of the relay's heap floor, which the `murmure` command's first line gives node
 * (docs/operations.md, "The relay's heap"). A relay started by `node murmure.js` without it
 * works, but falls into back-to-back mark-compacts under a steady load: it says so in its log.
 */
export const HEAP_FLOOR_FLAG = '--initial-old-space-size';

/** Whether node was given HEAP_FLOOR_FLAG (V8 takes `_` for `-` in a flag's name). */
export function hasHeapFloor(execArgv: readonly string[]): boolean {
  return execArgv.some((a) => {
    const name = a.split('=', 1)[0]!.replace(/_/g, '-');
    return name === HEAP_FLOOR_FLAG;
  });
}

/** The options `relay init` takes; the others are for `relay start` only. */
const INIT_OPTIONS = new Set(['data', 'host', 'port', 'password', 'json', 'help']);

type Out = { write(s: string): unknown; isTTY?: boolean };

/** Runs the command line; resolves with the exit code. */
export async function main(argv: readonly string[], out: Out = process.stdout, err: Out = process.stderr): Promise<number> {
  const json = argv.includes('--json');
  try {
    return await run(argv, out, err);
  } catch (e) {
    const d = describe(e);
    const usage = e instanceof UsageError || d.usage;
    const code = e instanceof UsageError ? 'USAGE' : StoreError.is(e) ? `STORE_${e.code}` : DataLockError.is(e) || ProtocolError.is(e) ? e.code : d.code;
    const message = d.message;
    if (json) out.write(`${JSON.stringify({ error: { code, message } })}\n`);
    else err.write(`murmure: ${message}\n`);
    return usage ? 2 : 1;
  }
}

async function run(argv: readonly string[], out: Out, err: Out): Promise<number> {
  if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    out.write(USAGE);
    return 0;
  }
  if (argv[0] !== 'relay') {
    messenger = await import('./messenger.js');
    return messenger.runMessenger(argv, out, err);
  }
  const sub = argv[1];
  if (sub === undefined || sub === '--help' || sub === '-h') {
    out.write(USAGE);
    return 0;
  }
  const { values } = parseOptions(argv.slice(2));
  if (values.help === true) {
    out.write(USAGE);
    return 0;
  }
  if (typeof values.data !== 'string') throw new UsageError('--data DIR is required');
  const dataDir = resolve(values.data);
  if (sub === 'init') {
    const startOnly = Object.keys(values).filter((k) => !INIT_OPTIONS.has(k));
    if (startOnly.length > 0) throw new UsageError(`--${startOnly[0]} is an option of 'murmure relay start', not of 'init'`);
    return relayInit(dataDir, values, out);
  }
  if (sub === 'start') return relayStart(dataDir, values, out, err);
  throw new UsageError(`unknown relay command '${sub}' (see murmure --help)`);
}

type Values = ReturnType<typeof parseOptions>['values'];

function parseOptions(args: string[]) {
  try {
    return parseArgs({
      args,
      options: {
        data: { type: 'string' },
        host: { type: 'string' },
        port: { type: 'string' },
        password: { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        'metrics-port': { type: 'string' },
        'message-ttl-days': { type: 'string' },
        'queue-ttl-days': { type: 'string' },
        quota: { type: 'string' },
        'max-connections': { type: 'string' },
        'max-connections-per-source': { type: 'string' },
        'unlimited-sources': { type: 'string' },
        'listen-backlog': { type: 'string' },
        'commands-per-second': { type: 'string' },
        'command-burst': { type: 'string' },
        'queues-per-connection': { type: 'string' },
        'auth-refusals-per-source': { type: 'string' },
        'prefetch-budget-bytes': { type: 'string' },
        'unsent-budget-bytes': { type: 'string' },
        'handshake-timeout-ms': { type: 'string' },
        'idle-timeout-ms': { type: 'string' },
        'log-level': { type: 'string' },
        'plain-loopback': { type: 'boolean' },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (e) {
    throw new UsageError(e instanceof Error ? e.message.split('\n')[0] ?? 'bad options' : 'bad options');
  }
}

function intOption(v: string | boolean | undefined, name: string, min: number, max: number): number | undefined {
  if (v === undefined || typeof v === 'boolean') return undefined;
  if (!/^\d+$/.test(v)) throw new UsageError(`${name} must be a whole number`);
  const n = Number(v);
  if (n < min || n > max) throw new UsageError(`${name} must be between ${min} and ${max}`);
  return n;
}

/** `--unlimited-sources`: comma-separated address blocks, or 'none'. */
function unlimitedSources(v: string): string[] {
  if (v.trim() === 'none') return [];
  const list = v.split(',').map((b) => b.trim());
  try {
    sourceBlocks(list);
  } catch (e) {
    if (e instanceof SourceBlockError) throw new UsageError(`--unlimited-sources: ${e.message}, or 'none'`);
    throw e;
  }
  return list;
}

/** What relay.json keeps: where clients reach the relay, and its queue-creation password if any. */
type Settings = { host: string; port: number; password: string | null };

const PASSWORD_RULE = `1-${MAX_PASSWORD_LENGTH} characters, each a letter, a digit or one of - . _ ~`;

function readSettings(dataDir: string): Partial<Settings> {
  const p = join(dataDir, SETTINGS_FILE);
  if (!existsSync(p)) return {};
  let s: Partial<Settings>;
  try {
    s = JSON.parse(readFileSync(p, 'utf8')) as Partial<Settings>;
  } catch {
    throw new UsageError(`${SETTINGS_FILE} in the data folder is not valid JSON`);
  }
  if (typeof s !== 'object' || s === null || Array.isArray(s)) throw new UsageError(`${SETTINGS_FILE} in the data folder must hold a JSON object`);
  if (s.password !== undefined && s.password !== null && (typeof s.password !== 'string' || !isRelayPassword(s.password))) {
    throw new UsageError(`the password in ${SETTINGS_FILE} must have ${PASSWORD_RULE}`);
  }
  // A password put in by hand, in a file an older init made readable by all: for the owner only
  // (when the relay's user may change it; a file it cannot chmod is the operator's to protect).
  try {
    if (typeof s.password === 'string' && (statSync(p).mode & 0o077) !== 0) chmodSync(p, 0o600);
  } catch {
    // Left as it is.
  }
  return {
    ...(typeof s.host === 'string' ? { host: s.host } : {}),
    ...(typeof s.port === 'number' ? { port: s.port } : {}),
    ...(typeof s.password === 'string' ? { password: s.password } : {}),
  };
}

/** `--password`: a password, 'random' (a new one of 192 bits) or, for start only, 'none'. */
function passwordOption(v: string | boolean | undefined, allowNone: boolean): string | null | undefined {
  if (typeof v !== 'string') return undefined;
  if (v === 'random') return randomBytes(24).toString('base64url');
  if (v === 'none' && allowNone) return null;
  if (v === 'none') throw new UsageError("a new relay has no password unless --password gives one: leave it out rather than say 'none'");
  if (!isRelayPassword(v)) throw new UsageError(`--password must be 'random'${allowNone ? ", 'none'" : ''} or have ${PASSWORD_RULE}`);
  return v;
}

function settings(dataDir: string, values: Values, allowNone: boolean): Settings {
  const saved = readSettings(dataDir);
  const host = typeof values.host === 'string' ? values.host : (saved.host ?? DEFAULTS.host);
  const port = intOption(values.port, '--port', 0, 65_535) ?? saved.port ?? DEFAULTS.port;
  const given = passwordOption(values.password, allowNone);
  const password = given === undefined ? (saved.password ?? null) : given;
  // The address printed must be one clients can parse.
  if (!isRelayHost(host)) throw new UsageError(`the relay host must be a host name or an IP address, not '${host.slice(0, 64)}'`);
  return { host, port, password };
}

/** The address clients use, with the password when queue creation needs one. */
function addressOf(fingerprint: Uint8Array, { host, port, password }: Settings): string {
  return formatRelayAddress(password === null ? { fingerprint, host, port } : { fingerprint, host, port, password }, { withPassword: true });
}

async function relayInit(dataDir: string, values: Values, out: Out): Promise<number> {
  const saved = settings(dataDir, values, false);
  const { host, port, password } = saved;
  if (port === 0) throw new UsageError("relay init records the port clients will use: give one from 1 to 65535 (port 0, a free port, is for 'relay start')");
  // Under the data folder's lock: an init running beside a relay (or another init) on the same
  // folder stops before it looks for a key or writes anything there.
  const lock = DataLock.take(dataDir);
  let identity: RelayIdentity;
  try {
    if (loadIdentity(dataDir) !== null) throw new UsageError(`${dataDir} already holds a relay; use 'murmure relay start --data ${dataDir}'`);
    identity = await createIdentity(dataDir);
    // Only the owner may read the password (the key beside it is kept the same way).
    const file = join(dataDir, SETTINGS_FILE);
    writeFileSync(file, `${JSON.stringify(password === null ? { host, port } : { host, port, password })}\n`, { mode: 0o600 });
    chmodSync(file, 0o600);
  } finally {
    lock.release();
  }
  const address = addressOf(identity.fingerprint, saved);
  out.write(values.json === true ? `${JSON.stringify({ address })}\n` : `${address}\n`);
  return 0;
}

async function relayStart(dataDir: string, values: Values, out: Out, err: Out): Promise<number> {
  const { host, port, password } = settings(dataDir, values, true);
  const days = (v: number | undefined) => (v === undefined ? undefined : v * 86_400_000);
  const level = values['log-level'];
  if (level !== undefined && !['debug', 'info', 'warn', 'error'].includes(String(level))) {
    throw new UsageError('--log-level must be debug, info, warn or error');
  }
  const overrides: { -readonly [K in keyof Omit<RelayConfig, 'dataDir'>]?: RelayConfig[K] } = { host, port, createPassword: password };
  const metricsPort = intOption(values['metrics-port'], '--metrics-port', 0, 65_535);
  const messageTtlMs = days(intOption(values['message-ttl-days'], '--message-ttl-days', 1, 3650));
  const queueTtlMs = days(intOption(values['queue-ttl-days'], '--queue-ttl-days', 1, 36_500));
  const queueQuota = intOption(values.quota, '--quota', 1, 1_000_000);
  const maxConnections = intOption(values['max-connections'], '--max-connections', 1, 1_000_000);
  if (metricsPort !== undefined) overrides.metricsPort = metricsPort;
  if (messageTtlMs !== undefined) overrides.messageTtlMs = messageTtlMs;
  if (queueTtlMs !== undefined) overrides.queueTtlMs = queueTtlMs;
  if (queueQuota !== undefined) overrides.queueQuota = queueQuota;
  if (maxConnections !== undefined) overrides.maxConnections = maxConnections;
  const perSource = intOption(values['max-connections-per-source'], '--max-connections-per-source', 1, 1_000_000);
  if (perSource !== undefined) overrides.maxConnectionsPerSource = perSource;
  const unlimited = values['unlimited-sources'];
  if (typeof unlimited === 'string') overrides.unlimitedSources = unlimitedSources(unlimited);
  const listenBacklog = intOption(values['listen-backlog'], '--listen-backlog', 1, 65_535);
  if (listenBacklog !== undefined) overrides.listenBacklog = listenBacklog;
  const commandsPerSecond = intOption(values['commands-per-second'], '--commands-per-second', 1, 1_000_000);
  const commandBurst = intOption(values['command-burst'], '--command-burst', 1, 1_000_000);
  const queuesPerConnection = intOption(values['queues-per-connection'], '--queues-per-connection', 1, 1_000_000);
  const handshakeTimeoutMs = intOption(values['handshake-timeout-ms'], '--handshake-timeout-ms', 100, 600_000);
  const idleTimeoutMs = intOption(values['idle-timeout-ms'], '--idle-timeout-ms', 100, 86_400_000);
  if (commandsPerSecond !== undefined) overrides.commandsPerSecond = commandsPerSecond;
  if (commandBurst !== undefined) overrides.commandBurst = commandBurst;
  const authRefusals = intOption(values['auth-refusals-per-source'], '--auth-refusals-per-source', 1, 1_000_000);
  if (authRefusals !== undefined) overrides.authRefusalsPerSource = authRefusals;
  if (queuesPerConnection !== undefined) overrides.queuesPerConnection = queuesPerConnection;
  if (handshakeTimeoutMs !== undefined) overrides.handshakeTimeoutMs = handshakeTimeoutMs;
  if (idleTimeoutMs !== undefined) overrides.idleTimeoutMs = idleTimeoutMs;
  const prefetchBudgetBytes = intOption(values['prefetch-budget-bytes'], '--prefetch-budget-bytes', 0, 2 ** 40);
  if (prefetchBudgetBytes !== undefined) overrides.prefetchBudgetBytes = prefetchBudgetBytes;
  // At least what one connection may hold before it is closed anyway (maxBufferedBytes).
  const unsentBudgetBytes = intOption(values['unsent-budget-bytes'], '--unsent-budget-bytes', DEFAULTS.maxBufferedBytes, 2 ** 40);
  if (unsentBudgetBytes !== undefined) overrides.unsentBudgetBytes = unsentBudgetBytes;
  if (values['plain-loopback'] === true) {
    if (!isLoopbackHost(host)) throw new UsageError('--plain-loopback needs a loopback --host (127.0.0.1, ::1 or localhost)');
    overrides.plainLoopback = true;
  }
  const logger = jsonLogger(err, (level as 'debug' | 'info' | 'warn' | 'error' | undefined) ?? 'info');
  const relay = await RelayServer.start(relayConfig(dataDir, overrides), { logger });
  if (!hasHeapFloor(process.execArgv)) logger.log('warn', 'started without a heap floor', { flag: HEAP_FLOOR_FLAG });
  const metrics = {
    ...(relay.metricsPort === null ? {} : { metricsPort: relay.metricsPort }),
    ...(relay.config.plainLoopback ? { plain: true } : {}),
  };
  // Exit 0 only once every in-flight command has finished and the store has closed cleanly. The
  // handlers are in place before the address is printed: whoever reads it may stop the relay
  // at once, and a SIGTERM must not find the default action (an exit without closing the store).
  const stopped = new Promise<number>((resolveStop) => {
    const stop = () => {
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      relay.stop().then(
        () => resolveStop(0),
        (e: unknown) => {
          logger.log('error', 'relay did not stop cleanly', { code: StoreError.is(e) ? e.code : 'INTERNAL' });
          resolveStop(1);
        },
      );
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
  out.write(values.json === true ? `${JSON.stringify({ address: relay.address, ...metrics })}\n` : `${relay.address}\n`);
  return stopped;
}
