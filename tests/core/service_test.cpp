// The service's HTTP contract, exercised through handle() with small in-test models of each
// concept (no network, no files): routing, validation, cache, store, middleware and streaming.
#include <chatkit/chatkit.hpp>

#include "../support/sse_text.hpp"

#include <catch2/catch.hpp>

#include "map_cache.hpp"

#include <map>
#include <mutex>
#include <stdexcept>

using nlohmann::json;

using test_support::sse_events;
using test_support::sse_json;

namespace {

// Answers "reply to <last message>", or fails/throws when told to; counts its calls.
struct scripted_provider {
    std::shared_ptr<int> calls = std::make_shared<int>(0);
    std::shared_ptr<std::optional<int>> last_max_tokens = std::make_shared<std::optional<int>>();
    std::optional<chatkit::error> fail_with;
    bool throws = false;
    std::vector<std::string> deltas{"Hello", ", ", "world"};
    std::size_t fail_after_deltas = SIZE_MAX;

    std::string_view name() const { return "scripted"; }
    chatkit::result<chatkit::completion> complete(const chatkit::chat_request& r) {
        ++*calls;
        *last_max_tokens = r.max_tokens;
        if (throws) throw std::runtime_error("boom");
        if (fail_with) return *fail_with;
        chatkit::completion c;
        c.model = r.model.empty() ? "scripted-1" : r.model;
        for (const auto& d : deltas) c.content += d;
        c.usage = {3, static_cast<int>(deltas.size())};
        return c;
    }
    chatkit::result<chatkit::completion> stream(const chatkit::chat_request& r, const chatkit::delta_sink& sink) {
        ++*calls;
        chatkit::completion c;
        c.model = "scripted-1";
        for (std::size_t i = 0; i < deltas.size(); ++i) {
            if (i == fail_after_deltas) return chatkit::error{chatkit::error_kind::upstream, "upstream broke", "upstream_error"};
            if (!sink(deltas[i])) return c;
            c.content += deltas[i];
        }
        (void)r;
        c.usage = {3, static_cast<int>(deltas.size())};
        return c;
    }
    chatkit::component_health health() { return {}; }
};
static_assert(chatkit::provider<scripted_provider>);

struct memory_store {
    struct state {
        std::mutex mutex;
        std::vector<chatkit::exchange> exchanges;
        std::optional<chatkit::history_query> last_query;
        bool down = false;
    };
    std::shared_ptr<state> s = std::make_shared<state>();

    chatkit::result<void> append(const chatkit::exchange& e) {
        std::lock_guard lock{s->mutex};
        if (s->down) return chatkit::error{chatkit::error_kind::unavailable, "store is down", "store_unavailable"};
        s->exchanges.push_back(e);
        return {};
    }
    chatkit::result<chatkit::history_page> history(const chatkit::history_query& q) {
        std::lock_guard lock{s->mutex};
        s->last_query = q;
        chatkit::history_page page;
        for (const auto& e : s->exchanges)
            if (e.user_id == q.user_id)
                for (const auto& m : e.messages)
                    page.messages.push_back(
                        {std::to_string(page.messages.size() + 1), m.role, m.content, e.model, e.created_at, e.request_id});
        page.next_cursor = "older";
        return page;
    }
    chatkit::component_health health() {
        std::lock_guard lock{s->mutex};
        return {!s->down, s->down ? "disk on fire" : ""};
    }
};
static_assert(chatkit::store<memory_store>);

chatkit::http_request post_chat(const json& body, std::string content_type = "application/json") {
    chatkit::http_request req;
    req.method = "POST";
    req.path = "/chat";
    req.body = body.dump();
    if (!content_type.empty()) req.headers.emplace("Content-Type", content_type);
    return req;
}

chatkit::http_request get(std::string path) {
    chatkit::http_request req;
    req.method = "GET";
    req.path = std::move(path);
    return req;
}

json body_of(const chatkit::http_response& res) { return json::parse(res.body); }

// Runs a streamed response to the end and returns its raw SSE text.
std::string drain(chatkit::http_response& res, std::size_t accept_chunks = SIZE_MAX) {
    REQUIRE(res.is_stream());
    std::string out;
    std::size_t n = 0;
    res.stream(
        [&](std::string_view chunk) {
            if (n++ >= accept_chunks) return false;
            out += chunk;
            return true;
        },
        res.meta);
    return out;
}

using test_service = chatkit::service<scripted_provider, memory_store, map_cache>;

void check_error(const chatkit::http_response& res, int status, std::string_view type) {
    CHECK(res.status == status);
    CHECK(res.headers.at("Content-Type") == "application/json");
    const auto body = body_of(res);
    CHECK(body["error"]["type"] == type);
    CHECK(body["error"]["message"].is_string());
    CHECK(body.contains("request_id"));
}

} // namespace

