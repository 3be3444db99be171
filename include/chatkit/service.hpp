// The service: a Provider, a Store, a Cache and any Middlewares composed at compile time into one
// object that answers transport-neutral requests. It routes
//   POST /chat                 a completion (JSON, or Server-Sent Events with "stream": true)
//   GET  /history/{user_id}    a user's stored messages, paged back in time
//   GET  /health               each component's status
//   GET  /ready                whether to send this process traffic: 503 while draining
//   GET  /                     the service's name, version and routes
//   POST /v1/chat/completions  the same chat in the OpenAI wire format, for OpenAI clients
//   GET  /v1/models            the provider's models, OpenAI-style
//   POST /v1/messages          the same chat in the Anthropic Messages format, for Anthropic clients
//   POST /v1/responses         the same chat in the OpenAI Responses format, for Responses clients
//   /api/v1/conversations...   conversations, their messages (whole or streamed) and feedback,
//                              when the Store keeps them (chatkit/conversation_store.hpp)
// plus any routes the user adds. Adapters feed it requests; it never touches a socket.
//
// The request lifecycle: `serve(request, sink)` is a task that runs the middlewares' `before`,
// routes, runs their `after`, sends the answer through the adapter's sink, and runs their
// `finish` once the last byte is out (or the client left). Blocking plugins run on the worker pool
// of the task's environment and the task resumes on the connection's loop; async ones run on the
// loop. `handle(request)` is the blocking form of the same lifecycle, for simple adapters.
#pragma once

#include "chatkit/anthropic_api.hpp"
#include "chatkit/cache.hpp"
#include "chatkit/chat.hpp"
#include "chatkit/chat_body.hpp"
#include "chatkit/clock.hpp"
#include "chatkit/conversation_store.hpp"
#include "chatkit/conversations_api.hpp"
#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/middleware.hpp"
#include "chatkit/openai_api.hpp"
#include "chatkit/pricing.hpp"
#include "chatkit/provider.hpp"
#include "chatkit/random_id.hpp"
#include "chatkit/response_sink.hpp"
#include "chatkit/responses_api.hpp"
#include "chatkit/sse.hpp"
#include "chatkit/store.hpp"
#include "chatkit/task.hpp"
#include "chatkit/worker_pool.hpp"
#include "chatkit/version.hpp"

#include <nlohmann/json.hpp>

#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace chatkit {

struct service_options {
    request_limits limits;
    std::size_t max_body_bytes = 1 << 20;
    std::chrono::seconds cache_ttl{3600};
    std::size_t history_default_limit = 50;
    std::size_t history_max_limit = 100;
    std::string version = CHATKIT_VERSION;
    // What answers cost: every answer from a provider is priced with it (`cost_usd`), and chat
    // admission reserves a request's worst case against it. None: every answer is unpriced.
    std::shared_ptr<const price_table> prices{};
    // The completion tokens a chat request that names no max_tokens is admitted with (what token
    // limits and budgets reserve for it); when a middleware reserved them, that request is sent
    // upstream with this max_tokens. Below limits.max_tokens, so that a key with a modest
    // tokens-per-minute limit can still send requests without max_tokens.
    int default_max_tokens = 4096;
    // Every answer carries `Server-Timing: gateway;dur=MS, upstream;dur=MS`: the gateway's own time
    // and the provider's, so a client sees the overhead per request. For a stream, whose headers
    // leave before the provider is called, only the gateway's time until then.
    bool server_timing = true;
    // What GET / calls the service.
    std::string name = "chatkit";
    // The conversation routes' bounds and context window.
    conversations_api::limits conversations{};
    // A conversation's streamed turn the client left before its end is stored (the question and
    // the text it was sent) when true; by default nothing partial is stored.
    bool keep_abandoned_turns = false;
};

template <class P, class S = no_store, class C = no_cache, class... Ms>
class service {
    static_assert(provider_check<P>::value);
    static_assert(store_check<S>::value);
    static_assert(cache_check<C>::value);
    static_assert((middleware_check<Ms>::value && ...));

public:
    using context = request_context<Ms...>;
    using handler = std::function<http_response(http_request&, context&)>;

    // clang-format off: clang-format 14 reads the && of a requires clause as an rvalue reference
    service() requires(std::default_initializable<P>&& std::default_initializable<S>&& std::default_initializable<C> &&
                       (std::default_initializable<Ms> && ...)) = default;
    // clang-format on
    explicit service(P provider, S store = S{}, C cache = C{}, Ms... middlewares)
        : service(service_options{}, std::move(provider), std::move(store), std::move(cache), std::move(middlewares)...) {}
    service(service_options options, P provider, S store, C cache, Ms... middlewares)
        : options_(std::move(options)), provider_(std::move(provider)), store_(std::move(store)), cache_(std::move(cache)),
          middlewares_(std::move(middlewares)...) {}

    // The entry point: answers one request through the adapter's sink and finishes once the last
    // byte has been sent (or the client left). Never throws: an exception escaping a plugin
    // becomes a 500, or an error event once a stream has begun.
    task<void> serve(http_request req, response_sink* sink) { co_await serve_at(&req, sink); }

    // The blocking form, for adapters without an event loop (cpp-httplib, Lambda) and for tests:
    // runs the lifecycle on this thread. A streamed answer's body (and then the `finish` hooks)
    // runs when the adapter calls the response's `stream`. The request keeps what the
    // middlewares set on it (its request_id), for the caller's logs.
    http_response handle(http_request& req) {
        if (req.request_id.empty()) req.request_id = random_id(); // every answer, even a 429, carries one
        auto bridge = std::make_shared<blocking_bridge>(&req);
        auto done = [bridge = bridge.get(), req_id = req.request_id](std::exception_ptr e) {
            if (e && !bridge->started) bridge->head = error_response({error_kind::internal, "internal error", "internal_error"}, req_id);
        };
        start_detached(serve(req, bridge.get()), task_env{}, done);
        return blocking_bridge::response_of(std::move(bridge));
    }
    http_response handle(http_request&& req) { return handle(req); }

    // Adds a route, matched on the exact path before the built-in ones. Call before serving. A
    // handler is plain code: it runs on the worker pool, so it may block.
    void route(std::string method, std::string path, handler h) { routes_.push_back({std::move(method), std::move(path), std::move(h)}); }

    // When a chat's provider call began and how long it took, also when it failed (a trace's
    // upstream span, Server-Timing): what chat_async reports besides its answer.
    struct upstream_timing {
        std::chrono::steady_clock::time_point started{}; // none: no call (a cache hit)
        double ms = 0;
    };

    // The chat pipeline without HTTP: cache, provider, store. Sets latency, id and cached.
    task<result<completion>> chat_async(chat_request req, upstream_timing* timing = nullptr) {
        return chat_pipeline(std::move(req), timing, nullptr);
    }
    result<completion> chat(chat_request req) { return sync_wait(chat_async(std::move(req))); }

    // The provider's models: its `models()` when it has one (the first is its default).
    std::vector<std::string> models() {
        if constexpr (requires { provider_.models(); }) return provider_.models();
        else return {std::string{provider_.name()}};
    }

    [[nodiscard]] const service_options& options() const noexcept { return options_; }
    P& provider() noexcept { return provider_; }
    S& store() noexcept { return store_; }
    C& cache() noexcept { return cache_; }
    template <class M>
    M& middleware() noexcept {
        static_assert((std::same_as<M, Ms> || ...), "chatkit::service::middleware<M>: M is not one of the service's middlewares");
        return std::get<M>(middlewares_);
    }

    /// From now on GET /ready answers 503, so that load balancers stop sending this process new
    /// requests while it keeps serving; a program calls it on SIGTERM, some time before it stops
    /// its server. Thread-safe.
    void drain() noexcept { draining_->store(true, std::memory_order_relaxed); }
    [[nodiscard]] bool draining() const noexcept { return draining_->load(std::memory_order_relaxed); }

private:
    // What a conversation's turn records besides the answer: which conversation, the user's
    // message, and the id its answer will have.
    struct conversation_turn {
        conversation_ref conversation;
        conversation_message question;
        std::string answer_id;
    };

