// chatkit::bedrock_provider: completions from Amazon Bedrock through its Converse and
// ConverseStream APIs, signed with SigV4 under the signing name "bedrock", streams read with
// the AWS event-stream decoder. Friendly model aliases map to Bedrock ids.
// The blocking form, over cpp-httplib on the worker pool; chatkit::async_bedrock_provider speaks
// the same wire on the event loops.
#pragma once

#include "chatkit/bedrock_wire.hpp"
#include "chatkit/httplib_client_pool.hpp"

#include <httplib.h>

#include <chrono>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

namespace chatkit {

class bedrock_provider {
public:
    // Resolves region, endpoint and credentials from `env` (the process environment by default).
    // Throws std::invalid_argument when no region can be found or the endpoint is unusable.
    explicit bedrock_provider(bedrock_options options, aws::environment env = aws::process_environment())
        : shared_(std::make_shared<shared>(std::move(options), std::move(env))) {}

    std::string_view name() const { return "bedrock"; }
    std::vector<std::string> models() const { return shared_->wire.models(); }

    result<completion> complete(const chat_request& r) { return call(r, nullptr); }
    result<completion> stream(const chat_request& r, const delta_sink& sink) { return call(r, &sink); }

    // Down when credentials cannot be found, or after three calls in a row were refused their
    // credentials or could not reach Bedrock.
    component_health health() { return shared_->wire.report(); }

    // The Bedrock model id a request goes to: an alias resolved (through the region's inference
    // profile where the model needs one), anything else as given.
    [[nodiscard]] std::string resolve_model(std::string_view requested) const { return shared_->wire.resolve_model(requested); }
    [[nodiscard]] const std::string& region() const noexcept { return shared_->wire.region; }
    [[nodiscard]] const std::string& endpoint() const noexcept { return shared_->wire.endpoint; }

    static result<nlohmann::json> converse_body(const chat_request& r) { return detail::bedrock_wire::converse_body(r); }
    static std::string finish_reason(std::string_view stop_reason) { return detail::bedrock_wire::finish_reason(stop_reason); }

private:
    using clock = std::chrono::steady_clock;
    using wire = detail::bedrock_wire;

    struct shared {
        shared(bedrock_options o, aws::environment e)
            : wire(std::move(o), std::move(e)),
              pool(wire.endpoint,
                   httplib_client_options{wire.options.connect_timeout, wire.options.read_timeout, wire.options.max_idle_connections}) {}
        detail::bedrock_wire wire;
        httplib_client_pool pool;
    };

    result<completion> call(const chat_request& r, const delta_sink* sink) {
        auto& w = shared_->wire;
        auto body = wire::converse_body(r);
        if (!body) return std::move(body).error();
        const std::string payload = dump_json(*body);
        const std::string model_id = w.resolve_model(r.model);
        const auto deadline = clock::now() + w.options.deadline;
        auto answer = call_with_retries<completion>(
            retry_policy{.max_retries = w.options.max_retries, .on_retry = w.options.on_retry}, deadline,
            [&] { return attempt_once(model_id, payload, sink, deadline, r.stop, r.traceparent); }, r.stop);
        w.health.record(answer);
        if (answer) answer->model = r.model.empty() ? w.options.model : r.model;
        return answer;
    }

    result<completion, upstream_failure> attempt_once(const std::string& model_id, const std::string& payload, const delta_sink* sink,
                                                      clock::time_point deadline, const std::stop_token& stop,
                                                      const std::string& traceparent) {
        auto& w = shared_->wire;
        httplib::Request req;
        req.method = "POST";
        req.path = aws::bedrock_model_path(model_id, sink ? "converse-stream" : "converse");
        req.body = payload;
        std::optional<aws::credentials> creds;
        if (w.options.bearer_token.empty()) {
            auto got = w.credentials.get();
            if (!got) return upstream_failure{got.error(), false};
            creds = std::move(got).value();
        }
        for (const auto& [name, value] : w.request_headers(req.path, payload, creds ? &*creds : nullptr, traceparent))
            req.set_header(name, value);

        static const delta_sink no_sink = [](std::string_view) { return true; };
        wire::stream_reader reader{sink ? *sink : no_sink};
        aws::eventstream_decoder decoder;
        std::optional<error> corrupt;
        const auto x = shared_->pool.send(
            req, deadline,
            [&](std::string_view chunk) {
                if (auto fed = decoder.feed(chunk, reader); !fed) corrupt = fed.error();
                return !corrupt && !reader.failed && !reader.client_gone;
            },
            sink != nullptr, 64u << 20, stop);

        if (reader.client_gone) return std::move(reader.c);
        if (x.cancelled)
            return upstream_failure{{error_kind::timeout, "the request was cancelled; its upstream call was closed", "request_cancelled"},
                                    false,
                                    {},
                                    reader.delivered};
        if (x.too_large)
            return client_failure(client_error{client_error_kind::too_large}, reader.delivered, "Bedrock", w.options.read_timeout,
                                  64u << 20);
        if (x.past_deadline)
            return upstream_failure{
                {error_kind::timeout, "Bedrock did not finish within the deadline", "upstream_timeout"}, false, {}, reader.delivered};
        if (corrupt)
            return upstream_failure{{error_kind::upstream, "Bedrock stream is corrupt: " + corrupt->message, "upstream_malformed"},
                                    !reader.delivered,
                                    {},
                                    reader.delivered};
        if (reader.failed) return wire::finish_stream(reader);
        if (!x.sent) {
            if (reader.delivered)
                return upstream_failure{
                    {error_kind::upstream, "Bedrock connection broke mid-stream (" + httplib::to_string(x.error) + ")", "upstream_error"},
                    false,
                    {},
                    true};
            if (x.error == httplib::Error::ConnectionTimeout ||
                (x.error == httplib::Error::Read && x.took + std::chrono::milliseconds(50) >= w.options.read_timeout))
                return upstream_failure{{error_kind::timeout, "Bedrock did not answer in time", "upstream_timeout"}, true};
            if (x.error == httplib::Error::SSLServerVerification)
                return upstream_failure{{error_kind::upstream, "Bedrock's TLS certificate verification failed", "upstream_tls"}, false};
            return upstream_failure{
                {error_kind::upstream, "cannot reach Bedrock (" + httplib::to_string(x.error) + ")", "upstream_unreachable"}, true};
        }
        if (x.status != 200) return wire::status_failure(x.status, x.body, x.headers);
        if (!sink) return wire::parse_answer(x.body);
        return wire::finish_stream(reader);
    }

    std::shared_ptr<shared> shared_;
};
static_assert(provider<bedrock_provider>);

} // namespace chatkit
