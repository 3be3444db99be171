// The conversations API's wire side (/api/v1/conversations...): its paths, request bodies and
// their validation, UUIDs, the context window a conversation's next turn is sent with, and its
// Server-Sent Events. The service (chatkit/service.hpp) runs the routes; this header only
// translates, so that it can be tested without one.
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/chat_body.hpp"
#include "chatkit/conversation_store.hpp"
#include "chatkit/error.hpp"
#include "chatkit/json_text.hpp"
#include "chatkit/pricing.hpp"
#include "chatkit/random_id.hpp"
#include "chatkit/sse.hpp"

#include <nlohmann/json.hpp>

#include <charconv>
#include <functional>
#include <map>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace chatkit::conversations_api {

inline constexpr std::string_view prefix = "/api/v1/conversations";
using query_map = std::map<std::string, std::string, std::less<>>; // http_request::query

// What the routes accept; every bound explicit, as request_limits is.
struct limits {
    std::size_t max_title_bytes = 500;      // the design's VARCHAR(500)
    std::size_t max_metadata_bytes = 16384; // as JSON text
    std::size_t max_message_bytes = 1 << 20;
    std::size_t max_comment_bytes = 4096;
    std::size_t default_page = 20;
    std::size_t max_page = 100;
    // The context a turn is sent with: at most this many earlier messages and about this many
    // tokens of them (estimated from their bytes); the oldest go first, a system prompt stays.
    std::size_t context_messages = 50;
    std::int64_t context_tokens = 16000;
};

// Which route a path names. `id` is the path's conversation id as sent (not yet checked).
struct target {
    enum class kind { none, collection, conversation, messages, stream, feedback } route = kind::none;
    std::string_view id{};
};

[[nodiscard]] inline target parse_path(std::string_view path) noexcept {
    if (!path.starts_with(prefix)) return {};
    path.remove_prefix(prefix.size());
    if (path.empty()) return {target::kind::collection, {}};
    if (path.front() != '/') return {};
    path.remove_prefix(1);
    const auto slash = path.find('/');
    const std::string_view id = path.substr(0, slash);
    if (id.empty()) return {};
    if (slash == std::string_view::npos) return {target::kind::conversation, id};
    const std::string_view rest = path.substr(slash + 1);
    if (rest == "messages") return {target::kind::messages, id};
    if (rest == "stream") return {target::kind::stream, id};
    if (rest == "feedback") return {target::kind::feedback, id};
    return {};
}

// A random (version 4) UUID, lowercase: random_id's 32 hex digits with the version and variant
// set and the dashes put in.
[[nodiscard]] inline std::string make_uuid() {
    std::string hex = random_id({}, 32);
    hex[12] = '4';                                                          // version 4
    const int nibble = hex[16] <= '9' ? hex[16] - '0' : hex[16] - 'a' + 10; // variant 10xx
    hex[16] = "89ab"[nibble & 0x3];
    return hex.substr(0, 8) + '-' + hex.substr(8, 4) + '-' + hex.substr(12, 4) + '-' + hex.substr(16, 4) + '-' + hex.substr(20);
}

// 8-4-4-4-12 hex digits, either case; stores keep the lowercase form.
[[nodiscard]] inline bool is_uuid(std::string_view s) noexcept {
    if (s.size() != 36) return false;
    for (std::size_t i = 0; i < s.size(); ++i) {
        const char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-') return false;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
            return false;
        }
    }
    return true;
}

[[nodiscard]] inline std::string lowercase(std::string_view s) {
    std::string out{s};
    for (auto& c : out)
        if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
    return out;
}

// The id of a path or a body, as stores keep it; a 400 naming `param` when it is no UUID.
[[nodiscard]] inline result<std::string> parse_id(std::string_view text, std::string param) {
    if (!is_uuid(text)) return error{error_kind::invalid_request, "'" + param + "' must be a UUID", "invalid_id", std::move(param)};
    return lowercase(text);
}

