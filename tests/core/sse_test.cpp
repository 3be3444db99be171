// The SSE parser providers read upstream streams with: the WHATWG rules, whatever the chunking.
#include <chatkit/sse.hpp>

#include <catch2/catch.hpp>

#include <vector>

namespace {
std::vector<chatkit::sse_message> parse_in_pieces(std::string_view stream, std::vector<std::size_t> cuts) {
    chatkit::sse_parser parser;
    std::vector<chatkit::sse_message> events;
    std::size_t from = 0;
    cuts.push_back(stream.size());
    for (auto cut : cuts) {
        parser.feed(stream.substr(from, cut - from), [&](const chatkit::sse_message& m) { events.push_back(m); });
        from = cut;
    }
    return events;
}
std::vector<chatkit::sse_message> parse(std::string_view stream) { return parse_in_pieces(stream, {}); }
} // namespace

TEST_CASE("data lines join with newlines, one leading space is dropped, comments are ignored") {
    // The examples of WHATWG HTML §9.2.6.
    auto events = parse(": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n");
    REQUIRE(events.size() == 3);
    CHECK(events[0].data == "first event");
    CHECK(events[0].id == "1");
    CHECK(events[1].data == "second event");
    CHECK(events[1].id.empty());
    CHECK(events[2].data == " third event");

    events = parse("data\n\ndata\ndata\n\ndata:\n");
    REQUIRE(events.size() == 2); // the last block has no closing blank line
    CHECK(events[0].data.empty());
    CHECK(events[1].data == "\n");

    events = parse("data:YHOO\ndata: +2\ndata: 10\n\n");
    REQUIRE(events.size() == 1);
    CHECK(events[0].data == "YHOO\n+2\n10");
    CHECK(events[0].event == "message");
}

TEST_CASE("event names, CR and CRLF line ends, and a leading BOM are understood") {
    auto events = parse("\xEF\xBB\xBF"
                        "event: delta\r\ndata: a\r\n\r\nevent: done\rdata: b\r\r");
    REQUIRE(events.size() == 2);
    CHECK(events[0].event == "delta");
    CHECK(events[0].data == "a");
    CHECK(events[1].event == "done");
    CHECK(events[1].data == "b");
}

TEST_CASE("an event with no data is not dispatched, and its name does not leak into the next") {
    auto events = parse("event: ping\n\ndata: x\n\n");
    REQUIRE(events.size() == 1);
    CHECK(events[0].event == "message");
}

TEST_CASE("an OpenAI stream parses identically however it is cut, even inside UTF-8 and CRLF") {
    const std::string stream = "data: {\"choices\":[{\"delta\":{\"content\":\"Gr\xC3\xBC\xC3\x9F"
                               "e \xF0\x9F\x91\x8B\"}}]}\r\n\r\n"
                               ": keep-alive\n\n"
                               "data: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\n"
                               "data: [DONE]\n\n";
    const auto whole = parse(stream);
    REQUIRE(whole.size() == 3);
    CHECK(whole[2].data == "[DONE]");
    for (std::size_t a = 0; a <= stream.size(); ++a) {
        for (std::size_t b = a; b <= stream.size(); b += 7) {
            const auto pieces = parse_in_pieces(stream, {a, b});
            REQUIRE(pieces.size() == whole.size());
            for (std::size_t i = 0; i < whole.size(); ++i) CHECK(pieces[i].data == whole[i].data);
        }
    }
    // Byte by byte.
    std::vector<std::size_t> every;
    for (std::size_t i = 1; i < stream.size(); ++i) every.push_back(i);
    const auto bytewise = parse_in_pieces(stream, every);
    REQUIRE(bytewise.size() == 3);
    CHECK(bytewise[0].data == whole[0].data);
}

TEST_CASE("the writer's frames read back through the parser") {
    const auto frame = chatkit::sse_event("delta", R"({"content":"hi"})") + chatkit::sse_event("", "plain");
    const auto events = parse(frame);
    REQUIRE(events.size() == 2);
    CHECK(events[0].event == "delta");
    CHECK(events[0].data == R"({"content":"hi"})");
    CHECK(events[1].event == "message");
}
