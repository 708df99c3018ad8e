// A real third-party OAuth 2.0 authorization server (oidc-provider) on loopback, for
// oauth-refresh's interop tests. Test-only: in-memory state, fixed clients, headless login.
//
// Environment:
//   PORT            port on 127.0.0.1 (default 0: a random free port)
//   ACCESS_TTL      access token lifetime in seconds, for every grant (default 3)
//   REFRESH_TTL     refresh token lifetime in seconds (default 86400)
//   DEVICE_INTERVAL the device authorization answer's polling `interval` in seconds (default 1)
//   EXIT_WITH_STDIN "1": exit when standard input closes (the harness sets it, so a server
//                   never outlives the test process that started it, even one killed hard)
//
// Standard output carries exactly one line, once listening:
// {"issuer":"http://127.0.0.1:<port>","resource_server":"http://127.0.0.1:<port>"}, the second
// a DPoP resource server (RFC 9449) on a port of its own. Everything else goes to standard error.

import { createHash, createPublicKey, generateKeyPairSync, randomBytes, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import { calculateJwkThumbprint, EmbeddedJWK, jwtVerify } from 'jose';
import Provider, { errors } from 'oidc-provider';

// Keep stdout for the ready line alone.
console.log = console.error;
console.info = console.error;

function envInt(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) {
    console.error(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return value;
}

const PORT = envInt('PORT', 0);
const ACCESS_TTL = envInt('ACCESS_TTL', 3);
const REFRESH_TTL = envInt('REFRESH_TTL', 24 * 60 * 60);
// oidc-provider names no polling interval (clients then wait 5 s); this server says this one.
const DEVICE_INTERVAL = envInt('DEVICE_INTERVAL', 1);
const ACCOUNT_ID = 'alice';

// The clients: clients.json is the one place their ids, secrets and redirect URI live (the
// Rust harness mirrors it as constants and a test checks they agree). Secrets hold
// `: + / % & = ~` and a space, so that a client must form-urlencode id and secret before Base64
// (RFC 6749 §2.3.1): oidc-provider decodes them that way, so an unencoded `+` turns into a
// space and an unencoded `%` fails to decode.
const CLIENTS = JSON.parse(readFileSync(new URL('./clients.json', import.meta.url), 'utf8'));
const API_SCOPES = 'api:read api:write';

// private_key_jwt clients (RFC 7523 §2.2): each registers the public half of a test key
// checked in under keys/ (test-only keys; the Rust harness signs with the private halves),
// pinned to one algorithm, for client credentials, the code flow and refresh.
const CLIENT_ASSERTION_JWT = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
function privateKeyJwtClient({ client_id, alg, kid, key, redirect_uri }) {
  const pem = readFileSync(new URL(`./${key}`, import.meta.url), 'utf8');
  const jwk = { ...createPublicKey(pem).export({ format: 'jwk' }), kid, alg, use: 'sig' };
  return {
    client_id,
    application_type: 'native',
    grant_types: ['client_credentials', 'authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [redirect_uri],
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: alg,
    jwks: { keys: [jwk] },
    scope: `openid offline_access ${API_SCOPES}`,
  };
}

// ---------------------------------------------------------------------------------------------
// A Map-based adapter, so that /__test/revoke_all can enumerate and destroy what is held.

const stores = new Map(); // model name -> Map(id -> { payload, expiresAt })

function storeFor(model) {
  let store = stores.get(model);
  if (!store) {
    store = new Map();
    stores.set(model, store);
  }
  return store;
}

function live(store, id) {
  const entry = store.get(id);
  if (!entry) return undefined;
  if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
    store.delete(id);
    return undefined;
  }
  return entry;
}

class MapAdapter {
  constructor(model) {
    this.model = model;
    this.store = storeFor(model);
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    this.store.set(id, { payload, expiresAt });
  }

  async find(id) {
    return live(this.store, id)?.payload;
  }

  async findByUid(uid) {
    for (const id of this.store.keys()) {
      const payload = live(this.store, id)?.payload;
      if (payload?.uid === uid) return payload;
    }
    return undefined;
  }

  async findByUserCode(userCode) {
    for (const id of this.store.keys()) {
      const payload = live(this.store, id)?.payload;
      if (payload?.userCode === userCode) return payload;
    }
    return undefined;
  }

  async consume(id) {
    const entry = this.store.get(id);
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    this.store.delete(id);
  }

  async revokeByGrantId(grantId) {
    for (const [id, entry] of this.store) {
      if (entry.payload.grantId === grantId) this.store.delete(id);
    }
  }
}

// Everything a grant stands behind: after revoke_all, no refresh token or code works.
const REVOCABLE = ['RefreshToken', 'AuthorizationCode', 'AccessToken', 'ClientCredentials', 'Grant', 'DeviceCode'];

function revokeAll() {
  const revoked = {};
  for (const model of REVOCABLE) {
    const store = storeFor(model);
    revoked[model] = store.size;
    store.clear();
  }
  return revoked;
}

// ---------------------------------------------------------------------------------------------
// Counters of token requests, as received.

const stats = {
  client_credentials: 0,
  authorization_code: 0,
  refresh_token: 0,
  refresh_token_reused: 0,
  invalid_grant: 0,
  client_secret_basic: 0,
  client_secret_post: 0,
  // Token requests with a client_assertion of type jwt-bearer, whatever their outcome.
  private_key_jwt: 0,
  // Of those, the ones whose aud was the issuer identifier (else the token endpoint URL).
  private_key_jwt_aud_issuer: 0,
  // Assertions refused because their jti had been used (oidc-provider's replay detection).
  client_assertion_replayed: 0,
  // Token exchange and JWT bearer: grant types this test server registers (below).
  token_exchange: 0,
  jwt_bearer: 0,
  // Device authorization grant (RFC 8628) polls and revocation (RFC 7009) requests.
  device_code: 0,
  revocation: 0,
  // DPoP at the token endpoint: requests with a DPoP header, and the answers use_dpop_nonce,
  // invalid_dpop_proof, and invalid_grant for a proof whose jti had been used.
  token_dpop: 0,
  token_use_dpop_nonce: 0,
  token_invalid_dpop_proof: 0,
  token_dpop_replayed: 0,
  // The DPoP resource server, one counter per answer (see resourceServer below).
  resource_ok: 0,
  resource_use_dpop_nonce: 0,
  resource_proof_replayed: 0,
  resource_invalid_dpop_proof: 0,
  resource_bearer_refused: 0,
  resource_invalid_token: 0,
  resource_jkt_mismatch: 0,
};
const presentedRefreshTokens = new Set();

function resetStats() {
  for (const key of Object.keys(stats)) stats[key] = 0;
  presentedRefreshTokens.clear();
}

function first(value) {
  return Array.isArray(value) ? value[0] : value;
}

// ---------------------------------------------------------------------------------------------

// ID token signing key: EC P-256, made in well under a millisecond (RSA takes 100 ms or more).
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-es256', use: 'sig', alg: 'ES256' };

// ---------------------------------------------------------------------------------------------
// Token exchange (RFC 8693) and JWT bearer (RFC 7523 §2.1): oidc-provider implements neither;
// it lets a server register grant types of its own, and what follows is this test server's
// configuration, not oidc-provider behaviour (see the README).

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

// JWT-bearer assertion issuers the test registered (POST /__test/assertion_issuer): iss -> public key.
const assertionIssuers = new Map();

function base64urlJson(part) {
  try {
    return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
}

// An access token this server issued and still honours: a user's as the subject of an
// exchange, a user's or a client's own (client credentials) as its actor.
async function honouredAccessToken(value, what, models) {
  let token;
  for (const model of models) {
    if (!token && typeof value === 'string' && value !== '') token = await provider[model].find(value);
  }
  if (!token || token.isExpired) throw new errors.InvalidGrant(`${what} is not an active access token of this server`);
  return token;
}

function requestedScope(ctx, fallback) {
  const allowed = new Set(API_SCOPES.split(' '));
  const asked = ctx.oidc.params.scope ? ctx.oidc.params.scope.split(' ') : (fallback ?? '').split(' ');
  return asked.filter((scope) => allowed.has(scope)).join(' ') || undefined;
}

// The actor each exchanged token was issued to act through (oidc-provider's opaque tokens keep
// no claims of a server's own): access token value -> { sub }.
const actors = new Map();

async function issue(ctx, { accountId, scope, audience, gty, act }) {
  const token = new provider.AccessToken({ accountId, client: ctx.oidc.client, gty, scope });
  if (audience !== undefined) token.setAudience(audience);
  const value = await token.save();
  if (act) actors.set(value, act);
  return { access_token: value, token_type: 'Bearer', expires_in: token.expiration, scope };
}

// Token exchange: the subject token must be an access token this server issued and still
// honours; the new one is for the same account, with the requested audience and scope.
async function tokenExchange(ctx) {
  const { params } = ctx.oidc;
  if (!params.subject_token || !params.subject_token_type) {
    throw new errors.InvalidRequest('subject_token and subject_token_type are required');
  }
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('only access tokens are exchanged here');
  }
  if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('only access tokens are issued here');
  }
  const subject = await honouredAccessToken(params.subject_token, 'the subject token', ['AccessToken']);
  let act;
  if (params.actor_token !== undefined) {
    if (params.actor_token_type !== ACCESS_TOKEN_TYPE) throw new errors.InvalidRequest('actor_token_type must be access_token');
    const actor = await honouredAccessToken(params.actor_token, 'the actor token', ['AccessToken', 'ClientCredentials']);
    act = { sub: actor.accountId ?? actor.clientId };
  }
  const audience = [].concat(params.audience ?? []);
  const tokens = await issue(ctx, {
    accountId: subject.accountId,
    scope: requestedScope(ctx, subject.scope),
    audience: audience.length ? audience : undefined,
    gty: 'token_exchange',
    act,
  });
  ctx.body = { ...tokens, issued_token_type: ACCESS_TOKEN_TYPE };
}

// JWT bearer: an ES256 assertion signed by a registered issuer's key, naming this server (its
// issuer or token endpoint) as audience, with a subject and an expiry still to come.
async function jwtBearer(ctx) {
  const assertion = ctx.oidc.params.assertion;
  const parts = typeof assertion === 'string' ? assertion.split('.') : [];
  if (parts.length !== 3) throw new errors.InvalidGrant('the assertion is not a JWS');
  const header = base64urlJson(parts[0]);
  const claims = base64urlJson(parts[1]);
  if (header?.alg !== 'ES256' || typeof claims !== 'object' || claims === null) {
    throw new errors.InvalidGrant('the assertion is not an ES256 JWT');
  }
  const key = assertionIssuers.get(claims.iss);
  if (!key) throw new errors.InvalidGrant('the assertion issuer is not trusted');
  const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
  const signature = Buffer.from(parts[2], 'base64url');
  if (!verify('sha256', signed, { key, dsaEncoding: 'ieee-p1363' }, signature)) {
    throw new errors.InvalidGrant('the assertion signature is invalid');
  }
  const audiences = [].concat(claims.aud ?? []);
  if (!audiences.some((aud) => aud === issuer || aud === `${issuer}/token`)) {
    throw new errors.InvalidGrant('the assertion is not for this server');
  }
  if (typeof claims.sub !== 'string' || claims.sub === '') throw new errors.InvalidGrant('the assertion has no subject');
  if (typeof claims.exp !== 'number' || claims.exp <= Date.now() / 1000) {
    throw new errors.InvalidGrant('the assertion has expired');
  }
  ctx.body = await issue(ctx, { accountId: claims.sub, scope: requestedScope(ctx), gty: 'jwt_bearer' });
}

const server = createServer((req, res) => {
  res.statusCode = 503;
  res.end();
});
server.listen(PORT, '127.0.0.1');
await new Promise((resolve, reject) => {
  server.once('listening', resolve);
  server.once('error', reject);
});
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  adapter: MapAdapter,
  jwks: { keys: [signingKey] },
  cookies: { keys: ['oauth-refresh interop test cookie key, not a secret'] },
  clients: [
    {
      client_id: CLIENTS.cc_basic.client_id,
      client_secret: CLIENTS.cc_basic.client_secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: API_SCOPES,
    },
    {
      client_id: CLIENTS.cc_post.client_id,
      client_secret: CLIENTS.cc_post.client_secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_post',
      scope: API_SCOPES,
    },
    // Token exchange and JWT bearer: grant types this test server registers (below).
    {
      client_id: CLIENTS.exchange.client_id,
      client_secret: CLIENTS.exchange.client_secret,
      grant_types: [TOKEN_EXCHANGE],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: API_SCOPES,
    },
    {
      client_id: CLIENTS.jwt_bearer.client_id,
      grant_types: [JWT_BEARER],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'none',
      scope: API_SCOPES,
    },
    {
      client_id: CLIENTS.app.client_id,
      client_secret: CLIENTS.app.client_secret,
      application_type: 'native',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [CLIENTS.app.redirect_uri],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: `openid offline_access ${API_SCOPES}`,
    },
    // DPoP (RFC 9449): every access token of this client is bound to the key of the proof its
    // token request carried (oidc-provider refuses a token request without one), and its
    // token requests must carry this server's nonce (features.dPoP.requireNonce below).
    {
      client_id: CLIENTS.dpop.client_id,
      client_secret: CLIENTS.dpop.client_secret,
      application_type: 'native',
      grant_types: ['client_credentials', 'authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [CLIENTS.dpop.redirect_uri],
      token_endpoint_auth_method: 'client_secret_basic',
      dpop_bound_access_tokens: true,
      scope: `openid offline_access ${API_SCOPES}`,
    },
    privateKeyJwtClient(CLIENTS.pkjwt_es256),
    privateKeyJwtClient(CLIENTS.pkjwt_rs256),
    // The device authorization grant (RFC 8628): a device without a browser; the test plays
    // the user at /device (see the README).
    {
      client_id: CLIENTS.device.client_id,
      client_secret: CLIENTS.device.client_secret,
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: `openid offline_access ${API_SCOPES}`,
    },
  ],
  // Every client signs ID tokens with the one (EC) key there is.
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  scopes: ['openid', 'offline_access', 'api:read', 'api:write'],
  features: {
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    devInteractions: { enabled: false },
    // DPoP proofs at the token endpoint (on by default in oidc-provider 9; said here for the
    // nonce settings). Nonces need a 32-byte nonceSecret (lib/provider.js); without one
    // oidc-provider hands out none. Nonces are HKDF(nonceSecret, 60 s time step): one is good
    // for about 3 to 5 minutes and cannot be rotated on demand (lib/helpers/challenge.js).
    // requireNonce is asked on every proof (lib/helpers/validate_dpop.js): a proof without a
    // nonce, e.g. the first token request, is answered 400 use_dpop_nonce with DPoP-Nonce.
    dPoP: {
      enabled: true,
      nonceSecret: randomBytes(32),
      requireNonce: (ctx) => ctx.oidc?.client?.clientId === CLIENTS.dpop.client_id,
    },
    // Device authorization at /device/auth, the user's page at /device; plain pages, since
    // only the test reads them.
    deviceFlow: {
      enabled: true,
      userCodeInputSource: async (ctx, form) => { ctx.body = `<!DOCTYPE html><title>code</title>${form}`; },
      userCodeConfirmSource: async (ctx, form) => { ctx.body = `<!DOCTYPE html><title>confirm</title>${form}`; },
      successSource: async (ctx) => { ctx.body = '<!DOCTYPE html><title>signed in</title>'; },
    },
  },
  // oidc-provider 9 requires PKCE only for public clients by default; require it always.
  pkce: { required: () => true },
  ttl: {
    AccessToken: ACCESS_TTL,
    ClientCredentials: ACCESS_TTL,
    RefreshToken: REFRESH_TTL,
    AuthorizationCode: 60,
    Grant: REFRESH_TTL,
    Session: REFRESH_TTL,
    Interaction: 60 * 60,
    IdToken: 60 * 60,
  },
  // Rotate on every refresh; reuse detection (consumed token presented again: revoke the
  // grant, answer invalid_grant) is oidc-provider's own and always on.
  rotateRefreshToken: () => true,
  // A refresh token for every code exchange of a client allowed the grant, offline_access or not.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Refresh tokens do not die with the browser session.
  expiresWithSession: async () => false,
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    async claims() {
      return { sub };
    },
  }),
  // Runs on every client assertion that verified, before its jti is checked for replay:
  // this server holds assertions to RFC 7523bis (aud one string) and counts their audience.
  assertJwtClientAuthClaimsAndHeader: async (ctx, claims) => {
    if (typeof claims.aud !== 'string') {
      throw new errors.InvalidClientAuth('aud must be a single string');
    }
    if (claims.aud === ctx.oidc.issuer) stats.private_key_jwt_aud_issuer += 1;
  },
  renderError: async (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
});

provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.on('grant.error', (ctx, err) => {
  if (err.error_detail === 'client assertion tokens must only be used once') {
    stats.client_assertion_replayed += 1;
  }
  // lib/helpers/validate_dpop.js checkDpopReplay: answered invalid_grant, like any grant error.
  if (err.error_detail === 'DPoP proof JWT Replay detected') stats.token_dpop_replayed += 1;
});

provider.registerGrantType(
  TOKEN_EXCHANGE,
  tokenExchange,
  ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type', 'audience', 'resource', 'scope'],
  ['audience', 'resource'],
);
provider.registerGrantType(JWT_BEARER, jwtBearer, ['assertion', 'scope']);

// Test-only endpoints and the token request counters, in front of the provider's routes.
provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/__test/')) {
    const route = `${ctx.method} ${ctx.path}`;
    switch (route) {
      case 'GET /__test/stats':
        ctx.body = { ...stats };
        return;
      case 'POST /__test/reset':
        resetStats();
        ctx.body = { ...stats };
        return;
      case 'POST /__test/assertion_issuer': {
        // Trusts JWT-bearer assertions of issuer `iss` signed by the P-256 key (x, y).
        const { iss, x, y } = ctx.query;
        const key = createPublicKey({ key: { kty: 'EC', crv: 'P-256', x, y }, format: 'jwk' });
        assertionIssuers.set(iss, key);
        ctx.body = { trusted: iss };
        return;
      }
      case 'POST /__test/rotate_resource_nonce':
        // The resource server's next nonce; the current one stops working at once.
        ctx.body = { nonce: rotateResourceNonce() };
        return;
      case 'POST /__test/revoke_all':
        ctx.body = { revoked: revokeAll() };
        return;
      case 'GET /__test/active': {
        // Whether an access token is one this server issued and still honours.
        const token = ctx.query.token;
        const found = (await provider.AccessToken.find(token))
          ?? (await provider.ClientCredentials.find(token));
        ctx.body = found
          ? {
              active: true,
              client_id: found.clientId,
              sub: found.accountId ?? null,
              scope: found.scope ?? null,
              exp: found.exp,
              aud: found.aud ?? null,
              gty: found.gty ?? null,
              act: actors.get(token) ?? null,
              // A DPoP-bound token's key thumbprint (cnf.jkt), else null.
              jkt: found.jkt ?? null,
            }
          : { active: false };
        return;
      }
      default:
        ctx.status = 404;
        ctx.body = { error: 'not_found' };
        return;
    }
  }

  if (ctx.method === 'POST' && ctx.path === '/token') {
    await next();
    // The provider has parsed the body by now (ctx.oidc.body), whatever the outcome.
    const body = ctx.oidc?.body ?? {};
    const grantType = first(body.grant_type);
    if (grantType === 'client_credentials') stats.client_credentials += 1;
    if (grantType === 'authorization_code') stats.authorization_code += 1;
    if (grantType === TOKEN_EXCHANGE) stats.token_exchange += 1;
    if (grantType === JWT_BEARER) stats.jwt_bearer += 1;
    if (grantType === 'urn:ietf:params:oauth:grant-type:device_code') stats.device_code += 1;
    if (grantType === 'refresh_token') {
      stats.refresh_token += 1;
      const value = first(body.refresh_token);
      if (typeof value === 'string' && value !== '') {
        if (presentedRefreshTokens.has(value)) stats.refresh_token_reused += 1;
        presentedRefreshTokens.add(value);
      }
    }
    let method;
    if (ctx.get('authorization')) method = 'client_secret_basic';
    else if (body.client_secret !== undefined) method = 'client_secret_post';
    else if (first(body.client_assertion_type) === CLIENT_ASSERTION_JWT) method = 'private_key_jwt';
    if (method) stats[method] += 1;
    if (ctx.body?.error === 'invalid_grant') stats.invalid_grant += 1;
    if (ctx.get('dpop')) stats.token_dpop += 1;
    if (ctx.body?.error === 'use_dpop_nonce') stats.token_use_dpop_nonce += 1;
    if (ctx.body?.error === 'invalid_dpop_proof') stats.token_invalid_dpop_proof += 1;

    // oidc-provider takes client_secret_basic and client_secret_post interchangeably; this
    // server holds each client to the method it registered, and withholds what was issued.
    const registered = ctx.oidc?.client?.clientAuthMethod;
    if (ctx.status === 200 && method && registered && method !== registered) {
      for (const value of [ctx.body?.access_token, ctx.body?.refresh_token]) {
        for (const model of ['AccessToken', 'ClientCredentials', 'RefreshToken']) {
          if (typeof value === 'string') await provider[model].adapter.destroy(value);
        }
      }
      ctx.status = 401;
      if (method === 'client_secret_basic') ctx.set('WWW-Authenticate', `Basic realm="${issuer}"`);
      ctx.body = {
        error: 'invalid_client',
        error_description: `client authenticated with ${method}, registered ${registered}`,
      };
    }
    return;
  }

  if (ctx.method === 'POST' && ctx.path === '/token/revocation') stats.revocation += 1;
  if (ctx.method === 'POST' && ctx.path === '/device/auth') {
    await next();
    if (ctx.status === 200 && ctx.body?.device_code) ctx.body = { ...ctx.body, interval: DEVICE_INTERVAL };
    return;
  }

  const interaction = /^\/interaction\/([^/]+)$/.exec(ctx.path);
  if (ctx.method === 'GET' && interaction) {
    // Headless login and consent: the user `login_hint` names (alice by default) signs in
    // and grants whatever was asked.
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const { prompt, params } = details;
    const accountId = details.session?.accountId ?? params.login_hint ?? ACCOUNT_ID;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId, clientId: params.client_id });
    if (params.scope) grant.addOIDCScope(params.scope);
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    const result = { consent: { grantId } };
    if (prompt.name === 'login') result.login = { accountId };
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
      mergeWithLastSubmission: false,
    });
    ctx.status = 303;
    ctx.redirect(returnTo);
    return;
  }

  await next();
});

