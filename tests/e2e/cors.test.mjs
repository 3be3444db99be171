// CORS in a real browser: a page served from one origin calls sample_server's
// /v1/chat/completions on another (a different port is a different origin), with a key in the
// Authorization header, so Chromium sends a preflight first. With CHAT_CORS_ORIGINS naming the
// page's origin the call succeeds and the page can read X-Request-ID; from an origin not named,
// Chromium refuses to hand the answer to the page.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import readline from 'node:readline';

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch {
  throw new Error('playwright-core is not installed: run `npm ci --prefix tests/e2e` (scripts/test does)');
}
const SAMPLE_SERVER = process.env.SAMPLE_SERVER;
assert.ok(SAMPLE_SERVER, 'SAMPLE_SERVER must name the binary');
const CHROMIUM = process.env.CHROMIUM || ['/usr/lib/chromium/chromium', '/usr/bin/chromium'].find((p) => existsSync(p));
assert.ok(CHROMIUM, 'Chromium is not installed: apt-get install chromium (scripts/install-deps does)');

const dir = mkdtempSync(join(tmpdir(), 'chatkit-cors-'));
const db = join(dir, 'keys.db');
let server, pages, otherPages, browser, apiBase, pageOrigin, otherOrigin, key;

// A page server: every path answers an empty HTML page (what runs in it comes from the test).
function startPageServer() {
  return new Promise((resolve) => {
    const s = createServer((_, res) => { res.writeHead(200, { 'Content-Type': 'text/html' }); res.end('<!doctype html><title>app</title>'); });
    s.listen(0, '127.0.0.1', () => resolve(s));
  });
}

before(async () => {
  pages = await startPageServer();
  otherPages = await startPageServer();
  pageOrigin = `http://127.0.0.1:${pages.address().port}`;
  otherOrigin = `http://127.0.0.1:${otherPages.address().port}`;
  const cli = (...args) => JSON.parse(execFileSync(SAMPLE_SERVER, args, {
    env: { PATH: process.env.PATH, CHAT_DATABASE_URL: `sqlite:${db}` }, encoding: 'utf8' }).trim().split('\n').pop());
  cli('teams', 'create', '--id', 'web');
  key = cli('keys', 'create', '--team', 'web').key;
  server = spawn(SAMPLE_SERVER, [], {
    env: { PATH: process.env.PATH, CHAT_PORT: '0', CHAT_DATABASE_URL: `sqlite:${db}`, CHAT_AUTH: 'keys', CHAT_RATE_LIMIT: 'off',
           CHAT_DRAIN_DELAY: '0', CHAT_CORS_ORIGINS: pageOrigin },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('sample_server did not start')), 20000);
    server.on('exit', (code) => reject(new Error(`sample_server exited with ${code}`)));
    readline.createInterface({ input: server.stdout }).on('line', (line) => {
      let j;
      try { j = JSON.parse(line); } catch { return; }
      if (j.msg === 'listening') { clearTimeout(timer); resolve(j.port); }
    });
  });
  // localhost, not 127.0.0.1: a different host as well as a different port from the pages.
  apiBase = `http://localhost:${port}`;
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
});

after(async () => {
  await browser?.close();
  server?.kill('SIGKILL');
  pages?.close();
  otherPages?.close();
  rmSync(dir, { recursive: true, force: true });
});

// Runs fetch() in a page of `origin` and says what the page could see.
async function callFrom(origin) {
  const page = await (await browser.newContext()).newPage();
  await page.goto(origin + '/');
  return page.evaluate(async ({ url, key }) => {
    try {
      const res = await fetch(url, {
        method: 'POST',
        headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ messages: [{ role: 'user', content: 'hello from a page' }] }),
      });
      return { ok: true, status: res.status, body: await res.json(), requestId: res.headers.get('X-Request-ID') };
    } catch (e) {
      return { ok: false, error: String(e) };
    }
  }, { url: apiBase + '/v1/chat/completions', key });
}

test('a page on an allowed origin calls /v1/chat/completions with its key, and reads the answer and X-Request-ID', async () => {
  const r = await callFrom(pageOrigin);
  assert.equal(r.ok, true, r.error);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.choices[0].message.content, 'hello from a page');
  assert.match(r.requestId ?? '', /^[0-9a-f]{32}$/);
});

test('a page on another origin gets nothing: the browser refuses it the answer', async () => {
  const r = await callFrom(otherOrigin);
  assert.equal(r.ok, false);
  assert.match(r.error, /Failed to fetch|TypeError/);
});
