// The conformance kits must catch what they promise to catch. Each test case here runs a kit
// against a plugin broken in one way; tests/core/CMakeLists.txt runs each case alone, with
// Catch's --section set to the kit's section that must notice, and passes only when that
// section fails at the check named there. A kit check that could never fail would fail this.
#include <chatkit/testing/cache.hpp>
#include <chatkit/testing/middleware.hpp>
#include <chatkit/testing/provider.hpp>
#include <chatkit/testing/store.hpp>

#include <catch2/catch.hpp>

#include <map>
#include <memory>
#include <mutex>
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
    chatkit::testing::check_cache_conformance<faulty_cache<Fault>>(make, {.pass_time = [&shared](std::chrono::seconds d) { shared.pass(d); }});
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

// A store that keeps every user's messages in one list: users see each other's history.
class unscoped_store {
public:
    chatkit::result<void> append(const chatkit::exchange& e) {
        std::lock_guard lock{s_->m};
        for (const auto& m : e.messages)
            s_->all.push_back({std::to_string(s_->all.size() + 1), m.role, m.content, e.model, e.created_at, e.request_id});
        return {};
    }
    chatkit::result<chatkit::history_page> history(const chatkit::history_query& q) {
        std::lock_guard lock{s_->m};
        if (!q.before.empty()) return chatkit::error{chatkit::error_kind::invalid_request, "no", "invalid_cursor", "before"};
        chatkit::history_page page;
        const std::size_t begin = s_->all.size() > q.limit ? s_->all.size() - q.limit : 0;
        page.messages.assign(s_->all.begin() + static_cast<std::ptrdiff_t>(begin), s_->all.end());
        return page;
    }
    chatkit::component_health health() { return {}; }

private:
    struct state {
        std::mutex m;
        std::vector<chatkit::stored_message> all;
    };
    std::shared_ptr<state> s_ = std::make_shared<state>();
};

} // namespace

// The correct models pass every section: the mutants below fail for their fault alone.
TEST_CASE("kit: correct models pass") {
    check_faulty_cache<cache_fault::none>();
    check_faulty_provider<provider_fault::none>();
    check_faulty_middleware<middleware_fault::none>();
}

TEST_CASE("kit mutant: a cache that drops extra") { check_faulty_cache<cache_fault::drops_extra>(); }
TEST_CASE("kit mutant: a cache that keeps 200 bytes of a key") { check_faulty_cache<cache_fault::short_keys>(); }
TEST_CASE("kit mutant: a cache that ignores TTLs") { check_faulty_cache<cache_fault::ignores_ttl>(); }
TEST_CASE("kit mutant: a provider that streams on after the client left") { check_faulty_provider<provider_fault::ignores_sink>(); }
TEST_CASE("kit mutant: a provider that throws its refusals") { check_faulty_provider<provider_fault::throws_refusal>(); }
TEST_CASE("kit mutant: a provider whose stream differs from complete") { check_faulty_provider<provider_fault::stream_differs>(); }
TEST_CASE("kit mutant: a middleware that drops a streamed answer") { check_faulty_middleware<middleware_fault::drops_stream>(); }
TEST_CASE("kit mutant: a middleware that throws on a body that is not JSON") { check_faulty_middleware<middleware_fault::throws_on_bad_json>(); }
TEST_CASE("kit mutant: a store that mixes users") {
    chatkit::testing::check_store_conformance<unscoped_store>([] { return unscoped_store{}; });
}
