// A Middleware that finds personal data and secrets in the text of chat requests and, by policy,
// counts them, masks them before the request goes anywhere, or refuses the request.
//
// What it finds, in the message text of a chat request (POST /chat, /v1/chat/completions and its
// /v1/chat alias, /v1/messages, /v1/responses, /api/v1/conversations/{id}/messages and .../stream,
// and the `message` query parameter of GET .../stream):
//   email   e-mail addresses (local@domain.tld);
//   phone   phone numbers: +CC forms, and national forms formatted with spaces, dots, dashes or
//           parentheses; 7 to 15 digits;
//   card    payment card numbers: 13 to 19 digits starting with 2-6, optionally grouped by spaces
//           or dashes, that pass the Luhn check;
//   iban    IBANs: country code, 2 check digits, the rest alphanumeric, optionally grouped in 4s,
//           15 to 34 characters, that pass the ISO 7064 mod-97 check;
//   ssn     US social security numbers written AAA-GG-SSSS, without the ranges never issued
//           (area 000, 666, 900-999; group 00; serial 0000);
//   ip      IPv4 addresses (each octet 0-255) and IPv6 addresses (full, and :: compressed);
//   secret  API keys by their prefix (sk-, sk-ant-, ck-, AKIA/ASIA + 16, ghp_ and the other GitHub
//           prefixes, xoxb- and the other Slack prefixes, AIza) with a long, random-looking tail,
//           and the token of `Bearer <token>`.
//
// Why: a gateway is where a company can make sure that what its people paste into a chat (a
// customer's card, a colleague's phone, an AWS key) does not reach a third-party model, the
// cache or the stored history. The modes, chosen per request (pii_redaction_options):
//   off     nothing is scanned;
//   count   the text is left as it is; the findings are counted per kind (`on_found`, and the
//           response header `x-chatkit-pii: email=1,card=2`);
//   mask    each finding is replaced by a placeholder naming its kind ([EMAIL], [PHONE], [CARD],
//           [IBAN], [SSN], [IP], [SECRET]) in `req.body` before routing, so the provider, the cache
//           key and the stored history all see the masked text; counted as in `count`;
//   refuse  the request is answered 400 with chatkit's error envelope, code `pii_detected`,
//           naming the kinds found, never the values.
//
// How: the body is not parsed into a tree. A small JSON walker (pii_detail::walk_json) runs over
// the raw bytes once, checks that they are one JSON text, and hands the raw content of the strings
// that carry text to the scanners (the values of keys such as "content", "text", "input",
// "message", "arguments": pii_redaction_options::text_keys); the masked body is rebuilt by copying
// the bytes between findings. Keys, numbers, the structure and every other string are copied as
// they are. The walk and the scan take about 2 ns a byte, a third of nlohmann::json::parse of the
// same body; parsing the body with nlohmann, masking the tree and dumping it again would cost 5-8
// times the scan (1.2-2.4 times a parse), on every chat request, only for the service to parse
// it again (benchmarks/pii_bench.cpp, docs/gateway.md#pii-redaction).
//
// Why hand-rolled scanners and not std::regex: std::regex (libstdc++) is slow, an order of
// magnitude below a hand-written scanner even on friendly input, allocates as it matches, and its
// backtracking has no bound: on hostile input (a long run of digits and separators) a pattern
// with nested repetition takes time exponential in the input's length, and its recursion can
// overflow the stack. The scanners here look only at positions where a finding may start (the
// first byte of a token), and each one reads a bounded number of bytes from there (64 for an
// e-mail's local part and 255 for its domain, 15 digits for a phone, 19 for a card, 34
// characters for an IBAN, about 45 for an IPv6 address), or a run that no later start can be
// inside (a key's tail): the scan is linear in the body's length whatever the input.
//
// Limits (what this does not do):
//   1. It does not find names, postal addresses, dates of birth or other free-text personal data:
//      that needs a language model or a named-entity recognizer, not a scanner.
//   2. False positives are possible, most of all for phone numbers: a number formatted like a
//      phone ("123-456-789", "12 34 56 78") is taken for one. Years, dates (2024-05-01,
//      01.05.2024), prices (1234.56), thousands (1.234.567), ranges (2019-2023) and plain digit
//      runs are not. A 13-19 digit number that happens to pass Luhn is taken for a card, one
//      random number in ten; numbers starting with 0, 1, 7, 8 or 9 are never cards (so
//      millisecond timestamps are not), which also misses UATP and RuPay 8x cards. Version
//      numbers such as 1.2.3.4 are IPv4 addresses.
//   3. Only the text of JSON strings is scanned, between escape sequences: a finding that
//      straddles an escape (an e-mail written with \u0040 for its @, a card with \u0020 between
//      its groups) is missed. Text encoded to evade the scanners is not decoded: this protects
//      against accidental disclosure, not against a client that hides data on purpose.
//   4. Strings under other keys (model, role, user, user_id, metadata, ids, image data) are not
//      scanned unless scan_every_string is set: masking a user_id that is an e-mail would merge
//      histories. A key written with escapes counts as a text key, so it cannot hide text.
//   5. Only what the client sends is scanned, not the provider's answer (a stream's deltas are
//      not rewritten). Bodies that are not valid JSON are left alone: the service answers 400.
//   6. Not found either: national phone numbers without any separator ("0612345678"), IBANs
//      with a lowercase country code, SSNs written with spaces, and grouped card numbers whose
//      first group is not 4 digits.
// Threading: one instance serves every request concurrently; it keeps no mutable state (the
// per-request counts live in `context`); `policy` and `on_found` are called concurrently.
#pragma once

#include "chatkit/chat_routes.hpp"
#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/middleware.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace chatkit {

enum class pii_kind : std::uint8_t { email, phone, card, iban, ssn, ip, secret };
inline constexpr std::size_t pii_kind_count = 7;

