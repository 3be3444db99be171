// AWS Signature Version 4, header-based (docs/protocols.md §4): signs one HTTP request for a service such
// as Bedrock Runtime (signing name "bedrock", §2.1). Pure computation over OpenSSL's SHA-256/HMAC;
// the caller puts the returned headers on the request it sends, byte for byte as signed.
#pragma once

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace chatkit::aws {

struct credentials {
    std::string access_key_id{};
    std::string secret_access_key{}; // never logged, never put in an error message
    std::string session_token{};     // empty for long-term keys; Lambda and ECS always give one (§4.5)
    std::optional<std::chrono::system_clock::time_point> expiration{};

    [[nodiscard]] bool empty() const noexcept { return access_key_id.empty() || secret_access_key.empty(); }
};

struct signing_request {
    std::string method = "POST";
    std::string host{};  // exactly as in the Host header, port included when not the default
    std::string path{};  // as sent on the wire, already percent-encoded (see bedrock_model_path)
    std::string query{}; // without '?', may be empty
    // Other headers to sign, e.g. {"content-type", "application/json"}. The signer owns host,
    // x-amz-date, x-amz-security-token and x-amz-content-sha256 and ignores copies here; it also
    // skips the hop-by-hop headers botocore never signs (§4.4), since proxies may change them.
    std::vector<std::pair<std::string, std::string>> headers{};
    std::string_view body{};
    // botocore does not send x-amz-content-sha256 for Bedrock (SigV4Auth, §4.5), and neither do we
    // by default; S3, and clients such as openai-python's bedrock-mantle, send and sign it.
    bool send_content_sha256 = false;
};

// What to put on the request. Every non-empty header field must be sent exactly as given.
struct signature {
    std::string authorization{};  // Authorization
    std::string amz_date{};       // X-Amz-Date, YYYYMMDD'T'HHMMSS'Z'
    std::string content_sha256{}; // X-Amz-Content-SHA256; empty unless send_content_sha256
    std::string security_token{}; // X-Amz-Security-Token; empty without a session token
    // For tests and debugging. They hold no secret, but the canonical request holds the token.
    std::string canonical_request{};
    std::string string_to_sign{};
};

using sha256_digest = std::array<std::uint8_t, 32>;

[[nodiscard]] inline std::string to_hex(const sha256_digest& d) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(d.size() * 2);
    for (std::uint8_t b : d) {
        out += digits[b >> 4];
        out += digits[b & 0xF];
    }
    return out;
}

[[nodiscard]] inline sha256_digest sha256(std::string_view data) {
    sha256_digest out{};
    unsigned int len = 0;
    if (EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr) != 1 || len != out.size())
        throw std::runtime_error("SHA-256 failed in OpenSSL");
    return out;
}

// Lowercase hex, as the canonical request and string to sign want it (§4.1).
[[nodiscard]] inline std::string sha256_hex(std::string_view data) { return to_hex(sha256(data)); }

[[nodiscard]] inline sha256_digest hmac_sha256(std::string_view key, std::string_view message) {
    sha256_digest out{};
    unsigned int len = 0;
    if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(message.data()),
              message.size(), out.data(), &len) ||
        len != out.size())
        throw std::runtime_error("HMAC-SHA256 failed in OpenSSL");
    return out;
}

// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service), "aws4_request") (§4.1).
// Each step keys with the raw 32 bytes of the previous one.
[[nodiscard]] inline sha256_digest signing_key(std::string_view secret_access_key, std::string_view date, std::string_view region,
                                               std::string_view service) {
    std::string first = "AWS4";
    first += secret_access_key;
    auto as_key = [](const sha256_digest& d) { return std::string_view(reinterpret_cast<const char*>(d.data()), d.size()); };
    sha256_digest k = hmac_sha256(first, date);
    OPENSSL_cleanse(first.data(), first.size());
    k = hmac_sha256(as_key(k), region);
    k = hmac_sha256(as_key(k), service);
    return hmac_sha256(as_key(k), "aws4_request");
}