    // chat_async's pipeline; a conversation's turn is recorded in its conversation, any other
    // chat in its user's history.
    task<result<completion>> chat_pipeline(chat_request req, upstream_timing* timing, const conversation_turn* turn) {
        const auto started = std::chrono::steady_clock::now();
        if (req.request_id.empty()) req.request_id = random_id();
        req.stop = co_await current_stop_token();
        const std::string key = req.use_cache ? cache_key(req) : std::string{};
        std::optional<completion> answer;
        if (req.use_cache) {
            if ((answer = co_await cache_get(key))) {
                answer->cached = true;
                answer->upstream_ms = 0; // the cached answer's own call, not this request's
                answer->upstream_started = {};
                answer->provider.clear(); // no provider answered this request
            }
        }
        const bool fresh_answer = !answer;
        if (fresh_answer) {
            const auto called = std::chrono::steady_clock::now();
            auto fresh = co_await provider_complete(&req);
            if (timing) *timing = {called, elapsed_ms(called)};
            if (!fresh) co_return stopped_error(req, std::move(fresh).error());
            answer = std::move(fresh).value();
            answer->upstream_ms = elapsed_ms(called);
            answer->upstream_started = called;
            fill_defaults(*answer, req);
        }
        answer->id = random_id("chatcmpl-", 24);
        answer->created_at = now_unix_ms();
        answer->cost_usd = price(*answer);
        const double latency_ms = elapsed_ms(started);
        if (auto saved = co_await record(&req, &*answer, turn, latency_ms, 0); !saved) co_return std::move(saved).error();
        // Cached only once acknowledged: a retry after a failed append must not look like a hit.
        if (fresh_answer && req.use_cache) co_await cache_put(key, *answer);
        answer->latency_ms = turn ? latency_ms : elapsed_ms(started); // a turn's answer tells what was stored
        answer->time_to_first_token_ms = answer->latency_ms;
        co_return std::move(*answer);
    }

    struct custom_route {
        std::string method, path;
        handler fn;
    };

    // One request's progress through the sink, for its summary.
    struct exchange_state {
        response_sink* sink;
        std::chrono::steady_clock::time_point started;
        response_summary summary{};

        // Sends one chunk of a streamed body; false once the client is gone.
        task<bool> send(std::string chunk) {
            if (summary.client_left) co_return false;
            const bool ok = co_await write_chunk(sink, chunk);
            if (ok) summary.bytes_sent += chunk.size();
            else summary.client_left = true;
            co_return ok;
        }
        // The same from a blocking producer running without a pool (sinks then complete inline).
        bool send_now(std::string_view chunk) {
            if (summary.client_left) return false;
            const bool ok = write_chunk_now(sink, chunk);
            if (ok) summary.bytes_sent += chunk.size();
            else summary.client_left = true;
            return ok;
        }
    };

    // What a route answers: the response, and for a stream the task that produces its body once
    // the headers are out (lazy, so it has not started yet).
    struct routed {
        http_response res;
        std::optional<task<void>> body{};
    };

    task<void> serve_at(http_request* req, response_sink* sink) {
        exchange_state st{sink, std::chrono::steady_clock::now()};
        if (req->request_id.empty()) req->request_id = random_id();
        context ctx;
        std::size_t ran = 0; // middlewares whose before() ran: they get after() and finish()
        const bool blocking = middlewares_block(*req);
        std::optional<http_response> res;
        if (blocking) {
            auto call = [this, req, &ctx, &ran] { return run_before<0>(*req, ctx, ran); };
            res = co_await run_blocking(call);
        } else {
            res = run_before<0>(*req, ctx, ran);
        }
        std::optional<task<void>> body;
        if (!res) {
            try {
                routed r = co_await dispatch(req, &ctx, &st);
                res = std::move(r.res);
                body = std::move(r.body);
            } catch (const std::exception&) {
                res = internal_error(*req);
            }
        }
        run_after<sizeof...(Ms)>(*req, *res, ctx, ran);
        // Anthropic clients read only Anthropic's error envelope, whoever refused (a middleware too).
        if (req->path == "/v1/messages") anthropic_api::to_anthropic_error(*res);
        if (options_.server_timing) res->headers["Server-Timing"] = server_timing(elapsed_ms(st.started), res->meta.upstream_ms);

        auto& sum = st.summary;
        sum.status = res->status;
        sum.streamed = body.has_value() || res->is_stream();
        sum.model = res->meta.model;
        sum.usage = res->meta.usage;
        sum.cached = res->meta.cached;
        sum.time_to_first_token_ms = res->meta.time_to_first_token_ms;
        sum.error_code = res->meta.error_code;
        sum.cost_usd = res->meta.cost_usd;
        sum.upstream_ms = res->meta.upstream_ms;
        sum.finish_reason = res->meta.finish_reason;
        sum.upstream_started = res->meta.upstream_started;
        sum.provider = res->meta.provider.empty() ? std::string{provider_.name()} : res->meta.provider;
        if (!co_await start_response(sink, *req, *res, sum.streamed)) {
            sum.client_left = true;
        } else if (!sum.streamed) {
            sum.bytes_sent = res->body.size();
        } else {
            if (body) co_await std::move(*body);
            else co_await legacy_stream(&*res, &st);
            if (!sum.client_left && !co_await end_response(sink)) sum.client_left = true;
        }
        if (sink->peer_closed()) sum.client_left = true;
        sum.duration_ms = elapsed_ms(st.started);
        if (blocking) {
            auto call = [this, req, &sum, &ctx, ran] { run_finish<sizeof...(Ms)>(*req, sum, ctx, ran); };
            co_await run_blocking(call);
        } else {
            run_finish<sizeof...(Ms)>(*req, sum, ctx, ran);
        }
        sink->finished(sum);
    }

    template <std::size_t I>
    std::optional<http_response> run_before(http_request& req, context& ctx, std::size_t& ran) {
        if constexpr (I == sizeof...(Ms)) {
            return std::nullopt;
        } else {
            ran = I + 1;
            try {
                if (auto early = std::get<I>(middlewares_).before(req, ctx.template at<I>())) return early;
            } catch (const std::exception&) {
                return internal_error(req);
            }
            return run_before<I + 1>(req, ctx, ran);
        }
    }

    template <std::size_t I>
    void run_after(const http_request& req, http_response& res, context& ctx, std::size_t ran) {
        if constexpr (I > 0) {
            if (I <= ran) {
                try {
                    std::get<I - 1>(middlewares_).after(req, res, ctx.template at<I - 1>());
                } catch (const std::exception&) {
                    res = internal_error(req);
                }
            }
            run_after<I - 1>(req, res, ctx, ran);
        }
    }

    // Middleware requirement 6: whether any middleware says its hooks may block now; the service
    // then runs the hooks on the worker pool.
    [[nodiscard]] bool middlewares_block(const http_request& req) const {
        return std::apply([&req](const auto&... m) { return (blocks(m, req) || ...); }, middlewares_);
    }
    template <class M>
    static bool blocks(const M& m, const http_request& req) {
        if constexpr (middleware_may_block<M>) return m.blocks(req);
        else return false;
    }

    // admit() below, on the worker pool when a middleware may block.
    task<std::optional<error>> admit_chat(const http_request* req, chat_request* chat, context* ctx) {
        if (!middlewares_block(*req)) co_return admit(*req, *chat, *ctx);
        auto call = [this, req, chat, ctx] { return admit(*req, *chat, *ctx); };
        co_return co_await run_blocking(call);
    }

    // Middleware requirement 5: the chat request's bounds, to every middleware with an `admit`.
    std::optional<error> admit(const http_request& req, chat_request& chat, context& ctx) {
        if constexpr ((middleware_has_admit<Ms> || ...)) {
            chat_admission a;
            a.model = chat.model.empty() ? models().front() : chat.model;
            a.prompt_token_bound = prompt_token_bound(req.body.size(), chat.messages.size());
            a.max_completion_tokens = chat.max_tokens ? *chat.max_tokens
                                                      : std::min(options_.default_max_tokens, options_.limits.max_tokens);
            if (options_.prices) a.worst_case_usd = options_.prices->worst_case_usd(a.model, a.prompt_token_bound, a.max_completion_tokens);
            auto refused = run_admit<0>(req, a, ctx);
            if (!refused && a.bounds_reserved && !chat.max_tokens) chat.max_tokens = static_cast<int>(a.max_completion_tokens);
            return refused;
        } else {
            return std::nullopt;
        }
    }
    template <std::size_t I>
    std::optional<error> run_admit(const http_request& req, chat_admission& a, context& ctx) {
        if constexpr (I == sizeof...(Ms)) {
            return std::nullopt;
        } else {
            using M = std::tuple_element_t<I, std::tuple<Ms...>>;
            if constexpr (middleware_has_admit<M>) {
                if (auto refused = std::get<I>(middlewares_).admit(req, a, ctx.template at<I>())) return refused;
            }
            return run_admit<I + 1>(req, a, ctx);
        }
    }

