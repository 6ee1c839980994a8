// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The per-source connection limit (THREATS.md S2): one source, an IPv4 address or an IPv6 /64
 * (what one host or one customer line usually holds), may keep at most so many connections open,
 * so that a flood from one place cannot take every slot of `maxConnections`. Sources in the
 * unlimited blocks (by default the loopback addresses, through which a local reverse proxy or an
 * onion service brings every client) are not limited per source. Counts are kept in memory only,
 * for the life of the connections, and never logged.
 * @module
 */

import { BlockList, isIPv4, isIPv6 } from 'node:net';

import { TokenBucket } from './token-bucket.js';
import { TurnGroup } from './turns.js';

/**
 * How often the relay forgets the sources that have no connection open and whose budget of
 * refusals has refilled: a flood from many sources (IPv6 /64s) leaves about 300 bytes each (its
 * counts, its budget and its idle turn group) for at most this long after their budget refilled.
 */
export const SOURCE_SWEEP_MS = 2000;

/** The loopback blocks: not limited per source unless the operator says otherwise. */
export const LOOPBACK_BLOCKS: readonly string[] = ['127.0.0.0/8', '::1/128'];

/** A list of unlimited sources that is not valid. */
export class SourceBlockError extends Error {}

const MAPPED_V4 = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i;

/**
 * The source a remote address counts against: an IPv4 address as it is (an IPv4-mapped IPv6
 * address as its IPv4 address), an IPv6 address as its /64 prefix. Undefined for what is not an
 * IP address.
 */
export function sourceKey(address: string): string | undefined {
  const p = plainAddress(address);
  return p === undefined ? undefined : keyOf(p);
}

type PlainAddress = Readonly<{ address: string; family: 'ipv4' | 'ipv6' }>;

/** An address as a socket reports it, made plain: an IPv4-mapped one as IPv4, an IPv6 zone dropped. */
function plainAddress(address: string): PlainAddress | undefined {
  const mapped = MAPPED_V4.exec(address);
  if (mapped !== null && isIPv4(mapped[1]!)) return { address: mapped[1]!, family: 'ipv4' };
  if (isIPv4(address)) return { address, family: 'ipv4' };
  const bare = address.split('%')[0]!;
  return isIPv6(bare) ? { address: bare, family: 'ipv6' } : undefined;
}

function keyOf(p: PlainAddress): string {
  return p.family === 'ipv4' ? p.address : `${ipv6Groups(p.address).slice(0, 4).join(':')}::/64`;
}

/** The eight 16-bit groups of a valid IPv6 address, in lower-case hex without leading zeros. */
function ipv6Groups(address: string): string[] {
  let text = address;
  const dot = text.indexOf('.');
  if (dot >= 0) {
    // An IPv4 tail (::ffff:1.2.3.4, 64:ff9b::1.2.3.4) is two groups.
    const cut = text.lastIndexOf(':') + 1;
    const v4 = text.slice(cut).split('.').map(Number) as [number, number, number, number];
    text = `${text.slice(0, cut)}${((v4[0] << 8) | v4[1]).toString(16)}:${((v4[2] << 8) | v4[3]).toString(16)}`;
  }
  const [left, right] = text.split('::') as [string, string | undefined];
  const head = left === '' ? [] : left.split(':');
  const tail = right === undefined || right === '' ? [] : right.split(':');
  const groups = right === undefined ? head : [...head, ...Array<string>(8 - head.length - tail.length).fill('0'), ...tail];
  return groups.map((g) => Number.parseInt(g, 16).toString(16));
}

/**
 * Parses unlimited source blocks: each an IPv4 or IPv6 address, with an optional `/prefix`.
 * Throws SourceBlockError naming the first one that is not valid.
 */
