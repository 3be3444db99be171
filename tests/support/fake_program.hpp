// What the fakes run as programs share: stop signals blocked before any thread starts (so that
// sigwait alone receives them), then {"port":N} on stdout and serving until stdin closes or
// SIGTERM arrives, so a test that dies takes its fakes with it.
#pragma once

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <thread>

namespace test_support {

// Call first in main(), before the fake's threads exist: they inherit the mask.
inline sigset_t block_stop_signals() {
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, nullptr);
    return stop;
}

inline void announce_and_serve(int port, const sigset_t& stop) {
    std::printf("{\"port\":%d}\n", port);
    std::fflush(stdout);
    std::thread stdin_watch([] {
        for (char c; std::cin.get(c);) {}
        kill(getpid(), SIGTERM);
    });
    stdin_watch.detach();
    int signal = 0;
    sigwait(&stop, &signal);
}

} // namespace test_support
