// The router (chatkit/router.hpp): routing by model name, fallback before the first byte (streams
// too), cool-downs, weights, health by member, and the service naming the member that answered.
#include <chatkit/chatkit.hpp>
#include <chatkit/router.hpp>

#include <catch2/catch.hpp>

#include "../support/manual_clock.hpp"

#include <map>
#include <memory>
#include <string>
#include <vector>

using chatkit::error;
using chatkit::error_kind;
using nlohmann::json;

namespace {

// What a member does when called: answer, fail before any delta, or fail after `deltas_first`.
struct behaviour {
    std::optional<error> fails{};
    std::size_t deltas_first = 0; // a stream's deltas written before it fails
    bool down = false;            // what health() says
};

// A member that records each call as "name:model" in a log shared by all members.
struct scripted_member {
    static constexpr bool nonblocking = true;
    std::string id;
    std::shared_ptr<std::vector<std::string>> calls;
    std::shared_ptr<behaviour> does = std::make_shared<behaviour>();

    std::string_view name() const { return id; }
    chatkit::result<chatkit::completion> complete(const chatkit::chat_request& r) {
        calls->push_back(id + ":" + r.model);
        if (does->fails) return *does->fails;
        return chatkit::completion{.model = r.model, .content = "from " + id};
    }
    chatkit::result<chatkit::completion> stream(const chatkit::chat_request& r, const chatkit::delta_sink& sink) {
        calls->push_back(id + ":" + r.model);
        for (std::size_t i = 0; does->fails && i < does->deltas_first; ++i)
            if (!sink("partial ")) return chatkit::completion{};
        if (does->fails) return *does->fails;
        if (!sink("from ")) return chatkit::completion{};
        sink(id);
        return chatkit::completion{.model = r.model, .content = "from " + id};
    }
    chatkit::component_health health() { return {!does->down, does->down ? "refused our key" : ""}; }
};
static_assert(chatkit::provider<scripted_member>);

using clock_type = test_support::manual_clock;
using router_type = chatkit::router<scripted_member, clock_type>;

// Three members (primary, backup, claude) and the routes the tests share.
struct fleet {
    std::shared_ptr<std::vector<std::string>> calls = std::make_shared<std::vector<std::string>>();
    std::map<std::string, std::shared_ptr<behaviour>> does;
    std::vector<std::string> fallbacks; // "from>to:code"

    scripted_member member(const std::string& id) {
        scripted_member m{id, calls};
        does[id] = m.does;
        return m;
    }
    router_type make(std::vector<chatkit::model_route> routes, chatkit::router_options o = {}) {
        o.on_fallback = [this](std::string_view from, std::string_view to, const error& e) {
            fallbacks.push_back(std::string{from} + ">" + std::string{to} + ":" + e.code);
        };
        std::vector<router_type::member> members;
        for (const char* id : {"primary", "backup", "claude"}) members.push_back({id, member(id)});
        return router_type{std::move(members), std::move(routes), std::move(o)};
    }
};

std::vector<chatkit::model_route> usual_routes() {
    return {{"gpt-4o-mini", {{{"primary"}}, {{"backup"}}}}, {"sonnet", {{{"claude", "claude-sonnet-4-5"}}}}};
}

chatkit::chat_request ask(std::string model) {
    chatkit::chat_request r;
    r.model = std::move(model);
    r.messages = {{chatkit::role::user, "hi"}};
    return r;
}

chatkit::result<chatkit::completion> complete(router_type& r, std::string model) {
    return chatkit::sync_wait(r.complete(ask(std::move(model))));
}

// A stream's deltas, as the service's writer would receive them.
struct collected final : chatkit::delta_writer::target {
    std::string text;
    chatkit::task<bool> write(std::string_view t) override { co_return write_now(t); }
    bool write_now(std::string_view t) override {
        text += t;
        return true;
    }
};

chatkit::result<chatkit::completion> stream(router_type& r, std::string model, collected& out) {
    return chatkit::sync_wait(r.stream(ask(std::move(model)), chatkit::delta_writer{&out}));
}

const error rate_limited{error_kind::rate_limited, "slow down", "rate_limit_exceeded"};
const error server_error{error_kind::upstream, "upstream error (HTTP 500)", "upstream_500"};
const error unreachable{error_kind::upstream, "cannot reach the upstream (connection refused)", "upstream_unreachable"};
const error timed_out{error_kind::timeout, "the upstream did not answer within 100 ms", "upstream_timeout"};

} // namespace

