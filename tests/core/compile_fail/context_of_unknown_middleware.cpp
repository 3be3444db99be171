// Must not compile: asking a request for the context of a middleware the service does not have.
#include <chatkit/service.hpp>

struct other {
    struct context {};
};

int main() {
    chatkit::request_context<chatkit::no_middleware> ctx;
    ctx.get<other>();
}
