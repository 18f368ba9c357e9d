// Gatehouse test IdP: a loopback OpenID Connect provider built on
// panva/oidc-provider v9, used by the integration tests and benchmarks.
// It listens on 127.0.0.1 only and must never be exposed beyond it.
//
// Environment:
//   IDP_PORT              listen port (required; 0: the kernel picks one, logged as
//                         `idp: listening on http://127.0.0.1:<port>`)
//   IDP_ISSUER            issuer URL (default http://127.0.0.1:<the port bound>)
//   IDP_AUDIENCE          "aud" of every access token (default "gatehouse")
//   IDP_KEYS_FILE         private JWKS file. Created when missing, reused otherwise,
//                         so kids stay stable across restarts. Without it the keys
//                         live in memory only.
//   IDP_KEY_GENERATION    integer >= 1 (default 1). Generated kids are
//                         "rs256-<gen>" and "es256-<gen>". When the keys file has
//                         no key of the current generation, that generation's keys
//                         are generated and stored FIRST, the older keys after them
//                         (still published at /jwks, so tokens they signed still
//                         verify). Keys of the current generation always sign.
//                         Tests rotate keys by restarting with IDP_KEY_GENERATION=2.
//   IDP_GW_REDIRECT_URIS  comma-separated redirect URIs of the confidential
//                         "gatehouse" client (default http://127.0.0.1:8080/oauth2/callback)
//   IDP_AT_TTL            access token lifetime in seconds (default 3600)
//   IDP_TRUST_LOGIN_HINT=1  log in the user named by login_hint without a password
//   IDP_TEST_SIGNING=1    enable the TEST-ONLY fault-injection endpoint POST /test/sign
//                         (see the end of this file)
//
// Clients (client_id / secret):
//   ci-bot    / ci-bot-secret     confidential; client_credentials
//   gatehouse / gatehouse-secret  confidential; authorization_code, refresh_token,
//                                 client_credentials; the client to call
//                                 /token/introspection with
//   git-cli   (public)            authorization_code + PKCE S256, device_code,
//                                 refresh_token; native app, so any
//                                 http://127.0.0.1:<port>/callback redirect is accepted
// Users (username / password):
//   alice / alice-pass  groups devs, admins
//   bob   / bob-pass    group readers
//   carol / carol-pass  400 groups (team-000-platform-engineering ...)
//
// Resource indicators (all: aud=$IDP_AUDIENCE, scopes git:read git:write git:admin):
//   urn:gatehouse         JWT access token signed RS256 (the default resource)
//   urn:gatehouse:rs256   JWT access token signed RS256
//   urn:gatehouse:es256   JWT access token signed ES256
//   urn:gatehouse:opaque  opaque access token (the only kind introspection knows)
// Access tokens for a user carry sub, preferred_username, email, name, groups;
// client_credentials tokens carry sub = client_id.
//
// Other endpoints: GET /healthz -> "ok"; login pages at /interaction/:uid; open dynamic client
// registration at POST /reg (RFC 7591); RP-initiated logout at /session/end (plain local pages).
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import Provider, { errors } from 'oidc-provider';

const env = process.env;
const HOST = '127.0.0.1';

function fail(msg) {
  console.error(`idp: ${msg}`);
  process.exit(2);
}

