// The request lifecycle: serve() through a sink, the finish hook, blocking plugins on the worker
// pool resuming on the loop, async providers on the loop, cancellation, and context lookup.
#include <chatkit/chatkit.hpp>

#include <catch2/catch.hpp>

#include "map_cache.hpp"
#include "test_loop.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <map>
#include <mutex>

using nlohmann::json;
using namespace std::chrono_literals;

namespace {

// Records what the service sends; completes every operation inline. `accept_chunks` chunks are
// taken, then the client "leaves".
struct recording_sink final : chatkit::response_sink {
    int status = 0;
    chatkit::header_map headers;
    std::string body;
    std::vector<std::string> chunks;
    bool streamed = false, ended = false;
    std::size_t accept_chunks = SIZE_MAX;
    int finished_calls = 0;
    const test_support::test_loop* loop = nullptr;
    std::atomic<int> off_loop_ops{0};

    void check_thread() {
        if (loop && !loop->on_loop_thread()) ++off_loop_ops;
    }
    void start(const chatkit::http_request&, const chatkit::http_response& res, bool is_stream, callback done) override {
        check_thread();
        status = res.status;
        headers = res.headers;
        body = res.body;
        streamed = is_stream;
        done(true);
    }
    void write(std::string_view chunk, callback done) override {
        check_thread();
        if (chunks.size() >= accept_chunks) return done(false);
        chunks.emplace_back(chunk);
        done(true);
    }
    void end(callback done) override {
        check_thread();
        ended = true;
        done(true);
    }
    void finished(const chatkit::response_summary&) noexcept override { ++finished_calls; }
    [[nodiscard]] std::size_t chunk_bytes() const {
        std::size_t n = 0;
        for (const auto& c : chunks) n += c.size();
        return n;
    }
};

// Every finish() call, in order.
struct finish_log {
    std::mutex m;
    std::vector<chatkit::response_summary> summaries;
};

struct summary_middleware {
    std::shared_ptr<finish_log> log = std::make_shared<finish_log>();
    std::optional<chatkit::http_response> before(chatkit::http_request&, chatkit::no_context&) { return std::nullopt; }
    void after(const chatkit::http_request&, chatkit::http_response&, chatkit::no_context&) {}
    void finish(const chatkit::http_request&, const chatkit::response_summary& s, chatkit::no_context&) {
        std::lock_guard lock{log->m};
        log->summaries.push_back(s);
    }
};
static_assert(chatkit::middleware_has_finish<summary_middleware>);

// A blocking provider with controls: deltas, a failure, a gate it waits at, and what it saw.
struct gated_provider {
    struct state {
        std::vector<std::string> deltas{"Hello", ", ", "world"};
        std::optional<chatkit::error> fail_with;
        bool wait_for_stop = false; // blocks until the request's stop token is requested
        std::shared_future<void> gate;
        std::atomic<int> deltas_sent{0};
        std::atomic<bool> saw_stop{false}, stopped_by_sink{false};
        std::promise<void> entered;
        std::atomic<bool> entered_set{false};
    };
    std::shared_ptr<state> s = std::make_shared<state>();

    std::string_view name() const { return "gated"; }
    void wait(const chatkit::chat_request& r) {
        if (!s->entered_set.exchange(true)) s->entered.set_value();
        if (s->gate.valid()) s->gate.wait();
        if (s->wait_for_stop) {
            std::mutex m;
            std::condition_variable_any cv;
            std::unique_lock lock{m};
            cv.wait(lock, r.stop, [] { return false; });
            s->saw_stop = r.stop.stop_requested();
        }
    }
    chatkit::result<chatkit::completion> complete(const chatkit::chat_request& r) {
        wait(r);
        if (s->wait_for_stop) return chatkit::error{chatkit::error_kind::upstream, "upstream call closed", "upstream_closed"};
        if (s->fail_with) return *s->fail_with;
        chatkit::completion c;
        c.model = "gated-1";
        for (const auto& d : s->deltas) c.content += d;
        c.usage = {3, static_cast<int>(s->deltas.size())};
        return c;
    }
    chatkit::result<chatkit::completion> stream(const chatkit::chat_request& r, const chatkit::delta_sink& sink) {
        wait(r);
        if (s->fail_with) return *s->fail_with;
        chatkit::completion c;
        c.model = "gated-1";
        for (const auto& d : s->deltas) {
            if (!sink(d)) {
                s->stopped_by_sink = true;
                return c;
            }
            ++s->deltas_sent;
            c.content += d;
        }
        c.usage = {3, static_cast<int>(s->deltas.size())};
        return c;
    }
    chatkit::component_health health() { return {}; }
};
static_assert(chatkit::blocking_provider<gated_provider>);

// The asynchronous form: coroutines that must not block. It notes which thread it ran on.
struct async_echo {
    const test_support::test_loop* loop = nullptr;
    std::shared_ptr<std::atomic<int>> off_loop = std::make_shared<std::atomic<int>>(0);