TEST_CASE("POST /chat answers with the completion and its metadata") {
    test_service svc{scripted_provider{}, memory_store{}, map_cache{}};
    const auto res = svc.handle(post_chat({{"content", "hi"}, {"user_id", "alice"}}));
    REQUIRE(res.status == 200);
    const auto body = body_of(res);
    CHECK(body["content"] == "Hello, world");
    CHECK(body["model"] == "scripted-1");
    CHECK(body["finish_reason"] == "stop");
    CHECK(body["usage"] == json{{"prompt_tokens", 3}, {"completion_tokens", 3}, {"total_tokens", 6}});
    CHECK(body["cached"] == false);
    CHECK(body["id"].get<std::string>().starts_with("chatcmpl-"));
    CHECK(body["request_id"].get<std::string>().size() == 32);
    CHECK(body["latency_ms"].is_number());
    CHECK(body["created_at"].get<std::string>().ends_with("Z"));
    CHECK(res.meta.model == "scripted-1");
}

TEST_CASE("each exchange is stored with its user, request id, the last message and the reply") {
    memory_store store;
    test_service svc{scripted_provider{}, store, map_cache{}};
    auto req = post_chat({{"messages", {{{"role", "system"}, {"content", "sys"}}, {{"role", "user"}, {"content", "q"}}}}});
    req.request_id = "rid-1";
    REQUIRE(svc.handle(req).status == 200);
    REQUIRE(store.s->exchanges.size() == 1);
    const auto& e = store.s->exchanges[0];
    CHECK(e.user_id == "anonymous");
    CHECK(e.request_id == "rid-1");
    CHECK(e.model == "scripted-1");
    REQUIRE(e.messages.size() == 2);
    CHECK(e.messages[0] == chatkit::message{chatkit::role::user, "q"});
    CHECK(e.messages[1] == chatkit::message{chatkit::role::assistant, "Hello, world"});
}

TEST_CASE("with an authenticated caller, history belongs to the key: the same user id under two keys is two users") {
    memory_store store;
    test_service svc{scripted_provider{}, store, map_cache{}};
    auto as = [](chatkit::http_request req, std::string key_id) {
        req.caller = {.key_id = std::move(key_id), .team_id = "team-a"};
        return req;
    };
    REQUIRE(svc.handle(as(post_chat({{"content", "from a"}, {"user_id", "ada"}}), "key_a")).status == 200);
    REQUIRE(store.s->exchanges.size() == 1);
    CHECK(store.s->exchanges[0].user_id == "key_a:ada");

    const auto mine = svc.handle(as(get("/history/ada"), "key_a"));
    REQUIRE(mine.status == 200);
    CHECK(body_of(mine)["user_id"] == "ada"); // shown as the client named it
    CHECK(body_of(mine)["messages"].size() == 2);
    const auto theirs = svc.handle(as(get("/history/ada"), "key_b"));
    REQUIRE(theirs.status == 200);
    CHECK(body_of(theirs)["messages"].empty());

    // The OpenAI route's `user` is scoped the same way; a cached answer is not shared across keys.
    auto openai = as(post_chat({{"messages", {{{"role", "user"}, {"content", "from a"}}}}, {"user", "ada"}}), "key_b");
    openai.path = "/v1/chat/completions";
    REQUIRE(svc.handle(openai).status == 200);
    CHECK(store.s->exchanges.back().user_id == "key_b:ada");
    CHECK(body_of(svc.handle(as(post_chat({{"content", "from a"}, {"user_id", "ada"}}), "key_c")))["cached"] == false);
    CHECK(body_of(svc.handle(as(post_chat({{"content", "from a"}, {"user_id", "ada"}}), "key_a")))["cached"] == true);

    // Without authentication the user id is the client's, as before.
    REQUIRE(svc.handle(post_chat({{"content", "x"}, {"user_id", "ada"}})).status == 200);
    CHECK(store.s->exchanges.back().user_id == "ada");
}

TEST_CASE("identical requests are answered from the cache, per user, unless the client opts out") {
    scripted_provider provider;
    memory_store store;
    test_service svc{provider, store, map_cache{}};
    const json ask = {{"content", "same"}, {"user_id", "alice"}};

    CHECK(body_of(svc.handle(post_chat(ask)))["cached"] == false);
    const auto again = body_of(svc.handle(post_chat(ask)));
    CHECK(again["cached"] == true);
    CHECK(again["content"] == "Hello, world");
    CHECK(*provider.calls == 1);

    CHECK(body_of(svc.handle(post_chat({{"content", "same"}, {"user_id", "bob"}})))["cached"] == false);
    CHECK(body_of(svc.handle(post_chat({{"content", "same"}, {"user_id", "alice"}, {"temperature", 1}})))["cached"] == false);
    CHECK(body_of(svc.handle(post_chat({{"content", "same"}, {"user_id", "alice"}, {"cache", false}})))["cached"] == false);
    CHECK(*provider.calls == 4);
    CHECK(store.s->exchanges.size() == 5); // a cached answer is still an exchange
}

