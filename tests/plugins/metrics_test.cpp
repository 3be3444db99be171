// prometheus_metrics: counts move as traffic says they should (requests by route and status, a
// stream's tokens, a cache hit, a 429), labels stay bounded, and the text is Prometheus's format.
#include <chatkit/echo_provider.hpp>
#include <chatkit/lru_cache.hpp>
#include <chatkit/prometheus_metrics.hpp>
#include <chatkit/service.hpp>
#include <chatkit/testing/middleware.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <map>
#include <sstream>

namespace {

// Refuses the user "greedy" with 429, as a limit would.
struct refuses_greedy {
    std::optional<chatkit::http_response> before(chatkit::http_request& req, chatkit::no_context&) {
        if (req.body.find("greedy") == std::string::npos) return std::nullopt;
        return chatkit::error_response({chatkit::error_kind::rate_limited, "slow down", "rate_limit_exceeded", "", 1}, req.request_id);
    }
    void after(const chatkit::http_request&, chatkit::http_response&, chatkit::no_context&) {}
};

using metered =
    chatkit::service<chatkit::echo_provider, chatkit::no_store, chatkit::lru_cache_mt, chatkit::prometheus_metrics, refuses_greedy>;

chatkit::http_request request(std::string method, std::string path, std::string body = {}) {
    chatkit::http_request req;
    req.method = std::move(method);
    req.path = std::move(path);
    req.body = std::move(body);
    return req;
}

// Each sample line of the text, "name{labels}" → value.
std::map<std::string, double> samples(const std::string& text) {
    std::map<std::string, double> out;
    std::istringstream in{text};
    for (std::string line; std::getline(in, line);) {
        if (line.empty() || line[0] == '#') continue;
        const auto space = line.rfind(' ');
        out[line.substr(0, space)] = std::stod(line.substr(space + 1));
    }
    return out;
}

} // namespace

TEST_CASE("prometheus_metrics: requests, cache hits, tokens, cost-free answers and refusals are counted as they happen") {
    chatkit::prometheus_metrics metrics;
    metered svc{chatkit::echo_provider{}, chatkit::no_store{}, chatkit::lru_cache_mt{}, metrics, refuses_greedy{}};
    const std::string chat = R"({"user_id":"u","content":"one two three"})";
    CHECK(svc.handle(request("POST", "/chat", chat)).status == 200);
    CHECK(svc.handle(request("POST", "/chat", chat)).status == 200); // the cache's
    auto streamed = svc.handle(request("POST", "/chat", R"({"user_id":"u","content":"four five","stream":true})"));
    CHECK(streamed.status == 200);
    std::string body;
    REQUIRE(streamed.stream);
    streamed.stream(
        [&body](std::string_view chunk) {
            body += chunk;
            return true;
        },
        streamed.meta);
    CHECK(svc.handle(request("POST", "/chat", R"({"content":"greedy"})")).status == 429);
    CHECK(svc.handle(request("GET", "/no/such/path")).status == 404);
    CHECK(svc.handle(request("GET", "/history/ada")).status == 200);
    // The Anthropic and Responses surfaces are routes of their own, not "other".
    CHECK(svc.handle(request("POST", "/v1/messages", R"({"model":"echo-1","max_tokens":9,"messages":[{"role":"user","content":"six"}]})"))
              .status == 200);
    CHECK(svc.handle(request("POST", "/v1/responses", R"({"input":"seven"})")).status == 200);

    const auto m = samples(metrics.render());
    CHECK(m.at(R"(chatkit_http_requests_total{route="/v1/messages",method="POST",status="200"})") == 1);
    CHECK(m.at(R"(chatkit_http_requests_total{route="/v1/responses",method="POST",status="200"})") == 1);
    CHECK(m.at(R"(chatkit_http_requests_total{route="/chat",method="POST",status="200"})") == 3);
    CHECK(m.at(R"(chatkit_http_requests_total{route="/chat",method="POST",status="429"})") == 1);
    CHECK(m.at(R"(chatkit_http_requests_total{route="other",method="GET",status="404"})") == 1);
    CHECK(m.at(R"(chatkit_http_requests_total{route="/history/{user_id}",method="GET",status="200"})") == 1);
    CHECK(m.at(R"(chatkit_cache_requests_total{result="hit"})") == 1);
    CHECK(m.at(R"(chatkit_cache_requests_total{result="miss"})") == 4);
    CHECK(m.at(R"(chatkit_limit_refusals_total{code="rate_limit_exceeded"})") == 1);
    // Five answers from the provider: three through /chat with 3, 3 and 2 output words, and one
    // word each through /v1/messages and /v1/responses, whose usage counts as any chat's.
    CHECK(m.at(R"(gen_ai_client_token_usage_count{gen_ai_token_type="input",gen_ai_request_model="echo-1"})") == 5);
    CHECK(m.at(R"(gen_ai_client_token_usage_sum{gen_ai_token_type="output",gen_ai_request_model="echo-1"})") == 10);
    CHECK(m.at(R"(gen_ai_client_token_usage_bucket{gen_ai_token_type="output",gen_ai_request_model="echo-1",le="+Inf"})") == 5);
    CHECK(m.at(R"(gen_ai_server_request_duration_seconds_count{route="/chat"})") == 4);
    CHECK(m.at(R"(chatkit_gateway_overhead_seconds_count{route="/chat"})") == 4);
    CHECK(m.at("chatkit_streams_in_flight") == 0); // the stream was raised and lowered
    CHECK(m.at("process_resident_memory_bytes") > 0);
    CHECK(m.at("process_open_fds") > 0);
    CHECK(m.count("process_cpu_seconds_total") == 1);
    // No price table: the provider's answers are unpriced, never counted as $0; the cache hit
    // cost nothing, and says so.
    CHECK(m.at(R"(chatkit_unpriced_requests_total{gen_ai_request_model="echo-1"})") == 4);
    CHECK(m.at(R"(chatkit_cost_usd_total{team="none",gen_ai_request_model="echo-1"})") == 0);
}

