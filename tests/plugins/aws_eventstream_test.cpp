// The event-stream framing (docs/protocols.md §3) against the smithy-typescript vectors and two
// constructed Bedrock frames: exact decoding whatever the chunking, checksum failures that stop the
// stream, byte-for-byte re-encoding, and lengths that must fail before anything is buffered.
#include <chatkit/aws/eventstream.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

namespace aws = chatkit::aws;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path vectors_dir = fs::path(TEST_DATA_DIR) / "eventstream-vectors";
const fs::path smithy_dir = vectors_dir / "smithy-typescript";

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + p.string());
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<std::string> vector_names(const std::string& kind) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(smithy_dir / "encoded" / kind)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

std::string base64_decode(const std::string& in) {
    static const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    std::uint32_t acc = 0;
    int bits = 0;
    for (char c : in) {
        if (c == '=') break;
        auto pos = alphabet.find(c);
        REQUIRE(pos != std::string::npos);
        acc = (acc << 6) | static_cast<std::uint32_t>(pos);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>((acc >> bits) & 0xFF);
        }
    }
    return out;
}

// The smithy-typescript JSON description of a message, as an event_message.
aws::event_message expected_message(const json& d) {
    aws::event_message m;
    for (const auto& h : d["headers"]) {
        const int type = h["type"];
        aws::event_header_value v;
        switch (type) {
        case 0:
        case 1: v = h["value"].get<bool>(); break;
        case 2: v = h["value"].get<std::int8_t>(); break;
        case 3: v = h["value"].get<std::int16_t>(); break;
        case 4: v = h["value"].get<std::int32_t>(); break;
        case 5: v = h["value"].get<std::int64_t>(); break;
        case 6: {
            std::string b = base64_decode(h["value"]);
            v = std::vector<std::uint8_t>(b.begin(), b.end());
            break;
        }
        case 7: v = base64_decode(h["value"]); break;
        case 8: v = aws::event_timestamp(std::chrono::milliseconds(h["value"].get<std::int64_t>())); break;
        case 9: {
            std::string b = base64_decode(h["value"]);
            REQUIRE(b.size() == 16);
            aws::event_uuid u{};
            std::copy(b.begin(), b.end(), u.begin());
            v = u;
            break;
        }
        default: FAIL("unknown type in the vector");
        }
        REQUIRE(aws::event_header_type(v) == type);
        m.headers.emplace_back(h["name"], std::move(v));
    }
    m.payload = base64_decode(d["payload"]);
    return m;
}

void check_equal(const aws::event_message& got, const aws::event_message& want) {
    REQUIRE(got.headers.size() == want.headers.size());
    for (std::size_t i = 0; i < want.headers.size(); ++i) {
        INFO("header " << want.headers[i].first);
        CHECK(got.headers[i].first == want.headers[i].first);
        CHECK(aws::event_header_type(got.headers[i].second) == aws::event_header_type(want.headers[i].second));
        CHECK(got.headers[i].second == want.headers[i].second);
    }
    CHECK(got.payload == want.payload);
}

struct decoded {
    std::vector<aws::event_message> messages;
    chatkit::result<void> status;
};

// Feeds `bytes` cut at the given offsets (ascending), stopping at the first error.
decoded decode_chunks(const std::string& bytes, const std::vector<std::size_t>& cuts, aws::eventstream_decoder& d) {
    decoded out;
    std::size_t from = 0;
    auto on_message = [&](aws::event_message&& m) { out.messages.push_back(std::move(m)); };
    for (std::size_t i = 0; i <= cuts.size(); ++i) {
        std::size_t to = i < cuts.size() ? cuts[i] : bytes.size();
        out.status = d.feed(std::string_view(bytes).substr(from, to - from), on_message);
        if (!out.status) break;
        from = to;
    }
    return out;
}

decoded decode_chunks(const std::string& bytes, const std::vector<std::size_t>& cuts = {}) {
    aws::eventstream_decoder d;
    return decode_chunks(bytes, cuts, d);
}

std::uint32_t be32(const std::string& s, std::size_t at) {
    return static_cast<std::uint32_t>(aws::eventstream_detail::read_be(s.data() + at, 4));
}

// A prelude with a valid CRC, for lengths the decoder must refuse.
std::string prelude(std::uint32_t total, std::uint32_t headers) {
    std::string p;
    aws::eventstream_detail::write_be(p, total, 4);
    aws::eventstream_detail::write_be(p, headers, 4);
    aws::eventstream_detail::write_be(p, aws::eventstream_detail::crc32_of(p), 4);
    return p;
}

