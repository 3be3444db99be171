// Serves a chatkit service as an AWS Lambda custom runtime (provided.al2023): the Runtime API loop
// of docs/protocols.md §5, with API Gateway HTTP API 2.0 / Function URL events (§6) translated to
// and from the neutral http_request/http_response; answers to a response-streaming Function URL
// sent in streaming mode, all others buffered.
#pragma once

#include "chatkit/http.hpp"

#include <httplib.h>
#include <openssl/evp.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <functional>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>

namespace chatkit {

// The InvokeMode of the function's Function URL. Lambda does not tell a function how it was
// invoked, and each mode garbles the other's answers: a RESPONSE_STREAM URL shows a buffered
// answer's JSON envelope as the body, a BUFFERED one shows the streaming prelude. So the runtime
// is told. API Gateway HTTP APIs always invoke buffered.
enum class function_url_mode { buffered, response_stream };

struct lambda_options {
    std::string runtime_api;                                      // host:port without a scheme (§5.1); empty: $AWS_LAMBDA_RUNTIME_API
    std::size_t max_invocations = 0;                              // 0: serve until stopped
    function_url_mode function_url = function_url_mode::buffered; // AWS's default InvokeMode
    // Called after each invocation's answer is posted, before asking for the next one: the last
    // moment the instance surely runs, since Lambda may freeze it while /next waits and shut it
    // down frozen. Work the answer left behind (usage records queued for a background writer)
    // must finish here or may be lost. It adds to the invocation's billed duration, not to the
    // client's wait.
    std::function<void()> between_invocations{};
};

// Called with a line about a failure of the runtime itself (an unusable event, the Runtime API
// unreachable), never with request content.
using lambda_error_logger = std::function<void(std::string_view)>;

namespace lambda {

inline constexpr std::string_view api_version = "/2018-06-01"; // §5.1

// Standard base64, by OpenSSL; nullopt when the text is not base64.
inline std::optional<std::string> base64_decode(std::string_view text) {
    if (text.size() % 4 != 0) return std::nullopt; // API Gateway always pads
    std::string out(text.size() / 4 * 3, '\0');
    const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(text.data()),
                                  static_cast<int>(text.size()));
    if (n < 0) return std::nullopt;
    // EVP_DecodeBlock counts the bytes the '=' padding stands for; drop them.
    const auto padding = text.size() - text.find_last_not_of('=') - 1;
    out.resize(static_cast<std::size_t>(n) - std::min<std::size_t>(padding, 2));
    return out;
}

// A Function URL event (§6.3): its domain is <url-id>.lambda-url.<region>.on.aws.
inline bool from_function_url(const nlohmann::json& event) {
    if (!event.is_object()) return false;
    const auto context = event.find("requestContext"); // never operator[] on a const event: a missing key is UB
    if (context == event.end() || !context->is_object()) return false;
    const auto domain = context->find("domainName");
    return domain != context->end() && domain->is_string() &&
           domain->get_ref<const std::string&>().find(".lambda-url.") != std::string::npos;
}

inline std::optional<http_request> request_from_event(const nlohmann::json& event) {
    if (!event.is_object() || !event.contains("requestContext") || !event["requestContext"].is_object()) return std::nullopt;
    const auto& context = event["requestContext"];
    if (!context.contains("http") || !context["http"].is_object() || !context["http"].value("method", nlohmann::json{}).is_string())
        return std::nullopt;
    const auto string_of = [](const nlohmann::json& j, const char* key) {
        const auto it = j.find(key);
        return it != j.end() && it->is_string() ? it->get<std::string>() : std::string{};
    };
    http_request req;
    req.method = string_of(context["http"], "method");
    std::string raw_path = string_of(event, "rawPath");
    if (raw_path.empty()) raw_path = string_of(context["http"], "path");
    // Decoded exactly as cpp-httplib decodes for the HTTP adapter, so both adapters agree.
    req.path = httplib::detail::decode_url(raw_path.empty() ? "/" : raw_path, false);
    httplib::Params params;
    httplib::detail::parse_query_text(string_of(event, "rawQueryString"), params);
    for (auto& [name, value] : params) req.query.emplace(name, value); // the first of repeats wins
    if (const auto headers = event.find("headers"); headers != event.end() && headers->is_object())
        for (const auto& [name, value] : headers->items()) // repeats arrive already joined with commas
            if (value.is_string()) req.headers.insert_or_assign(name, value.get<std::string>());
    req.body = string_of(event, "body");
    if (const auto b64 = event.find("isBase64Encoded"); b64 != event.end() && b64->is_boolean() && b64->get<bool>()) {
        auto decoded = base64_decode(req.body);
        if (!decoded) return std::nullopt;
        req.body = std::move(*decoded);
    }
    req.remote_addr = string_of(context["http"], "sourceIp");
    return req;
}

inline std::string content_type_of(const http_response& res, std::string_view fallback) {
    const auto it = res.headers.find("Content-Type");
    return it == res.headers.end() ? std::string{fallback} : it->second;
}

inline nlohmann::json headers_of(const http_response& res, std::string_view fallback_type) {
    auto headers = nlohmann::json::object();
    for (const auto& [name, value] : res.headers)
        if (name != "Content-Type") headers[name] = value;
    headers["Content-Type"] = content_type_of(res, fallback_type);
    return headers;
}

// The buffered answer (§6.2). Bodies are text (JSON, SSE); nothing binary needs base64. A streamed
// answer is run to its end first, and arrives whole.
inline std::string response_to_event(http_response& res) {
    const bool streamed = res.is_stream();
    if (streamed) {
        res.stream([&res](std::string_view chunk) { return res.body.append(chunk), true; }, res.meta);
        res.stream = nullptr;
    }
    return dump_json({{"statusCode", res.status},
                      {"headers", headers_of(res, streamed ? "text/event-stream" : "application/json")},
                      {"body", res.body},
                      {"isBase64Encoded", false}});
}

// The HTTP-integration metadata prelude that opens a streamed body: JSON, then 8 NUL bytes (§5.4).
inline std::string streaming_prelude(const http_response& res) {
    auto prelude = dump_json({{"statusCode", res.status},
                              {"headers", headers_of(res, res.is_stream() ? "text/event-stream" : "application/json")},
                              {"cookies", nlohmann::json::array()}});
    prelude.append(8, '\0');
    return prelude;
}

// POST /runtime/init/error (§5.3): for start-up failures, before the first /next. Then exit.
inline bool report_init_error(std::string_view runtime_api, std::string_view type, std::string_view message) {
    httplib::Client client{"http://" + std::string{runtime_api}};
    const auto body = dump_json({{"errorMessage", message}, {"errorType", type}, {"stackTrace", nlohmann::json::array()}});
    const auto res = client.Post((std::string{api_version} + "/runtime/init/error").c_str(),
                                 {{"Lambda-Runtime-Function-Error-Type", std::string{type}}}, body, "application/json");
    return res && res->status / 100 == 2;
}

} // namespace lambda

