// The conformance kits must catch what they promise to catch. Each test case here runs a kit
// against a plugin broken in one way; tests/core/CMakeLists.txt runs each case alone, with
// Catch's --section set to the kit's section that must notice, and passes only when that
// section fails at the check named there. A kit check that could never fail would fail this.
#include <chatkit/testing/cache.hpp>
#include <chatkit/testing/middleware.hpp>
#include <chatkit/testing/provider.hpp>
#include <chatkit/testing/store.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

// A correct in-memory cache, and what its broken variants change.
enum class cache_fault { none, drops_extra, short_keys, ignores_ttl };

template <cache_fault Fault>
class faulty_cache {
public:
    std::optional<chatkit::completion> get(std::string_view key) {
        std::lock_guard lock{s_->m};
        const auto it = s_->entries.find(stored_key(key));
        if (it == s_->entries.end()) return std::nullopt;
        if (Fault != cache_fault::ignores_ttl && s_->now >= it->second.second) return std::nullopt;
        return it->second.first;
    }
    void put(std::string_view key, const chatkit::completion& c, std::chrono::seconds ttl) {
        std::lock_guard lock{s_->m};
        auto kept = c;
        if (Fault == cache_fault::drops_extra) kept.extra = nullptr;
        s_->entries.insert_or_assign(stored_key(key), std::pair{kept, s_->now + ttl});
    }
    chatkit::component_health health() { return {}; }
    void pass(std::chrono::seconds d) {
        std::lock_guard lock{s_->m};
        s_->now += d;
    }

private:
    static std::string stored_key(std::string_view key) {
        return std::string{Fault == cache_fault::short_keys ? key.substr(0, 200) : key}; // as a store with a key limit would
    }
    struct state {
        std::mutex m;
        std::map<std::string, std::pair<chatkit::completion, std::chrono::seconds>> entries;
        std::chrono::seconds now{0};
    };
    std::shared_ptr<state> s_ = std::make_shared<state>();
};

template <cache_fault Fault>
void check_faulty_cache() {
    faulty_cache<Fault> shared; // copies share state: the clock the kit moves is the cache's
    auto make = [&shared] {
        shared = faulty_cache<Fault>{};
        return shared;
    };
    chatkit::testing::check_cache_conformance<faulty_cache<Fault>>(make,
                                                                   {.pass_time = [&shared](std::chrono::seconds d) { shared.pass(d); }});
}

// A word-by-word provider, and what its broken variants change.
enum class provider_fault { none, ignores_sink, throws_refusal, stream_differs };

template <provider_fault Fault>
class faulty_provider {
public:
    std::string_view name() const { return "faulty"; }
    chatkit::result<chatkit::completion> complete(const chatkit::chat_request& r) { return run(r, nullptr); }
    chatkit::result<chatkit::completion> stream(const chatkit::chat_request& r, const chatkit::delta_sink& sink) { return run(r, &sink); }
    chatkit::component_health health() { return {}; }

private:
    chatkit::result<chatkit::completion> run(const chatkit::chat_request& r, const chatkit::delta_sink* sink) {
        if (!r.extensions.empty()) {
            if (Fault == provider_fault::throws_refusal) throw std::invalid_argument("unsupported field");
            return chatkit::error{chatkit::error_kind::invalid_request, "unsupported field", "unsupported_parameter"};
        }
        chatkit::completion c;
        c.model = "faulty-1";
        c.usage.prompt_tokens = 1;
        const std::string text = r.messages.back().content;
        for (std::size_t pos = 0; pos < text.size();) {
            const auto end = std::min(text.find(' ', pos + 1), text.size());
            std::string delta = text.substr(pos, end - pos);
            if (sink && Fault == provider_fault::stream_differs) delta += "!";
            pos = end;
            if (sink && !(*sink)(delta) && Fault != provider_fault::ignores_sink) break;
            c.content += delta;
            ++c.usage.completion_tokens;
        }
        return c;
    }
};

template <provider_fault Fault>
void check_faulty_provider() {
    chatkit::testing::provider_kit_options options;
    auto refused = options.request;
    refused.extensions["tools"] = nlohmann::json::array();
    options.refusals = {{"tools", refused}};
    chatkit::testing::check_provider_conformance<faulty_provider<Fault>>([] { return faulty_provider<Fault>{}; }, options);
}

