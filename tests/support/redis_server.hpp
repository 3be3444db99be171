// A real redis-server for a test: on 127.0.0.1, a free port (redis has no --port 0: a socket bound
// to port 0 names one, then redis takes it), nothing saved to disk, optionally a password. It can
// be stopped, started again on the same port, and paused (SIGSTOP: a Redis that hangs), and it
// stops with the test. With `tls`, it also listens for TLS (rediss://) on a second port, with a
// self-signed certificate for 127.0.0.1 and localhost that tls_ca_file() holds; the fixture's own
// commands keep the plain port.
#pragma once

#include "child_process.hpp"
#include "free_port.hpp"

#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace test_support {

class redis_server {
public:
    struct with_tls {};

    explicit redis_server(std::string password = {}) : redis_server(false, std::move(password)) {}
    redis_server(with_tls, std::string password = {}) : redis_server(true, std::move(password)) {}
    ~redis_server() {
        stop();
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    redis_server(const redis_server&) = delete;
    redis_server& operator=(const redis_server&) = delete;

    int port() const { return port_; }
    std::string url() const {
        return "redis://" + (password_.empty() ? std::string{} : ":" + password_ + "@") + "127.0.0.1:" + std::to_string(port_);
    }
    // rediss://, on the TLS port, naming `host` (the certificate names 127.0.0.1 and localhost).
    std::string tls_url(const std::string& host = "localhost") const {
        return "rediss://" + (password_.empty() ? std::string{} : ":" + password_ + "@") + host + ":" + std::to_string(tls_port_);
    }
    // The PEM file a client must trust for tls_url().
    std::filesystem::path tls_ca_file() const { return dir_ / "tls.crt"; }

    // Starts redis-server and waits (bounded) until it answers PING.
    void start() {
        if (process_) return;
        std::vector<std::string> args{
            "redis-server", "--port",    std::to_string(port_),        "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
            dir_.string(),  "--logfile", (dir_ / "redis.log").string()};
        if (tls_port_ != 0)
            for (std::string a : std::vector<std::string>{"--tls-port", std::to_string(tls_port_), "--tls-cert-file",
                                                          (dir_ / "tls.crt").string(), "--tls-key-file", (dir_ / "tls.key").string(),
                                                          "--tls-ca-cert-file", (dir_ / "tls.crt").string(), "--tls-auth-clients", "no"})
                args.push_back(a);
        if (!password_.empty()) {
            args.push_back("--requirepass");
            args.push_back(password_);
        }
        process_.emplace(std::move(args));
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds{20};
        while (!answers_ping()) {
            if (!process_->running()) {
                process_.reset();
                throw std::runtime_error("redis-server exited at start-up (is it installed? scripts/install-deps)");
            }
            if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("redis-server did not answer PING");
            std::this_thread::sleep_for(std::chrono::milliseconds{20});
        }
    }

    // Stops it (SIGTERM, then waits); start() brings it back, empty, on the same port.
    void stop() {
        if (!process_) return;
        process_->signal(SIGCONT); // a paused one would never see the SIGTERM
        process_->stop(SIGTERM);
        process_.reset();
    }
    void pause() { process_->signal(SIGSTOP); }
    void resume() { process_->signal(SIGCONT); }

    // One command on a connection of the test's own (not the code under test's), its reply as
    // text: a string's value, an integer's digits, "(nil)", or an error's message.
    std::string command(const std::vector<std::string>& args) const {
        redisContext* c = redisConnect("127.0.0.1", port_);
        if (!c || c->err) {
            if (c) redisFree(c);
            throw std::runtime_error("cannot connect to the test's redis");
        }
        if (!password_.empty()) freeReplyObject(redisCommand(c, "AUTH %s", password_.c_str()));
        std::vector<const char*> argv;
        std::vector<std::size_t> lengths;
        for (const auto& a : args) {
            argv.push_back(a.data());
            lengths.push_back(a.size());
        }
        auto* r = static_cast<redisReply*>(redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lengths.data()));
        std::string out = "(no reply)";
        if (r) {
            if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_ERROR) out.assign(r->str, r->len);
            else if (r->type == REDIS_REPLY_INTEGER) out = std::to_string(r->integer);
            else if (r->type == REDIS_REPLY_NIL) out = "(nil)";
            else if (r->type == REDIS_REPLY_ARRAY) out = std::to_string(r->elements) + " elements";
            freeReplyObject(r);
        }
        redisFree(c);
        return out;
    }

private:
    redis_server(bool tls, std::string password) : password_(std::move(password)) {
        std::random_device rd;
        dir_ = std::filesystem::temp_directory_path() / ("chatkit-redis-" + std::to_string(rd()) + std::to_string(rd()));
        std::filesystem::create_directories(dir_);
        if (tls) {
            make_certificate();
            tls_port_ = free_loopback_port();
        }
        port_ = free_loopback_port();
        start();
    }

    bool answers_ping() const {
        timeval tv{0, 200'000};
        redisContext* c = redisConnectWithTimeout("127.0.0.1", port_, tv);
        bool ok = false;
        if (c && !c->err) {
            // With --requirepass, PING answers NOAUTH: a reply at all means it is up.
            auto* r = static_cast<redisReply*>(redisCommand(c, "PING"));
            ok = r != nullptr;
            if (r) freeReplyObject(r);
        }
        if (c) redisFree(c);
        return ok;
    }

    // A P-256 key and a self-signed certificate naming 127.0.0.1 and localhost, in dir_.
    void make_certificate() const {
        EVP_PKEY* key = EVP_EC_gen("P-256");
        X509* cert = X509_new();
        ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
        X509_gmtime_adj(X509_getm_notBefore(cert), -60);
        X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
        X509_set_pubkey(cert, key);
        X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("localhost"), -1,
                                   -1, 0);
        X509_set_issuer_name(cert, X509_get_subject_name(cert));
        X509V3_CTX ctx;
        X509V3_set_ctx_nodb(&ctx);
        X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
        for (auto [nid, value] :
             {std::pair{NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost"}, std::pair{NID_basic_constraints, "critical,CA:TRUE"}})
            if (X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value)) {
                X509_add_ext(cert, ext, -1);
                X509_EXTENSION_free(ext);
            }
        const bool signed_ok = X509_sign(cert, key, EVP_sha256()) > 0;
        FILE* c = std::fopen((dir_ / "tls.crt").c_str(), "w");
        FILE* k = std::fopen((dir_ / "tls.key").c_str(), "w");
        const bool written = c && k && PEM_write_X509(c, cert) == 1 &&
                             PEM_write_PrivateKey(k, key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
        if (c) std::fclose(c);
        if (k) std::fclose(k);
        X509_free(cert);
        EVP_PKEY_free(key);
        if (!signed_ok || !written) throw std::runtime_error("cannot make the test's TLS certificate");
    }

    std::string password_;
    std::filesystem::path dir_;
    int tls_port_ = 0;
    int port_ = 0;
    std::optional<child_process> process_;
};

} // namespace test_support