// Percent-encodes every byte outside RFC 3986's unreserved set (A-Z a-z 0-9 - _ . ~) with
// uppercase hex (§4.2); '/' is kept only when keep_slash.
[[nodiscard]] inline std::string uri_encode(std::string_view s, bool keep_slash) {
    static constexpr char digits[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(s.size() + s.size() / 2);
    for (char ch : s) {
        auto c = static_cast<unsigned char>(ch);
        bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' ||
                          c == '~';
        if (unreserved || (keep_slash && c == '/')) {
            out += ch;
        } else {
            out += '%';
            out += digits[c >> 4];
            out += digits[c & 0xF];
        }
    }
    return out;
}

// Decodes %XX escapes only ('+' stays '+': SigV4 query strings are not form-encoded). A malformed
// escape is kept literally, so it is re-encoded as %25.
[[nodiscard]] inline std::string uri_decode(std::string_view s) {
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        return -1;
    };
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
            out += static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2]));
            i += 2;
        } else {
            out += s[i];
        }
    }
    return out;
}

// The wire path of a Bedrock Runtime operation. modelId is an httpLabel, so ':' and the '/' of an
// ARN are percent-encoded once on the wire (§2.1); sign() encodes that again (§4.2).
[[nodiscard]] inline std::string bedrock_model_path(std::string_view model_id, std::string_view action) {
    std::string path = "/model/";
    path += uri_encode(model_id, false);
    path += '/';
    path += action;
    return path;
}

// X-Amz-Date for a time point: YYYYMMDD'T'HHMMSS'Z' in UTC (§4.5).
[[nodiscard]] inline std::string amz_date(std::chrono::system_clock::time_point t) {
    using namespace std::chrono;
    auto secs = floor<seconds>(t);
    auto day = floor<days>(secs);
    year_month_day ymd{day};
    hh_mm_ss hms{secs - day};
    char buf[32];
    std::snprintf(buf, sizeof buf, "%04d%02u%02uT%02d%02d%02dZ", static_cast<int>(ymd.year()), static_cast<unsigned>(ymd.month()),
                  static_cast<unsigned>(ymd.day()), static_cast<int>(hms.hours().count()), static_cast<int>(hms.minutes().count()),
                  static_cast<int>(hms.seconds().count()));
    return buf;
}

namespace sigv4_detail {

// botocore's remove_dot_segments (§4.2): drops '.', resolves '..', and collapses empty segments,
// which AWS requires for every service but S3. A trailing slash survives unless nothing is left.
[[nodiscard]] inline std::string remove_dot_segments(std::string_view path) {
    if (path.empty()) return "/";
    std::vector<std::string_view> out;
    std::size_t start = 0;
    while (start <= path.size()) {
        std::size_t end = path.find('/', start);
        if (end == std::string_view::npos) end = path.size();
        std::string_view seg = path.substr(start, end - start);
        if (seg == "..") {
            if (!out.empty()) out.pop_back();
        } else if (!seg.empty() && seg != ".") {
            out.push_back(seg);
        }
        start = end + 1;
    }
    std::string r = path.front() == '/' ? "/" : "";
    for (std::size_t i = 0; i < out.size(); ++i) {
        if (i) r += '/';
        r += out[i];
    }
    if (path.back() == '/' && !out.empty()) r += '/';
    return r;
}

[[nodiscard]] inline std::string canonical_uri(std::string_view wire_path, bool double_encode_path) {
    if (!double_encode_path) return wire_path.empty() ? std::string("/") : std::string(wire_path);
    // Encode the already-encoded wire path once more: %3A becomes %253A (§4.2, §4.7).
    return uri_encode(remove_dot_segments(wire_path), true);
}

// §4.3: each key and value encoded with the unreserved set, sorted by key then value. The input may
// be raw or already encoded; decoding first makes both give the same canonical form.
[[nodiscard]] inline std::string canonical_query(std::string_view query) {
    std::vector<std::pair<std::string, std::string>> pairs;
    std::size_t start = 0;
    while (start <= query.size() && !query.empty()) {
        std::size_t end = query.find('&', start);
        if (end == std::string_view::npos) end = query.size();
        std::string_view pair = query.substr(start, end - start);
        if (!pair.empty()) {
            std::size_t eq = pair.find('=');
            std::string_view key = pair.substr(0, eq);
            std::string_view value = eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1);
            pairs.emplace_back(uri_encode(uri_decode(key), false), uri_encode(uri_decode(value), false));
        }
        start = end + 1;
    }
    std::sort(pairs.begin(), pairs.end());
    std::string out;
    for (const auto& [k, v] : pairs) {
        if (!out.empty()) out += '&';
        out += k;
        out += '=';
        out += v;
    }
    return out;
}

[[nodiscard]] inline std::string lowercase(std::string_view s) {
    std::string out(s);
    for (char& c : out)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return out;
}

