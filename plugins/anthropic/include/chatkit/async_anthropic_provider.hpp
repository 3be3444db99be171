// chatkit::async_anthropic_provider: chatkit::anthropic_provider's wire (same options, same
// requests, same error mapping) in the asynchronous form. It runs on the request's event loop
// through an asynchronous chatkit::http_client (chatkit::beast_client on chatkit::beast_server's
// loops): no worker thread per call, a stream relayed delta by delta with the client's
// backpressure, and a client that leaves closes the upstream connection at once.
#pragma once

#include "chatkit/anthropic_wire.hpp"
#include "chatkit/http_client.hpp"
#include "chatkit/provider.hpp"
#include "chatkit/retry.hpp"
#include "chatkit/sse.hpp"
#include "chatkit/task.hpp"

#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace chatkit {

class async_anthropic_provider {
public:
    // Throws std::invalid_argument for a base URL it cannot use or a missing client.
    async_anthropic_provider(anthropic_options options, std::shared_ptr<http_client> client)
        : shared_(std::make_shared<shared>(std::move(options), std::move(client))) {
        if (!shared_->client) throw std::invalid_argument("async_anthropic_provider needs an http_client");
    }

    std::string_view name() const { return "anthropic"; }
    std::vector<std::string> models() const { return {shared_->wire.options.model}; }

    task<result<completion>> complete(chat_request r) { return call(std::move(r), std::nullopt); }
    task<result<completion>> stream(chat_request r, delta_writer out) { return call(std::move(r), out); }

    // Down after three calls in a row failed to reach the upstream or were refused its credentials.
    component_health health() { return shared_->wire.health.report(shared_->wire.origin); }

private:
    using clock = std::chrono::steady_clock;
    using wire = detail::anthropic_wire;
    static constexpr std::size_t max_answer_bytes = 64u << 20;

    upstream_failure transport_failure(const client_error& e, bool delivered) const {
        return client_failure(e, delivered, "the upstream", shared_->wire.options.read_timeout, max_answer_bytes);
    }

    struct shared {
        shared(anthropic_options o, std::shared_ptr<http_client> c) : wire(std::move(o)), client(std::move(c)) {}
        detail::anthropic_wire wire;
        std::shared_ptr<http_client> client;
    };

    task<result<completion>> call(chat_request r, std::optional<delta_writer> out) {
        auto& w = shared_->wire;
        auto body = w.request_body(r, out.has_value());
        if (!body) co_return std::move(body).error(); // the client's to fix: no call, no health record
        const auto deadline = clock::now() + w.options.deadline;
        auto key = w.key();
        if (!key) {
            w.health.record(true, key.error().message); // only an operator can fix a missing key
            co_return std::move(key).error();
        }
        const attempt_args args{&r, &*body, out ? &*out : nullptr, deadline, &*key};
        auto attempt = [this, args] { return attempt_once(args); };
        const retry_policy policy{.max_retries = w.options.max_retries, .on_retry = w.options.on_retry};
        auto answer = co_await call_with_retries_async<completion>(policy, deadline, attempt);
        w.health.record(answer);
        co_return answer;
    }

    // What every attempt of one call shares; it all lives in call()'s frame.
    struct attempt_args {
        const chat_request* r;
        const std::string* body;
        const delta_writer* out; // null: not streamed
        clock::time_point deadline;
        const std::string* key;
    };

    task<result<completion, upstream_failure>> attempt_once(attempt_args a) {
        auto& w = shared_->wire;
        client_request req;
        req.origin = w.origin;
        req.target = w.path;
        req.body = *a.body;
        for (auto& [name, value] : w.request_headers(*a.r, a.out != nullptr, *a.key))
            req.headers.emplace(std::move(name), std::move(value));
        req.deadline = a.deadline;
        req.connect_timeout = w.options.connect_timeout;
        req.read_timeout = w.options.read_timeout;

        auto opened = co_await shared_->client->open(std::move(req));
        if (!opened) co_return transport_failure(opened.error(), false);
        const std::unique_ptr<client_response> response = std::move(opened).value();
        if (response->status != 200 || !a.out) {
            auto raw = co_await read_body(response.get(), max_answer_bytes);
            if (!raw) co_return transport_failure(raw.error(), false);
            if (response->status != 200) co_return w.status_failure(response->status, *raw, response->headers, *a.key);
            co_return w.parse_answer(*raw);
        }

        // The reader parses each piece into deltas; they are written (awaiting the client's
        // socket) before the next piece is read, so a slow client slows the upstream read.
        delta_batch batch;
        wire::stream_reader reader{batch.text_sink()};
        reader.tool_sink = &batch.tool_sink();
        sse_parser parser;
        // A stream is bounded as a whole answer is: the completion holds all of its text.
        std::size_t streamed = 0;
        for (;;) {
            auto piece = co_await response->read();
            if (!piece) {
                if (reader.done) break; // the stream was whole; only the connection's end failed
                co_return transport_failure(piece.error(), reader.delivered);
            }
            if (piece->empty()) break;
            if ((streamed += piece->size()) > max_answer_bytes)
                co_return transport_failure(client_error{client_error_kind::too_large, "response body over the limit"}, reader.delivered);
            parser.feed(*piece, reader);
            if (!co_await batch.write_to(*a.out))
                co_return std::move(reader.c); // nobody is listening; the service drops it (and the connection closes)
            if (reader.broken) break;
        }
        co_return w.finish_stream(reader, *a.key);
    }

    std::shared_ptr<shared> shared_;
};
static_assert(async_provider<async_anthropic_provider>);

} // namespace chatkit
