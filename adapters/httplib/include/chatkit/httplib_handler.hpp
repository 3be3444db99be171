// A chatkit service as cpp-httplib handlers, for a server its user already has: `mount` puts the
// service's routes on his httplib::Server next to his own, and chatkit::httplib_server serves
// through the same functions. The user's server keeps its threads, its settings and its lifetime.
#pragma once

#include "chatkit/http.hpp"
#include "chatkit/random_id.hpp"

#include <httplib.h>

#include <chrono>
#include <memory>
#include <string>

namespace chatkit {

// The neutral request of a cpp-httplib request: repeated header fields joined (RFC 9110 §5.3),
// the first of repeated query parameters kept.
inline http_request to_neutral(const httplib::Request& req) {
    http_request out;
    out.method = req.method;
    out.path = req.path;
    for (const auto& [name, value] : req.params) out.query.emplace(name, value);
    for (const auto& [name, value] : req.headers) {
        auto [it, inserted] = out.headers.emplace(name, value);
        if (!inserted) it->second.append(", ").append(value);
    }
    out.body = req.body;
    out.remote_addr = req.remote_addr;
    return out;
}

// Answers one request with the service on the calling httplib worker. A streamed answer's body,
// and then the middlewares' `finish`, run when httplib writes the response, on the same worker;
// a client that leaves makes the next write fail, which stops the provider.
template <class Service>
void serve_httplib(Service& service, const httplib::Request& req, httplib::Response& res) {
    auto neutral = to_neutral(req);
    auto answer = std::make_shared<http_response>(service.handle(neutral));
    res.status = answer->status;
    for (const auto& [name, value] : answer->headers)
        if (name != "Content-Type") res.set_header(name, value); // httplib writes the type itself
    if (!answer->is_stream()) {
        const auto type = answer->headers.find("Content-Type");
        res.set_content(answer->body, type == answer->headers.end() ? "application/json" : type->second.c_str());
        return;
    }
    res.set_chunked_content_provider("text/event-stream", [answer](std::size_t, httplib::DataSink& sink) {
        answer->stream([&sink](std::string_view chunk) { return sink.is_writable() && sink.write(chunk.data(), chunk.size()); },
                       answer->meta);
        sink.done();
        return true;
    });
}

// The handler `mount` registers, for a user who registers it on patterns of his own. The service
// must outlive the server.
template <class Service>
httplib::Server::Handler httplib_handler(Service& service) {
    return [&service](const httplib::Request& req, httplib::Response& res) { serve_httplib(service, req, res); };
}

// Registers the service for every path and method on `server`. cpp-httplib tries a method's
// handlers in the order they were registered and runs the first whose pattern matches the whole
// path, so the routes registered before this call keep their paths, and every other request
// reaches the service, whose router answers 404 and 405 itself; a route registered after it is
// never reached. The service must outlive the server.
template <class Service>
void mount(httplib::Server& server, Service& service) {
    const auto handler = httplib_handler(service);
    server.Get(".*", handler).Post(".*", handler).Put(".*", handler).Delete(".*", handler);
    server.Patch(".*", handler).Options(".*", handler);
}

// An error handler for what cpp-httplib answers itself (a body over the server's payload limit,
// a malformed request): the same JSON envelope and X-Request-ID as the service's own errors.
// `max_body_bytes` is the limit the server was given, for the 413's message; `log` hears of each.
inline httplib::Server::HandlerWithResponse httplib_error_handler(std::size_t max_body_bytes, adapter_log log = {}) {
    return [max_body_bytes, log = std::move(log)](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        const auto started = std::chrono::steady_clock::now();
        error e{error_kind::invalid_request, "malformed request", "bad_request"};
        if (res.status == 413)
            e = {error_kind::payload_too_large, "request body exceeds " + std::to_string(max_body_bytes) + " bytes", "body_too_large"};
        else if (res.status == 404) e = {error_kind::not_found, "no route for " + req.path, "not_found"};
        auto neutral = to_neutral(req);
        neutral.request_id = random_id();
        auto answer = error_response(e, neutral.request_id);
        answer.headers["X-Request-ID"] = neutral.request_id;
        for (const auto& [name, value] : answer.headers)
            if (name != "Content-Type") res.set_header(name, value);
        res.set_content(answer.body, "application/json");
        if (log) {
            response_summary s;
            s.status = res.status;
            s.error_code = e.code;
            s.bytes_sent = answer.body.size();
            s.duration_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
            log(neutral, s);
        }
        return httplib::Server::HandlerResponse::Handled;
    };
}

} // namespace chatkit