    template <std::size_t I>
    void run_finish(const http_request& req, const response_summary& sum, context& ctx, std::size_t ran) {
        if constexpr (I > 0) {
            using M = std::tuple_element_t<I - 1, std::tuple<Ms...>>;
            if constexpr (middleware_has_finish<M>) {
                if (I <= ran) {
                    try {
                        std::get<I - 1>(middlewares_).finish(req, sum, ctx.template at<I - 1>());
                    } catch (const std::exception&) {
                        // the answer is out: nothing is left to tell the client
                    }
                }
            }
            run_finish<I - 1>(req, sum, ctx, ran);
        }
    }

    task<routed> dispatch(http_request* req_ptr, context* ctx, exchange_state* st) {
        http_request& req = *req_ptr;
        for (auto& r : routes_)
            if (r.path == req.path && r.method == req.method) {
                auto call = [&r, &req, ctx] { return r.fn(req, *ctx); };
                auto res = co_await run_blocking(call); // GCC 12: no co_await inside a braced initializer
                co_return routed{std::move(res)};
            }
        if (req.path == "/chat") {
            if (req.method == "POST") co_return co_await handle_chat(req_ptr, ctx, st);
            co_return routed{wrong_method(req, "POST")};
        }
        if (req.path == "/health") co_return routed{is_get(req) ? handle_health() : wrong_method(req, "GET")};
        if (req.path == "/ready") co_return routed{is_get(req) ? handle_ready() : wrong_method(req, "GET")};
        if (req.path == "/") co_return routed{is_get(req) ? handle_root() : wrong_method(req, "GET")};
        // POST /v1/chat: the same route under the shorter name some gateway clients call.
        if (req.path == "/v1/chat/completions" || req.path == "/v1/chat") {
            if (req.method == "POST") co_return co_await handle_openai_chat(req_ptr, ctx, st);
            co_return routed{wrong_method(req, "POST")};
        }
        if (req.path == "/v1/messages") {
            if (req.method == "POST") co_return co_await handle_anthropic_messages(req_ptr, ctx, st);
            co_return routed{wrong_method(req, "POST")};
        }
        if (req.path == "/v1/responses") {
            if (req.method == "POST") co_return co_await handle_responses(req_ptr, ctx, st);
            co_return routed{wrong_method(req, "POST")};
        }
        if (req.path == "/v1/models")
            co_return routed{is_get(req) ? json_response(200, openai_api::models_list(models(), provider_.name(), options_.prices.get()))
                                         : wrong_method(req, "GET")};
        if (req.path.starts_with(conversations_api::prefix)) {
            if constexpr (conversation_store<S>) co_return co_await handle_conversations(req_ptr, ctx, st);
            else co_return routed{not_found(req)};
        }
        if (req.path.starts_with("/history/")) {
            const std::string_view user_id = std::string_view{req.path}.substr(9);
            if (user_id.empty() || user_id.find('/') != std::string_view::npos) co_return routed{not_found(req)};
            if (!is_get(req)) co_return routed{wrong_method(req, "GET")};
            auto res = co_await handle_history(req_ptr);
            co_return routed{std::move(res)};
        }
        co_return routed{not_found(req)};
    }

    task<routed> handle_chat(http_request* req_ptr, context* ctx, exchange_state* st) {
        const http_request& req = *req_ptr;
        auto parsed = parse_body(req);
        if (!parsed) co_return routed{error_response(parsed.error(), req.request_id)};
        auto chat_req = parse_chat_request(*parsed, options_.limits);
        if (!chat_req) co_return routed{error_response(chat_req.error(), req.request_id)};
        chat_req->request_id = req.request_id;
        chat_req->traceparent = req.header("traceparent");
        chat_req->user_id = history_owner(req, chat_req->user_id);
        auto refused = co_await admit_chat(req_ptr, &*chat_req, ctx);
        if (refused) co_return routed{error_response(*refused, req.request_id)};
        if (chat_req->stream) co_return stream_answer(std::move(*chat_req), chatkit_framing{}, st);

        upstream_timing timing;
        auto answer = co_await chat_async(std::move(*chat_req), &timing);
        if (!answer) co_return routed{upstream_error_response(answer.error(), req.request_id, timing)};
        auto res = json_response(200, answer_json(*answer, req.request_id));
        describe_answer(res, *answer);
        co_return routed{std::move(res)};
    }

    task<routed> handle_openai_chat(http_request* req_ptr, context* ctx, exchange_state* st) {
        const http_request& req = *req_ptr;
        auto parsed = parse_body(req);
        if (!parsed) co_return routed{error_response(parsed.error(), req.request_id)};
        auto chat_req = openai_api::parse_request(*parsed, options_.limits);
        if (!chat_req) co_return routed{error_response(chat_req.error(), req.request_id)};
        chat_req->request_id = req.request_id;
        chat_req->traceparent = req.header("traceparent");
        chat_req->user_id = history_owner(req, chat_req->user_id);
        auto refused = co_await admit_chat(req_ptr, &*chat_req, ctx);
        if (refused) co_return routed{error_response(*refused, req.request_id)};
        if (chat_req->stream) {
            const auto model = chat_req->model.empty() ? models().front() : chat_req->model;
            co_return stream_answer(std::move(*chat_req),
                                    openai_framing{openai_api::completion_chunks{random_id("chatcmpl-", 24), model, now_unix_ms()},
                                                   openai_api::wants_stream_usage(*parsed), this, &req.caller},
                                    st);
        }
        upstream_timing timing;
        auto answer = co_await chat_async(std::move(*chat_req), &timing);
        if (!answer) co_return routed{upstream_error_response(answer.error(), req.request_id, timing)};
        std::string text = openai_api::completion_text(*answer);
        text.pop_back(); // the closing brace: gateway_metadata goes last
        text += R"(,"gateway_metadata":)";
        append_gateway_metadata(text, req.caller, *answer);
        text += '}';
        auto res = json_text_response(200, std::move(text));
        res.headers.emplace("X-Cache", answer->cached ? "hit" : "miss");
        describe_answer(res, *answer);
        co_return routed{std::move(res)};
    }

    task<routed> handle_anthropic_messages(http_request* req_ptr, context* ctx, exchange_state* st) {
        const http_request& req = *req_ptr;
        auto parsed = parse_body(req);
        if (!parsed) co_return routed{error_response(parsed.error(), req.request_id)};
        auto chat_req = anthropic_api::parse_request(*parsed, options_.limits);
        if (!chat_req) co_return routed{error_response(chat_req.error(), req.request_id)};
        chat_req->request_id = req.request_id;
        chat_req->traceparent = req.header("traceparent");
        chat_req->user_id = history_owner(req, chat_req->user_id);
        auto refused = co_await admit_chat(req_ptr, &*chat_req, ctx);
        if (refused) co_return routed{error_response(*refused, req.request_id)};
        if (chat_req->stream) {
            auto model = chat_req->model;
            co_return stream_answer(std::move(*chat_req),
                                    anthropic_framing{anthropic_api::event_writer{random_id("msg_", 24), std::move(model)}}, st);
        }
        upstream_timing timing;
        auto answer = co_await chat_async(std::move(*chat_req), &timing);
        if (!answer) co_return routed{upstream_error_response(answer.error(), req.request_id, timing)};
        auto res = json_response(200, anthropic_api::message_object(*answer, random_id("msg_", 24)));
        res.headers.emplace("X-Cache", answer->cached ? "hit" : "miss");
        describe_answer(res, *answer);
        co_return routed{std::move(res)};
    }

    task<routed> handle_responses(http_request* req_ptr, context* ctx, exchange_state* st) {
        const http_request& req = *req_ptr;
        auto parsed = parse_body(req);
        if (!parsed) co_return routed{error_response(parsed.error(), req.request_id)};
        auto chat_req = responses_api::parse_request(*parsed, options_.limits);
        if (!chat_req) co_return routed{error_response(chat_req.error(), req.request_id)};
        chat_req->request_id = req.request_id;
        chat_req->traceparent = req.header("traceparent");
        chat_req->user_id = history_owner(req, chat_req->user_id);
        auto refused = co_await admit_chat(req_ptr, &*chat_req, ctx);
        if (refused) co_return routed{error_response(*refused, req.request_id)};
        responses_api::response_head head;
        head.id = random_id("resp_", 24);
        head.model = chat_req->model.empty() ? models().front() : chat_req->model;
        head.created_at = now_unix_ms() / 1000;
        head.request = std::move(parsed).value();
        if (chat_req->stream)
            co_return stream_answer(std::move(*chat_req), responses_framing{responses_api::event_writer{std::move(head)}}, st);
        upstream_timing timing;
        auto answer = co_await chat_async(std::move(*chat_req), &timing);
        if (!answer) co_return routed{upstream_error_response(answer.error(), req.request_id, timing)};
        auto res = json_response(200, responses_api::response_object(*answer, std::move(head)));
        res.headers.emplace("X-Cache", answer->cached ? "hit" : "miss");
        describe_answer(res, *answer);
        co_return routed{std::move(res)};
    }

