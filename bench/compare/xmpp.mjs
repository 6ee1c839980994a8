// SPDX-License-Identifier: AGPL-3.0-or-later
// XMPP adapter of the comparison bench: a raw c2s client over plain TCP (SASL PLAIN, resource
// binding, initial presence, XEP-0077 in-band registration, XEP-0199 ping as a barrier) and the
// lifecycle of Prosody and ejabberd servers started fresh on loopback with a throwaway config.

import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { sleep } from '../lib.mjs';
import { LISTEN_BACKLOG, cmdOutput, freePort, spawnServer, stopChild } from './proc.mjs';

const DOMAIN = 'localhost';
const PASSWORD = 'benchpw';
const NS_STREAM = `<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='${DOMAIN}' version='1.0'>`;
export const userName = (i) => `u${i}`;
const jid = (i) => `${userName(i)}@${DOMAIN}`;

// ---------------------------------------------------------------------------------------------
// The c2s connection

/**
 * One c2s stream. Top-level elements are cut out of the byte stream by a tag scanner that relies
 * on what both servers guarantee: `<` and `>` are escaped in text and attribute values.
 */
export class XmppConn {
  constructor(socket) {
    this.socket = socket;
    this.buf = '';
    this.pos = 0;
    this.depth = 0;
    this.start = 0;
    this.waiters = [];
    this.queue = [];
    this.onMessage = null;
    this.pendingIq = new Map();
    this.nextId = 0;
    this.out = '';
    this.flushScheduled = false;
    this.closed = false;
    this.closeHandlers = [];
    socket.setEncoding('utf8');
    socket.setNoDelay(true);
    socket.on('data', (d) => this.feed(d));
    const onClose = () => {
      if (this.closed) return;
      this.closed = true;
      for (const w of this.waiters) w.reject(new Error('stream closed'));
      this.waiters = [];
      for (const p of this.pendingIq.values()) p.reject(new Error('stream closed'));
      this.pendingIq.clear();
      for (const h of this.closeHandlers) h();
    };
    socket.on('close', onClose);
    socket.on('error', onClose);
  }

  static open({ host = '127.0.0.1', port }, timeoutMs = 120_000) {
    return new Promise((resolve, reject) => {
      const s = tcpConnect({ host, port });
      const t = setTimeout(() => {
        s.destroy();
        reject(new Error('TCP connect timeout'));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(t);
        s.removeAllListeners('error');
        resolve(new XmppConn(s));
      });
      s.once('error', (e) => {
        clearTimeout(t);
        reject(e);
      });
    });
  }

  feed(chunk) {
    this.buf = this.buf.length === 0 ? chunk : this.buf + chunk;
    const buf = this.buf;
    let pos = this.pos;
    for (;;) {
      const lt = buf.indexOf('<', pos);
      if (lt === -1) {
        pos = buf.length;
        break;
      }
      const gt = buf.indexOf('>', lt);
      if (gt === -1) {
        pos = lt;
        break;
      }
      const c = buf.charCodeAt(lt + 1);
      pos = gt + 1;
      if (c === 63 /* ? */ || c === 33 /* ! */) continue;
      if (c === 47 /* / */) {
        this.depth--;
        if (this.depth === 1) this.element(buf.slice(this.start, gt + 1));
        else if (this.depth <= 0) {
          this.depth = 0;
          this.socket.end();
        }
        continue;
      }
      if (this.depth <= 1 && buf.startsWith('stream:stream', lt + 1)) {
        this.depth = 1;
        continue;
      }
      const selfClosing = buf.charCodeAt(gt - 1) === 47;
      if (this.depth === 1) {
        this.start = lt;
        if (selfClosing) this.element(buf.slice(lt, gt + 1));
        else this.depth = 2;
      } else if (!selfClosing) this.depth++;
    }
    // Keep only what an unfinished element still needs.
    const keepFrom = this.depth >= 2 ? Math.min(this.start, pos) : pos;
    this.buf = buf.slice(keepFrom);
    this.pos = pos - keepFrom;
    this.start -= keepFrom;
  }

