// docs/gateway.md's samples: a gateway's service type, and the PII middleware's options.
#include <chatkit/api_key_auth.hpp>
#include <chatkit/chatkit.hpp>
#include <chatkit/echo_provider.hpp>
#include <chatkit/key_rate_limits.hpp>
#include <chatkit/key_usage_limits.hpp>
#include <chatkit/rate_limiter.hpp>
#include <chatkit/request_id.hpp>
#include <chatkit/sqlite_key_directory.hpp>
#include <chatkit/sqlite_store.hpp>
#include <chatkit/sqlite_usage_store.hpp>
#include <chatkit/usage_recorder.hpp>
#include <chatkit/pii_redaction.hpp>

#include <catch2/catch.hpp>

#include <map>
#include <string>
#include <string_view>

namespace gateway_sample {
using auth = chatkit::api_key_auth<chatkit::sqlite_key_directory>;
using my_service = chatkit::service<chatkit::echo_provider, chatkit::sqlite_store, chatkit::no_cache, chatkit::request_id,
                                    chatkit::usage_recorder<chatkit::sqlite_usage_store>, auth, chatkit::key_rate_limits_mt,
                                    chatkit::key_usage_limits_mt, chatkit::rate_limiter_mt>;
static_assert(sizeof(my_service) > 0); // instantiates the service, which checks every plugin's concept
} // namespace gateway_sample

TEST_CASE("gateway.md: the PII options decide each request's mode and report what was found") {
    using gateway_sample::auth;
    struct {
        std::map<std::string, std::size_t, std::less<>> counts;
        void add(std::string_view kind, std::size_t n) { counts[std::string{kind}] += n; }
    } metrics;

    chatkit::pii_redaction_options pii;
    pii.default_mode = chatkit::pii_mode::count;                          // off unless set
    pii.route_modes = {{"/v1/chat/completions", chatkit::pii_mode::mask}, // by route template
                       {"/api/v1/conversations/{id}/messages", chatkit::pii_mode::refuse}};
    pii.kinds = chatkit::pii_kind_set::all().without(chatkit::pii_kind::ip); // default: all
    // When set, decides every chat request's mode (ahead of route_modes and default_mode), e.g. per
    // team: put the authenticating middleware before this one, so that req.caller is set.
    pii.policy = [](const chatkit::http_request& req) {
        return req.caller.team_id == "support" ? chatkit::pii_mode::mask : chatkit::pii_mode::count;
    };
    pii.on_found = [&metrics](chatkit::pii_kind kind, std::size_t n) { metrics.add(chatkit::pii_kind_name(kind), n); };

    using my_service = chatkit::service<chatkit::echo_provider, chatkit::sqlite_store, chatkit::no_cache, chatkit::request_id, auth,
                                        chatkit::pii_redaction, chatkit::key_rate_limits_mt>;
    static_assert(sizeof(my_service) > 0);

    chatkit::http_request support;
    support.caller.team_id = "support";
    CHECK(pii.policy(support) == chatkit::pii_mode::mask);
    CHECK(pii.policy(chatkit::http_request{}) == chatkit::pii_mode::count);
    CHECK_FALSE(pii.kinds.contains(chatkit::pii_kind::ip));
    pii.on_found(chatkit::pii_kind::email, 2);
    CHECK(metrics.counts.at(std::string{chatkit::pii_kind_name(chatkit::pii_kind::email)}) == 2);
}
