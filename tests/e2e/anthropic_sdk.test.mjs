// The official `@anthropic-ai/sdk`, unchanged, against sample_server's POST /v1/messages, which
// translates to the OpenAI wire format of a fake OpenAI upstream: what Claude Code and other
// Anthropic clients see when a team points ANTHROPIC_BASE_URL at its gateway. The last tests go
// through the Anthropic, Gemini and Bedrock providers to their fakes instead.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import readline from 'node:readline';

let Anthropic;
try {
  ({ default: Anthropic } = await import('@anthropic-ai/sdk'));
} catch {
  throw new Error('the @anthropic-ai/sdk package is not installed: run `npm ci --prefix tests/e2e` (scripts/test does)');
}

const SAMPLE_SERVER = process.env.SAMPLE_SERVER;
const FAKE_OPENAI_SERVER = process.env.FAKE_OPENAI_SERVER;
const FAKE_PROVIDER_SERVER = process.env.FAKE_PROVIDER_SERVER;
assert.ok(SAMPLE_SERVER && FAKE_OPENAI_SERVER && FAKE_PROVIDER_SERVER,
  'SAMPLE_SERVER, FAKE_OPENAI_SERVER and FAKE_PROVIDER_SERVER must name the binaries');

const children = [];
const dir = mkdtempSync(join(tmpdir(), 'chatkit-anthropic-sdk-'));

// Starts a program and resolves with the first stdout line that `pick` accepts.
function start(cmd, env, pick, args = []) {
  const child = spawn(cmd, args, { env, stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(child);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cmd} did not start`)), 20000);
    child.on('exit', (code) => reject(new Error(`${cmd} exited with ${code}`)));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      let parsed;
      try { parsed = JSON.parse(line); } catch { return; }
      const value = pick(parsed);
      if (value !== undefined) { clearTimeout(timer); resolve(value); }
    });
  });
}

let upstream;
let client;

async function startServer(extraEnv, apiKey = 'client-key') {
  const env = {
    PATH: process.env.PATH,
    CHAT_PORT: '0',
    CHAT_DATABASE_URL: `sqlite:${join(dir, `chat-${children.length}.db`)}`,
    CHAT_RATE_LIMIT: 'off',
    CHAT_DRAIN_DELAY: '0',
    OPENAI_API_KEY: 'sk-sdk-test-key',
    OPENAI_BASE_URL: upstream,
    CHAT_MODEL: 'fake-1',
    ...extraEnv,
  };
  const port = await start(SAMPLE_SERVER, env, (j) => (j.msg === 'listening' ? j.port : undefined));
  return new Anthropic({ baseURL: `http://127.0.0.1:${port}`, apiKey, maxRetries: 0 });
}

before(async () => {
  const fakePort = await start(FAKE_OPENAI_SERVER, { PATH: process.env.PATH }, (j) => j.port);
  upstream = `http://127.0.0.1:${fakePort}/v1`;
  client = await startServer({});
});

after(() => {
  for (const child of children) child.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
});

const weather = {
  name: 'get_weather',
  description: 'The weather in a place',
  input_schema: { type: 'object', properties: { q: { type: 'string' } }, required: ['q'] },
};

test('messages.create answers with a text block, the stop reason and usage', async () => {
  const message = await client.messages.create({
    model: 'fake-1',
    max_tokens: 100,
    system: 'be brief',
    messages: [{ role: 'user', content: 'hello from the claude sdk' }],
  });
  assert.equal(message.type, 'message');
  assert.equal(message.role, 'assistant');
  assert.match(message.id, /^msg_/);
  assert.equal(message.model, 'fake-1');
  assert.deepEqual(message.content, [{ type: 'text', text: 'echo: hello from the claude sdk' }]);
  assert.equal(message.stop_reason, 'end_turn');
  assert.equal(message.usage.input_tokens, 5);
  assert.equal(message.usage.output_tokens, 6);
  assert.equal(message.usage.cache_read_input_tokens, 0);
});

test('messages.stream delivers the text as it comes and a final message with usage', async () => {
  const stream = client.messages.stream({
    model: 'fake-1',
    max_tokens: 100,
    messages: [{ role: 'user', content: [{ type: 'text', text: 'stream me please' }] }],
  });
  const pieces = [];
  stream.on('text', (text) => pieces.push(text));
  const message = await stream.finalMessage();
  assert.ok(pieces.length >= 4, `expected one text event per word, got ${pieces.length}`);
  assert.equal(pieces.join(''), 'echo: stream me please');
  assert.equal(message.content.length, 1);
  assert.equal(message.content[0].type, 'text');
  assert.equal(message.content[0].text, 'echo: stream me please');
  assert.equal(message.stop_reason, 'end_turn');
  assert.equal(message.usage.output_tokens, 4);
});

test('a raw stream is the Messages event sequence', async () => {
  const stream = await client.messages.create({
    model: 'fake-1',
    max_tokens: 100,
    messages: [{ role: 'user', content: 'two words' }],
    stream: true,
  });
  const types = [];
  for await (const event of stream) types.push(event.type);
  const deltas = types.filter((t) => t === 'content_block_delta').length;
  // The SDK passes every event on but `ping`.
  assert.deepEqual(types, ['message_start', 'content_block_start', ...Array(deltas).fill('content_block_delta'),
    'content_block_stop', 'message_delta', 'message_stop']);
  assert.ok(deltas >= 3);
});

test('a tool call comes back as tool_use, and the tool result goes back upstream', async () => {
  const first = await client.messages.create({
    model: 'fake-1',
    max_tokens: 100,
    tools: [weather],
    messages: [{ role: 'user', content: 'weather in Paris?' }],
  });
  assert.equal(first.stop_reason, 'tool_use');
  assert.equal(first.content.length, 1);
  const [use] = first.content;
  assert.equal(use.type, 'tool_use');
  assert.equal(use.name, 'get_weather');
  assert.deepEqual(use.input, { q: 'weather in Paris?' });

  const second = await client.messages.create({
    model: 'fake-1',
    max_tokens: 100,
    tools: [weather],
    messages: [
      { role: 'user', content: 'weather in Paris?' },
      { role: 'assistant', content: first.content },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: 'sunny' }] },
    ],
  });
  assert.equal(second.stop_reason, 'end_turn');
  assert.equal(second.content[0].text, 'tool said: sunny');
});