    std::string_view name() const { return "async-echo"; }
    chatkit::task<chatkit::result<chatkit::completion>> complete(chatkit::chat_request r) {
        if (loop && !loop->on_loop_thread()) ++*off_loop;
        chatkit::completion c;
        c.model = "async-echo-1";
        c.content = r.messages.back().content;
        c.usage = {1, 1};
        co_return c;
    }
    chatkit::task<chatkit::result<chatkit::completion>> stream(chatkit::chat_request r, chatkit::delta_writer out) {
        chatkit::completion c;
        c.model = "async-echo-1";
        for (char ch : r.messages.back().content) {
            if (loop && !loop->on_loop_thread()) ++*off_loop;
            const std::string piece(1, ch);
            if (!co_await out.write(piece)) co_return c;
            c.content += piece;
        }
        c.usage = {1, static_cast<int>(c.content.size())};
        co_return c;
    }
    chatkit::component_health health() { return {}; }
};
static_assert(chatkit::async_provider<async_echo>);
static_assert(chatkit::provider<async_echo>);

chatkit::http_request chat(json body, std::string path = "/chat") {
    chatkit::http_request r;
    r.method = "POST";
    r.path = std::move(path);
    r.headers.emplace("Content-Type", "application/json");
    r.body = body.dump();
    return r;
}

// Runs one request to its end on `loop` with `pool`, or inline (both null).
template <class Service>
void serve(Service& svc, chatkit::http_request req, recording_sink& sink, test_support::test_loop* loop = nullptr,
           chatkit::worker_pool* pool = nullptr, std::stop_token stop = {}) {
    const chatkit::task_env env{stop, loop, pool};
    if (!loop) return chatkit::sync_wait(svc.serve(std::move(req), &sink), env);
    std::promise<void> finished;
    auto start = [&] {
        auto done = [&finished](std::exception_ptr) { finished.set_value(); };
        chatkit::start_detached(svc.serve(std::move(req), &sink), env, done);
    };
    loop->run_on(start);
    REQUIRE(finished.get_future().wait_for(20s) == std::future_status::ready);
}

using lifecycle_service = chatkit::service<gated_provider, chatkit::no_store, map_cache, summary_middleware>;

} // namespace