server.removeAllListeners('request');
server.on('request', provider.callback());

// ---------------------------------------------------------------------------------------------
// A DPoP resource server (RFC 9449 §7, §9) on its own port, so that its nonces belong to
// another origin than the token endpoint's. Any method on /dpop/...: 200 JSON if the request
// carries `Authorization: DPoP <token>` and a proof that verifies, else 401 with a `DPoP`
// challenge. This is the test's own resource server, not oidc-provider's; it reads the tokens
// from the provider's models, as a resource server in the same process may.

// Asymmetric algorithms only: the proof's key is in its header, so a MAC would prove nothing.
const PROOF_ALGS = ['ES256', 'ES384', 'ES512', 'PS256', 'PS384', 'PS512', 'RS256', 'RS384', 'RS512', 'EdDSA', 'Ed25519'];
// How far a proof's iat may be from now, either way, in seconds.
const PROOF_IAT_WINDOW = 60;

const newNonce = () => randomBytes(16).toString('base64url');
let resourceNonce = newNonce();
function rotateResourceNonce() {
  resourceNonce = newNonce();
  return resourceNonce;
}

// The jti of every proof accepted so far, until its iat leaves the window: jti -> iat.
const seenProofs = new Map();
function firstUse(jti, iat, now) {
  for (const [seen, seenIat] of seenProofs) {
    if (seenIat + PROOF_IAT_WINDOW < now) seenProofs.delete(seen);
  }
  if (seenProofs.has(jti)) return false;
  seenProofs.set(jti, iat);
  return true;
}