/// The kind's name in counts, headers and errors ("email", "card", ...).
[[nodiscard]] constexpr std::string_view pii_kind_name(pii_kind k) noexcept {
    constexpr std::array<std::string_view, pii_kind_count> names{"email", "phone", "card", "iban", "ssn", "ip", "secret"};
    return names[static_cast<std::size_t>(k)];
}

/// What a masked finding becomes.
[[nodiscard]] constexpr std::string_view pii_placeholder(pii_kind k) noexcept {
    constexpr std::array<std::string_view, pii_kind_count> names{"[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]", "[SSN]", "[IP]", "[SECRET]"};
    return names[static_cast<std::size_t>(k)];
}

enum class pii_mode : std::uint8_t { off, count, mask, refuse };

[[nodiscard]] constexpr std::string_view pii_mode_name(pii_mode m) noexcept {
    switch (m) {
    case pii_mode::off: return "off";
    case pii_mode::count: return "count";
    case pii_mode::mask: return "mask";
    case pii_mode::refuse: return "refuse";
    }
    return "off";
}

/// A mode by its name ("off", "count", "mask", "refuse"), for configuration.
[[nodiscard]] constexpr std::optional<pii_mode> parse_pii_mode(std::string_view s) noexcept {
    for (auto m : {pii_mode::off, pii_mode::count, pii_mode::mask, pii_mode::refuse})
        if (pii_mode_name(m) == s) return m;
    return std::nullopt;
}

/// A set of kinds.
struct pii_kind_set {
    std::uint8_t bits = (1u << pii_kind_count) - 1;

    [[nodiscard]] static constexpr pii_kind_set all() noexcept { return {}; }
    [[nodiscard]] static constexpr pii_kind_set none() noexcept { return {0}; }
    [[nodiscard]] static constexpr pii_kind_set of(std::initializer_list<pii_kind> kinds) noexcept {
        pii_kind_set s = none();
        for (auto k : kinds) s = s.with(k);
        return s;
    }
    [[nodiscard]] constexpr pii_kind_set with(pii_kind k) const noexcept {
        return {static_cast<std::uint8_t>(bits | (1u << static_cast<unsigned>(k)))};
    }
    [[nodiscard]] constexpr pii_kind_set without(pii_kind k) const noexcept {
        return {static_cast<std::uint8_t>(bits & ~(1u << static_cast<unsigned>(k)))};
    }
    [[nodiscard]] constexpr bool contains(pii_kind k) const noexcept { return (bits >> static_cast<unsigned>(k)) & 1u; }
    [[nodiscard]] constexpr bool empty() const noexcept { return bits == 0; }
};

/// One finding: its kind and its bytes [begin, end) in the scanned text (or body).
struct pii_finding {
    pii_kind kind = pii_kind::email;
    std::size_t begin = 0;
    std::size_t end = 0;
    friend bool operator==(const pii_finding&, const pii_finding&) = default;
};

/// Findings per kind.
struct pii_counts {
    std::array<std::uint32_t, pii_kind_count> n{};

    void add(pii_kind k, std::uint32_t count = 1) noexcept { n[static_cast<std::size_t>(k)] += count; }
    [[nodiscard]] std::uint32_t operator[](pii_kind k) const noexcept { return n[static_cast<std::size_t>(k)]; }
    [[nodiscard]] std::uint64_t total() const noexcept {
        std::uint64_t t = 0;
        for (auto c : n) t += c;
        return t;
    }
    [[nodiscard]] bool any() const noexcept { return total() != 0; }
    /// "email=1,card=2": the kinds found and their counts, in kind order (the response header).
    [[nodiscard]] std::string to_string() const {
        std::string out;
        for (std::size_t i = 0; i < pii_kind_count; ++i) {
            if (n[i] == 0) continue;
            if (!out.empty()) out += ',';
            out += pii_kind_name(static_cast<pii_kind>(i));
            out += '=';
            out += std::to_string(n[i]);
        }
        return out;
    }
    /// "email, card": the kinds found (the refusal's message).
    [[nodiscard]] std::string kinds() const {
        std::string out;
        for (std::size_t i = 0; i < pii_kind_count; ++i) {
            if (n[i] == 0) continue;
            if (!out.empty()) out += ", ";
            out += pii_kind_name(static_cast<pii_kind>(i));
        }
        return out;
    }
};