template <class Service>
class lambda_runtime {
public:
    // Each request is logged by the service's middlewares (`finish`), as behind any adapter.
    lambda_runtime(Service& service, lambda_options options = {}, lambda_error_logger on_error = {})
        : service_(service), options_(std::move(options)), on_error_(std::move(on_error)), client_("http://" + runtime_api(options_)) {
        // No timeout on the long poll of /next: Lambda freezes an idle sandbox (§5.2).
        client_.set_read_timeout(365 * 24 * 3600, 0);
        client_.set_tcp_nodelay(true);
    }

    // Serves invocations (§5.5) until `stop` is requested or max_invocations are served. Returns
    // false when the Runtime API fails: three consecutive failed /next, or any 500 (fatal, §5.2).
    bool run(std::stop_token stop = {}) {
        std::stop_callback wake{stop, [this] { client_.stop(); }};
        int failures = 0;
        for (std::size_t served = 0; options_.max_invocations == 0 || served < options_.max_invocations;) {
            if (stop.stop_requested()) return true;
            auto next = client_.Get(path("/runtime/invocation/next").c_str());
            if (stop.stop_requested()) return true;
            if (!next || next->status != 200) {
                report(!next ? "GET /next failed: " + httplib::to_string(next.error())
                             : "GET /next answered " + std::to_string(next->status));
                if ((next && next->status >= 500) || ++failures >= 3) return false;
                std::this_thread::sleep_for(std::chrono::milliseconds{100 * failures});
                continue;
            }
            failures = 0;
            const auto id = next->get_header_value("Lambda-Runtime-Aws-Request-Id");
            if (id.empty()) {
                report("GET /next answered without Lambda-Runtime-Aws-Request-Id");
                continue;
            }
            if (const auto trace = next->get_header_value("Lambda-Runtime-Trace-Id"); !trace.empty())
                ::setenv("_X_AMZN_TRACE_ID", trace.c_str(), 1); // §5.1: a custom runtime sets it per invoke
            if (!invoke(id, next->body)) return false;
            if (options_.between_invocations) options_.between_invocations();
            ++served;
        }
        return true;
    }

private:
    static std::string runtime_api(const lambda_options& o) {
        if (!o.runtime_api.empty()) return o.runtime_api;
        const char* env = std::getenv("AWS_LAMBDA_RUNTIME_API");
        return env ? env : "127.0.0.1:9001";
    }