TEST_CASE("a reply whose history cannot be stored is not acknowledged") {
    memory_store store;
    store.s->down = true;
    test_service svc{scripted_provider{}, store, map_cache{}};
    check_error(svc.handle(post_chat({{"content", "hi"}})), 503, "service_unavailable");
}

TEST_CASE("a provider error keeps its status and message, an exception becomes a 500") {
    scripted_provider failing;
    failing.fail_with = chatkit::error{chatkit::error_kind::timeout, "upstream timed out", "timeout"};
    test_service svc{failing, memory_store{}, map_cache{}};
    const auto res = svc.handle(post_chat({{"content", "hi"}}));
    check_error(res, 504, "timeout");
    CHECK(body_of(res)["error"]["message"] == "upstream timed out");

    scripted_provider throwing;
    throwing.throws = true;
    test_service svc2{throwing, memory_store{}, map_cache{}};
    const auto crashed = svc2.handle(post_chat({{"content", "hi"}}));
    check_error(crashed, 500, "server_error");
    CHECK(body_of(crashed)["error"]["message"] == "internal error"); // no detail leaks
}

TEST_CASE("unknown routes are 404 and wrong methods 405 with Allow") {
    test_service svc{scripted_provider{}, memory_store{}, map_cache{}};
    check_error(svc.handle(get("/nope")), 404, "not_found_error");
    check_error(svc.handle(get("/history/")), 404, "not_found_error");
    check_error(svc.handle(get("/history/a/b")), 404, "not_found_error");
    const auto wrong = svc.handle(get("/chat"));
    check_error(wrong, 405, "method_not_allowed");
    CHECK(wrong.headers.at("Allow") == "POST");
    auto del = get("/health");
    del.method = "DELETE";
    CHECK(svc.handle(del).headers.at("Allow") == "GET, HEAD");
    auto head = get("/health");
    head.method = "HEAD";
    CHECK(svc.handle(head).status == 200);
}

TEST_CASE("bad bodies get 400, 413 or 415 with a JSON error, never a crash") {
    chatkit::service_options options;
    options.max_body_bytes = 64;
    test_service svc{
        options,
        scripted_provider{},
        memory_store{},
        map_cache{},
    };

    check_error(svc.handle(post_chat({{"content", std::string(100, 'x')}})), 413, "invalid_request_error");
    check_error(svc.handle(post_chat({{"content", "hi"}}, "text/plain")), 415, "invalid_request_error");
    CHECK(svc.handle(post_chat({{"content", "hi"}}, "application/json; charset=utf-8")).status == 200);
    CHECK(svc.handle(post_chat({{"content", "hi"}}, "")).status == 200); // no Content-Type: taken as JSON

    auto broken = post_chat({});
    broken.body = R"({"content": "hi)";
    check_error(svc.handle(broken), 400, "invalid_request_error");
    CHECK(body_of(svc.handle(broken))["error"]["code"] == "invalid_json");

    auto bad_utf8 = post_chat({});
    bad_utf8.body = "{\"content\": \"\xff\xfe\"}";
    const auto utf8_res = svc.handle(bad_utf8);
    check_error(utf8_res, 400, "invalid_request_error");
    CHECK(body_of(utf8_res)["error"]["code"] == "invalid_utf8");
}

TEST_CASE("deeply nested JSON is refused without exhausting the stack") {
    chatkit::service_options options;
    options.max_body_bytes = 4 << 20;
    test_service svc{options, scripted_provider{}, memory_store{}, map_cache{}};
    auto deep = post_chat({});
    deep.body = std::string(1 << 20, '[') + std::string(1 << 20, ']');
    check_error(svc.handle(deep), 400, "invalid_request_error");
}

