// Must not compile: a middleware without after().
#include <chatkit/service.hpp>

struct no_after {
    std::optional<chatkit::http_response> before(chatkit::http_request&, chatkit::no_context&) { return std::nullopt; }
};

chatkit::service<chatkit::no_provider, chatkit::no_store, chatkit::no_cache, no_after> svc;
