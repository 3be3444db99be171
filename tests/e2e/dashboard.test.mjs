// The /dashboard page in headless Chromium (Debian's `chromium`, driven by playwright-core): the
// real sample_server with CHAT_AUTH=keys, a team and keys made with its commands, a usage history
// seeded through the echo provider; the numbers the page shows against GET /v1/usage, a wrong key,
// the period switch, a team key that sees only its team, no console errors, and a phone's width.
// Screenshots go to DASHBOARD_SCREENSHOTS (a directory) when it is set.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
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
const SHOTS = process.env.DASHBOARD_SCREENSHOTS;
if (SHOTS) mkdirSync(SHOTS, { recursive: true });

const dir = mkdtempSync(join(tmpdir(), 'chatkit-dashboard-'));
const db = join(dir, 'usage.db');
const adminKey = 'adm-' + 'e2e'.repeat(12); // 40 characters: CHAT_ADMIN_KEY needs 32 or more
let server;
let base;
let browser;
let researchKey;
let otherKey;

function cli(args) {
  const out = execFileSync(SAMPLE_SERVER, args, {
    env: { PATH: process.env.PATH, CHAT_DATABASE_URL: `sqlite:${db}` },
    encoding: 'utf8',
  });
  return JSON.parse(out.trim().split('\n').pop());
}

function startServer(env) {
  server = spawn(SAMPLE_SERVER, [], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('sample_server did not start')), 20000);
    server.on('exit', (code) => reject(new Error(`sample_server exited with ${code}`)));
    readline.createInterface({ input: server.stdout }).on('line', (line) => {
      let j;
      try { j = JSON.parse(line); } catch { return; }
      if (j.msg === 'listening') { clearTimeout(timer); resolve(j.port); }
    });
  });
}

