// A real OAuth 2.0 authorization server for reconnect-operator's tests: oidc-provider, on a
// free loopback port over plain http, with admin hooks under /admin/ (a prefix oidc-provider
// does not use). See ../README.md for the admin API.
//
//   node peer.mjs --modules DIR [--port N]
//
// DIR holds the node_modules installed from package-lock.json (the Rust wrapper installs it
// under the workspace target/ dir). On start the server prints one line
// `OAUTH_PEER_READY {"issuer":...,"port":...}` on stdout. It exits when its stdin closes or its
// parent process goes away, so a test process that exits or panics never leaves it behind.

import { randomBytes, generateKeyPairSync } from 'node:crypto';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const args = new Map();
for (let i = 2; i < process.argv.length; i += 2) {
  args.set(process.argv[i], process.argv[i + 1]);
}
const modules = args.get('--modules');
if (!modules) {
  console.error('usage: node peer.mjs --modules DIR [--port N]');
  process.exit(2);
}
const requireFrom = createRequire(path.join(path.resolve(modules), 'package.json'));
const { default: Provider, errors } = await import(
  pathToFileURL(requireFrom.resolve('oidc-provider')).href
);

// Never outlive the process that started us.
const parent = process.ppid;
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
setInterval(() => {
  if (process.ppid !== parent) process.exit(0);
}, 500).unref();

const epoch = () => Math.floor(Date.now() / 1000);
const DAY = 24 * 60 * 60;

// ---------------------------------------------------------------------------------------------
// State the admin API changes.

/** Models the adapter stores, by model name: id -> { payload, expiresAt }. */
const stores = new Map();
/** grantId -> [[model, id]] of the tokens issued under that grant. */
const grantIndex = new Map();
/** Ids of refresh tokens deleted by a revocation or by reuse detection. */
const revokedRefreshTokens = new Set();
/** Clients taken out of service by /admin/clients/:id/disable: id -> metadata. */
const disabledClients = new Map();
/** Accounts: id -> { active }. Created when a refresh token is minted for them. */
const accounts = new Map();
/** Per-client settings: id -> { accessTokenTtl?, rotateRefreshTokens }. */
const clientSettings = new Map();
let accessTokenTtl = 3600;
/** `opaque` (stored, introspectable) or `jwt` (RFC 9068, self-contained). */
let accessTokenFormat = 'opaque';
const counters = { paths: {}, token: {} };
/** Scripted faults, consumed in order by matching requests. */
let faults = [];
let discoveryCacheControl;
let endpointPrefix = '';

function storeFor(model) {
  if (!stores.has(model)) stores.set(model, new Map());
  return stores.get(model);
}

/** An in-memory adapter the admin API can reach into (oidc-provider's own is private). */
class PeerAdapter {
  constructor(model) {
    this.model = model;
    this.store = storeFor(model);
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : Infinity;
    this.store.set(id, { payload, expiresAt });
    if (payload.grantId) {
      if (!grantIndex.has(payload.grantId)) grantIndex.set(payload.grantId, []);
      grantIndex.get(payload.grantId).push([this.model, id]);
    }
  }

  async find(id) {
    const entry = this.store.get(id);
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      this.store.delete(id);
      return undefined;
    }
    return entry.payload;
  }

  async findByUid(uid) {
    for (const { payload } of this.store.values()) {
      if (payload.uid === uid) return payload;
    }
    return undefined;
  }

  async findByUserCode(userCode) {
    for (const { payload } of this.store.values()) {
      if (payload.userCode === userCode) return payload;
    }
    return undefined;
  }

  async consume(id) {
    const entry = this.store.get(id);
    if (entry) entry.payload.consumed = epoch();
  }

  async destroy(id) {
    if (this.model === 'RefreshToken') revokedRefreshTokens.add(id);
    this.store.delete(id);
  }

  async revokeByGrantId(grantId) {
    for (const [model, id] of grantIndex.get(grantId) ?? []) {
      if (model === 'RefreshToken') revokedRefreshTokens.add(id);
      storeFor(model).delete(id);
    }
    grantIndex.delete(grantId);
  }
}

// ---------------------------------------------------------------------------------------------
// The authorization server.

// Listen first (port 0 picks a free port without a race), then build the provider for the
// issuer that port names; requests before that get 503.
let oidc;
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (url.pathname.startsWith('/admin/')) {
    serveAdmin(req, res, url.pathname.slice('/admin/'.length));
  } else if (oidc) {
    oidc(req, res);
  } else {
    res.writeHead(503).end();
  }
});
const port = await new Promise((resolve, reject) => {
  server.on('error', reject);
  server.listen(Number(args.get('--port') ?? 0), '127.0.0.1', () => resolve(server.address().port));
});
const issuer = `http://127.0.0.1:${port}`;
/** The one protected API (RFC 8707 resource indicator) all resource scopes belong to. */
const API = `${issuer}/api`;
/** Client metadata: the API scopes the client may be granted (space-separated). */
const API_SCOPES = 'api_scopes';