    // chatkit's own stream: `event: delta` per text delta, then `event: done` carrying the same
    // object as the JSON answer, or `event: error` carrying the error envelope.
    struct chatkit_framing {
        std::string id = random_id("chatcmpl-", 24);
        // `{"content":TEXT}` without building a JSON tree per delta: one string escape.
        std::string delta(std::string_view text) {
            std::string out = "event: delta\ndata: {\"content\":";
            out.append(dump_json(nlohmann::json(text))).append("}\n\n");
            return out;
        }
        std::string done(const completion& c, std::string_view request_id) {
            return sse_event("done", dump_json(answer_json(c, request_id)));
        }
        static std::string tool_call(const tool_call_delta&) { return {}; } // /chat takes no tools
        static std::string failure(const error& e, std::string_view request_id) {
            auto body = to_envelope(e);
            body["request_id"] = request_id;
            return sse_event("error", dump_json(body));
        }
        static std::string internal_failure(std::string_view request_id) {
            return failure({error_kind::internal, "internal error", "internal_error"}, request_id);
        }
    };

    // The OpenAI stream: `chat.completion.chunk` events, then `data: [DONE]`.
    struct openai_framing {
        openai_api::completion_chunks chunks;
        bool include_usage = false;
        const service* owner = nullptr;
        const caller_identity* caller = nullptr; // the request's: it outlives the stream
        std::string id = chunks.id();
        std::string delta(std::string_view text) { return chunks.delta(text); }
        std::string tool_call(const tool_call_delta& piece) { return chunks.tool_call(piece); }
        std::string done(const completion& c, std::string_view) {
            return chunks.finish(c, include_usage, owner->gateway_metadata_of(*caller, c));
        }
        static std::string failure(const error& e, std::string_view) { return openai_api::error_event(e); }
        static std::string internal_failure(std::string_view) {
            return openai_api::error_event({error_kind::internal, "internal error", "internal_error"});
        }
    };

    // The Anthropic Messages stream: message_start ... message_stop, or an `error` event.
    struct anthropic_framing {
        anthropic_api::event_writer events;
        std::string id = events.id();
        std::string delta(std::string_view text) { return events.delta(text); }
        std::string tool_call(const tool_call_delta& piece) { return events.tool_call(piece); }
        std::string done(const completion& c, std::string_view) { return events.finish(c); }
        static std::string failure(const error& e, std::string_view request_id) { return anthropic_api::error_event(e, request_id); }
        static std::string internal_failure(std::string_view request_id) {
            return failure({error_kind::internal, "internal error", "internal_error"}, request_id);
        }
    };

    // The Responses stream: response.created ... response.completed, or response.failed.
    struct responses_framing {
        responses_api::event_writer events;
        std::string id = events.id();
        std::string delta(std::string_view text) { return events.delta(text); }
        std::string tool_call(const tool_call_delta& piece) { return events.tool_call(piece); }
        std::string done(const completion& c, std::string_view) { return events.finish(c); }
        std::string failure(const error& e, std::string_view) { return events.failure(e); }
        std::string internal_failure(std::string_view request_id) {
            return failure({error_kind::internal, "internal error", "internal_error"}, request_id);
        }
    };

    // A conversation's streamed turn: `data: {"content":...,"done":false}` per delta, then a
    // closing `done` event naming the stored answer (chatkit/conversations_api.hpp).
    struct conversation_framing {
        conversation_turn turn;
        bool keep_text = false; // for keep_abandoned_turns: what the client was sent
        std::string delivered{};
        std::string id = turn.answer_id;
        std::string delta(std::string_view text) {
            if (keep_text) delivered.append(text);
            return conversations_api::delta_event(text);
        }
        static std::string tool_call(const tool_call_delta&) { return {}; } // the route takes no tools
        std::string done(const completion& c, std::string_view) {
            return conversations_api::done_event(turn.answer_id, turn.conversation.id, c.usage, c.cost_usd);
        }
        static std::string failure(const error& e, std::string_view request_id) { return conversations_api::error_event(e, request_id); }
        static std::string internal_failure(std::string_view request_id) {
            return failure({error_kind::internal, "internal error", "internal_error"}, request_id);
        }
    };

    template <class Framing>
    routed stream_answer(chat_request req, Framing framing, exchange_state* st) {
        http_response res;
        res.headers.emplace("Content-Type", "text/event-stream");
        res.headers.emplace("Cache-Control", "no-cache");
        res.headers.emplace("X-Accel-Buffering", "no"); // keep reverse proxies from buffering the stream
        return routed{std::move(res), stream_body(std::move(req), std::move(framing), st)};
    }

    // Frames a stream's deltas, notes the first one's time, and sends them: what an async
    // provider writes to, and what a blocking one's deltas pass through.
    template <class Framing>
    struct delta_framer final : delta_writer::target {
        exchange_state* st;
        Framing* framing;
        std::chrono::steady_clock::time_point started;
        double first_token_ms = -1;
        std::size_t text_bytes = 0; // of the deltas framed: what bills a stream left unfinished

        std::string frame(std::string_view text) {
            if (first_token_ms < 0) first_token_ms = elapsed_ms(started);
            text_bytes += text.size();
            return framing->delta(text);
        }
        task<bool> write(std::string_view text) override { return st->send(frame(text)); }
        bool write_now(std::string_view text) override { return st->send_now(frame(text)); }
        task<bool> write_tool_call(const tool_call_delta& piece) override {
            if (first_token_ms < 0) first_token_ms = elapsed_ms(started);
            text_bytes += piece.arguments.size();
            return st->send(framing->tool_call(piece));
        }
    };

    // The streamed form of chat(): cache, provider stream, durable store, then the closing event.
    // A failure after the first byte can only be reported in the stream, never as a status.
    template <class Framing>
    task<void> stream_body(chat_request req, Framing framing, exchange_state* st) {
        bool failed = false;
        try {
            co_await stream_chat(&req, &framing, st);
        } catch (const std::exception&) {
            failed = true; // a plugin threw: end the stream with an error event
        }
        if (failed) {
            st->summary.error_code = "internal_error";
            co_await st->send(framing.internal_failure(req.request_id));
        }
    }

    template <class Framing>
    task<void> stream_chat(chat_request* req_ptr, Framing* framing, exchange_state* st) {
        chat_request& req = *req_ptr;
        req.stop = co_await current_stop_token();
        delta_framer<Framing> out;
        out.st = st;
        out.framing = framing;
        out.started = std::chrono::steady_clock::now();

        const std::string key = req.use_cache ? cache_key(req) : std::string{};
        std::optional<completion> answer;
        bool fresh_answer = false;
        if (req.use_cache && (answer = co_await cache_get(key))) {
            answer->cached = true;
            answer->upstream_ms = 0;
            answer->upstream_started = {};
            answer->provider.clear();
            if (!co_await out.write(answer->content)) co_return;
        } else {
            const auto called = std::chrono::steady_clock::now();
            auto streamed = co_await provider_stream(req_ptr, &out);
            st->summary.upstream_ms = elapsed_ms(called);
            st->summary.upstream_started = called;
            if (st->summary.client_left || !streamed) bill_unfinished(req, streamed ? &*streamed : nullptr, out.text_bytes, st->summary);
            if (st->summary.client_left) { // an unacknowledged, partial reply is neither stored nor cached
                if constexpr (requires { framing->turn; }) co_await keep_abandoned_turn(&req, framing, st);
                co_return;
            }
            if (!streamed) {
                auto e = stopped_error(req, std::move(streamed).error());
                st->summary.error_code = e.code;
                if (!e.provider.empty()) st->summary.provider = e.provider;
                co_await st->send(framing->failure(e, req.request_id));
                co_return;
            }
            answer = std::move(streamed).value();
            answer->upstream_ms = st->summary.upstream_ms;
            fill_defaults(*answer, req);
            fresh_answer = true;
        }
        answer->id = framing->id;
        answer->created_at = now_unix_ms();
        answer->time_to_first_token_ms = std::max(out.first_token_ms, 0.0);
        answer->cost_usd = price(*answer);
        auto& sum = st->summary;
        sum.model = answer->model;
        sum.usage = answer->usage;
        sum.cached = answer->cached;
        sum.cost_usd = answer->cost_usd;
        sum.time_to_first_token_ms = answer->time_to_first_token_ms;
        sum.finish_reason = answer->finish_reason;
        sum.provider = served_by(*answer);
        const conversation_turn* turn = nullptr;
        if constexpr (requires { framing->turn; }) turn = &framing->turn;
        if (auto saved = co_await record(req_ptr, &*answer, turn, elapsed_ms(out.started), answer->time_to_first_token_ms); !saved) {
            sum.error_code = saved.error().code;
            co_await st->send(framing->failure(saved.error(), req.request_id));
            co_return;
        }
        if (fresh_answer && req.use_cache) co_await cache_put(key, *answer);
        answer->latency_ms = elapsed_ms(out.started);
        co_await st->send(framing->done(*answer, req.request_id));
    }