namespace pii_detail {

// Character classes, one table lookup per byte. Bytes >= 0x80 (UTF-8 sequences) are in no class:
// they separate tokens, so a finding between two CJK characters or after "à " is found whole.
enum : std::uint8_t { digit = 1, upper = 2, lower = 4, hex = 8, local = 16, domain = 32, token = 64, key_start = 128 };
constexpr std::array<std::uint8_t, 256> make_classes() {
    std::array<std::uint8_t, 256> t{};
    for (int c = 0; c < 256; ++c) {
        std::uint8_t v = 0;
        if (c >= '0' && c <= '9') v |= digit | hex | local | domain | token;
        if (c >= 'A' && c <= 'Z') v |= upper | local | domain | token;
        if (c >= 'a' && c <= 'z') v |= lower | local | domain | token;
        if ((c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) v |= hex;
        if (c == '.' || c == '_' || c == '%' || c == '+' || c == '-') v |= local;
        if (c == '-') v |= domain;
        if (c == '_' || c == '-') v |= token; // an API key's tail
        if (c == 's' || c == 'c' || c == 'A' || c == 'g' || c == 'x' || c == 'B' || c == 'b') v |= key_start;
        t[static_cast<std::size_t>(c)] = v;
    }
    return t;
}
inline constexpr std::array<std::uint8_t, 256> classes = make_classes();

constexpr std::uint8_t cls(char c) noexcept { return classes[static_cast<unsigned char>(c)]; }
constexpr bool is_digit(char c) noexcept { return cls(c) & digit; }
constexpr bool is_upper(char c) noexcept { return cls(c) & upper; }
constexpr bool is_alpha(char c) noexcept { return cls(c) & (upper | lower); }
constexpr bool is_alnum(char c) noexcept { return cls(c) & (digit | upper | lower); }
constexpr bool is_hex(char c) noexcept { return cls(c) & hex; }
constexpr bool is_local(char c) noexcept { return cls(c) & local; }

// The byte at i, or a space past either end: the scanners treat the text's ends as boundaries.
constexpr char at(std::string_view t, std::size_t i) noexcept { return i < t.size() ? t[i] : ' '; }
constexpr char before(std::string_view t, std::size_t i) noexcept { return i == 0 ? ' ' : t[i - 1]; }

// Whether a number ends at i: not followed by a letter or digit, nor by a separator and a digit
// ("415-555-2671-9", "1.2.3.4.5" and "1,234" continue).
constexpr bool number_ends(std::string_view t, std::size_t i) noexcept {
    const char c = at(t, i);
    if (is_alnum(c) || c == '_') return false;
    if ((c == '.' || c == '-' || c == ',') && is_digit(at(t, i + 1))) return false;
    return true;
}

// ---------------------------------------------------------------------------------------------
// The scanners. Each takes the text and a start position that its caller checked is the start
// of a token, and returns the end of its finding, or 0 for none. Each reads a bounded number of
// bytes.

// local@domain.tld: the local part is 1-64 of [A-Za-z0-9._%+-] not starting with '.', the domain
// two or more labels of [A-Za-z0-9-] (1-63, no '-' at either end), the last one 2+ letters.
// `at_sign` is the position of the next '@' at or after i.
constexpr std::size_t match_email(std::string_view t, std::size_t i, std::size_t at_sign) noexcept {
    if (at_sign <= i || at_sign - i > 64 || t[i] == '.') return 0;
    for (std::size_t k = i; k < at_sign; ++k)
        if (!is_local(t[k])) return 0;
    std::size_t j = at_sign + 1, labels = 0, tld_begin = j;
    while (true) {
        const std::size_t start = j;
        while (j < t.size() && (cls(t[j]) & domain) && j - at_sign <= 255) ++j;
        if (j == start || j - start > 63 || t[start] == '-' || t[j - 1] == '-') return 0;
        ++labels;
        tld_begin = start;
        if (at(t, j) == '.' && is_alnum(at(t, j + 1))) {
            ++j;
            continue;
        }
        break;
    }
    if (labels < 2 || j - tld_begin < 2) return 0;
    for (std::size_t k = tld_begin; k < j; ++k)
        if (!is_alpha(t[k])) return 0;
    if (at(t, j) == '@') return 0;
    return j;
}

// Whether a key's tail looks random: letters and digits both (a word-like "sk-my-team-notes"
// does not).
constexpr bool random_looking(std::string_view tail) noexcept {
    bool letter = false, number = false;
    for (char c : tail) {
        letter |= is_alpha(c);
        number |= is_digit(c);
    }
    return letter && number;
}

struct key_prefix {
    std::string_view prefix;
    std::size_t min_tail;   // the shortest tail taken for a key
    std::size_t exact_tail; // when not 0: the tail's exact length (AKIA + 16)
    bool upper_alnum_only;  // the tail is [A-Z0-9] (AWS), else [A-Za-z0-9_-]
    bool needs_random;      // the tail must have letters and digits
};
inline constexpr std::array<key_prefix, 17> key_prefixes{{
    {"sk-", 20, 0, false, true},   // OpenAI (sk-, sk-proj-), Anthropic (sk-ant-), others
    {"ck-", 20, 0, false, true},   // chatkit's own keys (ck- + 43 base62)
    {"AKIA", 16, 16, true, false}, // AWS access key ids
    {"ASIA", 16, 16, true, false}, // AWS temporary access key ids
    {"ghp_", 30, 0, false, true},  // GitHub tokens: personal, OAuth, user, server, refresh
    {"gho_", 30, 0, false, true},
    {"ghu_", 30, 0, false, true},
    {"ghs_", 30, 0, false, true},
    {"ghr_", 30, 0, false, true},
    {"github_pat_", 30, 0, false, true},
    {"xoxb-", 10, 0, false, true}, // Slack tokens: bot, user, app, refresh, session
    {"xoxp-", 10, 0, false, true},
    {"xoxa-", 10, 0, false, true},
    {"xoxr-", 10, 0, false, true},
    {"xoxs-", 10, 0, false, true},
    {"AIza", 35, 35, false, false}, // Google API keys
    {"glpat-", 20, 0, false, true}, // GitLab personal access tokens
}};

// A key by its prefix, or the token of "Bearer <token>" (20+ characters of a token68, with
// letters and digits). Returns the end; `begin` is where the finding starts (after "Bearer ").
constexpr std::size_t match_secret(std::string_view t, std::size_t i, std::size_t& begin) noexcept {
    // Compared by hand, after the first byte: a memcmp call per prefix at every word was most of
    // the scan's time.
    auto starts_with = [&](std::string_view prefix) {
        if (t.size() - i < prefix.size()) return false;
        for (std::size_t k = 1; k < prefix.size(); ++k)
            if (t[i + k] != prefix[k]) return false;
        return true;
    };
    const char first = t[i];
    if ((first == 'B' || first == 'b') && starts_with("Bearer ")) {
        std::size_t j = i + 7;
        while (at(t, j) == ' ' && j - i < 16) ++j;
        const std::size_t start = j;
        while (j < t.size() &&
               (is_alnum(t[j]) || t[j] == '-' || t[j] == '.' || t[j] == '_' || t[j] == '~' || t[j] == '+' || t[j] == '/' || t[j] == '='))
            ++j;
        while (j > start && t[j - 1] == '.') --j; // the end of a sentence
        if (j - start >= 20 && random_looking(t.substr(start, j - start))) {
            begin = start;
            return j;
        }
        return 0;
    }
    for (const auto& p : key_prefixes) {
        if (p.prefix[0] != first || !starts_with(p.prefix)) continue;
        std::size_t j = i + p.prefix.size();
        const std::size_t start = j;
        if (p.upper_alnum_only) {
            while (j < t.size() && (is_upper(t[j]) || is_digit(t[j]))) ++j;
            if (is_alnum(at(t, j)) || at(t, j) == '_' || at(t, j) == '-') return 0;
        } else {
            while (j < t.size() && (cls(t[j]) & token)) ++j;
        }
        const std::size_t n = j - start;
        if (n < p.min_tail || (p.exact_tail && n != p.exact_tail)) return 0;
        if (p.needs_random && !random_looking(t.substr(start, n))) return 0;
        begin = i;
        return j;
    }
    return 0;
}

// ISO 13616 IBAN: [A-Z]{2}[0-9]{2} then alphanumerics, 15-34 in all, either in one run or
// grouped in 4s by single spaces (the last group 1-4), valid when ISO 7064 mod 97-10 gives 1:
// the first four characters moved to the end, letters read as 10-35. Returns the end of what is
// shaped like an IBAN and whether it checks: one that does not is skipped whole, so that its
// digit groups are not taken for a phone number.
struct shape_match {
    std::size_t end = 0; // 0: nothing of the shape
    bool valid = false;
};
constexpr unsigned mod97_push(unsigned r, char c) noexcept {
    if (is_digit(c)) return (r * 10 + static_cast<unsigned>(c - '0')) % 97;
    const unsigned v = static_cast<unsigned>((c | 0x20) - 'a') + 10; // either case
    return (r * 100 + v) % 97;
}
constexpr shape_match match_iban(std::string_view t, std::size_t i) noexcept {
    if (!(is_upper(at(t, i)) && is_upper(at(t, i + 1)) && is_digit(at(t, i + 2)) && is_digit(at(t, i + 3)))) return {};
    auto valid = [&](unsigned r) {
        for (std::size_t k = i; k < i + 4; ++k) r = mod97_push(r, t[k]);
        return r == 1;
    };
    std::size_t j = i + 4;
    unsigned r = 0;
    if (at(t, j) != ' ') { // one run
        while (j < t.size() && is_alnum(t[j]) && j - i <= 34) r = mod97_push(r, t[j++]);
        const std::size_t n = j - i;
        if (n < 15 || n > 34 || is_alnum(at(t, j))) return {};
        return {j, valid(r)};
    }
    // Grouped: the longest run of 4-groups that checks. The text after an IBAN may itself be a
    // group of four ("... 7654 32 from"), so every group boundary is a candidate end.
    std::size_t chars = 4, best = 0, shaped = 0;
    while (at(t, j) == ' ' && is_alnum(at(t, j + 1))) {
        std::size_t k = j + 1, m = 0;
        unsigned rr = r;
        while (m < 4 && is_alnum(at(t, k))) rr = mod97_push(rr, t[k++]), ++m;
        if (m == 4 && is_alnum(at(t, k))) break; // a word longer than a group: not part of it
        if (chars + m > 34) break;
        chars += m;
        r = rr;
        j = k;
        if (chars >= 15) shaped = j;
        if (chars >= 15 && valid(r)) best = j;
        if (m < 4) break;
    }
    return best ? shape_match{best, true} : shape_match{shaped, false};
}

// US SSN AAA-GG-SSSS, without what was never issued: area 000, 666, 900-999; group 00; serial 0000.
constexpr bool ssn_shaped(std::string_view t, std::size_t i) noexcept {
    for (std::size_t k = 0; k < 11; ++k) {
        const char c = at(t, i + k);
        if (k == 3 || k == 6 ? c != '-' : !is_digit(c)) return false;
    }
    return number_ends(t, i + 11);
}
constexpr std::size_t match_ssn(std::string_view t, std::size_t i) noexcept {
    if (!ssn_shaped(t, i)) return 0;
    auto num = [&](std::size_t from, std::size_t n) {
        int v = 0;
        for (std::size_t k = 0; k < n; ++k) v = v * 10 + (t[from + k] - '0');
        return v;
    };
    const int area = num(i, 3), group = num(i + 4, 2), serial = num(i + 7, 4);
    if (area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0) return 0;
    return i + 11;
}

// IPv4: four decimal octets 0-255 (no leading zeros) separated by dots.
constexpr std::size_t match_ipv4(std::string_view t, std::size_t i) noexcept {
    std::size_t j = i;
    for (int octet = 0; octet < 4; ++octet) {
        if (octet > 0) {
            if (at(t, j) != '.') return 0;
            ++j;
        }
        std::size_t n = 0;
        unsigned v = 0;
        while (n < 4 && is_digit(at(t, j + n))) v = v * 10 + static_cast<unsigned>(t[j + n] - '0'), ++n;
        if (n == 0 || n > 3 || v > 255 || (n > 1 && t[j] == '0')) return 0;
        j += n;
    }
    return number_ends(t, j) ? j : 0;
}

// IPv6: eight groups of 1-4 hex digits separated by ':', or fewer with one "::" standing for the
// rest; the last 32 bits may be written as IPv4. It must contain a digit, so that C++'s
// "abc::def" is not an address.
constexpr std::size_t match_ipv6(std::string_view t, std::size_t i) noexcept {
    std::size_t j = i, groups = 0;
    bool compressed = false, any_digit = false;
    if (at(t, j) == ':') {
        if (at(t, j + 1) != ':') return 0;
        compressed = true;
        j += 2;
    }
    std::size_t end = compressed ? j : 0;
    while (groups < 8) {
        std::size_t n = 0;
        bool digits_only = true;
        while (n < 5 && is_hex(at(t, j + n))) digits_only &= is_digit(t[j + n]), ++n;
        if (n == 0) break;
        if (digits_only && at(t, j + n) == '.' && groups <= 6) { // an IPv4 tail: two groups' worth
            if (const auto e = match_ipv4(t, j); e && (groups == 6 || compressed)) {
                groups += 2;
                end = e;
                any_digit = true;
            }
            break;
        }
        if (n > 4) return 0;
        for (std::size_t k = 0; k < n; ++k) any_digit |= is_digit(t[j + k]);
        ++groups;
        j += n;
        end = j;
        if (at(t, j) == ':' && at(t, j + 1) == ':' && !compressed) {
            compressed = true;
            j += 2;
            end = j;
            continue;
        }
        if (at(t, j) == ':' && is_hex(at(t, j + 1))) {
            ++j;
            continue;
        }
        break;
    }
    if (!any_digit || end == 0) return 0;
    if (compressed ? groups > 7 : groups != 8) return 0;
    const char next = at(t, end);
    if (is_alnum(next) || next == '_' || next == ':') return 0; // "1::2::3" is not an address
    return end;
}

// Luhn (ISO/IEC 7812-1): from the right, every second digit doubled.
constexpr bool luhn(const char* digits, std::size_t n) noexcept {
    unsigned sum = 0;
    for (std::size_t k = 0; k < n; ++k) {
        unsigned d = static_cast<unsigned>(digits[n - 1 - k] - '0');
        if (k % 2 == 1) d = d * 2 > 9 ? d * 2 - 9 : d * 2;
        sum += d;
    }
    return sum % 10 == 0;
}

// A card: 13-19 digits starting with 2-6 (Mastercard 2/5, Amex/Diners/JCB 3, Visa 4, Discover,
// UnionPay and Maestro 6), in one run or grouped by single spaces or dashes (the same one
// throughout; the first group 4 digits, the others 3-6), that pass Luhn.
constexpr std::size_t match_card(std::string_view t, std::size_t i) noexcept {
    if (at(t, i) < '2' || at(t, i) > '6') return 0;
    char digits[20]{};
    std::size_t n = 0, j = i, group = 0, groups = 0;
    char sep = 0;
    while (true) {
        const char c = at(t, j);
        if (is_digit(c)) {
            if (n == 19) return 0; // longer than a card
            digits[n++] = c;
            ++group;
            ++j;
            continue;
        }
        const bool is_sep = (c == ' ' || c == '-') && is_digit(at(t, j + 1)) && (sep == 0 || sep == c);
        if (!is_sep) break;
        if (groups == 0 ? group != 4 : (group < 3 || group > 6)) return 0;
        sep = c;
        ++groups;
        group = 0;
        ++j;
    }
    if (groups > 0 && (group < 1 || group > 6)) return 0;
    if (n < 13 || !number_ends(t, j)) return 0;
    return luhn(digits, n) ? j : 0;
}

// A phone number: "+CC ..." in any grouping, or a national form that looks like a phone.
//   groups:     runs of digits, or one "(digits)" area code, separated by single spaces, dots or
//               dashes; a group after the first has 2+ digits (except a parenthesized one, and
//               the one after a +CC);
//   digits:     7 to 15 in all (E.164's maximum);
//   without +:  a parenthesized area code, or two or more separators all the same, or one
//               separator in 555-2671 or, after a trunk 0, "030 1234567" (9+ digits);
//               and not a date (4-2-2, 2-2-4), an SSN shape (3-2-4 with dashes), or a number
//               with thousands separators ("1.234.567", "12 345 678").
constexpr std::size_t match_phone(std::string_view t, std::size_t i) noexcept {
    std::size_t j = i;
    const bool plus = at(t, j) == '+';
    if (plus) ++j;
    std::array<std::uint8_t, 16> lens{};
    std::size_t groups = 0, digits = 0, seps = 0, paren_at = 16;
    char sep = 0;
    bool mixed = false;
    while (true) {
        std::size_t n = 0;
        if (at(t, j) == '(' && paren_at == 16) {
            while (n < 6 && is_digit(at(t, j + 1 + n))) ++n;
            if (n == 0 || n > 5 || at(t, j + 1 + n) != ')') break;
            paren_at = groups;
            j += n + 2;
        } else {
            while (n < 16 && is_digit(at(t, j + n))) ++n;
            if (n == 0) break;
            j += n;
        }
        digits += n;
        if (digits > 15 || groups == lens.size()) return 0;
        lens[groups++] = static_cast<std::uint8_t>(n);
        const char c = at(t, j);
        if (groups - 1 == paren_at && is_digit(c)) continue; // "(415)555-2671"
        if ((c == ' ' || c == '.' || c == '-') && (is_digit(at(t, j + 1)) || (at(t, j + 1) == '(' && paren_at == 16))) {
            if (sep != 0 && sep != c) mixed = true;
            sep = c;
            ++seps;
            ++j;
            continue;
        }
        break;
    }
    if (groups == 0 || digits < 7 || !number_ends(t, j)) return 0;
    for (std::size_t g = 1; g < groups; ++g)
        if (lens[g] < 2 && g != paren_at && !(plus && g == 1)) return 0; // "+33 1 23 45 67 89"
    if (plus) return j;
    const bool paren = paren_at != 16;
    if (!paren) {
        if (mixed) return 0;
        if (seps == 0) return 0;
        if (seps == 1) {
            const bool local_us = sep == '-' && lens[0] == 3 && lens[1] == 4;
            const bool trunk = (sep == ' ' || sep == '-') && t[i] == '0' && digits >= 9;
            if (!local_us && !trunk) return 0;
        }
        if (groups == 3 && ((lens[0] == 4 && lens[1] == 2 && lens[2] == 2) || (lens[0] == 2 && lens[1] == 2 && lens[2] == 4)))
            return 0;                                                                            // a date
        if (groups == 3 && sep == '-' && lens[0] == 3 && lens[1] == 2 && lens[2] == 4) return 0; // SSN-shaped
        bool thousands = lens[0] <= 3 && (sep == '.' || (sep == ' ' && lens[0] < 3));
        for (std::size_t g = 1; g < groups && thousands; ++g) thousands = lens[g] == 3;
        if (thousands) return 0;
    }
    return j;
}

// ---------------------------------------------------------------------------------------------

// Runs every enabled scanner over `t`, an escape-free piece of text, and emits each finding with
// `base` added to its offsets. Looks only where a finding may start: the first byte of a token
// (a letter or digit whose previous byte is neither), a '+', a '(' or a "::".
template <class Emit>
void scan_text(std::string_view t, pii_kind_set kinds, std::size_t base, Emit&& emit) {
    const bool want_email = kinds.contains(pii_kind::email), want_phone = kinds.contains(pii_kind::phone),
               want_card = kinds.contains(pii_kind::card), want_iban = kinds.contains(pii_kind::iban),
               want_ssn = kinds.contains(pii_kind::ssn), want_ip = kinds.contains(pii_kind::ip),
               want_secret = kinds.contains(pii_kind::secret);
    std::size_t next_at = want_email ? t.find('@') : std::string_view::npos;
    std::size_t i = 0;
    const std::size_t n = t.size();
    // Emits a finding and moves past it; true, for the callers to return.
    auto found = [&](pii_kind k, std::size_t b, std::size_t e) {
        emit(pii_finding{k, base + b, base + e});
        i = e;
        return true;
    };
    // At the first byte of a word or number (previous byte `p`): a finding that starts here.
    auto token = [&](std::uint8_t k, char p) {
        if (want_secret && (k & key_start) && p != '_' && p != '-') {
            std::size_t b = i;
            if (const auto e = match_secret(t, i, b)) return found(pii_kind::secret, b, e);
        }
        if (want_email && next_at != std::string_view::npos && !is_local(p)) {
            if (next_at < i) next_at = t.find('@', i);
            if (next_at != std::string_view::npos && next_at - i <= 64)
                if (const auto e = match_email(t, i, next_at)) return found(pii_kind::email, i, e);
        }
        if (want_iban && (k & upper)) {
            if (const auto m = match_iban(t, i); m.end) {
                if (m.valid) return found(pii_kind::iban, i, m.end);
                i = m.end; // shaped like an IBAN, but not one: none of its groups is a phone
                return true;
            }
        }
        // An IPv6 address has a ':' within its first five bytes.
        if (want_ip && (k & hex) && p != ':' && p != '.' &&
            (at(t, i + 1) == ':' || at(t, i + 2) == ':' || at(t, i + 3) == ':' || at(t, i + 4) == ':'))
            if (const auto e = match_ipv6(t, i)) return found(pii_kind::ip, i, e);
        if (!(k & digit) || p == '.' || p == '_' || p == '-') return false; // inside a decimal or an id
        if (want_ip)
            if (const auto e = match_ipv4(t, i)) return found(pii_kind::ip, i, e);
        // A group of a space-separated number ("4111 1111 1111 1112" failing Luhn, "12 34 56 78
        // 90 12 34 56" too long) does not start a phone, card or SSN of its own.
        if (i >= 2 && p == ' ' && is_digit(t[i - 2])) {
            std::size_t r = i;
            while (is_digit(at(t, r))) ++r;
            if (at(t, r) == ' ' && is_digit(at(t, r + 1))) return false;
        }
        if (want_ssn)
            if (const auto e = match_ssn(t, i)) return found(pii_kind::ssn, i, e);
        if (want_card)
            if (const auto e = match_card(t, i)) return found(pii_kind::card, i, e);
        if (want_phone)
            if (const auto e = match_phone(t, i)) return found(pii_kind::phone, i, e);
        return false;
    };
    while (i < n) {
        const char c = t[i];
        const std::uint8_t k = cls(c);
        const char p = before(t, i);
        if (k & (digit | upper | lower)) {
            // (p is a letter or digit only right after a finding: then this is not a start.)
            if (!is_alnum(p) && token(k, p)) continue;
            // Nothing starts here, nor anywhere inside this word or number: skip to its end.
            ++i;
            while (i < n && is_alnum(t[i])) ++i;
        } else if (c == '+' || c == '(') {
            if (want_phone && !is_alnum(p) && is_digit(at(t, i + 1)) && (c == '+' || p != '('))
                if (const auto e = match_phone(t, i)) {
                    found(pii_kind::phone, i, e);
                    continue;
                }
            ++i;
        } else if (c == ':' && want_ip && at(t, i + 1) == ':' && !is_alnum(p) && p != ':') {
            if (const auto e = match_ipv6(t, i)) {
                found(pii_kind::ip, i, e);
                continue;
            }
            ++i;
        } else {
            ++i;
        }
    }
}

// Scans the raw content of a JSON string (between its quotes, escapes as written), piece by piece
// between escape sequences: a mask never cuts an escape in two, so the JSON stays valid. A
// finding that straddles an escape is missed (see limit 3 above).
template <class Emit>
void scan_json_string(std::string_view raw, std::size_t base, pii_kind_set kinds, Emit&& emit) {
    std::size_t from = 0;
    while (from < raw.size()) {
        std::size_t bs = raw.find('\\', from);
        if (bs == std::string_view::npos) bs = raw.size();
        if (bs > from) scan_text(raw.substr(from, bs - from), kinds, base + from, emit);
        if (bs == raw.size()) break;
        from = bs + (at(raw, bs + 1) == 'u' ? 6 : 2);
    }
}

// Which strings carry text: the values of these keys, and the strings of arrays under them.
struct key_filter {
    const std::vector<std::string>* text_keys = nullptr;
    bool every_string = false;

    // `raw`: the key as written, between its quotes.
    [[nodiscard]] bool is_text_key(std::string_view raw) const noexcept {
        if (every_string) return true;
        if (raw.find('\\') != std::string_view::npos) return true; // escaped: it may spell a text key
        if (text_keys)
            for (const auto& k : *text_keys)
                if (k == raw) return true;
        return false;
    }
};

// Walks one JSON text (RFC 8259, as strictly as nlohmann::json::parse: no comments, no trailing
// commas; a leading UTF-8 BOM is skipped as nlohmann does) without building anything, and calls
// `visit(content_begin, content_end)` for every string value the filter selects. Returns whether
// `s` is valid JSON (UTF-8 inside strings is not checked: the service's parse does that). Keeps
// its nesting on a heap stack, so no input can overflow the call stack.
template <class Visit>
bool walk_json(std::string_view s, const key_filter& filter, Visit&& visit) {
    std::size_t i = 0;
    const std::size_t n = s.size();
    if (s.starts_with("\xEF\xBB\xBF")) i = 3;
    auto ws = [&] {
        while (i < n && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) ++i;
    };
    // i on the opening quote; on success i past the closing one and [b, e) the raw content.
    auto string = [&](std::size_t& b, std::size_t& e) {
        b = ++i;
        while (i < n) {
            const auto c = static_cast<unsigned char>(s[i]);
            if (c == '"') {
                e = i++;
                return true;
            }
            if (c < 0x20) return false;
            if (c == '\\') {
                const char x = at(s, i + 1);
                if (x == 'u') {
                    for (std::size_t k = 2; k < 6; ++k)
                        if (!is_hex(at(s, i + k)) || i + k >= n) return false;
                    i += 6;
                } else if (x == '"' || x == '\\' || x == '/' || x == 'b' || x == 'f' || x == 'n' || x == 'r' || x == 't') {
                    i += 2;
                } else {
                    return false;
                }
                continue;
            }
            ++i;
        }
        return false;
    };
    auto number = [&] {
        if (at(s, i) == '-') ++i;
        if (at(s, i) == '0') {
            ++i;
        } else if (is_digit(at(s, i))) {
            while (i < n && is_digit(s[i])) ++i;
        } else {
            return false;
        }
        if (i < n && s[i] == '.') {
            ++i;
            if (i >= n || !is_digit(s[i])) return false;
            while (i < n && is_digit(s[i])) ++i;
        }
        if (i < n && (s[i] == 'e' || s[i] == 'E')) {
            ++i;
            if (i < n && (s[i] == '+' || s[i] == '-')) ++i;
            if (i >= n || !is_digit(s[i])) return false;
            while (i < n && is_digit(s[i])) ++i;
        }
        return true;
    };
    // The open containers: bit 0 set for an object, bit 1 for an array whose strings are text.
    std::vector<std::uint8_t> stack;
    bool text = filter.every_string; // whether the value about to be read is text
    enum class next { value, key, after_value } state = next::value;
    while (true) {
        ws();
        switch (state) {
        case next::value: {
            if (i >= n) return false;
            const char c = s[i];
            if (c == '{') {
                ++i;
                stack.push_back(1);
                ws();
                if (at(s, i) == '}' && i < n) {
                    ++i;
                    stack.pop_back();
                    state = next::after_value;
                } else {
                    state = next::key;
                }
            } else if (c == '[') {
                ++i;
                stack.push_back(text ? 2 : 0);
                ws();
                if (at(s, i) == ']' && i < n) {
                    ++i;
                    stack.pop_back();
                    state = next::after_value;
                } // else: the first element, a value with the same `text`
                else
                    state = next::value;
            } else if (c == '"') {
                std::size_t b = 0, e = 0;
                if (!string(b, e)) return false;
                if (text && e > b) visit(b, e);
                state = next::after_value;
            } else if (c == 't' || c == 'f' || c == 'n') {
                const std::string_view lit = c == 't' ? "true" : c == 'f' ? "false" : "null";
                if (s.substr(i, lit.size()) != lit) return false;
                i += lit.size();
                state = next::after_value;
            } else if (c == '-' || is_digit(c)) {
                if (!number()) return false;
                state = next::after_value;
            } else {
                return false;
            }
            break;
        }
        case next::key: {
            if (at(s, i) != '"' || i >= n) return false;
            std::size_t b = 0, e = 0;
            if (!string(b, e)) return false;
            text = filter.is_text_key(s.substr(b, e - b));
            ws();
            if (at(s, i) != ':' || i >= n) return false;
            ++i;
            state = next::value;
            break;
        }
        case next::after_value: {
            if (stack.empty()) return i == n;
            if (i >= n) return false;
            const bool object = stack.back() & 1;
            if (s[i] == ',') {
                ++i;
                if (object) {
                    state = next::key;
                } else {
                    text = (stack.back() & 2) != 0;
                    state = next::value;
                }
            } else if (s[i] == (object ? '}' : ']')) {
                ++i;
                stack.pop_back();
            } else {
                return false;
            }
            break;
        }
        }
    }
}

} // namespace pii_detail

/// The findings in a piece of plain text (not JSON-escaped), in order, none overlapping.
[[nodiscard]] inline std::vector<pii_finding> pii_scan(std::string_view text, pii_kind_set kinds = pii_kind_set::all()) {
    std::vector<pii_finding> out;
    pii_detail::scan_text(text, kinds, 0, [&](const pii_finding& f) { out.push_back(f); });
    return out;
}

/// `text` with each finding replaced by its placeholder; `counts` (optional) gets the findings.
[[nodiscard]] inline std::string pii_mask(std::string_view text, pii_kind_set kinds = pii_kind_set::all(), pii_counts* counts = nullptr) {
    std::string out;
    std::size_t copied = 0;
    pii_detail::scan_text(text, kinds, 0, [&](const pii_finding& f) {
        if (out.empty()) out.reserve(text.size());
        out.append(text.substr(copied, f.begin - copied));
        out.append(pii_placeholder(f.kind));
        copied = f.end;
        if (counts) counts->add(f.kind);
    });
    if (copied == 0) return std::string{text};
    out.append(text.substr(copied));
    return out;
}

/// What scanning a JSON body found.
struct pii_body_scan {
    bool valid_json = false; // false: the body was left alone
    pii_counts counts{};
    std::optional<std::string> masked{}; // with `mask` and something found: the rewritten body
};

/// What is looked for, and in which strings of a JSON body.
struct pii_scan_options {
    // The kinds looked for (default: all).
    pii_kind_set kinds = pii_kind_set::all();
    // The keys whose string values carry a chat's text, in chatkit's, OpenAI's (Chat Completions
    // and Responses) and Anthropic's formats; the strings of arrays under them count too, and an
    // object under them has keys of its own (a content part's "text").
    std::vector<std::string> text_keys{"content", "text", "input", "instructions", "system", "prompt", "message", "arguments", "output"};
    // Every string value of the body instead (user ids, metadata, model names included).
    bool scan_every_string = false;
};

/// Scans a JSON body's text strings; with `mask`, rebuilds the body with the findings masked
/// (only the insides of strings change: the result is valid JSON of the same structure).
[[nodiscard]] inline pii_body_scan pii_scan_json(std::string_view body, const pii_scan_options& o, bool mask) {
    pii_body_scan out;
    std::vector<pii_finding> found; // grows only when something is found
    const pii_detail::key_filter filter{&o.text_keys, o.scan_every_string};
    const auto kinds = o.kinds;
    out.valid_json = pii_detail::walk_json(body, filter, [&](std::size_t b, std::size_t e) {
        pii_detail::scan_json_string(body.substr(b, e - b), b, kinds, [&](const pii_finding& f) { found.push_back(f); });
    });
    if (!out.valid_json) return out;
    for (const auto& f : found) out.counts.add(f.kind);
    if (mask && !found.empty()) {
        std::string rebuilt;
        rebuilt.reserve(body.size());
        std::size_t copied = 0;
        for (const auto& f : found) {
            rebuilt.append(body.substr(copied, f.begin - copied));
            rebuilt.append(pii_placeholder(f.kind));
            copied = f.end;
        }
        rebuilt.append(body.substr(copied));
        out.masked = std::move(rebuilt);
    }
    return out;
}

/// The middleware's options. The scan's (the kinds looked for, and in which strings) are those
/// of the base, pii_scan_options.
struct pii_redaction_options : pii_scan_options {
    // The mode of a chat request that neither `policy` nor `route_modes` decides.
    pii_mode default_mode = pii_mode::off;
    // Modes by route: "/chat", "/v1/chat/completions" (also for its /v1/chat alias),
    // "/v1/messages", "/v1/responses", "/api/v1/conversations/{id}/messages" and
    // "/api/v1/conversations/{id}/stream" (templates, as chatkit/chat_routes.hpp names them).
    std::map<std::string, pii_mode, std::less<>> route_modes{};
    // When set, decides every chat request's mode, ahead of route_modes and default_mode: e.g. by
    // req.caller.team_id (put the authenticating middleware before this one). Called
    // concurrently, on the request's thread; it must not block.
    std::function<pii_mode(const http_request&)> policy{};
    // Told of each kind found in a request (its count) in count, mask and refuse modes, for
    // metrics. Called concurrently; never told the values.
    std::function<void(pii_kind, std::size_t)> on_found{};
    // In count and mask modes, the answer says what was found (`x-chatkit-pii: email=1,card=2`).
    bool response_header = true;
};

/// The middleware; see the top of this file.
class pii_redaction {
public:
    static constexpr std::string_view header = "x-chatkit-pii";

