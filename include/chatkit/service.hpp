// The service: a Provider, a Store, a Cache and any Middlewares composed at compile time into one
// object that answers transport-neutral requests. It routes
//   POST /chat                 a completion (JSON, or Server-Sent Events with "stream": true)
//   GET  /history/{user_id}    a user's stored messages, paged back in time
//   GET  /health               each component's status
//   POST /v1/chat/completions  the same chat in the OpenAI wire format, for OpenAI clients
//   GET  /v1/models            the provider's models, OpenAI-style
// plus any routes the user adds. Adapters feed it requests; it never touches a socket.
#pragma once

#include "chatkit/cache.hpp"
#include "chatkit/chat.hpp"
#include "chatkit/clock.hpp"
#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/middleware.hpp"
#include "chatkit/openai_api.hpp"
#include "chatkit/provider.hpp"
#include "chatkit/random_id.hpp"
#include "chatkit/sse.hpp"
#include "chatkit/store.hpp"
#include "chatkit/version.hpp"

#include <nlohmann/json.hpp>

#include <charconv>
#include <chrono>
#include <exception>
#include <functional>
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

    service()
        requires(std::default_initializable<P> && std::default_initializable<S> && std::default_initializable<C> &&
                 (std::default_initializable<Ms> && ...))
    = default;
    explicit service(P provider, S store = S{}, C cache = C{}, Ms... middlewares)
        : service(service_options{}, std::move(provider), std::move(store), std::move(cache), std::move(middlewares)...) {}
    service(service_options options, P provider, S store, C cache, Ms... middlewares)
        : options_(std::move(options)), provider_(std::move(provider)), store_(std::move(store)),
          cache_(std::move(cache)), middlewares_(std::move(middlewares)...) {}

    // Answers one request. Never throws: an exception escaping a plugin becomes a 500. The
    // request keeps what the middlewares set on it (its request_id), for the caller's logs.
    http_response handle(http_request& req) {
        if (req.request_id.empty()) req.request_id = random_id(); // every answer, even a 429, carries one
        context ctx;
        return run_middleware<0>(req, ctx);
    }
    http_response handle(http_request&& req) { return handle(req); }

    // Adds a route, matched on the exact path before the built-in ones. Call before serving.
    void route(std::string method, std::string path, handler h) {
        routes_.push_back({std::move(method), std::move(path), std::move(h)});
    }

    // The chat pipeline without HTTP: cache, provider, store. Sets latency, id and cached.
    result<completion> chat(chat_request req) {
        const auto started = std::chrono::steady_clock::now();
        if (req.request_id.empty()) req.request_id = random_id();
        const std::string key = req.use_cache ? cache_key(req) : std::string{};
        std::optional<completion> answer;
        if (req.use_cache) {
            if ((answer = cache_.get(key))) answer->cached = true;
        }
        const bool fresh_answer = !answer;
        if (fresh_answer) {
            auto fresh = provider_.complete(req);
            if (!fresh) return std::move(fresh).error();
            answer = std::move(fresh).value();
            fill_defaults(*answer, req);
        }
        answer->id = random_id("chatcmpl-", 24);
        answer->created_at = now_unix_ms();
        if (auto saved = store_.append(make_exchange(req, *answer)); !saved) return std::move(saved).error();
        // Cached only once acknowledged: a retry after a failed append must not look like a hit.
        if (fresh_answer && req.use_cache) cache_.put(key, *answer, options_.cache_ttl);
        answer->latency_ms = elapsed_ms(started);
        answer->time_to_first_token_ms = answer->latency_ms;
        return std::move(*answer);
    }

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

