// The upstream HTTP client, asynchronous form: what an async provider calls its upstream through.
// The core holds only this interface; implementations live in clients/ (chatkit::beast_client:
// pooled keep-alive connections on the server's own Asio loops). The blocking form is
// chatkit::httplib_client_pool, used by blocking providers on the worker pool.
//
// Requirements of an implementation, and why:
//   1. `open` completes once the status and headers have arrived (or the exchange failed), so a
//      provider can map an error status before reading a body it does not want.
//   2. `read` yields the body as it arrives, de-chunked, so a stream is relayed delta by delta and
//      never buffered whole.
//   3. The request's stop token (`co_await current_stop_token()`) closes the connection at once,
//      even while waiting for the first byte: the upstream sees its client leave and stops
//      generating. The call then ends with `client_error_kind::cancelled`.
//   4. `deadline` bounds the whole exchange and `read_timeout` each silence, so no upstream can
//      hold a request forever.
//   5. A connection is reused only after its response was read to the end; a half-read one
//      cannot carry another request and is closed.
//   6. Never block the loop: every wait is an asynchronous one.
#pragma once

#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/task.hpp"

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

namespace chatkit {

struct client_request {
    std::string origin; // scheme://host[:port]; connections are pooled per origin
    std::string method = "POST";
    std::string target;   // origin-form: the path and query
    header_map headers{}; // Host, Content-Length and Connection are the client's business
    std::string body{};
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
    std::chrono::milliseconds connect_timeout{5'000};
    std::chrono::milliseconds read_timeout{60'000}; // the longest silence while waiting for bytes
};

enum class client_error_kind {
    connect_timeout,  // no connection within the connect timeout
    read_timeout,     // the upstream was silent for longer than the read timeout
    past_deadline,    // the exchange outlived its deadline
    tls_verification, // the upstream's certificate did not verify: nothing was sent
    unreachable,      // resolving or connecting failed
    broken,           // the connection failed or the response was malformed mid-exchange
    too_large,        // the response outgrew the caller's limit
    cancelled,        // the request's stop token was requested
};

struct client_error {
    client_error_kind kind;
    std::string detail{}; // for logs and error messages; never carries a header value
};

// An exchange whose status and headers have arrived. Destroying it before the body's end closes
// the connection (requirement 5).
class client_response {
public:
    virtual ~client_response() = default;

    int status = 0;
    header_map headers{};

    // The next piece of the body; an empty piece once it has ended. The view stays valid until
    // the next call.
    virtual task<result<std::string_view, client_error>> read() = 0;
};

class http_client {
public:
    virtual ~http_client() = default;
    virtual task<result<std::unique_ptr<client_response>, client_error>> open(client_request request) = 0;
};

// The whole body, up to `max_bytes` (more: too_large).
inline task<result<std::string, client_error>> read_body(client_response* response, std::size_t max_bytes) {
    std::string body;
    for (;;) {
        auto piece = co_await response->read();
        if (!piece) co_return std::move(piece).error();
        if (piece->empty()) co_return body;
        if (body.size() + piece->size() > max_bytes) co_return client_error{client_error_kind::too_large, "response body over the limit"};
        body.append(piece->data(), piece->size());
    }
}

} // namespace chatkit