// Trimall (§4.4): trim, and collapse every inner run of whitespace to one space, as botocore's
// ' '.join(value.split()) does.
[[nodiscard]] inline std::string trim_all(std::string_view v) {
    auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
    std::string out;
    bool pending_space = false;
    for (char c : v) {
        if (space(c)) {
            pending_space = !out.empty();
        } else {
            if (pending_space) out += ' ';
            pending_space = false;
            out += c;
        }
    }
    return out;
}

// Headers the caller's list may not contribute: those the signer owns, and botocore's
// SIGNED_HEADERS_BLACKLIST (§4.4).
[[nodiscard]] inline bool never_signed_from_caller(std::string_view lname) {
    static constexpr std::string_view names[] = {"host",
                                                 "x-amz-date",
                                                 "x-amz-security-token",
                                                 "x-amz-content-sha256",
                                                 "authorization",
                                                 "connection",
                                                 "expect",
                                                 "keep-alive",
                                                 "proxy-authenticate",
                                                 "proxy-authorization",
                                                 "te",
                                                 "trailer",
                                                 "transfer-encoding",
                                                 "upgrade",
                                                 "user-agent",
                                                 "x-amzn-trace-id"};
    return std::find(std::begin(names), std::end(names), lname) != std::end(names);
}

} // namespace sigv4_detail

// Signs `req` (§4.1). double_encode_path is true for every service but S3, which signs the wire
// path as is, without normalization (§4.2). Throws only if OpenSSL fails.
[[nodiscard]] inline signature sign(const signing_request& req, const credentials& creds, std::string_view region, std::string_view service,
                                    std::chrono::system_clock::time_point now, bool double_encode_path = true) {
    using namespace sigv4_detail;
    signature sig;
    sig.amz_date = amz_date(now);
    const std::string date = sig.amz_date.substr(0, 8);
    const std::string payload_hash = sha256_hex(req.body);
    if (req.send_content_sha256) sig.content_sha256 = payload_hash;
    sig.security_token = creds.session_token;

    std::vector<std::pair<std::string, std::string>> headers;
    headers.reserve(req.headers.size() + 4);
    for (const auto& [name, value] : req.headers) {
        std::string lname = lowercase(trim_all(name));
        if (!never_signed_from_caller(lname)) headers.emplace_back(std::move(lname), trim_all(value));
    }
    headers.emplace_back("host", trim_all(req.host));
    headers.emplace_back("x-amz-date", sig.amz_date);
    if (!sig.security_token.empty()) headers.emplace_back("x-amz-security-token", trim_all(sig.security_token));
    if (!sig.content_sha256.empty()) headers.emplace_back("x-amz-content-sha256", sig.content_sha256);
    // Stable: repeated names keep their received order and are joined with ',' (§4.4).
    std::stable_sort(headers.begin(), headers.end(), [](const auto& a, const auto& b) { return a.first < b.first; });

    std::string canonical_headers, signed_headers;
    for (std::size_t i = 0; i < headers.size(); ++i) {
        if (i > 0 && headers[i].first == headers[i - 1].first) {
            canonical_headers.back() = ','; // replace the previous line's '\n'
        } else {
            if (!signed_headers.empty()) signed_headers += ';';
            signed_headers += headers[i].first;
            canonical_headers += headers[i].first;
            canonical_headers += ':';
        }
        canonical_headers += headers[i].second;
        canonical_headers += '\n';
    }

    std::string& creq = sig.canonical_request;
    creq += req.method;
    creq += '\n';
    creq += canonical_uri(req.path, double_encode_path);
    creq += '\n';
    creq += canonical_query(req.query);
    creq += '\n';
    creq += canonical_headers; // each line ends in '\n', hence the empty line below (§4.1)
    creq += '\n';
    creq += signed_headers;
    creq += '\n';
    creq += payload_hash;

    std::string scope = date;
    scope += '/';
    scope += region;
    scope += '/';
    scope += service;
    scope += "/aws4_request";

    sig.string_to_sign = "AWS4-HMAC-SHA256\n" + sig.amz_date + '\n' + scope + '\n' + sha256_hex(creq);

    sha256_digest key = signing_key(creds.secret_access_key, date, region, service);
    const std::string signature_hex = to_hex(
        hmac_sha256(std::string_view(reinterpret_cast<const char*>(key.data()), key.size()), sig.string_to_sign));
    OPENSSL_cleanse(key.data(), key.size());

    sig.authorization = "AWS4-HMAC-SHA256 Credential=" + creds.access_key_id + '/' + scope + ", SignedHeaders=" + signed_headers +
                        ", Signature=" + signature_hex;
    return sig;
}

} // namespace chatkit::aws
