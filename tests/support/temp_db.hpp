// A SQLite database path under the temp directory, removed with its WAL and journal files when the
// test ends.
#pragma once

#include <chatkit/random_id.hpp>

#include <filesystem>
#include <string>
#include <system_error>

namespace test_support {

class temp_db {
public:
    temp_db() = default;
    temp_db(const temp_db&) = delete;
    temp_db& operator=(const temp_db&) = delete;
    ~temp_db() {
        std::error_code ec;
        for (const char* suffix : {"", "-wal", "-shm", "-journal"}) std::filesystem::remove(path_ + suffix, ec);
    }
    const std::string& path() const { return path_; }

private:
    std::string path_ = (std::filesystem::temp_directory_path() / ("chatkit-test-" + chatkit::random_id({}, 16) + ".db")).string();
};

} // namespace test_support
