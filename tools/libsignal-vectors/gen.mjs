// Generates Signal-protocol test vectors using the official @signalapp/libsignal-client.
// Output: ../../tests/data/libsignal_vectors.json  (see README.md)
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { randomInt } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { PrivateKey, IdentityKeyPair, KEMKeyPair } from '@signalapp/libsignal-client';

const here = dirname(fileURLToPath(import.meta.url));
const outPath = join(here, '..', '..', 'tests', 'data', 'libsignal_vectors.json');

const require = createRequire(import.meta.url);
const libPkg = JSON.parse(
  readFileSync(require.resolve('@signalapp/libsignal-client/package.json'), 'utf8'),
);
const generator = `@signalapp/libsignal-client ${libPkg.version}`;

const WANT_PER_BIT = 4;
const MAX_ATTEMPTS = 1000;

function fail(msg) {
  console.error(`FATAL: ${msg}`);
  process.exit(1);
}
function check(cond, msg) {
  if (!cond) fail(msg);
}
const b64 = (bytes) => Buffer.from(bytes).toString('base64');

const usedIds = new Set();
function freshKeyId() {
  for (;;) {
    const id = randomInt(1, 16777216); // 1..16777215 inclusive
    if (!usedIds.has(id)) {
      usedIds.add(id);
      return id;
    }
  }
}

function signAndVerify(identity, message, what) {
  const signature = identity.privateKey.sign(message);
  check(signature.length === 64, `${what}: signature is ${signature.length} bytes, expected 64`);
  check(identity.publicKey.verify(message, signature), `${what}: signature does not verify`);
  // Sanity: a tampered message must not verify.
  const tampered = Uint8Array.from(message);
  tampered[tampered.length - 1] ^= 0x01;
  check(!identity.publicKey.verify(tampered, signature), `${what}: tampered message verified`);
  return signature;
}

function makeKyberPreKey(identity, what) {
  const kemPub = KEMKeyPair.generate().getPublicKey().serialize();
  check(kemPub.length === 1569, `${what}: KEM public key is ${kemPub.length} bytes, expected 1569`);
  check(kemPub[0] === 0x08, `${what}: KEM public key type byte is ${kemPub[0]}, expected 0x08`);
  const signature = signAndVerify(identity, kemPub, what);
  return { keyId: freshKeyId(), publicKey: b64(kemPub), signature: b64(signature) };
}

function makeIdentity(n) {
  const priv = PrivateKey.generate();
  const identity = new IdentityKeyPair(priv.getPublicKey(), priv);
  const identityKey = identity.publicKey.serialize();
  const identityPrivateKey = identity.privateKey.serialize();
  check(identityKey.length === 33 && identityKey[0] === 0x05, `identity ${n}: bad public key`);
  check(identityPrivateKey.length === 32, `identity ${n}: private key is ${identityPrivateKey.length} bytes`);

  const spkPub = PrivateKey.generate().getPublicKey().serialize();
  check(spkPub.length === 33 && spkPub[0] === 0x05, `identity ${n}: bad signed prekey`);
  const spkSig = signAndVerify(identity, spkPub, `identity ${n} signedPreKey`);
  const signSignBit = (spkSig[63] & 0x80) >> 7;

  const kyberPreKeys = [0, 1].map((i) => makeKyberPreKey(identity, `identity ${n} kyberPreKey ${i}`));
  const lastResortKyberPreKey = makeKyberPreKey(identity, `identity ${n} lastResortKyberPreKey`);

  const preKeys = [0, 1, 2].map((i) => {
    const pk = PrivateKey.generate().getPublicKey().serialize();
    check(pk.length === 33 && pk[0] === 0x05, `identity ${n}: bad preKey ${i}`);
    return { keyId: freshKeyId(), publicKey: b64(pk) };
  });

  return {
    identityKey: b64(identityKey),
    identityPrivateKey: b64(identityPrivateKey),
    signSignBit,
    signedPreKey: { keyId: freshKeyId(), publicKey: b64(spkPub), signature: b64(spkSig) },
    kyberPreKeys,
    lastResortKyberPreKey,
    preKeys,
  };
}

const byBit = { 0: [], 1: [] };
let attempts = 0;
while (byBit[0].length < WANT_PER_BIT || byBit[1].length < WANT_PER_BIT) {
  check(++attempts <= MAX_ATTEMPTS, `gave up after ${MAX_ATTEMPTS} identities`);
  const id = makeIdentity(attempts);
  if (byBit[id.signSignBit].length < WANT_PER_BIT) byBit[id.signSignBit].push(id);
}

// Interleave so both sign bits appear early in the list.
const identities = [];
for (let i = 0; i < WANT_PER_BIT; i++) identities.push(byBit[0][i], byBit[1][i]);

mkdirSync(dirname(outPath), { recursive: true });
writeFileSync(outPath, JSON.stringify({ generator, identities }, null, 2) + '\n');

console.log(`generator: ${generator}`);
console.log(`identities generated: ${attempts}, written: ${identities.length}`);
console.log(`  signSignBit=0: ${identities.filter((x) => x.signSignBit === 0).length}`);
console.log(`  signSignBit=1: ${identities.filter((x) => x.signSignBit === 1).length}`);
console.log(`all ${identities.length * 4} signatures verified with PublicKey.verify()`);
console.log(`wrote ${outPath}`);
