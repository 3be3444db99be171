// The fake Anthropic or Gemini upstream as a program (FAKE_PROVIDER=anthropic|gemini), for the
// Node SDK tests that go through sample_server to each provider: prints {"port":N} on stdout,
// then serves until stdin closes or SIGTERM arrives. fake_openai_server is the OpenAI one.
#include "fake_anthropic.hpp"
#include "fake_gemini.hpp"
#include "fake_program.hpp"

#include <cstdio>
#include <cstdlib>
#include <string>

int main() {
    const sigset_t stop = test_support::block_stop_signals();
    const char* which = std::getenv("FAKE_PROVIDER");
    const std::string kind = which ? which : "";
    if (kind == "anthropic") {
        test_support::fake_anthropic fake;
        test_support::announce_and_serve(fake.port(), stop);
    } else if (kind == "gemini") {
        test_support::fake_gemini fake;
        test_support::announce_and_serve(fake.port(), stop);
    } else {
        std::fprintf(stderr, "FAKE_PROVIDER must be anthropic or gemini\n");
        return 2;
    }
}
