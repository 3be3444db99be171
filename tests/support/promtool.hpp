// promtool's verdict on a scrape, for the tests that serve /metrics: its exit status and what it
// printed. promtool is Debian's `prometheus` package; without it the check fails and says so.
#pragma once

#include "server_process.hpp"

#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <string>
#include <sys/wait.h>
#include <utility>

namespace test_support {

inline std::pair<int, std::string> promtool_check(const std::string& scrape) {
    temp_dir dir;
    const auto file = dir.path() / "scrape.txt";
    std::ofstream{file} << scrape;
    const std::string command = "promtool check metrics < " + file.string() + " 2>&1";
    FILE* p = ::popen(command.c_str(), "r");
    REQUIRE(p);
    std::string out;
    char buffer[4096];
    while (const auto n = std::fread(buffer, 1, sizeof buffer, p)) out.append(buffer, n);
    const int status = ::pclose(p);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

} // namespace test_support
