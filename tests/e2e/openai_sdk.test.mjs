// The official `openai` SDK, unchanged, against sample_server's OpenAI-compatible endpoints (Chat
// Completions and Responses), which relay to a fake OpenAI upstream speaking the exact wire format,
// and Responses through the Anthropic, Gemini and Bedrock providers to their fakes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import readline from 'node:readline';

let OpenAI;
try {
  ({ default: OpenAI } = await import('openai'));
} catch {
  throw new Error('the openai SDK is not installed: run `npm ci --prefix tests/e2e` (scripts/test does)');
}

const SAMPLE_SERVER = process.env.SAMPLE_SERVER;
const FAKE_OPENAI_SERVER = process.env.FAKE_OPENAI_SERVER;
const FAKE_PROVIDER_SERVER = process.env.FAKE_PROVIDER_SERVER;
assert.ok(SAMPLE_SERVER && FAKE_OPENAI_SERVER && FAKE_PROVIDER_SERVER,
  'SAMPLE_SERVER, FAKE_OPENAI_SERVER and FAKE_PROVIDER_SERVER must name the binaries');

const children = [];
const dir = mkdtempSync(join(tmpdir(), 'chatkit-sdk-'));

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
  return new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey, maxRetries: 0 });
}

let upstream;
let client;

before(async () => {
  const fakePort = await start(FAKE_OPENAI_SERVER, { PATH: process.env.PATH }, (j) => j.port);
  upstream = `http://127.0.0.1:${fakePort}/v1`;
  client = await startServer({});
});

after(() => {
  for (const child of children) child.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
});

test('a non-streamed completion has the content and usage', async () => {
  const completion = await client.chat.completions.create({
    model: 'fake-1',
    messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'hello from the sdk' }],
  });
  assert.equal(completion.object, 'chat.completion');
  assert.equal(completion.choices[0].message.role, 'assistant');
  assert.equal(completion.choices[0].message.content, 'echo: hello from the sdk');
  assert.equal(completion.choices[0].finish_reason, 'stop');
  assert.deepEqual(completion.usage, { prompt_tokens: 4, completion_tokens: 5, total_tokens: 9 });
});

test('a streamed completion arrives in chunks, with the usage chunk when asked', async () => {
  const stream = await client.chat.completions.create({
    model: 'fake-1',
    messages: [{ role: 'user', content: 'stream me please' }],
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let chunks = 0;
  let usage;
  let finish;
  for await (const chunk of stream) {
    chunks += 1;
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    const choice = chunk.choices[0];
    if (choice?.delta?.content) text += choice.delta.content;
    if (choice?.finish_reason) finish = choice.finish_reason;
  }
  assert.equal(text, 'echo: stream me please');
  assert.ok(chunks >= 5, `expected one chunk per word, got ${chunks}`);
  assert.equal(finish, 'stop');
  assert.deepEqual(usage, { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 });
});

test('a bad request surfaces as BadRequestError with the message', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'fake-1', messages: [{ role: 'user', content: 'x' }], temperature: 7 }),
    (err) => err instanceof OpenAI.BadRequestError && err.status === 400 && /temperature/.test(err.message),
  );
});

test('a rate-limited client gets RateLimitError', async () => {
  const limited = await startServer({ CHAT_RATE_LIMIT: '1/minute' });
  await limited.chat.completions.create({ model: 'fake-1', messages: [{ role: 'user', content: 'first' }] });
  await assert.rejects(
    limited.chat.completions.create({ model: 'fake-1', messages: [{ role: 'user', content: 'second' }] }),
    (err) => err instanceof OpenAI.RateLimitError && err.status === 429,
  );
});

test('models.list() shows the configured model', async () => {
  const ids = [];
  for await (const model of client.models.list()) ids.push(model.id);
  assert.deepEqual(ids, ['fake-1']);
});

test('with CHAT_AUTH=keys, a ck- key made by `sample_server keys create` works, and a wrong one is AuthenticationError', async () => {
  const database = `sqlite:${join(dir, 'keys.db')}`;
  const cli = (...args) => execFileSync(SAMPLE_SERVER, args, { env: { PATH: process.env.PATH, CHAT_DATABASE_URL: database } }).toString();
  cli('teams', 'create', '--id', 'sdk-team');
  const created = JSON.parse(cli('keys', 'create', '--team', 'sdk-team', '--name', 'sdk'));
  assert.match(created.key, /^ck-[0-9A-Za-z]{43}$/);

  const authed = await startServer({ CHAT_AUTH: 'keys', CHAT_DATABASE_URL: database }, created.key);
  const completion = await authed.chat.completions.create({
    model: 'fake-1',
    messages: [{ role: 'user', content: 'hello with a key' }],
  });
  assert.equal(completion.choices[0].message.content, 'echo: hello with a key');

  const wrong = new OpenAI({ baseURL: authed.baseURL, apiKey: `ck-${'x'.repeat(43)}`, maxRetries: 0 });
  await assert.rejects(
    wrong.chat.completions.create({ model: 'fake-1', messages: [{ role: 'user', content: 'no' }] }),
    (err) => err instanceof OpenAI.AuthenticationError && err.status === 401 && err.code === 'invalid_api_key',
  );
});