function intEnv(name, dflt, min) {
  const raw = env[name];
  if (raw === undefined || raw === '') {
    if (dflt === undefined) fail(`${name} is required`);
    return dflt;
  }
  if (!/^\d+$/.test(raw) || Number(raw) < min || !Number.isSafeInteger(Number(raw))) {
    fail(`${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
  }
  return Number(raw);
}

const PORT = intEnv('IDP_PORT', undefined, 0);
if (PORT > 65535) fail(`IDP_PORT out of range: ${PORT}`);
// The socket is bound first, so that the issuer can name the port actually bound when IDP_PORT
// is 0. Until the provider is ready (a few lines of setup below, before the "listening" line
// is printed), requests get 503.
let handler = (req, res) => res.writeHead(503, { 'content-type': 'text/plain' }).end('starting');
const server = http.createServer((req, res) => handler(req, res));
await new Promise((resolve) => {
  server.once('error', (e) => fail(`cannot listen on ${HOST}:${PORT}: ${e.message}`));
  server.listen(PORT, HOST, resolve);
});
const BOUND_PORT = server.address().port;
const ISSUER = env.IDP_ISSUER || `http://${HOST}:${BOUND_PORT}`;
const AUDIENCE = env.IDP_AUDIENCE || 'gatehouse';
const AT_TTL = intEnv('IDP_AT_TTL', 3600, 1);
const KEY_GEN = intEnv('IDP_KEY_GENERATION', 1, 1);
const KEYS_FILE = env.IDP_KEYS_FILE || '';
const TRUST_LOGIN_HINT = env.IDP_TRUST_LOGIN_HINT === '1';
const TEST_SIGNING = env.IDP_TEST_SIGNING === '1';
const GW_REDIRECTS = (env.IDP_GW_REDIRECT_URIS || 'http://127.0.0.1:8080/oauth2/callback')
  .split(',').map((s) => s.trim()).filter(Boolean);
const RESOURCE_SCOPES = ['git:read', 'git:write', 'git:admin'];

// ---------------------------------------------------------------- signing keys

const KEY_KINDS = [
  { alg: 'RS256', prefix: 'rs256', type: 'rsa', opts: { modulusLength: 2048 } },
  { alg: 'ES256', prefix: 'es256', type: 'ec', opts: { namedCurve: 'P-256' } },
];

function generateKey(kind, gen) {
  const jwk = crypto.generateKeyPairSync(kind.type, kind.opts).privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: `${kind.prefix}-${gen}`, use: 'sig', alg: kind.alg };
}

function loadKeys() {
  let stored = [];
  if (KEYS_FILE && fs.existsSync(KEYS_FILE)) {
    try {
      stored = JSON.parse(fs.readFileSync(KEYS_FILE, 'utf8')).keys;
    } catch (e) {
      fail(`cannot read IDP_KEYS_FILE ${KEYS_FILE}: ${e.message}`);
    }
    if (!Array.isArray(stored)) fail(`IDP_KEYS_FILE ${KEYS_FILE} is not a JWKS ({"keys": [...]})`);
  }
  const currentKids = new Set(KEY_KINDS.map((k) => `${k.prefix}-${KEY_GEN}`));
  const fresh = KEY_KINDS
    .filter((k) => !stored.some((j) => j.kid === `${k.prefix}-${KEY_GEN}`))
    .map((k) => generateKey(k, KEY_GEN));
  if (fresh.length && KEYS_FILE) {
    // New generation first, older keys after it (still published for verification).
    const next = { keys: [...fresh, ...stored] };
    const tmp = path.join(path.dirname(KEYS_FILE), `.${path.basename(KEYS_FILE)}.${process.pid}.tmp`);
    fs.writeFileSync(tmp, JSON.stringify(next, null, 1), { mode: 0o600 });
    fs.renameSync(tmp, KEYS_FILE);
  }
  // oidc-provider signs with the first matching key, so the current generation goes
  // first even when it was already on file (e.g. restarting with an older generation).
  const all = [...fresh, ...stored];
  return [...all.filter((j) => currentKids.has(j.kid)), ...all.filter((j) => !currentKids.has(j.kid))];
}

const signingKeys = loadKeys();

// ---------------------------------------------------------------- users

const USERS = {
  alice: { password: 'alice-pass', name: 'Alice Admin', email: 'alice@example.test', groups: ['devs', 'admins'] },
    bob: { password: 'bob-pass', name: 'Bob Reader', email: 'bob@example.test', groups: ['readers'] },
  // Many groups: what a large organisation's directory hands out (tokens of ~10 KB).
  carol: {
    password: 'carol-pass',
    name: 'Carol Many',
    email: 'carol@example.test',
    groups: Array.from({ length: 400 }, (_, i) => `team-${String(i).padStart(3, '0')}-platform-engineering`),
  },
};

function userClaims(sub) {
  const u = USERS[sub];
  if (!u) return undefined;
  return { preferred_username: sub, name: u.name, email: u.email, groups: [...u.groups] };
}

async function findAccount(ctx, sub) {
  if (!USERS[sub]) return undefined;
  return {
    accountId: sub,
    async claims() {
      return { sub, email_verified: true, ...userClaims(sub) };
    },
  };
}

// ---------------------------------------------------------------- provider

const RESOURCES = {
  'urn:gatehouse': { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } },
  'urn:gatehouse:rs256': { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } },
  'urn:gatehouse:es256': { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } },
  'urn:gatehouse:opaque': { accessTokenFormat: 'opaque' },
};

