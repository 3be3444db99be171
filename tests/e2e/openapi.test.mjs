// GET /openapi.json against the real sample_server. The description is a valid OpenAPI 3.1
// document (@seriousme/openapi-schema-validator) and the same as sample_server/openapi/openapi.json;
// every route GET / lists has an operation in it and every operation is a route the server lists,
// so a new route cannot be left out; and real answers (chats plain and streamed in all four formats,
// history, probes, models, errors 400/401/403/404/405/409/413/415/429, an upstream that cannot be
// reached (502, the streams' error events, /health and /ready at 503), the usage and /admin routes
// with keys, /metrics, the pages) have a status the description lists for their operation, one of
// its media types, and a body its schema accepts (ajv, JSON Schema 2020-12); so do the conversation
// routes (every operation, their stream, their errors, and team scoping with keys). The request bodies the
// server takes are ones their schema accepts, and some it refuses for their shape, ones it refuses.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import readline from 'node:readline';

let Ajv2020, addFormats, Validator;
try {
  ({ default: Ajv2020 } = await import('ajv/dist/2020.js'));
  ({ default: addFormats } = await import('ajv-formats'));
  ({ Validator } = await import('@seriousme/openapi-schema-validator'));
} catch {
  throw new Error('ajv, ajv-formats or @seriousme/openapi-schema-validator is not installed: run `npm ci --prefix tests/e2e` (scripts/test does)');
}

const SAMPLE_SERVER = process.env.SAMPLE_SERVER;
assert.ok(SAMPLE_SERVER, 'SAMPLE_SERVER must name the binary');
const SOURCE = new URL('../../sample_server/openapi/openapi.json', import.meta.url);

const dir = mkdtempSync(join(tmpdir(), 'chatkit-openapi-'));
const adminKey = 'adm-' + 'openapi'.repeat(6); // CHAT_ADMIN_KEY needs 32 characters or more
const servers = [];
let open; // CHAT_AUTH=none
let keyed; // CHAT_AUTH=keys with an admin key
let failing; // an OpenAI provider whose upstream refuses every connection
let spec;
let ajv;

function startServer(env) {
  const child = spawn(SAMPLE_SERVER, [], {
    env: { PATH: process.env.PATH, CHAT_PORT: '0', CHAT_HOST: '127.0.0.1', CHAT_PROVIDER: 'echo', CHAT_RATE_LIMIT: 'off',
           CHAT_DRAIN_DELAY: '0', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  servers.push(child);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('sample_server did not start')), 20000);
    child.on('exit', (code) => reject(new Error(`sample_server exited with ${code}`)));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      let j;
      try { j = JSON.parse(line); } catch { return; }
      if (j.msg === 'listening') { clearTimeout(timer); resolve(`http://127.0.0.1:${j.port}`); }
    });
  });
}

// One request; `body` as an object is sent as JSON, as a string as it is.
async function call(base, method, path, { key, body, type = 'application/json', headers = {} } = {}) {
  const h = { ...headers };
  if (key) h.Authorization = `Bearer ${key}`;
  if (body !== undefined) h['Content-Type'] = type;
  const res = await fetch(base + path, { method, headers: h, body: typeof body === 'object' ? JSON.stringify(body) : body });
  return { method, path, sent: typeof body === 'object' ? body : undefined, status: res.status, headers: res.headers, text: await res.text() };
}

const mediaType = (t) => (t ?? '').split(';')[0].trim().toLowerCase();
const componentName = (ref) => ref.split('/').pop();

// ajv reads the description's schemas as one schema's $defs: its $refs point there instead.
const toDefs = (schema) => JSON.parse(JSON.stringify(schema).replaceAll('"#/components/schemas/', '"#/$defs/'));
const validators = new Map();
function validate(schema, value, what) {
  const key = JSON.stringify(schema);
  if (!validators.has(key)) validators.set(key, ajv.compile({ ...toDefs(schema), $defs: toDefs(spec.components.schemas) }));
  const check = validators.get(key);
  assert.ok(check(value), `${what}: ${ajv.errorsText(check.errors)}\n${JSON.stringify(value).slice(0, 600)}`);
}
// A body the server refuses with 400 for its shape, and the request schema refuses too.
async function refusedByBoth(base, path, body, key, method = 'POST') {
  const r = await call(base, method, path, { body, key });
  assert.equal(r.status, 400, `${method} ${path} ${JSON.stringify(body)}: ${r.text}`);
  conforms(r);
  const schema = operationOf(method, path).requestBody.content['application/json'].schema;
  const check = ajv.compile({ ...toDefs(schema), $defs: toDefs(spec.components.schemas) });
  assert.equal(check(body), false, `${method} ${path}: the schema accepts ${JSON.stringify(body)}, which the server refuses`);
  return r;
}
const named = (name) => ({ $ref: `#/components/schemas/${name}` });

// The operation of the description that serves METHOD PATH (a template such as /history/{user_id}
// matches one path segment).
function operationOf(method, path) {
  for (const [template, item] of Object.entries(spec.paths)) {
    const pattern = new RegExp('^' + template.replace(/\{[^}]+\}/g, '[^/]+') + '$');
    if (pattern.test(path) && item[method.toLowerCase()]) return item[method.toLowerCase()];
  }
  return undefined;
}
const resolved = (r) => (r?.$ref ? spec.components.responses[componentName(r.$ref)] : r);

