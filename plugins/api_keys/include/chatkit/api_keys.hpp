// chatkit's API keys: "ck-" and 43 base62 characters drawn from OpenSSL's RNG (256 bits), stored
// only as their SHA-256 digest and a short display prefix, and found in a request's
// Authorization (Bearer) or x-api-key header. What creating and checking a key share.
#pragma once

#include "chatkit/http.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace chatkit::api_keys {

inline constexpr std::string_view key_prefix = "ck-";
// 43 base62 characters carry 43 * log2(62) = 256.0 bits: as much as the 32 random bytes they come from.
inline constexpr std::size_t secret_chars = 43;
// What a list shows of a key: "ck-" and its first 6 characters (36 bits, not enough to guess the rest).
inline constexpr std::size_t display_chars = 6;
inline constexpr std::size_t digest_bytes = SHA256_DIGEST_LENGTH;

namespace detail {
inline constexpr std::string_view base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

// Fills `out` from OpenSSL's CSPRNG; throws when it cannot (no entropy): a guessable key is worse
// than none.
inline void random_bytes(unsigned char* out, std::size_t n) {
    if (RAND_bytes(out, static_cast<int>(n)) != 1) throw std::runtime_error("chatkit::api_keys: RAND_bytes failed");
}
} // namespace detail

/// A new key: "ck-" + 43 base62 characters. Each character is drawn by rejection sampling from
/// random bytes (a byte >= 248 is dropped), so every character is uniform and the key holds
/// 256 bits of entropy.
[[nodiscard]] inline std::string generate_key() {
    std::string key{key_prefix};
    key.reserve(key_prefix.size() + secret_chars);
    std::array<unsigned char, 64> pool{};
    while (key.size() < key_prefix.size() + secret_chars) {
        detail::random_bytes(pool.data(), pool.size());
        for (unsigned char b : pool) {
            if (b >= 248) continue; // 248 = 4 * 62: keeps b % 62 uniform
            key += detail::base62[b % 62];
            if (key.size() == key_prefix.size() + secret_chars) break;
        }
    }
    return key;
}

/// A new key id: "key_" + 24 hex digits (96 random bits). Ids are not secret: logs, the CLI and
/// history name keys by them.
[[nodiscard]] inline std::string generate_key_id() {
    std::array<unsigned char, 12> bytes{};
    detail::random_bytes(bytes.data(), bytes.size());
    static constexpr std::string_view hex = "0123456789abcdef";
    std::string id = "key_";
    for (unsigned char b : bytes) {
        id += hex[b >> 4];
        id += hex[b & 0xf];
    }
    return id;
}

/// The SHA-256 digest of a key: 32 raw bytes, what a directory stores instead of the key. A
/// plain hash (no salt, no slow KDF) is enough because the key is 256 random bits, not a password.
[[nodiscard]] inline std::string digest(std::string_view key) {
    std::string out(digest_bytes, '\0');
    SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), reinterpret_cast<unsigned char*>(out.data()));
    return out;
}

/// Whether two digests are equal, in time that does not depend on where they differ
/// (CRYPTO_memcmp), so a timing probe learns nothing about a stored digest.
[[nodiscard]] inline bool digests_equal(std::string_view a, std::string_view b) noexcept {
    return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

/// What a list shows of a key: "ck-" and its first characters, then "…" elided.
[[nodiscard]] inline std::string display_prefix(std::string_view key) {
    return std::string{key.substr(0, key_prefix.size() + display_chars)};
}

/// Whether `text` has the shape of a chatkit key ("ck-" and base62 characters only).
[[nodiscard]] inline bool looks_like_key(std::string_view text) noexcept {
    if (!text.starts_with(key_prefix) || text.size() <= key_prefix.size()) return false;
    for (char c : text.substr(key_prefix.size()))
        if (detail::base62.find(c) == std::string_view::npos) return false;
    return true;
}

namespace detail {
inline std::string_view trim(std::string_view s) noexcept {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}
inline bool iequals(std::string_view a, std::string_view b) noexcept {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (case_insensitive_less::lower(static_cast<unsigned char>(a[i])) !=
            case_insensitive_less::lower(static_cast<unsigned char>(b[i])))
            return false;
    return true;
}
} // namespace detail

/// The key a request presents: `Authorization: Bearer KEY` (what the OpenAI SDKs send; the scheme
/// is case-insensitive, RFC 9110 §11.1), else `x-api-key: KEY`. Surrounding spaces and tabs are
/// ignored. Empty when neither header carries one (another scheme, such as Basic, carries none).
[[nodiscard]] inline std::string_view presented_key(const http_request& req) noexcept {
    const auto auth = detail::trim(req.header("Authorization"));
    const bool bearer = auth.size() > 7 && detail::iequals(auth.substr(0, 6), "bearer") && (auth[6] == ' ' || auth[6] == '\t');
    if (bearer) {
        if (const auto key = detail::trim(auth.substr(7)); !key.empty()) return key;
    }
    return detail::trim(req.header("x-api-key"));
}

} // namespace chatkit::api_keys
