// The usage records every usage store test writes: the SQLite store's and the DynamoDB store's
// cases compare their summaries of the same history with the reference model's.
#pragma once

#include <chatkit/usage_store.hpp>

#include <optional>
#include <string>
#include <vector>

namespace test_support {

inline constexpr chatkit::unix_ms day_ms = 86'400'000;
inline constexpr chatkit::unix_ms dec1 = 1'764'547'200'000; // 2025-12-01T00:00:00Z

inline chatkit::usage_record usage_record_of(std::string team, std::string key, std::string model, chatkit::unix_ms time, int prompt,
                                             int completion, std::optional<double> cost) {
    chatkit::usage_record r;
    r.time = time;
    r.request_id = "req-" + std::to_string(time);
    r.team_id = std::move(team);
    r.key_id = std::move(key);
    r.model = std::move(model);
    r.provider = "echo";
    r.status = 200;
    r.usage = {prompt, completion, 1, 0};
    r.cost_usd = cost;
    r.latency_ms = 12.5;
    return r;
}

// Team t1 over three days of December 2025 (three models, one unpriced, a failed request with no
// tokens), another team, a t1 record outside [dec1, dec1 + 5 days), and one made without authentication.
inline std::vector<chatkit::usage_record> usage_history() {
    constexpr auto day = day_ms;
    return {
        usage_record_of("t1", "key_a", "gpt-4o", dec1 + 1000, 100, 50, 0.001),
        usage_record_of("t1", "key_a", "gpt-4o", dec1 + day + 5, 10, 5, 0.0005),
        usage_record_of("t1", "key_b", "mini", dec1 + day + 6, 20, 20, 0.002),
        usage_record_of("t1", "key_b", "unpriced", dec1 + 2 * day, 7, 3, std::nullopt),
        usage_record_of("t1", "key_b", "unpriced", dec1 + 2 * day + 1, 0, 0, std::nullopt), // a failed request: no tokens, not "unpriced"
        usage_record_of("t2", "key_c", "gpt-4o", dec1 + day, 1000, 1000, 1.0),               // another team
        usage_record_of("t1", "key_a", "gpt-4o", dec1 + 9 * day, 1, 1, 5.0),                 // outside the range the tests ask for
        usage_record_of("", "", "gpt-4o", dec1 + 3 * day, 4, 4, 0.25),                       // no authentication
    };
}

} // namespace test_support