// The events of a stream in the description's terms: chatkit's names its events and ends with
// `done`; Anthropic's and OpenAI Responses' name them by their type and end with message_stop or
// response.completed; OpenAI's Chat Completions has unnamed chunks and ends with [DONE].
function checkStream(schema, text, what) {
  const events = text.split('\n\n').filter((e) => e.length > 0).map((e) => {
    const event = { name: null, data: null };
    for (const line of e.split('\n')) {
      if (line.startsWith('event: ')) event.name = line.slice(7);
      else if (line.startsWith('data: ')) event.data = line.slice(6);
    }
    return event;
  });
  assert.ok(events.length >= 1, `${what}: no events in\n${text}`);
  if (componentName(schema.$ref) === 'ChatStream') {
    const data = { delta: 'ChatDelta', done: 'ChatAnswer', error: 'Error' };
    for (const e of events) {
      assert.ok(data[e.name], `${what}: an event named ${e.name}`);
      validate(named(data[e.name]), JSON.parse(e.data), `${what}, event ${e.name}`);
    }
    assert.ok(['done', 'error'].includes(events.at(-1).name), `${what}: the last event is ${events.at(-1).name}`);
    assert.ok(events.slice(0, -1).every((e) => e.name === 'delta'), `${what}: only deltas before the last event`);
  } else if (componentName(schema.$ref) === 'ConversationStream') {
    events.forEach((e, i) => {
      assert.equal(e.name, null, `${what}: a conversation's events have no names`);
      const data = JSON.parse(e.data);
      validate(named('ConversationStreamEvent'), data, `${what}, event ${i}`);
      assert.equal(data.done, i === events.length - 1, `${what}: only the last event is done`);
    });
  } else if (componentName(schema.$ref) === 'MessagesStream') {
    for (const e of events) {
      const data = JSON.parse(e.data);
      validate(named('MessagesStreamEvent'), data, `${what}, event ${e.name}`);
      assert.equal(data.type, e.name, `${what}: an event's data has its name as type`);
    }
    assert.ok(['message_stop', 'error'].includes(events.at(-1).name), `${what}: the last event is ${events.at(-1).name}`);
  } else if (componentName(schema.$ref) === 'ResponsesStream') {
    events.forEach((e, i) => {
      const data = JSON.parse(e.data);
      validate(named('ResponsesStreamEvent'), data, `${what}, event ${e.name}`);
      assert.equal(data.type, e.name, `${what}: an event's data has its name as type`);
      assert.equal(data.sequence_number, i, `${what}: events are numbered from 0`);
    });
    assert.equal(events[0].name, 'response.created', `${what}: the first event`);
    assert.ok(['response.completed', 'response.incomplete', 'response.failed'].includes(events.at(-1).name),
      `${what}: the last event is ${events.at(-1).name}`);
  } else {
    assert.equal(componentName(schema.$ref), 'ChatCompletionStream');
    const last = events.at(-1).data;
    for (const e of last === '[DONE]' ? events.slice(0, -1) : events) {
      assert.equal(e.name, null, `${what}: OpenAI's events have no names`);
      const chunk = JSON.parse(e.data);
      validate(named(chunk.error ? 'StreamError' : 'ChatCompletionChunk'), chunk, `${what}, a chunk`);
    }
    assert.ok(last === '[DONE]' || JSON.parse(last).error, `${what}: the stream ends with [DONE] or an error`);
  }
  return events;
}

// The answer `r` as the description says its operation answers: a listed status, a listed media
// type, a body its schema accepts, and the headers it names that every answer carries.
function conforms(r) {
  const what = `${r.method} ${r.path} -> ${r.status}`;
  const path = r.path.split('?')[0];
  const op = operationOf(r.method, path);
  assert.ok(op, `${r.method} ${path} has no operation in the description`);
  const doc = resolved(op.responses[String(r.status)]);
  assert.ok(doc, `${what}: the description lists ${Object.keys(op.responses).join(', ')}`);
  // A request the server took is one the request body's schema accepts.
  if (r.status < 300 && r.sent !== undefined) validate(op.requestBody.content['application/json'].schema, r.sent, `${what}: the request`);
  checkBody(doc, r, what);
}

// The same for an answer that no operation covers (an unknown path, another method).
function conformsToComponent(name, r) {
  checkBody(spec.components.responses[name], r, `${r.method} ${r.path} -> ${r.status} as ${name}`);
}

function checkBody(doc, r, what) {
  if (!doc.content) { // 204: no body
    assert.equal(r.text, '', `${what}: the description lists no body`);
    return;
  }
  const type = mediaType(r.headers.get('content-type'));
  const media = Object.keys(doc.content ?? {}).find((m) => mediaType(m) === type);
  assert.ok(media, `${what}: Content-Type ${type} is not one of ${Object.keys(doc.content ?? {}).join(', ')}`);
  const schema = doc.content[media].schema;
  if (type === 'application/json') validate(schema, JSON.parse(r.text), what);
  else if (type === 'text/event-stream') r.events = checkStream(schema, r.text, what);
  else validate(schema, r.text, what);
  for (const name of Object.keys(doc.headers ?? {}))
    if (['X-Request-ID', 'WWW-Authenticate', 'Allow', 'Retry-After'].includes(name)) assert.ok(r.headers.get(name), `${what}: no ${name} header`);
}

// "METHOD /path" for every operation of the description.
function documentedRoutes() {
  const out = [];
  for (const [path, item] of Object.entries(spec.paths))
    for (const method of Object.keys(item)) if (['get', 'post', 'put', 'patch', 'delete'].includes(method)) out.push(`${method.toUpperCase()} ${path}`);
  return out.sort();
}

