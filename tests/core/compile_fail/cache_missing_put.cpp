// Must not compile: a cache without put().
#include <chatkit/service.hpp>

struct no_put {
    std::optional<chatkit::completion> get(std::string_view) { return std::nullopt; }
    chatkit::component_health health() { return {}; }
};

chatkit::service<chatkit::no_provider, chatkit::no_store, no_put> svc;