// A middleware that stamps a header, and what its broken variants change.
enum class middleware_fault { none, drops_stream, throws_on_bad_json };

template <middleware_fault Fault>
struct faulty_middleware {
    std::optional<chatkit::http_response> before(chatkit::http_request& req, chatkit::no_context&) {
        if (Fault == middleware_fault::throws_on_bad_json && req.body.starts_with("{not")) throw std::runtime_error("bad JSON");
        return std::nullopt;
    }
    void after(const chatkit::http_request&, chatkit::http_response& res, chatkit::no_context&) {
        res.headers.insert_or_assign("X-Stamp", "1");
        if (Fault == middleware_fault::drops_stream && res.is_stream()) res.stream = nullptr; // "decorating" by buffering nothing
    }
};

template <middleware_fault Fault>
void check_faulty_middleware() {
    chatkit::testing::check_middleware_conformance<faulty_middleware<Fault>>([] { return faulty_middleware<Fault>{}; });
}

// An in-memory store (cursors are positions in a user's list), and what its broken variant changes:
// one list for every user, so that users see each other's history.
enum class store_fault { none, mixes_users };

template <store_fault Fault>
class faulty_store {
public:
    chatkit::result<void> append(const chatkit::exchange& e) {
        std::lock_guard lock{s_->m};
        auto& list = s_->users[Fault == store_fault::mixes_users ? std::string{} : e.user_id];
        for (const auto& m : e.messages)
            list.push_back({std::to_string(++s_->last_id), m.role, m.content, e.model, e.created_at, e.request_id});
        return {};
    }
    chatkit::result<chatkit::history_page> history(const chatkit::history_query& q) {
        std::size_t end = static_cast<std::size_t>(-1);
        if (!q.before.empty() && (q.before.find_first_not_of("0123456789") != std::string::npos || q.before.size() > 9))
            return chatkit::error{chatkit::error_kind::invalid_request, "not a cursor", "invalid_cursor", "before"};
        if (!q.before.empty()) end = std::stoul(q.before);
        std::lock_guard lock{s_->m};
        const auto& list = s_->users[Fault == store_fault::mixes_users ? std::string{} : q.user_id];
        end = std::min(end, list.size());
        const std::size_t begin = end > q.limit ? end - q.limit : 0;
        chatkit::history_page page;
        page.messages.assign(list.begin() + static_cast<std::ptrdiff_t>(begin), list.begin() + static_cast<std::ptrdiff_t>(end));
        if (begin > 0) page.next_cursor = std::to_string(begin);
        return page;
    }
    chatkit::component_health health() { return {}; }

private:
    struct state {
        std::mutex m;
        std::map<std::string, std::vector<chatkit::stored_message>> users;
        std::uint64_t last_id = 0;
    };
    std::shared_ptr<state> s_ = std::make_shared<state>();
};

// The asynchronous form of a correct cache and a correct store: the kits await them.
class async_cache {
public:
    chatkit::task<std::optional<chatkit::completion>> get(std::string key) { co_return inner_.get(key); }
    chatkit::task<void> put(std::string key, chatkit::completion value, std::chrono::seconds ttl) {
        inner_.put(key, value, ttl);
        co_return;
    }
    chatkit::component_health health() { return inner_.health(); }
    void pass(std::chrono::seconds d) { inner_.pass(d); }

private:
    faulty_cache<cache_fault::none> inner_;
};
static_assert(chatkit::async_cache<async_cache> && !chatkit::blocking_cache<async_cache>);

class async_store {
public:
    chatkit::task<chatkit::result<void>> append(chatkit::exchange e) { co_return inner_.append(e); }
    chatkit::task<chatkit::result<chatkit::history_page>> history(chatkit::history_query q) { co_return inner_.history(q); }
    chatkit::component_health health() { return inner_.health(); }

private:
    faulty_store<store_fault::none> inner_;
};
static_assert(chatkit::async_store<async_store> && !chatkit::blocking_store<async_store>);