TEST_CASE("finish runs exactly once per request, after the last byte, with the final usage") {
    const bool on_loop = GENERATE(false, true);
    CAPTURE(on_loop);
    test_support::test_loop loop;
    chatkit::worker_pool pool{2};
    auto* l = on_loop ? &loop : nullptr;
    auto* p = on_loop ? &pool : nullptr;

    gated_provider provider;
    summary_middleware mw;
    lifecycle_service svc{chatkit::service_options{}, provider, chatkit::no_store{}, map_cache{}, mw};
    auto last = [&] {
        std::lock_guard lock{mw.log->m};
        return mw.log->summaries.back();
    };
    auto count = [&] {
        std::lock_guard lock{mw.log->m};
        return mw.log->summaries.size();
    };

    SECTION("a complete answer") {
        recording_sink sink;
        sink.loop = l;
        serve(svc, chat({{"content", "hi"}, {"user_id", "a"}}), sink, l, p);
        REQUIRE(count() == 1);
        const auto s = last();
        CHECK(s.status == 200);
        CHECK_FALSE(s.streamed);
        CHECK(s.usage == chatkit::token_usage{3, 3});
        CHECK(s.model == "gated-1");
        CHECK(s.bytes_sent == sink.body.size());
        CHECK_FALSE(s.client_left);
        CHECK(sink.finished_calls == 1);
        CHECK(sink.off_loop_ops == 0);
    }
    SECTION("a stream: the usage is known only at its end, and finish sees it") {
        recording_sink sink;
        sink.loop = l;
        serve(svc, chat({{"content", "hi"}, {"stream", true}, {"user_id", "b"}}), sink, l, p);
        REQUIRE(count() == 1);
        const auto s = last();
        CHECK(s.status == 200);
        CHECK(s.streamed);
        CHECK(sink.ended);
        CHECK(s.usage == chatkit::token_usage{3, 3});
        CHECK(s.bytes_sent == sink.chunk_bytes());
        CHECK(sink.chunks.size() == 4); // three deltas and the done event
        CHECK(s.time_to_first_token_ms > 0);
        CHECK(s.duration_ms >= s.time_to_first_token_ms);
        CHECK_FALSE(s.client_left);
        CHECK(sink.off_loop_ops == 0);
    }
    SECTION("a cache hit") {
        for (int i = 0; i < 2; ++i) {
            recording_sink sink;
            serve(svc, chat({{"content", "same"}, {"user_id", "c"}}), sink, l, p);
        }
        REQUIRE(count() == 2);
        CHECK(last().cached);
        CHECK(last().usage == chatkit::token_usage{3, 3});
    }
    SECTION("a stream the client abandons stops the provider and is reported once") {
        provider.s->deltas = std::vector<std::string>(50, "word ");
        recording_sink sink;
        sink.accept_chunks = 2;
        serve(svc, chat({{"content", "hi"}, {"stream", true}, {"user_id", "d"}}), sink, l, p);
        REQUIRE(count() == 1);
        const auto s = last();
        CHECK(s.client_left);
        CHECK(s.streamed);
        CHECK(provider.s->stopped_by_sink);
        CHECK(provider.s->deltas_sent == 2);
        CHECK_FALSE(sink.ended);
        CHECK(s.bytes_sent == sink.chunk_bytes());
    }
    SECTION("a failed upstream") {
        provider.s->fail_with = chatkit::error{chatkit::error_kind::upstream, "upstream broke", "upstream_error"};
        recording_sink sink;
        serve(svc, chat({{"content", "hi"}, {"user_id", "e"}}), sink, l, p);
        recording_sink stream_sink;
        serve(svc, chat({{"content", "hi"}, {"stream", true}, {"user_id", "e"}}), stream_sink, l, p);
        REQUIRE(count() == 2);
        std::lock_guard lock{mw.log->m};
        CHECK(mw.log->summaries[0].status == 502);
        CHECK(mw.log->summaries[0].error_code == "upstream_error");
        CHECK(mw.log->summaries[1].status == 200); // the stream had begun: the error is an event
        CHECK(mw.log->summaries[1].error_code == "upstream_error");
        CHECK(stream_sink.chunks.back().starts_with("event: error"));
    }
}

TEST_CASE("the blocking form, handle(), runs finish after the adapter has run the stream") {
    gated_provider provider;
    summary_middleware mw;
    lifecycle_service svc{chatkit::service_options{}, provider, chatkit::no_store{}, map_cache{}, mw};
    auto req = chat({{"content", "hi"}, {"stream", true}});
    auto res = svc.handle(req);
    REQUIRE(res.is_stream());
    CHECK_FALSE(req.request_id.empty());
    CHECK(mw.log->summaries.empty()); // the body has not been produced yet
    std::string body;
    chatkit::response_meta meta;
    res.stream([&](std::string_view c) { return body.append(c), true; }, meta);
    REQUIRE(mw.log->summaries.size() == 1);
    CHECK(mw.log->summaries[0].usage == chatkit::token_usage{3, 3});
    CHECK(mw.log->summaries[0].bytes_sent == body.size());
    CHECK(meta.usage == chatkit::token_usage{3, 3});

    SECTION("a stream the adapter drops unrun still finishes, as abandoned") {
        auto dropped = svc.handle(chat({{"content", "other"}, {"stream", true}}));
        REQUIRE(dropped.is_stream());
        dropped = chatkit::http_response{};
        REQUIRE(mw.log->summaries.size() == 2);
        CHECK(mw.log->summaries[1].client_left);
    }
}