TEST_CASE("the router sends each model to its route, with aliases and provider/model names") {
    fleet f;
    auto r = f.make(usual_routes());
    auto a = complete(r, "gpt-4o-mini");
    REQUIRE(a.has_value());
    CHECK(a->content == "from primary");
    CHECK(a->provider == "primary");
    auto b = complete(r, "sonnet");
    REQUIRE(b.has_value());
    CHECK(b->provider == "claude");
    CHECK(b->model == "claude-sonnet-4-5");                // the alias is sent upstream as its model id
    auto c = complete(r, "backup/meta-llama/llama-3-70b"); // provider/model: the rest is the model, slashes and all
    REQUIRE(c.has_value());
    CHECK(c->provider == "backup");
    auto d = complete(r, ""); // no model: the first route's
    REQUIRE(d.has_value());
    CHECK(d->provider == "primary");
    CHECK(*f.calls == std::vector<std::string>{"primary:gpt-4o-mini", "claude:claude-sonnet-4-5", "backup:meta-llama/llama-3-70b",
                                               "primary:gpt-4o-mini"});
    CHECK(r.models() == std::vector<std::string>{"gpt-4o-mini", "sonnet"});
}

TEST_CASE("a model no route serves is refused with a 404 that names the choices, before any upstream is called") {
    fleet f;
    auto r = f.make(usual_routes());
    auto a = complete(r, "gpt-5");
    REQUIRE_FALSE(a.has_value());
    CHECK(a.error().kind == error_kind::not_found);
    CHECK(a.error().code == "model_not_found");
    CHECK(a.error().param == "model");
    CHECK(a.error().message.find("gpt-4o-mini, sonnet") != std::string::npos);
    CHECK(complete(r, "nobody/gpt-5").error().code == "model_not_found"); // not a provider's name
    CHECK(f.calls->empty());

    SECTION("unless a \"*\" route catches the rest, which keeps the name asked for") {
        auto routes = usual_routes();
        routes.push_back({"*", {{{"backup"}}}});
        fleet g;
        auto wide = g.make(routes);
        auto b = complete(wide, "gpt-5");
        REQUIRE(b.has_value());
        CHECK(b->provider == "backup");
        CHECK(*g.calls == std::vector<std::string>{"backup:gpt-5"});
        CHECK(wide.models() == std::vector<std::string>{"gpt-4o-mini", "sonnet"});
    }
}

TEST_CASE("the router falls back on 429, 5xx, timeouts and unreachable upstreams, and says so") {
    for (const error& e : {rate_limited, server_error, unreachable, timed_out}) {
        fleet f;
        auto r = f.make(usual_routes());
        f.does["primary"]->fails = e;
        auto a = complete(r, "gpt-4o-mini");
        REQUIRE(a.has_value());
        CHECK(a->provider == "backup");
        CHECK(*f.calls == std::vector<std::string>{"primary:gpt-4o-mini", "backup:gpt-4o-mini"});
        CHECK(f.fallbacks == std::vector<std::string>{"primary>backup:" + e.code});
    }
}

TEST_CASE("a request the upstream calls invalid, or a cancelled one, does not fall back") {
    for (const error& e : {error{error_kind::invalid_request, "max_tokens is too large", "invalid_value", "max_tokens"},
                           error{error_kind::timeout, "the request was cancelled", "request_cancelled"},
                           error{error_kind::not_found, "no such model", "model_not_found"}}) {
        fleet f;
        auto r = f.make(usual_routes());
        f.does["primary"]->fails = e;
        auto a = complete(r, "gpt-4o-mini");
        REQUIRE_FALSE(a.has_value());
        CHECK(a.error().code == e.code);
        CHECK(a.error().message == e.message); // untouched: only one provider was tried
        CHECK(*f.calls == std::vector<std::string>{"primary:gpt-4o-mini"});
        CHECK(f.fallbacks.empty());
    }
}

TEST_CASE("when every provider of a route fails, the last failure is the answer, naming what was tried") {
    fleet f;
    auto r = f.make(usual_routes());
    f.does["primary"]->fails = server_error;
    f.does["backup"]->fails = rate_limited;
    auto a = complete(r, "gpt-4o-mini");
    REQUIRE_FALSE(a.has_value());
    CHECK(a.error().kind == error_kind::rate_limited); // the client sees a 429, with its Retry-After
    CHECK(a.error().message == "slow down (gpt-4o-mini: tried primary, backup)");
}

