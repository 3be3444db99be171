// OpenTelemetry tracing: W3C traceparent parsing, sampling, configuration from the OTEL_*
// variables, and spans exported over real HTTP to a receiver on an ephemeral port (OTLP/JSON
// here; tests/e2e/otel.test.mjs decodes both encodings with OpenTelemetry's own decoder).
#include <chatkit/otel_environment.hpp>
#include <chatkit/otel_tracing.hpp>
#include <chatkit/router.hpp>
#include <chatkit/service.hpp>

#include <catch2/catch.hpp>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <map>
#include <mutex>
#include <thread>

namespace {

constexpr std::string_view spec_example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

// Answers every chat, keeping the traceparent the service handed it (what goes upstream).
struct recording_provider {
    static constexpr bool nonblocking = true;
    std::shared_ptr<std::string> seen = std::make_shared<std::string>();
    std::string_view name() const { return "bedrock"; }
    chatkit::result<chatkit::completion> complete(const chatkit::chat_request& r) {
        *seen = r.traceparent;
        chatkit::completion c;
        c.model = "upstream-model-1";
        c.content = "hello";
        c.finish_reason = "length";
        c.usage = {.prompt_tokens = 7, .completion_tokens = 3};
        return c;
    }
    chatkit::result<chatkit::completion> stream(const chatkit::chat_request& r, const chatkit::delta_sink& out) {
        auto c = complete(r);
        if (c) out(c->content);
        return c;
    }
    chatkit::component_health health() { return {}; }
};

// An OTLP/HTTP receiver: keeps each request's body and content type.
struct receiver {
    httplib::Server server;
    std::thread thread;
    int port = 0;
    std::mutex mutex;
    std::vector<std::pair<std::string, std::string>> bodies; // (content type, body)
    std::string last_authorization;

    receiver() {
        server.Post("/v1/traces", [this](const httplib::Request& req, httplib::Response& res) {
            std::lock_guard lock{mutex};
            bodies.emplace_back(req.get_header_value("Content-Type"), req.body);
            last_authorization = req.get_header_value("Authorization");
            res.set_content("{}", "application/json");
        });
        port = server.bind_to_any_port("127.0.0.1");
        thread = std::thread{[this] { server.listen_after_bind(); }};
        while (!server.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds{1});
    }
    ~receiver() {
        server.stop();
        thread.join();
    }
    std::vector<nlohmann::json> spans() {
        std::lock_guard lock{mutex};
        std::vector<nlohmann::json> out;
        for (const auto& [type, body] : bodies) {
            const auto request = nlohmann::json::parse(body);
            for (const auto& rs : request["resourceSpans"])
                for (const auto& ss : rs["scopeSpans"])
                    for (const auto& s : ss["spans"]) out.push_back(s);
        }
        return out;
    }
};

std::map<std::string, nlohmann::json> attributes(const nlohmann::json& span) {
    std::map<std::string, nlohmann::json> out;
    for (const auto& a : span["attributes"]) out[a["key"].get<std::string>()] = a["value"];
    return out;
}

chatkit::otlp_exporter_options to(const receiver& r) {
    chatkit::otlp_exporter_options o;
    o.endpoint = "http://127.0.0.1:" + std::to_string(r.port) + "/v1/traces";
    o.encoding = chatkit::otlp_encoding::json;
    o.resource.attributes.emplace_back("service.name", "chatkit-test");
    return o;
}

using traced = chatkit::service<recording_provider, chatkit::no_store, chatkit::no_cache, chatkit::otel_tracing>;

chatkit::http_request chat(std::string traceparent = {}) {
    chatkit::http_request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.body = R"({"model":"gpt-x","max_tokens":50,"messages":[{"role":"user","content":"a secret prompt"}]})";
    if (!traceparent.empty()) req.headers.emplace("traceparent", traceparent);
    return req;
}

// Environment lookups from a map, as getenv.
auto env(std::map<std::string, std::string> vars) {
    return [vars = std::move(vars)](const char* name) -> const char* {
        const auto it = vars.find(name);
        return it == vars.end() ? nullptr : it->second.c_str();
    };
}

} // namespace

