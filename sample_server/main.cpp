// sample_server: the chatkit service over HTTP, configured by CHAT_* variables (see --help).
#include "admin.hpp"
#include "compiled_app.hpp"
#include "config.hpp"
#include "log.hpp"
#include "metrics_listener.hpp"

#include <chatkit/beast_client.hpp>
#include <chatkit/beast_server.hpp>
#include <chatkit/httplib_server.hpp>

#include <csignal>
#include <cstdio>
#include <optional>
#include <pthread.h>
#include <string_view>
#include <thread>

// Whether `host` reaches only this machine: then CHAT_AUTH=none is safe enough for development.
static bool is_loopback(std::string_view host) {
    return host == "localhost" || host == "::1" || host == "[::1]" || host.starts_with("127.");
}

int main(int argc, char** argv) {
    // `sample_server teams ...` and `sample_server keys ...` administer API keys, then exit.
    if (sample_server::admin::is_command(argc, argv)) return sample_server::admin::run(argc, argv);
    for (int i = 1; i < argc; ++i)
        if (std::string_view{argv[i]} == "--help" || std::string_view{argv[i]} == "-h") {
            std::fputs(sample_server::help_text().c_str(), stdout);
            return 0;
        }
    sample_server::config cfg;
    try {
        cfg = sample_server::load_config(argc, argv);
    } catch (const sample_server::config_error& e) {
        std::fprintf(stderr, "sample_server: %s\n", e.what());
        return 2;
    }

    // SIGINT/SIGTERM are taken by one thread (started below) so the workers never see them.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGUSR1); // wakes the waiter when the server stops on its own
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    sample_server::logger log{cfg};
    try {
        // Behind the event-loop server, providers call their upstreams on the same loops.
        std::shared_ptr<chatkit::http_client> upstream;
        if (cfg.server == "beast") upstream = std::make_shared<chatkit::beast_client>();
        // The service is compiled in compiled_app.cpp: here it is an any_service.
        auto app = sample_server::make_compiled_app(cfg, &log, upstream);
        auto& service = app.service;
        // The requests an adapter answers itself (malformed, over a limit) never reach the service.
        auto log_refusal = [&log](const chatkit::http_request& req, const chatkit::response_summary& s) { log.request(req, s); };
        std::optional<chatkit::beast_server<chatkit::any_service>> beast;
        std::optional<chatkit::httplib_server<chatkit::any_service>> httplib;
        int port = 0;
        if (cfg.server == "beast") {
            chatkit::beast_options http;
            http.host = cfg.host;
            http.port = cfg.port;
            http.loops = cfg.loops;
            http.workers = cfg.threads;
            http.max_connections = cfg.max_connections;
            http.max_body_bytes = cfg.max_body_bytes;
            http.max_header_bytes = cfg.max_header_bytes;
            http.read_timeout = cfg.read_timeout;
            http.keep_alive_timeout = cfg.keep_alive_timeout;
            http.request_deadline = cfg.request_deadline;
            port = beast.emplace(service, http, log_refusal).bind();
        } else {
            chatkit::httplib_options http;
            http.host = cfg.host;
            http.port = cfg.port;
            http.threads = cfg.threads;
            http.max_body_bytes = cfg.max_body_bytes;
            http.read_timeout = cfg.read_timeout;
            http.keep_alive_timeout = cfg.keep_alive_timeout;
            port = httplib.emplace(service, http, log_refusal).bind();
        }
        // CHAT_METRICS_PORT: serving from here on, stopped after the main server (it keeps
        // answering scrapes while the main one drains).
        std::optional<sample_server::metrics_listener> metrics_port;
        if (cfg.metrics_port >= 0 && app.metrics) metrics_port.emplace(*app.metrics, cfg.host, cfg.metrics_port);

        app.announce_provider();
        if (cfg.auth == "none" && !is_loopback(cfg.host))
            log.warn("CHAT_AUTH=none on a non-loopback address: anyone who can reach this server may use it and read any "
                     "user's history; set CHAT_AUTH=keys (docs/gateway.md)",
                     {{"host", cfg.host}});
        log.info("listening", {{"host", cfg.host},
                               {"port", port},
                               {"server", cfg.server},
                               {"provider", app.provider_name},
                               {"model", app.default_model},
                               {"database", sample_server::shown_database_url(cfg.database_url)},
                               {"auth", cfg.auth},
                               {"cache_size", cfg.cache_size},
                               {"rate_limit", cfg.rate_limit},
                               {"threads", cfg.threads},
                               {"metrics_port", metrics_port ? metrics_port->port() : -1},
                               {"version", CHATKIT_VERSION}});

        std::thread signal_waiter([&] {
            int signal = 0;
            sigwait(&stop_signals, &signal);
            if (signal == SIGUSR1) return; // the server ended on its own: just be joinable
            // SIGTERM is how orchestrators stop a replica: keep serving for CHAT_DRAIN_DELAY with
            // /ready at 503, so load balancers take it out of rotation before the listener closes.
            if (signal == SIGTERM && cfg.drain_delay.count() > 0) {
                app.drain();
                log.info("draining: GET /ready answers 503 until the listener closes", {{"delay_s", cfg.drain_delay.count()}});
                const timespec delay{static_cast<std::time_t>(cfg.drain_delay.count()), 0};
                const int again = sigtimedwait(&stop_signals, nullptr, &delay);
                if (again == SIGUSR1) return;
            }
            log.info("stopping: finishing requests in flight", {{"signal", signal == SIGINT ? "SIGINT" : "SIGTERM"}});
            if (beast) beast->stop();
            else httplib->stop();
        });
        bool served = true;
        if (beast) beast->run();
        else served = httplib->listen();
        pthread_kill(signal_waiter.native_handle(), SIGUSR1); // wake the waiter if no signal came
        signal_waiter.join();
        if (metrics_port) metrics_port->stop();
        log.info("stopped");
        return served ? 0 : 1;
    } catch (const sample_server::config_error& e) {
        std::fprintf(stderr, "sample_server: %s\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        log.error("start-up failed", {{"error", e.what()}});
        return 1;
    }
}