TEST_CASE("a blocking provider that waits does not stall other requests on the loop") {
    test_support::test_loop loop;
    chatkit::worker_pool pool{2};
    gated_provider provider;
    std::promise<void> open_gate;
    provider.s->gate = open_gate.get_future().share();
    lifecycle_service svc{chatkit::service_options{}, provider, chatkit::no_store{}, map_cache{}, summary_middleware{}};

    recording_sink slow_sink;
    std::promise<void> slow_done;
    auto start_slow = [&] {
        auto done = [&slow_done](std::exception_ptr) { slow_done.set_value(); };
        chatkit::start_detached(svc.serve(chat({{"content", "slow"}}), &slow_sink), chatkit::task_env{{}, &loop, &pool}, done);
    };
    loop.run_on(start_slow);
    REQUIRE(provider.s->entered.get_future().wait_for(20s) == std::future_status::ready);

    chatkit::http_request health;
    health.method = "GET";
    health.path = "/health";
    recording_sink health_sink;
    serve(svc, health, health_sink, &loop, &pool); // answers while the provider still waits
    CHECK(health_sink.status == 200);
    auto slow = slow_done.get_future();
    CHECK(slow.wait_for(0s) == std::future_status::timeout);

    open_gate.set_value();
    REQUIRE(slow.wait_for(20s) == std::future_status::ready);
    CHECK(slow_sink.status == 200);
}

TEST_CASE("a request's stop token reaches a blocking provider, and the answer says it was cancelled") {
    test_support::test_loop loop;
    chatkit::worker_pool pool{2};
    gated_provider provider;
    provider.s->wait_for_stop = true;
    summary_middleware mw;
    lifecycle_service svc{chatkit::service_options{}, provider, chatkit::no_store{}, map_cache{}, mw};

    std::stop_source stop;
    recording_sink sink;
    std::promise<void> done_promise;
    auto start = [&] {
        auto done = [&done_promise](std::exception_ptr) { done_promise.set_value(); };
        chatkit::start_detached(svc.serve(chat({{"content", "hi"}}), &sink), chatkit::task_env{stop.get_token(), &loop, &pool}, done);
    };
    loop.run_on(start);
    REQUIRE(provider.s->entered.get_future().wait_for(20s) == std::future_status::ready);
    stop.request_stop(); // what an adapter does when the client leaves or the deadline passes
    REQUIRE(done_promise.get_future().wait_for(20s) == std::future_status::ready);
    CHECK(provider.s->saw_stop);
    CHECK(sink.status == 504);
    CHECK(json::parse(sink.body)["error"]["code"] == "request_cancelled");
    REQUIRE(mw.log->summaries.size() == 1);
    CHECK(mw.log->summaries[0].status == 504);
}

TEST_CASE("an async provider runs on the loop thread, complete and stream") {
    test_support::test_loop loop;
    chatkit::worker_pool pool{1};
    async_echo provider;
    provider.loop = &loop;
    chatkit::service<async_echo, chatkit::no_store, chatkit::no_cache, summary_middleware> svc{
        chatkit::service_options{}, provider, chatkit::no_store{}, chatkit::no_cache{}, summary_middleware{}};

    recording_sink sink;
    serve(svc, chat({{"content", "abc"}}), sink, &loop, &pool);
    CHECK(sink.status == 200);
    CHECK(json::parse(sink.body)["content"] == "abc");

    recording_sink stream_sink;
    serve(svc, chat({{"messages", {{{"role", "user"}, {"content", "abc"}}}}, {"stream", true}}, "/v1/chat/completions"), stream_sink, &loop,
          &pool);
    REQUIRE(stream_sink.chunks.size() >= 4);
    CHECK(stream_sink.chunks.back().ends_with("data: [DONE]\n\n"));
    CHECK(*provider.off_loop == 0);

    SECTION("and inline, through the blocking handle()") {
        auto res = svc.handle(chat({{"content", "xyz"}}));
        CHECK(json::parse(res.body)["content"] == "xyz");
    }
}

namespace {
struct shared_tag {
    int value = 0;
};
struct first_mw {
    using context = shared_tag;
    std::optional<chatkit::http_response> before(chatkit::http_request&, context& c) { return c.value = 1, std::nullopt; }
    void after(const chatkit::http_request&, chatkit::http_response&, context&) {}
};
struct second_mw {
    using context = shared_tag;
    std::optional<chatkit::http_response> before(chatkit::http_request&, context& c) { return c.value = 2, std::nullopt; }
    void after(const chatkit::http_request&, chatkit::http_response&, context&) {}
};
} // namespace

TEST_CASE("two middlewares that share a context type each reach their own context") {
    using svc_t = chatkit::service<gated_provider, chatkit::no_store, chatkit::no_cache, first_mw, second_mw>;
    svc_t svc{gated_provider{}, chatkit::no_store{}, chatkit::no_cache{}, first_mw{}, second_mw{}};
    svc.route("GET", "/contexts", [](chatkit::http_request&, svc_t::context& ctx) {
        return chatkit::json_response(200, {{"first", ctx.get<first_mw>().value}, {"second", ctx.get<second_mw>().value}});
    });
    chatkit::http_request req;
    req.method = "GET";
    req.path = "/contexts";
    const auto res = svc.handle(req);
    REQUIRE(res.status == 200);
    CHECK(json::parse(res.body) == json{{"first", 1}, {"second", 2}});
}