TEST_CASE("GET /history validates limit and passes the cursor to the store") {
    memory_store store;
    test_service svc{scripted_provider{}, store, map_cache{}};
    REQUIRE(svc.handle(post_chat({{"content", "q"}, {"user_id", "carol"}})).status == 200);

    const auto page = svc.handle(get("/history/carol"));
    REQUIRE(page.status == 200);
    const auto body = body_of(page);
    CHECK(body["user_id"] == "carol");
    CHECK(body["next_cursor"] == "older");
    REQUIRE(body["messages"].size() == 2);
    CHECK(body["messages"][0]["role"] == "user");
    CHECK(body["messages"][1]["content"] == "Hello, world");
    CHECK(body["messages"][1]["created_at"].get<std::string>().ends_with("Z"));
    CHECK(store.s->last_query->limit == 50);

    auto paged = get("/history/carol");
    paged.query = {{"limit", "100"}, {"before", "42"}};
    REQUIRE(svc.handle(paged).status == 200);
    CHECK(store.s->last_query->limit == 100);
    CHECK(store.s->last_query->before == "42");

    for (const char* bad : {"0", "101", "ten", "5x", "-1", ""}) {
        auto req = get("/history/carol");
        req.query = {{"limit", bad}};
        check_error(svc.handle(req), 400, "invalid_request_error");
    }
    check_error(svc.handle(get("/history/" + std::string(129, 'u'))), 400, "invalid_request_error");
}

TEST_CASE("GET /health reports each component, and 503 when one is down") {
    memory_store store;
    test_service svc{scripted_provider{}, store, map_cache{}};
    auto ok = svc.handle(get("/health"));
    CHECK(ok.status == 200);
    auto body = body_of(ok);
    CHECK(body["status"] == "ok");
    CHECK(body["version"] == CHATKIT_VERSION);
    CHECK(body["components"]["store"]["status"] == "ok");
    CHECK(body["components"]["cache"]["status"] == "ok");
    CHECK(body["components"]["provider"]["status"] == "ok");

    store.s->down = true;
    auto down = svc.handle(get("/health"));
    CHECK(down.status == 503);
    body = body_of(down);
    CHECK(body["status"] == "unavailable");
    CHECK(body["components"]["store"] == json{{"status", "down"}, {"detail", "disk on fire"}});
}

namespace {
std::vector<std::string>* journal = nullptr;

template <char Name>
struct tracing_middleware {
    struct context {
        std::string seen;
    };
    std::optional<chatkit::http_response> before(chatkit::http_request& req, context& ctx) {
        journal->push_back(std::string{"before "} + Name);
        ctx.seen = std::string{Name};
        if (req.header("X-Stop-At") == std::string(1, Name)) return chatkit::json_response(418, {{"stopped_by", ctx.seen}});
        return std::nullopt;
    }
    void after(const chatkit::http_request&, chatkit::http_response& res, context& ctx) {
        journal->push_back(std::string{"after "} + Name);
        res.headers["X-Seen-" + ctx.seen] = "yes";
    }
};
static_assert(chatkit::middleware<tracing_middleware<'a'>>);
} // namespace

TEST_CASE("middlewares run before in order and after in reverse, one may answer early") {
    std::vector<std::string> log;
    journal = &log;
    chatkit::service<scripted_provider, chatkit::no_store, chatkit::no_cache, tracing_middleware<'a'>, tracing_middleware<'b'>> svc;

    auto res = svc.handle(get("/health"));
    CHECK(res.status == 200);
    CHECK(log == std::vector<std::string>{"before a", "before b", "after b", "after a"});
    CHECK(res.headers.count("X-Seen-a") == 1);
    CHECK(res.headers.count("X-Seen-b") == 1);

    log.clear();
    auto stopped = get("/health");
    stopped.headers.emplace("X-Stop-At", "a");
    res = svc.handle(stopped);
    CHECK(res.status == 418);
    CHECK(log == std::vector<std::string>{"before a", "after a"});
    journal = nullptr;
}

TEST_CASE("a custom route reaches a middleware's per-request context by type") {
    std::vector<std::string> log;
    journal = &log;
    chatkit::service<scripted_provider, chatkit::no_store, chatkit::no_cache, tracing_middleware<'a'>> svc;
    svc.route("GET", "/whoami", [](chatkit::http_request&, auto& ctx) {
        return chatkit::json_response(200, {{"seen", ctx.template get<tracing_middleware<'a'>>().seen}});
    });
    auto res = svc.handle(get("/whoami"));
    CHECK(res.status == 200);
    CHECK(body_of(res)["seen"] == "a");
    journal = nullptr;
}

