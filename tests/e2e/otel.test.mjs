// Traces from the real sample_server, exported over OTLP/HTTP in both encodings to a receiver
// here, which decodes protobuf with OpenTelemetry's own generated code (from the official
// .proto files, in @opentelemetry/otlp-transformer) and JSON with JSON.parse. A fake OpenAI
// upstream speaking the exact wire format records the traceparent it was sent.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import readline from 'node:readline';

const require = createRequire(import.meta.url);
let root;
try {
  // Not the package's public entry point: its generated protobuf module, which has the decoder.
  root = require('@opentelemetry/otlp-transformer/build/src/generated/root.js');
} catch {
  throw new Error('@opentelemetry/otlp-transformer is not installed: run `npm ci --prefix tests/e2e` (scripts/test does)');
}
const ExportTraceServiceRequest = root.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest;

const SAMPLE_SERVER = process.env.SAMPLE_SERVER;
assert.ok(SAMPLE_SERVER, 'SAMPLE_SERVER must name the binary');
const dir = mkdtempSync(join(tmpdir(), 'chatkit-otel-'));
const children = [];
const servers = [];
after(() => {
  for (const child of children) child.kill('SIGTERM');
  for (const s of servers) s.close();
  rmSync(dir, { recursive: true, force: true });
});

function listen(handler) {
  const server = createServer(handler);
  servers.push(server);
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
}

function body(req) {
  return new Promise((resolve) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
  });
}

// The OpenAI Chat Completions API as api.openai.com speaks it: JSON, or SSE chunks ending with a
// usage chunk and [DONE] when stream_options.include_usage is set (chatkit always sets it).
const upstreamSeen = [];
const upstreamPort = await listen(async (req, res) => {
  const request = JSON.parse((await body(req)).toString());
  upstreamSeen.push({ traceparent: req.headers.traceparent, stream: !!request.stream });
  const usage = { prompt_tokens: 11, completion_tokens: 2, total_tokens: 13 };
  if (!request.stream) {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({
      id: 'chatcmpl-up1', object: 'chat.completion', created: 1, model: 'fake-model-2024',
      choices: [{ index: 0, message: { role: 'assistant', content: 'hi there' }, finish_reason: 'length' }],
      usage,
    }));
    return;
  }
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  const chunk = (choices, extra = {}) => `data: ${JSON.stringify({ id: 'chatcmpl-up2', object: 'chat.completion.chunk', created: 1, model: 'fake-model-2024', choices, ...extra })}\n\n`;
  res.write(chunk([{ index: 0, delta: { role: 'assistant', content: 'hi ' }, finish_reason: null }]));
  res.write(chunk([{ index: 0, delta: { content: 'there' }, finish_reason: null }]));
  res.write(chunk([{ index: 0, delta: {}, finish_reason: 'stop' }]));
  res.write(chunk([], { usage }));
  res.end('data: [DONE]\n\n');
});

// The collector: every export's decoded spans, with the resource they came with.
const exports = [];
const collectorPort = await listen(async (req, res) => {
  const raw = await body(req);
  const type = req.headers['content-type'];
  let decoded;
  if (type === 'application/x-protobuf') {
    decoded = ExportTraceServiceRequest.toObject(ExportTraceServiceRequest.decode(raw), { longs: String, bytes: String, enums: Number });
    // protobufjs writes bytes as base64: ids to hex, as OTLP/JSON writes them.
    for (const rs of decoded.resourceSpans ?? [])
      for (const ss of rs.scopeSpans ?? [])
        for (const s of ss.spans ?? [])
          for (const f of ['traceId', 'spanId', 'parentSpanId']) if (s[f]) s[f] = Buffer.from(s[f], 'base64').toString('hex');
  } else {
    assert.equal(type, 'application/json');
    decoded = JSON.parse(raw.toString());
  }
  exports.push({ type, auth: req.headers['x-collector-key'], decoded });
  res.writeHead(200, { 'content-type': type });
  res.end(type === 'application/json' ? '{}' : Buffer.alloc(0));
});