before(async () => {
  open = await startServer({ CHAT_DATABASE_URL: `sqlite:${join(dir, 'open.db')}`, CHAT_MAX_BODY_BYTES: '4096' });
  keyed = await startServer({ CHAT_DATABASE_URL: `sqlite:${join(dir, 'keys.db')}`, CHAT_AUTH: 'keys', CHAT_ADMIN_KEY: adminKey });
  // A port nothing listens on: a server's, closed.
  const closed = createServer();
  await new Promise((ok) => closed.listen(0, '127.0.0.1', ok));
  const deadPort = closed.address().port;
  await new Promise((ok) => closed.close(ok));
  failing = await startServer({ CHAT_DATABASE_URL: 'none', CHAT_PROVIDER: 'openai', CHAT_OPENAI_BASE_URL: `http://127.0.0.1:${deadPort}/v1`,
                                CHAT_UPSTREAM_MAX_RETRIES: '0' });
  const r = await call(open, 'GET', '/openapi.json');
  assert.equal(r.status, 200);
  spec = JSON.parse(r.text);
  // strictRequired is off: ChatRequest's anyOf names fields its own properties define.
  ajv = new Ajv2020({ strict: true, strictRequired: false, allowUnionTypes: true, allErrors: true });
  addFormats(ajv);
  ajv.addKeyword('example'); // OpenAPI's annotation in a Schema Object
});

after(() => {
  for (const s of servers) s.kill();
  rmSync(dir, { recursive: true, force: true });
});

test('GET /openapi.json is a valid OpenAPI 3.1 document, the one in the source tree', async () => {
  const r = await call(open, 'GET', '/openapi.json');
  assert.equal(mediaType(r.headers.get('content-type')), 'application/json');
  assert.equal(r.text, readFileSync(SOURCE, 'utf8'), 'the binary serves sample_server/openapi/openapi.json byte for byte');
  assert.equal(spec.openapi, '3.1.0');
  const result = await new Validator().validate(structuredClone(spec));
  assert.ok(result.valid, JSON.stringify(result.errors, null, 2));
  // Every schema compiles under ajv's strict mode: no misspelt keyword passes unnoticed.
  for (const name of Object.keys(spec.components.schemas)) ajv.compile({ ...toDefs(named(name)), $defs: toDefs(spec.components.schemas) });
});

test('every route GET / lists is in the description, and every operation of the description is a route it lists', async () => {
  for (const base of [open, keyed]) {
    const r = await call(base, 'GET', '/', { key: base === keyed ? adminKey : undefined });
    assert.equal(r.status, 200);
    conforms(r);
    const listed = JSON.parse(r.text).routes;
    const documented = documentedRoutes();
    for (const route of listed) assert.ok(documented.includes(route), `${route} is served but not in the description`);
    // GET / does not list itself, nor POST /v1/chat, the service's other name of /v1/chat/completions.
    const unlisted = ['GET /', 'POST /v1/chat'];
    for (const route of documented)
      if (!unlisted.includes(route)) assert.ok(listed.includes(route), `${route} is in the description but not served`);
    for (const route of unlisted) {
      const [method, path] = route.split(' ');
      const r = await call(base, method, path, { key: adminKey, body: method === 'POST' ? { messages: [{ role: 'user', content: 'hi' }] } : undefined });
      assert.equal(r.status, 200, `${route} is served: ${r.text}`);
    }
    assert.ok(listed.includes('GET /openapi.json') && listed.includes('GET /docs'), 'GET / links the description and its page');
  }
});

test('chats, plain and streamed, in chatkit\'s format, OpenAI\'s two and Anthropic\'s, answer as described', async () => {
  conforms(await call(open, 'POST', '/chat', { body: { user_id: 'ada', content: 'Hello there, chatkit' } }));
  conforms(await call(open, 'POST', '/chat', { body: { user_id: 'ada', content: 'Hello there, chatkit' } })); // a cache hit
  const streamed = await call(open, 'POST', '/chat', {
    body: { user_id: 'ada', messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'stream these four words' }], stream: true },
  });
  assert.equal(mediaType(streamed.headers.get('content-type')), 'text/event-stream');
  conforms(streamed);
  assert.equal(streamed.events.at(-1).name, 'done');
  conforms(await call(open, 'POST', '/v1/chat/completions', { body: { model: 'echo-1', messages: [{ role: 'user', content: 'hi there' }], user: 'ada' } }));
  const chunks = await call(open, 'POST', '/v1/chat/completions', {
    body: { messages: [{ role: 'developer', content: 'Be brief.' }, { role: 'user', content: [{ type: 'text', text: 'three streamed words' }] }],
            stream: true, stream_options: { include_usage: true } },
  });
  assert.equal(mediaType(chunks.headers.get('content-type')), 'text/event-stream');
  conforms(chunks);
  assert.equal(chunks.events.at(-1).data, '[DONE]');
  assert.ok(JSON.parse(chunks.events.at(-2).data).usage, 'include_usage: a chunk with the usage');
  conforms(await call(open, 'POST', '/v1/chat', { body: { messages: [{ role: 'user', content: 'the alias' }] } }));
  const message = { model: 'echo-1', max_tokens: 64, system: 'Be brief.', messages: [{ role: 'user', content: 'hi there' }] };
  conforms(await call(open, 'POST', '/v1/messages', { body: message }));
  conforms(await call(open, 'POST', '/v1/messages', { body: message })); // a cache hit
  const events = await call(open, 'POST', '/v1/messages', { body: { ...message, stream: true } });
  assert.equal(mediaType(events.headers.get('content-type')), 'text/event-stream');
  conforms(events);
  assert.equal(events.events.at(-1).name, 'message_stop');
  const response = { model: 'echo-1', instructions: 'Be brief.', input: 'hi there', store: false };
  conforms(await call(open, 'POST', '/v1/responses', { body: response }));
  conforms(await call(open, 'POST', '/v1/responses', { body: response })); // a cache hit
  const items = await call(open, 'POST', '/v1/responses', {
    body: { input: [{ role: 'user', content: [{ type: 'input_text', text: 'four streamed words' }] }], stream: true } });
  assert.equal(mediaType(items.headers.get('content-type')), 'text/event-stream');
  conforms(items);
  assert.equal(items.events.at(-1).name, 'response.completed');
});

