// sample_server's service as main.cpp serves it: built by compiled_app.cpp, the one translation
// unit of sample_server that includes the plugins and compiles the request pipeline (app.hpp).
// main.cpp serves it as a chatkit::any_service, so the adapters and the pipeline compile apart,
// in parallel, and a change to either recompiles only its own (docs/embedding.md#compiled-once).
#pragma once

#include "config.hpp"
#include "log.hpp"

#include <chatkit/any_service.hpp>
#include <chatkit/http_client.hpp>

#include <functional>
#include <memory>
#include <string>

namespace chatkit {
class prometheus_metrics;
}

namespace sample_server {

struct compiled_app {
    chatkit::any_service service;
    // GET /ready answers 503 from now on (SIGTERM's drain); thread-safe.
    std::function<void()> drain;
    // The service's Prometheus middleware (CHAT_METRICS=on), for CHAT_METRICS_PORT; null when off.
    // Points into the service, which lives as long as `service`.
    chatkit::prometheus_metrics* metrics = nullptr;
    std::string provider_name; // as /health and the start-up line name it
    std::string default_model; // the provider's first model
    // Logs which provider serves, and how it was configured (never a key), at start-up.
    std::function<void()> announce_provider;
};

// Throws config_error for a configuration that cannot start, and whatever a component throws
// when it cannot start (the SQLite file cannot be opened). `log` must outlive the service;
// `upstream`, when given, is the async client the providers call out through.
compiled_app make_compiled_app(const config& c, logger* log, std::shared_ptr<chatkit::http_client> upstream);

} // namespace sample_server