namespace {
// The asynchronous Store and Cache forms: coroutines over a shared map, noting the thread they
// ran on, as a Redis or PostgreSQL client on the loop would be.
struct async_map_store {
    const test_support::test_loop* loop = nullptr;
    std::shared_ptr<std::vector<chatkit::exchange>> saved = std::make_shared<std::vector<chatkit::exchange>>();
    std::shared_ptr<std::atomic<int>> off_loop = std::make_shared<std::atomic<int>>(0);

    chatkit::task<chatkit::result<void>> append(chatkit::exchange e) {
        if (loop && !loop->on_loop_thread()) ++*off_loop;
        saved->push_back(std::move(e));
        co_return chatkit::result<void>{};
    }
    chatkit::task<chatkit::result<chatkit::history_page>> history(chatkit::history_query q) {
        if (loop && !loop->on_loop_thread()) ++*off_loop;
        chatkit::history_page page;
        for (const auto& e : *saved)
            if (e.user_id == q.user_id)
                for (const auto& m : e.messages)
                    page.messages.push_back({std::to_string(page.messages.size()), m.role, m.content, e.model, e.created_at, e.request_id});
        co_return page;
    }
    chatkit::component_health health() { return {}; }
};
static_assert(chatkit::async_store<async_map_store>);
static_assert(chatkit::store<async_map_store>);
static_assert(!chatkit::blocking_store<async_map_store>);

struct async_map_cache {
    const test_support::test_loop* loop = nullptr;
    std::shared_ptr<std::map<std::string, chatkit::completion>> entries = std::make_shared<std::map<std::string, chatkit::completion>>();
    std::shared_ptr<std::atomic<int>> off_loop = std::make_shared<std::atomic<int>>(0);

    chatkit::task<std::optional<chatkit::completion>> get(std::string key) {
        if (loop && !loop->on_loop_thread()) ++*off_loop;
        auto it = entries->find(key);
        co_return it == entries->end() ? std::nullopt : std::optional{it->second};
    }
    chatkit::task<void> put(std::string key, chatkit::completion value, std::chrono::seconds) {
        if (loop && !loop->on_loop_thread()) ++*off_loop;
        (*entries)[std::move(key)] = std::move(value);
        co_return;
    }
    chatkit::component_health health() { return {}; }
};
static_assert(chatkit::async_cache<async_map_cache>);
static_assert(chatkit::cache<async_map_cache>);
} // namespace

TEST_CASE("an async store and an async cache are awaited on the loop thread: append, cache hit, history") {
    test_support::test_loop loop;
    chatkit::worker_pool pool{1};
    async_map_store store;
    store.loop = &loop;
    async_map_cache cache;
    cache.loop = &loop;
    chatkit::service<async_echo, async_map_store, async_map_cache, summary_middleware> svc{chatkit::service_options{}, async_echo{}, store,
                                                                                           cache, summary_middleware{}};

    recording_sink first;
    serve(svc, chat({{"content", "remember me"}, {"user_id", "ann"}}), first, &loop, &pool);
    REQUIRE(first.status == 200);
    CHECK(json::parse(first.body)["cached"] == false);
    REQUIRE(store.saved->size() == 1);
    CHECK(store.saved->front().user_id == "ann");
    CHECK(cache.entries->size() == 1);

    recording_sink again;
    serve(svc, chat({{"content", "remember me"}, {"user_id", "ann"}}), again, &loop, &pool);
    CHECK(json::parse(again.body)["cached"] == true);

    chatkit::http_request history;
    history.method = "GET";
    history.path = "/history/ann";
    recording_sink page;
    serve(svc, history, page, &loop, &pool);
    REQUIRE(page.status == 200);
    CHECK(json::parse(page.body)["messages"].size() >= 2);
    CHECK(*store.off_loop == 0);
    CHECK(*cache.off_loop == 0);
}