const ttlFor = (clientId) => clientSettings.get(clientId)?.accessTokenTtl ?? accessTokenTtl;
// ES256: a P-256 key is made in a millisecond, an RSA one in a fifth of a second.
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });

const provider = new Provider(issuer, {
  adapter: PeerAdapter,
  clients: [],
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  jwks: { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: 'peer', use: 'sig', alg: 'ES256' }] },
  clientDefaults: {
    grant_types: ['authorization_code'],
    id_token_signed_response_alg: 'ES256',
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  scopes: ['openid', 'offline_access'],
  // The API scopes a client may get are registered per client, as oidc-provider recommends
  // for resource-server policies (its `scope` metadata only takes the OpenID scopes above).
  extraClientMetadata: { properties: [API_SCOPES] },
  async findAccount(ctx, sub) {
    if (!accounts.get(sub)?.active) return undefined;
    return { accountId: sub, claims: async () => ({ sub }) };
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // oidc-provider's default policy: public clients see only their own tokens.
      async allowedPolicy(ctx, client, token) {
        return client.clientAuthMethod !== 'none' || token.clientId === client.clientId;
      },
    },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => API,
      useGrantedResource: async () => true,
      // A client gets at most the API scopes registered for it.
      async getResourceServerInfo(ctx, resource, client) {
        if (resource !== API) throw new errors.InvalidTarget();
        return { scope: client[API_SCOPES] ?? '', audience: API, accessTokenFormat };
      },
    },
  },
  rotateRefreshToken: (ctx) => clientSettings.get(ctx.oidc.client.clientId)?.rotateRefreshTokens ?? true,
  ttl: {
    AccessToken: (ctx, token, client) => ttlFor(client?.clientId ?? token.clientId),
    ClientCredentials: (ctx, token, client) => ttlFor(client?.clientId ?? token.clientId),
    AuthorizationCode: 60,
    BackchannelAuthenticationRequest: 600,
    DeviceCode: 600,
    Grant: 14 * DAY,
    IdToken: 3600,
    Interaction: 3600,
    RefreshToken: 14 * DAY,
    Session: 14 * DAY,
  },
});

const DISCOVERY = new Set(['/.well-known/openid-configuration', '/.well-known/oauth-authorization-server']);
const MOVABLE = ['token', 'introspection', 'revocation'];

const bump = (map, key) => {
  map[key] = (map[key] ?? 0) + 1;
};

function clientIdOf(ctx) {
  try {
    return ctx.oidc.client?.clientId ?? ctx.oidc.authorization?.clientId ?? ctx.oidc.params?.client_id;
  } catch {
    return undefined;
  }
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

// Counters, scripted faults, discovery tweaks and moved endpoints, around every route.
provider.use(async (ctx, next) => {
  const requested = ctx.path;
  bump(counters.paths, requested);

  if (endpointPrefix) {
    const routes = MOVABLE.map((r) => new URL(provider.urlFor(r)).pathname);
    if (routes.includes(requested)) {
      ctx.status = 404;
      ctx.body = { error: 'invalid_request', error_description: 'this endpoint moved' };
      return;
    }
    if (requested.startsWith(`${endpointPrefix}/`) && routes.includes(requested.slice(endpointPrefix.length))) {
      ctx.path = requested.slice(endpointPrefix.length);
    }
  }

  const index = faults.findIndex((f) => !f.path || f.path === requested);
  if (index !== -1) {
    const fault = faults[index];
    fault.count -= 1;
    if (fault.count <= 0) faults.splice(index, 1);
    switch (fault.mode) {
      case 'rate_limit':
        if (fault.retry_after !== undefined) ctx.set('retry-after', String(fault.retry_after));
        ctx.status = 429;
        ctx.body = { error: 'rate_limited' };
        return;
      case 'unavailable':
        if (fault.retry_after !== undefined) ctx.set('retry-after', String(fault.retry_after));
        ctx.status = 503;
        ctx.body = { error: 'temporarily_unavailable' };
        return;
      case 'drop':
        ctx.req.socket.destroy();
        ctx.respond = false;
        return;
      case 'slow':
        await sleep(fault.delay_ms ?? 1000);
        break;
      default:
    }
  }

  await next();

  if (ctx.oidc?.route === 'token') {
    const client = clientIdOf(ctx) ?? '';
    if (!counters.token[client]) counters.token[client] = {};
    bump(counters.token[client], ctx.oidc.params?.grant_type ?? '');
  }
  if (DISCOVERY.has(requested) && ctx.status === 200) {
    if (discoveryCacheControl) ctx.set('cache-control', discoveryCacheControl);
    if (endpointPrefix && ctx.body && typeof ctx.body === 'object') {
      for (const field of ['token_endpoint', 'introspection_endpoint', 'revocation_endpoint']) {
        const url = new URL(ctx.body[field]);
        url.pathname = `${endpointPrefix}${url.pathname}`;
        ctx.body[field] = url.href;
      }
    }
  }
});

// ---------------------------------------------------------------------------------------------
// The admin API.

class AdminError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new AdminError(400, 'the body is not JSON');
  }
}