TEST_CASE("a stream falls back until its first delta reached the client, never after") {
    SECTION("a failure before the first delta: the backup streams the answer") {
        fleet f;
        auto r = f.make(usual_routes());
        f.does["primary"]->fails = rate_limited;
        collected out;
        auto a = stream(r, "gpt-4o-mini", out);
        REQUIRE(a.has_value());
        CHECK(a->provider == "backup");
        CHECK(out.text == "from backup");
    }
    SECTION("a failure after it: the stream's error, no second answer spliced in") {
        fleet f;
        auto r = f.make(usual_routes());
        f.does["primary"]->fails = server_error;
        f.does["primary"]->deltas_first = 1;
        collected out;
        auto a = stream(r, "gpt-4o-mini", out);
        REQUIRE_FALSE(a.has_value());
        CHECK(a.error().code == "upstream_500");
        CHECK(out.text == "partial ");
        CHECK(*f.calls == std::vector<std::string>{"primary:gpt-4o-mini"});
    }
}

TEST_CASE("a provider that keeps failing is skipped for its cool-down, then tried again") {
    fleet f;
    chatkit::router_options o;
    o.cooldown_after = 2;
    o.cooldown = std::chrono::seconds{30};
    auto r = f.make(usual_routes(), o);
    f.does["primary"]->fails = unreachable;
    REQUIRE(complete(r, "gpt-4o-mini").has_value());
    REQUIRE(complete(r, "gpt-4o-mini").has_value()); // the second failure in a row: cool-down
    f.calls->clear();
    REQUIRE(complete(r, "gpt-4o-mini").has_value());
    CHECK(*f.calls == std::vector<std::string>{"backup:gpt-4o-mini"}); // skipped
    const auto health = r.health();
    CHECK(health.ok); // gpt-4o-mini still has its backup
    REQUIRE(health.parts.size() == 3);
    CHECK(health.parts[0].first == "primary");
    CHECK_FALSE(health.parts[0].second.ok);
    CHECK(health.parts[0].second.detail.find("cool-down") != std::string::npos);

    SECTION("while cooling, it is still the last resort when the rest fails") {
        f.does["backup"]->fails = server_error;
        f.does["primary"]->fails.reset();
        f.calls->clear();
        auto a = complete(r, "gpt-4o-mini");
        REQUIRE(a.has_value());
        CHECK(a->provider == "primary");
        CHECK(*f.calls == std::vector<std::string>{"backup:gpt-4o-mini", "primary:gpt-4o-mini"});
    }
    SECTION("after it, it is tried first again; one more failure cools it at once") {
        clock_type::advance(std::chrono::seconds{31});
        f.calls->clear();
        REQUIRE(complete(r, "gpt-4o-mini").has_value());
        CHECK(*f.calls == std::vector<std::string>{"primary:gpt-4o-mini", "backup:gpt-4o-mini"});
        f.calls->clear();
        REQUIRE(complete(r, "gpt-4o-mini").has_value());
        CHECK(*f.calls == std::vector<std::string>{"backup:gpt-4o-mini"});
        // A success ends it.
        clock_type::advance(std::chrono::seconds{31});
        f.does["primary"]->fails.reset();
        REQUIRE(complete(r, "gpt-4o-mini")->provider == "primary");
        REQUIRE(complete(r, "gpt-4o-mini")->provider == "primary");
        CHECK(r.health().parts[0].second.ok);
    }
}

TEST_CASE("deployments of one model share its traffic by weight, and back each other up") {
    fleet f;
    auto r = f.make({{"gpt-4o", {{{"primary", "", 3}, {"backup", "", 1}}, {{"claude", "claude-sonnet-4-5"}}}}});
    std::map<std::string, int> served;
    for (int i = 0; i < 4000; ++i) ++served[complete(r, "gpt-4o")->provider];
    // 3:1, within a margin 10 standard deviations wide (binomial, n=4000, p=0.75: sd ≈ 27).
    CHECK(served["primary"] > 3000 - 270);
    CHECK(served["primary"] < 3000 + 270);
    CHECK(served["primary"] + served["backup"] == 4000);

    f.does["primary"]->fails = server_error;
    f.does["backup"]->fails = server_error;
    f.calls->clear();
    auto a = complete(r, "gpt-4o");
    REQUIRE(a.has_value());
    CHECK(a->provider == "claude"); // both deployments tried, then the next group
    CHECK(f.calls->size() == 3);
}

