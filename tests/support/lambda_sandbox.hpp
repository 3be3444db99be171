// Runs a packaged Lambda function (dist/lambda.zip) the way Lambda starts it, with nothing of this
// machine's file system in reach: the zip unpacked into ROOT/var/task of an otherwise empty ROOT
// (plus ROOT/tmp), then ROOT/var/task/bootstrap started chrooted into ROOT, in /var/task, with
// only Lambda's environment. It runs only if the zip carries its own loader and every library.
// chroot(2) needs root (CAP_SYS_CHROOT); without it starting fails with an exception that says so.
#pragma once

#include "kept_logs.hpp"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace test_support {

// The environment Lambda gives a provided.al2023 function (docs/protocols.md §5.1; PATH, LANG, TZ and
// LD_LIBRARY_PATH as Lambda's base images set them), with fake credentials, plus `extra`.
inline std::map<std::string, std::string> lambda_environment(const std::string& runtime_api,
                                                             const std::map<std::string, std::string>& extra = {}) {
    std::map<std::string, std::string> env{
        {"AWS_LAMBDA_RUNTIME_API", runtime_api},
        {"AWS_REGION", "us-east-1"},
        {"AWS_DEFAULT_REGION", "us-east-1"},
        {"AWS_LAMBDA_FUNCTION_NAME", "chatkit"},
        {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512"},
        {"AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"},
        {"AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand"},
        {"AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/chatkit"},
        {"AWS_LAMBDA_LOG_STREAM_NAME", "2026/11/24/[$LATEST]0123456789abcdef0123456789abcdef"},
        {"AWS_ACCESS_KEY_ID", "ASIAIOSFODNN7EXAMPLE"},
        {"AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"},
        {"AWS_SESSION_TOKEN", "IQoJb3JpZ2luX2VjEXAMPLE"},
        {"_HANDLER", "bootstrap"},
        {"LAMBDA_TASK_ROOT", "/var/task"},
        {"LAMBDA_RUNTIME_DIR", "/var/runtime"},
        {"LANG", "en_US.UTF-8"},
        {"TZ", ":UTC"},
        {"PATH", "/usr/local/bin:/usr/bin/:/bin:/opt/bin"},
        {"LD_LIBRARY_PATH", "/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib"}};
    for (const auto& [name, value] : extra) env[name] = value;
    return env;
}

// A started program: exactly the environment given (nothing inherited), stdout and stderr into a
// log file, chrooted first when `root` is set (the packaged zip) or not (bootstrap from the build). Killed (SIGKILL) when destroyed or when the thread
// that started it ends.
class child_process {
public:
    child_process(const std::filesystem::path& program, const std::map<std::string, std::string>& env, const std::filesystem::path& log,
                  const std::filesystem::path& root = {}, const std::filesystem::path& cwd = {})
        : log_(log), env_(env) {
        // Everything the child needs is prepared before fork: between fork and execve it only makes
        // system calls (the parent has threads).
        const std::string path = program.string(), root_dir = root.string(), work_dir = cwd.string();
        std::vector<std::string> entries;
        for (const auto& [name, value] : env) entries.push_back(name + "=" + value);
        std::vector<char*> envp;
        for (auto& e : entries) envp.push_back(e.data());
        envp.push_back(nullptr);
        std::string arg0 = path;
        char* argv[] = {arg0.data(), nullptr};
        const int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (log_fd < 0) throw std::runtime_error("cannot create " + log.string() + ": " + std::strerror(errno));
        int report[2]; // the child writes errno and the failed step here; closed on a successful execve
        if (::pipe2(report, O_CLOEXEC) != 0) throw std::runtime_error(std::string{"pipe2: "} + std::strerror(errno));

        pid_ = ::fork();
        if (pid_ == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            ::dup2(log_fd, 1);
            ::dup2(log_fd, 2);
            const char* step = "execve";
            if (!root_dir.empty() && ::chroot(root_dir.c_str()) != 0) step = "chroot";
            else if (!work_dir.empty() && ::chdir(work_dir.c_str()) != 0) step = "chdir";
            else ::execve(path.c_str(), argv, envp.data());
            const int error = errno;
            (void)!::write(report[1], &error, sizeof error);
            (void)!::write(report[1], step, std::strlen(step));
            ::_exit(127);
        }
        const int fork_error = errno;
        ::close(report[1]);
        ::close(log_fd);
        if (pid_ < 0) {
            ::close(report[0]);
            throw std::runtime_error(std::string{"fork: "} + std::strerror(fork_error));
        }
        int error = 0;
        char step[16] = {};
        const auto got = ::read(report[0], &error, sizeof error);
        if (got == sizeof error) (void)!::read(report[0], step, sizeof step - 1);
        ::close(report[0]);
        if (got == sizeof error) {
            ::waitpid(pid_, nullptr, 0);
            pid_ = -1;
            std::string what = "cannot start " + path + ": " + step + " failed: " + std::strerror(error);
            if (std::string_view{step} == "chroot")
                what += " (running in an empty chroot of " + root_dir + " needs root or CAP_SYS_CHROOT)";
            if (std::string_view{step} == "execve" && error == ENOENT) what += " (an ELF file whose interpreter is missing fails so too)";
            throw std::runtime_error(what);
        }
    }
    ~child_process() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
        keep_log(log_, env_);
    }
    child_process(const child_process&) = delete;
    child_process& operator=(const child_process&) = delete;

    pid_t pid() const { return pid_; }

    // Waits up to 20 s for it to exit; its exit code, or -1 (killed by a signal, or still running).
    int wait_exit() {
        for (int i = 0; i < 2000 && pid_ > 0; ++i) {
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
            }
            ::usleep(10'000);
        }
        return -1;
    }

    // Its stdout and stderr so far.
    std::string log() const {
        std::ifstream in{log_};
        std::stringstream text;
        text << in.rdbuf();
        return text.str();
    }

private:
    std::filesystem::path log_;
    std::map<std::string, std::string> env_; // for keep_log
    pid_t pid_ = -1;
};

