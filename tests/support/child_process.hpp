// One launcher for every process the tests start: sample_server and the Lambda bootstrap (also
// chrooted into an unpacked lambda.zip), redis-server, PostgreSQL, the AWS emulators and the fake
// Bedrock. It forks and execs, sets the child's environment and output, reports a child that could
// not be started as an exception that says which step failed, and stops it within a bound.
//
// Everything the child needs (argv, the environment, the output file) is made before the fork:
// the tests that start processes run servers on threads of their own, and a child of a threaded
// process may only make system calls until it execs (no setenv, no malloc: another thread may
// have held the allocator's lock at the fork).
#pragma once

#include "kept_logs.hpp"

#include <fcntl.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace test_support {

// Where a child's stdout or stderr goes.
enum class child_sink {
    inherit, // the test's own
    file,    // appended to child_options::output
    pipe,    // to the test: child_process::output()
    null,    // /dev/null
};

struct child_options {
    std::map<std::string, std::string> env = {};                     // set in the child
    bool inherit_env = true;                                         // false: exactly `env`, nothing of the test's own
    std::vector<std::string_view> drop_env = {};                     // inherited variables with these prefixes are not passed on
    std::filesystem::path output = {};                               // the file for child_sink::file (created, or appended to)
    child_sink out = child_sink::inherit, err = child_sink::inherit; // at most one of them a pipe
    bool pipe_stdin = false;                                         // the child reads what the test writes; close_stdin() is its EOF
    std::filesystem::path root = {};                                 // chroot(2) here first (needs root)
    std::optional<std::pair<uid_t, gid_t>> run_as = {};
    std::filesystem::path workdir = {}; // after the chroot, in its tree
    bool keep_log = false;              // copy `output` for the suite's secret scan when done (kept_logs.hpp)
};