TEST_CASE("a streamed chat sends one event per delta, then the answer's metadata") {
    memory_store store;
    test_service svc{scripted_provider{}, store, map_cache{}};
    auto res = svc.handle(post_chat({{"content", "hi"}, {"stream", true}, {"user_id", "dana"}}));
    CHECK(res.status == 200);
    CHECK(res.headers.at("Content-Type") == "text/event-stream");
    const auto events = sse_events(drain(res));
    REQUIRE(events.size() == 4);
    CHECK(events[0].name == "delta");
    CHECK(events[0].json() == json{{"content", "Hello"}});
    CHECK(events[1].json()["content"] == ", ");
    CHECK(events[2].json()["content"] == "world");
    CHECK(events[3].name == "done");
    CHECK(events[3].json()["content"] == "Hello, world");
    CHECK(events[3].json()["usage"]["total_tokens"] == 6);
    CHECK(events[3].json()["request_id"].is_string());
    CHECK(res.meta.usage.completion_tokens == 3);
    CHECK(store.s->exchanges.size() == 1);

    // The same request again comes from the cache, still as a stream.
    auto cached = svc.handle(post_chat({{"content", "hi"}, {"stream", true}, {"user_id", "dana"}}));
    const auto again = sse_events(drain(cached));
    REQUIRE(again.size() == 2);
    CHECK(again[0].json()["content"] == "Hello, world");
    CHECK(again[1].json()["cached"] == true);
}

TEST_CASE("a stream that fails mid-way ends with an error event, not a silent truncation") {
    scripted_provider provider;
    provider.fail_after_deltas = 1;
    memory_store store;
    test_service svc{provider, store, map_cache{}};
    auto res = svc.handle(post_chat({{"content", "hi"}, {"stream", true}}));
    const auto events = sse_events(drain(res));
    REQUIRE(events.size() == 2);
    CHECK(events[0].name == "delta");
    CHECK(events[1].name == "error");
    CHECK(events[1].json()["error"]["type"] == "upstream_error");
    CHECK(events[1].json()["request_id"].is_string());
    CHECK(store.s->exchanges.empty());
}

TEST_CASE("a client that leaves mid-stream stops the provider, the partial reply is not stored") {
    memory_store store;
    map_cache cache;
    test_service svc{scripted_provider{}, store, cache};
    auto res = svc.handle(post_chat({{"content", "hi"}, {"stream", true}}));
    drain(res, 1);
    CHECK(store.s->exchanges.empty());
    CHECK(cache.entries->empty());
}

TEST_CASE("chat() runs the pipeline without HTTP") {
    memory_store store;
    test_service svc{scripted_provider{}, store, map_cache{}};
    chatkit::chat_request req;
    req.messages = {{chatkit::role::user, "hi"}};
    req.user_id = "erin";
    auto answer = svc.chat(req);
    REQUIRE(answer);
    CHECK(answer->content == "Hello, world");
    CHECK_FALSE(answer->cached);
    CHECK(svc.chat(req)->cached);
    CHECK(store.s->exchanges.size() == 2);
}

namespace {
struct throwing_stream_provider : scripted_provider {
    chatkit::result<chatkit::completion> stream(const chatkit::chat_request&, const chatkit::delta_sink& sink) {
        sink("partial");
        throw std::runtime_error("plugin bug");
    }
};
} // namespace

TEST_CASE("an exception thrown while streaming ends the stream with an error event, not the process") {
    chatkit::service<throwing_stream_provider, memory_store, map_cache> svc;
    auto res = svc.handle(post_chat({{"content", "hi"}, {"stream", true}}));
    const auto events = sse_events(drain(res));
    REQUIRE(events.size() == 2);
    CHECK(events[1].name == "error");
    CHECK(events[1].json()["error"]["message"] == "internal error");
}

TEST_CASE("an answer whose exchange could not be stored is not cached") {
    memory_store store;
    map_cache cache;
    store.s->down = true;
    test_service svc{scripted_provider{}, store, cache};
    CHECK(svc.handle(post_chat({{"content", "hi"}})).status == 503);
    CHECK(cache.entries->empty());
    store.s->down = false;
    CHECK(body_of(svc.handle(post_chat({{"content", "hi"}})))["cached"] == false);
}

// --- Pricing, gateway metadata and admission (issue 12) ----------------------------------------

namespace {

// $1 per prompt token and $2 per completion token: costs read as token counts.
std::shared_ptr<const chatkit::price_table> test_prices() {
    auto t = chatkit::price_table::parse(R"({"models": {"scripted-1": {"input": 1e6, "output": 2e6}}})");
    REQUIRE(t);
    return std::make_shared<const chatkit::price_table>(std::move(*t));
}

chatkit::service_options priced() {
    chatkit::service_options o;
    o.prices = test_prices();
    return o;
}

chatkit::http_request post_openai(const json& body, std::string path = "/v1/chat/completions") {
    auto req = post_chat(body);
    req.path = std::move(path);
    return req;
}

// Records what admit and finish see; refuses when told to.
struct recording_admission {
    struct log {
        std::vector<chatkit::chat_admission> admitted;
        std::vector<chatkit::response_summary> finished;
        std::optional<chatkit::error> refuse;
        bool reserve = false;
    };
    std::shared_ptr<log> seen = std::make_shared<log>();