    // With keep_abandoned_turns, a conversation's turn the client left is stored as far as it
    // was sent, so the conversation shows what its user saw. Nothing when nothing was sent.
    template <class Framing>
    task<void> keep_abandoned_turn(const chat_request* req, Framing* framing, exchange_state* st) {
        if (!options_.keep_abandoned_turns || framing->delivered.empty()) co_return;
        completion partial;
        partial.content = framing->delivered;
        partial.model = st->summary.model;
        partial.usage = st->summary.usage;
        partial.cost_usd = st->summary.cost_usd;
        partial.provider = st->summary.provider;
        partial.finish_reason = "abandoned";
        partial.created_at = now_unix_ms();
        (void)co_await record(req, &partial, &framing->turn, elapsed_ms(st->started), 0); // the client is gone: nobody to tell
    }

    // A route's body in the older form, a blocking `stream(write, meta)` callback: run on the pool
    // with its chunks carried to the loop, or inline without a pool.
    task<void> legacy_stream(http_response* res, exchange_state* st) {
        const auto env = co_await current_env();
        if (!env.pool) {
            const chunk_writer write = [st](std::string_view chunk) { return st->send_now(chunk); };
            res->stream(write, res->meta);
        } else {
            auto produce = [res](blocking_channel& ch) {
                const chunk_writer write = [&ch](std::string_view chunk) { return ch.put(chunk); };
                res->stream(write, res->meta);
                return true;
            };
            blocking_producer<decltype(produce)> job{produce, env.pool};
            while (auto chunk = co_await job.channel().next()) {
                const bool ok = co_await st->send(std::string{*chunk});
                job.channel().ack(ok);
            }
            co_await job;
        }
        st->summary.model = res->meta.model;
        st->summary.usage = res->meta.usage;
        st->summary.cached = res->meta.cached;
        st->summary.time_to_first_token_ms = res->meta.time_to_first_token_ms;
        st->summary.cost_usd = res->meta.cost_usd;
        st->summary.upstream_ms = res->meta.upstream_ms;
        st->summary.finish_reason = res->meta.finish_reason;
        st->summary.upstream_started = res->meta.upstream_started;
    }

    // The provider's calls, by its form (chatkit/provider.hpp).
    task<result<completion>> provider_complete(const chat_request* req) { return call_complete(&provider_, req); }

    template <class Framing>
    task<result<completion>> provider_stream(const chat_request* req, delta_framer<Framing>* out) {
        return call_stream(&provider_, req, delta_writer{out});
    }

    // A blocking plugin's call on the worker pool, or inline on the loop when the plugin declares
    // it cannot block, or when a run-time choice of plugins holds one that cannot (a
    // store_variant holding no_store: a pool hop per request for nothing). `f` owns what it
    // needs: it lives in this coroutine's frame.
    template <class Plugin, class F>
    static task<std::invoke_result_t<F&>> call_plugin(const Plugin* plugin, F f) {
        if constexpr (declared_nonblocking<Plugin>) {
            co_return f();
        } else {
            if constexpr (requires { plugin->holds_nonblocking(); }) {
                if (plugin->holds_nonblocking()) co_return f();
            }
            co_return co_await run_blocking(std::move(f));
        }
    }

    // An async cache or store is awaited where the request runs; a blocking one goes through
    // call_plugin.
    task<std::optional<completion>> cache_get(std::string key) {
        if constexpr (async_cache<C>) return cache_.get(std::move(key));
        else return call_plugin(&cache_, [this, key = std::move(key)] { return cache_.get(key); });
    }
    task<void> cache_put(std::string key, completion value) {
        if constexpr (async_cache<C>) return cache_.put(std::move(key), std::move(value), options_.cache_ttl);
        else
            return call_plugin(&cache_,
                               [this, key = std::move(key), value = std::move(value)] { cache_.put(key, value, options_.cache_ttl); });
    }
    // A durable append (an fsync) never runs on a loop thread, unless the store says it cannot block.
    task<result<void>> store_append(exchange e) {
        if constexpr (async_store<S>) return store_.append(std::move(e));
        else return call_plugin(&store_, [this, e = std::move(e)] { return store_.append(e); });
    }
    task<result<history_page>> store_history(history_query q) {
        if constexpr (async_store<S>) return store_.history(std::move(q));
        else return call_plugin(&store_, [this, q = std::move(q)] { return store_.history(q); });
    }
    // A ConversationStore's member (blocking: on the pool unless the store cannot block).
    template <class F>
    task<std::invoke_result_t<F&>> on_store(F f) {
        return call_plugin(&store_, std::move(f));
    }

    // Makes an answered chat durable: in its conversation for a conversation's turn, else in the
    // user's history. The service acknowledges nothing before this succeeds.
    task<result<void>> record(const chat_request* req, const completion* c, const conversation_turn* turn, double latency_ms,
                              double first_token_ms) {
        if constexpr (conversation_store<S>) {
            if (turn) {
                conversation_append a{turn->conversation, {turn->question, conversation_message{}}, c->created_at};
                auto& answer = a.messages.back();
                answer.id = turn->answer_id;
                answer.conversation_id = turn->conversation.id;
                answer.role = role::assistant;
                answer.content = c->content;
                answer.provider = served_by(*c);
                answer.model = c->model;
                answer.usage = c->usage;
                answer.cost_usd = c->cost_usd;
                answer.latency_ms = latency_ms;
                answer.time_to_first_token_ms = first_token_ms > 0 ? first_token_ms : latency_ms;
                answer.request_id = req->request_id;
                answer.created_at = c->created_at;
                return on_store([this, a = std::move(a)] { return store_.append_to_conversation(a); });
            }
        }
        (void)turn, (void)latency_ms, (void)first_token_ms;
        return store_append(make_exchange(*req, *c));
    }

    // A provider's failure once the request was stopped is reported as what stopped it.
    static error stopped_error(const chat_request& req, error e) {
        if (req.stop.stop_requested() && e.kind != error_kind::timeout)
            return {error_kind::timeout, "the request was cancelled before the provider answered", "request_cancelled"};
        return e;
    }

    // The blocking adapter's sink: the head is taken during handle(); a streamed body runs when
    // the adapter calls the response's `stream`, its chunks written through the adapter's writer.
    class blocking_bridge final : public response_sink {
    public:
        explicit blocking_bridge(http_request* caller) : caller_(caller) {}
        blocking_bridge(const blocking_bridge&) = delete;
        blocking_bridge& operator=(const blocking_bridge&) = delete;
        // A stream the adapter never ran: the client is treated as gone, so the request finishes.
        ~blocking_bridge() {
            gone_ = true;
            if (auto p = std::exchange(pending_, std::nullopt)) (*p)(false);
        }

        void start(const http_request& req, const http_response& res, bool streamed, callback done) override {
            started = true;
            if (caller_) { // what the middlewares set on the request, back to handle()'s caller
                caller_->request_id = req.request_id;
                caller_->headers = req.headers;
                caller_ = nullptr;
            }
            head = res;
            head.stream = nullptr;
            if (!streamed) return done(true);
            streaming_ = true;
            pending_ = done;
        }
        void write(std::string_view chunk, callback done) override {
            if (!gone_ && !(writer_ && (*writer_)(chunk))) gone_ = true;
            done(!gone_);
        }
        void end(callback done) override { done(!gone_); }
        void finished(const response_summary& s) noexcept override {
            head.meta.model = s.model;
            head.meta.usage = s.usage;
            head.meta.cached = s.cached;
            head.meta.time_to_first_token_ms = s.time_to_first_token_ms;
            head.meta.error_code = s.error_code;
            head.meta.cost_usd = s.cost_usd;
            head.meta.upstream_ms = s.upstream_ms;
            head.meta.finish_reason = s.finish_reason;
            head.meta.upstream_started = s.upstream_started;
        }

        static http_response response_of(std::shared_ptr<blocking_bridge> self) {
            http_response res = self->head;
            if (self->streaming_) {
                res.stream = [self](const chunk_writer& write, response_meta& meta) {
                    self->writer_ = &write;
                    if (auto p = std::exchange(self->pending_, std::nullopt)) (*p)(true); // the body runs here
                    self->writer_ = nullptr;
                    meta = self->head.meta;
                };
            }
            return res;
        }

        bool started = false;
        http_response head{};

