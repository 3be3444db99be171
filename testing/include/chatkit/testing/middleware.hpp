// The behaviour every chatkit::middleware model must have (chatkit/middleware.hpp), as Catch2
// sections. A middleware's test calls check_middleware_conformance<its_middleware>(make, options)
// from a TEST_CASE, where make() returns a new middleware and `options.cases` are requests with
// what the middleware does with each: let it through, or answer it in before(). Each section
// gets its own middleware.
#pragma once

#include <chatkit/error.hpp>
#include <chatkit/http.hpp>
#include <chatkit/middleware.hpp>
#include <chatkit/service.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <concepts>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace chatkit::testing {

// A request, and what the middleware under test does with it.
struct middleware_case {
    std::string name; // shown when a check of this case fails
    http_request request{};
    bool answered_in_before = false; // before() answers it (a refusal, a preflight); else it is let through
    std::optional<bool> blocks{};    // what blocks() must say for it, for a middleware that declares blocks()
};

// A request as an adapter hands it to the service: from 127.0.0.1, with an id, and a JSON body
// when there is one.
inline http_request kit_request(std::string method, std::string path, std::string body = {}) {
    http_request req;
    req.method = std::move(method);
    req.path = std::move(path);
    req.body = std::move(body);
    if (!req.body.empty()) req.headers.emplace("Content-Type", "application/json");
    req.remote_addr = "127.0.0.1";
    req.request_id = "kit-request-1";
    return req;
}

struct middleware_kit_options {
    // The requests to check with. By default a chat and a health probe, both let through.
    std::vector<middleware_case> cases = {
        {"POST /chat", kit_request("POST", "/chat", R"({"user_id":"ada","content":"hello"})")},
        {"GET /health", kit_request("GET", "/health")},
    };
    // after() only decorates what it lets through (headers): status and body stay as they were.
    // False for a middleware that rewrites bodies (one that masks answers).
    bool keeps_body = true;
    // What a request's hooks may take, all together, when the middleware does not say it blocks.
    std::chrono::milliseconds prompt = std::chrono::milliseconds{1000};
};