test('a team budget that fits 10 worst cases: 50 concurrent SDK streams get 10 answers and 40 RateLimitError insufficient_quota, billed as /v1/usage reports', async () => {
  const database = `sqlite:${join(dir, 'budget.db')}`;
  const cli = (...args) => execFileSync(SAMPLE_SERVER, args, { env: { PATH: process.env.PATH, CHAT_DATABASE_URL: database } }).toString();
  // $1 per 1,000 tokens, in and out.
  const pricing = join(dir, 'prices.json');
  writeFileSync(pricing, JSON.stringify({ models: { 'echo-1': { input: 1000, output: 1000 } } }));
  const params = {
    model: 'echo-1',
    messages: [{ role: 'user', content: 'one two three' }],
    max_tokens: 100,
    stream: true,
    stream_options: { include_usage: true },
  };

  // What one such request reserves, read from a probe key's token headers: its limit minus what
  // is left right after the reservation (a new bucket starts full).
  cli('teams', 'create', '--id', 'probe');
  const probeKey = JSON.parse(cli('keys', 'create', '--team', 'probe', '--tpm', '1000000')).key;
  const env = { CHAT_AUTH: 'keys', CHAT_DATABASE_URL: database, CHAT_PROVIDER: 'echo', CHAT_MODEL: '',
                CHAT_PRICING_FILE: pricing, CHAT_ECHO_DELAY_MS: '400' };
  const probe = await startServer(env, probeKey);
  const { response: probed, data: probeStream } = await probe.chat.completions.create(params).withResponse();
  for await (const chunk of probeStream) void chunk;
  const reservation = 1000000 - Number(probed.headers.get('x-ratelimit-remaining-tokens'));
  assert.ok(reservation > 100 && reservation < 1000, `reservation ${reservation}`);

  cli('teams', 'create', '--id', 'budgeted', '--budget-usd', (10.5 * reservation / 1000).toFixed(6), '--budget-period', 'day');
  const key = JSON.parse(cli('keys', 'create', '--team', 'budgeted')).key;
  const client = new OpenAI({ baseURL: probe.baseURL, apiKey: key, maxRetries: 0 });
  // The running server reads new keys every 2 s: wait until it knows this one (listing models costs nothing).
  for (let i = 0; ; i += 1) {
    if ((await fetch(`${probe.baseURL}/models`, { headers: { 'x-api-key': key } })).status === 200) break;
    assert.ok(i < 100, 'the new key was not accepted within 5 s');
    await new Promise((r) => setTimeout(r, 50));
  }
  const outcomes = await Promise.all(Array.from({ length: 50 }, async () => {
    try {
      const stream = await client.chat.completions.create(params);
      let last;
      for await (const chunk of stream) last = chunk;
      return { ok: true, last };
    } catch (err) {
      return { ok: false, err };
    }
  }));
  const answers = outcomes.filter((o) => o.ok);
  const refused = outcomes.filter((o) => !o.ok);
  assert.equal(answers.length, 10, String(refused[0]?.err));
  assert.equal(refused.length, 40);
  for (const { err } of refused) {
    assert.ok(err instanceof OpenAI.RateLimitError, String(err));
    assert.equal(err.code, 'insufficient_quota');
  }

  // Each answer's cost is its usage at the price; the team's usage report adds up to them.
  let billed = 0;
  for (const { last } of answers) {
    const { prompt_tokens, completion_tokens } = last.usage;
    assert.equal(last.gateway_metadata.team_id, 'budgeted');
    assert.ok(Math.abs(last.gateway_metadata.cost_usd - (prompt_tokens + completion_tokens) / 1000) < 1e-12);
    billed += last.gateway_metadata.cost_usd;
  }
  let usage;
  for (let i = 0; i < 100; i += 1) {
    usage = await (await fetch(`${probe.baseURL}/usage?days=1`, { headers: { 'x-api-key': key } })).json();
    if (usage.summary.total_requests === 50) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(usage.team_id, 'budgeted');
  assert.equal(usage.summary.total_requests, 50); // the refused ones are recorded too, at no cost
  assert.ok(Math.abs(usage.summary.total_cost_usd - billed) < 1e-9, `${usage.summary.total_cost_usd} vs ${billed}`);
});

// The Responses API (what Codex speaks) on POST /v1/responses, translated to the same upstream.
const weather = {
  type: 'function',
  name: 'get_weather',
  description: 'The weather in a place',
  parameters: { type: 'object', properties: { q: { type: 'string' } }, required: ['q'] },
};

test('responses.create answers with output_text, the instructions applied, and usage', async () => {
  const response = await client.responses.create({ model: 'fake-1', instructions: 'be brief', input: 'hello from responses' });
  assert.equal(response.object, 'response');
  assert.match(response.id, /^resp_/);
  assert.equal(response.status, 'completed');
  assert.equal(response.instructions, 'be brief');
  assert.equal(response.output_text, 'echo: hello from responses');
  assert.equal(response.output[0].type, 'message');
  assert.equal(response.usage.input_tokens, 3);
  assert.equal(response.usage.output_tokens, 4);
  assert.equal(response.usage.total_tokens, 7);
});

test('responses.stream delivers output_text deltas and a final response', async () => {
  const stream = client.responses.stream({
    model: 'fake-1',
    input: [{ role: 'user', content: [{ type: 'input_text', text: 'stream these words please' }] }],
  });
  const deltas = [];
  stream.on('response.output_text.delta', (event) => deltas.push(event.delta));
  const response = await stream.finalResponse();
  assert.ok(deltas.length >= 5, `expected one delta per word, got ${deltas.length}`);
  assert.equal(deltas.join(''), 'echo: stream these words please');
  assert.equal(response.status, 'completed');
  assert.equal(response.output_text, 'echo: stream these words please');
  assert.equal(response.usage.output_tokens, 5);
});

test('a function call comes back as a function_call item, and its output goes back upstream', async () => {
  const first = await client.responses.create({ model: 'fake-1', tools: [weather], input: 'weather in Paris?' });
  assert.equal(first.output.length, 1);
  const [call] = first.output;
  assert.equal(call.type, 'function_call');
  assert.equal(call.name, 'get_weather');
  assert.deepEqual(JSON.parse(call.arguments), { q: 'weather in Paris?' });

  const second = await client.responses.create({
    model: 'fake-1',
    tools: [weather],
    input: [{ role: 'user', content: 'weather in Paris?' }, ...first.output, { type: 'function_call_output', call_id: call.call_id, output: 'sunny' }],
  });
  assert.equal(second.output_text, 'tool said: sunny');
});

test('a streamed function call arrives in argument deltas as the upstream sends them, whole in the final response', async () => {
  const stream = client.responses.stream({ model: 'fake-1', tools: [weather], tool_choice: 'required', input: 'rain in Oslo?' });
  const deltas = [];
  stream.on('response.function_call_arguments.delta', (event) => deltas.push(event.delta));
  const response = await stream.finalResponse();
  assert.ok(deltas.length >= 2, `deltas: ${JSON.stringify(deltas)}`); // the fake sends the arguments in two fragments
  assert.deepEqual(JSON.parse(deltas.join('')), { q: 'rain in Oslo?' });
  const calls = response.output.filter((item) => item.type === 'function_call');
  assert.equal(calls.length, 1);
  assert.deepEqual(JSON.parse(calls[0].arguments), { q: 'rain in Oslo?' });
});

test('what /v1/responses cannot honour is BadRequestError naming the field', async () => {
  for (const [extra, param] of [[{ store: true }, 'store'], [{ previous_response_id: 'resp_1' }, 'previous_response_id'],
    [{ tools: [{ type: 'web_search' }] }, 'tools[0].type']]) {
    await assert.rejects(
      client.responses.create({ model: 'fake-1', input: 'x', ...extra }),
      (err) => err instanceof OpenAI.BadRequestError && err.status === 400 && err.param === param,
    );
  }
});

test('a streamed tool call is assembled by the SDK\'s stream helper', async () => {
  const stream = client.chat.completions.stream({
    model: 'fake-1',
    messages: [{ role: 'user', content: 'weather in Kyiv?' }],
    tools: [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object' } } }],
  });
  const fragments = [];
  stream.on('tool_calls.function.arguments.delta', (event) => fragments.push(event.arguments_delta));
  const completion = await stream.finalChatCompletion();
  assert.ok(fragments.length >= 2, `fragments: ${JSON.stringify(fragments)}`); // passed on as the upstream sent them
  const choice = completion.choices[0];
  assert.equal(choice.finish_reason, 'tool_calls');
  assert.equal(choice.message.tool_calls.length, 1);
  assert.equal(choice.message.tool_calls[0].function.name, 'get_weather');
  assert.deepEqual(JSON.parse(choice.message.tool_calls[0].function.arguments), { q: 'weather in Kyiv?' });
});

test('what Codex sends with a reasoning model is answered: reasoning summary, encrypted reasoning, store false, a cache key', async () => {
  const response = await client.responses.create({
    model: 'fake-1',
    instructions: 'You are a coding agent.',
    input: [{ type: 'message', role: 'user', content: [{ type: 'input_text', text: 'fix the build' }] }],
    tools: [weather],
    tool_choice: 'auto',
    parallel_tool_calls: false,
    reasoning: { effort: 'low', summary: 'auto' },
    store: false,
    include: ['reasoning.encrypted_content'],
    prompt_cache_key: 'session-1',
  });
  assert.equal(response.status, 'completed');
  assert.equal(response.output[0].type, 'function_call');
  assert.ok(response.output.every((item) => item.type !== 'reasoning'));
});

const fakeBedrock = fileURLToPath(new URL('../support/fake_bedrock.py', import.meta.url));

// responses through sample_server to the other providers, each behind a fake speaking its exact
// wire format: text whole and streamed, and a streamed function call with its output sent back.
for (const [kind, env] of [
  ['anthropic', (url) => ({ CHAT_PROVIDER: 'anthropic', ANTHROPIC_API_KEY: 'sk-ant-e2e', ANTHROPIC_BASE_URL: url, CHAT_MODEL: 'claude-fake' })],
  ['gemini', (url) => ({ CHAT_PROVIDER: 'gemini', GEMINI_API_KEY: 'AIza-e2e', CHAT_GEMINI_BASE_URL: url, CHAT_MODEL: 'gemini-fake' })],
  ['bedrock', (url) => ({ CHAT_PROVIDER: 'bedrock', AWS_ACCESS_KEY_ID: 'AKIAE2ETEST', AWS_SECRET_ACCESS_KEY: 'e2e-secret', AWS_REGION: 'us-west-2',
    AWS_ENDPOINT_URL_BEDROCK_RUNTIME: url, CHAT_MODEL: 'nova-lite' })],
]) {
  test(`responses through the ${kind} provider: text whole and streamed, and a streamed function call round trip`, async () => {
    // Bedrock's fake is botocore's, checking every signature; the others are C++ fakes.
    const fakePort = kind === 'bedrock'
      ? await start('python3', { PATH: process.env.PATH }, (j) => j.port, [fakeBedrock, 'AKIAE2ETEST=e2e-secret'])
      : await start(FAKE_PROVIDER_SERVER, { PATH: process.env.PATH, FAKE_PROVIDER: kind }, (j) => j.port);
    const via = await startServer(env(`http://127.0.0.1:${fakePort}`));
    const model = { anthropic: 'claude-fake', gemini: 'gemini-fake', bedrock: 'nova-lite' }[kind];

    const whole = await via.responses.create({ model, instructions: 'be brief', input: 'hello there' });
    assert.equal(whole.status, 'completed');
    assert.equal(whole.output_text, 'echo: hello there');
    assert.ok(whole.usage.input_tokens > 0 && whole.usage.output_tokens > 0);

    const deltas = [];
    const stream = via.responses.stream({ model, input: 'stream it please' });
    stream.on('response.output_text.delta', (event) => deltas.push(event.delta));
    const streamed = await stream.finalResponse();
    assert.ok(deltas.length > 1, `text deltas: ${JSON.stringify(deltas)}`);
    assert.equal(streamed.output_text, 'echo: stream it please');

    const argumentDeltas = [];
    const toolStream = via.responses.stream({ model, tools: [weather], input: 'rain in Oslo?' });
    toolStream.on('response.function_call_arguments.delta', (event) => argumentDeltas.push(event.delta));
    const called = await toolStream.finalResponse();
    const call = called.output.find((item) => item.type === 'function_call');
    assert.equal(call.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.arguments), { q: 'rain in Oslo?' });
    assert.equal(argumentDeltas.join(''), call.arguments);
    const answered = await via.responses.create({
      model,
      tools: [weather],
      input: [{ role: 'user', content: 'rain in Oslo?' }, { type: 'function_call', call_id: call.call_id, name: call.name, arguments: call.arguments },
        { type: 'function_call_output', call_id: call.call_id, output: 'sunny' }],
    });
    assert.equal(answered.output_text, 'tool said: sunny');
  });
}