function startServer(protocol) {
  const env = {
    PATH: process.env.PATH,
    CHAT_PORT: '0',
    CHAT_DATABASE_URL: `sqlite:${join(dir, `chat-${children.length}.db`)}`,
    CHAT_RATE_LIMIT: 'off',
    CHAT_DRAIN_DELAY: '0',
    CHAT_CACHE_SIZE: '0',
    CHAT_PROVIDER: 'openai',
    OPENAI_API_KEY: 'sk-otel-test-key',
    CHAT_OPENAI_BASE_URL: `http://127.0.0.1:${upstreamPort}/v1`,
    OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${collectorPort}`,
    OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
    OTEL_EXPORTER_OTLP_HEADERS: 'x-collector-key=collector%20secret',
    OTEL_SERVICE_NAME: 'gateway-under-test',
    OTEL_BSP_SCHEDULE_DELAY: '100',
  };
  const child = spawn(SAMPLE_SERVER, [], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('sample_server did not start')), 20000);
    child.on('exit', (code) => reject(new Error(`sample_server exited with ${code}`)));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      let j;
      try { j = JSON.parse(line); } catch { return; }
      if (j.msg === 'listening') { clearTimeout(timer); resolve(j.port); }
    });
  });
}

const spansOf = (e) => e.decoded.resourceSpans.flatMap((rs) => rs.scopeSpans.flatMap((ss) => ss.spans.map((s) => ({ ...s, resource: rs.resource }))));
const attrs = (span) => Object.fromEntries((span.attributes ?? []).map((a) => [a.key, a.value]));
const intOf = (v) => Number(v.intValue);

// Waits for the spans of `traceId` (the exporter sends every 100 ms here).
async function spansOfTrace(traceId, count) {
  for (let i = 0; i < 200; ++i) {
    const found = exports.flatMap(spansOf).filter((s) => s.traceId === traceId);
    if (found.length >= count) return found;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`the spans of trace ${traceId} never arrived`);
}

for (const protocol of ['http/protobuf', 'http/json']) {
  test(`${protocol}: a chat's server and upstream spans, linked to the client's trace and the upstream's traceparent`, async () => {
    const port = await startServer(protocol);
    const traceId = [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, '0')).join('');
    const parentId = 'b7ad6b7169203331';
    for (const stream of [false, true]) {
      upstreamSeen.length = 0;
      const res = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', traceparent: `00-${traceId}-${parentId}-01` },
        body: JSON.stringify({ model: 'fake-model', max_tokens: 40, stream, messages: [{ role: 'user', content: 'private words' }] }),
      });
      assert.equal(res.status, 200);
      const text = await res.text();
      assert.match(text, stream ? /hi / : /hi there/);
      assert.equal(upstreamSeen.length, 1);
    }
    const spans = await spansOfTrace(traceId, 4);
    assert.equal(spans.length, 4, 'two requests, two spans each');
    const servers = spans.filter((s) => s.kind === 2);
    const clients = spans.filter((s) => s.kind === 3);
    assert.equal(servers.length, 2);
    assert.equal(clients.length, 2);
    for (const server of servers) {
      assert.equal(server.name, 'POST /v1/chat/completions');
      assert.equal(server.parentSpanId, parentId, 'the client\'s span is the server span\'s parent');
      const a = attrs(server);
      assert.equal(a['http.request.method'].stringValue, 'POST');
      assert.equal(a['http.route'].stringValue, '/v1/chat/completions');
      assert.equal(intOf(a['http.response.status_code']), 200);
      const resource = Object.fromEntries(server.resource.attributes.map((x) => [x.key, x.value.stringValue]));
      assert.equal(resource['service.name'], 'gateway-under-test');
    }
    for (const client of clients) {
      const parent = servers.find((s) => s.spanId === client.parentSpanId);
      assert.ok(parent, 'an upstream span is the child of a server span');
      assert.ok(BigInt(client.startTimeUnixNano) >= BigInt(parent.startTimeUnixNano));
      assert.ok(BigInt(client.endTimeUnixNano) <= BigInt(parent.endTimeUnixNano));
      assert.equal(client.name, 'chat fake-model');
      const a = attrs(client);
      assert.equal(a['gen_ai.operation.name'].stringValue, 'chat');
      assert.equal(a['gen_ai.provider.name'].stringValue, 'openai');
      assert.equal(a['gen_ai.request.model'].stringValue, 'fake-model');
      assert.equal(a['gen_ai.response.model'].stringValue, 'fake-model-2024');
      assert.equal(intOf(a['gen_ai.request.max_tokens']), 40);
      assert.equal(intOf(a['gen_ai.usage.input_tokens']), 11);
      assert.equal(intOf(a['gen_ai.usage.output_tokens']), 2);
      const reasons = a['gen_ai.response.finish_reasons'].arrayValue.values.map((v) => v.stringValue);
      assert.ok(['length', 'stop'].includes(reasons[0]));
    }
    // What the upstream was sent: the trace, with the upstream span as its parent.
    const upstreamParents = new Set(clients.map((c) => `00-${traceId}-${c.spanId}-01`));
    const ours = exports.filter((e) => spansOf(e).some((s) => s.traceId === traceId));
    assert.ok(ours.every((e) => e.type === (protocol === 'http/json' ? 'application/json' : 'application/x-protobuf')));
    assert.ok(ours.every((e) => e.auth === 'collector secret'), 'OTEL_EXPORTER_OTLP_HEADERS are sent, percent-decoded');
    assert.equal(upstreamSeen.length, 1);
    assert.ok(upstreamParents.has(upstreamSeen[0].traceparent), `upstream got ${upstreamSeen[0].traceparent}`);
    // A route sample_server adds is named in its span, as the service's own are.
    const docsTrace = [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, '0')).join('');
    const docs = await fetch(`http://127.0.0.1:${port}/openapi.json`, { headers: { traceparent: `00-${docsTrace}-${parentId}-01` } });
    assert.equal(docs.status, 200);
    await docs.arrayBuffer();
    const [docsSpan] = await spansOfTrace(docsTrace, 1);
    assert.equal(docsSpan.name, 'GET /openapi.json');
    // Never the content.
    assert.ok(!JSON.stringify(ours.map((e) => e.decoded)).includes('private words'));
    // The exporter's counts are in /metrics: every span that reached the collector, none lost.
    const scrape = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const exported = Number(/^chatkit_trace_spans_total\{outcome="exported"\} (\d+)$/m.exec(scrape)?.[1]);
    assert.ok(exported >= 4, `exported ${exported}`);
    assert.match(scrape, /^chatkit_trace_spans_total\{outcome="dropped"\} 0$/m);
    assert.match(scrape, /^chatkit_trace_spans_total\{outcome="failed"\} 0$/m);
  });
}
