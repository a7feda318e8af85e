// A real, certified OpenID Provider (node-oidc-provider) on loopback, for the interop test.
//
// It issues client_credentials access tokens as RS256 JWTs (RFC 9068) for one resource server,
// signed with a key generated at start. Usage: node oidc_provider.mjs PORT_FILE
// The issuer is http://127.0.0.1:<port>; the bound port is written to PORT_FILE once listening.
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { createServer } from "node:http";
import { writeFileSync, renameSync } from "node:fs";
import Provider from "oidc-provider";

const CLIENT_ID = "shop-service";
const CLIENT_SECRET = "shop-service-secret";
const AUDIENCE = "shop";
const RESOURCE = "https://shop.example/api";

const portFile = process.argv[2];
if (!portFile) {
  console.error("usage: node oidc_provider.mjs PORT_FILE");
  process.exit(2);
}

const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: "jwk" }), kid: "interop-rs256", use: "sig", alg: "RS256" };

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
    jwks: { keys: [signingKey] },
    scopes: ["openid", "orders:read"],
    cookies: { keys: [randomBytes(16).toString("hex")] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // Access tokens for the resource server are JWTs; without a resource indicator in the
      // request, the token is for RESOURCE.
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: "orders:read",
          audience: AUDIENCE,
          accessTokenTTL: 300,
          accessTokenFormat: "jwt",
          jwt: { sign: { alg: "RS256" } },
        }),
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