    std::optional<chatkit::http_response> before(chatkit::http_request&, chatkit::no_context&) { return std::nullopt; }
    void after(const chatkit::http_request&, chatkit::http_response&, chatkit::no_context&) {}
    std::optional<chatkit::error> admit(const chatkit::http_request&, chatkit::chat_admission& a, chatkit::no_context&) {
        seen->admitted.push_back(a);
        a.bounds_reserved = seen->reserve;
        return seen->refuse;
    }
    void finish(const chatkit::http_request&, const chatkit::response_summary& s, chatkit::no_context&) { seen->finished.push_back(s); }
};
static_assert(chatkit::middleware_has_admit<recording_admission>);

} // namespace

TEST_CASE("answers are priced: cost_usd on /chat, nothing for a cache hit, null for an unpriced model") {
    test_service svc{priced(), scripted_provider{}, memory_store{}, map_cache{}};
    auto first = svc.handle(post_chat({{"user_id", "ada"}, {"content", "hi"}}));
    REQUIRE(first.status == 200);
    CHECK(body_of(first)["usage"] == json{{"prompt_tokens", 3}, {"completion_tokens", 3}, {"total_tokens", 6}});
    CHECK(body_of(first)["cost_usd"] == 9.0); // 3 × $1 + 3 × $2

    auto hit = svc.handle(post_chat({{"user_id", "ada"}, {"content", "hi"}}));
    CHECK(body_of(hit)["cached"] == true);
    CHECK(body_of(hit)["cost_usd"] == 0.0);

    auto unpriced = svc.handle(post_chat({{"user_id", "ada"}, {"content", "hi"}, {"model", "other"}}));
    REQUIRE(unpriced.status == 200);
    CHECK(body_of(unpriced)["cost_usd"].is_null());

    test_service no_prices{scripted_provider{}, memory_store{}, map_cache{}};
    CHECK(body_of(no_prices.handle(post_chat({{"content", "hi"}})))["cost_usd"].is_null());
}

TEST_CASE("/v1/chat/completions answers carry gateway_metadata: the caller, the provider, the cost") {
    test_service svc{priced(), scripted_provider{}, memory_store{}, map_cache{}};
    auto req = post_openai({{"model", "scripted-1"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}});
    req.caller.key_id = "key_1";
    req.caller.team_id = "research";
    auto res = svc.handle(req);
    REQUIRE(res.status == 200);
    const auto meta = body_of(res)["gateway_metadata"];
    CHECK(meta["team_id"] == "research");
    CHECK(meta["key_id"] == "key_1");
    CHECK(meta["provider"] == "scripted");
    CHECK(meta["cost_usd"] == 9.0);
    CHECK(meta["cached"] == false);
    CHECK(meta["latency_ms"].is_number());
    CHECK(meta.size() == 6);
    CHECK(body_of(res)["choices"][0]["message"]["content"] == "Hello, world"); // the OpenAI shape is intact

    // Without authentication the caller's ids are null.
    auto anonymous = svc.handle(post_openai({{"messages", {{{"role", "user"}, {"content", "other"}}}}}));
    CHECK(body_of(anonymous)["gateway_metadata"]["key_id"].is_null());
    CHECK(body_of(anonymous)["gateway_metadata"]["team_id"].is_null());
}

TEST_CASE("a stream carries gateway_metadata in its last chunk, after the usage, and costs what the same answer costs unstreamed") {
    test_service svc{priced(), scripted_provider{}, memory_store{}, map_cache{}};
    const json messages = {{{"role", "user"}, {"content", "hi"}}};
    SECTION("with stream_options.include_usage: on the usage chunk") {
        auto res = svc.handle(
            post_openai({{"messages", messages}, {"stream", true}, {"cache", false}, {"stream_options", {{"include_usage", true}}}}));
        const auto chunks = sse_json(drain(res));
        REQUIRE(chunks.size() >= 2);
        CHECK(chunks.back()["usage"]["total_tokens"] == 6);
        CHECK(chunks.back()["gateway_metadata"]["cost_usd"] == 9.0);
        for (std::size_t i = 0; i + 1 < chunks.size(); ++i) CHECK_FALSE(chunks[i].contains("gateway_metadata"));
    }
    SECTION("without: on the chunk with the finish reason") {
        auto res = svc.handle(post_openai({{"messages", messages}, {"stream", true}, {"cache", false}}));
        const auto chunks = sse_json(drain(res));
        REQUIRE_FALSE(chunks.empty());
        CHECK(chunks.back()["choices"][0]["finish_reason"] == "stop");
        CHECK(chunks.back()["gateway_metadata"]["cost_usd"] == 9.0);
        CHECK(res.meta.cost_usd == 9.0);
    }
    SECTION("chatkit's own stream: the done event's cost") {
        auto res = svc.handle(post_chat({{"content", "hi"}, {"stream", true}, {"cache", false}}));
        const auto events = sse_events(drain(res));
        CHECK(events.back().name == "done");
        CHECK(events.back().json()["cost_usd"] == 9.0);
    }
}

