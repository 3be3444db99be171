// Which types model chatkit's concepts and which do not: a plugin missing one member is rejected.
#include <chatkit/chatkit.hpp>

#include <catch2/catch.hpp>

namespace {
using chatkit::chat_request;
using chatkit::completion;
using chatkit::component_health;
using chatkit::delta_sink;
using chatkit::result;

struct provider_without_stream {
    std::string_view name() const { return "x"; }
    result<completion> complete(const chat_request&) { return completion{}; }
    component_health health() { return {}; }
};
struct provider_with_wrong_return {
    std::string_view name() const { return "x"; }
    completion complete(const chat_request&) { return {}; }
    result<completion> stream(const chat_request&, const delta_sink&) { return completion{}; }
    component_health health() { return {}; }
};
struct store_without_history {
    result<void> append(const chatkit::exchange&) { return {}; }
    component_health health() { return {}; }
};
struct cache_without_put {
    std::optional<completion> get(std::string_view) { return std::nullopt; }
    component_health health() { return {}; }
};
struct middleware_without_after {
    std::optional<chatkit::http_response> before(chatkit::http_request&, chatkit::no_context&) { return std::nullopt; }
};
struct key_directory_without_keys {
    std::vector<chatkit::key_record> all() { return {}; }
};
struct key_directory_with_wrong_return {
    std::vector<chatkit::key_record> keys() { return {}; } // must be a result: a read can fail
};
struct middleware_with_context {
    struct context {
        int hits = 0;
    };
    std::optional<chatkit::http_response> before(chatkit::http_request&, context&) { return std::nullopt; }
    void after(const chatkit::http_request&, chatkit::http_response&, context&) {}
};
} // namespace

// The reference models and the stand-ins are models.
static_assert(chatkit::provider<chatkit::no_provider>);
static_assert(chatkit::store<chatkit::no_store>);
static_assert(chatkit::cache<chatkit::no_cache>);
static_assert(chatkit::middleware<chatkit::no_middleware>);
static_assert(chatkit::middleware<middleware_with_context>);
static_assert(chatkit::provider<chatkit::provider_variant<chatkit::no_provider>>);
static_assert(chatkit::store<chatkit::store_variant<chatkit::no_store>>);
static_assert(chatkit::cache<chatkit::cache_variant<chatkit::no_cache>>);
static_assert(chatkit::middleware<chatkit::optional_middleware<middleware_with_context>>);
static_assert(chatkit::key_directory<chatkit::key_directory_variant<chatkit::static_key_directory>>);

// A type missing a member, or returning the wrong type, is not.
static_assert(!chatkit::provider<provider_without_stream>);
static_assert(!chatkit::provider<provider_with_wrong_return>);
static_assert(!chatkit::store<store_without_history>);
static_assert(!chatkit::cache<cache_without_put>);
static_assert(!chatkit::middleware<middleware_without_after>);
static_assert(chatkit::key_directory<chatkit::static_key_directory>);
static_assert(!chatkit::key_directory<key_directory_without_keys>);
static_assert(!chatkit::key_directory<key_directory_with_wrong_return>);
static_assert(std::is_same_v<chatkit::context_of_t<middleware_with_context>, middleware_with_context::context>);
static_assert(std::is_same_v<chatkit::context_of_t<chatkit::no_middleware>, chatkit::no_context>);

TEST_CASE("a variant of providers answers through the one it holds") {
    chatkit::provider_variant<chatkit::no_provider> p{chatkit::no_provider{}};
    CHECK(p.name() == "null");
    chat_request r;
    r.model = "m";
    CHECK(p.complete(r)->model == "m");
    CHECK(p.health().ok);
}

TEST_CASE("a variant of key directories reads the keys of the one it holds, and visit() reaches it") {
    struct failing_directory {
        chatkit::result<std::vector<chatkit::key_record>> keys() {
            return chatkit::error{chatkit::error_kind::unavailable, "down", "store_unavailable"};
        }
    };
    using directory = chatkit::key_directory_variant<chatkit::static_key_directory, failing_directory>;
    chatkit::key_record k;
    k.id = "key_a";
    directory fixed{chatkit::static_key_directory{{k}}};
    REQUIRE(fixed.keys());
    CHECK(fixed.keys()->front().id == "key_a");
    CHECK(fixed.visit([](auto& d) { return std::is_same_v<std::remove_cvref_t<decltype(d)>, chatkit::static_key_directory>; }));
    REQUIRE(fixed.get_if<chatkit::static_key_directory>());
    CHECK_FALSE(fixed.get_if<failing_directory>());
    directory down{failing_directory{}};
    REQUIRE_FALSE(down.keys());
    CHECK(down.keys().error().kind == chatkit::error_kind::unavailable);
}

TEST_CASE("an optional middleware that is off lets requests through untouched") {
    chatkit::optional_middleware<middleware_with_context> off;
    CHECK_FALSE(off.enabled());
    chatkit::http_request req;
    middleware_with_context::context ctx;
    CHECK_FALSE(off.before(req, ctx).has_value());
}