    struct context {
        pii_mode mode = pii_mode::off; // what was applied to this request
        pii_counts counts{};           // what was found in it
    };

    explicit pii_redaction(pii_redaction_options options = {}) : options_(std::move(options)) {}

    /// The mode a request gets: off for anything but a chat request, else the policy's answer,
    /// else its route's, else the default.
    [[nodiscard]] pii_mode mode_for(const http_request& req) const {
        if (!is_chat_request(req.method, req.path)) return pii_mode::off;
        if (options_.policy) return options_.policy(req);
        const std::string_view route = route_template(req.path);
        auto it = options_.route_modes.find(route);
        if (it == options_.route_modes.end() && route == "/v1/chat")
            it = options_.route_modes.find(std::string_view{"/v1/chat/completions"});
        return it != options_.route_modes.end() ? it->second : options_.default_mode;
    }

    std::optional<http_response> before(http_request& req, context& ctx) {
        ctx.mode = mode_for(req);
        if (ctx.mode == pii_mode::off || options_.kinds.empty()) return std::nullopt;
        const bool mask = ctx.mode == pii_mode::mask;
        if (req.method == "POST") {
            auto scanned = pii_scan_json(req.body, options_, mask);
            if (!scanned.valid_json) return std::nullopt; // the service answers 400 for it
            ctx.counts = scanned.counts;
            if (scanned.masked) req.body = std::move(*scanned.masked);
        } else { // GET .../stream: the turn is in the query
            const pii_detail::key_filter filter{&options_.text_keys, options_.scan_every_string};
            for (auto& [key, value] : req.query) {
                if (!filter.is_text_key(key)) continue;
                pii_counts found;
                std::string masked = pii_mask(value, options_.kinds, &found);
                if (mask && found.any()) value = std::move(masked);
                for (std::size_t k = 0; k < pii_kind_count; ++k) ctx.counts.n[k] += found.n[k];
            }
        }
        if (!ctx.counts.any()) return std::nullopt;
        if (options_.on_found)
            for (std::size_t k = 0; k < pii_kind_count; ++k)
                if (ctx.counts.n[k]) options_.on_found(static_cast<pii_kind>(k), ctx.counts.n[k]);
        if (ctx.mode == pii_mode::refuse)
            return error_response(
                error{error_kind::invalid_request,
                      "the request contains personal data or secrets (" + ctx.counts.kinds() + "); remove them and send it again",
                      "pii_detected"},
                req.request_id);
        return std::nullopt;
    }

    void after(const http_request&, http_response& res, context& ctx) {
        if (!options_.response_header || !ctx.counts.any()) return;
        if (ctx.mode == pii_mode::count || ctx.mode == pii_mode::mask)
            res.headers.insert_or_assign(std::string{header}, ctx.counts.to_string());
    }

    [[nodiscard]] const pii_redaction_options& options() const noexcept { return options_; }

private:
    pii_redaction_options options_;
};
static_assert(middleware<pii_redaction>);

} // namespace chatkit