test('a streamed tool call arrives as a tool_use block whose input the SDK assembles from fragments as they come', async () => {
  const stream = client.messages.stream({
    model: 'fake-1',
    max_tokens: 100,
    tools: [weather],
    tool_choice: { type: 'any' },
    messages: [{ role: 'user', content: 'rain in Oslo?' }],
  });
  // the upstream (the OpenAI fake) sends the arguments in two fragments: each is passed on
  const fragments = [];
  stream.on('inputJson', (partial) => fragments.push(partial));
  const message = await stream.finalMessage();
  assert.ok(fragments.length >= 2, `fragments: ${JSON.stringify(fragments)}`);
  assert.deepEqual(JSON.parse(fragments.join('')), { q: 'rain in Oslo?' });
  assert.equal(message.stop_reason, 'tool_use');
  const uses = message.content.filter((b) => b.type === 'tool_use');
  assert.equal(uses.length, 1);
  assert.equal(uses[0].name, 'get_weather');
  assert.deepEqual(uses[0].input, { q: 'rain in Oslo?' });
});

test('a bad request is BadRequestError with Anthropic\'s error type and the field named', async () => {
  await assert.rejects(
    client.messages.create({ model: 'fake-1', max_tokens: 100, temperature: 3, messages: [{ role: 'user', content: 'x' }] }),
    (err) => err instanceof Anthropic.BadRequestError && err.status === 400 &&
      err.error?.type === 'error' && err.error?.error?.type === 'invalid_request_error' && /temperature/.test(err.message),
  );
  await assert.rejects(
    client.messages.create({ model: 'fake-1', max_tokens: 100, thinking: { type: 'enabled', budget_tokens: 1024 },
      messages: [{ role: 'user', content: 'x' }] }),
    (err) => err instanceof Anthropic.BadRequestError && /thinking/.test(err.message),
  );
});

test('a rate-limited client gets RateLimitError', async () => {
  const limited = await startServer({ CHAT_RATE_LIMIT: '1/minute' });
  const ask = { model: 'fake-1', max_tokens: 10, messages: [{ role: 'user', content: 'first' }] };
  await limited.messages.create(ask);
  await assert.rejects(limited.messages.create(ask),
    (err) => err instanceof Anthropic.RateLimitError && err.status === 429 && err.error?.error?.type === 'rate_limit_error');
});