TEST_CASE("POST /v1/chat is /v1/chat/completions, and /v1/models lists each model's price per 1k tokens") {
    test_service svc{priced(), scripted_provider{}, memory_store{}, map_cache{}};
    auto res = svc.handle(post_openai({{"messages", {{{"role", "user"}, {"content", "hi"}}}}}, "/v1/chat"));
    REQUIRE(res.status == 200);
    CHECK(body_of(res)["object"] == "chat.completion");
    CHECK(svc.handle(get("/v1/chat")).status == 405);

    auto models = body_of(svc.handle(get("/v1/models")));
    REQUIRE(models["data"].size() == 1);
    CHECK(models["data"][0]["id"] == "scripted");
    CHECK(models["data"][0]["pricing"].is_null()); // the provider's name is not a priced model

    chatkit::service_options o = priced();
    auto table = *test_prices();
    table.set("scripted", {.input = 1.5, .output = 6.0});
    o.prices = std::make_shared<const chatkit::price_table>(table);
    test_service priced_models{o, scripted_provider{}, memory_store{}, map_cache{}};
    auto listed = body_of(priced_models.handle(get("/v1/models")));
    CHECK(listed["data"][0]["pricing"]["input_per_1k"] == Approx(0.0015));
    CHECK(listed["data"][0]["pricing"]["output_per_1k"] == Approx(0.006));
}

TEST_CASE("admit sees a chat request's bounds before the provider, and refusing it calls no provider") {
    using admitting_service = chatkit::service<scripted_provider, memory_store, map_cache, recording_admission>;
    scripted_provider provider;
    recording_admission rec;
    chatkit::service_options o = priced();
    o.limits.max_tokens = 1000;
    admitting_service svc{o, provider, memory_store{}, map_cache{}, rec};

    auto req = post_chat({{"content", "hello"}, {"model", "scripted-1"}, {"max_tokens", 50}});
    const auto body_bytes = req.body.size();
    REQUIRE(svc.handle(req).status == 200);
    REQUIRE(rec.seen->admitted.size() == 1);
    const auto& a = rec.seen->admitted[0];
    CHECK(a.model == "scripted-1");
    CHECK(a.prompt_token_bound == static_cast<std::int64_t>(body_bytes + 8));
    CHECK(a.max_completion_tokens == 50);
    CHECK(a.worst_case_usd.value() == Approx((body_bytes + 8) * 1.0 + 50 * 2.0));
    REQUIRE(rec.seen->finished.size() == 1);
    CHECK(rec.seen->finished[0].cost_usd == 9.0);
    CHECK(rec.seen->finished[0].provider == "scripted");

    // No max_tokens: the service's default, within its cap. No model: the provider's default.
    REQUIRE(svc.handle(post_chat({{"content", "hello"}, {"cache", false}})).status == 200);
    CHECK(rec.seen->admitted.back().max_completion_tokens == 1000);
    CHECK(rec.seen->admitted.back().model == "scripted");
    CHECK_FALSE(rec.seen->admitted.back().worst_case_usd); // unpriced
    CHECK_FALSE(provider.last_max_tokens->has_value());    // nothing reserved: the request goes as it came
    // Reserved against the default: the provider is asked for no more than was reserved.
    rec.seen->reserve = true;
    REQUIRE(svc.handle(post_chat({{"content", "hello again"}, {"cache", false}})).status == 200);
    CHECK(*provider.last_max_tokens == 1000);
    rec.seen->reserve = false;

    rec.seen->refuse = chatkit::error{chatkit::error_kind::rate_limited, "over budget", "insufficient_quota", "", 7};
    const int calls = *provider.calls;
    auto refused = svc.handle(post_openai({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"stream", true}}));
    check_error(refused, 429, "rate_limit_exceeded");
    CHECK(body_of(refused)["error"]["code"] == "insufficient_quota");
    CHECK(refused.headers.at("Retry-After") == "7");
    CHECK(*provider.calls == calls);
    // Only chat routes are admitted.
    svc.handle(get("/health"));
    CHECK(rec.seen->admitted.size() == 4);
}