class child_process {
public:
    // Starts argv[0] (searched on PATH unless it names a path) with argv. Throws when it cannot be
    // started, naming the step that failed (chroot, setuid, chdir, exec).
    explicit child_process(std::vector<std::string> argv, child_options o = {}) : options_(std::move(o)) {
        const auto& opt = options_;
        std::vector<char*> args;
        for (auto& a : argv) args.push_back(a.data());
        args.push_back(nullptr);
        std::vector<std::string> env_text;
        if (opt.inherit_env)
            for (char** e = environ; *e; ++e) {
                const std::string_view entry{*e};
                bool keep = !opt.env.contains(std::string{entry.substr(0, entry.find('='))});
                for (const auto prefix : opt.drop_env) keep = keep && !entry.starts_with(prefix);
                if (keep) env_text.emplace_back(entry);
            }
        for (const auto& [k, v] : opt.env) env_text.push_back(k + "=" + v);
        std::vector<char*> envp;
        for (auto& e : env_text) envp.push_back(e.data());
        envp.push_back(nullptr);
        const std::string root = opt.root.string(), workdir = opt.workdir.string();

        fds fd;
        if (opt.out == child_sink::file || opt.err == child_sink::file) {
            fd.file = ::open(opt.output.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
            if (fd.file < 0) throw std::runtime_error("cannot open " + opt.output.string() + ": " + std::strerror(errno));
        }
        fd.null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
        if (opt.pipe_stdin && ::pipe2(fd.in, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
        if ((opt.out == child_sink::pipe || opt.err == child_sink::pipe) && ::pipe2(fd.from, O_CLOEXEC) != 0)
            throw std::runtime_error("pipe2 failed");
        if (::pipe2(fd.report, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed"); // closed by a successful exec

        pid_ = ::fork();
        if (pid_ == 0) {
            const char* step = nullptr;
            if (!root.empty() && ::chroot(root.c_str()) != 0) step = "chroot";
            else if (opt.run_as && (::setgroups(0, nullptr) != 0 || ::setgid(opt.run_as->second) != 0 || ::setuid(opt.run_as->first) != 0))
                step = "setuid";
            if (!step) {
                ::prctl(PR_SET_PDEATHSIG, SIGKILL); // a test that dies takes its children along (set after setuid, which clears it)
                if (!workdir.empty() && ::chdir(workdir.c_str()) != 0) step = "chdir";
            }
            if (!step) {
                if (fd.in[0] >= 0) ::dup2(fd.in[0], 0);
                route(opt.out, 1, fd);
                route(opt.err, 2, fd);
                ::execvpe(args[0], args.data(), envp.data());
                step = "exec";
            }
            const int error = errno;
            (void)!::write(fd.report[1], &error, sizeof error);
            (void)!::write(fd.report[1], step, std::strlen(step));
            ::_exit(127);
        }
        const int fork_error = errno;
        if (pid_ < 0) throw std::runtime_error(std::string{"fork: "} + std::strerror(fork_error));
        ::close(fd.report[1]);
        fd.report[1] = -1;
        int error = 0;
        char step[16] = {};
        const auto got = ::read(fd.report[0], &error, sizeof error);
        if (got == sizeof error) {
            (void)!::read(fd.report[0], step, sizeof step - 1);
            wait();
            std::string what = "cannot start " + argv[0] + ": " + step + " failed: " + std::strerror(error);
            if (std::string_view{step} == "chroot") what += " (a chroot needs root or CAP_SYS_CHROOT)";
            if (std::string_view{step} == "exec" && error == ENOENT)
                what += " (not installed? scripts/install-deps; an ELF file whose interpreter is missing fails so too)";
            throw std::runtime_error(what);
        }
        stdin_ = std::exchange(fd.in[1], -1);
        if (fd.from[0] >= 0) output_ = ::fdopen(std::exchange(fd.from[0], -1), "r");
    }

    // A child still running is killed (SIGKILL) and reaped.
    ~child_process() {
        close_stdin();
        if (running()) stop(SIGKILL);
        if (output_) std::fclose(output_);
        if (options_.keep_log) keep_log(options_.output, options_.env);
    }
    child_process(const child_process&) = delete;
    child_process& operator=(const child_process&) = delete;

    [[nodiscard]] pid_t pid() const { return pid_; }

    // Whether it has not exited yet (an exited child is reaped here, its status kept).
    bool running() {
        if (status_) return false;
        int status = 0;
        if (::waitpid(pid_, &status, WNOHANG) != pid_) return true;
        status_ = status;
        return false;
    }

    // Sends `signal` (SIGSTOP and SIGCONT pause and resume it).
    void signal(int signal) const {
        if (!status_) ::kill(pid_, signal);
    }

    // Sends `signal`, waits up to `grace` for the exit, then SIGKILL. Returns what exit_code() does.
    int stop(int signal = SIGTERM, std::chrono::milliseconds grace = std::chrono::seconds{20}) {
        if (!running()) return exit_code();
        ::kill(pid_, signal);
        const auto deadline = std::chrono::steady_clock::now() + grace;
        while (running()) {
            if (std::chrono::steady_clock::now() > deadline) {
                ::kill(pid_, SIGKILL);
                return wait();
            }
            std::this_thread::sleep_for(std::chrono::milliseconds{5});
        }
        return exit_code();
    }

    // Waits for the exit, however long it takes. Returns what exit_code() does.
    int wait() {
        if (!status_) {
            int status = 0;
            ::waitpid(pid_, &status, 0);
            status_ = status;
        }
        return exit_code();
    }

    // Waits up to `limit` for the exit: its exit code, or -1 (ended by a signal, or still running).
    int wait_exit(std::chrono::milliseconds limit = std::chrono::seconds{20}) {
        const auto deadline = std::chrono::steady_clock::now() + limit;
        while (running() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds{10});
        return running() || exit_code() < 0 ? -1 : exit_code();
    }

    // Once it has exited: its exit code, or minus the signal that ended it.
    [[nodiscard]] int exit_code() const {
        if (!status_) return -1;
        return WIFEXITED(*status_) ? WEXITSTATUS(*status_) : -WTERMSIG(*status_);
    }

    void close_stdin() {
        if (stdin_ >= 0) ::close(stdin_);
        stdin_ = -1;
    }
    // The piped stdout or stderr; closed with the child_process.
    [[nodiscard]] FILE* output() const { return output_; }

    // What it has written to its output file so far.
    [[nodiscard]] std::string log() const {
        std::ifstream in{options_.output};
        std::stringstream text;
        text << in.rdbuf();
        return text.str();
    }

private:
    // The descriptors the fork needs; the parent's copies close with it.
    struct fds {
        int file = -1, null = -1, in[2] = {-1, -1}, from[2] = {-1, -1}, report[2] = {-1, -1};
        fds() = default;
        fds(const fds&) = delete;
        fds& operator=(const fds&) = delete;
        ~fds() {
            for (const int f : {file, null, in[0], in[1], from[0], from[1], report[0], report[1]})
                if (f >= 0) ::close(f);
        }
    };
    // Points the child's descriptor `target` (1 or 2) where `s` says; O_CLOEXEC closes the rest.
    static void route(child_sink s, int target, const fds& fd) {
        if (s == child_sink::file) ::dup2(fd.file, target);
        else if (s == child_sink::pipe) ::dup2(fd.from[1], target);
        else if (s == child_sink::null) ::dup2(fd.null, target);
    }

    child_options options_;
    pid_t pid_ = -1;
    std::optional<int> status_;
    int stdin_ = -1;
    FILE* output_ = nullptr;
};

} // namespace test_support