private:
    struct custom_route {
        std::string method, path;
        handler fn;
    };

    template <std::size_t I>
    http_response run_middleware(http_request& req, context& ctx) {
        if constexpr (I == sizeof...(Ms)) {
            return dispatch(req, ctx);
        } else {
            auto& mw = std::get<I>(middlewares_);
            auto& mw_ctx = ctx.template at<I>();
            http_response res;
            try {
                if (auto early = mw.before(req, mw_ctx)) res = std::move(*early);
                else res = run_middleware<I + 1>(req, ctx);
                mw.after(req, res, mw_ctx);
            } catch (const std::exception&) {
                res = internal_error(req);
            }
            return res;
        }
    }

    http_response dispatch(http_request& req, context& ctx) {
        try {
            for (auto& r : routes_)
                if (r.path == req.path && r.method == req.method) return r.fn(req, ctx);
            if (req.path == "/chat") return req.method == "POST" ? handle_chat(req) : wrong_method(req, "POST");
            if (req.path == "/health") return is_get(req) ? handle_health() : wrong_method(req, "GET");
            if (req.path == "/v1/chat/completions")
                return req.method == "POST" ? handle_openai_chat(req) : wrong_method(req, "POST");
            if (req.path == "/v1/models")
                return is_get(req) ? json_response(200, openai_api::models_list(models(), provider_.name()))
                                   : wrong_method(req, "GET");
            if (req.path.starts_with("/history/")) {
                const std::string_view user_id = std::string_view{req.path}.substr(9);
                if (user_id.empty() || user_id.find('/') != std::string_view::npos) return not_found(req);
                return is_get(req) ? handle_history(req, user_id) : wrong_method(req, "GET");
            }
            return not_found(req);
        } catch (const std::exception&) {
            return internal_error(req);
        }
    }

    http_response handle_chat(http_request& req) {
        auto parsed = parse_body(req);
        if (!parsed) return error_response(parsed.error(), req.request_id);
        auto chat_req = parse_chat_request(*parsed, options_.limits);
        if (!chat_req) return error_response(chat_req.error(), req.request_id);
        chat_req->request_id = req.request_id;
        if (chat_req->stream) return stream_answer(std::move(*chat_req), chatkit_framing{});

        auto answer = chat(std::move(*chat_req));
        if (!answer) return error_response(answer.error(), req.request_id);
        auto res = json_response(200, answer_json(*answer, req.request_id));
        res.meta = meta_of(*answer);
        return res;
    }

    http_response handle_openai_chat(http_request& req) {
        auto parsed = parse_body(req);
        if (!parsed) return error_response(parsed.error(), req.request_id);
        auto chat_req = openai_api::parse_request(*parsed, options_.limits);
        if (!chat_req) return error_response(chat_req.error(), req.request_id);
        chat_req->request_id = req.request_id;
        if (chat_req->stream) {
            const auto model = chat_req->model.empty() ? models().front() : chat_req->model;
            return stream_answer(std::move(*chat_req),
                                 openai_framing{openai_api::chunk_writer{random_id("chatcmpl-", 24), model, now_unix_ms()},
                                                openai_api::wants_stream_usage(*parsed)});
        }
        auto answer = chat(std::move(*chat_req));
        if (!answer) return error_response(answer.error(), req.request_id);
        auto res = json_response(200, openai_api::completion_object(*answer));
        res.headers.emplace("X-Cache", answer->cached ? "hit" : "miss");
        res.meta = meta_of(*answer);
        return res;
    }

    // chatkit's own stream: `event: delta` per text delta, then `event: done` carrying the same
    // object as the JSON answer, or `event: error` carrying the error envelope.
    struct chatkit_framing {
        std::string id = random_id("chatcmpl-", 24);
        std::string delta(std::string_view text) { return sse_event("delta", dump_json({{"content", text}})); }
        std::string done(const completion& c, std::string_view request_id) {
            return sse_event("done", dump_json(answer_json(c, request_id)));
        }
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
        openai_api::chunk_writer chunks;
        bool include_usage = false;
        std::string id = chunks.id();
        std::string delta(std::string_view text) { return chunks.delta(text); }
        std::string done(const completion& c, std::string_view) { return chunks.finish(c, include_usage); }
        static std::string failure(const error& e, std::string_view) { return openai_api::error_event(e); }
        static std::string internal_failure(std::string_view) {
            return openai_api::error_event({error_kind::internal, "internal error", "internal_error"});
        }
    };

    // The streamed form of chat(): cache, provider stream, durable store, then the closing event.
    // A failure after the first byte can only be reported in the stream, never as a status.
    template <class Framing>
    http_response stream_answer(chat_request req, Framing framing) {
        const std::string req_id_for_errors = req.request_id;
        http_response res;
        res.headers.emplace("Content-Type", "text/event-stream");
        res.headers.emplace("Cache-Control", "no-cache");
        res.headers.emplace("X-Accel-Buffering", "no"); // keep reverse proxies from buffering the stream
        res.stream = [this, req = std::move(req), framing = std::move(framing)](const chunk_writer& write,
                                                                                  response_meta& meta) mutable {
            const auto started = std::chrono::steady_clock::now();
            double first_token_ms = -1;
            auto send_delta = [&](std::string_view text) {
                if (first_token_ms < 0) first_token_ms = elapsed_ms(started);
                return write(framing.delta(text));
            };

            const std::string key = req.use_cache ? cache_key(req) : std::string{};
            std::optional<completion> answer;
            bool fresh_answer = false;
            if (req.use_cache && (answer = cache_.get(key))) {
                answer->cached = true;
                if (!send_delta(answer->content)) return;
            } else {
                bool client_gone = false;
                auto streamed = provider_.stream(req, [&](std::string_view delta) {
                    return !(client_gone = !send_delta(delta));
                });
                if (client_gone) return; // an unacknowledged, partial reply is neither stored nor cached
                if (!streamed) return void(write(framing.failure(streamed.error(), req.request_id)));
                answer = std::move(streamed).value();
                fill_defaults(*answer, req);
                fresh_answer = true;
            }
            answer->id = framing.id;
            answer->created_at = now_unix_ms();
            answer->time_to_first_token_ms = std::max(first_token_ms, 0.0);
            meta = meta_of(*answer);
            if (auto saved = store_.append(make_exchange(req, *answer)); !saved)
                return void(write(framing.failure(saved.error(), req.request_id)));
            if (fresh_answer && req.use_cache) cache_.put(key, *answer, options_.cache_ttl);
            answer->latency_ms = elapsed_ms(started);
            write(framing.done(*answer, req.request_id));
        };
        // The body runs after handle() has returned: an exception escaping a plugin there ends the
        // stream with an error event instead of reaching the adapter's thread.
        res.stream = [run = std::move(res.stream), request_id = req_id_for_errors](const chunk_writer& write, response_meta& meta) {
            try {
                run(write, meta);
            } catch (const std::exception&) {
                write(Framing::internal_failure(request_id));
            }
        };
        return res;
    }

    http_response handle_history(const http_request& req, std::string_view user_id) {
        const auto& limits = options_.limits;
        if (user_id.size() > limits.max_user_id_bytes || detail::has_control_characters(user_id))
            return error_response(detail::invalid("user_id must be 1 to " + std::to_string(limits.max_user_id_bytes) +
                                                      " bytes without control characters",
                                                  "user_id"),
                                  req.request_id);
        history_query query{std::string{user_id}, options_.history_default_limit, {}};
        if (auto it = req.query.find("limit"); it != req.query.end()) {
            std::size_t n = 0;
            const auto& s = it->second;
            auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
            if (ec != std::errc{} || end != s.data() + s.size() || n < 1 || n > options_.history_max_limit)
                return error_response(detail::invalid("'limit' must be an integer from 1 to " +
                                                          std::to_string(options_.history_max_limit),
                                                      "limit"),
                                      req.request_id);
            query.limit = n;
        }
        if (auto it = req.query.find("before"); it != req.query.end()) query.before = it->second;

        auto page = store_.history(query);
        if (!page) return error_response(page.error(), req.request_id);
        return json_response(200, {{"user_id", query.user_id},
                                   {"messages", page->messages},
                                   {"next_cursor", page->next_cursor ? nlohmann::json(*page->next_cursor) : nullptr}});
    }

    http_response handle_health() {
        const auto components = std::tuple{store_.health(), cache_.health(), provider_.health()};
        const bool ok = std::apply([](const auto&... c) { return (c.ok && ...); }, components);
        return json_response(ok ? 200 : 503, {{"status", ok ? "ok" : "unavailable"},
                                              {"version", options_.version},
                                              {"provider", provider_.name()},
                                              {"components",
                                               {{"store", std::get<0>(components)},
                                                {"cache", std::get<1>(components)},
                                                {"provider", std::get<2>(components)}}}});
    }

    result<nlohmann::json> parse_body(const http_request& req) const {
        if (req.body.size() > options_.max_body_bytes)
            return error{error_kind::payload_too_large,
                         "request body exceeds " + std::to_string(options_.max_body_bytes) + " bytes", "body_too_large"};
        if (auto type = req.header("Content-Type"); !type.empty() && !is_json_media_type(type))
            return error{error_kind::unsupported_media_type, "Content-Type must be application/json",
                         "unsupported_media_type"};
        try {
            return nlohmann::json::parse(req.body);
        } catch (const nlohmann::json::parse_error& e) {
            // Never echo the body back: it may hold secrets, and it may not be valid UTF-8.
            if (std::string_view{e.what()}.find("UTF-8") != std::string_view::npos)
                return error{error_kind::invalid_request, "request body is not valid UTF-8", "invalid_utf8"};
            return error{error_kind::invalid_request,
                         "request body is not valid JSON (at byte " + std::to_string(e.byte) + ")", "invalid_json"};
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
        auto res = error_response({error_kind::method_not_allowed,
                                   "method " + req.method + " is not allowed on " + req.path, "method_not_allowed"},
                                  req.request_id);
        res.headers["Allow"] = allowed == "GET" ? "GET, HEAD" : std::string{allowed};
        return res;
    }
    static http_response not_found(const http_request& req) {
        return error_response({error_kind::not_found, "no route for " + req.method + " " + req.path, "not_found"},
                              req.request_id);
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
        return {c.model, c.usage, c.cached, c.time_to_first_token_ms};
    }

    static void fill_defaults(completion& c, const chat_request& r) {
        if (c.model.empty()) c.model = r.model;
    }

    static exchange make_exchange(const chat_request& r, const completion& c) {
        return {r.user_id,
                r.request_id,
                c.model,
                {r.messages.back(), message{role::assistant, c.content, {}}},
                c.created_at};
    }

    static nlohmann::json answer_json(const completion& c, std::string_view request_id) {
        nlohmann::json j = c;
        j["request_id"] = request_id;
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
};

} // namespace chatkit
