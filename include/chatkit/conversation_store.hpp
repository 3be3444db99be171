// The ConversationStore concept: a Store that also keeps conversations (a titled thread of
// messages whose earlier turns are the context of the next), their messages with what each
// answer cost, and users' feedback on answers. The service serves /api/v1/conversations when its
// Store models it.
//
// Why an extension of Store and not a fourth concept: a deployment keeps conversations where it
// keeps history (one database, one migration, one health check), and a store author who does
// not want conversations writes nothing more. The plain Store page stays three members long.
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/clock.hpp"
#include "chatkit/error.hpp"
#include "chatkit/store.hpp"

#include <nlohmann/json.hpp>

#include <concepts>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace chatkit {

struct conversation_totals {
    std::int64_t message_count = 0;
    std::int64_t total_tokens = 0;
    double total_cost_usd = 0; // of the messages that have a price; an unpriced one adds nothing
};

struct conversation {
    std::string id{};    // a UUID, made by the service
    std::string owner{}; // who may see it: the caller's team with authentication, else ""; never shown
    std::string user_id{};
    std::optional<std::string> title{};
    nlohmann::json metadata = nlohmann::json::object(); // a JSON object
    unix_ms created_at = 0;
    unix_ms updated_at = 0;
    conversation_totals totals{}; // filled by find_conversation; other members may leave it zero
};

// Which conversation, as seen by whom: a conversation whose owner differs does not exist.
struct conversation_ref {
    std::string owner{};
    std::string id{};
};

struct conversation_message {
    std::string id{}; // a UUID, made by the service
    std::string conversation_id{};
    chatkit::role role = role::user;
    std::string content{};
    // An answer's (role assistant); none on the user's message.
    std::string provider{};
    std::string model{};
    std::optional<token_usage> usage{};
    std::optional<double> cost_usd{};
    std::optional<double> latency_ms{};
    std::optional<double> time_to_first_token_ms{};
    std::string request_id{};
    unix_ms created_at = 0;
};

// One user message and its answer, appended together so that no other exchange comes between.
struct conversation_append {
    conversation_ref conversation{};
    std::vector<conversation_message> messages{};
    unix_ms at = 0; // the conversation's new updated_at
};

struct conversation_query {
    std::string owner{};
    std::string user_id{};
    std::size_t limit = 20;
    std::string cursor{}; // a next_cursor from the previous page; empty for the newest page
};
struct conversation_page {
    std::vector<conversation> conversations{}; // newest (by created_at) first
    std::optional<std::string> next_cursor{};
};

struct conversation_message_query {
    conversation_ref conversation{};
    std::size_t limit = 50;
    std::string after{}; // a next_cursor from the previous page; empty for the oldest page
    // true: the `limit` newest messages (the context of the next turn), oldest first, no cursor.
    bool newest = false;
};
struct conversation_message_page {
    std::vector<conversation_message> messages{}; // oldest first
    std::optional<std::string> next_cursor{};     // set when newer messages remain
};

// What PATCH changes: each member set is replaced (a title may be set to none).
struct conversation_update {
    conversation_ref conversation{};
    std::optional<std::optional<std::string>> title{};
    std::optional<nlohmann::json> metadata{};
    unix_ms at = 0; // the new updated_at
};

struct feedback {
    std::string id{}; // a UUID, made by the service
    std::string conversation_id{};
    std::string message_id{};
    std::string feedback_type{}; // "thumbs_up" | "thumbs_down" | "flag"
    std::optional<int> rating{}; // 1-5
    std::optional<std::string> comment{};
    unix_ms created_at = 0;
};

struct feedback_submission {
    std::string owner{}; // of the conversation, as in conversation_ref
    chatkit::feedback feedback{};
};

namespace detail {
template <class S>
concept keeps_conversations = requires(S& s, const conversation& c, const conversation_ref& r, const conversation_query& q,
                                       const conversation_update& u, const conversation_append& a, const conversation_message_query& mq,
                                       const feedback_submission& f) {
    { s.create_conversation(c) } -> std::same_as<result<void>>;
    { s.conversations(q) } -> std::same_as<result<conversation_page>>;
    { s.find_conversation(r) } -> std::same_as<result<conversation>>;
    { s.update_conversation(u) } -> std::same_as<result<conversation>>;
    { s.delete_conversation(r) } -> std::same_as<result<void>>;
    { s.append_to_conversation(a) } -> std::same_as<result<void>>;
    { s.conversation_messages(mq) } -> std::same_as<result<conversation_message_page>>;
    { s.add_feedback(f) } -> std::same_as<result<void>>;
    { s.conversation_feedback(r) } -> std::same_as<result<std::vector<feedback>>>;
};
} // namespace detail

