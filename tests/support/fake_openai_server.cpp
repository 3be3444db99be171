// The fake OpenAI upstream as a program, for clients in other languages (the Node SDK tests) and
// as the benchmarks' mock upstream: prints {"port":N} on stdout, then serves until stdin closes or
// SIGTERM arrives. Optional: FAKE_OPENAI_DELAY_MS (before each answer), FAKE_OPENAI_CHUNK_DELAY_MS
// (between stream chunks), FAKE_OPENAI_CONTENT (the answer), FAKE_OPENAI_THREADS (connections).
#include "fake_openai.hpp"
#include "fake_program.hpp"

#include <cstdlib>

int main() {
    const sigset_t stop = test_support::block_stop_signals();
    auto number = [](const char* name, long fallback) {
        const char* v = std::getenv(name);
        return v ? std::atol(v) : fallback;
    };
    test_support::fake_reply defaults;
    defaults.delay_before = std::chrono::milliseconds(number("FAKE_OPENAI_DELAY_MS", 0));
    defaults.delay_between = std::chrono::milliseconds(number("FAKE_OPENAI_CHUNK_DELAY_MS", 0));
    if (const char* content = std::getenv("FAKE_OPENAI_CONTENT")) defaults.content = content;
    test_support::fake_openai fake{defaults, static_cast<std::size_t>(number("FAKE_OPENAI_THREADS", 64))};
    test_support::announce_and_serve(fake.port(), stop);
}
