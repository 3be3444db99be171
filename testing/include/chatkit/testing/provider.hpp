// The behaviour every chatkit::provider model must have (chatkit/provider.hpp), blocking or
// asynchronous, as Catch2 sections. A provider's test calls
// check_provider_conformance<its_provider>(make, options) from a TEST_CASE, where make() returns
// a new provider, `options.request` is a request it answers (in at least two deltas when
// streamed) and `options.refusals` requests it must refuse. Each section gets its own provider.
#pragma once

#include <chatkit/chat.hpp>
#include <chatkit/error.hpp>
#include <chatkit/provider.hpp>
#include <chatkit/task.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace chatkit::testing {

// A request the provider must refuse, and with which kind of error.
struct provider_refusal {
    std::string name; // shown when a check of this refusal fails
    chat_request request{};
    error_kind kind = error_kind::invalid_request;
};

// A chat as the service hands it to a provider: a system prompt, then the user's `content`.
inline chat_request kit_chat(std::string content) {
    chat_request r;
    r.user_id = "kit-user";
    r.request_id = "kit-request-1";
    r.messages = {{role::system, "be brief"}, {role::user, std::move(content)}};
    return r;
}

struct provider_kit_options {
    // A request the provider answers, streamed in at least two deltas.
    chat_request request = kit_chat("the quick brown fox jumps over the lazy dog");
    // Requests it must refuse: at least one (an OpenAI field it cannot honour, a request with no
    // user message, an upstream that fails, ...).
    std::vector<provider_refusal> refusals{};
    // complete() and stream() give the same answer to the same request (a local model, a fake
    // upstream): the kit then compares them, and concurrent answers with a lone one.
    bool deterministic = true;
    // The concurrency check's rounds per thread (8 threads), each a complete(), a stream() and a
    // health(): fewer for a provider whose fake upstream is slow to answer.
    int concurrent_rounds = 25;
    // How an asynchronous provider's tasks are run to their end (on the loop its client needs).
    // By default chatkit::sync_wait, on the calling thread.
    std::function<result<completion>(task<result<completion>>)> run = [](task<result<completion>> t) { return sync_wait(std::move(t)); };
};

// What a stream delivered: its deltas, in order, and what stream() returned.
struct stream_outcome {
    std::vector<std::string> deltas;
    result<completion> answer = completion{};
    [[nodiscard]] std::string joined() const {
        std::string all;
        for (const auto& d : deltas) all += d;
        return all;
    }
};

namespace kit_detail {
// An asynchronous stream's end: collects each write, and says the client left after `accept` of them.
class collecting_target final : public delta_writer::target {
public:
    collecting_target(std::vector<std::string>* deltas, std::size_t accept) : deltas_(deltas), accept_(accept) {}
    task<bool> write(std::string_view text) override { co_return take(text); }
    bool write_now(std::string_view text) override { return take(text); }

private:
    bool take(std::string_view text) {
        deltas_->emplace_back(text);
        return deltas_->size() < accept_;
    }
    std::vector<std::string>* deltas_;
    std::size_t accept_;
};
} // namespace kit_detail

// complete() of either form.
template <class P>
result<completion> provider_complete(P& p, const chat_request& r, const provider_kit_options& options) {
    if constexpr (blocking_provider<P>) return p.complete(r);
    else return options.run(p.complete(r));
}

// stream() of either form; the sink (the client) takes `accept` deltas, then leaves.
template <class P>
stream_outcome provider_stream(P& p, const chat_request& r, const provider_kit_options& options,
                               std::size_t accept = static_cast<std::size_t>(-1)) {
    stream_outcome out;
    if constexpr (blocking_provider<P>) {
        const delta_sink sink = [&out, accept](std::string_view d) {
            out.deltas.emplace_back(d);
            return out.deltas.size() < accept;
        };
        out.answer = p.stream(r, sink);
    } else {
        kit_detail::collecting_target target{&out.deltas, accept};
        out.answer = options.run(p.stream(r, delta_writer{&target}));
    }
    return out;
}