TEST_CASE("traceparent: the spec's example is read, and written back the same") {
    const auto c = chatkit::parse_traceparent(spec_example);
    REQUIRE(c);
    CHECK(chatkit::to_hex(c->trace) == "4bf92f3577b34da6a3ce929d0e0e4736");
    CHECK(chatkit::to_hex(c->span) == "00f067aa0ba902b7");
    CHECK(c->sampled());
    CHECK(chatkit::format_traceparent(c->trace, c->span, c->flags) == spec_example);
    CHECK_FALSE(chatkit::parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")->sampled());
}

TEST_CASE("traceparent: malformed values are ignored, so the trace starts afresh") {
    for (std::string_view bad : {
             "",
             "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",       // upper case
             "00-00000000000000000000000000000000-00f067aa0ba902b7-01",       // zero trace id
             "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",       // zero parent id
             "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",       // version ff
             "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // 00 has no more fields
             "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",        // short trace id
             "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
             "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
         })
        CHECK_FALSE(chatkit::parse_traceparent(bad));
    // A later version is read by version 00's layout, its extra fields skipped.
    CHECK(chatkit::parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"));
}

TEST_CASE("trace sampler: a client's choice is kept, and a ratio decides the same for the same trace id") {
    const auto parent = chatkit::parse_traceparent(spec_example);
    auto unsampled = parent;
    unsampled->flags = 0;
    const chatkit::trace_sampler half{0.5, true};
    CHECK(half.sample(parent, parent->trace));
    CHECK_FALSE(half.sample(unsampled, parent->trace));
    chatkit::trace_id low{}, high{};
    high.fill(0xff);
    low[0] = 1;
    CHECK(half.sample(std::nullopt, low));
    CHECK_FALSE(half.sample(std::nullopt, high));
    CHECK_FALSE((chatkit::trace_sampler{0.0, false}.sample(parent, parent->trace)));
    CHECK((chatkit::trace_sampler{1.0, false}.sample(unsampled, high)));
}

TEST_CASE("otel settings: tracing is off without an endpoint, and on with the standard variables") {
    CHECK_FALSE(chatkit::otel_settings_from_environment(env({})));
    CHECK_FALSE(
        chatkit::otel_settings_from_environment(env({{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"}, {"OTEL_SDK_DISABLED", "true"}})));
    CHECK_FALSE(
        chatkit::otel_settings_from_environment(env({{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"}, {"OTEL_TRACES_EXPORTER", "none"}})));

    auto s = chatkit::otel_settings_from_environment(env({{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"},
                                                          {"OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20abc, x-team = blue"},
                                                          {"OTEL_SERVICE_NAME", "gateway-eu"},
                                                          {"OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,service.name=ignored"},
                                                          {"OTEL_TRACES_SAMPLER", "parentbased_traceidratio"},
                                                          {"OTEL_TRACES_SAMPLER_ARG", "0.25"}}),
                                                     "chatkit", "1.2.3");
    REQUIRE(s);
    CHECK(s->exporter.endpoint == "http://collector:4318/v1/traces");
    CHECK(s->exporter.encoding == chatkit::otlp_encoding::protobuf);
    CHECK(s->exporter.headers == std::vector<std::pair<std::string, std::string>>{{"Authorization", "Bearer abc"}, {"x-team", "blue"}});
    CHECK(s->sampler.ratio == 0.25);
    CHECK(s->sampler.parent_based);
    std::map<std::string, std::string> resource;
    for (const auto& [key, value] : s->exporter.resource.attributes) resource[key] = value;
    CHECK(resource["service.name"] == "gateway-eu"); // OTEL_SERVICE_NAME wins
    CHECK(resource["deployment.environment"] == "prod");
    CHECK(resource["service.version"] == "1.2.3");

    s = chatkit::otel_settings_from_environment(env({{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"},
                                                     {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://c.example/custom/traces"},
                                                     {"OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"},
                                                     {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"}}));
    REQUIRE(s);
    CHECK(s->exporter.endpoint == "https://c.example/custom/traces");
    CHECK(s->exporter.encoding == chatkit::otlp_encoding::json);
}

TEST_CASE("otel settings: a wrong value is refused by name, and a header's value is never echoed") {
    const auto refused = [](std::map<std::string, std::string> vars) {
        vars.emplace("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        try {
            (void)chatkit::otel_settings_from_environment(env(vars));
        } catch (const std::invalid_argument& e) {
            return std::string{e.what()};
        }
        return std::string{"accepted"};
    };
    CHECK_THAT(refused({{"OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"}}), Catch::Contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported"));
    CHECK_THAT(refused({{"OTEL_TRACES_SAMPLER", "sometimes"}}), Catch::Contains("OTEL_TRACES_SAMPLER=sometimes"));
    CHECK_THAT(refused({{"OTEL_TRACES_SAMPLER", "traceidratio"}, {"OTEL_TRACES_SAMPLER_ARG", "2"}}), Catch::Contains("from 0 to 1"));
    CHECK_THAT(refused({{"OTEL_EXPORTER_OTLP_TIMEOUT", "-5"}}), Catch::Contains("OTEL_EXPORTER_OTLP_TIMEOUT must be a positive"));
    const auto headers = refused({{"OTEL_EXPORTER_OTLP_HEADERS", "api-key-sk-live-123456"}});
    CHECK_THAT(headers, Catch::Contains("OTEL_EXPORTER_OTLP_HEADERS"));
    CHECK_THAT(headers, !Catch::Contains("sk-live"));
    CHECK(refused({{"OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"}}) != "accepted");
}

TEST_CASE("otel tracing: a request's server span continues the client's trace, and the upstream call gets the client span's traceparent") {
    receiver collector;
    auto exporter = std::make_shared<chatkit::otlp_exporter>(to(collector));
    recording_provider provider;
    traced svc{provider, chatkit::no_store{}, chatkit::no_cache{}, chatkit::otel_tracing{exporter}};
    auto req = chat(std::string{spec_example});
    const auto res = svc.handle(req);
    REQUIRE(res.status == 200);
    REQUIRE(exporter->flush(std::chrono::seconds{10}));

    const auto spans = collector.spans();
    REQUIRE(spans.size() == 2);
    const auto& server = spans[0]["kind"] == 2 ? spans[0] : spans[1];
    const auto& client = spans[0]["kind"] == 3 ? spans[0] : spans[1];
    REQUIRE(server["kind"] == 2);
    REQUIRE(client["kind"] == 3);
    CHECK(server["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736");
    CHECK(server["parentSpanId"] == "00f067aa0ba902b7");
    CHECK(server["name"] == "POST /v1/chat/completions");
    CHECK(client["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736");
    CHECK(client["parentSpanId"] == server["spanId"]);
    CHECK(client["name"] == "chat gpt-x");
    // The upstream saw the same trace, with the client span as its parent.
    CHECK(*provider.seen == "00-4bf92f3577b34da6a3ce929d0e0e4736-" + client["spanId"].get<std::string>() + "-01");
    // The client span lies within the server span.
    const auto ns = [](const nlohmann::json& s, const char* f) { return std::stoull(s[f].get<std::string>()); };
    CHECK(ns(server, "startTimeUnixNano") <= ns(client, "startTimeUnixNano"));
    CHECK(ns(client, "endTimeUnixNano") <= ns(server, "endTimeUnixNano"));

    auto a = attributes(server);
    CHECK(a["http.request.method"]["stringValue"] == "POST");
    CHECK(a["http.route"]["stringValue"] == "/v1/chat/completions");
    CHECK(a["http.response.status_code"]["intValue"] == "200");
    CHECK(a["chatkit.request_id"]["stringValue"] == req.request_id);
    auto c = attributes(client);
    CHECK(c["gen_ai.operation.name"]["stringValue"] == "chat");
    CHECK(c["gen_ai.provider.name"]["stringValue"] == "aws.bedrock");
    CHECK(c["gen_ai.request.model"]["stringValue"] == "gpt-x");
    CHECK(c["gen_ai.request.max_tokens"]["intValue"] == "50");
    CHECK(c["gen_ai.response.model"]["stringValue"] == "upstream-model-1");
    CHECK(c["gen_ai.usage.input_tokens"]["intValue"] == "7");
    CHECK(c["gen_ai.usage.output_tokens"]["intValue"] == "3");
    CHECK(c["gen_ai.response.finish_reasons"]["arrayValue"]["values"][0]["stringValue"] == "length");
    // No content: the prompt and the answer appear nowhere in what was exported.
    std::lock_guard lock{collector.mutex};
    for (const auto& [type, body] : collector.bodies) {
        CHECK(type == "application/json");
        CHECK(body.find("a secret prompt") == std::string::npos);
        CHECK(body.find("hello") == std::string::npos);
    }
}

TEST_CASE("otel tracing: without a traceparent a new trace begins, and an unsampled client's request exports nothing") {
    receiver collector;
    auto exporter = std::make_shared<chatkit::otlp_exporter>(to(collector));
    recording_provider provider;
    traced svc{provider, chatkit::no_store{}, chatkit::no_cache{}, chatkit::otel_tracing{exporter}};
    REQUIRE(svc.handle(chat()).status == 200);
    const auto fresh = chatkit::parse_traceparent(*provider.seen);
    REQUIRE(fresh);
    CHECK(fresh->sampled());

    REQUIRE(svc.handle(chat("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")).status == 200);
    CHECK(*provider.seen != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"); // our span, the client's trace
    CHECK(provider.seen->starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    CHECK(provider.seen->ends_with("-00"));

    REQUIRE(exporter->flush(std::chrono::seconds{10}));
    const auto spans = collector.spans();
    REQUIRE(spans.size() == 2); // the first request's only
    for (const auto& s : spans) CHECK(s["traceId"] == chatkit::to_hex(fresh->trace));
    const auto& server = spans[0]["kind"] == 2 ? spans[0] : spans[1];
    CHECK_FALSE(server.contains("parentSpanId"));
}

TEST_CASE("otel tracing: an error answer marks its spans, and a 404 is traced under its method alone") {
    receiver collector;
    auto exporter = std::make_shared<chatkit::otlp_exporter>(to(collector));
    traced svc{recording_provider{}, chatkit::no_store{}, chatkit::no_cache{}, chatkit::otel_tracing{exporter}};
    chatkit::http_request missing{.method = "GET", .path = "/no/such/route"};
    REQUIRE(svc.handle(missing).status == 404);
    REQUIRE(exporter->flush(std::chrono::seconds{10}));
    const auto spans = collector.spans();
    REQUIRE(spans.size() == 1); // no upstream call, no client span
    CHECK(spans[0]["name"] == "GET");
    CHECK(attributes(spans[0])["url.path"]["stringValue"] == "/no/such/route");
    CHECK(attributes(spans[0])["error.type"]["stringValue"] == "not_found");
    CHECK_FALSE(spans[0].contains("status")); // a 4xx is the client's error, not the server's
}

// Fails every chat as an unreachable upstream does.
struct failing_provider {
    static constexpr bool nonblocking = true;
    std::string_view name() const { return "openai"; }
    chatkit::result<chatkit::completion> complete(const chatkit::chat_request&) {
        return chatkit::error{chatkit::error_kind::upstream, "cannot reach the upstream", "upstream_unreachable"};
    }
    chatkit::result<chatkit::completion> stream(const chatkit::chat_request& r, const chatkit::delta_sink&) { return complete(r); }
    chatkit::component_health health() { return {}; }
};

TEST_CASE("otel tracing: a failed upstream call is an error in both spans") {
    receiver collector;
    auto exporter = std::make_shared<chatkit::otlp_exporter>(to(collector));
    chatkit::service<failing_provider, chatkit::no_store, chatkit::no_cache, chatkit::otel_tracing> svc{
        failing_provider{}, chatkit::no_store{}, chatkit::no_cache{}, chatkit::otel_tracing{exporter}};
    REQUIRE(svc.handle(chat()).status == 502);
    REQUIRE(exporter->flush(std::chrono::seconds{10}));
    const auto spans = collector.spans();
    REQUIRE(spans.size() == 2); // the call was made, so it has its span
    for (const auto& s : spans) {
        CHECK(s["status"]["code"] == 2);
        CHECK(attributes(s)["error.type"]["stringValue"] == "upstream_unreachable");
    }
}

TEST_CASE("otel tracing: gen_ai.provider.name is the API that answered, a router's member named by its type") {
    receiver collector;
    auto exporter = std::make_shared<chatkit::otlp_exporter>(to(collector));
    using router = chatkit::router<recording_provider>;
    std::vector<router::member> members{{"claude-main", recording_provider{}}};
    std::vector<chatkit::model_route> routes{{"*", {{{"claude-main"}}}}};
    chatkit::otel_tracing_options o;
    o.provider_types = {{"claude-main", "anthropic"}};
    chatkit::service<router, chatkit::no_store, chatkit::no_cache, chatkit::otel_tracing> svc{
        router{std::move(members), std::move(routes)}, chatkit::no_store{}, chatkit::no_cache{}, chatkit::otel_tracing{exporter, o}};
    auto req = chat();
    req.path = "/v1/messages"; // named by its route too
    req.body = R"({"model":"gpt-x","max_tokens":50,"messages":[{"role":"user","content":"hi"}]})";
    REQUIRE(svc.handle(req).status == 200);
    REQUIRE(exporter->flush(std::chrono::seconds{10}));
    const auto spans = collector.spans();
    REQUIRE(spans.size() == 2);
    const auto& server = spans[0]["kind"] == 2 ? spans[0] : spans[1];
    const auto& client = spans[0]["kind"] == 3 ? spans[0] : spans[1];
    CHECK(server["name"] == "POST /v1/messages");
    CHECK(attributes(client)["gen_ai.provider.name"]["stringValue"] == "anthropic");
}

TEST_CASE("otlp exporter: a collector that is down costs counted failures, and a full queue drops spans") {
    int closed_port = 0;
    {
        receiver gone; // a port that was just in use, now closed
        closed_port = gone.port;
    }
    chatkit::otlp_exporter_options o;
    o.endpoint = "http://127.0.0.1:" + std::to_string(closed_port) + "/v1/traces";
    o.max_queue = 3;
    o.timeout = std::chrono::milliseconds{2000};
    std::vector<std::string> errors;
    std::mutex errors_mutex;
    o.headers = {{"Authorization", "Bearer collector-secret"}};
    o.on_error = [&](std::string_view e) {
        std::lock_guard lock{errors_mutex};
        errors.emplace_back(e);
    };
    chatkit::otlp_exporter exporter{o};
    std::vector<chatkit::span_data> spans(5);
    for (auto& s : spans) s.name = "x";
    exporter.push(spans);
    CHECK(exporter.stats().dropped == 2);
    REQUIRE(exporter.flush(std::chrono::seconds{10}));
    CHECK(exporter.stats().failed == 3);
    CHECK(exporter.stats().exported == 0);
    std::lock_guard lock{errors_mutex};
    REQUIRE_FALSE(errors.empty());
    CHECK_THAT(errors.front(), Catch::Contains("cannot reach the collector"));
    CHECK_THAT(errors.front(), !Catch::Contains("collector-secret"));
}

TEST_CASE("otlp exporter: headers are sent, and spans queued below a batch are sent after the schedule delay") {
    receiver collector;
    auto o = to(collector);
    o.headers = {{"Authorization", "Bearer collector-key"}};
    o.schedule_delay = std::chrono::milliseconds{50};
    chatkit::otlp_exporter exporter{o};
    std::vector<chatkit::span_data> spans(1);
    spans[0].name = "lonely";
    spans[0].trace = chatkit::random_trace_bytes<chatkit::trace_id>();
    spans[0].id = chatkit::random_trace_bytes<chatkit::span_id>();
    exporter.push(spans);
    for (int i = 0; i < 200 && exporter.stats().exported == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds{50});
    CHECK(exporter.stats().exported == 1);
    std::lock_guard lock{collector.mutex};
    CHECK(collector.last_authorization == "Bearer collector-key");
}