namespace detail_ {
inline error unknown_field(const std::string& name) {
    return chatkit::detail::invalid("unknown field '" + name + "'", name, "unknown_field");
}
inline result<std::optional<std::string>> title_of(const nlohmann::json& v, const limits& l) {
    if (v.is_null()) return std::optional<std::string>{};
    if (!v.is_string()) return chatkit::detail::invalid("'title' must be a string or null", "title", "invalid_type");
    auto title = v.get<std::string>();
    if (title.size() > l.max_title_bytes)
        return chatkit::detail::invalid("'title' must be at most " + std::to_string(l.max_title_bytes) + " bytes", "title");
    return std::optional<std::string>{std::move(title)};
}
inline result<nlohmann::json> metadata_of(const nlohmann::json& v, const limits& l) {
    if (v.is_null()) return nlohmann::json::object();
    if (!v.is_object()) return chatkit::detail::invalid("'metadata' must be a JSON object", "metadata", "invalid_type");
    if (dump_json(v).size() > l.max_metadata_bytes)
        return chatkit::detail::invalid("'metadata' must be at most " + std::to_string(l.max_metadata_bytes) + " bytes as JSON",
                                        "metadata");
    return v;
}
} // namespace detail_

// POST /api/v1/conversations {"user_id", "title"?, "metadata"?}: the conversation to create
// (id, owner and times are the caller's to set). Unknown fields are refused, so a misspelt one
// is not silently lost.
[[nodiscard]] inline result<conversation> parse_create(const nlohmann::json& body, const request_limits& rl, const limits& l) {
    using chatkit::detail::invalid;
    if (!body.is_object()) return invalid("request body must be a JSON object", "");
    conversation c;
    bool has_user = false;
    for (const auto& [key, value] : body.items()) {
        if (key == "user_id") {
            if (!value.is_string()) return invalid("'user_id' must be a string", "user_id", "invalid_type");
            c.user_id = value.get<std::string>();
            if (c.user_id.empty() || c.user_id.size() > rl.max_user_id_bytes || chatkit::detail::has_control_characters(c.user_id))
                return invalid("'user_id' must be 1 to " + std::to_string(rl.max_user_id_bytes) + " bytes without control characters",
                               "user_id");
            has_user = true;
        } else if (key == "title") {
            auto title = detail_::title_of(value, l);
            if (!title) return std::move(title).error();
            c.title = std::move(*title);
        } else if (key == "metadata") {
            auto metadata = detail_::metadata_of(value, l);
            if (!metadata) return std::move(metadata).error();
            c.metadata = std::move(*metadata);
        } else {
            return detail_::unknown_field(key);
        }
    }
    if (!has_user) return invalid("'user_id' is required", "user_id", "missing_field");
    return c;
}

// PATCH /api/v1/conversations/{id} {"title"?, "metadata"?}: only those two may change.
[[nodiscard]] inline result<conversation_update> parse_update(const nlohmann::json& body, const limits& l) {
    if (!body.is_object()) return chatkit::detail::invalid("request body must be a JSON object", "");
    conversation_update u;
    for (const auto& [key, value] : body.items()) {
        if (key == "title") {
            auto title = detail_::title_of(value, l);
            if (!title) return std::move(title).error();
            u.title = std::move(*title);
        } else if (key == "metadata") {
            auto metadata = detail_::metadata_of(value, l);
            if (!metadata) return std::move(metadata).error();
            u.metadata = std::move(*metadata);
        } else {
            return detail_::unknown_field(key);
        }
    }
    return u;
}

// A turn: the user's message and how to answer it.
struct turn_request {
    std::string message{};
    std::string provider{}; // empty: the service's
    std::string model{};
    std::optional<double> temperature{};
    std::optional<int> max_tokens{};
};