    private:
        http_request* caller_;
        bool streaming_ = false, gone_ = false;
        std::optional<callback> pending_{};
        const chunk_writer* writer_ = nullptr;
    };

    task<http_response> handle_history(const http_request* req_ptr) {
        const http_request& req = *req_ptr;
        const std::string_view user_id = std::string_view{req.path}.substr(9);
        const auto& limits = options_.limits;
        if (user_id.size() > limits.max_user_id_bytes || detail::has_control_characters(user_id))
            co_return error_response(
                detail::invalid("user_id must be 1 to " + std::to_string(limits.max_user_id_bytes) + " bytes without control characters",
                                "user_id"),
                req.request_id);
        history_query query{history_owner(req, user_id), options_.history_default_limit, {}};
        if (auto it = req.query.find("limit"); it != req.query.end()) {
            std::size_t n = 0;
            const auto& s = it->second;
            auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
            if (ec != std::errc{} || end != s.data() + s.size() || n < 1 || n > options_.history_max_limit)
                co_return error_response(
                    detail::invalid("'limit' must be an integer from 1 to " + std::to_string(options_.history_max_limit), "limit"),
                    req.request_id);
            query.limit = n;
        }
        if (auto it = req.query.find("before"); it != req.query.end()) query.before = it->second;

        auto page = co_await store_history(std::move(query));
        if (!page) co_return error_response(page.error(), req.request_id);
        co_return history_response(user_id, *page);
    }

    // /api/v1/conversations...: routes by path and method; every answer in chatkit's envelope.
    task<routed> handle_conversations(http_request* req_ptr, context* ctx, exchange_state* st) {
        using kind = conversations_api::target::kind;
        const http_request& req = *req_ptr;
        const auto target = conversations_api::parse_path(req.path);
        if (target.route == kind::none) co_return routed{not_found(req)};
        const bool get = is_get(req), post = req.method == "POST";
        std::optional<task<http_response>> answer; // the route's (lazy), awaited below: never inside braces (GCC 12)
        std::string_view allowed = "GET, POST";
        if (target.route == kind::collection) {
            if (post) answer = create_conversation(req_ptr);
            else if (get) answer = list_conversations(req_ptr);
        } else {
            auto id = conversations_api::parse_id(target.id, "id");
            if (!id) co_return routed{error_response(id.error(), req.request_id)};
            conversation_ref ref{conversation_owner(req), std::move(*id)};
            switch (target.route) {
            case kind::conversation:
                allowed = "GET, PATCH, DELETE";
                if (get) answer = show_conversation(req_ptr, std::move(ref));
                else if (req.method == "PATCH") answer = update_conversation(req_ptr, std::move(ref));
                else if (req.method == "DELETE") answer = delete_conversation(req_ptr, std::move(ref));
                break;
            case kind::messages:
                if (post) co_return co_await conversation_turn_route(req_ptr, ctx, st, std::move(ref), false);
                if (get) answer = list_conversation_messages(req_ptr, std::move(ref));
                break;
            case kind::stream:
                if (post || get) co_return co_await conversation_turn_route(req_ptr, ctx, st, std::move(ref), true);
                break;
            case kind::feedback:
                if (post) answer = add_feedback(req_ptr, std::move(ref));
                else if (get) answer = list_feedback(req_ptr, std::move(ref));
                break;
            default: break;
            }
        }
        if (!answer) co_return routed{wrong_method(req, allowed)};
        auto res = co_await std::move(*answer);
        co_return routed{std::move(res)};
    }

    // With authentication on, a conversation belongs to the calling key's team (the admin key's
    // own scope when it has none); without, to everyone. Another scope's conversations do not
    // exist for the caller: 404, never 403.
    static std::string conversation_owner(const http_request& req) {
        if (!req.caller.authenticated()) return {};
        return "team:" + req.caller.team_id;
    }

    task<http_response> create_conversation(const http_request* req_ptr) {
        const http_request& req = *req_ptr;
        auto parsed = parse_body(req);
        if (!parsed) co_return error_response(parsed.error(), req.request_id);
        auto c = conversations_api::parse_create(*parsed, options_.limits, options_.conversations);
        if (!c) co_return error_response(c.error(), req.request_id);
        c->id = conversations_api::make_uuid();
        c->owner = conversation_owner(req);
        c->created_at = c->updated_at = now_unix_ms();
        auto call = [&] { return store_.create_conversation(*c); };
        auto created = co_await on_store(call);
        if (!created) co_return error_response(created.error(), req.request_id);
        co_return json_response(201, *c);
    }

    task<http_response> list_conversations(const http_request* req_ptr) {
        const http_request& req = *req_ptr;
        conversation_query q;
        q.owner = conversation_owner(req);
        const auto user = req.query.find("user_id");
        if (user == req.query.end() || user->second.empty())
            co_return error_response(detail::invalid("'user_id' is required", "user_id", "missing_field"), req.request_id);
        q.user_id = user->second;
        auto limit = conversations_api::parse_limit(req.query, options_.conversations.default_page, options_.conversations.max_page);
        if (!limit) co_return error_response(limit.error(), req.request_id);
        q.limit = *limit;
        if (auto it = req.query.find("cursor"); it != req.query.end()) q.cursor = it->second;
        auto call = [&] { return store_.conversations(q); };
        auto page = co_await on_store(call);
        if (!page) co_return error_response(page.error(), req.request_id);
        co_return conversation_list_response(*page);
    }
    static http_response conversation_list_response(const conversation_page& page) {
        return json_response(
            200, {{"conversations", page.conversations}, {"next_cursor", page.next_cursor ? nlohmann::json(*page.next_cursor) : nullptr}});
    }

    // The conversation, its totals, and its first page of messages (oldest first; `?limit=`,
    // `next_cursor` continues at .../messages?cursor=).
    task<http_response> show_conversation(const http_request* req_ptr, conversation_ref ref) {
        const http_request& req = *req_ptr;
        auto limit = conversations_api::parse_limit(req.query, options_.history_default_limit, options_.history_max_limit);
        if (!limit) co_return error_response(limit.error(), req.request_id);
        auto find = [&] { return store_.find_conversation(ref); };
        auto c = co_await on_store(find);
        if (!c) co_return error_response(c.error(), req.request_id);
        const conversation_message_query q{ref, *limit, {}, false};
        auto read = [&] { return store_.conversation_messages(q); };
        auto page = co_await on_store(read);
        if (!page) co_return error_response(page.error(), req.request_id);
        co_return conversation_response(*c, *page);
    }
    static http_response conversation_response(const conversation& c, const conversation_message_page& page) {
        nlohmann::json j = c;
        j["messages"] = page.messages;
        j["next_cursor"] = page.next_cursor ? nlohmann::json(*page.next_cursor) : nullptr;
        j["total_tokens"] = c.totals.total_tokens;
        j["total_cost_usd"] = c.totals.total_cost_usd;
        j["message_count"] = c.totals.message_count;
        return json_response(200, j);
    }

    task<http_response> update_conversation(const http_request* req_ptr, conversation_ref ref) {
        const http_request& req = *req_ptr;
        auto parsed = parse_body(req);
        if (!parsed) co_return error_response(parsed.error(), req.request_id);
        auto u = conversations_api::parse_update(*parsed, options_.conversations);
        if (!u) co_return error_response(u.error(), req.request_id);
        u->conversation = ref;
        u->at = now_unix_ms();
        auto call = [&] { return store_.update_conversation(*u); };
        auto updated = co_await on_store(call);
        if (!updated) co_return error_response(updated.error(), req.request_id);
        co_return json_response(200, *updated);
    }

    task<http_response> delete_conversation(const http_request* req_ptr, conversation_ref ref) {
        auto call = [&] { return store_.delete_conversation(ref); };
        auto deleted = co_await on_store(call);
        if (!deleted) co_return error_response(deleted.error(), req_ptr->request_id);
        http_response res;
        res.status = 204;
        co_return res;
    }

    task<http_response> list_conversation_messages(const http_request* req_ptr, conversation_ref ref) {
        const http_request& req = *req_ptr;
        auto limit = conversations_api::parse_limit(req.query, options_.history_default_limit, options_.history_max_limit);
        if (!limit) co_return error_response(limit.error(), req.request_id);
        conversation_message_query q{ref, *limit, {}, false};
        if (auto it = req.query.find("cursor"); it != req.query.end()) q.after = it->second;
        auto call = [&] { return store_.conversation_messages(q); };
        auto page = co_await on_store(call);
        if (!page) co_return error_response(page.error(), req.request_id);
        co_return message_list_response(ref.id, *page);
    }
    static http_response message_list_response(std::string_view conversation_id, const conversation_message_page& page) {
        return json_response(200, {{"conversation_id", conversation_id},
                                   {"messages", page.messages},
                                   {"next_cursor", page.next_cursor ? nlohmann::json(*page.next_cursor) : nullptr}});
    }