const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

class Refusal extends Error {
  constructor(counter, error, description) {
    super(description);
    this.counter = counter;
    this.error = error;
  }
}

// Checks one request; returns what the token stands for, or throws a Refusal.
async function verifyDpopRequest(req, origin) {
  const [scheme, token, ...rest] = (req.headers.authorization ?? '').split(' ');
  if (scheme.toLowerCase() === 'bearer') {
    // RFC 9449 §7.2: a DPoP-bound token must not be accepted as a bearer token.
    throw new Refusal('resource_bearer_refused', 'invalid_token', 'this resource takes DPoP-bound tokens under the DPoP scheme only');
  }
  if (scheme.toLowerCase() !== 'dpop' || !token || rest.length) {
    throw new Refusal('resource_invalid_token', 'invalid_token', 'no Authorization: DPoP <token>');
  }
  const proof = req.headers.dpop;
  if (typeof proof !== 'string' || !COMPACT_JWS.test(proof)) {
    throw new Refusal('resource_invalid_dpop_proof', 'invalid_dpop_proof', 'the DPoP header is not one compact JWS');
  }

  let payload;
  let protectedHeader;
  try {
    // jose checks the signature under the header's jwk (a public key only), typ and alg.
    ({ payload, protectedHeader } = await jwtVerify(proof, EmbeddedJWK, { typ: 'dpop+jwt', algorithms: PROOF_ALGS }));
  } catch (err) {
    throw new Refusal('resource_invalid_dpop_proof', 'invalid_dpop_proof', `proof does not verify: ${err.message}`);
  }
  const bad = (why) => new Refusal('resource_invalid_dpop_proof', 'invalid_dpop_proof', why);
  if (payload.htm !== req.method) throw bad('htm is not the request method');
  // htu: the request URL without query and fragment (§4.3), compared as URLs.
  const expected = new URL(req.url, origin);
  expected.search = '';
  expected.hash = '';
  const htu = typeof payload.htu === 'string' ? URL.parse(payload.htu) : null;
  if (htu) {
    htu.search = '';
    htu.hash = '';
  }
  if (htu?.href !== expected.href) throw bad('htu is not the request URL');
  const now = Math.floor(Date.now() / 1000);
  if (typeof payload.iat !== 'number' || Math.abs(now - payload.iat) > PROOF_IAT_WINDOW) {
    throw bad(`iat is not within ${PROOF_IAT_WINDOW} s of now`);
  }
  if (typeof payload.jti !== 'string' || payload.jti === '') throw bad('no jti');
  if (payload.ath !== createHash('sha256').update(token).digest('base64url')) {
    throw bad('ath is not the hash of the access token');
  }
  // §9: the nonce is checked before the jti is remembered, so the resend with the nonce is
  // not taken for a replay.
  if (payload.nonce !== resourceNonce) {
    throw new Refusal('resource_use_dpop_nonce', 'use_dpop_nonce', 'the proof must carry the current DPoP-Nonce');
  }
  if (!firstUse(payload.jti, payload.iat, now)) {
    throw new Refusal('resource_proof_replayed', 'invalid_dpop_proof', 'the proof has been used before');
  }

  // The token, as oidc-provider holds it: a user's (code, refresh) or a client's own.
  const found = (await provider.AccessToken.find(token)) ?? (await provider.ClientCredentials.find(token));
  if (!found || found.isExpired) {
    throw new Refusal('resource_invalid_token', 'invalid_token', 'the access token is not active');
  }
  const jkt = await calculateJwkThumbprint(protectedHeader.jwk, 'sha256');
  if (!found.jkt) throw new Refusal('resource_invalid_token', 'invalid_token', 'the access token is not DPoP-bound');
  if (found.jkt !== jkt) {
    throw new Refusal('resource_jkt_mismatch', 'invalid_token', "the proof's key is not the one the token is bound to");
  }
  return { client_id: found.clientId, sub: found.accountId ?? null, scope: found.scope ?? null, jkt };
}