test('with CHAT_AUTH=keys, a ck- key works as the x-api-key the SDK sends, and a wrong one is AuthenticationError', async () => {
  const database = `sqlite:${join(dir, 'keys.db')}`;
  const cli = (...args) => execFileSync(SAMPLE_SERVER, args, { env: { PATH: process.env.PATH, CHAT_DATABASE_URL: database } }).toString();
  cli('teams', 'create', '--id', 'claude-team');
  const created = JSON.parse(cli('keys', 'create', '--team', 'claude-team', '--name', 'claude'));
  const authed = await startServer({ CHAT_AUTH: 'keys', CHAT_DATABASE_URL: database }, created.key);
  const message = await authed.messages.create({ model: 'fake-1', max_tokens: 10, messages: [{ role: 'user', content: 'with a key' }] });
  assert.equal(message.content[0].text, 'echo: with a key');

  const wrong = new Anthropic({ baseURL: authed.baseURL, apiKey: `ck-${'x'.repeat(43)}`, maxRetries: 0 });
  await assert.rejects(wrong.messages.create({ model: 'fake-1', max_tokens: 10, messages: [{ role: 'user', content: 'no' }] }),
    (err) => err instanceof Anthropic.AuthenticationError && err.status === 401 && err.error?.error?.type === 'authentication_error');
});

const fakeBedrock = fileURLToPath(new URL('../support/fake_bedrock.py', import.meta.url));

// The same client through sample_server to the other providers, each behind a fake speaking its
// exact wire format: text whole and streamed, and a streamed tool call with its result sent back.
for (const [kind, env] of [
  ['anthropic', (url) => ({ CHAT_PROVIDER: 'anthropic', ANTHROPIC_API_KEY: 'sk-ant-e2e', ANTHROPIC_BASE_URL: url, CHAT_MODEL: 'claude-fake' })],
  ['gemini', (url) => ({ CHAT_PROVIDER: 'gemini', GEMINI_API_KEY: 'AIza-e2e', CHAT_GEMINI_BASE_URL: url, CHAT_MODEL: 'gemini-fake' })],
  ['bedrock', (url) => ({ CHAT_PROVIDER: 'bedrock', AWS_ACCESS_KEY_ID: 'AKIAE2ETEST', AWS_SECRET_ACCESS_KEY: 'e2e-secret', AWS_REGION: 'us-west-2',
    AWS_ENDPOINT_URL_BEDROCK_RUNTIME: url, CHAT_MODEL: 'nova-lite' })],
]) {
  test(`through the ${kind} provider: text whole and streamed, and a streamed tool call round trip`, async () => {
    // Bedrock's fake is botocore's, checking every signature; the others are C++ fakes.
    const fakePort = kind === 'bedrock'
      ? await start('python3', { PATH: process.env.PATH }, (j) => j.port, [fakeBedrock, 'AKIAE2ETEST=e2e-secret'])
      : await start(FAKE_PROVIDER_SERVER, { PATH: process.env.PATH, FAKE_PROVIDER: kind }, (j) => j.port);
    const via = await startServer({ ...env(`http://127.0.0.1:${fakePort}`) });
    const model = { anthropic: 'claude-fake', gemini: 'gemini-fake', bedrock: 'nova-lite' }[kind];

    const message = await via.messages.create({ model, max_tokens: 100, messages: [{ role: 'user', content: 'hello there' }] });
    assert.deepEqual(message.content, [{ type: 'text', text: 'echo: hello there' }]);
    assert.equal(message.stop_reason, 'end_turn');
    assert.ok(message.usage.input_tokens > 0 && message.usage.output_tokens > 0);

    const texts = [];
    const stream = via.messages.stream({ model, max_tokens: 100, messages: [{ role: 'user', content: 'stream it please' }] });
    stream.on('text', (t) => texts.push(t));
    const streamed = await stream.finalMessage();
    assert.ok(texts.length > 1, `text deltas: ${JSON.stringify(texts)}`);
    assert.equal(texts.join(''), 'echo: stream it please');
    assert.ok(streamed.usage.output_tokens > 0);

    const ask = { model, max_tokens: 100, tools: [weather], messages: [{ role: 'user', content: 'rain in Oslo?' }] };
    const fragments = [];
    const toolStream = via.messages.stream(ask);
    toolStream.on('inputJson', (partial) => fragments.push(partial));
    const called = await toolStream.finalMessage();
    assert.equal(called.stop_reason, 'tool_use');
    const use = called.content.find((b) => b.type === 'tool_use');
    assert.equal(use.name, 'get_weather');
    assert.deepEqual(use.input, { q: 'rain in Oslo?' });
    assert.deepEqual(JSON.parse(fragments.join('')), { q: 'rain in Oslo?' });
    const answered = await via.messages.create({
      ...ask,
      messages: [...ask.messages, { role: 'assistant', content: called.content },
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: 'sunny' }] }],
    });
    assert.equal(answered.content[0].text, 'tool said: sunny');
  });
}
