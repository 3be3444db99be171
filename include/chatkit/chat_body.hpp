// What a client may send (request_limits) and the check of a POST /chat body into a chat_request;
// the other API surfaces (openai_api.hpp, anthropic_api.hpp, ...) check their bodies against the
// same limits with the same error form.
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/error.hpp"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <string>
#include <string_view>

namespace chatkit {

// What a client may send; every bound is explicit so a deployment can tune it.
struct request_limits {
    std::size_t max_messages = 256;
    std::size_t max_user_id_bytes = 128;
    std::size_t max_model_bytes = 256;
    int max_tokens = 32768; // the cap on a request's max_tokens
};

namespace detail {
inline error invalid(std::string message, std::string param, std::string code = "invalid_value") {
    return error{error_kind::invalid_request, std::move(message), std::move(code), std::move(param)};
}
inline bool has_control_characters(std::string_view s) {
    for (unsigned char c : s)
        if (c < 0x20 || c == 0x7f) return true;
    return false;
}
} // namespace detail

// Validates a POST /chat body: the full form {"messages":[...], ...} or the short form
// {"user_id":"...","content":"..."}. Unknown fields are ignored, as OpenAI clients expect.
[[nodiscard]] inline result<chat_request> parse_chat_request(const nlohmann::json& body, const request_limits& limits = {}) {
    using detail::invalid;
    if (!body.is_object()) return invalid("request body must be a JSON object", "");
    chat_request req;

    if (auto it = body.find("messages"); it != body.end()) {
        if (!it->is_array()) return invalid("'messages' must be an array", "messages", "invalid_type");
        if (it->empty()) return invalid("'messages' must not be empty", "messages", "empty_messages");
        if (it->size() > limits.max_messages)
            return invalid("'messages' has " + std::to_string(it->size()) + " items; the limit is " + std::to_string(limits.max_messages),
                           "messages", "too_many_messages");
        req.messages.reserve(it->size());
        for (std::size_t i = 0; i < it->size(); ++i) {
            const auto& m = (*it)[i];
            const std::string at = "messages[" + std::to_string(i) + "]";
            if (!m.is_object()) return invalid(at + " must be an object", at, "invalid_type");
            auto r = m.find("role");
            if (r == m.end() || !r->is_string()) return invalid(at + ".role must be a string", at + ".role", "invalid_type");
            auto parsed_role = parse_role(r->get_ref<const std::string&>());
            if (!parsed_role || *parsed_role == role::tool)
                return invalid(at + ".role must be one of system, user, assistant", at + ".role", "invalid_role");
            auto c = m.find("content");
            if (c == m.end() || !c->is_string()) return invalid(at + ".content must be a string", at + ".content", "invalid_type");
            req.messages.push_back({*parsed_role, c->get<std::string>()});
        }
    } else if (auto c = body.find("content"); c != body.end()) {
        if (!c->is_string()) return invalid("'content' must be a string", "content", "invalid_type");
        req.messages.push_back({role::user, c->get<std::string>()});
    } else {
        return invalid("request needs 'messages' (an array) or 'content' (a string)", "messages", "missing_field");
    }

    if (auto it = body.find("model"); it != body.end() && !it->is_null()) {
        if (!it->is_string()) return invalid("'model' must be a string", "model", "invalid_type");
        req.model = it->get<std::string>();
        if (req.model.size() > limits.max_model_bytes || detail::has_control_characters(req.model))
            return invalid("'model' is too long or has control characters", "model");
    }
    if (auto it = body.find("temperature"); it != body.end() && !it->is_null()) {
        if (!it->is_number()) return invalid("'temperature' must be a number", "temperature", "invalid_type");
        const double t = it->get<double>();
        if (!(t >= 0.0 && t <= 2.0)) return invalid("'temperature' must be between 0 and 2", "temperature");
        req.temperature = t;
    }
    if (auto it = body.find("max_tokens"); it != body.end() && !it->is_null()) {
        if (!it->is_number_integer()) return invalid("'max_tokens' must be an integer", "max_tokens", "invalid_type");
        const auto n = it->get<std::int64_t>();
        if (n < 1 || n > limits.max_tokens)
            return invalid("'max_tokens' must be between 1 and " + std::to_string(limits.max_tokens), "max_tokens");
        req.max_tokens = static_cast<int>(n);
    }
    if (auto it = body.find("user_id"); it != body.end() && !it->is_null()) {
        if (!it->is_string()) return invalid("'user_id' must be a string", "user_id", "invalid_type");
        req.user_id = it->get<std::string>();
        // No '/': the id is a path segment of GET /history/{user_id}, where an escaped slash is
        // decoded before routing, so such a user's history could never be read.
        if (req.user_id.empty() || req.user_id.size() > limits.max_user_id_bytes || detail::has_control_characters(req.user_id) ||
            req.user_id.find('/') != std::string::npos)
            return invalid("'user_id' must be 1 to " + std::to_string(limits.max_user_id_bytes) +
                               " bytes without control characters or '/'",
                           "user_id");
    }
    if (auto it = body.find("stream"); it != body.end() && !it->is_null()) {
        if (!it->is_boolean()) return invalid("'stream' must be a boolean", "stream", "invalid_type");
        req.stream = it->get<bool>();
    }
    if (auto it = body.find("cache"); it != body.end() && !it->is_null()) {
        if (!it->is_boolean()) return invalid("'cache' must be a boolean", "cache", "invalid_type");
        req.use_cache = it->get<bool>();
    }
    return req;
}

} // namespace chatkit
