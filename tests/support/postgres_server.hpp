// A real, throw-away PostgreSQL cluster for a test: initdb into a temporary directory, the server
// on 127.0.0.1 and a free port (its Unix socket in that directory), fsync off (durability against
// a power cut is not what a test checks; a COMMIT still waits for the server). TCP connections
// need the password, as a deployment's would. It can be stopped and started again on the same
// port with its data, and it is stopped, and its directory removed, with the test.
// PostgreSQL refuses to run as root: as root, its programs run as `nobody`.
#pragma once

#include "child_process.hpp"
#include "free_port.hpp"

#include <libpq-fe.h>

#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace test_support {

class postgres_server {
public:
    static constexpr const char* password = "chatkit-test-pw-8e1f";

    postgres_server() {
        bindir_ = find_bindir();
        std::random_device rd;
        dir_ = std::filesystem::temp_directory_path() / ("chatkit-pg-" + std::to_string(rd()) + std::to_string(rd()));
        std::filesystem::create_directories(dir_);
        if (::geteuid() == 0) {
            const passwd* pw = ::getpwnam("nobody");
            if (!pw) throw std::runtime_error("running as root, and there is no user 'nobody' to run PostgreSQL as");
            run_as_ = {pw->pw_uid, pw->pw_gid};
            if (::chown(dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) throw std::runtime_error("cannot chown " + dir_.string());
        }
        std::filesystem::permissions(dir_, std::filesystem::perms::owner_all);
        {
            std::ofstream pwfile(dir_ / "pwfile");
            pwfile << password << "\n";
        }
        if (run_as_ && ::chown((dir_ / "pwfile").c_str(), run_as_->uid, run_as_->gid) != 0)
            throw std::runtime_error("cannot chown the password file");
        port_ = free_loopback_port();
        // Local (Unix socket) connections are trusted; TCP ones need the password (SCRAM).
        const int rc = run_and_wait({bindir_ + "initdb", "-D", (dir_ / "data").string(), "-U", "postgres", "-E", "UTF8", "--locale=C",
                                     "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256",
                                     "--pwfile=" + (dir_ / "pwfile").string()},
                                    dir_ / "initdb.log");
        if (rc != 0) {
            const std::string log = read_log("initdb.log");
            remove();
            throw std::runtime_error("initdb failed (is postgresql installed? scripts/install-deps): " + log);
        }
        try {
            start();
        } catch (...) {
            remove();
            throw;
        }
    }
    ~postgres_server() {
        stop();
        remove();
    }
    postgres_server(const postgres_server&) = delete;
    postgres_server& operator=(const postgres_server&) = delete;

    [[nodiscard]] int port() const { return port_; }
    // A URL as a deployment would write it, password included.
    [[nodiscard]] std::string url(const std::string& database = "postgres") const {
        return "postgresql://postgres:" + std::string{password} + "@127.0.0.1:" + std::to_string(port_) + "/" + database;
    }

    // Starts the server and waits (bounded) until it accepts connections.
    void start() {
        if (process_) return;
        std::vector<std::string> args{bindir_ + "postgres",  "-D", (dir_ / "data").string(),     "-p", std::to_string(port_), "-k",
                                      dir_.string(),         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",           "-c",
                                      "shared_buffers=16MB", "-c", "max_connections=200"};
        process_.emplace(std::move(args), options(dir_ / "postgres.log"));
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds{30};
        const std::string ping = "host=127.0.0.1 port=" + std::to_string(port_) + " dbname=postgres user=postgres connect_timeout=2";
        while (PQping(ping.c_str()) != PQPING_OK) {
            if (!process_->running()) {
                process_.reset();
                throw std::runtime_error("postgres exited at start-up: " + read_log("postgres.log"));
            }
            if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("postgres did not accept connections");
            std::this_thread::sleep_for(std::chrono::milliseconds{20});
        }
    }

    // Stops it: fast (SIGINT: open connections are cut, as in a restart) or immediate (SIGQUIT:
    // a crash; start() then recovers from the WAL). start() brings it back with its data.
    void stop(bool immediate = false) {
        if (!process_) return;
        process_->stop(immediate ? SIGQUIT : SIGINT, std::chrono::seconds{60});
        process_.reset();
    }

    // A new, empty database; returns its name.
    std::string create_database() {
        const std::string name = "test_" + std::to_string(++databases_);
        query("CREATE DATABASE " + name);
        return name;
    }

    // One statement on a connection of the test's own, the first value of its result as text
    // ("" when it returns no row); throws on an error.
    std::string query(const std::string& sql, const std::string& database = "postgres") const {
        const std::unique_ptr<PGconn, void (*)(PGconn*)> c{PQconnectdb(url(database).c_str()), PQfinish};
        if (PQstatus(c.get()) != CONNECTION_OK) throw std::runtime_error(std::string{"cannot connect: "} + PQerrorMessage(c.get()));
        const std::unique_ptr<PGresult, void (*)(PGresult*)> r{PQexec(c.get(), sql.c_str()), PQclear};
        const auto status = PQresultStatus(r.get());
        if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) throw std::runtime_error(sql + ": " + PQresultErrorMessage(r.get()));
        return PQntuples(r.get()) > 0 ? std::string{PQgetvalue(r.get(), 0, 0)} : std::string{};
    }
    long number(const std::string& sql, const std::string& database = "postgres") const { return std::stol(query(sql, database)); }

private:
    struct identity {
        uid_t uid;
        gid_t gid;
    };

    // The server programs are not on PATH on Debian: /usr/lib/postgresql/<major>/bin, the newest.
    static std::string find_bindir() {
        if (const char* env = std::getenv("CHATKIT_PG_BINDIR"); env && *env) return std::string{env} + "/";
        std::string best;
        int best_major = -1;
        std::error_code ec;
        for (const auto& entry : std::filesystem::directory_iterator("/usr/lib/postgresql", ec)) {
            const auto bin = entry.path() / "bin";
            const int major = std::atoi(entry.path().filename().c_str());
            if (std::filesystem::exists(bin / "initdb") && major > best_major) {
                best_major = major;
                best = bin.string() + "/";
            }
        }
        return best; // empty: from PATH
    }

    // As `nobody` when root (PostgreSQL refuses to run as root), in dir_, its output into `log`.
    child_options options(const std::filesystem::path& log) const {
        child_options o{.output = log, .out = child_sink::file, .err = child_sink::file, .workdir = dir_};
        if (run_as_) o.run_as = std::pair{run_as_->uid, run_as_->gid};
        return o;
    }

    int run_and_wait(std::vector<std::string> args, const std::filesystem::path& log) const {
        return child_process{std::move(args), options(log)}.wait();
    }

    std::string read_log(const char* name) const {
        std::ifstream in(dir_ / name);
        std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        return text.size() > 2000 ? text.substr(text.size() - 2000) : text;
    }

    void remove() {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }

    std::string bindir_;
    std::filesystem::path dir_;
    std::optional<identity> run_as_;
    int port_ = 0;
    std::optional<child_process> process_;
    std::atomic<int> databases_{0};
};

} // namespace test_support