    task<http_response> add_feedback(const http_request* req_ptr, conversation_ref ref) {
        const http_request& req = *req_ptr;
        auto parsed = parse_body(req);
        if (!parsed) co_return error_response(parsed.error(), req.request_id);
        auto f = conversations_api::parse_feedback(*parsed, options_.conversations);
        if (!f) co_return error_response(f.error(), req.request_id);
        feedback_submission submission{ref.owner, std::move(*f)};
        submission.feedback.id = conversations_api::make_uuid();
        submission.feedback.conversation_id = ref.id;
        submission.feedback.created_at = now_unix_ms();
        auto call = [&] { return store_.add_feedback(submission); };
        auto added = co_await on_store(call);
        if (!added) co_return error_response(added.error(), req.request_id);
        co_return json_response(201, submission.feedback);
    }

    task<http_response> list_feedback(const http_request* req_ptr, conversation_ref ref) {
        auto call = [&] { return store_.conversation_feedback(ref); };
        auto all = co_await on_store(call);
        if (!all) co_return error_response(all.error(), req_ptr->request_id);
        co_return feedback_list_response(ref.id, *all);
    }
    static http_response feedback_list_response(std::string_view conversation_id, const std::vector<feedback>& all) {
        return json_response(200, {{"conversation_id", conversation_id}, {"feedback", all}});
    }

    // POST .../messages, and GET or POST .../stream: the next turn, sent with the conversation's
    // context window, admitted as any chat (limits, budgets), answered whole or streamed, and
    // stored in the conversation before the client is told.
    task<routed> conversation_turn_route(http_request* req_ptr, context* ctx, exchange_state* st, conversation_ref ref, bool stream) {
        const http_request& req = *req_ptr;
        result<conversations_api::turn_request> turn_req = error{};
        if (req.method == "POST") {
            auto parsed = parse_body(req);
            if (!parsed) co_return routed{error_response(parsed.error(), req.request_id)};
            turn_req = conversations_api::parse_turn(*parsed, options_.limits, options_.conversations);
        } else {
            turn_req = conversations_api::parse_turn_query(req.query, options_.limits, options_.conversations);
        }
        if (!turn_req) co_return routed{error_response(turn_req.error(), req.request_id)};
        auto find = [&] { return store_.find_conversation(ref); };
        auto c = co_await on_store(find);
        if (!c) co_return routed{error_response(c.error(), req.request_id)};
        const conversation_message_query window{ref, options_.conversations.context_messages, {}, true};
        auto read = [&] { return store_.conversation_messages(window); };
        auto earlier = co_await on_store(read);
        if (!earlier) co_return routed{error_response(earlier.error(), req.request_id)};

        chat_request chat;
        chat.messages = conversations_api::context_window(*c, earlier->messages, turn_req->message, options_.conversations);
        chat.model = turn_req->model;
        chat.temperature = turn_req->temperature;
        chat.max_tokens = turn_req->max_tokens;
        chat.request_id = req.request_id;
        chat.traceparent = req.header("traceparent");
        chat.user_id = history_owner(req, c->user_id);
        chat.stream = stream;
        // Never from the cache: each turn is a new answer with its own cost, as the conversation's
        // totals count it, even when an identical context was answered before.
        chat.use_cache = false;
        auto refused = co_await admit_chat(req_ptr, &chat, ctx);
        if (refused) co_return routed{error_response(*refused, req.request_id)};

        conversation_turn turn{ref, {}, conversations_api::make_uuid()};
        turn.question.id = conversations_api::make_uuid();
        turn.question.conversation_id = ref.id;
        turn.question.role = role::user;
        turn.question.content = std::move(turn_req->message);
        turn.question.request_id = req.request_id;
        turn.question.created_at = now_unix_ms();
        if (stream) {
            conversation_framing framing{std::move(turn), options_.keep_abandoned_turns};
            co_return stream_answer(std::move(chat), std::move(framing), st);
        }
        upstream_timing timing;
        auto answer = co_await chat_pipeline(std::move(chat), &timing, &turn);
        if (!answer) co_return routed{upstream_error_response(answer.error(), req.request_id, timing)};
        auto res = turn_response(turn, *answer, served_by(*answer));
        describe_answer(res, *answer);
        co_return routed{std::move(res)};
    }
    static http_response turn_response(const conversation_turn& turn, const completion& c, const std::string& provider) {
        conversation_message m;
        m.id = turn.answer_id;
        m.conversation_id = turn.conversation.id;
        m.role = role::assistant;
        m.content = c.content;
        m.provider = provider;
        m.model = c.model;
        m.usage = c.usage;
        m.cost_usd = c.cost_usd;
        m.latency_ms = c.latency_ms;
        m.time_to_first_token_ms = c.time_to_first_token_ms;
        m.created_at = c.created_at;
        return json_response(200, {{"message", m},
                                   {"conversation_id", turn.conversation.id},
                                   {"usage", c.usage},
                                   {"cost_usd", c.cost_usd ? nlohmann::json(*c.cost_usd) : nlohmann::json(nullptr)}});
    }

    // With authentication on (chatkit::api_key_auth), a user id names a user of the calling key only:
    // the history, and the cache, of "ada" under key A are not those of "ada" under key B, so no
    // key can read or write another key's history by claiming its user ids. The store sees
    // "KEY_ID:USER_ID"; key ids hold no ':', so two keys' names never meet. Without authentication
    // the user id is taken as the client sends it, as before.
    static std::string history_owner(const http_request& req, std::string_view user_id) {
        if (!req.caller.authenticated()) return std::string{user_id};
        std::string owner;
        owner.reserve(req.caller.key_id.size() + 1 + user_id.size());
        owner.append(req.caller.key_id).append(1, ':').append(user_id);
        return owner;
    }

    // Outside the coroutine: GCC 12 destroys a braced json initializer list in a coroutine twice.
    static http_response history_response(std::string_view user_id, const history_page& page) {
        return json_response(200, {{"user_id", user_id},
                                   {"messages", page.messages},
                                   {"next_cursor", page.next_cursor ? nlohmann::json(*page.next_cursor) : nullptr}});
    }

    http_response handle_health() {
        const auto components = std::tuple{store_.health(), cache_.health(), provider_.health()};
        const bool ok = std::apply([](const auto&... c) { return (c.ok && ...); }, components);
        return json_response(
            ok ? 200 : 503,
            {{"status", ok ? "ok" : "unavailable"},
             {"version", options_.version},
             {"provider", provider_.name()},
             {"components",
              {{"store", std::get<0>(components)}, {"cache", std::get<1>(components)}, {"provider", std::get<2>(components)}}}});
    }

    // Readiness: what /health checks, and not draining. A load balancer that sees 503 sends the
    // request elsewhere; one that sees 200 may send this process traffic.
    http_response handle_ready() {
        if (draining()) return json_response(503, {{"status", "draining"}});
        const auto components = std::tuple{store_.health(), cache_.health(), provider_.health()};
        const bool ok = std::apply([](const auto&... c) { return (c.ok && ...); }, components);
        if (ok) return json_response(200, {{"status", "ready"}});
        return json_response(
            503, {{"status", "unavailable"},
                  {"components",
                   {{"store", std::get<0>(components)}, {"cache", std::get<1>(components)}, {"provider", std::get<2>(components)}}}});
    }

    http_response handle_root() const {
        nlohmann::json routes = nlohmann::json::array();
        for (const auto& r : routes_) routes.push_back(r.method + " " + r.path);
        for (const char* r : {"POST /chat", "GET /history/{user_id}", "POST /v1/chat/completions", "POST /v1/messages",
                              "POST /v1/responses", "GET /v1/models", "GET /health", "GET /ready"})
            routes.push_back(r);
        if constexpr (conversation_store<S>)
            for (const char* r : {"POST /api/v1/conversations", "GET /api/v1/conversations", "GET /api/v1/conversations/{id}",
                                  "PATCH /api/v1/conversations/{id}", "DELETE /api/v1/conversations/{id}",
                                  "POST /api/v1/conversations/{id}/messages", "GET /api/v1/conversations/{id}/messages",
                                  "GET /api/v1/conversations/{id}/stream", "POST /api/v1/conversations/{id}/stream",
                                  "POST /api/v1/conversations/{id}/feedback", "GET /api/v1/conversations/{id}/feedback"})
                routes.push_back(r);
        return json_response(200, {{"name", options_.name}, {"version", options_.version}, {"routes", std::move(routes)}});
    }