export function sourceBlocks(list: readonly string[]): BlockList {
  const blocks = new BlockList();
  for (const item of list) {
    const [address = '', prefix, extra] = item.split('/');
    const family = isIPv4(address) ? 'ipv4' : isIPv6(address) ? 'ipv6' : null;
    const max = family === 'ipv4' ? 32 : 128;
    const bits = prefix === undefined ? max : /^\d{1,3}$/.test(prefix) ? Number(prefix) : NaN;
    if (family === null || extra !== undefined || !(bits >= 0 && bits <= max)) {
      throw new SourceBlockError(`'${item.slice(0, 64)}' is not an address block (like 10.0.0.0/8 or fd00::/8)`);
    }
    blocks.addSubnet(address, bits, family);
  }
  return blocks;
}

/**
 * A connection's place in its source: given back when the connection closes, and the source's
 * budget of refused authorisations, shared by all its connections (and kept after the last one
 * closes until it has refilled, so that reconnecting does not refill it). Every command that
 * checks a key reserves one refusal before it is carried out, and gives it back if the check
 * passes: a source cannot have more checks under way than its budget holds, however many
 * connections it opens, apart from those of connections that have passed a check of a key stored
 * for a queue and failed none (`Connection.start`), which do not need a reservation. Such a
 * connection loses that at its first failed check, before its next command starts
 * (`Connection.keyChecked`).
 */
export type SourceSlot = Readonly<{
  /** Gives the slot back (once; later calls do nothing). */
  release: () => void;
  /** Reserves a refusal for a key check about to be made; false if the source has none left. */
  reserve: () => boolean;
  /** Gives back a reservation whose check passed. */
  refund: () => void;
  /** The turns in which the source's commands start: one group per source, per connection where sources are not limited. */
  turns: TurnGroup;
}>;

/** A slot of a source that is not limited: its connection takes turns on its own. */
const unlimitedSlot = (): SourceSlot => ({ release: () => undefined, reserve: () => true, refund: () => undefined, turns: new TurnGroup() });

type SourceState = { open: number; refusals: TokenBucket | null; turns: TurnGroup };

/**
 * Counts open connections per source and says whether one more may open; keeps each source's
 * budget of refused authorisations (a token bucket of `refusalsPerSecond`, twice that deep).
 */
export class SourceLimiter {
  private readonly state = new Map<string, SourceState>();

  constructor(
    private readonly max: number,
    private readonly unlimited: BlockList,
    private readonly refusalsPerSecond = Number.POSITIVE_INFINITY,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Sources with a connection open, or a budget not yet refilled. */
  get sources(): number {
    return this.state.size;
  }

  /** Forgets the sources with no connection open whose budget has refilled. */
  sweep(): void {
    for (const [key, s] of this.state) if (s.open === 0 && (s.refusals === null || s.refusals.full())) this.state.delete(key);
  }

  /**
   * Takes a slot for a new connection from `address`, or null if the source is at its limit.
   * A source's state lives while it has a connection open.
   */
  admit(address: string | undefined): SourceSlot | null {
    const p = address === undefined ? undefined : plainAddress(address);
    if (p === undefined || this.unlimited.check(p.address, p.family)) return unlimitedSlot();
    const key = keyOf(p);
    let s = this.state.get(key);
    if (s !== undefined && s.open >= this.max) return null;
    if (s === undefined) {
      const finite = Number.isFinite(this.refusalsPerSecond);
      this.state.set(key, (s = { open: 0, refusals: finite ? new TokenBucket(this.refusalsPerSecond, 2 * this.refusalsPerSecond, this.now) : null, turns: new TurnGroup() }));
    }
    s.open++;
    const st = s;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        st.open--;
        // A budget in use stays until it has refilled (`sweep`): reconnecting does not refill it.
        if (st.open === 0 && (st.refusals === null || st.refusals.full())) this.state.delete(key);
      },
      reserve: () => st.refusals === null || st.refusals.take(),
      refund: () => st.refusals?.give(1),
      turns: st.turns,
    };
  }
}