// A message with valid CRCs around an arbitrary headers section.
std::string frame_with_raw_headers(const std::string& headers, const std::string& payload) {
    std::string m = prelude(static_cast<std::uint32_t>(16 + headers.size() + payload.size()), static_cast<std::uint32_t>(headers.size()));
    m += headers;
    m += payload;
    aws::eventstream_detail::write_be(m, aws::eventstream_detail::crc32_of(m), 4);
    return m;
}

} // namespace

TEST_CASE("eventstream: CRC is the standard CRC-32, not CRC-32C") { CHECK(aws::eventstream_detail::crc32_of("123456789") == 0xCBF43926u); }

TEST_CASE("eventstream: every positive vector decodes to exactly its JSON description") {
    const auto names = vector_names("positive");
    REQUIRE(names.size() == 5);
    for (const auto& name : names) {
        INFO(name);
        const std::string bytes = slurp(smithy_dir / "encoded" / "positive" / name);
        const json d = json::parse(slurp(smithy_dir / "decoded" / "positive" / name));
        const auto want = expected_message(d);

        // The prelude and CRC fields of the description, read from the bytes.
        CHECK(bytes.size() == d["total_length"].get<std::size_t>());
        CHECK(be32(bytes, 0) == d["total_length"].get<std::uint32_t>());
        CHECK(be32(bytes, 4) == d["headers_length"].get<std::uint32_t>());
        CHECK(be32(bytes, 8) == static_cast<std::uint32_t>(d["prelude_crc"].get<std::int64_t>()));
        CHECK(be32(bytes, bytes.size() - 4) == static_cast<std::uint32_t>(d["message_crc"].get<std::int64_t>()));

        auto whole = decode_chunks(bytes);
        REQUIRE(whole.status);
        REQUIRE(whole.messages.size() == 1);
        check_equal(whole.messages[0], want);

        for (std::size_t cut = 0; cut <= bytes.size(); ++cut) {
            INFO("split at " << cut);
            aws::eventstream_decoder dec;
            auto split = decode_chunks(bytes, {cut}, dec);
            REQUIRE(split.status);
            REQUIRE(split.messages.size() == 1);
            check_equal(split.messages[0], want);
            CHECK(dec.buffered() == 0);
        }

        std::vector<std::size_t> every_byte;
        for (std::size_t i = 1; i < bytes.size(); ++i) every_byte.push_back(i);
        auto bytewise = decode_chunks(bytes, every_byte);
        REQUIRE(bytewise.status);
        REQUIRE(bytewise.messages.size() == 1);
        check_equal(bytewise.messages[0], want);
    }
}

TEST_CASE("eventstream: all_headers carries each of the ten wire types with its value") {
    const auto got = decode_chunks(slurp(smithy_dir / "encoded" / "positive" / "all_headers"));
    REQUIRE(got.messages.size() == 1);
    const auto& h = got.messages[0].headers;
    REQUIRE(h.size() == 10);
    CHECK(std::get<std::int32_t>(h[0].second) == 40972);
    CHECK(*got.messages[0].header_string("content-type") == "application/json");
    CHECK(std::get<bool>(h[2].second) == false);
    CHECK(std::get<bool>(h[3].second) == true);
    CHECK(std::get<std::int8_t>(h[4].second) == -49);
    CHECK(std::get<std::vector<std::uint8_t>>(h[5].second).size() == 20);
    CHECK(std::get<aws::event_timestamp>(h[6].second).time_since_epoch().count() == 8675309);
    CHECK(std::get<std::int16_t>(h[7].second) == 42);
    CHECK(std::get<std::int64_t>(h[8].second) == 42424242);
    CHECK(std::get<aws::event_uuid>(h[9].second) == aws::event_uuid{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16});
    CHECK(got.messages[0].header_string("int16") == nullptr); // present, but not a string
    CHECK(got.messages[0].header_string("missing") == nullptr);
}

TEST_CASE("eventstream: encode_event reproduces every positive vector byte for byte") {
    for (const auto& name : vector_names("positive")) {
        INFO(name);
        const std::string bytes = slurp(smithy_dir / "encoded" / "positive" / name);
        const auto want = expected_message(json::parse(slurp(smithy_dir / "decoded" / "positive" / name)));
        CHECK(aws::encode_event(want) == bytes);
        auto got = decode_chunks(bytes);
        REQUIRE(got.messages.size() == 1);
        CHECK(aws::encode_event(got.messages[0]) == bytes);
    }
}