const USER_SCOPES = ['openid', 'profile', 'email', 'groups', 'offline_access', ...RESOURCE_SCOPES].join(' ');

const configuration = {
  clients: [
    {
      client_id: 'ci-bot',
      client_secret: 'ci-bot-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: RESOURCE_SCOPES.join(' '),
    },
    {
      client_id: 'gatehouse',
      client_secret: 'gatehouse-secret',
      grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
      response_types: ['code'],
      redirect_uris: GW_REDIRECTS,
      scope: USER_SCOPES,
    },
    {
      client_id: 'git-cli',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      // Native client: oidc-provider accepts this loopback URI on any port.
      redirect_uris: ['http://127.0.0.1/callback'],
      scope: USER_SCOPES,
    },
  ],
  jwks: { keys: signingKeys },
  findAccount,
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups', ...RESOURCE_SCOPES],
  cookies: { keys: ['gatehouse-test-idp-cookie-key'] },
  pkce: { required: (ctx, client) => client.clientAuthMethod === 'none' },
  features: {
    devInteractions: { enabled: false }, // replaced by the scriptable pages below
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    deviceFlow: {
      enabled: true,
      // Plain local pages (the default ones load a web font from the internet).
      userCodeInputSource: async (ctx, form, out, err) => {
        ctx.body = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>Enter code</title></head>
<body><h1>Enter the code shown on your device</h1>${err ? '<p class="error">The code is incorrect or expired</p>' : ''}${form}
<button id="continue" type="submit" form="op.deviceInputForm">Continue</button></body></html>`;
      },
      userCodeConfirmSource: async (ctx, form, client, deviceInfo, userCode) => {
        ctx.body = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>Confirm device</title></head>
<body><h1>Confirm device</h1><p>Code <code id="user-code">${userCode}</code> for ${client.clientId}</p>${form}
<button id="confirm" type="submit" form="op.deviceConfirmForm">Continue</button>
<button id="abort" type="submit" form="op.deviceConfirmForm" value="yes" name="abort">Abort</button></body></html>`;
      },
      successSource: async (ctx) => {
        ctx.body = '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Signed in</title></head><body><h1>Sign-in Success</h1></body></html>';
      },
    },
    // Open dynamic client registration (RFC 7591): each test registers a client with its own
    // gateway's exact redirect URIs, as an operator registers Gatehouse at a real IdP.
    registration: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // A plain local page (the default one loads a web font from the internet).
      logoutSource: async (ctx, form) => {
        ctx.body = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>Sign out</title></head>
<body><h1>Sign out of the test IdP?</h1>${form}
<button type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button></body></html>`;
      },
      postLogoutSuccessSource: async (ctx) => {
        ctx.body = '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Signed out</title></head><body><h1>Signed out</h1></body></html>';
      },
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf || 'urn:gatehouse',
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resourceIndicator) => {
        const rs = RESOURCES[resourceIndicator];
        if (!rs) throw new errors.InvalidTarget();
        return { scope: RESOURCE_SCOPES.join(' '), audience: AUDIENCE, accessTokenTTL: AT_TTL, ...rs };
      },
    },
  },
  // Identity claims copied into access tokens (JWT payload and introspection answer).
  extraTokenClaims: async (ctx, token) => (token.accountId ? userClaims(token.accountId) : undefined),
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Every refresh spends the refresh token and issues a new one (OAuth 2.0 Security BCP; what
  // Keycloak's "revoke refresh token" and Okta's rotation do): a refresh token used twice is
  // refused, so a gateway whose nodes both renew one session shows up as a lost session.
  rotateRefreshToken: true,
  ttl: {
    AccessToken: () => AT_TTL,
    ClientCredentials: () => AT_TTL,
    DeviceCode: 600,
    Interaction: 3600,
    Session: 3600,
    Grant: 3600,
    IdToken: 3600,
    RefreshToken: 86400,
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  renderError: async (ctx, out) => { ctx.type = 'json'; ctx.body = out; },
};

const provider = new Provider(ISSUER, configuration);
provider.on('server_error', (ctx, err) => console.error('idp: server_error', err));

// ---------------------------------------------------------------- helpers

function readBody(req, limit = 64 * 1024) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size <= limit) chunks.push(c); // past the limit: keep draining, answer 413 at the end
    });
    req.on('end', () => {
      if (size > limit) reject(Object.assign(new Error('request body too large'), { status: 413 }));
      else resolve(Buffer.concat(chunks).toString('utf8'));
    });
    req.on('error', reject);
  });
}

function sendJson(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

const sha256 = (x) => crypto.createHash('sha256').update(String(x ?? '')).digest();

// ---------------------------------------------------------------- interactions
// Login is a plain form a test can drive (GET the page, POST username/password);
// consent is granted automatically.

async function grantConsent(req, res, details) {
  const { prompt: { details: missing }, params, session, grantId } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const id = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId: id } }, { mergeWithLastSubmission: true });
}

function loginPage(uid) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Gatehouse test IdP: sign in</title></head>
<body><h1>Sign in</h1>
<form id="login" method="post" action="/interaction/${encodeURIComponent(uid)}/login">
<label>Username <input name="username" autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button type="submit">Sign in</button>
</form></body></html>`;
}

async function handleInteraction(req, res, pathname) {
  const m = pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!m) { res.writeHead(404).end(); return; }
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, uid } = details;

  if (req.method === 'GET' && !m[2]) {
    if (prompt.name === 'consent') { await grantConsent(req, res, details); return; }
    if (prompt.name !== 'login') { res.writeHead(501).end('unsupported prompt'); return; }
    const hint = params.login_hint;
    if (TRUST_LOGIN_HINT && typeof hint === 'string' && USERS[hint]) {
      await provider.interactionFinished(req, res, { login: { accountId: hint } }, { mergeWithLastSubmission: false });
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(loginPage(uid));
    return;
  }

  if (req.method === 'POST' && m[2]) {
    const form = Object.fromEntries(new URLSearchParams(await readBody(req)));
    const user = USERS[form.username];
    if (!user || !crypto.timingSafeEqual(sha256(form.password), sha256(user.password))) {
      res.writeHead(401, { 'content-type': 'text/plain; charset=utf-8' }).end('invalid credentials');
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: form.username } }, { mergeWithLastSubmission: false });
    return;
  }

  res.writeHead(405).end();
}

