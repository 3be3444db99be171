// response_sink: the adapter's side of one request, through which the service sends its answer.
// The service drives it from a coroutine; each operation completes through a callback, so an
// event-loop adapter completes it when the socket has taken the bytes and a blocking adapter
// completes it before returning.
//
// Requirements, and why:
//   1. `start(req, res, streamed, done)` sends the status and headers, and `res.body` as the
//      whole body unless `streamed`. The request is passed so an adapter can read what the
//      middlewares set on it (its request id).
//   2. `write(chunk, done)` sends one chunk of a streamed body; the bytes stay valid until done.
//   3. `end(done)` completes a streamed body.
//   4. `done(true)` once the transport has taken the bytes, `done(false)` once the client is
//      gone; called once per operation, on the request's loop thread or before the call returns,
//      because the service's coroutine resumes inside it. A sink used without a worker pool
//      (`sync_wait`, `service::handle`) must complete before returning: blocking plugins then
//      write from the same thread.
//   5. `peer_closed()`: whether the adapter has seen the client leave, for the summary.
//   6. `finished(summary)`: called last, after the middlewares' `finish`; an adapter may log
//      or count there. Optional.
// One operation is outstanding at a time.
#pragma once

#include "chatkit/http.hpp"
#include "chatkit/task.hpp"

#include <atomic>
#include <coroutine>
#include <string_view>

namespace chatkit {

class response_sink {
public:
    // Completes one operation: a function pointer and its object, so no operation allocates.
    struct callback {
        void (*fn)(void* self, bool ok) noexcept;
        void* self;
        void operator()(bool ok) const noexcept { fn(self, ok); }
    };

    virtual void start(const http_request& req, const http_response& res, bool streamed, callback done) = 0;
    virtual void write(std::string_view chunk, callback done) = 0;
    virtual void end(callback done) = 0;
    virtual void finished(const response_summary&) noexcept {}
    [[nodiscard]] virtual bool peer_closed() const noexcept { return false; }

protected:
    ~response_sink() = default;
};

namespace detail {
// Awaits one sink operation. The state machine lets the operation complete inline (before
// await_suspend returns) or later, without resuming the coroutine twice.
template <class Issue>
class sink_op {
public:
    explicit sink_op(Issue issue) : issue_(std::move(issue)) {}
    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) {
        h_ = h;
        issue_(response_sink::callback{&on_done, this});
        return state_.exchange(suspended, std::memory_order_acq_rel) != completed;
    }
    bool await_resume() const noexcept { return ok_; }

private:
    static void on_done(void* self, bool ok) noexcept {
        auto* op = static_cast<sink_op*>(self);
        op->ok_ = ok;
        if (op->state_.exchange(completed, std::memory_order_acq_rel) == suspended) op->h_.resume();
    }
    static constexpr int issuing = 0, suspended = 1, completed = 2;
    Issue issue_;
    std::atomic<int> state_{issuing};
    bool ok_ = false;
    std::coroutine_handle<> h_{};
};

struct start_issue {
    response_sink* sink;
    const http_request* req;
    const http_response* res;
    bool streamed;
    void operator()(response_sink::callback c) const { sink->start(*req, *res, streamed, c); }
};
struct write_issue {
    response_sink* sink;
    std::string_view chunk;
    void operator()(response_sink::callback c) const { sink->write(chunk, c); }
};
struct end_issue {
    response_sink* sink;
    void operator()(response_sink::callback c) const { sink->end(c); }
};
} // namespace detail

// `co_await start_response(...)` and friends: true once sent, false once the client is gone.
[[nodiscard]] inline detail::sink_op<detail::start_issue> start_response(response_sink* sink, const http_request& req,
                                                                         const http_response& res, bool streamed) {
    return detail::sink_op<detail::start_issue>{{sink, &req, &res, streamed}};
}
[[nodiscard]] inline detail::sink_op<detail::write_issue> write_chunk(response_sink* sink, std::string_view chunk) {
    return detail::sink_op<detail::write_issue>{{sink, chunk}};
}
[[nodiscard]] inline detail::sink_op<detail::end_issue> end_response(response_sink* sink) {
    return detail::sink_op<detail::end_issue>{{sink}};
}

// Writes a chunk through a sink that completes before returning (rule 4), from plain code: what a
// blocking producer does when no worker pool runs it. False when the sink did not complete.
inline bool write_chunk_now(response_sink* sink, std::string_view chunk) {
    struct state {
        bool done = false, ok = false;
    } s;
    sink->write(chunk, {[](void* self, bool ok) noexcept { *static_cast<state*>(self) = {true, ok}; }, &s});
    return s.done && s.ok;
}

} // namespace chatkit
