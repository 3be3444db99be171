// An HTTPS server on 127.0.0.1 whose certificate no CA signed (self-signed, made in memory): a
// client that verifies certificates must refuse it before sending a request.
#pragma once

#include <httplib.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

namespace test_support {

class untrusted_tls_server {
public:
    untrusted_tls_server() : key_(EVP_EC_gen("P-256")), cert_(X509_new()) {
        ASN1_INTEGER_set(X509_get_serialNumber(cert_), 1);
        X509_gmtime_adj(X509_getm_notBefore(cert_), -60);
        X509_gmtime_adj(X509_getm_notAfter(cert_), 3600);
        X509_set_pubkey(cert_, key_);
        X509_NAME_add_entry_by_txt(X509_get_subject_name(cert_), "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("127.0.0.1"),
                                   -1, -1, 0);
        X509_set_issuer_name(cert_, X509_get_subject_name(cert_));
        // Names the address too, so a client that trusts this certificate can verify the host.
        X509V3_CTX ctx;
        X509V3_set_ctx_nodb(&ctx);
        X509V3_set_ctx(&ctx, cert_, cert_, nullptr, nullptr, 0);
        if (X509_EXTENSION* san = X509V3_EXT_conf_nid(nullptr, &ctx, NID_subject_alt_name, "IP:127.0.0.1")) {
            X509_add_ext(cert_, san, -1);
            X509_EXTENSION_free(san);
        }
        if (X509_sign(cert_, key_, EVP_sha256()) <= 0) throw std::runtime_error("cannot sign the test certificate");
        server_.emplace(cert_, key_);
        auto count = [this](const httplib::Request&, httplib::Response& res) {
            ++requests_;
            res.set_content("{}", "application/json");
        };
        server_->Get(".*", count).Post(".*", count);
        port_ = server_->bind_to_any_port("127.0.0.1");
        thread_ = std::thread([this] { server_->listen_after_bind(); });
        while (!server_->is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ~untrusted_tls_server() {
        server_->stop();
        thread_.join();
        server_.reset();
        X509_free(cert_);
        EVP_PKEY_free(key_);
    }
    untrusted_tls_server(const untrusted_tls_server&) = delete;
    untrusted_tls_server& operator=(const untrusted_tls_server&) = delete;

    int port() const { return port_; }
    int requests() const { return requests_; } // requests that got past the handshake

    // The certificate in PEM: a client that trusts it as a CA accepts this server.
    std::string certificate_pem() const {
        BIO* bio = BIO_new(BIO_s_mem());
        PEM_write_bio_X509(bio, cert_);
        char* data = nullptr;
        const long size = BIO_get_mem_data(bio, &data);
        std::string pem(data, static_cast<std::size_t>(size));
        BIO_free(bio);
        return pem;
    }

private:
    EVP_PKEY* key_;
    X509* cert_;
    std::optional<httplib::SSLServer> server_;
    std::thread thread_;
    int port_ = 0;
    std::atomic<int> requests_{0};
};

} // namespace test_support