// ---------------------------------------------------------------- TEST ONLY: /test/sign
// FAULT INJECTION FOR TESTS. Enabled only with IDP_TEST_SIGNING=1; otherwise the
// path is not served at all. It signs arbitrary claims with the IdP's real, published
// key so tests can present expired, not-yet-valid, wrong-issuer or wrong-audience
// tokens (or a mismatched kid) that are otherwise validly signed. A real IdP never
// offers this.
//
//   POST /test/sign   Content-Type: application/json
//   {"claims": {...}, "alg": "RS256" | "ES256", "kid": "optional", "typ": "optional"}
//   -> 200 {"token": "<header>.<payload>.<signature>"}
//   -> 400 {"error": "invalid_request", "error_description": "..."} on a bad body
//
// The newest key of the algorithm signs (current generation). The header is
// {alg, typ: typ || "JWT", kid}; "kid" replaces the signing key's kid in the header
// only ("kid": null leaves the kid out). Claims are signed exactly as given: the
// caller sets iss, aud, exp, nbf, iat. ES256 signatures are IEEE P1363 (r || s),
// as JWS requires.

function testSign(body) {
  const { claims, alg, kid, typ } = body ?? {};
  if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) {
    throw new Error('"claims" must be a JSON object');
  }
  if (alg !== 'RS256' && alg !== 'ES256') throw new Error('"alg" must be "RS256" or "ES256"');
  if (kid !== undefined && kid !== null && typeof kid !== 'string') throw new Error('"kid" must be a string');
  if (typ !== undefined && typeof typ !== 'string') throw new Error('"typ" must be a string');

  const jwk = signingKeys.find((k) => k.alg === alg);
  if (!jwk) throw new Error(`no ${alg} key`);
  const key = crypto.createPrivateKey({ key: jwk, format: 'jwk' });

  const header = { alg, typ: typ || 'JWT' };
  if (kid !== null) header.kid = kid === undefined ? jwk.kid : kid;
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const input = `${b64(header)}.${b64(claims)}`;
  const signature = alg === 'RS256'
    ? crypto.sign('sha256', Buffer.from(input), { key, padding: crypto.constants.RSA_PKCS1_PADDING })
    : crypto.sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  return `${input}.${signature.toString('base64url')}`;
}