test('history, probes, models, usage and metrics answer as described', async () => {
  await call(open, 'POST', '/chat', { body: { user_id: 'bob', content: 'one' } });
  await call(open, 'POST', '/chat', { body: { user_id: 'bob', content: 'two' } });
  const first = await call(open, 'GET', '/history/bob?limit=2');
  conforms(first);
  const cursor = JSON.parse(first.text).next_cursor;
  assert.ok(cursor, 'four messages in pages of two: there is an older page');
  conforms(await call(open, 'GET', `/history/bob?limit=2&before=${cursor}`));
  conforms(await call(open, 'GET', '/history/nobody'));
  conforms(await call(open, 'GET', '/history/bob?limit=0')); // 400
  for (const path of ['/health', '/ready', '/', '/v1/models', '/v1/usage?days=7', '/v1/usage/dashboard?days=1', '/metrics'])
    conforms(await call(open, 'GET', path));
  conforms(await call(open, 'GET', '/v1/usage?days=0')); // 400
  conforms(await call(open, 'GET', '/admin/keys')); // 404: no administration without CHAT_AUTH=keys
});

test('errors are the described envelope with the described statuses: 400, 404, 405, 413, 415', async () => {
  const cases = [
    [await call(open, 'POST', '/chat', { body: { content: 'hi', temperature: 3 } }), 400],
    [await call(open, 'POST', '/chat', { body: '{"content":' }), 400],
    [await call(open, 'POST', '/v1/chat/completions', { body: { messages: [] } }), 400],
    [await call(open, 'POST', '/chat', { body: { content: 'x'.repeat(8000) } }), 413],
    [await call(open, 'POST', '/v1/chat/completions', { body: '{"messages":[{"role":"user","content":"hi"}]}', type: 'text/plain' }), 415],
    [await call(open, 'POST', '/chat', { body: 'content=hi', type: 'application/x-www-form-urlencoded' }), 415],
  ];
  for (const [r, status] of cases) {
    assert.equal(r.status, status, `${r.method} ${r.path}: ${r.text}`);
    conforms(r);
  }
  await refusedByBoth(open, '/chat', { content: 'hi', temperature: 3 });
  await refusedByBoth(open, '/chat', { user_id: 'ada' });
  await refusedByBoth(open, '/chat', { messages: [{ role: 'robot', content: 'hi' }] });
  await refusedByBoth(open, '/v1/chat/completions', { messages: [] });
  await refusedByBoth(open, '/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }], n: 2 });
  await refusedByBoth(open, '/v1/messages', { model: 'echo-1', messages: [{ role: 'user', content: 'hi' }] });
  await refusedByBoth(open, '/v1/responses', { input: 'hi', store: true });
  await refusedByBoth(open, '/v1/responses', { input: 'hi', previous_response_id: 'resp_1' });
  await refusedByBoth(open, '/v1/responses', { model: 'echo-1' });
  await refusedByBoth(open, '/v1/messages', { model: 'echo-1', max_tokens: 9, top_k: 5, messages: [{ role: 'user', content: 'hi' }] });
  await refusedByBoth(open, '/v1/messages', { model: 'echo-1', max_tokens: 9, messages: [{ role: 'system', content: 'hi' }] });
  const unknown = await call(open, 'GET', '/no/such/route');
  assert.equal(unknown.status, 404);
  conformsToComponent('NotFound', unknown);
  const emptyId = await call(open, 'GET', '/history/');
  assert.equal(emptyId.status, 404);
  conformsToComponent('NotFound', emptyId);
  for (const [method, path, allow] of [['GET', '/chat', 'POST'], ['DELETE', '/v1/chat/completions', 'POST'], ['POST', '/health', 'GET, HEAD']]) {
    const r = await call(open, method, path);
    assert.equal(r.status, 405);
    assert.equal(r.headers.get('allow'), allow);
    conformsToComponent('MethodNotAllowed', r);
  }
});

test('an upstream that cannot be reached: 502, error events in both streams, then /health and /ready at 503, as described', async () => {
  const plain = await call(failing, 'POST', '/chat', { body: { content: 'hi' } });
  assert.equal(plain.status, 502, plain.text);
  conforms(plain);
  const openai = await call(failing, 'POST', '/v1/chat/completions', { body: { messages: [{ role: 'user', content: 'hi' }] } });
  assert.equal(openai.status, 502, openai.text);
  conforms(openai);
  // A stream's status is sent before the provider is called: the failure is its last event.
  const streamed = await call(failing, 'POST', '/chat', { body: { content: 'hi', stream: true } });
  assert.equal(streamed.status, 200);
  conforms(streamed);
  assert.equal(streamed.events.at(-1).name, 'error');
  const chunks = await call(failing, 'POST', '/v1/chat/completions', { body: { messages: [{ role: 'user', content: 'hi' }], stream: true } });
  assert.equal(chunks.status, 200);
  conforms(chunks);
  assert.ok(JSON.parse(chunks.events.at(-1).data).error, chunks.text);
  const ask = { model: 'gpt-4o-mini', max_tokens: 9, messages: [{ role: 'user', content: 'hi' }] };
  const message = await call(failing, 'POST', '/v1/messages', { body: ask });
  assert.equal(message.status, 502, message.text);
  conforms(message);
  assert.equal(JSON.parse(message.text).error.type, 'api_error');
  const events = await call(failing, 'POST', '/v1/messages', { body: { ...ask, stream: true } });
  assert.equal(events.status, 200);
  conforms(events);
  assert.deepEqual(events.events.map((e) => e.name), ['error'], 'nothing of the message before the failure');
  const response = await call(failing, 'POST', '/v1/responses', { body: { input: 'hi' } });
  assert.equal(response.status, 502, response.text);
  conforms(response);
  const failed = await call(failing, 'POST', '/v1/responses', { body: { input: 'hi', stream: true } });
  assert.equal(failed.status, 200);
  conforms(failed);
  assert.equal(failed.events.at(-1).name, 'response.failed');
  // Three calls in a row that could not reach the upstream: the provider is down.
  for (const path of ['/health', '/ready']) {
    const r = await call(failing, 'GET', path);
    assert.equal(r.status, 503, `${path}: ${r.text}`);
    conforms(r);
  }
});

test('with CHAT_AUTH=keys: the open routes, 401, the /admin routes, 403, 409, 429 answer as described', async () => {
  // Open without a key: the probes, the description and its page.
  for (const path of ['/health', '/ready', '/openapi.json', '/docs', '/docs/swagger-ui-bundle.js', '/dashboard']) {
    const r = await call(keyed, 'GET', path);
    assert.equal(r.status, 200, `${path} without a key`);
    conforms(r);
  }
  const refused = await call(keyed, 'POST', '/chat', { body: { content: 'hi' } });
  assert.equal(refused.status, 401);
  assert.equal(refused.headers.get('www-authenticate'), 'Bearer');
  conforms(refused);
  conforms(await call(keyed, 'GET', '/v1/models', { key: 'ck-not-a-key' })); // 401

  const team = await call(keyed, 'POST', '/admin/teams', { key: adminKey, body: { id: 'research', name: 'Research', rpm: 600 } });
  assert.equal(team.status, 201, team.text);
  conforms(team);
  const again = await call(keyed, 'POST', '/admin/teams', { key: adminKey, body: { id: 'research' } });
  assert.equal(again.status, 409);
  conforms(again);
  await refusedByBoth(keyed, '/admin/teams', { id: 'x', colour: 'blue' }, adminKey);
  await refusedByBoth(keyed, '/admin/keys', { team: 'research', rpm: 5, budget_period: 'week', budget_usd: 1 }, adminKey);
  // The key limited to one request a minute first: a snapshot of the keys that holds the other,
  // made after it, holds this one too.
  const limitedKey = JSON.parse((await call(keyed, 'POST', '/admin/keys', { key: adminKey, body: { team: 'research', rpm: 1 } })).text).key;
  const created = await call(keyed, 'POST', '/admin/keys', { key: adminKey, body: { team: 'research', name: 'notebook', models: ['echo-1'] } });
  assert.equal(created.status, 201, created.text);
  conforms(created);
  const teamKey = JSON.parse(created.text).key;
  const listed = await call(keyed, 'GET', '/admin/keys?team=research', { key: adminKey });
  conforms(listed);
  assert.equal(JSON.parse(listed.text).data.length, 2);

  // The server reads its keys every 2 s: wait until it knows the new ones (this one, the newer).
  let known;
  for (let i = 0; i < 100; ++i) {
    known = await call(keyed, 'GET', '/v1/models', { key: teamKey });
    if (known.status !== 401) break;
    await new Promise((ok) => setTimeout(ok, 100));
  }
  assert.equal(known.status, 200, known.text);
  conforms(known);
  for (const [method, path, body] of [['GET', '/admin/keys'], ['GET', '/metrics'], ['GET', '/v1/usage?team=other'],
                                      ['POST', '/chat', { content: 'hi', model: 'gpt-4o' }]]) {
    const r = await call(keyed, method, path, { key: teamKey, body });
    assert.equal(r.status, 403, `${method} ${path} with a team's key: ${r.text}`);
    conforms(r);
  }
  conforms(await call(keyed, 'GET', '/history/ada', { key: teamKey }));
  conforms(await call(keyed, 'GET', '/v1/usage', { key: teamKey }));
  const first = await call(keyed, 'POST', '/chat', { key: limitedKey, body: { user_id: 'ada', content: 'with a key' } });
  assert.equal(first.status, 200, first.text);
  conforms(first);
  const limited = await call(keyed, 'POST', '/v1/chat/completions', { key: limitedKey, body: { messages: [{ role: 'user', content: 'again' }] } });
  assert.equal(limited.status, 429, 'the key allows one request a minute');
  assert.ok(Number(limited.headers.get('retry-after')) >= 1);
  conforms(limited);

  const keyId = JSON.parse(created.text).id;
  const revoked = await call(keyed, 'POST', '/admin/keys/revoke', { key: adminKey, body: { id: keyId } });
  assert.equal(revoked.status, 200, revoked.text);
  conforms(revoked);
  const unknownKey = await call(keyed, 'POST', '/admin/keys/revoke', { key: adminKey, body: { id: 'key_0000000000000000' } });
  assert.equal(unknownKey.status, 404);
  conforms(unknownKey);
});

// An error answer with its status and code, as its operation describes it.
function failsWith(r, status, code) {
  assert.equal(r.status, status, `${r.method} ${r.path}: ${r.text}`);
  assert.equal(JSON.parse(r.text).error.code, code, `${r.method} ${r.path}: ${r.text}`);
  conforms(r);
  return r;
}

test('the conversation routes answer as described', async () => {
  const base = '/api/v1/conversations';
  const created = await call(open, 'POST', base, {
    body: { user_id: 'carol', title: 'Customer Support Chat', metadata: { source: 'web', system_prompt: 'Be brief.' } } });
  assert.equal(created.status, 201, created.text);
  conforms(created);
  const conversation = JSON.parse(created.text);
  const id = conversation.id;
  const path = (rest = '') => `${base}/${id}${rest}`;
  const untitled = await call(open, 'POST', base, { body: { user_id: 'carol', title: null, metadata: null } });
  assert.equal(untitled.status, 201, untitled.text);
  conforms(untitled);
  assert.equal(JSON.parse(untitled.text).title, null);

  // list, newest first, a page at a time
  const first = await call(open, 'GET', `${base}?user_id=carol&limit=1`);
  conforms(first);
  const firstPage = JSON.parse(first.text);
  assert.equal(firstPage.conversations[0].id, JSON.parse(untitled.text).id);
  assert.ok(firstPage.next_cursor, 'two conversations in pages of one: there is an older page');
  const second = await call(open, 'GET', `${base}?user_id=carol&limit=1&cursor=${encodeURIComponent(firstPage.next_cursor)}`);
  conforms(second);
  assert.equal(JSON.parse(second.text).conversations[0].id, id);
  conforms(await call(open, 'GET', `${base}?user_id=nobody`));

  const patched = await call(open, 'PATCH', path(), { body: { title: 'Renamed' } });
  assert.equal(patched.status, 200, patched.text);
  conforms(patched);
  assert.equal(JSON.parse(patched.text).title, 'Renamed');
  assert.deepEqual(JSON.parse(patched.text).metadata, conversation.metadata);

  // a turn answered whole, then streamed by GET and by POST
  const turn = await call(open, 'POST', path('/messages'), { body: { message: 'What is the weather like today?', temperature: 0.7, max_tokens: 150 } });
  assert.equal(turn.status, 200, turn.text);
  conforms(turn);
  const answer = JSON.parse(turn.text);
  assert.equal(answer.message.role, 'assistant');
  assert.equal(answer.conversation_id, id);
  const byGet = await call(open, 'GET', path('/stream?message=one%20two%20three&max_tokens=50'));
  assert.equal(byGet.status, 200, byGet.text);
  assert.equal(mediaType(byGet.headers.get('content-type')), 'text/event-stream');
  conforms(byGet);
  const done = JSON.parse(byGet.events.at(-1).data);
  assert.equal(done.conversation_id, id);
  assert.equal(byGet.events.slice(0, -1).map((e) => JSON.parse(e.data).content).join(''), 'one two three');
  const byPost = await call(open, 'POST', path('/stream'), { body: { message: 'four five', model: null } });
  assert.equal(byPost.status, 200, byPost.text);
  conforms(byPost);
  assert.ok(JSON.parse(byPost.events.at(-1).data).message_id);

  const shown = await call(open, 'GET', path());
  conforms(shown);
  const detail = JSON.parse(shown.text);
  assert.equal(detail.message_count, 6);
  assert.equal(detail.messages.length, 6);
  assert.equal(detail.messages[0].prompt_tokens, null, "a user's message has no usage");
  assert.deepEqual(detail.messages[1], answer.message, 'what the turn answered is what was stored');
  assert.equal(detail.messages[3].id, done.message_id);
  conforms(await call(open, 'GET', path('?limit=2')));
  const page = await call(open, 'GET', path('/messages?limit=4'));
  conforms(page);
  const cursor = JSON.parse(page.text).next_cursor;
  assert.ok(cursor, 'six messages in pages of four: there is a newer page');
  const rest = await call(open, 'GET', path(`/messages?limit=4&cursor=${encodeURIComponent(cursor)}`));
  conforms(rest);
  assert.equal(JSON.parse(rest.text).messages.length, 2);

  const feedback = await call(open, 'POST', path('/feedback'), {
    body: { message_id: answer.message.id, feedback_type: 'thumbs_up', rating: 5, comment: 'Very helpful response!' } });
  assert.equal(feedback.status, 201, feedback.text);
  conforms(feedback);
  const flag = await call(open, 'POST', path('/feedback'), { body: { message_id: done.message_id.toUpperCase(), feedback_type: 'flag' } });
  assert.equal(flag.status, 201, flag.text);
  conforms(flag);
  const listed = await call(open, 'GET', path('/feedback'));
  conforms(listed);
  assert.deepEqual(JSON.parse(listed.text).feedback, [JSON.parse(feedback.text), JSON.parse(flag.text)]);

  // errors: each with its status and code, as described
  const unknown = '0b6f6a8e-3c1d-4e2f-9a7b-5c4d3e2f1a0b';
  failsWith(await call(open, 'GET', `${base}/${unknown}`), 404, 'conversation_not_found');
  failsWith(await call(open, 'PATCH', `${base}/${unknown}`, { body: { title: 'x' } }), 404, 'conversation_not_found');
  failsWith(await call(open, 'POST', `${base}/${unknown}/messages`, { body: { message: 'hi' } }), 404, 'conversation_not_found');
  failsWith(await call(open, 'GET', `${base}/${unknown}/stream?message=hi`), 404, 'conversation_not_found');
  failsWith(await call(open, 'GET', `${base}/${unknown}/feedback`), 404, 'conversation_not_found');
  failsWith(await call(open, 'POST', path('/feedback'), { body: { message_id: unknown, feedback_type: 'flag' } }), 404, 'message_not_found');
  failsWith(await call(open, 'GET', `${base}/not-a-uuid`), 400, 'invalid_id');
  failsWith(await call(open, 'DELETE', `${base}/123`), 400, 'invalid_id');
  failsWith(await call(open, 'GET', base), 400, 'missing_field');
  failsWith(await call(open, 'GET', `${base}?user_id=carol&limit=101`), 400, 'invalid_value');
  failsWith(await call(open, 'GET', `${base}?user_id=carol&cursor=zzz`), 400, 'invalid_cursor');
  failsWith(await call(open, 'GET', path('/messages?limit=0')), 400, 'invalid_value');
  failsWith(await call(open, 'GET', path('/stream')), 400, 'missing_field');
  failsWith(await call(open, 'GET', path('/stream?message=hi&colour=red')), 400, 'unknown_field');
  failsWith(await call(open, 'POST', path('/stream'), { body: { message: '' } }), 400, 'empty_message'); // before the stream: JSON
  const refused = [
    [base, {}, 'missing_field'],
    [base, { user_id: 'carol', colour: 'red' }, 'unknown_field'],
    [base, { user_id: 'carol', title: 5 }, 'invalid_type'],
    [base, { user_id: 'carol', title: 'x'.repeat(501) }, 'invalid_value'],
    [base, { user_id: 'carol', metadata: 'web' }, 'invalid_type'],
    [path('/messages'), { message: '' }, 'empty_message'],
    [path('/messages'), { message: ' \n' }, 'empty_message'],
    [path('/messages'), {}, 'missing_field'],
    [path('/messages'), { message: 'hi', temperature: 3 }, 'invalid_value'],
    [path('/messages'), { message: 'hi', stream: true }, 'unknown_field'],
    [path('/stream'), { message: 'hi', max_tokens: 'x' }, 'invalid_type'],
    [path('/feedback'), { message_id: answer.message.id, feedback_type: 'meh' }, 'invalid_value'],
    [path('/feedback'), { message_id: answer.message.id, feedback_type: 'flag', rating: 6 }, 'invalid_value'],
    [path('/feedback'), { message_id: answer.message.id, feedback_type: 'flag', rating: 2.5 }, 'invalid_type'],
    [path('/feedback'), { message_id: 'nope', feedback_type: 'flag' }, 'invalid_id'],
    [path('/feedback'), { feedback_type: 'flag' }, 'missing_field'],
  ];
  for (const [where, body, code] of refused)
    assert.equal(JSON.parse((await refusedByBoth(open, where, body)).text).error.code, code, `POST ${where} ${JSON.stringify(body)}`);
  for (const [body, code] of [[{ user_id: 'mallory' }, 'unknown_field'], [{ title: [] }, 'invalid_type'], [{ metadata: 1 }, 'invalid_type']])
    assert.equal(JSON.parse((await refusedByBoth(open, path(), body, undefined, 'PATCH')).text).error.code, code, `PATCH ${JSON.stringify(body)}`);
  failsWith(await call(open, 'POST', path('/messages'), { body: { message: 'x'.repeat(8000) } }), 413, 'body_too_large');
  failsWith(await call(open, 'POST', base, { body: '{"user_id":"carol"}', type: 'text/plain' }), 415, 'unsupported_media_type');
  for (const [method, where, allow] of [['PUT', path(), 'GET, PATCH, DELETE'], ['DELETE', base, 'GET, POST'], ['PATCH', path('/messages'), 'GET, POST'],
                                        ['DELETE', path('/stream'), 'GET, POST'], ['PUT', path('/feedback'), 'GET, POST']]) {
    const r = await call(open, method, where);
    assert.equal(r.status, 405, `${method} ${where}: ${r.text}`);
    assert.equal(r.headers.get('allow'), allow);
    conformsToComponent('MethodNotAllowed', r);
  }
  const nowhere = await call(open, 'GET', path('/nothing'));
  assert.equal(nowhere.status, 404);
  conformsToComponent('NotFound', nowhere);
  // none of it changed the conversation
  const after = JSON.parse((await call(open, 'GET', path())).text);
  assert.equal(after.message_count, 6);
  assert.equal(after.title, 'Renamed');

  const deleted = await call(open, 'DELETE', path());
  assert.equal(deleted.status, 204, deleted.text);
  conforms(deleted);
  failsWith(await call(open, 'GET', path()), 404, 'conversation_not_found');
  failsWith(await call(open, 'GET', path('/messages')), 404, 'conversation_not_found');
  failsWith(await call(open, 'DELETE', path()), 404, 'conversation_not_found');

  // With keys: a team's conversation, which another team's key cannot see (404, never 403); no
  // key: 401; a key limited to other models: 403 for a turn; a key's requests a minute: 429.
  for (const team of ['support', 'sales']) {
    const r = await call(keyed, 'POST', '/admin/teams', { key: adminKey, body: { id: team } });
    assert.equal(r.status, 201, r.text);
  }
  const newKey = async (body) => {
    const r = await call(keyed, 'POST', '/admin/keys', { key: adminKey, body });
    assert.equal(r.status, 201, r.text);
    return JSON.parse(r.text).key;
  };
  const support = await newKey({ team: 'support' });
  const limitedModels = await newKey({ team: 'support', models: ['only-this'] });
  const oneAMinute = await newKey({ team: 'support', rpm: 1 });
  const sales = await newKey({ team: 'sales' }); // the newest: once the server knows it, it knows them all
  let known;
  for (let i = 0; i < 100; ++i) {
    known = await call(keyed, 'GET', `${base}?user_id=dan`, { key: sales });
    if (known.status !== 401) break;
    await new Promise((ok) => setTimeout(ok, 100));
  }
  assert.equal(known.status, 200, known.text);
  conforms(known);

  const refusedWithout = await call(keyed, 'POST', base, { body: { user_id: 'dan' } });
  failsWith(refusedWithout, 401, 'invalid_api_key');
  assert.equal(refusedWithout.headers.get('www-authenticate'), 'Bearer');
  const teams = await call(keyed, 'POST', base, { key: support, body: { user_id: 'dan', title: 'Support only' } });
  assert.equal(teams.status, 201, teams.text);
  conforms(teams);
  const teamPath = (rest = '') => `${base}/${JSON.parse(teams.text).id}${rest}`;
  const teamTurn = await call(keyed, 'POST', teamPath('/messages'), { key: support, body: { message: 'team secret' } });
  assert.equal(teamTurn.status, 200, teamTurn.text);
  conforms(teamTurn);
  const teamStream = await call(keyed, 'GET', teamPath('/stream?message=streamed%20secret'), { key: support });
  assert.equal(teamStream.status, 200, teamStream.text);
  conforms(teamStream);
  conforms(await call(keyed, 'GET', teamPath(), { key: support }));
  failsWith(await call(keyed, 'GET', teamPath(), { key: sales }), 404, 'conversation_not_found');
  failsWith(await call(keyed, 'POST', teamPath('/messages'), { key: sales, body: { message: 'let me in' } }), 404, 'conversation_not_found');
  failsWith(await call(keyed, 'GET', teamPath('/stream?message=x'), { key: sales }), 404, 'conversation_not_found');
  failsWith(await call(keyed, 'PATCH', teamPath(), { key: sales, body: { title: 'mine now' } }), 404, 'conversation_not_found');
  failsWith(await call(keyed, 'DELETE', teamPath(), { key: sales }), 404, 'conversation_not_found');
  assert.equal(JSON.parse((await call(keyed, 'GET', `${base}?user_id=dan`, { key: sales })).text).conversations.length, 0);
  assert.equal(JSON.parse((await call(keyed, 'GET', `${base}?user_id=dan`, { key: support })).text).conversations.length, 1);
  failsWith(await call(keyed, 'POST', teamPath('/messages'), { key: limitedModels, body: { message: 'hi' } }), 403, 'model_not_allowed');
  failsWith(await call(keyed, 'GET', teamPath('/stream?message=hi&model=echo-1'), { key: limitedModels }), 403, 'model_not_allowed');
  const once = await call(keyed, 'POST', teamPath('/messages'), { key: oneAMinute, body: { message: 'once' } });
  assert.equal(once.status, 200, once.text);
  const twice = await call(keyed, 'POST', teamPath('/stream'), { key: oneAMinute, body: { message: 'twice' } });
  assert.equal(twice.status, 429, twice.text);
  assert.ok(Number(twice.headers.get('retry-after')) >= 1);
  conforms(twice);
  const kept = JSON.parse((await call(keyed, 'GET', teamPath(), { key: support })).text);
  assert.equal(kept.title, 'Support only');
  assert.equal(kept.message_count, 6);

  // An upstream that cannot be reached: 502 for a whole turn, the stream's error event for a
  // streamed one, and nothing stored.
  const closed = createServer();
  await new Promise((ok) => closed.listen(0, '127.0.0.1', ok));
  const deadPort = closed.address().port;
  await new Promise((ok) => closed.close(ok));
  const unreachable = await startServer({ CHAT_DATABASE_URL: `sqlite:${join(dir, 'unreachable.db')}`, CHAT_PROVIDER: 'openai',
                                          CHAT_OPENAI_BASE_URL: `http://127.0.0.1:${deadPort}/v1`, CHAT_UPSTREAM_MAX_RETRIES: '0' });
  const lonely = JSON.parse((await call(unreachable, 'POST', base, { body: { user_id: 'erin' } })).text).id;
  const failed = await call(unreachable, 'POST', `${base}/${lonely}/messages`, { body: { message: 'hi' } });
  assert.equal(failed.status, 502, failed.text);
  conforms(failed);
  for (const [method, body, where] of [['GET', undefined, '/stream?message=hi'], ['POST', { message: 'hi' }, '/stream']]) {
    const streamed = await call(unreachable, method, `${base}/${lonely}${where}`, { body });
    assert.equal(streamed.status, 200, streamed.text);
    conforms(streamed);
    assert.ok(JSON.parse(streamed.events.at(-1).data).error, streamed.text);
  }
  const nothing = await call(unreachable, 'GET', `${base}/${lonely}`);
  conforms(nothing);
  assert.equal(JSON.parse(nothing.text).message_count, 0);
});

test('every GET route GET / lists answers the admin key as described', async () => {
  const routes = JSON.parse((await call(keyed, 'GET', '/', { key: adminKey })).text).routes;
  const gets = routes.filter((r) => r.startsWith('GET ') && !r.includes('{')).map((r) => r.slice(4));
  assert.ok(gets.length >= 15, gets.join(' '));
  const required = { '/api/v1/conversations': '?user_id=ada' }; // a route's required query parameters
  for (const path of gets) {
    const r = await call(keyed, 'GET', path + (required[path] ?? ''), { key: adminKey });
    assert.equal(r.status, 200, `${path}: ${r.text.slice(0, 300)}`);
    conforms(r);
  }
  conforms(await call(keyed, 'GET', '/history/ada', { key: adminKey }));
});
