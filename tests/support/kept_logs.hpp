// Keeps what the suite's servers logged, for the scan that fails when a secret is in a log
// (tests/support/scan_logs.py, run by scripts/test after the suite). With $CHATKIT_TEST_LOG_DIR
// set, each launcher copies a process's log there when it is done with it, next to the secrets
// of the environment the process was given. Without it, nothing is kept.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace test_support {

// The settings whose values are secrets: upstream keys, AWS secret keys and session tokens,
// chatkit's admin key, passwords.
inline bool secret_setting(std::string_view name) {
    for (std::string_view end : {"API_KEY", "SECRET_ACCESS_KEY", "SESSION_TOKEN", "ADMIN_KEY", "PASSWORD"})
        if (name.ends_with(end)) return true;
    return false;
}

// The secrets in `env`: secret settings' values, and the passwords of URLs
// (redis://user:password@host, postgresql://user:password@host/db).
inline std::vector<std::string> secrets_of(const std::map<std::string, std::string>& env) {
    std::vector<std::string> out;
    for (const auto& [name, value] : env) {
        if (value.empty()) continue;
        if (secret_setting(name)) out.push_back(value);
        const auto scheme = value.find("://");
        if (scheme == std::string::npos) continue;
        const auto at = value.find('@', scheme);
        const auto colon = value.find(':', scheme + 3);
        if (at != std::string::npos && colon != std::string::npos && colon < at && value.find('/', scheme + 3) > at)
            out.push_back(value.substr(colon + 1, at - colon - 1));
    }
    return out;
}

// Copies `log` into $CHATKIT_TEST_LOG_DIR as a fresh NAME.log, with NAME.secrets listing the
// secrets of `env`, one per line.
inline void keep_log(const std::filesystem::path& log, const std::map<std::string, std::string>& env) {
    const char* dir = std::getenv("CHATKIT_TEST_LOG_DIR");
    if (!dir || !*dir) return;
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    std::random_device rd;
    const auto name = std::filesystem::path{dir} / (std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::copy_file(log, name.string() + ".log", std::filesystem::copy_options::overwrite_existing, ec);
    if (ec) return; // no log was written: nothing to scan
    std::ofstream secrets{name.string() + ".secrets"};
    for (const auto& s : secrets_of(env))
        if (s.find('\n') == std::string::npos) secrets << s << '\n';
}

} // namespace test_support
