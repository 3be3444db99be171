// The /docs page (Swagger UI on /openapi.json) in headless Chromium (Debian's `chromium`, driven by
// playwright-core) against the real sample_server with CHAT_AUTH=keys: it loads without a key and
// with no request leaving the server (every other origin is blocked, as with no internet), renders
// the operations with their summaries and schemas, runs under its Content-Security-Policy without
// a console error, and "Try it out" with a key entered in "Authorize" calls the real API. A
// screenshot goes to DOCS_SCREENSHOTS (a directory) when it is set.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
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
// The browser itself, not Debian's /usr/bin/chromium wrapper script.
const CHROMIUM = process.env.CHROMIUM || ['/usr/lib/chromium/chromium', '/usr/bin/chromium'].find((p) => existsSync(p));
assert.ok(CHROMIUM, 'Chromium is not installed: apt-get install chromium (scripts/install-deps does)');
const SHOTS = process.env.DOCS_SCREENSHOTS;
if (SHOTS) mkdirSync(SHOTS, { recursive: true });

const dir = mkdtempSync(join(tmpdir(), 'chatkit-docs-'));
const db = join(dir, 'keys.db');
let server, browser, base, key;

before(async () => {
  const cli = (...args) => JSON.parse(execFileSync(SAMPLE_SERVER, args, {
    env: { PATH: process.env.PATH, CHAT_DATABASE_URL: `sqlite:${db}` }, encoding: 'utf8' }).trim().split('\n').pop());
  cli('teams', 'create', '--id', 'docs');
  key = cli('keys', 'create', '--team', 'docs').key;
  server = spawn(SAMPLE_SERVER, [], {
    env: { PATH: process.env.PATH, CHAT_PORT: '0', CHAT_HOST: '127.0.0.1', CHAT_DATABASE_URL: `sqlite:${db}`, CHAT_PROVIDER: 'echo',
           CHAT_AUTH: 'keys', CHAT_RATE_LIMIT: 'off', CHAT_DRAIN_DELAY: '0' },
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
  base = `http://127.0.0.1:${port}`;
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
});

after(async () => {
  if (browser) await browser.close();
  if (server) server.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
});

// The page with no way out: a request to any other origin is aborted and recorded, and console
// errors (a Content-Security-Policy violation among them) and uncaught exceptions are collected.
async function openDocs() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, colorScheme: 'light' });
  const page = await context.newPage();
  page.errors = [];
  page.outside = [];
  await context.route('**/*', (route) => {
    if (new URL(route.request().url()).origin === base) return route.continue();
    page.outside.push(route.request().url());
    return route.abort('internetdisconnected');
  });
  page.on('console', (m) => { if (m.type() === 'error') page.errors.push(m.text()); });
  page.on('pageerror', (e) => page.errors.push(String(e)));
  await page.goto(base + '/docs');
  await page.waitForSelector('.opblock-summary');
  return page;
}

// The summary Swagger UI shows for METHOD PATH.
async function summaryOf(page, method, path) {
  const block = page.locator(`.opblock-${method.toLowerCase()}`).filter({
    has: page.locator(`.opblock-summary-path[data-path="${path}"]`),
  });
  return block.locator('.opblock-summary-description').first().textContent();
}

test('the page and its files are served without a key, from the binary, under a strict content security policy', async () => {
  for (const path of ['/docs', '/docs/docs.js', '/docs/swagger-ui.css', '/docs/swagger-ui-bundle.js', '/openapi.json']) {
    const res = await fetch(base + path);
    assert.equal(res.status, 200, path);
    assert.match(res.headers.get('content-security-policy'), /default-src 'none'; script-src 'self';/);
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
  }
  assert.match((await fetch(base + '/docs')).headers.get('content-type'), /^text\/html/);
  const root = await (await fetch(base + '/', { headers: { Authorization: `Bearer ${key}` } })).json();
  assert.ok(root.routes.includes('GET /docs') && root.routes.includes('GET /openapi.json'), root.routes.join(', '));
});

test('Swagger UI renders every operation of /openapi.json with no internet and no console error', async () => {
  const page = await openDocs();
  const spec = await (await fetch(base + '/openapi.json')).json();
  await page.waitForSelector('.info .title');
  assert.match(await page.textContent('.info .title'), /chatkit sample_server/);
  assert.equal(await summaryOf(page, 'POST', '/v1/chat/completions'), spec.paths['/v1/chat/completions'].post.summary);
  assert.equal(await summaryOf(page, 'POST', '/chat'), spec.paths['/chat'].post.summary);
  assert.equal(await summaryOf(page, 'GET', '/history/{user_id}'), spec.paths['/history/{user_id}'].get.summary);
  let operations = 0;
  for (const item of Object.values(spec.paths)) operations += Object.keys(item).length;
  assert.equal(await page.locator('.opblock').count(), operations);
  // An operation opens onto its request body and responses.
  await page.locator('.opblock-post').filter({ has: page.locator('.opblock-summary-path[data-path="/v1/chat/completions"]') })
    .locator('.opblock-summary').first().click();
  await page.waitForSelector('.opblock.is-open .responses-table');
  const responses = await page.locator('.opblock.is-open .responses-table .response-col_status').allTextContents();
  for (const status of ['200', '400', '401', '413', '415', '429']) assert.ok(responses.some((s) => s.trim() === status), `${status} in ${responses}`);
  await page.locator('.opblock.is-open .opblock-summary').first().click(); // closed again, for the screenshot
  // Every schema is listed under "Schemas" (Swagger UI's JSON Schema 2020-12 view, for OpenAPI 3.1).
  const schemas = page.locator('section.models .json-schema-2020-12[data-json-schema-level="0"]');
  assert.equal(await schemas.count(), Object.keys(spec.components.schemas).length);
  assert.equal((await schemas.first().locator('.json-schema-2020-12__title').first().textContent()).trim(), Object.keys(spec.components.schemas)[0]);
  await page.mouse.move(0, 0);
  await page.evaluate(() => { document.activeElement?.blur(); window.scrollTo(0, 0); });
  if (SHOTS) await page.screenshot({ path: join(SHOTS, 'docs.png') });
  assert.deepEqual(page.outside, [], 'requests to other origins');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('"Try it out" sends the key entered in "Authorize" and shows the real answer', async () => {
  const page = await openDocs();
  await page.click('.auth-wrapper .authorize');
  const bearer = page.locator('.auth-container').filter({ hasText: 'bearerAuth' });
  await bearer.locator('input').fill(key);
  await bearer.locator('button.authorize').click();
  await page.click('.btn-done');
  const models = page.locator('.opblock-get').filter({ has: page.locator('.opblock-summary-path[data-path="/v1/models"]') });
  await models.locator('.opblock-summary').first().click();
  await models.locator('.try-out__btn').click();
  await models.locator('.execute').click();
  const answer = models.locator('.live-responses-table tbody tr.response').first();
  await answer.waitFor();
  assert.equal((await answer.locator('.response-col_status').textContent()).trim(), '200');
  assert.match(await answer.locator('.response-col_description').textContent(), /"echo-1"/);
  // The key stays in the page's memory: nothing is stored for the next visit.
  assert.equal(await page.evaluate(() => localStorage.length + sessionStorage.length), 0);
  assert.deepEqual(page.outside, []);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});