namespace {
// A blocking store that notes which thread each append ran on; with `Nonblocking` it declares
// that it cannot block (as no_store and in-memory stores do).
template <bool Nonblocking>
struct thread_noting_store {
    static constexpr bool nonblocking = Nonblocking;
    const test_support::test_loop* loop = nullptr;
    std::shared_ptr<std::atomic<int>> on_loop = std::make_shared<std::atomic<int>>(0);
    std::shared_ptr<std::atomic<int>> off_loop = std::make_shared<std::atomic<int>>(0);
    chatkit::result<void> append(const chatkit::exchange&) {
        ++*(loop->on_loop_thread() ? on_loop : off_loop);
        return {};
    }
    chatkit::result<chatkit::history_page> history(const chatkit::history_query&) { return chatkit::history_page{}; }
    chatkit::component_health health() { return {}; }
};
using loop_store = thread_noting_store<true>;
using pool_store = thread_noting_store<false>;
} // namespace

TEST_CASE("a store chosen at run time runs inline when the store it holds cannot block, on the pool when it can") {
    test_support::test_loop loop;
    chatkit::worker_pool pool{1};
    using variant = chatkit::store_variant<pool_store, loop_store>;
    static_assert(!variant::nonblocking); // the choice is made at run time

    loop_store inline_store;
    inline_store.loop = &loop;
    chatkit::service<async_echo, variant, chatkit::no_cache, summary_middleware> quick{
        chatkit::service_options{}, async_echo{}, variant{inline_store}, chatkit::no_cache{}, summary_middleware{}};
    recording_sink a;
    serve(quick, chat({{"content", "one"}}), a, &loop, &pool);
    REQUIRE(a.status == 200);
    CHECK(*inline_store.on_loop == 1);
    CHECK(*inline_store.off_loop == 0);

    pool_store durable;
    durable.loop = &loop;
    chatkit::service<async_echo, variant, chatkit::no_cache, summary_middleware> slow{
        chatkit::service_options{}, async_echo{}, variant{durable}, chatkit::no_cache{}, summary_middleware{}};
    recording_sink b;
    serve(slow, chat({{"content", "two"}}), b, &loop, &pool);
    REQUIRE(b.status == 200);
    CHECK(*durable.off_loop == 1); // a store that may block (an fsync) never runs on the loop
    CHECK(*durable.on_loop == 0);
}

namespace {

// A middleware whose hooks may block when told so (Middleware requirement 6): it records whether
// each hook ran on the loop thread.
struct blocking_counter {
    test_support::test_loop* loop = nullptr;
    bool may_block = true;
    std::shared_ptr<std::atomic<int>> on_loop = std::make_shared<std::atomic<int>>(0);
    std::shared_ptr<std::atomic<int>> off_loop = std::make_shared<std::atomic<int>>(0);
    void note() const { ++*(loop->on_loop_thread() ? on_loop : off_loop); }

    [[nodiscard]] bool blocks(const chatkit::http_request&) const { return may_block; }
    std::optional<chatkit::http_response> before(chatkit::http_request&, chatkit::no_context&) {
        note();
        return std::nullopt;
    }
    void after(const chatkit::http_request&, chatkit::http_response&, chatkit::no_context&) {}
    std::optional<chatkit::error> admit(const chatkit::http_request&, chatkit::chat_admission&, chatkit::no_context&) {
        note();
        return std::nullopt;
    }
    void finish(const chatkit::http_request&, const chatkit::response_summary&, chatkit::no_context&) { note(); }
};
static_assert(chatkit::middleware_may_block<blocking_counter>);

} // namespace

TEST_CASE("a middleware that says its hooks may block has before, admit and finish run on the pool, never on the loop") {
    test_support::test_loop loop;
    chatkit::worker_pool pool{1};
    for (const bool may_block : {true, false}) {
        CAPTURE(may_block);
        blocking_counter counter;
        counter.loop = &loop;
        counter.may_block = may_block;
        chatkit::service<async_echo, chatkit::no_store, chatkit::no_cache, blocking_counter> svc{
            chatkit::service_options{}, async_echo{}, chatkit::no_store{}, chatkit::no_cache{}, counter};
        recording_sink plain, streamed;
        serve(svc, chat({{"content", "one"}}), plain, &loop, &pool);
        serve(svc, chat({{"content", "two"}, {"stream", true}}), streamed, &loop, &pool);
        REQUIRE(plain.status == 200);
        REQUIRE(streamed.status == 200);
        // before, admit and finish of each request: 6 hooks, where the middleware said.
        CHECK(*counter.on_loop == (may_block ? 0 : 6));
        CHECK(*counter.off_loop == (may_block ? 6 : 0));
    }
}
