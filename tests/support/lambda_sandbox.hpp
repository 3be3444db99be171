// Runs a packaged Lambda function (dist/lambda.zip) the way Lambda starts it, with nothing of this
// machine's file system in reach: the zip unpacked into ROOT/var/task of an otherwise empty ROOT
// (plus ROOT/tmp, and what the zip takes from the image, see below), then ROOT/var/task/bootstrap
// started chrooted into ROOT, in /var/task, with only Lambda's environment. It runs only if the
// zip carries its own loader and every other library.
// chroot(2) needs root (CAP_SYS_CHROOT); without it starting fails with an exception that says so.
#pragma once

#include "child_process.hpp"

#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace test_support {

// What scripts/lambda-zip leaves to provided.al2023's image: OpenSSL 3's two libraries, which
// Amazon Linux keeps in /usr/lib64 (package openssl-libs). This machine's copies stand in for them.
inline const std::vector<std::string> image_libraries{"libssl.so.3", "libcrypto.so.3"};

// What a sandbox's root holds besides the function.
enum class lambda_image {
    amazon_linux_openssl, // ROOT/usr/lib64 with image_libraries, as the image has them
    empty,                // nothing: for a zip made with --self-contained
};

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

// How Lambda starts a bootstrap: exactly `env`, stdout and stderr into `log` (kept for the secret
// scan), chrooted into `root` when it is set, in `workdir`.
inline child_options lambda_launch(const std::map<std::string, std::string>& env, const std::filesystem::path& log,
                                   const std::filesystem::path& root = {}, const std::filesystem::path& workdir = {}) {
    return {.env = env,
            .inherit_env = false,
            .output = log,
            .out = child_sink::file,
            .err = child_sink::file,
            .root = root,
            .workdir = workdir,
            .keep_log = true};
}

// A fresh directory D with D/root/var/task (the unpacked zip) and D/root/tmp; the log of what runs
// there goes to D/bootstrap.log, outside the root. Removed when destroyed.
class lambda_sandbox {
public:
    explicit lambda_sandbox(const std::filesystem::path& zip, lambda_image image = lambda_image::amazon_linux_openssl) {
        std::random_device rd;
        dir_ = std::filesystem::temp_directory_path() / ("chatkit-lambda-root-" + std::to_string(rd()) + std::to_string(rd()));
        std::filesystem::create_directories(task_root());
        std::filesystem::create_directories(root() / "tmp");
        std::filesystem::permissions(root() / "tmp", std::filesystem::perms::all | std::filesystem::perms::sticky_bit);
        const auto command = "unzip -q '" + zip.string() + "' -d '" + task_root().string() + "'";
        if (std::system(command.c_str()) != 0)
            throw std::runtime_error("cannot unpack " + zip.string() + " with `" + command + "` (is unzip installed?)");
        if (image == lambda_image::amazon_linux_openssl) {
            std::filesystem::create_directories(root() / "usr/lib64");
            for (const auto& name : image_libraries)
                std::filesystem::copy_file(host_library(name), root() / "usr/lib64" / name); // the file, not a symlink
        }
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
        return child_process{{"/var/task/bootstrap"}, lambda_launch(env, log_path(), root(), "/var/task")};
    }

private:
    // Where Debian (or a distribution with lib64) keeps a shared library; the file a symlink names.
    static std::filesystem::path host_library(const std::string& name) {
        for (const char* dir : {"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"})
            if (std::filesystem::exists(std::filesystem::path{dir} / name))
                return std::filesystem::canonical(std::filesystem::path{dir} / name);
        throw std::runtime_error("no " + name + " on this machine to stand in for the Lambda image's");
    }

    std::filesystem::path dir_;
};

} // namespace test_support
