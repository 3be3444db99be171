// What PII redaction adds to a chat request: the walk of the raw body and the scanners (count),
// and the rebuild of the body (mask), for a ~1 KB and a ~16 KB messages array, without PII and
// with a few findings. Baseline, in the same run: nlohmann::json::parse of the same body, which
// the service does once per chat request anyway. Also the alternative this plugin avoids: parse
// the body with nlohmann, mask the strings in the tree and dump it again.
#include "bench_clock.hpp"

#include <chatkit/pii_redaction.hpp>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <string>

namespace {

constexpr auto duration = std::chrono::milliseconds(1500);

// Ordinary chat text: words, punctuation, a year, a price, a version, a time, an order number,
// a date, UTF-8 and an escaped newline: what the scanners must look at and reject.
const char* const sentences[] = {
    "Could you summarize the attached meeting notes from 2024 in three bullet points?",
    "The quarterly revenue grew by 12.5% to 1234.56 million, mostly from the new product line.",
    "Please rewrite this paragraph so that it sounds less formal, but keep the key facts intact.",
    "We upgraded the service to version 3.2.1 on 2024-05-01 at 09:30 and saw no regressions.",
    "Order 88231 shipped yesterday; the customer asked whether express delivery was possible.",
    "Écrivez une réponse polie en français, avec une formule de politesse à la fin.\nMerci !",
    "What is the difference between a mutex and a semaphore, with a short C++ example?",
    "東京の天気について教えてください。明日は雨が降りますか？ 🙂",
};

// A messages array of about `bytes` bytes; with `findings`, a few messages carry PII.
std::string chat_body(std::size_t bytes, bool findings) {
    nlohmann::json messages = nlohmann::json::array();
    messages.push_back({{"role", "system"}, {"content", "You are a helpful assistant. Answer briefly."}});
    std::size_t size = 0, k = 0;
    while (size < bytes) {
        std::string text;
        for (int s = 0; s < 3; ++s) text += std::string{sentences[(k + s) % std::size(sentences)]} + " ";
        if (findings && k % 4 == 1) text += "Mail jean.dupont@example.fr or call +33 1 23 45 67 89. ";
        if (findings && k % 4 == 3) text += "Card 4111 1111 1111 1111, key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv. ";
        size += text.size() + 40;
        messages.push_back({{"role", k % 2 ? "assistant" : "user"}, {"content", std::move(text)}});
        ++k;
    }
    return nlohmann::json{{"model", "gpt-4o-mini"}, {"temperature", 0.2}, {"messages", std::move(messages)}}.dump();
}

// The alternative: a tree, the same scanners on its text strings, and the tree dumped again.
void mask_tree(nlohmann::json& j, const chatkit::pii_scan_options& o, bool text) {
    if (j.is_string()) {
        if (text) j = chatkit::pii_mask(j.get_ref<const std::string&>(), o.kinds);
    } else if (j.is_array()) {
        for (auto& v : j) mask_tree(v, o, text);
    } else if (j.is_object()) {
        for (auto& [k, v] : j.items()) mask_tree(v, o, std::find(o.text_keys.begin(), o.text_keys.end(), k) != o.text_keys.end());
    }
}

void run(const char* title, const std::string& body, const std::string& with_pii) {
    const chatkit::pii_scan_options options;
    // Sanity: the figures are about a scan that finds what it should.
    if (chatkit::pii_scan_json(body, options, false).counts.any() || !chatkit::pii_scan_json(with_pii, options, false).counts.any())
        std::abort();

    bench::print_header(title, "nlohmann::json::parse of the same body");
    std::size_t sink = 0;
    const auto baseline = bench::run_for(duration, 1, [&](int, long) { sink += nlohmann::json::parse(body).size(); });
    bench::print_row("nlohmann::json::parse (baseline)", baseline, baseline);
    bench::print_row("pii count: walk + scan, no PII",
                     bench::run_for(duration, 1, [&](int, long) { sink += chatkit::pii_scan_json(body, options, false).counts.total(); }),
                     baseline);
    bench::print_row(
        "pii mask: walk + scan, no PII",
        bench::run_for(duration, 1, [&](int, long) { sink += chatkit::pii_scan_json(body, options, true).masked.has_value(); }), baseline);
    bench::print_row(
        "pii mask: walk + scan + rebuild, with PII",
        bench::run_for(duration, 1, [&](int, long) { sink += chatkit::pii_scan_json(with_pii, options, true).masked->size(); }), baseline);
    bench::print_row("nlohmann parse + mask tree + dump, with PII",
                     bench::run_for(duration, 1,
                                    [&](int, long) {
                                        auto j = nlohmann::json::parse(with_pii);
                                        mask_tree(j, options, false);
                                        sink += j.dump().size();
                                    }),
                     baseline);
    std::printf("\n(bodies: %zu bytes without PII; %zu bytes with %llu findings)\n", body.size(), with_pii.size(),
                static_cast<unsigned long long>(chatkit::pii_scan_json(with_pii, options, false).counts.total()));
    if (sink == 0) std::abort();
}

} // namespace

int main() {
    run("PII redaction, ~1 KB chat body", chat_body(1024, false), chat_body(1024, true));
    run("PII redaction, ~16 KB chat body", chat_body(16 * 1024, false), chat_body(16 * 1024, true));

    // Input built to hurt a backtracking matcher: runs of digits and separators, colons, '@'s.
    std::string hostile = R"({"messages":[{"role":"user","content":")";
    while (hostile.size() < 16 * 1024) hostile += "1 2-3.4(5)+6:7::8@a.b 4111-1111 GB82 0000 ";
    hostile += R"("}]})";
    bench::print_header("PII redaction, ~16 KB of hostile text", "nlohmann::json::parse of the same body");
    std::size_t sink = 0;
    const auto baseline = bench::run_for(duration, 1, [&](int, long) { sink += nlohmann::json::parse(hostile).size(); });
    bench::print_row("nlohmann::json::parse (baseline)", baseline, baseline);
    bench::print_row("pii mask: walk + scan + rebuild",
                     bench::run_for(duration, 1,
                                    [&](int, long) {
                                        auto r = chatkit::pii_scan_json(hostile, chatkit::pii_scan_options{}, true);
                                        sink += r.counts.total();
                                    }),
                     baseline);
    if (sink == 0) std::abort();
}
