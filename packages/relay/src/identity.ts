// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * The relay's TLS identity: an Ed25519 key and a self-signed certificate kept in the data
 * folder. Clients pin the certificate's SHA-256 fingerprint, which is part of the address.
 * @module
 */

import { X509Certificate, createHash, createPrivateKey, webcrypto } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import type * as X509 from '@peculiar/x509';

/** The relay's key and certificate, PEM-encoded, and the certificate fingerprint. */
export type RelayIdentity = Readonly<{ keyPem: string; certPem: string; fingerprint: Uint8Array }>;

/** File names inside the data folder. */
export const KEY_FILE = 'tls-key.pem';
export const CERT_FILE = 'tls-cert.pem';
const CERT_YEARS = 20;

/** SHA-256 of a certificate's DER bytes. */
export function certificateFingerprint(certPem: string): Uint8Array {
  const der = new X509Certificate(certPem).raw;
  return new Uint8Array(createHash('sha256').update(der).digest());
}

/** Loads the identity from `dataDir`, or null when it has none yet. */
export function loadIdentity(dataDir: string): RelayIdentity | null {
  const keyPath = join(dataDir, KEY_FILE);
  const certPath = join(dataDir, CERT_FILE);
  if (!existsSync(keyPath) || !existsSync(certPath)) return null;
  const keyPem = readFileSync(keyPath, 'utf8');
  const certPem = readFileSync(certPath, 'utf8');
  createPrivateKey(keyPem);
  return { keyPem, certPem, fingerprint: certificateFingerprint(certPem) };
}

/**
 * The certificate library, loaded when a certificate is made (`relay init`, or a first start):
 * about 19 MiB of memory and 150 ms that a running relay does not need.
 */
async function loadX509(): Promise<typeof X509> {
  await import('reflect-metadata');
  return import('@peculiar/x509');
}

/** Random bytes of a certificate's serial number. */
export const SERIAL_BYTES = 16;

/**
 * The serial number, in hex, made of SERIAL_BYTES random bytes: a positive integer whose DER
 * form always takes SERIAL_BYTES bytes. Its top bit is cleared (a set one would take a 0x00 in
 * front) and the next one set (a 0x00 first byte would be dropped), so every relay's
 * certificate has the same length: before, about one relay in 500 had a certificate a byte
 * shorter, which its TLS handshakes showed.
 */
export function certificateSerial(random: Uint8Array): string {
  if (random.length !== SERIAL_BYTES) throw new RangeError(`a serial number takes ${SERIAL_BYTES} random bytes`);
  const bytes = Buffer.from(random);
  bytes[0] = (bytes[0]! & 0x3f) | 0x40;
  return bytes.toString('hex');
}

/**
 * Makes a new key and certificate in `dataDir` (mode 0700 folder, 0600 key). `random` gives the
 * serial number's bytes (`certificateSerial`); tests pass their own.
 */
export async function createIdentity(dataDir: string, random: Uint8Array = webcrypto.getRandomValues(new Uint8Array(SERIAL_BYTES))): Promise<RelayIdentity> {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const x509 = await loadX509();
  x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
  const alg = { name: 'Ed25519' };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: certificateSerial(random),
    name: 'CN=murmure relay',
    notBefore: new Date(now - 86_400_000),
    notAfter: new Date(now + CERT_YEARS * 365 * 86_400_000),
    keys: keys as unknown as Parameters<typeof x509.X509CertificateGenerator.createSelfSigned>[0]['keys'],
    signingAlgorithm: alg,
  });
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  const keyPem = createPrivateKey({ key: Buffer.from(pkcs8), format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' }).toString();
  const certPem = cert.toString('pem');
  writeAtomic(join(dataDir, KEY_FILE), keyPem, 0o600);
  writeAtomic(join(dataDir, CERT_FILE), certPem, 0o644);
  return { keyPem, certPem, fingerprint: certificateFingerprint(certPem) };
}

/** Loads the identity, making one first if the folder has none. */
export async function loadOrCreateIdentity(dataDir: string): Promise<RelayIdentity> {
  return loadIdentity(dataDir) ?? (await createIdentity(dataDir));
}

function writeAtomic(path: string, text: string, mode: number): void {
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, text, { mode });
  chmodSync(tmp, mode);
  renameSync(tmp, path);
}
