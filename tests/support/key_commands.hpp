// What the tests of API keys share: sample_server's `teams`/`keys` commands run against a SQLite
// file, their JSON output read back, keys sent as a bearer token, and SHA-256 as chatkit stores it.
#pragma once

#include "server_process.hpp"

#include <catch2/catch.hpp>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <openssl/sha.h>

#include <filesystem>
#include <string>
#include <vector>

namespace test_support {

// Runs `sample_server ARGS...` against the SQLite file `db`; returns its exit code and output.
inline run_result cli(const std::filesystem::path& db, const std::vector<std::string>& args) {
    return run_to_exit({{"CHAT_DATABASE_URL", "sqlite:" + db.string()}}, args);
}

// The last line of a command's output, as JSON (the commands print one object per line).
inline nlohmann::json last_json(const std::string& output) {
    const auto end = output.find_last_not_of('\n');
    REQUIRE(end != std::string::npos);
    const auto newline = output.rfind('\n', end);
    const auto start = newline == std::string::npos ? 0 : newline + 1;
    return nlohmann::json::parse(output.substr(start, end + 1 - start));
}

// `teams create ARGS...`, which must succeed.
inline void create_team(const std::filesystem::path& db, std::vector<std::string> args) {
    args.insert(args.begin(), {"teams", "create"});
    const auto r = cli(db, args);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
}

// `keys create ARGS...`, which must succeed; the new key.
inline std::string create_key(const std::filesystem::path& db, std::vector<std::string> args) {
    args.insert(args.begin(), {"keys", "create"});
    const auto r = cli(db, args);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    return last_json(r.output)["key"];
}

inline httplib::Headers bearer(const std::string& key) { return {{"Authorization", "Bearer " + key}}; }

inline std::string hex(const std::string& bytes) {
    std::string out;
    for (unsigned char c : bytes) out += "0123456789abcdef"[c >> 4], out += "0123456789abcdef"[c & 0xf];
    return out;
}

// The 32 raw bytes of SHA-256(text).
inline std::string sha256(const std::string& text) {
    std::string d(SHA256_DIGEST_LENGTH, '\0');
    SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), reinterpret_cast<unsigned char*>(d.data()));
    return d;
}

} // namespace test_support
