// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * Relay addresses: `murmure://<fingerprint>@<host>:<port>`, where the fingerprint is the
 * unpadded base64url SHA-256 of the relay's TLS certificate (DER). docs/protocol.md, "Addresses".
 * @module
 */

import { fromBase64Url, toBase64Url } from '../encoding/base64url.js';
import { ProtocolError } from '../errors.js';

/** A parsed relay address. */
export type RelayAddress = Readonly<{ fingerprint: Uint8Array; host: string; port: number }>;

/** Longest address accepted, in characters. */
export const MAX_ADDRESS_LENGTH = 512;
const FINGERPRINT_LENGTH = 32;
const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
// A colon is required: formatRelayAddress brackets only hosts with one, so `[1.2.3.4]` or `[..]` would not survive a round trip.
const IPV6 = /^(?=.*:)[0-9A-Fa-f:.]{2,45}$/;

/** Whether `host` can stand in an address: a host name, an IPv4 address or an IPv6 address. */
export function isRelayHost(host: string): boolean {
  return host.includes(':') ? IPV6.test(host) : HOST_NAME.test(host);
}

/** Formats an address. */
export function formatRelayAddress(a: RelayAddress): string {
  const host = a.host.includes(':') ? `[${a.host}]` : a.host;
  return `murmure://${toBase64Url(a.fingerprint)}@${host}:${a.port}`;
}

/** Parses an address; throws `BAD_ADDRESS` with a reason a person can act on. */
export function parseRelayAddress(text: string): RelayAddress {
  if (text.length > MAX_ADDRESS_LENGTH) throw new ProtocolError('BAD_ADDRESS', 'relay address is too long');
  const m = /^murmure:\/\/([A-Za-z0-9_-]+)@(\[[^\]]+\]|[^:/@[\]]+):(\d{1,5})$/.exec(text.trim());
  if (m === null) throw new ProtocolError('BAD_ADDRESS', 'relay address must look like murmure://FINGERPRINT@HOST:PORT');
  const [, fp, rawHost, rawPort] = m as unknown as [string, string, string, string];
  let fingerprint: Uint8Array;
  try {
    fingerprint = fromBase64Url(fp);
  } catch (e) {
    throw new ProtocolError('BAD_ADDRESS', 'relay fingerprint is not base64url', { cause: e });
  }
  if (fingerprint.length !== FINGERPRINT_LENGTH) throw new ProtocolError('BAD_ADDRESS', 'relay fingerprint must be 32 bytes');
  const host = rawHost.startsWith('[') ? rawHost.slice(1, -1) : rawHost;
  if (rawHost.startsWith('[') ? !IPV6.test(host) : !HOST_NAME.test(host)) {
    throw new ProtocolError('BAD_ADDRESS', 'relay host is not a valid host name or address');
  }
  const port = Number(rawPort);
  if (port < 1 || port > 65_535) throw new ProtocolError('BAD_ADDRESS', 'relay port must be 1-65535');
  return { fingerprint, host, port };
}

/** Whether a host name or address is this machine's loopback (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}