TEST_CASE("eventstream: every negative vector fails with the expected checksum error, however it is split") {
    const auto names = vector_names("negative");
    REQUIRE(names.size() == 4);
    for (const auto& name : names) {
        INFO(name);
        const std::string bytes = slurp(smithy_dir / "encoded" / "negative" / name);
        std::string expected = slurp(smithy_dir / "decoded" / "negative" / name);
        while (!expected.empty() && (expected.back() == '\n' || expected.back() == '\r')) expected.pop_back();

        for (std::size_t cut = 0; cut <= bytes.size(); ++cut) {
            INFO("split at " << cut);
            aws::eventstream_decoder dec;
            auto got = decode_chunks(bytes, {cut}, dec);
            CHECK(got.messages.empty());
            REQUIRE_FALSE(got.status);
            CHECK(got.status.error().kind == chatkit::error_kind::upstream);
            CHECK(got.status.error().code == "eventstream_corrupt");
            CHECK_THAT(got.status.error().message, Catch::Contains(expected));
            CHECK(dec.failed());
        }
    }
}

TEST_CASE("eventstream: after a failure the decoder stays failed and emits nothing more") {
    aws::eventstream_decoder dec;
    auto bad = decode_chunks(slurp(smithy_dir / "encoded" / "negative" / "corrupted_payload"), {}, dec);
    REQUIRE_FALSE(bad.status);
    auto good = decode_chunks(slurp(smithy_dir / "encoded" / "positive" / "payload_no_headers"), {}, dec);
    CHECK_FALSE(good.status);
    CHECK(good.messages.empty());
    CHECK_THAT(good.status.error().message, Catch::Contains("Message checksum mismatch"));
}

TEST_CASE("eventstream: several messages in one read, and any chunking of a stream, decode in order") {
    std::string stream;
    std::vector<aws::event_message> want;
    for (const auto& name : vector_names("positive")) {
        stream += slurp(smithy_dir / "encoded" / "positive" / name);
        want.push_back(expected_message(json::parse(slurp(smithy_dir / "decoded" / "positive" / name))));
    }
    auto check_all = [&](const decoded& got) {
        REQUIRE(got.status);
        REQUIRE(got.messages.size() == want.size());
        for (std::size_t i = 0; i < want.size(); ++i) check_equal(got.messages[i], want[i]);
    };
    check_all(decode_chunks(stream));

    std::mt19937 rng(7);
    for (int round = 0; round < 200; ++round) {
        std::vector<std::size_t> cuts;
        for (std::size_t at = 0;;) {
            at += 1 + std::uniform_int_distribution<std::size_t>(0, 80)(rng);
            if (at >= stream.size()) break;
            cuts.push_back(at);
        }
        check_all(decode_chunks(stream, cuts));
    }
}

TEST_CASE("eventstream: an incomplete message is held back and reported by buffered()") {
    const std::string bytes = slurp(smithy_dir / "encoded" / "positive" / "payload_one_str_header");
    aws::eventstream_decoder dec;
    int count = 0;
    auto on_message = [&](aws::event_message&&) { ++count; };
    REQUIRE(dec.feed(bytes + bytes.substr(0, 20), on_message));
    CHECK(count == 1);
    CHECK(dec.buffered() == 20);
    REQUIRE(dec.feed(bytes.substr(20), on_message));
    CHECK(count == 2);
    CHECK(dec.buffered() == 0);
    REQUIRE(dec.feed("", on_message));
    CHECK(count == 2);
}

TEST_CASE("eventstream: the constructed Bedrock frames decode to their event and exception") {
    SECTION("contentBlockDelta") {
        auto got = decode_chunks(slurp(vectors_dir / "constructed" / "bedrock-contentBlockDelta.bin"));
        REQUIRE(got.status);
        REQUIRE(got.messages.size() == 1);
        const auto& m = got.messages[0];
        REQUIRE(m.header_string(":message-type"));
        CHECK(*m.header_string(":message-type") == "event");
        CHECK(*m.header_string(":event-type") == "contentBlockDelta");
        CHECK(*m.header_string(":content-type") == "application/json");
        CHECK(json::parse(m.payload) == json{{"contentBlockIndex", 0}, {"delta", {{"text", "Hello"}}}});
        CHECK(aws::encode_event(m) == slurp(vectors_dir / "constructed" / "bedrock-contentBlockDelta.bin"));
    }
    SECTION("throttlingException") {
        auto got = decode_chunks(slurp(vectors_dir / "constructed" / "bedrock-throttlingException.bin"));
        REQUIRE(got.status);
        REQUIRE(got.messages.size() == 1);
        const auto& m = got.messages[0];
        CHECK(*m.header_string(":message-type") == "exception");
        CHECK(*m.header_string(":exception-type") == "throttlingException");
        CHECK(*m.header_string(":content-type") == "application/json");
        CHECK(m.header_string(":event-type") == nullptr);
        CHECK(json::parse(m.payload) == json{{"message", "Too many requests, please wait before trying again."}});
    }
}