TEST_CASE("prometheus_metrics: a label set past max_series is counted as other, and label values are escaped") {
    chatkit::prometheus_metrics_options o;
    o.max_series = 2;
    chatkit::prometheus_metrics metrics{o};
    metered svc{chatkit::echo_provider{}, chatkit::no_store{}, chatkit::lru_cache_mt{}, metrics, refuses_greedy{}};
    for (const char* model : {"a", "b", "c", "d", "quote\"d"})
        CHECK(svc.handle(request("POST", "/chat", nlohmann::json{{"content", "hi"}, {"model", model}}.dump())).status == 200);
    const auto text = metrics.render();
    const auto m = samples(text);
    CHECK(m.at(R"(gen_ai_server_time_to_first_token_seconds_count{gen_ai_request_model="a"})") == 1);
    CHECK(m.at(R"(gen_ai_server_time_to_first_token_seconds_count{gen_ai_request_model="b"})") == 1);
    CHECK(m.at(R"(gen_ai_server_time_to_first_token_seconds_count{gen_ai_request_model="other"})") == 3);
    CHECK(text.find(R"(model="quote)") == std::string::npos); // went to other before it could be a series
    // Histogram buckets are cumulative and end with +Inf equal to the count.
    CHECK(m.at(R"(gen_ai_server_time_to_first_token_seconds_bucket{gen_ai_request_model="other",le="+Inf"})") == 3);
}

TEST_CASE("prometheus_metrics: retries are counted by provider and a bounded code, and absent until the first one") {
    chatkit::prometheus_metrics metrics;
    CHECK(metrics.render().find("chatkit_upstream_retries_total") == std::string::npos);
    using chatkit::error;
    using chatkit::error_kind;
    metrics.count_retry("openai", error{error_kind::rate_limited, "slow down", "rate_limit_exceeded"});
    metrics.count_retry("openai", error{error_kind::rate_limited, "slow down", "upstream_429"});
    metrics.count_retry("openai", error{error_kind::upstream, "cannot reach", "upstream_unreachable"});
    metrics.count_retry("openai", error{error_kind::upstream, "HTTP 503", "upstream_503"});
    metrics.count_retry("bedrock", error{error_kind::timeout, "slow", "upstream_timeout"});
    metrics.count_retry("bedrock", error{error_kind::unavailable, "not ready", "ModelNotReadyException"});
    // An upstream's own code (any text an OpenAI-compatible server sends) is not a label value.
    metrics.count_retry("openai", error{error_kind::upstream, "boom", "server_error\"{x}"});
    metrics.count_retry("openai", error{error_kind::upstream, "boom", "upstream_Not-Ours"});
    const auto text = metrics.render();
    const auto m = samples(text);
    CHECK(m.at(R"(chatkit_upstream_retries_total{provider="openai",code="rate_limited"})") == 2);
    CHECK(m.at(R"(chatkit_upstream_retries_total{provider="openai",code="upstream_unreachable"})") == 1);
    CHECK(m.at(R"(chatkit_upstream_retries_total{provider="openai",code="upstream_503"})") == 1);
    CHECK(m.at(R"(chatkit_upstream_retries_total{provider="openai",code="upstream_error"})") == 2);
    CHECK(m.at(R"(chatkit_upstream_retries_total{provider="bedrock",code="upstream_timeout"})") == 1);
    CHECK(m.at(R"(chatkit_upstream_retries_total{provider="bedrock",code="upstream_unavailable"})") == 1);
    CHECK(text.find("# TYPE chatkit_upstream_retries_total counter") != std::string::npos);
    CHECK(text.find("server_error") == std::string::npos);
}

TEST_CASE("prometheus_metrics: store commits fill a latency and a batch-size histogram") {
    chatkit::prometheus_metrics metrics;
    CHECK(metrics.render().find("chatkit_store_commit") == std::string::npos);
    metrics.observe_store_commit(1, 0.002);
    metrics.observe_store_commit(5, 0.004);
    metrics.observe_store_commit(3, 0.5);
    const auto text = metrics.render();
    const auto m = samples(text);
    CHECK(text.find("# TYPE chatkit_store_commit_seconds histogram") != std::string::npos);
    CHECK(m.at("chatkit_store_commit_seconds_count") == 3);
    CHECK(m.at("chatkit_store_commit_seconds_sum") == Approx(0.506));
    CHECK(m.at(R"(chatkit_store_commit_seconds_bucket{le="0.0025"})") == 1);
    CHECK(m.at(R"(chatkit_store_commit_seconds_bucket{le="0.005"})") == 2);
    CHECK(m.at(R"(chatkit_store_commit_seconds_bucket{le="+Inf"})") == 3);
    CHECK(m.at("chatkit_store_commit_batch_size_count") == 3);
    CHECK(m.at("chatkit_store_commit_batch_size_sum") == 9);
    CHECK(m.at(R"(chatkit_store_commit_batch_size_bucket{le="1"})") == 1);
    CHECK(m.at(R"(chatkit_store_commit_batch_size_bucket{le="4"})") == 2);
    CHECK(m.at(R"(chatkit_store_commit_batch_size_bucket{le="8"})") == 3);
}

TEST_CASE("prometheus_metrics: a source added by the program is rendered in every scrape, as it is then") {
    chatkit::prometheus_metrics metrics;
    int calls = 0;
    metrics.add_source([&calls](std::string& out) {
        ++calls;
        out += "# HELP outside_total Counted elsewhere.\n# TYPE outside_total counter\noutside_total " + std::to_string(calls) + "\n";
    });
    const chatkit::prometheus_metrics copy = metrics; // copies share their sources, as they share counts
    CHECK_THAT(metrics.render(), Catch::EndsWith("outside_total 1\n"));
    CHECK_THAT(copy.render(), Catch::EndsWith("outside_total 2\n"));
}

TEST_CASE("prometheus_metrics passes the middleware conformance checks") {
    chatkit::testing::check_middleware_conformance<chatkit::prometheus_metrics>([] { return chatkit::prometheus_metrics{}; });
}