  element(el) {
    if (el.startsWith('<message')) {
      if (this.onMessage !== null) {
        const b = el.indexOf('<body');
        if (b !== -1) {
          const s = el.indexOf('>', b) + 1;
          this.onMessage(Number(el.slice(s, s + 10)));
        }
      }
      return;
    }
    if (el.startsWith('<iq')) {
      const id = /\sid=['"]([^'"]*)['"]/.exec(el)?.[1];
      const p = id === undefined ? undefined : this.pendingIq.get(id);
      if (p !== undefined) {
        this.pendingIq.delete(id);
        if (/\stype=['"]result['"]/.test(el)) p.resolve(el);
        else p.reject(new Error(`iq ${id} failed: ${el.slice(0, 300)}`));
        return;
      }
    }
    const w = this.waiters.shift();
    if (w !== undefined) w.resolve(el);
    else if (this.onMessage === null) this.queue.push(el);
  }

  /** The next top-level element not consumed by a handler (login phase). */
  next(timeoutMs = 120_000) {
    const q = this.queue.shift();
    if (q !== undefined) return Promise.resolve(q);
    if (this.closed) return Promise.reject(new Error('stream closed'));
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('XMPP server did not answer in time')), timeoutMs);
      this.waiters.push({
        resolve: (v) => {
          clearTimeout(t);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(t);
          reject(e);
        },
      });
    });
  }

  async nextMatching(prefix, timeoutMs) {
    for (;;) {
      const el = await this.next(timeoutMs);
      if (el.startsWith(prefix)) return el;
      if (el.startsWith('<stream:error')) throw new Error(`stream error: ${el.slice(0, 300)}`);
    }
  }

  /** Queues raw XML; everything queued in one turn goes out in one write. */
  write(s) {
    if (this.closed) return;
    this.out += s;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => {
        this.flushScheduled = false;
        if (this.closed || this.out.length === 0) return;
        const o = this.out;
        this.out = '';
        this.socket.write(o);
      });
    }
  }

  iq(type, payload, to = DOMAIN, timeoutMs = 120_000) {
    const id = `q${this.nextId++}`;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.pendingIq.delete(id);
        reject(new Error(`iq ${id} timed out`));
      }, timeoutMs);
      t.unref();
      this.pendingIq.set(id, {
        resolve: (v) => {
          clearTimeout(t);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(t);
          reject(e);
        },
      });
      this.write(`<iq type='${type}' id='${id}'${to === null ? '' : ` to='${to}'`}>${payload}</iq>`);
    });
  }

  /** XEP-0199 ping to the server: resolves once every stanza sent before it was processed. */
  ping(timeoutMs = 120_000) {
    return this.iq('get', "<ping xmlns='urn:xmpp:ping'/>", DOMAIN, timeoutMs);
  }

  async startStream() {
    this.write(NS_STREAM);
    return this.nextMatching('<stream:features');
  }

  /** XEP-0077 registration of `u{i}` on a stream that has not authenticated. */
  register(i) {
    return this.iq('set', `<query xmlns='jabber:iq:register'><username>${userName(i)}</username><password>${PASSWORD}</password></query>`, null);
  }

  /** SASL PLAIN, stream restart, bind, session (when required), presence, ping barrier. */
  async login(i, { resource = 'r', presence = true } = {}) {
    await this.startStream();
    this.write(`<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>${Buffer.from(`\0${userName(i)}\0${PASSWORD}`).toString('base64')}</auth>`);
    const r = await this.next();
    if (!r.startsWith('<success')) throw new Error(`SASL failed for ${userName(i)}: ${r.slice(0, 200)}`);
    const features = await this.startStream();
    await this.iq('set', `<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>${resource}</resource></bind>`, null);
    if (/<session[^>]*xmpp-session/.test(features) && !/<optional\/>/.test(features)) {
      await this.iq('set', "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/>");
    }
    if (presence) this.write('<presence/>');
    await this.ping();
    // Anything the login produced (own presence) is dropped from now on.
    this.queue = [];
  }

  /** A `type=chat` message to the bare JID of `u{to}`; the body starts with the 10-digit sequence. */
  sendChat(to, seq, bodyFiller) {
    this.write(`<message to='${jid(to)}' type='chat'><body>${String(seq).padStart(10, '0')}${bodyFiller}</body></message>`);
  }

  close() {
    if (this.closed) return;
    this.write('</stream:stream>');
    setTimeout(() => this.socket.destroy(), 200).unref();
  }

  terminate() {
    this.socket.destroy();
  }
}

