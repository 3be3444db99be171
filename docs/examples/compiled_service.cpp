// Embedding, compiled once (docs/embedding.md): the only translation unit of the program that
// includes the plugins and compiles the service's pipeline. Everything else serves the
// any_service it returns.
#include "compiled_service.hpp"

#include "memory_store.hpp"

#include <chatkit/echo_provider.hpp>
#include <chatkit/service.hpp>

#include <optional>
#include <utility>

namespace example {

// Records each request's status once its last byte is out.
class finish_log {
public:
    explicit finish_log(std::shared_ptr<finished_requests> out) : out_(std::move(out)) {}
    std::optional<chatkit::http_response> before(chatkit::http_request&, chatkit::no_context&) { return std::nullopt; }
    void after(const chatkit::http_request&, chatkit::http_response&, chatkit::no_context&) {}
    void finish(const chatkit::http_request&, const chatkit::response_summary& s, chatkit::no_context&) { out_->add(s.status); }

private:
    std::shared_ptr<finished_requests> out_;
};

using chat_service = chatkit::service<chatkit::echo_provider, memory_store, chatkit::no_cache, finish_log>;

compiled_chat make_compiled_chat() {
    auto finished = std::make_shared<finished_requests>();
    auto service = std::make_shared<chat_service>(chatkit::echo_provider{}, memory_store{}, chatkit::no_cache{}, finish_log{finished});
    return {chatkit::any_service{std::move(service)}, std::move(finished)};
}

} // namespace example
