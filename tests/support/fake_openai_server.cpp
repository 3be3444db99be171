// The fake OpenAI upstream as a program, for clients in other languages (the Node SDK tests):
// prints {"port":N} on stdout, then serves until stdin closes or SIGTERM arrives.
#include "fake_openai.hpp"

#include <csignal>
#include <cstdio>
#include <iostream>

int main() {
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, nullptr);
    test_support::fake_openai fake;
    std::printf("{\"port\":%d}\n", fake.port());
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