template <class P, class MakeProvider>
void check_provider_conformance(MakeProvider make, provider_kit_options options = {}) {
    static_assert(provider<P>, "check_provider_conformance: P is not a chatkit::provider (see chatkit/provider.hpp)");

    SECTION("complete() answers with content, the model that answered, a finish reason and usage") {
        auto p = make();
        const auto answer = provider_complete(p, options.request, options);
        REQUIRE(answer.has_value());
        CHECK_FALSE(answer->content.empty());
        CHECK_FALSE(answer->model.empty());
        CHECK_FALSE(answer->finish_reason.empty());
        CHECK(answer->usage.prompt_tokens > 0);
        CHECK(answer->usage.completion_tokens > 0);
    }

    SECTION("stream() delivers the answer in order: its deltas join to the content it returns") {
        auto p = make();
        const auto s = provider_stream(p, options.request, options);
        REQUIRE(s.answer.has_value());
        CHECK(s.deltas.size() >= 2); // the kit's request must stream in pieces, or order goes unchecked
        for (const auto& d : s.deltas) CHECK_FALSE(d.empty());
        CHECK(s.joined() == s.answer->content);
        CHECK_FALSE(s.answer->model.empty());
        CHECK_FALSE(s.answer->finish_reason.empty());
        if (options.deterministic) { // "the same completion complete would"
            const auto whole = provider_complete(p, options.request, options);
            REQUIRE(whole.has_value());
            CHECK(s.answer->content == whole->content);
            CHECK(s.answer->model == whole->model);
            CHECK(s.answer->finish_reason == whole->finish_reason);
            CHECK(s.answer->usage == whole->usage);
        }
    }

    SECTION("stream() stops as soon as the sink says the client left") {
        auto p = make();
        for (std::size_t accept : {std::size_t{1}, std::size_t{2}}) {
            INFO("the client leaves after delta " << accept);
            stream_outcome s;
            REQUIRE_NOTHROW(s = provider_stream(p, options.request, options, accept));
            CHECK(s.deltas.size() == accept); // not one more delta once the sink said false
        }
        // The provider serves the next request as before.
        const auto again = provider_stream(p, options.request, options);
        REQUIRE(again.answer.has_value());
        CHECK(again.joined() == again.answer->content);
    }

    SECTION("refusals are error values of their kind from complete() and stream(), never exceptions, before any delta") {
        REQUIRE_FALSE(options.refusals.empty()); // give the kit at least one request the provider must refuse
        auto p = make();
        for (const auto& refusal : options.refusals) {
            INFO("refusal: " << refusal.name);
            result<completion> whole = completion{};
            REQUIRE_NOTHROW(whole = provider_complete(p, refusal.request, options));
            REQUIRE_FALSE(whole.has_value());
            CHECK(whole.error().kind == refusal.kind);
            CHECK_FALSE(whole.error().message.empty());

            stream_outcome s;
            REQUIRE_NOTHROW(s = provider_stream(p, refusal.request, options));
            REQUIRE_FALSE(s.answer.has_value());
            CHECK(s.answer.error().kind == refusal.kind);
            CHECK(s.deltas.empty());
        }
    }

    SECTION("name() and health() are cheap and honest: a name, ok while healthy, and the models it serves") {
        auto p = make();
        CHECK_FALSE(std::string_view{p.name()}.empty());
        const component_health h = p.health();
        CHECK(h.ok);
        if constexpr (requires { p.models(); }) {
            const std::vector<std::string> models = p.models();
            CHECK_FALSE(models.empty());
            for (const auto& m : models) CHECK_FALSE(m.empty());
        }
    }

    SECTION("one instance serves concurrent calls: each answers as a lone call does") {
        auto p = make();
        const auto lone = provider_complete(p, options.request, options);
        REQUIRE(lone.has_value());
        constexpr int threads = 8;
        std::atomic<int> failed{0}, different{0}, thrown{0};
        std::vector<std::thread> workers;
        for (int t = 0; t < threads; ++t)
            workers.emplace_back([&p, &options, &lone, &failed, &different, &thrown] {
                for (int i = 0; i < options.concurrent_rounds; ++i) {
                    try {
                        const auto whole = provider_complete(p, options.request, options);
                        const auto s = provider_stream(p, options.request, options);
                        if (!p.health().ok) ++failed;
                        if (!whole || !s.answer) {
                            ++failed;
                        } else if (s.joined() != s.answer->content ||
                                   (options.deterministic && (whole->content != lone->content || s.answer->content != lone->content))) {
                            ++different;
                        }
                    } catch (...) {
                        ++thrown;
                    }
                }
            });
        for (auto& w : workers) w.join();
        CHECK(failed == 0);
        CHECK(different == 0);
        CHECK(thrown == 0);
    }
}

} // namespace chatkit::testing
