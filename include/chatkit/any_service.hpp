// A service behind a type that names no plugin, so that it is compiled once.
//
// A chatkit::service's type lists its provider, store, cache and every middleware, and each
// translation unit that serves it (an adapter, a test) compiles the whole request pipeline again
// for that type: minutes for a service like sample_server's. An adapter needs two calls of it
// (the concept below), so the pipeline can be compiled in one translation unit of your own, which
// returns an any_service, and every other one serves that: they include no plugin header and
// instantiate nothing of the pipeline (docs/embedding.md#compiled-once).
//
// Cost: one virtual call per request, and the service on the heap (shared, so that copies of the
// any_service serve the same one).
#pragma once

#include "chatkit/http.hpp"
#include "chatkit/response_sink.hpp"
#include "chatkit/task.hpp"

#include <concepts>
#include <memory>
#include <utility>

namespace chatkit {

// What the adapters call on a service (chatkit::service, any_service, or a type of your own).
//   1. `serve(request, sink)` returns the task that runs one request through the lifecycle and
//      writes its answer to `sink`, finishing after the last byte: the event-loop adapters (Beast)
//      start it on their loop and cancel it through its task_env.
//   2. `handle(request&)` runs the same lifecycle on the calling thread and returns the answer
//      (a stream's body runs when the caller calls its `stream`): the blocking adapters
//      (cpp-httplib, Lambda) and code without a loop call it. It takes the request by reference
//      because the middlewares set fields on it (its request id) that the caller logs.
template <class S>
concept servable = requires(S& s, http_request req, http_request& in_place, response_sink* sink) {
    { s.serve(std::move(req), sink) } -> std::same_as<task<void>>;
    { s.handle(in_place) } -> std::same_as<http_response>;
};

class any_service {
public:
    // Serves `service`, which it shares (it lives as long as the last copy of this).
    template <servable S>
    explicit any_service(std::shared_ptr<S> service) : self_(std::make_shared<model<S>>(std::move(service))) {}

    task<void> serve(http_request req, response_sink* sink) { return self_->serve(std::move(req), sink); }
    http_response handle(http_request& req) { return self_->handle(req); }
    http_response handle(http_request&& req) { return self_->handle(req); }

private:
    struct erased {
        virtual ~erased() = default;
        virtual task<void> serve(http_request req, response_sink* sink) = 0;
        virtual http_response handle(http_request& req) = 0;
    };
    template <class S>
    struct model final : erased {
        explicit model(std::shared_ptr<S> s) : service(std::move(s)) {}
        task<void> serve(http_request req, response_sink* sink) override { return service->serve(std::move(req), sink); }
        http_response handle(http_request& req) override { return service->handle(req); }
        std::shared_ptr<S> service;
    };

    std::shared_ptr<erased> self_;
};

static_assert(servable<any_service>);

} // namespace chatkit