/** Logs `u{i}` in on a fresh connection. */
export async function xmppLogin(endpoint, i, opts) {
  const c = await XmppConn.open(endpoint);
  try {
    await c.login(i, opts);
    return c;
  } catch (e) {
    c.terminate();
    throw e;
  }
}

/** Registers `u{from}`..`u{to-1}` with `concurrency` streams, several registrations per stream. */
export async function registerAccounts(endpoint, from, to, concurrency = 16) {
  let next = from;
  const worker = async () => {
    let c = null;
    while (next < to) {
      const i = next++;
      for (let attempt = 0; ; attempt++) {
        try {
          if (c === null || c.closed) {
            c = await XmppConn.open(endpoint);
            await c.startStream();
          }
          await c.register(i);
          break;
        } catch (e) {
          c?.terminate();
          c = null;
          if (String(e).includes('conflict')) break; // already registered
          if (attempt >= 3) throw new Error(`registration of ${userName(i)} failed: ${e.message}`);
          await sleep(200);
        }
      }
    }
    c?.close();
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}

// ---------------------------------------------------------------------------------------------
// The adapter's client side (shared by Prosody and ejabberd)

const FILLER = 'Z'.repeat(90); // 10-digit sequence + 90 bytes = a 100-byte body

export const xmppClient = {
  /** A pair: u{2i} sends to u{2i+1}. */
  async openPair(endpoint, i, onMessage) {
    const rcvIdx = 2 * i + 1;
    let rcv = await xmppLogin(endpoint, rcvIdx);
    rcv.onMessage = onMessage;
    const snd = await xmppLogin(endpoint, 2 * i, { presence: false });
    return {
      send: (seq) => snd.sendChat(rcvIdx, seq, FILLER),
      close() {
        rcv.close();
        snd.close();
      },
      dropReceiver: () => rcv.terminate(),
      async reconnectReceiver() {
        rcv = await xmppLogin(endpoint, rcvIdx);
        rcv.onMessage = onMessage;
      },
    };
  },

  /** An idle session of u{i}: bound resource and available presence. */
  async openSession(endpoint, i) {
    let c = await xmppLogin(endpoint, i);
    return {
      close: () => c.close(),
      terminate: () => c.terminate(),
      async reconnect() {
        c = await xmppLogin(endpoint, i);
      },
    };
  },

  /** Store-and-forward: u0 sends to the offline u1, which then logs in. */
  async offlineSetup() {
    return { sender: 0, recipient: 1 };
  },
  async openOfflineSender(endpoint, info) {
    const c = await xmppLogin(endpoint, info.sender, { presence: false });
    return {
      send: (seq) => c.sendChat(info.recipient, seq, FILLER),
      /**
       * Every message sent before was processed (stored) once the server answers the ping. It
       * answers only after all `n` are stored (ejabberd: ~400 msgs/s, ~40 msgs/s under W6's
       * strace), so the wait grows with `n`: 60 ms per message, at least 120 s.
       */
      barrier: (n = 0) => c.ping(Math.max(120_000, 60 * n)),
      ackedSeqs: null,
      close: () => c.close(),
    };
  },
  async openRecipient(endpoint, info, onMessage) {
    const c = await XmppConn.open(endpoint);
    c.onMessage = onMessage;
    // Offline messages come right after the initial presence, possibly before the ping answer.
    await c.login(info.recipient);
    return { close: () => c.close() };
  },

  accountsFor(w) {
    return w;
  },
};

// ---------------------------------------------------------------------------------------------
// Servers

function prosodyConfig(dir, port) {
  return `-- Throwaway config of the comparison bench: loopback, no TLS, no limits, no smacks, no MAM.
pidfile = "${dir}/prosody.pid"
data_path = "${dir}/data"
daemonize = false
run_as_root = true
log = { warn = "${dir}/prosody.log" }
interfaces = { "127.0.0.1" }
local_interfaces = { "127.0.0.1" }
c2s_ports = { ${port} }
c2s_interfaces = { "127.0.0.1" }
s2s_ports = { }
http_ports = { }
https_ports = { }
c2s_direct_tls_ports = { }
network_backend = "epoll"
network_settings = { tcp_backlog = ${LISTEN_BACKLOG} }
c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
storage = "internal"
allow_registration = true
registration_throttle_max = 1000000000
registration_throttle_period = 1
certificates = "${dir}/certs"
modules_enabled = { "roster"; "saslauth"; "disco"; "ping"; "register"; "offline"; "posix" }
modules_disabled = { "s2s"; "tls"; "limits"; "smacks"; "mam"; "carbons"; "csi_simple"; "tombstones" }
statistics = nil
VirtualHost "${DOMAIN}"
`;
}

function ejabberdConfig(dir, port) {
  return `# Throwaway config of the comparison bench: loopback, no TLS, no shapers, no smacks, no MAM.
hosts:
  - ${DOMAIN}
loglevel: warning
log_rotate_count: 0
certfiles: []
listen:
  -
    port: ${port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls: false
    starttls_required: false
    backlog: ${LISTEN_BACKLOG}
    max_stanza_size: 262144
    shaper: none
    access: all
auth_method: internal
auth_password_format: plain
registration_timeout: infinity
acl:
  loopback:
    ip:
      - 127.0.0.0/8
access_rules:
  register:
    allow: all
shaper: {}
shaper_rules:
  max_user_sessions: 1000000
  max_user_offline_messages: 100000000
  c2s_shaper: none
modules:
  mod_disco: {}
  mod_ping: {}
  mod_roster: {}
  mod_offline:
    access_max_user_messages: max_user_offline_messages
    use_mam_for_storage: false
  mod_register:
    access: register
    ip_access: all
    password_strength: 0
    welcome_message: {}
`;
}

export function prosodyVersion() {
  const v = cmdOutput('dpkg-query', ['-W', '-f=${Version}', 'prosody']);
  return v ?? (existsSync('/usr/lib/prosody/prosody.version') ? readFileSync('/usr/lib/prosody/prosody.version', 'utf8').trim() : null);
}

export function ejabberdVersion() {
  return cmdOutput('dpkg-query', ['-W', '-f=${Version}', 'ejabberd']);
}

/**
 * A server kind: `start({ cpu, dataDir })` runs it on a fresh copy of a data folder that already
 * holds the accounts the run needs (made once per bench invocation and server by `template`).
 */
function xmppServer(name, { setup, command, version, ready = 60_000 }) {
  const templates = new Map(); // accounts -> folder
  const serverDirs = new Set();

  async function launch(dir, port, cpu) {
    const { cmd, args, env } = command(dir, port);
    const { child, exited, stderr } = spawnServer(cmd, args, { cpu, env, cwd: dir });
    const endpoint = { host: '127.0.0.1', port };
    const t0 = Date.now();
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`${name} exited before it accepted connections: ${stderr()} ${logTail(dir)}`);
      }
      try {
        const c = await XmppConn.open(endpoint, 2000);
        await c.startStream();
        c.close();
        break;
      } catch {
        if (Date.now() - t0 > ready) {
          child.kill('SIGKILL');
          throw new Error(`${name} did not accept connections within ${ready / 1000} s: ${stderr()} ${logTail(dir)}`);
        }
        await sleep(100);
      }
    }
    return {
      name,
      client: xmppClient,
      pid: child.pid,
      endpoint,
      dir,
      stop: () => stopChild(child, exited),
      kill9: async () => {
        child.kill('SIGKILL');
        await exited;
      },
      restart: (cpu2) => launch(dir, port, cpu2),
    };
  }

  function logTail(dir) {
    for (const f of ['prosody.log', 'logs/ejabberd.log', 'logs/error.log']) {
      const p = join(dir, f);
      if (existsSync(p)) return readFileSync(p, 'utf8').slice(-1500);
    }
    return '';
  }

  async function template(accounts, cpu) {
    for (const [n, dir] of templates) if (n >= accounts) return dir;
    const dir = mkdtempSync(join(tmpdir(), `bench-${name}-tpl-`));
    serverDirs.add(dir);
    setup(dir);
    const port = await freePort();
    const s = await launch(dir, port, cpu);
    const t0 = Date.now();
    await registerAccounts(s.endpoint, 0, accounts);
    process.stdout.write(`  (${name}: registered ${accounts} accounts in ${((Date.now() - t0) / 1000).toFixed(1)} s, kept as a template)\n`);
    await s.stop();
    templates.set(accounts, dir);
    return dir;
  }

  return {
    name,
    kind: 'xmpp',
    version,
    client: xmppClient,
    /** Starts the server on a copy of a template holding `accounts` accounts. */
    async start({ cpu, accounts, templateCpu = null }) {
      const tpl = await template(accounts, templateCpu);
      const dir = mkdtempSync(join(tmpdir(), `bench-${name}-`));
      serverDirs.add(dir);
      cpSync(tpl, dir, { recursive: true });
      setup(dir, true);
      const port = await freePort();
      const s = await launch(dir, port, cpu);
      const stop = s.stop;
      return {
        ...s,
        stop: async () => {
          await stop();
          rmSync(dir, { recursive: true, force: true });
          serverDirs.delete(dir);
        },
      };
    },
    cleanup() {
      for (const d of serverDirs) rmSync(d, { recursive: true, force: true });
      serverDirs.clear();
      templates.clear();
    },
  };
}

