// DPoP proofs (RFC 9449) made by node's `jose`, a JOSE implementation independent of the filter
// and of the test bed's own token minting: reads one JSON request on stdin, writes the answer on
// stdout. `jose` comes with oidc-provider (package-lock.json pins it).
//
//   {"generate": ["ES256", "EdDSA", ...]}
//     -> {"keys": [{"alg", "privateJwk", "publicJwk", "thumbprint"}]}   (RFC 7638, by jose)
//   {"sign": [{"alg", "privateJwk", "header": {...}, "claims": {...}}]}
//     -> {"proofs": ["<compact JWS>", ...]}
// `header` is the whole protected header but `alg` (a test may leave out or alter `typ` and `jwk`).
import * as jose from 'jose';

const input = JSON.parse(await new Promise((resolve) => {
  let text = '';
  process.stdin.on('data', (chunk) => { text += chunk; });
  process.stdin.on('end', () => resolve(text));
}));

const answer = {};
if (input.generate) {
  answer.keys = [];
  for (const alg of input.generate) {
    const options = alg === 'EdDSA' ? { crv: 'Ed25519', extractable: true } : { extractable: true };
    const { publicKey, privateKey } = await jose.generateKeyPair(alg, options);
    const publicJwk = await jose.exportJWK(publicKey);
    const privateJwk = await jose.exportJWK(privateKey);
    answer.keys.push({ alg, privateJwk, publicJwk, thumbprint: await jose.calculateJwkThumbprint(publicJwk) });
  }
}
if (input.sign) {
  answer.proofs = [];
  for (const { alg, privateJwk, header, claims } of input.sign) {
    const key = await jose.importJWK(privateJwk, alg);
    answer.proofs.push(await new jose.SignJWT(claims).setProtectedHeader({ ...header, alg }).sign(key));
  }
}
process.stdout.write(JSON.stringify(answer));