async function handleTestSign(req, res) {
  if (req.method !== 'POST') {
    res.writeHead(405, { allow: 'POST' }).end();
    return;
  }
  let body;
  try {
    body = JSON.parse(await readBody(req));
  } catch (e) {
    if (e.status) throw e;
    sendJson(res, 400, { error: 'invalid_request', error_description: 'body must be JSON' });
    return;
  }
  let token;
  try {
    token = testSign(body);
  } catch (e) {
    sendJson(res, 400, { error: 'invalid_request', error_description: e.message });
    return;
  }
  sendJson(res, 200, { token });
}

// ---------------------------------------------------------------- server

const oidc = provider.callback();

function failed(res, e) {
  if (!res.headersSent) res.writeHead(e?.status || 400, { 'content-type': 'text/plain; charset=utf-8' });
  res.end(String(e?.message ?? e));
}

handler = (req, res) => {
  const { pathname } = new URL(req.url, 'http://idp.invalid');
  if (pathname === '/healthz') {
    res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
  } else if (pathname.startsWith('/interaction/')) {
    handleInteraction(req, res, pathname).catch((e) => failed(res, e));
  } else if (TEST_SIGNING && pathname === '/test/sign') {
    handleTestSign(req, res).catch((e) => failed(res, e));
  } else {
    oidc(req, res);
  }
};
{
  const kids = signingKeys.map((k) => k.kid).join(',');
  console.log(`idp: listening on http://${HOST}:${BOUND_PORT} issuer=${ISSUER} kids=${kids}`
    + `${TEST_SIGNING ? ' test-signing=on' : ''}`);
}

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

// Test harnesses keep one IdP for a whole test binary; when that process exits (even by a
// panic), the IdP must not outlive it. IDP_EXIT_WITH_PARENT=1 checks the parent every 500 ms.
if (process.env.IDP_EXIT_WITH_PARENT === '1') {
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) shutdown();
  }, 500).unref();
}
