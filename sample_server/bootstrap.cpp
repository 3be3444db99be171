// bootstrap: sample_server's service as an AWS Lambda custom runtime (provided.al2023), behind an
// API Gateway HTTP API or a Function URL. Same CHAT_* configuration and composition as
// sample_server; the Runtime API address comes from AWS_LAMBDA_RUNTIME_API (docs/protocols.md §5.1).
// On Lambda only /tmp is writable and each instance has its own: keep history in DynamoDB
// (CHAT_DATABASE_URL=dynamodb://TABLE); sqlite:/tmp/chat.db holds one instance's share at most.
#include "app.hpp"
#include "config.hpp"
#include "log.hpp"

#include <chatkit/lambda_runtime.hpp>

#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <unistd.h>

int main(int argc, char** argv) {
    // The packaged bootstrap (scripts/lambda-zip) carries Debian's OpenSSL, which looks for CA
    // certificates under /usr/lib/ssl; Amazon Linux keeps them in one bundle. OpenSSL's default
    // verify paths (what cpp-httplib uses) honour SSL_CERT_FILE, so point it there before any TLS
    // client exists. Overwrite 0: an SSL_CERT_FILE from the function's configuration wins.
    if (constexpr const char* amazon_linux_bundle = "/etc/pki/tls/certs/ca-bundle.crt"; ::access(amazon_linux_bundle, R_OK) == 0)
        ::setenv("SSL_CERT_FILE", amazon_linux_bundle, 0);

    const char* runtime_api = std::getenv("AWS_LAMBDA_RUNTIME_API");
    if (!runtime_api || !*runtime_api) {
        std::fputs("bootstrap: AWS_LAMBDA_RUNTIME_API is not set; run it inside Lambda or the Runtime Interface Emulator\n", stderr);
        return 2;
    }
    sample_server::config cfg;
    try {
        cfg = sample_server::load_config(argc, argv);
        // Lambda delivers invocations, not connections: there is no second port to listen on.
        if (cfg.metrics_port >= 0)
            throw sample_server::config_error("CHAT_METRICS_PORT has no meaning in Lambda, which listens on no port: unset it");
    } catch (const sample_server::config_error& e) {
        std::fprintf(stderr, "bootstrap: %s\n", e.what());
        chatkit::lambda::report_init_error(runtime_api, "Runtime.InvalidConfiguration", e.what()); // §5.3
        return 2;
    }

    // Every instance of the function is a replica: on DynamoDB, the limits of keys and teams are
    // counted in its limits table, so they hold for all of them at once.
    if (cfg.limits == "auto") cfg.limits = cfg.database_url.starts_with("dynamodb:") ? "shared" : "local";
    // A function's instances are many and short-lived: a count of one instance's own would bound
    // nothing, so unless told otherwise a limits table that cannot be reached refuses (503).
    if (!std::getenv("CHAT_LIMITS_FALLBACK")) cfg.limits_fallback = "refuse";
    sample_server::logger log{cfg, std::chrono::milliseconds{0}}; // one request at a time: no batching
    try {
        auto service = sample_server::make_service(cfg, &log);
        // An invocation's usage record is queued for the recorder's thread, which Lambda freezes
        // with the instance: it is written before the next event is asked for, or it could be lost.
        auto* recorder = service.middleware<chatkit::optional_middleware<sample_server::usage_recorder_type>>().get();
        // So are its spans, for the exporter's thread, and the settlements of the shared limits.
        auto* tracing = service.middleware<chatkit::optional_middleware<chatkit::otel_tracing>>().get();
        auto* limits = service.middleware<chatkit::optional_middleware<chatkit::shared_key_limits<sample_server::shared_counters>>>().get();
        chatkit::lambda_runtime runtime{service,
                                        chatkit::lambda_options{.runtime_api = runtime_api,
                                                                .max_invocations = 0,
                                                                .function_url = cfg.function_url_invoke_mode == "RESPONSE_STREAM"
                                                                                    ? chatkit::function_url_mode::response_stream
                                                                                    : chatkit::function_url_mode::buffered,
                                                                .between_invocations =
                                                                    [recorder, tracing, limits] {
                                                                        if (limits) (void)limits->counters().flush();
                                                                        if (recorder) (void)recorder->flush(std::chrono::seconds{5});
                                                                        if (tracing)
                                                                            (void)tracing->exporter().flush(std::chrono::seconds{2});
                                                                    }},
                                        [&log](std::string_view problem) {
                                            log.error("lambda runtime", {{"error", problem}});
                                        }};
        log.info("ready", {{"runtime_api", runtime_api},
                           {"provider", service.provider().name()},
                           {"model", service.models().front()},
                           {"database", sample_server::shown_database_url(cfg.database_url)},
                           {"version", CHATKIT_VERSION}});
        return runtime.run() ? 0 : 1;
    } catch (const sample_server::config_error& e) {
        log.error("start-up failed", {{"error", e.what()}});
        chatkit::lambda::report_init_error(runtime_api, "Runtime.InvalidConfiguration", e.what());
        return 2;
    } catch (const std::exception& e) {
        log.error("start-up failed", {{"error", e.what()}});
        chatkit::lambda::report_init_error(runtime_api, "Runtime.InitError", e.what());
        return 1;
    }
}
