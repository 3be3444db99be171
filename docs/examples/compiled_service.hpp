// Embedding, compiled once (docs/embedding.md): the one declaration the serving code sees. It
// includes no plugin header; compiled_service.cpp, the one translation unit that does, defines it.
#pragma once

#include <chatkit/any_service.hpp>

#include <memory>
#include <mutex>
#include <vector>

namespace example {

// The status of every request the service has finished (its last byte out), in order.
class finished_requests {
public:
    void add(int status) {
        std::lock_guard lock{mutex_};
        statuses_.push_back(status);
    }
    std::vector<int> statuses() const {
        std::lock_guard lock{mutex_};
        return statuses_;
    }

private:
    mutable std::mutex mutex_;
    std::vector<int> statuses_;
};

// The application's chat service: the echo provider, a store in memory, and a middleware whose
// `finish` records each request in `finished`. Each call builds a new one.
struct compiled_chat {
    chatkit::any_service service;
    std::shared_ptr<finished_requests> finished;
};
compiled_chat make_compiled_chat();

} // namespace example
