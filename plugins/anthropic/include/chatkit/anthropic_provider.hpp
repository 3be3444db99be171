// chatkit::anthropic_provider: completions from Anthropic's Messages API, in the blocking form:
// the service runs it on its worker pool. Kept-alive HTTPS connections (cpp-httplib) are pooled
// across threads; failures before the first streamed byte are retried with backoff. For the
// event-loop server, chatkit::async_anthropic_provider speaks the same wire on the loops themselves.
// Wire format: Anthropic's Messages API reference and the WHATWG HTML spec's server-sent events.
#pragma once

#include "chatkit/anthropic_wire.hpp"
#include "chatkit/httplib_client_pool.hpp"

#include <httplib.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace chatkit {

class anthropic_provider {
public:
    // Throws std::invalid_argument for a base URL it cannot use (a start-up error).
    explicit anthropic_provider(anthropic_options options) : shared_(std::make_shared<shared>(std::move(options))) {}

    std::string_view name() const { return "anthropic"; }
    std::vector<std::string> models() const { return {shared_->wire.options.model}; }

    result<completion> complete(const chat_request& r) { return call(r, nullptr); }
    result<completion> stream(const chat_request& r, const delta_sink& sink) { return call(r, &sink); }

    // Down after three calls in a row failed to reach the upstream or were refused its credentials.
    component_health health() { return shared_->wire.health.report(shared_->wire.origin); }

private:
    using clock = std::chrono::steady_clock;
    using wire = detail::anthropic_wire;

    struct shared {
        explicit shared(anthropic_options o)
            : wire(std::move(o)), pool(wire.origin, httplib_client_options{wire.options.connect_timeout, wire.options.read_timeout,
                                                                           wire.options.max_idle_connections}) {}
        detail::anthropic_wire wire;
        httplib_client_pool pool;
    };

    result<completion> call(const chat_request& r, const delta_sink* sink) {
        auto& w = shared_->wire;
        auto body = w.request_body(r, sink != nullptr);
        if (!body) return std::move(body).error(); // the client's to fix: no call, no health record
        const auto deadline = clock::now() + w.options.deadline;
        auto key = w.key();
        if (!key) {
            w.health.record(true, key.error().message); // only an operator can fix a missing key
            return std::move(key).error();
        }
        auto answer = call_with_retries<completion>(
            retry_policy{.max_retries = w.options.max_retries, .on_retry = w.options.on_retry}, deadline,
            [&] { return attempt_once(r, *body, sink, deadline, *key); }, r.stop);
        w.health.record(answer);
        return answer;
    }

    result<completion, upstream_failure> attempt_once(const chat_request& r, const std::string& body, const delta_sink* sink,
                                                      clock::time_point deadline, const std::string& key) {
        auto& w = shared_->wire;
        httplib::Request req;
        req.method = "POST";
        req.path = w.path;
        req.body = body;
        for (const auto& [name, value] : w.request_headers(r, sink != nullptr, key)) req.set_header(name, value);

        static const delta_sink no_sink = [](std::string_view) { return true; };
        wire::stream_reader reader{sink ? *sink : no_sink};
        sse_parser parser;
        const auto x = shared_->pool.send(
            req, deadline,
            [&](std::string_view chunk) {
                parser.feed(chunk, reader);
                return !reader.client_gone && !reader.broken; // read on past message_stop, so the connection can be reused
            },
            sink != nullptr, 64u << 20, r.stop);
        if (x.cancelled)
            return upstream_failure{{error_kind::timeout, "the request was cancelled; its upstream call was closed", "request_cancelled"},
                                    false,
                                    {},
                                    reader.delivered};
        if (x.too_large)
            return client_failure(client_error{client_error_kind::too_large}, reader.delivered, "the upstream", w.options.read_timeout,
                                  64u << 20);

        if (reader.client_gone) return std::move(reader.c); // nobody is listening; the service drops it
        if (x.past_deadline)
            return upstream_failure{
                {error_kind::timeout, "upstream did not finish within the deadline", "upstream_timeout"}, false, {}, reader.delivered};
        if (reader.broken) return w.finish_stream(reader, key);
        if (!x.sent && !reader.done) return transport_failure(x.error, x.took, reader.delivered);
        if (x.status != 200) return w.status_failure(x.status, x.body, x.headers, key);
        if (!sink) return w.parse_answer(x.body);
        return w.finish_stream(reader, key);
    }

    upstream_failure transport_failure(httplib::Error err, clock::duration waited, bool delivered) const {
        const auto& o = shared_->wire.options;
        if (delivered)
            return {{error_kind::upstream, "upstream connection broke mid-stream (" + httplib::to_string(err) + ")", "upstream_error"},
                    false,
                    {},
                    true};
        if (err == httplib::Error::ConnectionTimeout)
            return {{error_kind::timeout, "could not connect to the upstream in time", "upstream_timeout"}, true};
        if (err == httplib::Error::Read && waited + std::chrono::milliseconds(50) >= o.read_timeout)
            return {{error_kind::timeout, "upstream did not answer within " + std::to_string(o.read_timeout.count()) + " ms",
                     "upstream_timeout"},
                    true};
        if (err == httplib::Error::SSLServerVerification)
            return {{error_kind::upstream, "upstream TLS certificate verification failed", "upstream_tls"}, false};
        return {{error_kind::upstream, "cannot reach the upstream (" + httplib::to_string(err) + ")", "upstream_unreachable"}, true};
    }

    std::shared_ptr<shared> shared_;
};
static_assert(provider<anthropic_provider>);

} // namespace chatkit
