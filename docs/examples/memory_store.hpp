// A small Store plugin, the worked example of docs/writing-a-store.md: history kept in memory,
// one list of messages per user, with cursors that are positions in that list. A real store
// writes to a database before append() returns; the contract is the same.
#pragma once

#include <chatkit/store.hpp>

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace example {

class memory_store {
public:
    // Only a mutex guards it, so the service may call it on the event loop instead of the pool.
    static constexpr bool nonblocking = true;

    // The exchange's messages in their order, after everything the user already has. Once this
    // returns, history() sees them: the service acknowledges the reply only then.
    chatkit::result<void> append(const chatkit::exchange& e) {
        std::lock_guard lock{state_->mutex};
        auto& messages = state_->users[e.user_id];
        for (const auto& m : e.messages)
            messages.push_back({std::to_string(++state_->last_id), m.role, m.content, e.model, e.created_at, e.request_id});
        return {};
    }

    // The `limit` newest messages older than the cursor, oldest first, and a cursor to the
    // older ones when some remain. The cursor is the position of the page's oldest message.
    chatkit::result<chatkit::history_page> history(const chatkit::history_query& q) {
        std::optional<std::size_t> before;
        if (!q.before.empty() && !(before = parse_cursor(q.before))) // an error is a value: 400 with this code and param
            return chatkit::error{chatkit::error_kind::invalid_request, "'before' is not a cursor of this store", "invalid_cursor",
                                  "before"};
        std::lock_guard lock{state_->mutex};
        chatkit::history_page page;
        const auto user = state_->users.find(q.user_id);
        if (user == state_->users.end()) return page; // no history yet: an empty page, not an error
        const auto& messages = user->second;
        const std::size_t end = std::min(before.value_or(messages.size()), messages.size());
        const std::size_t begin = end > q.limit ? end - q.limit : 0;
        page.messages.assign(messages.begin() + static_cast<std::ptrdiff_t>(begin), messages.begin() + static_cast<std::ptrdiff_t>(end));
        if (begin > 0) page.next_cursor = std::to_string(begin);
        return page;
    }

    // Nothing here can be down; a database store reports a failed connection here.
    chatkit::component_health health() { return {}; }

private:
    // A cursor is a decimal position, nothing else.
    static std::optional<std::size_t> parse_cursor(std::string_view text) {
        std::size_t value = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
        return value;
    }

    struct state {
        std::mutex mutex;
        std::map<std::string, std::vector<chatkit::stored_message>, std::less<>> users;
        std::uint64_t last_id = 0; // message ids: unique, and in time order
    };
    // Shared, so that the store can be moved into a service (a mutex cannot move).
    std::shared_ptr<state> state_ = std::make_shared<state>();
};

static_assert(chatkit::store<memory_store>);

} // namespace example