async function api(path, key, init = {}) {
  const res = await fetch(base + path, { ...init, headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' } });
  return { status: res.status, body: await res.json() };
}

async function chat(key, content) {
  const r = await api('/chat', key, { method: 'POST', body: JSON.stringify({ user_id: 'ada', content }) });
  assert.equal(r.status, 200, JSON.stringify(r.body));
}

// A page whose console errors and uncaught exceptions are collected.
async function openPage(viewport = { width: 1280, height: 800 }) {
  const context = await browser.newContext({ viewport, colorScheme: 'light' });
  const page = await context.newPage();
  page.errors = [];
  page.on('console', (m) => { if (m.type() === 'error') page.errors.push(m.text()); });
  page.on('pageerror', (e) => page.errors.push(String(e)));
  await page.goto(base + '/dashboard');
  return page;
}

async function signIn(page, key) {
  await page.fill('#key', key);
  await page.press('#key', 'Enter'); // the keyboard, as a user would
  await page.waitForSelector('#dashboard:not([hidden])');
  await page.waitForFunction(() => document.querySelector('#status').textContent.startsWith('Showing'));
}

// The cards' numbers (data-value holds the number a card shows, unrounded).
async function cards(page) {
  return page.evaluate(() => Object.fromEntries(Array.from(document.querySelectorAll('#cards dd[data-field]'),
    (dd) => [dd.dataset.field, Number(dd.dataset.value)])));
}

async function waitForStatus(page, text) {
  await page.waitForFunction((t) => document.querySelector('#status').textContent.includes(t), text);
}

function assertSameAsUsage(shown, usage) {
  for (const field of ['total_requests', 'total_tokens', 'unpriced_requests']) assert.equal(shown[field], usage.summary[field], field);
  for (const field of ['total_cost_usd', 'avg_daily_cost_usd'])
    assert.ok(Math.abs(shown[field] - usage.summary[field]) <= 1e-12 + 1e-9 * Math.abs(usage.summary[field]), `${field}: ${shown[field]} vs ${usage.summary[field]}`);
}

async function shot(page, name) {
  if (SHOTS) await page.screenshot({ path: join(SHOTS, name), fullPage: true });
}

before(async () => {
  cli(['teams', 'create', '--id', 'research', '--name', 'Research']);
  cli(['teams', 'create', '--id', 'other', '--name', 'Other team']);
  researchKey = cli(['keys', 'create', '--team', 'research', '--name', 'notebook']).key;
  otherKey = cli(['keys', 'create', '--team', 'other']).key;
  const prices = join(dir, 'prices.json');
  writeFileSync(prices, JSON.stringify({ models: { 'echo-1': { input: 3.0, output: 15.0 } } }));
  const port = await startServer({
    PATH: process.env.PATH,
    CHAT_PORT: '0',
    CHAT_HOST: '127.0.0.1',
    CHAT_DATABASE_URL: `sqlite:${db}`,
    CHAT_RATE_LIMIT: 'off',
    CHAT_PROVIDER: 'echo',
    CHAT_AUTH: 'keys',
    CHAT_ADMIN_KEY: adminKey,
    CHAT_PRICING_FILE: prices,
  });
  base = `http://127.0.0.1:${port}`;
  // The seeded history: known requests, written through the server.
  for (const words of ['hello there', 'what does the dashboard show', 'three words here']) await chat(researchKey, words);
  await chat(researchKey, 'hello there'); // a cache hit
  for (const words of ['another team asks', 'and asks again please']) await chat(otherKey, words);
  // The records are written off the request path: wait until all six are in.
  for (let i = 0; i < 100; ++i) {
    const r = await api('/v1/usage/dashboard?days=7', adminKey);
    if (r.body.summary.total_requests === 6) break;
    await new Promise((ok) => setTimeout(ok, 50));
  }
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
});

after(async () => {
  if (browser) await browser.close();
  if (server) server.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
});

test('the page and its files are served without a key, from the binary, with a strict content security policy', async () => {
  for (const path of ['/dashboard', '/dashboard/dashboard.js', '/dashboard/dashboard.css', '/dashboard/uPlot.iife.min.js', '/dashboard/uPlot.min.css']) {
    const res = await fetch(base + path);
    assert.equal(res.status, 200, path);
    assert.match(res.headers.get('content-security-policy'), /default-src 'none'/);
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
  }
  assert.match((await fetch(base + '/dashboard')).headers.get('content-type'), /^text\/html/);
});

test('a wrong key is refused with a clear message that does not show the key', async () => {
  const page = await openPage();
  await page.fill('#key', 'ck-this-is-not-a-key-of-this-server');
  await page.click('button[type=submit]');
  await page.waitForSelector('#sign-in-error:not([hidden])');
  const message = await page.textContent('#sign-in-error');
  assert.match(message, /refused this key \(401\)/);
  assert.ok(!message.includes('ck-this-is-not'), message);
  assert.equal(await page.isHidden('#dashboard'), true);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await shot(page, 'wrong-key.png');
  assert.deepEqual(page.errors.filter((e) => !e.includes('401')), []); // the browser logs the refused fetch itself
  await page.context().close();
});

test('the admin key sees every team; one team and each period show the numbers of GET /v1/usage', async () => {
  const page = await openPage();
  await signIn(page, adminKey);
  const all = await cards(page);
  assert.equal(all.total_requests, 6);
  const teams = await page.$$eval('#table-teams tbody tr', (rows) => rows.map((r) => r.cells[0].textContent));
  assert.deepEqual(teams.sort(), ['Other team (other)', 'Research (research)']);
  assert.equal(await page.$$eval('#chart-requests canvas', (c) => c.length), 1);
  assert.equal(await page.textContent('#card-cache'), '16.7 %'); // 1 hit of 6 answers
  await shot(page, 'admin-all-teams.png');

  await page.selectOption('#team', 'research');
  await waitForStatus(page, 'team Research');
  assertSameAsUsage(await cards(page), (await api('/v1/usage?days=7&team=research', adminKey)).body);
  assert.equal(await page.isVisible('#days-section'), true);

  for (const days of ['30', '1', '90', '7']) {
    await page.check(`input[name=days][value="${days}"]`);
    const usage = (await api(`/v1/usage?days=${days}&team=research`, adminKey)).body;
    await waitForStatus(page, usage.period.start === usage.period.end ? `Showing ${usage.period.end} (UTC)` : `Showing ${usage.period.start} to`);
    assertSameAsUsage(await cards(page), usage);
  }
  // The stack switch redraws by team.
  await page.selectOption('#team', '');
  await waitForStatus(page, 'every team');
  await page.selectOption('#stack', 'team');
  await page.waitForFunction(() => document.querySelector('#chart-cost').getAttribute('aria-label').includes('stacked by team'));
  await shot(page, 'admin-by-team.png');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('a team key sees its own team only, and the key is kept for the tab', async () => {
  const page = await openPage();
  await signIn(page, researchKey);
  assertSameAsUsage(await cards(page), (await api('/v1/usage?days=7', researchKey)).body);
  assert.equal(await page.isHidden('#team-filter'), true);
  const teams = await page.$$eval('#table-teams tbody tr', (rows) => rows.map((r) => r.cells[0].textContent));
  assert.deepEqual(teams, ['Research (research)']);
  const keys = await page.$$eval('#table-keys tbody tr', (rows) => rows.map((r) => r.cells[1].textContent));
  assert.deepEqual([...new Set(keys)], ['research']);
  await page.reload();
  await page.waitForFunction(() => document.querySelector('#status').textContent.startsWith('Showing'));
  assert.equal(await page.isVisible('#dashboard'), true);
  await shot(page, 'team-key.png');
  await page.click('#sign-out');
  assert.equal(await page.isVisible('#sign-in'), true);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('at a phone width nothing is wider than the screen, in the dark scheme too', async () => {
  for (const colorScheme of ['light', 'dark']) {
    const page = await openPage({ width: 390, height: 844 });
    await page.emulateMedia({ colorScheme });
    await signIn(page, adminKey);
    const widths = await page.evaluate(() => ({ page: document.documentElement.scrollWidth, screen: window.innerWidth }));
    assert.ok(widths.page <= widths.screen, JSON.stringify(widths));
    await shot(page, `phone-${colorScheme}.png`);
    assert.deepEqual(page.errors, []);
    await page.context().close();
  }
});
