// Must not compile: a provider without stream(). The build checks the message names the member.
#include <chatkit/service.hpp>

struct no_stream {
    std::string_view name() const { return "x"; }
    chatkit::result<chatkit::completion> complete(const chatkit::chat_request&) { return chatkit::completion{}; }
    chatkit::component_health health() { return {}; }
};

chatkit::service<no_stream> svc;
