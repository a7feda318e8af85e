// A real, certified OpenID Provider (node-oidc-provider) on loopback, for the interop test.
//
// It issues client_credentials access tokens as JWTs (RFC 9068) signed with RS256, PS256, ES256 or
// EdDSA, one algorithm per resource server: a token request names the resource server with a
// resource indicator (RFC 8707), and without one the token is for the RS256 resource server. Each
// algorithm has a key of its own, generated at start and published with its alg.
// Usage: node oidc_provider.mjs PORT_FILE
// The issuer is http://127.0.0.1:<port>; the bound port is written to PORT_FILE once listening.
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { createServer } from "node:http";
import { writeFileSync, renameSync } from "node:fs";
import Provider, { errors } from "oidc-provider";

const CLIENT_ID = "shop-service";
const CLIENT_SECRET = "shop-service-secret";
const AUDIENCE = "shop";

// Resource indicator -> the JWS algorithm of its access tokens (test_oidc_interop.py checks every
// token's header against its own copy of this table).
const RESOURCES = {
  "https://shop.example/api": "RS256",
  "https://shop.example/api/ps256": "PS256",
  "https://shop.example/api/es256": "ES256",
  "https://shop.example/api/eddsa": "EdDSA",
};
const DEFAULT_RESOURCE = "https://shop.example/api";

// The key type each algorithm signs with (RFC 7518 §3, RFC 8037 for EdDSA with Ed25519).
const KEY_TYPES = {
  RS256: ["rsa", { modulusLength: 2048 }],
  PS256: ["rsa", { modulusLength: 2048 }],
  ES256: ["ec", { namedCurve: "P-256" }],
  EdDSA: ["ed25519", {}],
};

const portFile = process.argv[2];
if (!portFile) {
  console.error("usage: node oidc_provider.mjs PORT_FILE");
  process.exit(2);
}

// One key per algorithm, bound to it by alg: oidc-provider signs a resource server's tokens with
// the key whose alg is the resource server's jwt.sign.alg.
const signingKeys = Object.entries(KEY_TYPES).map(([alg, [type, options]]) => {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: "jwk" }), kid: `interop-${alg.toLowerCase()}`, use: "sig", alg };
});

const server = createServer();
server.listen(0, "127.0.0.1", () => {
  const { port } = server.address();
  const provider = new Provider(`http://127.0.0.1:${port}`, {
    clients: [
      {
        client_id: CLIENT_ID,
        client_secret: CLIENT_SECRET,
        grant_types: ["client_credentials"],
        redirect_uris: [],
        response_types: [],
        token_endpoint_auth_method: "client_secret_basic",
        scope: "orders:read",
      },
    ],
    jwks: { keys: signingKeys },
    scopes: ["openid", "orders:read"],
    cookies: { keys: [randomBytes(16).toString("hex")] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // Access tokens for the resource servers are JWTs; without a resource indicator in the
      // request, the token is for DEFAULT_RESOURCE.
      resourceIndicators: {
        enabled: true,
        defaultResource: () => DEFAULT_RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resourceIndicator) => {
          const alg = RESOURCES[resourceIndicator];
          if (!alg) {
            throw new errors.InvalidTarget();
          }
          return {
            scope: "orders:read",
            audience: AUDIENCE,
            accessTokenTTL: 300,
            accessTokenFormat: "jwt",
            jwt: { sign: { alg } },
          };
        },
      },
    },
  });
  server.on("request", provider.callback());
  const temporary = `${portFile}.tmp${process.pid}`;
  writeFileSync(temporary, String(port));
  renameSync(temporary, portFile);
  console.error(`oidc-provider listening, issuer http://127.0.0.1:${port}`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