// POST .../messages (and POST .../stream) {"message", "provider"?, "model"?, "temperature"?,
// "max_tokens"?}, validated as /chat validates the same fields.
[[nodiscard]] inline result<turn_request> parse_turn(const nlohmann::json& body, const request_limits& rl, const limits& l) {
    using chatkit::detail::invalid;
    if (!body.is_object()) return invalid("request body must be a JSON object", "");
    turn_request t;
    bool has_message = false;
    nlohmann::json as_chat = nlohmann::json::object(); // model, temperature, max_tokens: /chat's checks
    for (const auto& [key, value] : body.items()) {
        if (key == "message") {
            if (!value.is_string()) return invalid("'message' must be a string", "message", "invalid_type");
            t.message = value.get<std::string>();
            has_message = true;
        } else if (key == "provider") {
            if (!value.is_null()) {
                if (!value.is_string()) return invalid("'provider' must be a string", "provider", "invalid_type");
                t.provider = value.get<std::string>();
            }
        } else if (key == "model" || key == "temperature" || key == "max_tokens") {
            as_chat[key] = value;
        } else {
            return detail_::unknown_field(key);
        }
    }
    if (!has_message) return invalid("'message' is required", "message", "missing_field");
    if (t.message.find_first_not_of(" \t\r\n") == std::string::npos)
        return invalid("'message' must not be empty", "message", "empty_message");
    if (t.message.size() > l.max_message_bytes)
        return invalid("'message' must be at most " + std::to_string(l.max_message_bytes) + " bytes", "message");
    as_chat["messages"] = nlohmann::json::array({{{"role", "user"}, {"content", "-"}}});
    auto checked = parse_chat_request(as_chat, rl);
    if (!checked) return std::move(checked).error();
    t.model = std::move(checked->model);
    t.temperature = checked->temperature;
    t.max_tokens = checked->max_tokens;
    return t;
}

// GET .../stream?message=...&model=...&temperature=...&max_tokens=...: the same turn from a
// query string (an EventSource can only GET). Numbers are read as JSON numbers.
[[nodiscard]] inline result<turn_request> parse_turn_query(const query_map& query, const request_limits& rl, const limits& l) {
    nlohmann::json body = nlohmann::json::object();
    for (const auto& [key, value] : query) {
        if (key == "temperature" || key == "max_tokens") {
            auto number = nlohmann::json::parse(value, nullptr, false);
            body[key] = number.is_number() ? number : nlohmann::json(value); // a string: refused as the wrong type
        } else {
            body[key] = value;
        }
    }
    return parse_turn(body, rl, l);
}

// POST .../feedback {"message_id", "feedback_type", "rating"?, "comment"?}.
[[nodiscard]] inline result<feedback> parse_feedback(const nlohmann::json& body, const limits& l) {
    using chatkit::detail::invalid;
    if (!body.is_object()) return invalid("request body must be a JSON object", "");
    feedback f;
    bool has_message = false, has_type = false;
    for (const auto& [key, value] : body.items()) {
        if (key == "message_id") {
            if (!value.is_string()) return invalid("'message_id' must be a string", "message_id", "invalid_type");
            auto id = parse_id(value.get<std::string>(), "message_id");
            if (!id) return std::move(id).error();
            f.message_id = std::move(*id);
            has_message = true;
        } else if (key == "feedback_type") {
            if (!value.is_string()) return invalid("'feedback_type' must be a string", "feedback_type", "invalid_type");
            f.feedback_type = value.get<std::string>();
            if (f.feedback_type != "thumbs_up" && f.feedback_type != "thumbs_down" && f.feedback_type != "flag")
                return invalid("'feedback_type' must be one of thumbs_up, thumbs_down, flag", "feedback_type");
            has_type = true;
        } else if (key == "rating") {
            if (value.is_null()) continue;
            if (!value.is_number_integer()) return invalid("'rating' must be an integer", "rating", "invalid_type");
            const auto rating = value.get<std::int64_t>();
            if (rating < 1 || rating > 5) return invalid("'rating' must be from 1 to 5", "rating");
            f.rating = static_cast<int>(rating);
        } else if (key == "comment") {
            if (value.is_null()) continue;
            if (!value.is_string()) return invalid("'comment' must be a string", "comment", "invalid_type");
            f.comment = value.get<std::string>();
            if (f.comment->size() > l.max_comment_bytes)
                return invalid("'comment' must be at most " + std::to_string(l.max_comment_bytes) + " bytes", "comment");
        } else {
            return detail_::unknown_field(key);
        }
    }
    if (!has_message) return invalid("'message_id' is required", "message_id", "missing_field");
    if (!has_type) return invalid("'feedback_type' is required", "feedback_type", "missing_field");
    return f;
}