TEST_CASE("a stream the client leaves is billed for the prompt and the text delivered, marked as estimated") {
    using admitting_service = chatkit::service<scripted_provider, memory_store, map_cache, recording_admission>;
    recording_admission rec;
    admitting_service svc{priced(), scripted_provider{}, memory_store{}, map_cache{}, rec};
    auto res = svc.handle(post_chat({{"content", "hi"}, {"stream", true}, {"model", "scripted-1"}}));
    drain(res, 1); // takes "Hello", then leaves
    REQUIRE(rec.seen->finished.size() == 1);
    const auto& s = rec.seen->finished[0];
    CHECK(s.client_left);
    CHECK(s.usage_estimated);
    CHECK(s.usage.prompt_tokens == 1);     // "hi": 2 bytes
    CHECK(s.usage.completion_tokens == 2); // "Hello" and ", " were framed: 7 bytes
    CHECK(s.cost_usd == 5.0);

    // A stream the provider ends in an error before any text bills nothing.
    scripted_provider failing;
    failing.fail_after_deltas = 0;
    recording_admission rec2;
    admitting_service svc2{priced(), failing, memory_store{}, map_cache{}, rec2};
    auto broken = svc2.handle(post_chat({{"content", "hi"}, {"stream", true}}));
    drain(broken);
    REQUIRE(rec2.seen->finished.size() == 1);
    CHECK(rec2.seen->finished[0].usage.total_tokens() == 0);
    CHECK_FALSE(rec2.seen->finished[0].cost_usd);
}

TEST_CASE("every answer carries Server-Timing: the gateway's own time, and the provider's when it was called") {
    scripted_provider p;
    test_service svc{p, memory_store{}, map_cache{}};
    const auto timing = [](const chatkit::http_response& res) {
        const auto it = res.headers.find("Server-Timing");
        REQUIRE(it != res.headers.end());
        return it->second;
    };
    // "gateway;dur=D, upstream;dur=U": two metrics, each a name and a duration in milliseconds.
    const auto parse = [](const std::string& header) {
        std::map<std::string, double> metrics;
        std::size_t at = 0;
        while (at < header.size()) {
            auto end = header.find(", ", at);
            if (end == std::string::npos) end = header.size();
            const auto item = header.substr(at, end - at);
            const auto semi = item.find(";dur=");
            REQUIRE(semi != std::string::npos);
            metrics[item.substr(0, semi)] = std::stod(item.substr(semi + 5));
            at = end + 2;
        }
        return metrics;
    };
    const auto answered = svc.handle(post_chat({{"user_id", "u"}, {"content", "hi"}}));
    REQUIRE(answered.status == 200);
    const auto first = parse(timing(answered));
    CHECK(first.size() == 2);
    CHECK(first.count("gateway") == 1);
    CHECK(first.count("upstream") == 1);
    CHECK(first.at("gateway") >= 0);
    // A cache hit never reached the provider: the gateway's time alone.
    const auto hit = parse(timing(svc.handle(post_chat({{"user_id", "u"}, {"content", "hi"}}))));
    CHECK(hit.size() == 1);
    CHECK(hit.count("gateway") == 1);
    // Errors and other routes carry it too.
    CHECK(parse(timing(svc.handle(get("/nope")))).count("gateway") == 1);

    chatkit::service_options off;
    off.server_timing = false;
    test_service quiet{off, scripted_provider{}, memory_store{}, map_cache{}};
    const auto plain = quiet.handle(get("/health"));
    CHECK(plain.headers.find("Server-Timing") == plain.headers.end());
}

TEST_CASE("GET /ready is 200 while the components are up and 503 once the service drains, and GET / names the routes") {
    test_service svc{scripted_provider{}, memory_store{}, map_cache{}};
    auto ready = svc.handle(get("/ready"));
    CHECK(ready.status == 200);
    CHECK(body_of(ready)["status"] == "ready");
    svc.drain();
    CHECK(svc.draining());
    ready = svc.handle(get("/ready"));
    CHECK(ready.status == 503);
    CHECK(body_of(ready)["status"] == "draining");
    // Draining changes readiness only: the process still answers everything else.
    CHECK(svc.handle(get("/health")).status == 200);
    CHECK(svc.handle(post_chat({{"content", "hi"}})).status == 200);

    svc.route("GET", "/custom", [](chatkit::http_request&, auto&) { return chatkit::json_response(200, json::object()); });
    const auto root = svc.handle(get("/"));
    REQUIRE(root.status == 200);
    const auto body = body_of(root);
    CHECK(body["name"] == "chatkit");
    CHECK(body["version"] == CHATKIT_VERSION);
    const auto routes = body["routes"].get<std::vector<std::string>>();
    CHECK(std::find(routes.begin(), routes.end(), "GET /custom") != routes.end());
    CHECK(std::find(routes.begin(), routes.end(), "POST /v1/chat/completions") != routes.end());
}
