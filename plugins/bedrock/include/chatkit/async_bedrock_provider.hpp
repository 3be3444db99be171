// chatkit::async_bedrock_provider: chatkit::bedrock_provider's wire (Converse, ConverseStream,
// SigV4, the same options and error mapping) in the asynchronous form, through an asynchronous
// chatkit::http_client (chatkit::beast_client on chatkit::beast_server's loops). Credentials come
// from the cache on the loop; only a fetch (a refresh from the container endpoint, say) goes to
// the worker pool.
#pragma once

#include "chatkit/bedrock_wire.hpp"
#include "chatkit/http_client.hpp"
#include "chatkit/provider.hpp"
#include "chatkit/retry.hpp"
#include "chatkit/task.hpp"
#include "chatkit/worker_pool.hpp"

#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace chatkit {

class async_bedrock_provider {
public:
    // Resolves region, endpoint and credentials from `env`. Throws std::invalid_argument when no
    // region can be found, the endpoint is unusable or the client is missing.
    async_bedrock_provider(bedrock_options options, std::shared_ptr<http_client> client, aws::environment env = aws::process_environment())
        : shared_(std::make_shared<shared>(std::move(options), std::move(env), std::move(client))) {
        if (!shared_->client) throw std::invalid_argument("async_bedrock_provider needs an http_client");
    }

    std::string_view name() const { return "bedrock"; }
    std::vector<std::string> models() const { return shared_->wire.models(); }

    task<result<completion>> complete(chat_request r) { return call(std::move(r), std::nullopt); }
    task<result<completion>> stream(chat_request r, delta_writer out) { return call(std::move(r), out); }

    component_health health() { return shared_->wire.report(); }

    [[nodiscard]] std::string resolve_model(std::string_view requested) const { return shared_->wire.resolve_model(requested); }
    [[nodiscard]] const std::string& region() const noexcept { return shared_->wire.region; }
    [[nodiscard]] const std::string& endpoint() const noexcept { return shared_->wire.endpoint; }

private:
    using clock = std::chrono::steady_clock;
    using wire = detail::bedrock_wire;
    static constexpr std::size_t max_answer_bytes = 64u << 20;

    upstream_failure transport_failure(const client_error& e, bool delivered) const {
        return client_failure(e, delivered, "Bedrock", shared_->wire.options.read_timeout, max_answer_bytes);
    }

    struct shared {
        shared(bedrock_options o, aws::environment e, std::shared_ptr<http_client> c)
            : wire(std::move(o), std::move(e)), client(std::move(c)) {}
        detail::bedrock_wire wire;
        std::shared_ptr<http_client> client;
    };

    // What every attempt of one call shares; it all lives in call()'s frame.
    struct attempt_args {
        const std::string* model_id;
        const std::string* payload;
        const delta_writer* out; // null: not streamed
        clock::time_point deadline;
        const std::string* traceparent;
    };

    task<result<completion>> call(chat_request r, std::optional<delta_writer> out) {
        auto& w = shared_->wire;
        auto body = wire::converse_body(r);
        if (!body) co_return std::move(body).error();
        const std::string payload = dump_json(*body);
        const std::string model_id = w.resolve_model(r.model);
        const attempt_args args{&model_id, &payload, out ? &*out : nullptr, clock::now() + w.options.deadline, &r.traceparent};
        auto attempt = [this, args] { return attempt_once(args); };
        // A named policy, not a temporary in the co_await expression: GCC 12 mishandles temporaries
        // with destructors (this one holds a std::function) there.
        retry_policy policy{.max_retries = w.options.max_retries, .on_retry = w.options.on_retry};
        auto answer = co_await call_with_retries_async<completion>(std::move(policy), args.deadline, attempt);
        w.health.record(answer);
        if (answer) answer->model = r.model.empty() ? w.options.model : r.model;
        co_return answer;
    }

    task<result<completion, upstream_failure>> attempt_once(attempt_args a) {
        auto& w = shared_->wire;
        std::optional<aws::credentials> creds;
        if (w.options.bearer_token.empty()) {
            creds = w.credentials.cached_if_fresh();
            if (!creds) {
                auto fetch = [this] { return shared_->wire.credentials.get(); };
                auto got = co_await run_blocking(fetch);
                if (!got) co_return upstream_failure{got.error(), false};
                creds = std::move(got).value();
            }
        }
        client_request req;
        req.origin = w.endpoint;
        req.target = aws::bedrock_model_path(*a.model_id, a.out ? "converse-stream" : "converse");
        req.body = *a.payload;
        for (auto& [name, value] : w.request_headers(req.target, req.body, creds ? &*creds : nullptr, *a.traceparent))
            req.headers.insert_or_assign(std::move(name), std::move(value));
        req.deadline = a.deadline;
        req.connect_timeout = w.options.connect_timeout;
        req.read_timeout = w.options.read_timeout;

        auto opened = co_await shared_->client->open(std::move(req));
        if (!opened) co_return transport_failure(opened.error(), false);
        const std::unique_ptr<client_response> response = std::move(opened).value();
        if (response->status != 200 || !a.out) {
            auto raw = co_await read_body(response.get(), max_answer_bytes);
            if (!raw) co_return transport_failure(raw.error(), false);
            if (response->status != 200) co_return wire::status_failure(response->status, *raw, response->headers);
            co_return wire::parse_answer(*raw);
        }

        // Frames are decoded as they arrive; their deltas are written before the next read.
        delta_batch batch;
        wire::stream_reader reader{batch.text_sink()};
        reader.tool_sink = &batch.tool_sink();
        aws::eventstream_decoder decoder;
        // A stream is bounded as a whole answer is: the completion holds all of its text.
        std::size_t streamed = 0;
        for (;;) {
            auto piece = co_await response->read();
            if (!piece) co_return transport_failure(piece.error(), reader.delivered);
            if (piece->empty()) break;
            if ((streamed += piece->size()) > max_answer_bytes)
                co_return transport_failure(client_error{client_error_kind::too_large, "response body over the limit"}, reader.delivered);
            auto fed = decoder.feed(*piece, reader);
            if (!co_await batch.write_to(*a.out)) co_return std::move(reader.c); // nobody is listening; the service drops it
            if (!fed)
                co_return upstream_failure{
                    {error_kind::upstream, "Bedrock stream is corrupt: " + fed.error().message, "upstream_malformed"},
                    !reader.delivered,
                    {},
                    reader.delivered};
            if (reader.failed) break;
        }
        co_return wire::finish_stream(reader);
    }

    std::shared_ptr<shared> shared_;
};
static_assert(async_provider<async_bedrock_provider>);

} // namespace chatkit