/// A ConversationStore model is a blocking Store (chatkit/store.hpp) that also provides:
///   1. `create_conversation(const conversation&)` — stores a new conversation; durable on return.
///   2. `conversations(const conversation_query&)` — the owner's conversations of one user,
///      newest first, `limit` per page with an opaque `next_cursor` while more remain (a
///      malformed cursor is `invalid_request`).
///   3. `find_conversation(const conversation_ref&)` — the conversation with its `totals`
///      (messages, tokens, cost), so a client sees what a conversation cost without paging.
///   4. `update_conversation(const conversation_update&)` — replaces the members set and
///      `updated_at`; returns the conversation as it now is.
///   5. `delete_conversation(const conversation_ref&)` — removes it with its messages and
///      feedback: nothing of a deleted conversation may be read back.
///   6. `append_to_conversation(const conversation_append&)` — appends the messages in order, all
///      or none, next to each other, and sets `updated_at`; returns only once durable, because the
///      service answers the client after it (as Store's append).
///   7. `conversation_messages(const conversation_message_query&)` — oldest first, paged forward
///      from `after`; or, with `newest`, the last `limit` messages (the context window).
///   8. `add_feedback(const feedback_submission&)` — stores feedback on a message of that
///      conversation; durable on return.
///   9. `conversation_feedback(const conversation_ref&)` — the conversation's feedback, oldest first.
/// Every member returns `error_kind::not_found` (code "conversation_not_found", or
/// "message_not_found" from 8 when the message is not one of that conversation's) when the
/// conversation does not exist or its owner differs: another team must not learn that it exists.
/// The owner is not a secret but an access scope; ids are the service's UUIDs. Threading and
/// unavailability are as for Store: calls arrive concurrently, a failing database returns
/// `error_kind::unavailable`.
template <class S>
concept conversation_store = blocking_store<S> && detail::keeps_conversations<S>;

namespace detail {
inline error conversation_not_found() { return error{error_kind::not_found, "no such conversation", "conversation_not_found", "id"}; }
inline error message_not_found() {
    return error{error_kind::not_found, "no such message in this conversation", "message_not_found", "message_id"};
}
} // namespace detail

/// The reference model: knows of no conversation, keeps none. What a store_variant answers for a
/// store that keeps no conversations.
struct no_conversations : no_store {
    result<void> create_conversation(const conversation&) {
        return error{error_kind::not_found, "this service's store keeps no conversations", "conversations_unsupported"};
    }
    result<conversation_page> conversations(const conversation_query&) { return conversation_page{}; }
    result<conversation> find_conversation(const conversation_ref&) { return detail::conversation_not_found(); }
    result<conversation> update_conversation(const conversation_update&) { return detail::conversation_not_found(); }
    result<void> delete_conversation(const conversation_ref&) { return detail::conversation_not_found(); }
    result<void> append_to_conversation(const conversation_append&) { return detail::conversation_not_found(); }
    result<conversation_message_page> conversation_messages(const conversation_message_query&) { return detail::conversation_not_found(); }
    result<void> add_feedback(const feedback_submission&) { return detail::conversation_not_found(); }
    result<std::vector<feedback>> conversation_feedback(const conversation_ref&) { return detail::conversation_not_found(); }
};
static_assert(conversation_store<no_conversations>);

// JSON as the API shows it (the design's shapes; the owner is never shown).
inline void to_json(nlohmann::json& j, const conversation& c) {
    j = {{"id", c.id},
         {"user_id", c.user_id},
         {"title", c.title ? nlohmann::json(*c.title) : nlohmann::json(nullptr)},
         {"metadata", c.metadata},
         {"created_at", format_rfc3339(c.created_at)},
         {"updated_at", format_rfc3339(c.updated_at)}};
}

inline void to_json(nlohmann::json& j, const conversation_totals& t) {
    j = {{"total_tokens", t.total_tokens}, {"total_cost_usd", t.total_cost_usd}, {"message_count", t.message_count}};
}

inline void to_json(nlohmann::json& j, const conversation_message& m) {
    auto opt = [](const auto& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); };
    auto text = [](const std::string& s) { return s.empty() ? nlohmann::json(nullptr) : nlohmann::json(s); };
    j = {{"id", m.id},
         {"conversation_id", m.conversation_id},
         {"role", m.role},
         {"content", m.content},
         {"provider", text(m.provider)},
         {"model", text(m.model)},
         {"prompt_tokens", m.usage ? nlohmann::json(m.usage->prompt_tokens) : nlohmann::json(nullptr)},
         {"completion_tokens", m.usage ? nlohmann::json(m.usage->completion_tokens) : nlohmann::json(nullptr)},
         {"total_tokens", m.usage ? nlohmann::json(m.usage->total_tokens()) : nlohmann::json(nullptr)},
         {"cost_usd", opt(m.cost_usd)},
         {"latency_ms", opt(m.latency_ms)},
         {"time_to_first_token_ms", opt(m.time_to_first_token_ms)},
         {"created_at", format_rfc3339(m.created_at)}};
}

inline void to_json(nlohmann::json& j, const feedback& f) {
    j = {{"id", f.id},
         {"conversation_id", f.conversation_id},
         {"message_id", f.message_id},
         {"feedback_type", f.feedback_type},
         {"rating", f.rating ? nlohmann::json(*f.rating) : nlohmann::json(nullptr)},
         {"comment", f.comment ? nlohmann::json(*f.comment) : nlohmann::json(nullptr)},
         {"created_at", format_rfc3339(f.created_at)}};
}

} // namespace chatkit
