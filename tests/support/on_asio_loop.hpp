// An async provider driven from a test thread: each call runs on a real Asio loop (one thread,
// chatkit::asio_loop, what chatkit::beast_server gives a request) with the request's stop token,
// and the test waits for it. Lets one test body exercise the blocking and the async form alike.
#pragma once

#include <chatkit/asio_loop.hpp>
#include <chatkit/provider.hpp>
#include <chatkit/task.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include <future>
#include <optional>
#include <thread>
#include <utility>

namespace test_support {

template <chatkit::async_provider P>
class on_asio_loop {
public:
    template <class... A>
    explicit on_asio_loop(A&&... args)
        : provider_(std::forward<A>(args)...), work_(boost::asio::make_work_guard(loop_.context())),
          thread_([this] { loop_.context().run(); }) {}
    ~on_asio_loop() {
        work_.reset();
        thread_.join();
    }
    on_asio_loop(const on_asio_loop&) = delete;
    on_asio_loop& operator=(const on_asio_loop&) = delete;

    std::string_view name() const { return provider_.name(); }
    chatkit::component_health health() { return provider_.health(); }

    chatkit::result<chatkit::completion> complete(const chatkit::chat_request& r) {
        return run(r, [this](chatkit::chat_request req) { return provider_.complete(std::move(req)); });
    }
    // The sink is called on the loop thread, one delta per write, as the service's writer would be.
    chatkit::result<chatkit::completion> stream(const chatkit::chat_request& r, const chatkit::delta_sink& sink) {
        writer_to_sink target{&sink};
        return run(r,
                   [this, &target](chatkit::chat_request req) { return provider_.stream(std::move(req), chatkit::delta_writer{&target}); });
    }
    // The same, with tool-call pieces passed to `tools` as the provider writes them.
    chatkit::result<chatkit::completion> stream(const chatkit::chat_request& r, const chatkit::delta_sink& sink,
                                                const chatkit::tool_call_sink& tools) {
        writer_to_sink target{&sink, &tools};
        return run(r,
                   [this, &target](chatkit::chat_request req) { return provider_.stream(std::move(req), chatkit::delta_writer{&target}); });
    }

    P& provider() noexcept { return provider_; }
    const P& provider() const noexcept { return provider_; }
    chatkit::asio_loop& loop() noexcept { return loop_; }

private:
    struct writer_to_sink final : chatkit::delta_writer::target {
        explicit writer_to_sink(const chatkit::delta_sink* s, const chatkit::tool_call_sink* t = nullptr) : sink(s), tools(t) {}
        const chatkit::delta_sink* sink;
        const chatkit::tool_call_sink* tools;
        chatkit::task<bool> write(std::string_view text) override { co_return (*sink)(text); }
        bool write_now(std::string_view text) override { return (*sink)(text); }
        chatkit::task<bool> write_tool_call(const chatkit::tool_call_delta& piece) override { co_return tools ? (*tools)(piece) : true; }
    };

    template <class Call>
    chatkit::result<chatkit::completion> run(const chatkit::chat_request& r, Call call) {
        std::promise<chatkit::result<chatkit::completion>> done;
        auto finished = [&done](std::optional<chatkit::result<chatkit::completion>> v, std::exception_ptr e) {
            if (e) done.set_exception(e);
            else done.set_value(std::move(*v));
        };
        boost::asio::post(loop_.context(), [&] { chatkit::start_detached(call(r), chatkit::task_env{r.stop, &loop_, nullptr}, finished); });
        return done.get_future().get();
    }

    chatkit::asio_loop loop_;
    P provider_;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
    std::thread thread_;
};

} // namespace test_support
