// The real OpenID provider (npm `oidc-provider`, OpenID Certified) that the agent's tests run
// against, on loopback, with a small test-control surface in front of it. See README.md.
//
// Facts this file relies on (oidc-provider 9.13.3, read from its lib/):
// - Access tokens are opaque unless a resource server is chosen, so `features.resourceIndicators`
//   is on and every client-credentials token is for exactly one resource server, which makes it an
//   RS256 JWT verifiable from `jwks_uri`.
// - A resource indicator must be an absolute URI, and the token endpoint knows no `audience`
//   parameter (`extraParams` only reaches the authorization-type endpoints). So the control layer
//   rewrites the form: `audience=X` without `resource` becomes `resource=X` when X is already an
//   absolute URI, else `resource=urn:audience:X`; getResourceServerInfo maps `urn:audience:X` back
//   to the JWT's `aud: X`. With neither parameter the default is `urn:audience:<config.audience>`.
// - Requested scopes outside the resource server's `scope` are dropped silently, not refused.
// - A private_key_jwt assertion is accepted when its `aud` (a string, or an array containing one)
//   equals exactly the issuer `http://127.0.0.1:PORT` (no trailing slash) or the token endpoint
//   `http://127.0.0.1:PORT/token` (lib/helpers/oidc_context.js clientJwtAuthExpectedAudience).
//   It must also carry `iss` = `sub` = client_id, `exp` and a `jti` never used before.
// - client_secret_basic and client_secret_post clients may each use either method with the
//   provider, so which one the agent used is read from the request and reported in /__test/stats.
//   Basic credentials are form-urlencoded before base64 (RFC 6749 §2.3.1); the provider decodes them.
// - RFC 8693 token exchange is not built in. provider.registerGrantType stores a handler that gets
//   only ctx, so the built-in grants' helpers (resource resolution, scope checks, token response)
//   are imported from lib/helpers/grants.js (the package has no `exports` map) and given the
//   provider, exactly as initialize_app.js binds them for client_credentials. The issued token is
//   an AccessToken, whose JWT format (lib/models/formats/jwt.js) is the one ClientCredentials
//   tokens use, with `sub` = its accountId (the subject token's `sub`) instead of the client_id.
// - Clients are validated lazily (at their first lookup) against the grant types registered by
//   then, so a client may list the token-exchange URN although the grant is registered after the
//   Provider is built. Client assertions are remembered by (iss, jti) until exp + clockTolerance
//   (15 s), so one assertion authenticates one request only (lib/shared/jwt_client_auth.js).
import { generateKeyPair, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';

// jose is oidc-provider's own JWT library (its dependency, pinned in package-lock.json).
import { createLocalJWKSet, jwtVerify } from 'jose';

// stdout carries only the one address line the harness reads, so oidc-provider's notices
// (console.info) go to stderr. The warnings listed are deliberate choices of a test peer (Node 20,
// in-memory storage, the control layer's pre-read body); anything else it warns about still shows.
// oidc-provider is imported only after this, because it warns while it loads.
const EXPECTED_WARNINGS = ['Unsupported runtime', 'in-memory adapter', 'already parsed request body'];
const warn = console.warn;
console.warn = (...args) => {
  if (!EXPECTED_WARNINGS.some((w) => String(args[0]).includes(w))) warn(...args);
};
console.info = console.error;
const { default: Provider, errors } = await import('oidc-provider');
const grantHelpers = await import('oidc-provider/lib/helpers/grants.js');

const config = JSON.parse(process.env.IDP_CONFIG || '{}');
const AUDIENCE_URN = 'urn:audience:';
const MAX_DELAY_MS = 30_000;
const defaultAudience = config.audience || 'flyteadmin';
const resourceScope = config.scope || 'all offline';
let accessTokenTTL = config.accessTokenTTL ?? 3600;

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const SUBJECT_TOKEN_TYPES = ['urn:ietf:params:oauth:token-type:jwt', 'urn:ietf:params:oauth:token-type:id_token'];
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const SUBJECT_TOKEN_ALGS = ['RS256', 'ES256'];

// The trusted issuer of subject tokens, or null: then the grant is neither registered nor offered.
const tokenExchange = (() => {
  const te = config.tokenExchange;
  if (te === undefined || te === null) return null;
  const fail = (why) => {
    throw new Error(`IDP_CONFIG tokenExchange: ${why}`);
  };
  if (typeof te.issuer !== 'string' || !te.issuer) fail('issuer must be a non-empty string');
  if (typeof te.audience !== 'string' || !te.audience) fail('audience must be a non-empty string');
  if (!Array.isArray(te.jwks?.keys) || te.jwks.keys.length === 0) fail('jwks must be {"keys": [public JWK, ...]}');
  if (te.jwks.keys.some((k) => k.d !== undefined)) fail('jwks must hold public keys only (a key has "d")');
  return { issuer: te.issuer, audience: te.audience, keys: createLocalJWKSet(te.jwks) };
})();

// Every client may use client credentials except a public one (RFC 6749 §4.4: confidential clients
// only); token exchange only when it lists the URN in its grant_types.
const defaultClient = { client_id: 'agent', client_secret: 'agent-secret', token_endpoint_auth_method: 'client_secret_basic' };
const clients = (config.clients || [defaultClient]).map((c) => {
  const method = c.token_endpoint_auth_method ?? 'client_secret_basic';
  const exchange = Array.isArray(c.grant_types) && c.grant_types.includes(TOKEN_EXCHANGE);
  if (exchange && !tokenExchange) {
    throw new Error(`IDP_CONFIG client ${c.client_id}: grant_types lists ${TOKEN_EXCHANGE} but there is no tokenExchange config`);
  }
  if (method === 'none' && !exchange) {
    throw new Error(`IDP_CONFIG client ${c.client_id}: a public client (token_endpoint_auth_method "none") may only use token exchange; list ${TOKEN_EXCHANGE} in grant_types`);
  }
  return {
    token_endpoint_auth_method: 'client_secret_basic',
    ...c,
    grant_types: [...(method === 'none' ? [] : ['client_credentials']), ...(exchange ? [TOKEN_EXCHANGE] : [])],
    redirect_uris: [],
    response_types: [],
  };
});
const publicClients = clients.some((c) => c.token_endpoint_auth_method === 'none');

// A token bucket in front of POST /token, as real IdPs rate-limit client credentials (per client
// or per tenant; one bucket here, which is both when every request names the same client): it
// holds up to `burst` requests and refills at `rate` per second; a request that finds it empty is
// answered 429 with `Retry-After: retryAfter` before anything else looks at it. null: no limit.
const rateLimit = (() => {
  const rl = config.rateLimit;
  if (rl === undefined || rl === null) return null;
  const fail = (why) => {
    throw new Error(`IDP_CONFIG rateLimit: ${why}`);
  };
  const rate = rl.rate;
  const burst = rl.burst ?? rate;
  const retryAfter = rl.retryAfter ?? 1;
  if (!(typeof rate === 'number' && rate > 0 && rate <= 1e6)) fail('rate must be a number of requests per second in (0, 1000000]');
  if (!(Number.isInteger(burst) && burst >= 1 && burst <= 1e6)) fail('burst must be an integer in [1, 1000000]');
  // Delay-seconds: HTTP's Retry-After carries whole seconds only.
  if (!(Number.isInteger(retryAfter) && retryAfter >= 0 && retryAfter <= 3600)) fail('retryAfter must be an integer number of seconds in [0, 3600]');
  return { rate, burst, retryAfter };
})();
let bucket; // { tokens, at }: the tokens left at `at` (seconds on a monotonic clock)

// Takes one token from the bucket, if it has one, after refilling it for the time passed.
function takeRateToken() {
  if (!rateLimit) return true;
  const now = performance.now() / 1000;
  bucket.tokens = Math.min(rateLimit.burst, bucket.tokens + (now - bucket.at) * rateLimit.rate);
  bucket.at = now;
  if (bucket.tokens < 1) return false;
  bucket.tokens -= 1;
  return true;
}

let stats;
let fault; // null, or the body of the last POST /__test/fault: { mode, count?, status?, body?, headers?, delay_ms? }
let issuerOverride; // null, or the `issuer` discovery answers with
function reset() {
  stats = { token_requests: 0, rate_limited: 0, by_client: {}, auth_methods: [], grant_types: [], last_form: null, discovery_requests: 0 };
  fault = null;
  bucket = { tokens: rateLimit?.burst ?? 0, at: performance.now() / 1000 };
  issuerOverride = null;
}
reset();

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// `headers` may override content-type in any letter case.
function send(res, status, body, headers = {}) {
  const lower = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  res.writeHead(status, { 'content-type': 'application/json', ...lower });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
}

// The client a token request names, for by_client; '?' when it names none we can read.
function requestClientId(req, form) {
  try {
    const auth = req.headers.authorization;
    if (auth?.startsWith('Basic ')) {
      const user = Buffer.from(auth.slice(6), 'base64').toString('utf8').split(':')[0];
      return decodeURIComponent(user.replace(/\+/g, ' '));
    }
    if (form.has('client_assertion')) {
      return JSON.parse(Buffer.from(form.get('client_assertion').split('.')[1], 'base64url')).sub;
    }
    return form.get('client_id') || '?';
  } catch {
    return '?';
  }
}

function authMethod(req, form) {
  if (req.headers.authorization?.startsWith('Basic ')) return 'client_secret_basic';
  if (form.has('client_secret')) return 'client_secret_post';
  if (form.has('client_assertion')) return 'private_key_jwt';
  return 'none';
}

// The fault for this token request, if any, counting it against `count`.
function takeFault() {
  const active = fault;
  if (active && active.count !== undefined && --active.count <= 0) fault = null;
  return active;
}

// Records a POST /token, answers it when a fault says so, and otherwise leaves the (rewritten)
// form in req.body for the provider, which reads a pre-read body from there. Returns true when
// the response has been sent (or the client went away).
async function tokenRequest(req, res) {
  const form = new URLSearchParams(await readBody(req));
  const clientId = requestClientId(req, form);
  stats.token_requests += 1;
  stats.by_client[clientId] = (stats.by_client[clientId] || 0) + 1;
  stats.auth_methods.push(authMethod(req, form));
  stats.grant_types.push(form.get('grant_type'));
  const shown = Object.fromEntries(form);
  for (const k of ['client_secret', 'client_assertion', 'subject_token', 'actor_token']) {
    if (k in shown) shown[k] = '<redacted>';
  }
  stats.last_form = shown;

  if (!takeRateToken()) {
    stats.rate_limited += 1;
    const description = `rate limit exceeded: ${rateLimit.rate} token requests per second`;
    send(res, 429, { error: 'rate_limited', error_description: description }, { 'Retry-After': String(rateLimit.retryAfter) });
    return true;
  }
  const active = takeFault();
  if (active?.mode === 'status') {
    send(res, active.status ?? 500, active.body ?? '', active.headers);
    return true;
  }
  if (active?.mode === 'malformed') {
    send(res, 200, '{"access_token": ');
    return true;
  }
  if (active?.mode === 'slow') {
    // res (not req) 'close' is the client going away: req's fires as soon as its body is read.
    const gone = new AbortController();
    const onClose = () => gone.abort();
    res.on('close', onClose);
    try {
      await delay(Math.min(active.delay_ms ?? 1000, MAX_DELAY_MS), undefined, { signal: gone.signal });
    } catch {
      return true;
    } finally {
      res.off('close', onClose);
    }
  }

  const audience = form.get('audience');
  form.delete('audience');
  if (audience && !form.has('resource')) {
    form.set('resource', URL.canParse(audience) ? audience : AUDIENCE_URN + audience);
  }
  // A string (not an object) keeps repeated parameters for the provider to judge.
  req.body = form.toString();
  return false;
}

const FAULT_MODES = new Set(['status', 'malformed', 'slow', 'none']);

async function control(req, res, path) {
  let body = {};
  try {
    if (req.method === 'POST') body = JSON.parse((await readBody(req)) || '{}');
  } catch (err) {
    return send(res, 400, { error: `control body: ${err.message}` });
  }
  switch (`${req.method} ${path}`) {
    case 'GET /__test/stats':
      return send(res, 200, stats);
    case 'POST /__test/reset':
      reset();
      return send(res, 200, { ok: true });
    case 'POST /__test/fault':
      if (!FAULT_MODES.has(body.mode)) return send(res, 400, { error: `mode must be one of ${[...FAULT_MODES]}` });
      fault = body.mode === 'none' || body.count <= 0 ? null : body;
      return send(res, 200, { ok: true });
    case 'POST /__test/discovery':
      issuerOverride = body.issuer ?? null;
      return send(res, 200, { ok: true });
    case 'POST /__test/ttl':
      if (!(Number.isInteger(body.accessTokenTTL) && body.accessTokenTTL > 0)) {
        return send(res, 400, { error: 'accessTokenTTL must be a positive integer (seconds)' });
      }
      accessTokenTTL = body.accessTokenTTL;
      return send(res, 200, { ok: true });
    default:
      return send(res, 404, { error: `no control ${req.method} ${path}` });
  }
}

// Lets the provider build the real discovery document, then swaps its issuer on the way out.
function overrideIssuer(res, issuer) {
  const end = res.end.bind(res);
  res.end = (chunk, ...rest) => {
    if (!chunk) return end(chunk, ...rest);
    const text = JSON.stringify({ ...JSON.parse(chunk.toString()), issuer });
    res.setHeader('content-length', Buffer.byteLength(text));
    return end(text, ...rest);
  };
}

// Why a subject token is refused, for the invalid_grant error_description.
function subjectTokenProblem(err) {
  const te = tokenExchange;
  switch (err.code) {
    case 'ERR_JWT_EXPIRED':
      return `subject_token expired (exp ${err.payload?.exp})`;
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
      if (err.reason === 'missing') return `subject_token has no "${err.claim}" claim`;
      if (err.claim === 'iss') return `subject_token issuer ${JSON.stringify(err.payload.iss)} is not the trusted issuer ${JSON.stringify(te.issuer)}`;
      if (err.claim === 'aud') return `subject_token audience ${JSON.stringify(err.payload.aud)} does not contain ${JSON.stringify(te.audience)}`;
      if (err.claim === 'nbf') return `subject_token is not valid yet (nbf ${err.payload.nbf})`;
      return `subject_token claim "${err.claim}": ${err.message}`;
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
    case 'ERR_JWKS_NO_MATCHING_KEY':
      return `subject_token signature does not verify with the trusted issuer's keys (${err.message})`;
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
      return `subject_token alg is not one of ${SUBJECT_TOKEN_ALGS.join(', ')}`;
    default:
      return `subject_token is not a valid JWT (${err.message})`;
  }
}

// The subject token's claims once its signature, issuer, audience and times check out.
// No clock tolerance: issuer and IdP share the test machine's clock.
async function verifySubjectToken(jwt) {
  const invalidGrant = (why) => new errors.CustomOIDCProviderError('invalid_grant', why);
  let payload;
  try {
    ({ payload } = await jwtVerify(jwt, tokenExchange.keys, {
      algorithms: SUBJECT_TOKEN_ALGS,
      issuer: tokenExchange.issuer,
      audience: tokenExchange.audience,
      requiredClaims: ['exp', 'sub'],
    }));
  } catch (err) {
    throw invalidGrant(subjectTokenProblem(err));
  }
  if (typeof payload.sub !== 'string' || !payload.sub) throw invalidGrant('subject_token "sub" must be a non-empty string');
  if (payload.iat !== undefined && payload.iat > Math.floor(Date.now() / 1000)) {
    throw invalidGrant(`subject_token is issued in the future (iat ${payload.iat})`);
  }
  return payload;
}

// RFC 8693 token exchange: an access token for the requested resource, on behalf of the subject
// token's `sub`, issued like client_credentials issues its tokens (same resource and scope rules).
async function tokenExchangeHandler(provider, ctx) {
  const { params, client } = ctx.oidc;
  for (const p of ['subject_token', 'subject_token_type']) {
    if (!params[p]) throw new errors.InvalidRequest(`missing required parameter '${p}'`);
  }
  if (!SUBJECT_TOKEN_TYPES.includes(params.subject_token_type)) {
    throw new errors.InvalidRequest(`unsupported subject_token_type '${params.subject_token_type}': expected one of ${SUBJECT_TOKEN_TYPES.join(', ')}`);
  }
  if (params.requested_token_type !== undefined && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest(`unsupported requested_token_type '${params.requested_token_type}': only ${ACCESS_TOKEN_TYPE} is issued`);
  }
  if (params.actor_token !== undefined || params.actor_token_type !== undefined) {
    throw new errors.InvalidRequest('actor_token (delegation) is not supported');
  }
  const subject = await verifySubjectToken(params.subject_token);

  const resourceServers = await grantHelpers.resolveRequestedResources(provider, ctx);
  const scopes = [...grantHelpers.validateClientScope(provider, ctx)];
  const token = new provider.AccessToken({
    client,
    accountId: subject.sub,
    gty: 'token_exchange',
    scope: scopes.join(' ') || undefined,
  });
  const { 0: resourceServer, length } = resourceServers;
  if (resourceServer) {
    if (length !== 1) {
      throw new errors.InvalidTarget('only a single resource indicator value is supported for this grant type');
    }
    token.resourceServer = resourceServer;
    token.scope = scopes.filter(Set.prototype.has.bind(new Set(resourceServer.scope.split(' ')))).join(' ') || undefined;
  }

  ctx.oidc.entity('AccessToken', token);
  const value = await token.save();
  ctx.body = grantHelpers.buildTokenResponse(provider, {
    accessToken: value,
    expiresIn: token.expiration,
    issuedTokenType: ACCESS_TOKEN_TYPE,
    scope: token.scope || undefined,
    tokenType: token.tokenType,
  });
}

// The provider is built once the port, and so the issuer, is known.
// The signing key is made asynchronously, before listening: Node 20's generateKeyPairSync can
// deadlock when a garbage collection runs while it encodes its result (seen here: the main thread
// waits forever on the key-generation job's own mutex), which hung a test run.
const { privateKey } = await promisify(generateKeyPair)('rsa', { modulusLength: 2048 });

function startProvider(issuer) {
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: [{ ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid: 'test-rsa' }] },
    // 'none' only when a client is public, so discovery is otherwise what it always was.
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt', ...(publicClients ? ['none'] : [])],
    // Random per run: nothing here outlives the process, and no test uses a browser session.
    cookies: { keys: [randomUUID()] },
    // The lifetime is the resource server's (getResourceServerInfo below); saying so here also
    // keeps the provider from noticing at every token that this default was left unchanged.
    // AccessToken: the token-exchange grant's tokens.
    ttl: {
      ClientCredentials: (_ctx, token) => token.resourceServer.accessTokenTTL,
      AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? accessTokenTTL,
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => AUDIENCE_URN + defaultAudience,
        useGrantedResource: () => true,
        // Any resource is allowed; read per request so /__test/ttl applies to later tokens.
        getResourceServerInfo: (_ctx, resource) => ({
          scope: resourceScope,
          audience: resource.startsWith(AUDIENCE_URN) ? resource.slice(AUDIENCE_URN.length) : resource,
          accessTokenTTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('oidc-provider server_error:', err));
  if (tokenExchange) {
    // Multiple `resource` values reach the handler (which refuses them), as for client_credentials.
    const params = ['subject_token', 'subject_token_type', 'requested_token_type', 'actor_token', 'actor_token_type', 'scope', 'resource'];
    provider.registerGrantType(TOKEN_EXCHANGE, (ctx) => tokenExchangeHandler(provider, ctx), params, ['resource']);
  }
  return provider.callback();
}

// With `tls: {cert, key}` (PEM file paths) the provider serves HTTPS, for the agent's CA tests.
const server = config.tls
  ? https.createServer({ cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) })
  : http.createServer();
server.listen(config.port || 0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `${config.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  const oidc = startProvider(issuer);

  server.on('request', async (req, res) => {
    try {
      const { pathname } = new URL(req.url, issuer);
      if (pathname.startsWith('/__test/')) return await control(req, res, pathname);
      if (req.method === 'GET' && pathname === '/.well-known/openid-configuration') {
        stats.discovery_requests += 1;
        if (issuerOverride) overrideIssuer(res, issuerOverride);
      }
      if (req.method === 'POST' && pathname === '/token' && (await tokenRequest(req, res))) return undefined;
      return oidc(req, res);
    } catch (err) {
      console.error('test IdP error:', err);
      if (!res.headersSent) send(res, 500, { error: 'server_error', error_description: String(err.message) });
      return undefined;
    }
  });

  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
});

// Die with the test that started us: on a signal, or when our stdin (the parent's pipe) closes.
function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.resume();