TEST_CASE("eventstream: a length field claiming 100 MiB fails at the prelude, before buffering it") {
    const std::string p = prelude(100u * 1024 * 1024, 0);
    aws::eventstream_decoder dec;
    int count = 0;
    auto on_message = [&](aws::event_message&&) { ++count; };
    REQUIRE(dec.feed(p.substr(0, 11), on_message)); // not yet a whole prelude
    auto r = dec.feed(p.substr(11), on_message);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == "eventstream_corrupt");
    CHECK_THAT(r.error().message, Catch::Contains("exceeds the limit"));
    CHECK(dec.buffered() == 0);
    CHECK(count == 0);

    SECTION("and the limit is configurable") {
        aws::eventstream_decoder small(64);
        const std::string bytes = slurp(smithy_dir / "encoded" / "positive" / "all_headers"); // 204 bytes
        auto s = small.feed(bytes, on_message);
        REQUIRE_FALSE(s);
        CHECK_THAT(s.error().message, Catch::Contains("exceeds the limit of 64"));
    }
}

TEST_CASE("eventstream: impossible lengths behind a valid prelude CRC are corruption") {
    auto fails_with = [](const std::string& bytes, const std::string& text) {
        auto got = decode_chunks(bytes);
        REQUIRE_FALSE(got.status);
        CHECK(got.messages.empty());
        CHECK(got.status.error().code == "eventstream_corrupt");
        CHECK_THAT(got.status.error().message, Catch::Contains(text));
    };
    fails_with(prelude(15, 0), "below 16");
    fails_with(prelude(0, 0), "below 16");
    fails_with(prelude(40, 25), "headers length 25 exceeds");
    fails_with(prelude(16, 0xFFFFFFFFu), "headers length");
}

TEST_CASE("eventstream: malformed headers behind valid CRCs are corruption") {
    auto fails_with = [](const std::string& headers, const std::string& text) {
        auto got = decode_chunks(frame_with_raw_headers(headers, "{}"));
        REQUIRE_FALSE(got.status);
        CHECK(got.messages.empty());
        CHECK(got.status.error().code == "eventstream_corrupt");
        CHECK_THAT(got.status.error().message, Catch::Contains(text));
    };
    fails_with(std::string("\x01"
                           "a\x0A",
                           3),
               "unknown header value type 10");
    fails_with(std::string("\x05"
                           "ab",
                           3),
               "runs past"); // name longer than the section
    fails_with(std::string("\x01"
                           "a\x04\x00\x00",
                           5),
               "runs past"); // int32 cut short
    fails_with(std::string("\x01"
                           "a\x07\x00\x05"
                           "abc",
                           8),
               "runs past"); // string cut short
    fails_with(std::string("\x01"
                           "a\x09"
                           "0123456789",
                           13),
               "runs past"); // uuid cut short
    fails_with(std::string("\x00\x00", 2), "empty header name");
    fails_with(std::string("\x01"
                           "a\x00\x01"
                           "a\x01",
                           6),
               "duplicate header a");
}

TEST_CASE("eventstream: encode_event round-trips extreme values of every type") {
    aws::event_message m;
    m.headers = {{"t", true},
                 {"f", false},
                 {"i8", std::int8_t{-128}},
                 {"i16", std::int16_t{-32768}},
                 {"i32", std::int32_t{-2147483647 - 1}},
                 {"i64", std::int64_t{-9223372036854775807LL - 1}},
                 {"bytes", std::vector<std::uint8_t>{0, 255, 1}},
                 {"str", std::string("h\xC3\xA9llo\0x", 8)},
                 {"ts", aws::event_timestamp(std::chrono::milliseconds(-1))},
                 {"uuid", aws::event_uuid{0xFF, 0, 0xAB}},
                 {std::string(255, 'n'), std::string(32767, 'v')}};
    m.payload = std::string("\0\x01payload", 9);
    const std::string bytes = aws::encode_event(m);
    auto got = decode_chunks(bytes);
    REQUIRE(got.status);
    REQUIRE(got.messages.size() == 1);
    check_equal(got.messages[0], m);
    CHECK(aws::encode_event(got.messages[0]) == bytes);
}

TEST_CASE("eventstream: encode_event refuses what the wire cannot carry") {
    aws::event_message m;
    m.headers = {{"", true}};
    CHECK_THROWS_AS(aws::encode_event(m), std::invalid_argument);
    m.headers = {{std::string(256, 'n'), true}};
    CHECK_THROWS_AS(aws::encode_event(m), std::invalid_argument);
    m.headers = {{"big", std::string(32768, 'v')}};
    CHECK_THROWS_AS(aws::encode_event(m), std::invalid_argument);
}