export const prosody = xmppServer('prosody', {
  version: prosodyVersion,
  setup(dir) {
    mkdirSync(join(dir, 'data'), { recursive: true });
    mkdirSync(join(dir, 'certs'), { recursive: true });
  },
  command(dir, port) {
    writeFileSync(join(dir, 'prosody.cfg.lua'), prosodyConfig(dir, port));
    return { cmd: 'prosody', args: ['-F', '--config', join(dir, 'prosody.cfg.lua')], env: { ...process.env, HOME: dir } };
  },
});

export const ejabberd = xmppServer('ejabberd', {
  version: ejabberdVersion,
  setup(dir) {
    mkdirSync(join(dir, 'db'), { recursive: true });
    mkdirSync(join(dir, 'logs'), { recursive: true });
    if (!existsSync(join(dir, '.erlang.cookie'))) writeFileSync(join(dir, '.erlang.cookie'), `benchcookie${process.pid}`, { mode: 0o400 });
  },
  command(dir, port) {
    writeFileSync(join(dir, 'ejabberd.yml'), ejabberdConfig(dir, port));
    // As ejabberdctl does, without its switch to the ejabberd user (which resets the fd limit).
    // The Erlang node name stays the same for every copy of a template (mnesia is bound to it).
    return {
      cmd: 'erl',
      args: [
        '-sname', 'murmurebench@localhost',
        '-noinput',
        '+P', '250000',
        // Idle schedulers sleep instead of spinning, so ejabberd's CPU time is work, as the
        // other servers' is, and a spinning scheduler takes no CPU from the driver.
        '+sbwt', 'none', '+sbwtdcpu', 'none', '+sbwtdio', 'none',
        '-kernel', 'inet_dist_use_interface', '{127,0,0,1}',
        '-mnesia', 'dir', `"${join(dir, 'db')}"`,
        '-s', 'ejabberd',
      ],
      env: {
        ...process.env,
        HOME: dir,
        EJABBERD_CONFIG_PATH: join(dir, 'ejabberd.yml'),
        EJABBERD_LOG_PATH: join(dir, 'logs/ejabberd.log'),
        ERL_LIBS: '/usr/lib/x86_64-linux-gnu',
        ERL_EPMD_ADDRESS: '127.0.0.1',
        ERL_MAX_PORTS: '32000',
        ERL_MAX_ETS_TABLES: '1400',
        ERL_CRASH_DUMP: '/dev/null',
        ERL_CRASH_DUMP_BYTES: '0',
      },
    };
  },
});