    // A failed chat's answer, with the time its provider call took (for Server-Timing and traces).
    static http_response upstream_error_response(const error& e, std::string_view request_id, const upstream_timing& timing) {
        auto res = error_response(e, request_id);
        res.meta.provider = e.provider; // a router's member, for the log and metrics
        res.meta.upstream_started = timing.started;
        res.meta.upstream_ms = timing.ms;
        return res;
    }

    // "gateway;dur=0.042, upstream;dur=812.300": milliseconds, as the header's dur is.
    static std::string server_timing(double total_ms, double upstream_ms) {
        char text[96];
        const double own = std::max(total_ms - upstream_ms, 0.0);
        const int n = upstream_ms > 0 ? std::snprintf(text, sizeof text, "gateway;dur=%.3f, upstream;dur=%.3f", own, upstream_ms)
                                      : std::snprintf(text, sizeof text, "gateway;dur=%.3f", own);
        return std::string(text, static_cast<std::size_t>(std::max(n, 0)));
    }

    result<nlohmann::json> parse_body(const http_request& req) const {
        if (req.body.size() > options_.max_body_bytes)
            return error{error_kind::payload_too_large, "request body exceeds " + std::to_string(options_.max_body_bytes) + " bytes",
                         "body_too_large"};
        if (auto type = req.header("Content-Type"); !type.empty() && !is_json_media_type(type))
            return error{error_kind::unsupported_media_type, "Content-Type must be application/json", "unsupported_media_type"};
        try {
            return nlohmann::json::parse(req.body);
        } catch (const nlohmann::json::parse_error& e) {
            // Never echo the body back: it may hold secrets, and it may not be valid UTF-8.
            if (std::string_view{e.what()}.find("UTF-8") != std::string_view::npos)
                return error{error_kind::invalid_request, "request body is not valid UTF-8", "invalid_utf8"};
            return error{error_kind::invalid_request, "request body is not valid JSON (at byte " + std::to_string(e.byte) + ")",
                         "invalid_json"};
        }
    }

    static bool is_json_media_type(std::string_view type) {
        type = type.substr(0, type.find(';'));
        while (!type.empty() && type.back() == ' ') type.remove_suffix(1);
        auto lower = [](std::string_view s) {
            std::string out{s};
            for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            return out;
        };
        const auto t = lower(type);
        return t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"));
    }

    static bool is_get(const http_request& req) { return req.method == "GET" || req.method == "HEAD"; }

    static http_response wrong_method(const http_request& req, std::string_view allowed) {
        auto res = error_response(
            {error_kind::method_not_allowed, "method " + req.method + " is not allowed on " + req.path, "method_not_allowed"},
            req.request_id);
        res.headers["Allow"] = allowed == "GET" ? "GET, HEAD" : std::string{allowed};
        return res;
    }
    static http_response not_found(const http_request& req) {
        return error_response({error_kind::not_found, "no route for " + req.method + " " + req.path, "not_found"}, req.request_id);
    }
    static http_response internal_error(const http_request& req) {
        return error_response({error_kind::internal, "internal error", "internal_error"}, req.request_id);
    }

    // Everything that changes an answer, scoped per user: equal keys mean equal requests.
    static std::string cache_key(const chat_request& r) {
        nlohmann::json messages = nlohmann::json::array();
        for (const auto& m : r.messages) messages.push_back({m.role, m.content, m.extra});
        return dump_json({r.user_id, r.model, r.temperature ? nlohmann::json(*r.temperature) : nullptr,
                          r.max_tokens ? nlohmann::json(*r.max_tokens) : nullptr, messages, r.extensions});
    }

    static response_meta meta_of(const completion& c) {
        return {c.model,    c.usage,       c.cached,        c.time_to_first_token_ms, {},
                c.cost_usd, c.upstream_ms, c.finish_reason, c.upstream_started,       c.provider};
    }
    // An unstreamed answer's meta, and the provider that answered it in `x-chatkit-provider` (a
    // stream's headers leave before a provider is chosen: its closing event names it instead).
    static void describe_answer(http_response& res, const completion& c) {
        res.meta = meta_of(c);
        if (!c.provider.empty()) res.headers.emplace("x-chatkit-provider", c.provider);
    }
    // The name an answer is told and logged under: the router's member that answered, else the
    // service's provider (also for a cache hit, as before routers).
    std::string served_by(const completion& c) const { return c.provider.empty() ? std::string{provider_.name()} : c.provider; }

    // What the gateway adds to an OpenAI answer: who was billed, by which provider, for how much.
    nlohmann::json gateway_metadata_of(const caller_identity& caller, const completion& c) const {
        auto id = [](const std::string& s) { return s.empty() ? nlohmann::json(nullptr) : nlohmann::json(s); };
        return {{"team_id", id(caller.team_id)},
                {"key_id", id(caller.key_id)},
                {"provider", served_by(c)},
                {"latency_ms", c.latency_ms},
                {"cost_usd", c.cost_usd ? nlohmann::json(*c.cost_usd) : nlohmann::json(nullptr)},
                {"cached", c.cached}};
    }
    // The same object as text, for the unstreamed answer, which is written without a JSON tree
    // (chatkit/json_text.hpp): the keys in the order nlohmann writes them, so both forms are equal.
    void append_gateway_metadata(std::string& out, const caller_identity& caller, const completion& c) const {
        auto id = [&out](const std::string& s) {
            if (s.empty()) out += "null";
            else append_json_string(out, s);
        };
        out += R"({"cached":)";
        out += c.cached ? "true" : "false";
        out += R"(,"cost_usd":)";
        if (c.cost_usd) append_json(out, nlohmann::json(*c.cost_usd));
        else out += "null";
        out += R"(,"key_id":)";
        id(caller.key_id);
        out += R"(,"latency_ms":)";
        append_json(out, nlohmann::json(c.latency_ms));
        out += R"(,"provider":)";
        append_json_string(out, served_by(c));
        out += R"(,"team_id":)";
        id(caller.team_id);
        out += '}';
    }

    // A stream that did not complete is billed for what the provider reported, else (when the
    // client left, or the provider failed after sending text) for an estimate of the prompt and of
    // the text delivered, marked as estimated. A provider that failed before any text bills nothing.
    void bill_unfinished(const chat_request& req, const completion* partial, std::size_t delivered_bytes, response_summary& sum) {
        sum.model = partial && !partial->model.empty() ? partial->model : req.model.empty() ? models().front() : req.model;
        if (partial && partial->usage.total_tokens() > 0) {
            sum.usage = partial->usage;
        } else if (sum.client_left || delivered_bytes > 0) {
            std::size_t prompt_bytes = 0;
            for (const auto& m : req.messages) prompt_bytes += m.content.size();
            sum.usage = {};
            sum.usage.prompt_tokens = static_cast<int>(std::min<std::int64_t>(estimate_tokens(prompt_bytes), INT32_MAX));
            sum.usage.completion_tokens = static_cast<int>(std::min<std::int64_t>(estimate_tokens(delivered_bytes), INT32_MAX));
            sum.usage_estimated = true;
        } else {
            return;
        }
        if (options_.prices) sum.cost_usd = options_.prices->cost_usd(sum.model, sum.usage);
    }

    // An answer's cost: nothing for a cache hit, else its usage at the model's price (none when
    // the model has no price, or the service none at all).
    std::optional<double> price(const completion& c) const {
        if (c.cached) return 0.0;
        if (!options_.prices) return std::nullopt;
        return options_.prices->cost_usd(c.model, c.usage);
    }

    // A provider that does not name the model it answered with answered with the one asked for,
    // or with its default: the name the answer is priced and recorded under.
    void fill_defaults(completion& c, const chat_request& r) {
        if (c.model.empty()) c.model = r.model.empty() ? models().front() : r.model;
        if (c.provider.empty()) c.provider = provider_.name();
    }

    static exchange make_exchange(const chat_request& r, const completion& c) {
        return {r.user_id, r.request_id, c.model, {r.messages.back(), message{role::assistant, c.content, {}}}, c.created_at};
    }

    static nlohmann::json answer_json(const completion& c, std::string_view request_id) {
        nlohmann::json j = c;
        j["request_id"] = request_id;
        j["timestamp"] = j["created_at"]; // the serverless chat design's name for the same instant
        return j;
    }

    static double elapsed_ms(std::chrono::steady_clock::time_point since) {
        return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since).count();
    }

    service_options options_;
    P provider_;
    S store_;
    C cache_;
    std::tuple<Ms...> middlewares_;
    std::vector<custom_route> routes_{};
    std::unique_ptr<std::atomic<bool>> draining_ = std::make_unique<std::atomic<bool>>(false); // a pointer: the service moves
};

} // namespace chatkit
