// The real OpenID provider (npm `oidc-provider`, OpenID Certified) that the agent's tests run
// against, on loopback, with a small test-control surface in front of it. See README.md.
//
// Facts this file relies on (oidc-provider 9.13):
// - Access tokens are opaque unless a resource server is chosen, so `features.resourceIndicators`
//   is on and every client-credentials token is for one resource server and is an RS256 JWT.
// - A resource indicator must be an absolute URI; an OAuth2 `audience` such as "flyteadmin" is not.
//   The control layer turns a request's `audience=X` into `resource=urn:audience:X`, and
//   getResourceServerInfo turns that back into the JWT's `aud: X`.
// - A private_key_jwt assertion's `aud` may be the issuer, the token endpoint URL, or the URL of
//   the endpoint called (lib/shared/jwt_client_auth.js).
// - The provider treats client_secret_basic and client_secret_post as interchangeable, so which
//   one the agent used is read from the request itself and reported in /__test/stats.
import { generateKeyPairSync } from 'node:crypto';
import http from 'node:http';
import { setTimeout as delay } from 'node:timers/promises';

import Provider from 'oidc-provider';

// stdout carries only the one address line the harness reads, so notices go to stderr. The
// warnings listed are deliberate choices of a test peer (Node 20, in-memory storage, the control
// layer's pre-parsed body); anything else oidc-provider warns about still shows.
const EXPECTED_WARNINGS = ['Unsupported runtime', 'in-memory adapter', 'already parsed request body'];
const warn = console.warn;
console.warn = (...args) => {
  if (!EXPECTED_WARNINGS.some((w) => String(args[0]).includes(w))) warn(...args);
};
console.info = (...args) => console.error(...args);

const config = JSON.parse(process.env.IDP_CONFIG || '{}');
const AUDIENCE_URN = 'urn:audience:';
const defaultAudience = config.audience || 'flyteadmin';
let accessTokenTTL = config.accessTokenTTL || 3600;

const clients = (config.clients || [{ client_id: 'agent', client_secret: 'agent-secret' }]).map((c) => ({
  token_endpoint_auth_method: 'client_secret_basic',
  ...c,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
}));

const stats = { token_requests: 0, by_client: {}, auth_methods: [], last_form: null, discovery_requests: 0 };
let fault = null; // { mode, count, status, body, headers, delay_ms }
let issuerOverride = null;

function resetStats() {
  Object.assign(stats, { token_requests: 0, by_client: {}, auth_methods: [], last_form: null, discovery_requests: 0 });
  fault = null;
  issuerOverride = null;
}

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

function sendJson(res, status, body, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
}

function basicClientId(header) {
  if (!header || !header.startsWith('Basic ')) return null;
  const decoded = Buffer.from(header.slice(6), 'base64').toString('utf8');
  return decodeURIComponent(decoded.split(':')[0]);
}

function clientAssertionIssuer(assertion) {
  try {
    return JSON.parse(Buffer.from(assertion.split('.')[1], 'base64url').toString('utf8')).iss;
  } catch {
    return undefined;
  }
}

// Records the token request, then decides whether a fault answers it instead of the provider.
// Returns true when the response has been sent.
async function tokenRequest(req, res) {
  const form = Object.fromEntries(new URLSearchParams(await readBody(req)));
  let method = 'none';
  let clientId = form.client_id;
  if (req.headers.authorization?.startsWith('Basic ')) {
    method = 'client_secret_basic';
    clientId = basicClientId(req.headers.authorization);
  } else if (form.client_assertion) {
    method = 'private_key_jwt';
    clientId ||= clientAssertionIssuer(form.client_assertion);
  } else if (form.client_secret) {
    method = 'client_secret_post';
  }
  stats.token_requests += 1;
  stats.by_client[clientId || '?'] = (stats.by_client[clientId || '?'] || 0) + 1;
  stats.auth_methods.push(method);
  const redacted = { ...form };
  for (const k of ['client_secret', 'client_assertion']) if (k in redacted) redacted[k] = '<redacted>';
  stats.last_form = redacted;

  if (fault && fault.mode !== 'none') {
    const active = fault;
    if (active.count !== undefined) {
      active.count -= 1;
      if (active.count <= 0) fault = null;
    }
    if (active.mode === 'status') {
      sendJson(res, active.status || 500, active.body ?? '', active.headers || {});
      return true;
    }
    if (active.mode === 'malformed') {
      sendJson(res, 200, '{"access_token": ');
      return true;
    }
    if (active.mode === 'slow') {
      const abort = new AbortController();
      res.on('close', () => abort.abort());
      try {
        await delay(Math.min(active.delay_ms || 1000, 30_000), undefined, { signal: abort.signal });
      } catch {
        return true; // the client went away
      }
    }
  }

  // Hand the parsed form to the provider (it accepts a pre-parsed body once the stream is read).
  if (form.audience && !form.resource) {
    form.resource = /^[a-z][a-z0-9+.-]*:/i.test(form.audience) ? form.audience : AUDIENCE_URN + form.audience;
  }
  delete form.audience;
  req.body = form;
  return false;
}

async function control(req, res, url) {
  const body = req.method === 'POST' ? JSON.parse((await readBody(req)) || '{}') : {};
  switch (url.pathname) {
    case '/__test/stats':
      return sendJson(res, 200, stats);
    case '/__test/reset':
      resetStats();
      return sendJson(res, 200, { ok: true });
    case '/__test/fault':
      fault = body.mode === 'none' ? null : body;
      return sendJson(res, 200, { ok: true });
    case '/__test/discovery':
      issuerOverride = body.issuer ?? null;
      return sendJson(res, 200, { ok: true });
    case '/__test/ttl':
      accessTokenTTL = body.accessTokenTTL;
      return sendJson(res, 200, { ok: true });
    default:
      return sendJson(res, 404, { error: 'no such control' });
  }
}

const server = http.createServer();
server.listen(config.port || 0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: [{ ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid: 'test-rsa' }] },
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    scopes: ['openid', 'offline_access'],
    cookies: { keys: ['test-only-cookie-key'] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => AUDIENCE_URN + defaultAudience,
        useGrantedResource: () => true,
        getResourceServerInfo: async (_ctx, resource) => ({
          scope: config.scope || 'all offline read write',
          audience: resource.startsWith(AUDIENCE_URN) ? resource.slice(AUDIENCE_URN.length) : resource,
          accessTokenTTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('oidc-provider server_error:', err));
  const callback = provider.callback();

  server.on('request', async (req, res) => {
    try {
      const url = new URL(req.url, issuer);
      if (url.pathname.startsWith('/__test/')) return await control(req, res, url);
      if (req.method === 'GET' && url.pathname === '/.well-known/openid-configuration') {
        stats.discovery_requests += 1;
        if (issuerOverride) {
          // Let the provider build the real document, then swap its issuer.
          const realEnd = res.end.bind(res);
          res.end = (chunk, ...rest) => {
            const doc = JSON.parse(chunk.toString());
            doc.issuer = issuerOverride;
            const text = JSON.stringify(doc);
            res.setHeader('content-length', Buffer.byteLength(text));
            return realEnd(text, ...rest);
          };
        }
      }
      if (req.method === 'POST' && url.pathname === '/token' && (await tokenRequest(req, res))) return undefined;
      return callback(req, res);
    } catch (err) {
      console.error('test IdP error:', err);
      if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
      return undefined;
    }
  });

  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
});

// Die with the test that started us: on a signal, or when our stdin (the parent's pipe) closes.
const stop = () => server.close(() => process.exit(0)) && setTimeout(() => process.exit(0), 500).unref();
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.resume();
