// A do-nothing mutex: the thread policy for a plugin used from one thread only (the `_st`
// aliases), as spdlog does for its sinks.
#pragma once

namespace chatkit {

struct null_mutex {
    void lock() noexcept {}
    void unlock() noexcept {}
    bool try_lock() noexcept { return true; }
};

} // namespace chatkit