// Requests no middleware may throw on, whatever it makes of them.
inline std::vector<http_request> odd_requests() {
    std::vector<http_request> odd;
    odd.emplace_back(); // no method, no path, nothing
    odd.push_back(kit_request("POST", "/chat", "{not json"));
    odd.push_back(kit_request("POST", "/chat", "\xff\xfe\xc3(invalid UTF-8)"));
    odd.push_back(kit_request("POST", "/v1/chat/completions", R"({"messages":"not a list","model":7})"));
    odd.push_back(kit_request("GET", "/../../etc/passwd"));
    odd.push_back(kit_request("DELETE", std::string(10'000, '/')));
    auto headers = kit_request("GET", "/health");
    headers.headers.emplace("Authorization", "Bearer ");
    headers.headers.emplace("X-Request-ID", std::string(70'000, 'x'));
    headers.headers.emplace("X-Forwarded-For", ", , ,");
    headers.headers.emplace("Origin", std::string("https://a\r\nb\0c", 14));
    headers.headers.emplace("Cookie", "\x01\x02");
    odd.push_back(std::move(headers));
    auto query = kit_request("GET", "/v1/usage");
    query.query.emplace("since", "-1");
    query.query.emplace("team", std::string(1, '\0'));
    query.remote_addr.clear();
    odd.push_back(std::move(query));
    return odd;
}

// What a route answers when the middleware lets a request through.
inline http_response kit_answer() {
    http_response res = json_response(200, {{"content", "routed"}});
    res.meta.model = "m";
    res.meta.usage = {3, 4};
    return res;
}

// One request's hooks, in the service's order: before, then (when let through) the route's
// answer, then after and finish. `res` gets the answer.
template <class M>
std::optional<http_response> run_hooks(M& m, http_request& req, http_response& res) {
    context_of_t<M> ctx{};
    auto early = m.before(req, ctx);
    res = early ? *early : kit_answer();
    m.after(req, res, ctx);
    if constexpr (middleware_has_finish<M>) {
        response_summary s;
        s.status = res.status;
        s.model = res.meta.model;
        s.usage = res.meta.usage;
        s.bytes_sent = res.body.size();
        m.finish(req, s, ctx);
    }
    return early;
}

template <class M, class MakeMiddleware>
void check_middleware_conformance(MakeMiddleware make, middleware_kit_options options = {}) {
    static_assert(middleware<M>, "check_middleware_conformance: M is not a chatkit::middleware (see chatkit/middleware.hpp)");
    static_assert(std::default_initializable<context_of_t<M>>, "a middleware's context must be default-constructible");
    REQUIRE_FALSE(options.cases.empty());

    SECTION("each case is let through or answered in before(), as declared, and after() and finish() run on it") {
        auto m = make();
        for (const auto& c : options.cases) {
            INFO("case: " << c.name);
            auto req = c.request;
            http_response res;
            std::optional<http_response> early;
            REQUIRE_NOTHROW(early = run_hooks(m, req, res));
            CHECK(early.has_value() == c.answered_in_before);
            CHECK(res.status >= 100);
            CHECK(res.status <= 599);
            if (!early && options.keeps_body) {
                const auto routed = kit_answer();
                CHECK(res.status == routed.status);
                CHECK(res.body == routed.body);
            }
        }
    }

    SECTION("after() keeps an error answer's status, and a streamed answer streaming, its events as they were") {
        auto m = make();
        for (const auto& c : options.cases) {
            if (c.answered_in_before) continue;
            INFO("case: " << c.name);
            {
                auto req = c.request;
                context_of_t<M> ctx{};
                REQUIRE_FALSE(m.before(req, ctx).has_value());
                auto res = error_response({error_kind::upstream, "the upstream failed", "upstream_error"}, req.request_id);
                const auto body = res.body;
                REQUIRE_NOTHROW(m.after(req, res, ctx));
                CHECK(res.status == 502);
                if (options.keeps_body) CHECK(res.body == body);
            }
            {
                auto req = c.request;
                context_of_t<M> ctx{};
                REQUIRE_FALSE(m.before(req, ctx).has_value());
                http_response res;
                res.headers.emplace("Content-Type", "text/event-stream");
                res.stream = [](const chunk_writer& write, response_meta& meta) {
                    if (!write("event: delta\ndata: {\"content\":\"a\"}\n\n")) return;
                    if (!write("event: delta\ndata: {\"content\":\"b\"}\n\n")) return;
                    meta.usage = {1, 2};
                    write("event: done\ndata: {}\n\n");
                };
                REQUIRE_NOTHROW(m.after(req, res, ctx));
                REQUIRE(res.is_stream());
                CHECK(res.status == 200);
                std::string sent;
                response_meta meta;
                res.stream(
                    [&sent](std::string_view chunk) {
                        sent.append(chunk);
                        return true;
                    },
                    meta);
                if (options.keeps_body)
                    CHECK(
                        sent ==
                        "event: delta\ndata: {\"content\":\"a\"}\n\nevent: delta\ndata: {\"content\":\"b\"}\n\nevent: done\ndata: {}\n\n");
                CHECK(meta.usage == token_usage{1, 2});
            }
        }
    }

    SECTION("odd and hostile requests never make a hook throw") {
        auto m = make();
        for (auto req : odd_requests()) {
            INFO("request: " << req.method << ' ' << req.path.substr(0, 40));
            if constexpr (middleware_may_block<M>) CHECK_NOTHROW((void)m.blocks(req));
            http_response res;
            CHECK_NOTHROW(run_hooks(m, req, res));
            if constexpr (middleware_has_admit<M>) {
                context_of_t<M> ctx{};
                chat_admission a{.model = "m", .prompt_token_bound = 10, .max_completion_tokens = 10};
                CHECK_NOTHROW((void)m.admit(req, a, ctx));
            }
        }
    }

    SECTION("blocks() says what each case declares, the same each time; a request it does not block on is prompt") {
        auto m = make();
        for (const auto& c : options.cases) {
            INFO("case: " << c.name);
            bool blocks = false;
            if constexpr (middleware_may_block<M>) {
                blocks = m.blocks(c.request);
                if (c.blocks) CHECK(blocks == *c.blocks);
                CHECK(m.blocks(c.request) == blocks);
            } else {
                CHECK_FALSE(c.blocks.value_or(false)); // a case says it blocks, but M has no blocks()
            }
            if (blocks) continue;
            auto req = c.request;
            http_response res;
            const auto started = std::chrono::steady_clock::now();
            run_hooks(m, req, res);
            CHECK(std::chrono::steady_clock::now() - started < options.prompt);
        }
    }

    SECTION("concurrent requests, each with its own context, are treated as a lone request is") {
        auto m = make();
        constexpr int threads = 8, rounds = 100;
        std::atomic<int> wrong{0}, thrown{0};
        std::vector<std::thread> workers;
        for (int t = 0; t < threads; ++t)
            workers.emplace_back([&m, &options, &wrong, &thrown] {
                for (int i = 0; i < rounds; ++i)
                    for (const auto& c : options.cases) {
                        auto req = c.request;
                        http_response res;
                        try {
                            const auto early = run_hooks(m, req, res);
                            if (early.has_value() != c.answered_in_before) ++wrong;
                            else if (!early && options.keeps_body && res.body != kit_answer().body) ++wrong;
                        } catch (...) {
                            ++thrown;
                        }
                    }
            });
        for (auto& w : workers) w.join();
        CHECK(wrong == 0);
        CHECK(thrown == 0);
    }

    if constexpr (std::move_constructible<M>) {
        SECTION("composed into a service, each case is answered as declared: let through to the route, or by before()") {
            service<no_provider, no_store, no_cache, M> svc{no_provider{}, no_store{}, no_cache{}, make()};
            service<no_provider> bare;
            auto m = make();
            for (const auto& c : options.cases) {
                INFO("case: " << c.name);
                auto req = c.request;
                const auto res = svc.handle(req);
                if (c.answered_in_before) {
                    auto direct = c.request;
                    context_of_t<M> ctx{};
                    const auto early = m.before(direct, ctx);
                    REQUIRE(early.has_value());
                    CHECK(res.status == early->status);
                } else {
                    auto bare_req = c.request;
                    CHECK(res.status == bare.handle(bare_req).status);
                }
            }
        }
    }
}

} // namespace chatkit::testing