// A page size from `?limit=`: 1 to max, the default when absent.
[[nodiscard]] inline result<std::size_t> parse_limit(const query_map& query, std::size_t fallback, std::size_t max) {
    const auto it = query.find("limit");
    if (it == query.end()) return fallback;
    std::size_t n = 0;
    const auto& s = it->second;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec != std::errc{} || end != s.data() + s.size() || n < 1 || n > max)
        return chatkit::detail::invalid("'limit' must be an integer from 1 to " + std::to_string(max), "limit");
    return n;
}

// The messages a turn is sent with: the conversation's system prompt (its metadata's
// "system_prompt", when a string), then the newest earlier messages that fit the window, then the
// new message. The oldest go first; a reply whose question was dropped goes too, so that the
// context starts with the user's turn, as Anthropic's and Gemini's APIs require.
[[nodiscard]] inline std::vector<message> context_window(const conversation& c, const std::vector<conversation_message>& earlier,
                                                         std::string_view new_message, const limits& l) {
    std::vector<message> out;
    if (auto it = c.metadata.find("system_prompt"); it != c.metadata.end() && it->is_string() && !it->get_ref<const std::string&>().empty())
        out.push_back({role::system, it->get<std::string>(), {}});
    std::int64_t budget = l.context_tokens - estimate_tokens(new_message.size());
    for (const auto& m : out) budget -= estimate_tokens(m.content.size());
    std::size_t first = earlier.size(); // earlier[first..] fit, counted from the newest
    while (first > 0 && earlier.size() - first < l.context_messages) {
        const std::int64_t cost = estimate_tokens(earlier[first - 1].content.size());
        if (cost > budget) break;
        budget -= cost;
        --first;
    }
    while (first < earlier.size() && earlier[first].role != role::user) ++first;
    for (std::size_t i = first; i < earlier.size(); ++i) out.push_back({earlier[i].role, earlier[i].content, {}});
    out.push_back({role::user, std::string{new_message}, {}});
    return out;
}

// The stream's events: `data: {"content":"…","done":false}` per delta, then one with done true
// carrying the stored answer's id, usage and cost, or an `error` in chatkit's envelope.
[[nodiscard]] inline std::string delta_event(std::string_view text) {
    std::string out = "data: {\"content\":";
    append_json_string(out, text);
    out += ",\"done\":false}\n\n";
    return out;
}
[[nodiscard]] inline std::string done_event(std::string_view message_id, std::string_view conversation_id, const token_usage& usage,
                                            std::optional<double> cost_usd) {
    const nlohmann::json body = {{"content", ""},
                                 {"done", true},
                                 {"message_id", message_id},
                                 {"conversation_id", conversation_id},
                                 {"usage", usage},
                                 {"cost_usd", cost_usd ? nlohmann::json(*cost_usd) : nlohmann::json(nullptr)}};
    return "data: " + dump_json(body) + "\n\n";
}
[[nodiscard]] inline std::string error_event(const error& e, std::string_view request_id) {
    nlohmann::json body = to_envelope(e);
    body["request_id"] = request_id;
    body["content"] = "";
    body["done"] = true;
    return "data: " + dump_json(body) + "\n\n";
}

} // namespace chatkit::conversations_api