    static std::string path(std::string_view rest) { return std::string{lambda::api_version} + std::string{rest}; }

    void report(const std::string& line) {
        if (on_error_) on_error_(line);
    }

    // One invocation; false only on a fatal Runtime API answer.
    bool invoke(const std::string& id, const std::string& event_text) {
        std::optional<http_request> req;
        try {
            const auto event = nlohmann::json::parse(event_text, nullptr, false);
            if (!event.is_discarded()) req = lambda::request_from_event(event);
            if (!req) return post_error(id, "Runtime.InvalidEvent", "the event is not an API Gateway HTTP API 2.0 or Function URL event");
            req->request_id = id; // the request_id middleware prefers a valid X-Request-ID
            http_response res = service_.handle(*req);
            const bool streaming = options_.function_url == function_url_mode::response_stream && lambda::from_function_url(event);
            return streaming ? post_stream(id, res) : post_buffered(id, res);
        } catch (const std::exception& e) {
            return post_error(id, "Function.Unhandled", e.what());
        }
    }

    // Each returns false when the Runtime API answered 500, which ends the runtime.
    bool post_buffered(const std::string& id, http_response& res) {
        auto answer = client_.Post(path("/runtime/invocation/" + id + "/response").c_str(), lambda::response_to_event(res),
                                   "application/json");
        return !fatal(answer, "POST /response");
    }

    // Streaming mode (§5.4): the HTTP-integration prelude, then the body (SSE bytes as the service
    // writes them), in chunked encoding. cpp-httplib 0.11.4 cannot send trailers, so an error
    // after the first byte cannot be reported as Lambda-Runtime-Function-Error-*; the service
    // already ends such a stream with an error event.
    bool post_stream(const std::string& id, http_response& res) {
        const std::string prelude = lambda::streaming_prelude(res);
        httplib::Headers headers{{"Lambda-Runtime-Function-Response-Mode", "streaming"}};
        auto answer = client_.Post(
            path("/runtime/invocation/" + id + "/response").c_str(), headers,
            [&](std::size_t, httplib::DataSink& sink) {
                auto write = [&sink](std::string_view chunk) {
                    return (!sink.is_writable || sink.is_writable()) && sink.write(chunk.data(), chunk.size());
                };
                if (write(prelude)) {
                    if (!res.is_stream()) {
                        write(res.body);
                    } else {
                        try {
                            res.stream(write, res.meta);
                        } catch (const std::exception& e) {
                            report(std::string{"stream failed: "} + e.what());
                        }
                    }
                }
                sink.done();
                return true;
            },
            "application/vnd.awslambda.http-integration-response");
        return !fatal(answer, "POST /response (streaming)");
    }

    bool post_error(const std::string& id, std::string_view type, std::string_view message) {
        report(std::string{type} + ": " + std::string{message});
        const auto body = dump_json({{"errorMessage", message}, {"errorType", type}, {"stackTrace", nlohmann::json::array()}});
        auto answer = client_.Post(path("/runtime/invocation/" + id + "/error").c_str(),
                                   {{"Lambda-Runtime-Function-Error-Type", std::string{type}}}, body, "application/json");
        return !fatal(answer, "POST /error");
    }

    // Reports a failed post; true for a 500, after which the runtime must exit (§5.2).
    bool fatal(const httplib::Result& answer, std::string_view what) {
        if (answer && answer->status / 100 == 2) return false;
        report(std::string{what} + (answer ? " answered " + std::to_string(answer->status) + ": " + answer->body
                                           : " failed: " + httplib::to_string(answer.error())));
        return answer && answer->status >= 500;
    }

    Service& service_;
    lambda_options options_;
    lambda_error_logger on_error_;
    httplib::Client client_;
};

} // namespace chatkit