// The asynchronous form of a correct provider: word by word, each delta awaited.
// It counts the tasks it makes, in `calls`.
class async_words_provider {
public:
    explicit async_words_provider(std::atomic<int>* calls) : calls_(calls) {}
    std::string_view name() const { return "async-words"; }
    chatkit::task<chatkit::result<chatkit::completion>> complete(chatkit::chat_request r) {
        ++*calls_;
        return complete_task(std::move(r));
    }
    chatkit::task<chatkit::result<chatkit::completion>> stream(chatkit::chat_request r, chatkit::delta_writer out) {
        ++*calls_;
        return stream_task(std::move(r), out);
    }
    chatkit::component_health health() { return {}; }

private:
    chatkit::task<chatkit::result<chatkit::completion>> complete_task(chatkit::chat_request r) { co_return inner_.complete(r); }
    chatkit::task<chatkit::result<chatkit::completion>> stream_task(chatkit::chat_request r, chatkit::delta_writer out) {
        if (!r.extensions.empty()) co_return inner_.complete(r); // the same refusal
        chatkit::completion c;
        c.model = "faulty-1";
        c.usage.prompt_tokens = 1;
        const std::string text = r.messages.back().content;
        for (std::size_t pos = 0; pos < text.size();) {
            const auto end = std::min(text.find(' ', pos + 1), text.size());
            const std::string delta = text.substr(pos, end - pos);
            pos = end;
            if (!co_await out.write(delta)) break;
            c.content += delta;
            ++c.usage.completion_tokens;
        }
        co_return c;
    }
    std::atomic<int>* calls_;
    faulty_provider<provider_fault::none> inner_;
};
static_assert(chatkit::async_provider<async_words_provider> && !chatkit::blocking_provider<async_words_provider>);

} // namespace

// The correct models pass every section: the mutants below fail for their fault alone.
TEST_CASE("kit: correct models pass") {
    check_faulty_cache<cache_fault::none>();
    check_faulty_provider<provider_fault::none>();
    check_faulty_middleware<middleware_fault::none>();
    chatkit::testing::check_store_conformance<faulty_store<store_fault::none>>([] { return faulty_store<store_fault::none>{}; });
}

TEST_CASE("kit: a correct asynchronous provider passes with its tasks run through options.run") {
    std::atomic<int> calls{0}, runs{0}; // the tasks the provider made, and those the kit ran through options.run
    chatkit::testing::provider_kit_options options;
    auto refused = options.request;
    refused.extensions["tools"] = nlohmann::json::array();
    options.refusals = {{"tools", refused}};
    options.run = [&runs](chatkit::task<chatkit::result<chatkit::completion>> t) {
        ++runs;
        return chatkit::sync_wait(std::move(t));
    };
    chatkit::testing::check_provider_conformance<async_words_provider>([&calls] { return async_words_provider{&calls}; }, options);
    CHECK(runs.load() == calls.load()); // in each section: every task it made was run through options.run
}

TEST_CASE("kit: correct asynchronous caches and stores pass") {
    async_cache shared; // copies share state: the clock the kit moves is the cache's
    auto make = [&shared] {
        shared = async_cache{};
        return shared;
    };
    chatkit::testing::check_cache_conformance<async_cache>(make, {.pass_time = [&shared](std::chrono::seconds d) { shared.pass(d); }});
    chatkit::testing::check_store_conformance<async_store>([] { return async_store{}; });
}

TEST_CASE("kit mutant: a cache that drops extra") { check_faulty_cache<cache_fault::drops_extra>(); }
TEST_CASE("kit mutant: a cache that keeps 200 bytes of a key") { check_faulty_cache<cache_fault::short_keys>(); }
TEST_CASE("kit mutant: a cache that ignores TTLs") { check_faulty_cache<cache_fault::ignores_ttl>(); }
TEST_CASE("kit mutant: a provider that streams on after the client left") { check_faulty_provider<provider_fault::ignores_sink>(); }
TEST_CASE("kit mutant: a provider that throws its refusals") { check_faulty_provider<provider_fault::throws_refusal>(); }
TEST_CASE("kit mutant: a provider whose stream differs from complete") { check_faulty_provider<provider_fault::stream_differs>(); }
TEST_CASE("kit mutant: a middleware that drops a streamed answer") { check_faulty_middleware<middleware_fault::drops_stream>(); }
TEST_CASE("kit mutant: a middleware that throws on a body that is not JSON") {
    check_faulty_middleware<middleware_fault::throws_on_bad_json>();
}
TEST_CASE("kit mutant: a store that mixes users") {
    chatkit::testing::check_store_conformance<faulty_store<store_fault::mixes_users>>(
        [] { return faulty_store<store_fault::mixes_users>{}; });
}