TEST_CASE("the router reports each member's health, and is down when a model has no member up") {
    fleet f;
    auto r = f.make(usual_routes());
    f.does["claude"]->down = true;
    const auto h = r.health();
    CHECK_FALSE(h.ok);
    CHECK(h.detail == "no provider is up for: sonnet");
    json j = h;
    CHECK(j["parts"]["claude"] == json{{"status", "down"}, {"detail", "refused our key"}});
    CHECK(j["parts"]["primary"] == json{{"status", "ok"}});
}

TEST_CASE("a route naming an unknown provider, or none, is refused when the router is built") {
    fleet f;
    CHECK_THROWS_WITH(f.make({{"m", {{{"nobody"}}}}}), "model 'm' names provider 'nobody', which is not defined");
    CHECK_THROWS_WITH(f.make({{"m", {}}}), "model 'm' has an empty route");
    CHECK_THROWS_WITH(f.make({{"m", {{{"primary", "", 0}}}}}), "model 'm' gives provider 'primary' weight 0");
    CHECK_THROWS_WITH(f.make({{"m", {{{"primary"}}}}, {"m", {{{"backup"}}}}}), "model 'm' is routed twice");
}

namespace {
struct discard_store {
    chatkit::result<void> append(const chatkit::exchange&) { return {}; }
    chatkit::result<chatkit::history_page> history(const chatkit::history_query&) { return chatkit::history_page{}; }
    chatkit::component_health health() { return {}; }
};
chatkit::http_request post(std::string path, const json& body) {
    chatkit::http_request req;
    req.method = "POST";
    req.path = std::move(path);
    req.body = body.dump();
    req.headers.emplace("Content-Type", "application/json");
    return req;
}
} // namespace

TEST_CASE("the service names the member that answered: x-chatkit-provider, gateway_metadata, and /health's parts") {
    fleet f;
    chatkit::service svc{f.make(usual_routes()), discard_store{}, chatkit::no_cache{}};
    f.does["primary"]->fails = server_error;
    auto res = svc.handle(post("/v1/chat/completions", {{"model", "gpt-4o-mini"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}}));
    REQUIRE(res.status == 200);
    CHECK(res.headers.at("x-chatkit-provider") == "backup");
    CHECK(json::parse(res.body)["gateway_metadata"]["provider"] == "backup");

    auto chat = svc.handle(post("/chat", {{"content", "hi"}, {"model", "sonnet"}}));
    REQUIRE(chat.status == 200);
    CHECK(chat.headers.at("x-chatkit-provider") == "claude");

    auto unknown = svc.handle(post("/chat", {{"content", "hi"}, {"model", "gpt-5"}}));
    CHECK(unknown.status == 404);
    CHECK_FALSE(unknown.headers.contains("x-chatkit-provider"));

    chatkit::http_request health;
    health.method = "GET";
    health.path = "/health";
    auto h = json::parse(svc.handle(health).body);
    CHECK(h["components"]["provider"]["parts"]["backup"]["status"] == "ok");
}

namespace {
// Keeps each request's summary, as the log, metrics and usage middlewares see it.
struct summary_log {
    std::shared_ptr<std::vector<chatkit::response_summary>> seen = std::make_shared<std::vector<chatkit::response_summary>>();
    std::optional<chatkit::http_response> before(chatkit::http_request&, chatkit::no_context&) { return std::nullopt; }
    void after(const chatkit::http_request&, chatkit::http_response&, chatkit::no_context&) {}
    void finish(const chatkit::http_request&, const chatkit::response_summary& s, chatkit::no_context&) { seen->push_back(s); }
};
} // namespace

TEST_CASE("a request every member failed is logged under the member tried last, not the router") {
    fleet f;
    summary_log log;
    chatkit::service svc{f.make(usual_routes()), discard_store{}, chatkit::no_cache{}, log};
    f.does["primary"]->fails = server_error;
    f.does["backup"]->fails = server_error;
    const json ask = {{"model", "gpt-4o-mini"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}};
    auto whole = svc.handle(post("/v1/chat/completions", ask));
    CHECK(whole.status == 502);
    CHECK_FALSE(whole.headers.contains("x-chatkit-provider")); // no member answered
    auto streamed_ask = ask;
    streamed_ask["stream"] = true;
    auto streamed = svc.handle(post("/v1/chat/completions", streamed_ask));
    std::string body;
    streamed.stream([&](std::string_view c) { return body.append(c), true; }, streamed.meta);
    CHECK(body.find("upstream") != std::string::npos);
    REQUIRE(log.seen->size() == 2);
    for (const auto& s : *log.seen) {
        CHECK(s.provider == "backup");
        CHECK_FALSE(s.error_code.empty());
    }
}
