// The fake Anthropic or Gemini upstream as a program (FAKE_PROVIDER=anthropic|gemini), for the
// Node SDK tests that go through sample_server to each provider: prints {"port":N} on stdout,
// then serves until stdin closes or SIGTERM arrives. fake_openai_server is the OpenAI one.
#include "fake_anthropic.hpp"
#include "fake_gemini.hpp"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <variant>

int main() {
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, nullptr);
    const char* which = std::getenv("FAKE_PROVIDER");
    const std::string kind = which ? which : "";
    std::variant<std::monostate, std::unique_ptr<test_support::fake_anthropic>, std::unique_ptr<test_support::fake_gemini>> fake;
    int port = 0;
    if (kind == "anthropic") {
        auto f = std::make_unique<test_support::fake_anthropic>();
        port = f->port();
        fake = std::move(f);
    } else if (kind == "gemini") {
        auto f = std::make_unique<test_support::fake_gemini>();
        port = f->port();
        fake = std::move(f);
    } else {
        std::fprintf(stderr, "FAKE_PROVIDER must be anthropic or gemini\n");
        return 2;
    }
    std::printf("{\"port\":%d}\n", port);
    std::fflush(stdout);
    std::thread stdin_watch([] {
        for (char c; std::cin.get(c);) {
        }
        kill(getpid(), SIGTERM);
    });
    stdin_watch.detach();
    int signal = 0;
    sigwait(&stop, &signal);
}