// A fresh directory D with D/root/var/task (the unpacked zip) and D/root/tmp; the log of what runs
// there goes to D/bootstrap.log, outside the root. Removed when destroyed.
class lambda_sandbox {
public:
    explicit lambda_sandbox(const std::filesystem::path& zip) {
        std::random_device rd;
        dir_ = std::filesystem::temp_directory_path() / ("chatkit-lambda-root-" + std::to_string(rd()) + std::to_string(rd()));
        std::filesystem::create_directories(task_root());
        std::filesystem::create_directories(root() / "tmp");
        std::filesystem::permissions(root() / "tmp", std::filesystem::perms::all | std::filesystem::perms::sticky_bit);
        const auto command = "unzip -q '" + zip.string() + "' -d '" + task_root().string() + "'";
        if (std::system(command.c_str()) != 0)
            throw std::runtime_error("cannot unpack " + zip.string() + " with `" + command + "` (is unzip installed?)");
    }
    ~lambda_sandbox() {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    lambda_sandbox(const lambda_sandbox&) = delete;
    lambda_sandbox& operator=(const lambda_sandbox&) = delete;

    std::filesystem::path root() const { return dir_ / "root"; }
    std::filesystem::path task_root() const { return root() / "var/task"; } // $LAMBDA_TASK_ROOT
    std::filesystem::path log_path() const { return dir_ / "bootstrap.log"; }

    // Starts /var/task/bootstrap chrooted into root(), in /var/task, with exactly `env`.
    child_process start(const std::map<std::string, std::string>& env) const {
        return child_process{"/var/task/bootstrap", env, log_path(), root(), "/var/task"};
    }

private:
    std::filesystem::path dir_;
};

} // namespace test_support