const scopeString = (scopes) => (Array.isArray(scopes) ? scopes.join(' ') : (scopes ?? ''));
const clientStore = () => storeFor('Client');

async function findClientMetadata(id) {
  const entry = clientStore().get(id);
  if (!entry) throw new AdminError(404, `no client ${id}`);
  return entry.payload;
}

async function saveClient(metadata) {
  try {
    await provider.Client.validate(metadata);
  } catch (err) {
    throw new AdminError(400, `invalid client metadata: ${err.error_description ?? err.message}`);
  }
  await new PeerAdapter('Client').upsert(metadata.client_id, metadata);
}

async function createClient(body) {
  const id = body.client_id;
  if (!id) throw new AdminError(400, 'client_id is required');
  const grants = body.grant_types ?? ['client_credentials'];
  const secret = body.public ? undefined : (body.client_secret ?? randomBytes(24).toString('base64url'));
  const metadata = {
    client_id: id,
    grant_types: grants,
    [API_SCOPES]: scopeString(body.scope),
    token_endpoint_auth_method: body.public
      ? 'none'
      : (body.token_endpoint_auth_method ?? 'client_secret_basic'),
    response_types: grants.includes('authorization_code') ? ['code'] : [],
    redirect_uris: grants.includes('authorization_code') ? ['http://127.0.0.1/callback'] : [],
  };
  if (secret) metadata.client_secret = secret;
  disabledClients.delete(id);
  await saveClient(metadata);
  clientSettings.set(id, {
    ...clientSettings.get(id),
    rotateRefreshTokens: body.rotate_refresh_tokens ?? true,
  });
  return { client_id: id, client_secret: secret ?? null };
}

async function mintRefreshToken(body) {
  const { client_id: clientId, account_id: accountId } = body;
  const client = await provider.Client.find(clientId);
  if (!client) throw new AdminError(404, `no client ${clientId}`);
  if (!accountId) throw new AdminError(400, 'account_id is required');
  if (!accounts.has(accountId)) accounts.set(accountId, { active: true });
  const scope = scopeString(body.scope);
  // What an authorization-code exchange with offline_access would have left behind.
  const grant = new provider.Grant({ accountId, clientId });
  grant.addOIDCScope('offline_access');
  if (scope) grant.addResourceScope(API, scope);
  const grantId = await grant.save();
  const token = new provider.RefreshToken({
    accountId,
    client,
    grantId,
    gty: 'authorization_code',
    scope: ['offline_access', scope].filter(Boolean).join(' '),
    resource: API,
    authTime: epoch(),
    expiresWithSession: false,
  });
  const value = await token.save();
  return { refresh_token: value, grant_id: grantId };
}

async function refreshTokenState(value) {
  const token = await provider.RefreshToken.find(value, { ignoreExpiration: true });
  if (!token) return { state: revokedRefreshTokens.has(value) ? 'revoked' : 'unknown' };
  if (token.consumed) return { state: 'consumed', rotations: token.rotations ?? 0 };
  if (token.isExpired) return { state: 'expired' };
  const grant = await provider.Grant.find(token.grantId);
  if (!grant) return { state: 'revoked' };
  return { state: 'active', rotations: token.rotations ?? 0, grant_id: token.grantId };
}

async function revokeChain(value) {
  const token = await provider.RefreshToken.find(value, { ignoreExpiration: true });
  if (!token) throw new AdminError(404, 'no such refresh token');
  await new PeerAdapter('RefreshToken').revokeByGrantId(token.grantId);
  await new PeerAdapter('Grant').destroy(token.grantId);
  return { grant_id: token.grantId };
}

async function accessTokenInfo(value) {
  const token = (await provider.AccessToken.find(value)) ?? (await provider.ClientCredentials.find(value));
  if (!token) return { active: false };
  return {
    active: true,
    kind: token.kind,
    client_id: token.clientId,
    account_id: token.accountId ?? null,
    scope: token.scope ?? '',
    iat: token.iat,
    exp: token.exp,
  };
}

