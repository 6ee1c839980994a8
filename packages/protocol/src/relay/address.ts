// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Relay addresses: `murmure://<fingerprint>[:<password>]@<host>:<port>`, where the fingerprint is
 * the unpadded base64url SHA-256 of the relay's TLS certificate (DER) and the optional password
 * is the relay's queue-creation password. docs/protocol.md, "Addresses".
 * @module
 */

import { fromBase64Url, toBase64Url } from '../encoding/base64url.js';
import { ProtocolError } from '../errors.js';

/**
 * A parsed relay address. `password`, when present, is what the relay asks of a client that
 * creates a queue (`NEW`); sending to a queue or reading one never needs it.
 */
export type RelayAddress = Readonly<{ fingerprint: Uint8Array; host: string; port: number; password?: string }>;

/** Longest queue-creation password, in characters. */
export const MAX_PASSWORD_LENGTH = 128;
/**
 * A queue-creation password: 1 to MAX_PASSWORD_LENGTH characters, each a letter, a digit or one
 * of `-._~` (RFC 3986's unreserved characters), so it stands in an address, a URL or a shell
 * command as it is.
 */
const PASSWORD = new RegExp(`^[A-Za-z0-9._~-]{1,${MAX_PASSWORD_LENGTH}}$`);

/** Whether `text` can be a queue-creation password. */
export function isRelayPassword(text: string): boolean {
  return PASSWORD.test(text);
}

/** Longest address accepted, in characters. */
export const MAX_ADDRESS_LENGTH = 512;
const FINGERPRINT_LENGTH = 32;
const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const OCTET = '(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)';
const IPV4 = new RegExp(`^${OCTET}(?:\\.${OCTET}){3}$`);
/**
 * A host whose last label is a number, all digits or `0x` and hex digits, is no DNS name (no
 * top-level domain is numeric): resolvers and URL parsers read it as an IPv4 address in some
 * form (`127.1`, `2130706433`, `0x7f000001`, `a.0x1`; WHATWG URL's "ends in a number"). Such a
 * host must be an IPv4 address in the dotted form, or it is refused.
 */
const ENDS_IN_NUMBER = /(?:^|\.)(?:\d+|0[xX][0-9A-Fa-f]*)$/;
const HEX_GROUP = /^[0-9A-Fa-f]{1,4}$/;

/** An IPv6 address in text form (RFC 4291 §2.2): eight groups, `::` once at most, an IPv4 tail. */
function isIpv6(host: string): boolean {
  if (host.length > 45) return false;
  const halves = host.split('::');
  if (halves.length > 2) return false;
  const groups = halves.map((h) => (h === '' ? [] : h.split(':')));
  const all = groups.flat();
  let count = all.length;
  // An embedded IPv4 address stands for the last two groups, and only at the very end.
  const tail = groups[groups.length - 1]!;
  const last = tail[tail.length - 1];
  if (last !== undefined && last.includes('.')) {
    if (!IPV4.test(last)) return false;
    all.pop();
    count++;
  }
  if (!all.every((g) => HEX_GROUP.test(g))) return false;
  return halves.length === 2 ? count <= 7 : count === 8;
}

/** Whether `host` is a host name or an IPv4 address (not bracketed). */
function isNameOrIpv4(host: string): boolean {
  return ENDS_IN_NUMBER.test(host) ? IPV4.test(host) : HOST_NAME.test(host);
}

/** Whether `host` can stand in an address: a host name, an IPv4 address or an IPv6 address. */
export function isRelayHost(host: string): boolean {
  // A colon marks IPv6: formatRelayAddress brackets only hosts with one.
  return host.includes(':') ? isIpv6(host) : isNameOrIpv4(host);
}

/**
 * Formats an address. The password is left out unless `withPassword` is set: the address of a
 * queue, in an invitation link or a message to a contact, must never carry it, and the
 * password-less form names the relay (one connection per relay, whatever password was given).
 */
export function formatRelayAddress(a: RelayAddress, opts: Readonly<{ withPassword?: boolean }> = {}): string {
  const host = a.host.includes(':') ? `[${a.host}]` : a.host;
  const password = opts.withPassword === true && a.password !== undefined ? `:${a.password}` : '';
  return `murmure://${toBase64Url(a.fingerprint)}${password}@${host}:${a.port}`;
}

/** Parses an address; throws `BAD_ADDRESS` with a reason a person can act on. */
export function parseRelayAddress(text: string): RelayAddress {
  const trimmed = text.trim();
  if (trimmed.length > MAX_ADDRESS_LENGTH) throw new ProtocolError('BAD_ADDRESS', 'relay address is too long');
  const m = /^murmure:\/\/([A-Za-z0-9_-]+)(?::([^@]*))?@(\[[^\]]+\]|[^:/@[\]]+):(\d{1,5})$/.exec(trimmed);
  if (m === null) throw new ProtocolError('BAD_ADDRESS', 'relay address must look like murmure://FINGERPRINT@HOST:PORT');
  const [, fp, password, rawHost, rawPort] = m as unknown as [string, string, string | undefined, string, string];
  if (password !== undefined && !PASSWORD.test(password)) {
    throw new ProtocolError('BAD_ADDRESS', `a relay password must have 1-${MAX_PASSWORD_LENGTH} characters, each a letter, a digit or one of - . _ ~`);
  }
  let fingerprint: Uint8Array;
  try {
    fingerprint = fromBase64Url(fp);
  } catch (e) {
    throw new ProtocolError('BAD_ADDRESS', 'relay fingerprint is not base64url', { cause: e });
  }
  if (fingerprint.length !== FINGERPRINT_LENGTH) throw new ProtocolError('BAD_ADDRESS', 'relay fingerprint must be 32 bytes');
  const host = rawHost.startsWith('[') ? rawHost.slice(1, -1) : rawHost;
  if (rawHost.startsWith('[') ? !host.includes(':') || !isIpv6(host) : !isNameOrIpv4(host)) {
    throw new ProtocolError('BAD_ADDRESS', 'relay host is not a valid host name or address');
  }
  const port = Number(rawPort);
  if (port < 1 || port > 65_535) throw new ProtocolError('BAD_ADDRESS', 'relay port must be 1-65535');
  return password === undefined ? { fingerprint, host, port } : { fingerprint, host, port, password };
}

/** The address without its password, in its canonical text form: the name of the relay. */
export function relayName(text: string): string {
  return formatRelayAddress(parseRelayAddress(text));
}

/** Whether a host name or address is this machine's loopback (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}
