// chatkit's one error type and the value-or-error `result` the request path returns.
// A 4xx is normal traffic, so errors are values; exceptions are kept for programming errors.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace chatkit {

enum class error_kind {
    invalid_request,        // 400
    unauthenticated,        // 401: no API key, or one that is unknown, expired or revoked
    permission_denied,      // 403: a valid key that may not do this (e.g. use this model)
    not_found,              // 404
    method_not_allowed,     // 405
    conflict,               // 409: what is to be created exists already (a team id)
    payload_too_large,      // 413
    unsupported_media_type, // 415
    rate_limited,           // 429
    internal,               // 500
    upstream,               // 502: the provider answered with something we cannot use
    unavailable,            // 503: a component (store, provider) is down
    timeout,                // 504: the provider did not answer in time
};

struct error {
    error_kind kind = error_kind::internal;
    std::string message{};
    std::string code{};                       // machine-readable detail, e.g. "invalid_temperature"
    std::string param{};                      // the offending request field, when there is one
    std::optional<int> retry_after_seconds{}; // for 429/503: becomes the Retry-After header
    // Which provider failed, when the service's provider chose among several (a router names
    // the member it tried last); empty otherwise. For the log, metrics and usage records: the
    // client's answer never shows it.
    std::string provider{};
};

[[nodiscard]] constexpr int http_status(error_kind kind) noexcept {
    switch (kind) {
    case error_kind::invalid_request: return 400;
    case error_kind::unauthenticated: return 401;
    case error_kind::permission_denied: return 403;
    case error_kind::not_found: return 404;
    case error_kind::method_not_allowed: return 405;
    case error_kind::conflict: return 409;
    case error_kind::payload_too_large: return 413;
    case error_kind::unsupported_media_type: return 415;
    case error_kind::rate_limited: return 429;
    case error_kind::internal: return 500;
    case error_kind::upstream: return 502;
    case error_kind::unavailable: return 503;
    case error_kind::timeout: return 504;
    }
    return 500;
}

// The OpenAI `error.type` vocabulary, so OpenAI clients classify our errors as they do theirs.
[[nodiscard]] constexpr std::string_view error_type(error_kind kind) noexcept {
    switch (kind) {
    case error_kind::invalid_request:
    case error_kind::payload_too_large:
    case error_kind::unsupported_media_type: return "invalid_request_error";
    // What OpenAI sends with `invalid_api_key` and for a model a key may not use.
    case error_kind::unauthenticated: return "invalid_request_error";
    case error_kind::permission_denied: return "permission_error";
    case error_kind::not_found: return "not_found_error";
    case error_kind::method_not_allowed: return "method_not_allowed";
    case error_kind::conflict: return "conflict_error";
    case error_kind::rate_limited: return "rate_limit_exceeded";
    case error_kind::upstream: return "upstream_error";
    case error_kind::unavailable: return "service_unavailable";
    case error_kind::timeout: return "timeout";
    case error_kind::internal: return "server_error";
    }
    return "server_error";
}

// {"error":{"message","type","param","code"}} — the OpenAI envelope (docs/protocols.md §1.8).
[[nodiscard]] inline nlohmann::json to_envelope(const error& e) {
    auto null_if_empty = [](const std::string& s) { return s.empty() ? nlohmann::json(nullptr) : nlohmann::json(s); };
    return {{"error",
             {{"message", e.message}, {"type", error_type(e.kind)}, {"param", null_if_empty(e.param)}, {"code", null_if_empty(e.code)}}}};
}

// A value or an error. Minimal on purpose: std::expected arrives with C++23.
template <class T, class E = error>
class [[nodiscard]] result {
public:
    result(T value) : v_(std::in_place_index<0>, std::move(value)) {}
    result(E e) : v_(std::in_place_index<1>, std::move(e)) {}

    [[nodiscard]] bool has_value() const noexcept { return v_.index() == 0; }
    explicit operator bool() const noexcept { return has_value(); }

    [[nodiscard]] T& value() & { return std::get<0>(v_); }
    [[nodiscard]] const T& value() const& { return std::get<0>(v_); }
    [[nodiscard]] T&& value() && { return std::get<0>(std::move(v_)); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }

    [[nodiscard]] const E& error() const& { return std::get<1>(v_); }
    [[nodiscard]] E&& error() && { return std::get<1>(std::move(v_)); }

private:
    std::variant<T, E> v_;
};

template <class E>
class [[nodiscard]] result<void, E> {
public:
    result() = default;
    result(E e) : e_(std::move(e)) {}

    [[nodiscard]] bool has_value() const noexcept { return !e_; }
    explicit operator bool() const noexcept { return has_value(); }
    [[nodiscard]] const E& error() const& { return *e_; }
    [[nodiscard]] E&& error() && { return std::move(*e_); }

private:
    std::optional<E> e_{};
};

} // namespace chatkit