function snapshot() {
  const discovery = [...DISCOVERY].reduce((n, p) => n + (counters.paths[p] ?? 0), 0);
  const at = (name) => counters.paths[new URL(provider.urlFor(name)).pathname] ?? 0;
  return {
    token: counters.token,
    paths: counters.paths,
    discovery,
    introspection: at('introspection'),
    revocation: at('revocation'),
  };
}

async function admin(method, route, req) {
  const parts = route.split('/').filter(Boolean).map(decodeURIComponent);
  // clients/:id/... and accounts/:id/... carry an id; every other route is literal.
  const withId = parts[0] === 'clients' || parts[0] === 'accounts';
  const key = `${method} ${parts.map((p, i) => (withId && i === 1 ? ':id' : p)).join('/')}`;
  const body = method === 'GET' ? {} : await readJson(req);
  const id = parts[1];
  switch (key) {
    case 'GET health':
      return { issuer };
    case 'POST clients':
      return createClient(body);
    case 'PATCH clients/:id': {
      const metadata = { ...(await findClientMetadata(id)) };
      if (body.scope !== undefined) metadata[API_SCOPES] = scopeString(body.scope);
      if (body.client_secret !== undefined) metadata.client_secret = body.client_secret;
      await saveClient(metadata);
      if (body.rotate_refresh_tokens !== undefined) {
        clientSettings.set(id, { ...clientSettings.get(id), rotateRefreshTokens: body.rotate_refresh_tokens });
      }
      return { client_id: id };
    }
    case 'POST clients/:id/disable':
      disabledClients.set(id, await findClientMetadata(id));
      clientStore().delete(id);
      return { client_id: id };
    case 'POST clients/:id/enable': {
      const metadata = disabledClients.get(id);
      if (!metadata) throw new AdminError(404, `no disabled client ${id}`);
      disabledClients.delete(id);
      await saveClient(metadata);
      return { client_id: id };
    }
    case 'DELETE clients/:id':
      disabledClients.delete(id);
      clientStore().delete(id);
      clientSettings.delete(id);
      return { client_id: id };
    case 'POST accounts/:id/disable':
      accounts.set(id, { active: false });
      return { account_id: id };
    case 'POST accounts/:id/enable':
      accounts.set(id, { active: true });
      return { account_id: id };
    case 'POST refresh-tokens':
      return mintRefreshToken(body);
    case 'POST refresh-tokens/state':
      return refreshTokenState(body.refresh_token);
    case 'POST refresh-tokens/revoke':
      return revokeChain(body.refresh_token);
    case 'POST access-tokens/info':
      return accessTokenInfo(body.access_token);
    case 'PUT ttl':
      if (!Number.isInteger(body.access_token_ttl) || body.access_token_ttl <= 0) {
        throw new AdminError(400, 'access_token_ttl must be a positive integer (seconds)');
      }
      if (body.client_id) {
        clientSettings.set(body.client_id, { ...clientSettings.get(body.client_id), accessTokenTtl: body.access_token_ttl });
      } else {
        accessTokenTtl = body.access_token_ttl;
      }
      return { access_token_ttl: body.access_token_ttl };
    case 'PUT access-token-format':
      if (!['opaque', 'jwt'].includes(body.format)) throw new AdminError(400, 'format must be opaque or jwt');
      accessTokenFormat = body.format;
      return { format: accessTokenFormat };
    case 'GET counters':
      return snapshot();
    case 'POST counters/reset':
      counters.paths = {};
      counters.token = {};
      return snapshot();
    case 'POST faults':
      if (!['rate_limit', 'unavailable', 'drop', 'slow'].includes(body.mode)) {
        throw new AdminError(400, 'mode must be rate_limit, unavailable, drop or slow');
      }
      faults.push({ path: body.path, mode: body.mode, count: body.count ?? 1, retry_after: body.retry_after, delay_ms: body.delay_ms });
      return { faults: faults.length };
    case 'DELETE faults':
      faults = [];
      return { faults: 0 };
    case 'PUT discovery':
      if (body.cache_control !== undefined) discoveryCacheControl = body.cache_control ?? undefined;
      if (body.endpoint_prefix !== undefined) endpointPrefix = (body.endpoint_prefix ?? '').replace(/\/+$/, '');
      return { cache_control: discoveryCacheControl ?? null, endpoint_prefix: endpointPrefix };
    default:
      throw new AdminError(404, `no admin route ${method} /admin/${route}`);
  }
}

function serveAdmin(req, res, route) {
  admin(req.method, route, req).then(
    (result) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(result));
    },
    (err) => {
      res.writeHead(err.status ?? 500, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: err.message }));
    },
  );
}

oidc = provider.callback();
process.stdout.write(`OAUTH_PEER_READY ${JSON.stringify({ issuer, port })}\n`);
