// Must not compile: a store without history().
#include <chatkit/service.hpp>

struct no_history {
    chatkit::result<void> append(const chatkit::exchange&) { return {}; }
    chatkit::component_health health() { return {}; }
};

chatkit::service<chatkit::no_provider, no_history> svc;