const resourceServer = createServer(async (req, res) => {
  const answer = (status, body, challenge) => {
    res.statusCode = status;
    res.setHeader('content-type', 'application/json');
    res.setHeader('cache-control', 'no-store');
    // Every answer names the current nonce, as §9 allows: a client learns it without a 401.
    res.setHeader('dpop-nonce', resourceNonce);
    if (challenge) res.setHeader('www-authenticate', challenge);
    res.end(JSON.stringify(body));
  };
  const url = new URL(req.url, resourceOrigin);
  if (!url.pathname.startsWith('/dpop/')) {
    answer(404, { error: 'not_found' });
    return;
  }
  // Everything inside the try: a rejection escaping this handler (an aborted upload, say)
  // would end the whole process.
  try {
    let bodyBytes = 0;
    for await (const chunk of req) bodyBytes += chunk.length;
    const token = await verifyDpopRequest(req, resourceOrigin);
    stats.resource_ok += 1;
    answer(200, { ...token, method: req.method, path: url.pathname, body_bytes: bodyBytes });
  } catch (err) {
    if (!(err instanceof Refusal)) {
      console.error('resource server error', err);
      answer(500, { error: 'server_error' });
      return;
    }
    stats[err.counter] += 1;
    console.error(`resource server: ${req.method} ${url.pathname}: ${err.error}: ${err.message}`);
    const description = err.message.replace(/["\\]/g, "'");
    const challenge = `DPoP error="${err.error}", error_description="${description}", algs="${PROOF_ALGS.join(' ')}"`;
    answer(401, { error: err.error, error_description: err.message }, challenge);
  }
});
resourceServer.listen(0, '127.0.0.1');
await new Promise((resolve, reject) => {
  resourceServer.once('listening', resolve);
  resourceServer.once('error', reject);
});
const resourceOrigin = `http://127.0.0.1:${resourceServer.address().port}`;

if (process.env.EXIT_WITH_STDIN === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}

process.stdout.write(`${JSON.stringify({ issuer, resource_server: resourceOrigin })}\n`);
console.error(`oidc-provider listening: issuer ${issuer}, access tokens ${ACCESS_TTL}s, refresh tokens ${REFRESH_TTL}s; DPoP resource server ${resourceOrigin}`);
