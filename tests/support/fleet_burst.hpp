// What the tests of limits shared by replicas (CHAT_LIMITS=shared) share: a burst of concurrent
// chats spread over several sample_server processes, counted by outcome, and a wait that keeps a
// burst inside one UTC minute (the shared per-minute limits count calendar minutes).
#pragma once

#include "server_process.hpp"

#include <chatkit/clock.hpp>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace test_support {

// A burst that straddled two minutes would see two windows: waits, when the minute is in its last
// 15 s, for the next one to begin.
inline void wait_for_a_fresh_minute() {
    const auto into = chatkit::now_unix_ms() % 60'000;
    if (into > 45'000) std::this_thread::sleep_for(std::chrono::milliseconds(60'000 - into + 200));
}

struct fleet_outcome {
    int ok = 0, limited = 0, other = 0;
    std::vector<std::string> codes; // of the 429s
};

// `count` POST /chat with `body` and the bearer `key` at once, spread over `servers` in turn.
inline fleet_outcome burst_over(const std::vector<server_process*>& servers, const std::string& key, const std::string& body, int count) {
    std::atomic<int> ok{0}, limited{0}, other{0};
    std::atomic<bool> go{false};
    std::mutex codes_mutex;
    std::vector<std::string> codes;
    std::vector<std::thread> threads;
    for (int i = 0; i < count; ++i)
        threads.emplace_back([&, i] {
            auto c = servers[static_cast<std::size_t>(i) % servers.size()]->client();
            while (!go) std::this_thread::yield();
            auto r = c.Post("/chat", {{"Authorization", "Bearer " + key}}, body, "application/json");
            if (!r) return void(++other);
            if (r->status == 200) return void(++ok);
            if (r->status != 429) return void(++other);
            ++limited;
            const auto error = nlohmann::json::parse(r->body, nullptr, false);
            std::lock_guard lock{codes_mutex};
            codes.push_back(error.is_discarded() ? std::string{"?"} : error["error"].value("code", "?"));
        });
    go = true;
    for (auto& t : threads) t.join();
    return {ok, limited, other, codes};
}

} // namespace test_support
