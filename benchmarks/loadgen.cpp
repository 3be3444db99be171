// A small HTTP/1.1 load generator for the benchmarks: C connections on one epoll loop, each sending
// the same request over and over on a kept-alive connection for D seconds (or, with --streams,
// holding one Server-Sent Events stream each until it ends). Prints one JSON object of results.
// Without --body it sends GETs; -n stops after that many answers (still bounded by -d).
//
//   loadgen --port P --path /v1/chat/completions --body FILE [--header "K: V"]... -c 64 -d 10
//   loadgen --port P --path /health -c 1 -n 2000 -d 5
//   loadgen --port P --path /chat --body FILE --streams N --stream-end 'event: done' [--timeout 60]
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

struct options {
    int port = 0;
    std::string path = "/";
    std::string body;
    std::vector<std::string> headers;
    int connections = 64;
    double seconds = 10;
    long max_requests = 0;  // > 0: stop after this many answers
    int streams = 0;        // > 0: stream mode
    std::string stream_end; // the text that closes a complete stream
    double timeout_seconds = 120;
};

struct connection {
    int fd = -1;
    std::string in;
    std::size_t sent = 0;
    clock_type::time_point started;
    bool busy = false;
    bool done = false;
};

[[noreturn]] void die(const std::string& why) {
    std::fprintf(stderr, "loadgen: %s\n", why.c_str());
    std::exit(2);
}

int open_connection(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die(std::string{"socket: "} + std::strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 && errno != EINPROGRESS)
        die(std::string{"connect: "} + std::strerror(errno));
    return fd;
}

// Length of one complete HTTP response at the front of `in` (Content-Length or chunked), or 0.
std::size_t complete_response(const std::string& in, int& status) {
    const auto head_end = in.find("\r\n\r\n");
    if (head_end == std::string::npos) return 0;
    status = std::atoi(in.c_str() + 9);
    std::string head = in.substr(0, head_end);
    for (auto& ch : head) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (auto cl = head.find("content-length:"); cl != std::string::npos) {
        const std::size_t length = std::strtoul(head.c_str() + cl + 15, nullptr, 10);
        return in.size() >= head_end + 4 + length ? head_end + 4 + length : 0;
    }
    if (head.find("transfer-encoding: chunked") != std::string::npos) {
        const auto end = in.find("\r\n0\r\n\r\n", head_end);
        return end == std::string::npos ? 0 : end + 7;
    }
    return 0;
}

double percentile(std::vector<double>& v, double q) {
    if (v.empty()) return 0;
    const auto k = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1));
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
    return v[k];
}

} // namespace

int main(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) die("missing value for " + a);
            return argv[++i];
        };
        if (a == "--port") o.port = std::stoi(next());
        else if (a == "--path") o.path = next();
        else if (a == "--body") {
            std::ifstream f{next()};
            std::stringstream s;
            s << f.rdbuf();
            o.body = s.str();
        } else if (a == "--header") o.headers.push_back(next());
        else if (a == "-c") o.connections = std::stoi(next());
        else if (a == "-d") o.seconds = std::stod(next());
        else if (a == "-n") o.max_requests = std::stol(next());
        else if (a == "--streams") o.streams = std::stoi(next());
        else if (a == "--stream-end") o.stream_end = next();
        else if (a == "--timeout") o.timeout_seconds = std::stod(next());
        else die("unknown option " + a);
    }
    if (o.port <= 0) die("--port is required");
    rlimit files{};
    getrlimit(RLIMIT_NOFILE, &files);
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);

    std::string request = (o.body.empty() ? "GET " : "POST ") + o.path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    for (const auto& h : o.headers) request += h + "\r\n";
    if (!o.body.empty()) request += "Content-Type: application/json\r\nContent-Length: " + std::to_string(o.body.size()) + "\r\n";
    request += "\r\n" + o.body;

    const bool streaming = o.streams > 0;
    const int count = streaming            ? o.streams
                      : o.max_requests > 0 ? static_cast<int>(std::min<long>(o.connections, o.max_requests))
                                           : o.connections;
    const int ep = epoll_create1(0);
    std::vector<connection> conns(static_cast<std::size_t>(count));
    for (int i = 0; i < count; ++i) {
        auto& c = conns[static_cast<std::size_t>(i)];
        c.fd = open_connection(o.port);
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
        ev.data.u32 = static_cast<uint32_t>(i);
        epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev);
    }

    std::vector<double> latencies_ms;
    long completed = 0, errors = 0, non_2xx = 0;
    const auto start = clock_type::now();
    const auto stop_at = start + std::chrono::duration_cast<clock_type::duration>(
                                     std::chrono::duration<double>(streaming ? o.timeout_seconds : o.seconds));
    int open = count;
    std::vector<epoll_event> events(1024);
    char buf[65536];
    long issued = 0;
    auto send_request = [&](connection& c) {
        c.started = clock_type::now();
        c.busy = true;
        c.sent = 0;
        ++issued;
    };
    for (auto& c : conns) send_request(c);

    while (open > 0 && clock_type::now() < stop_at && !(o.max_requests > 0 && completed >= o.max_requests)) {
        const int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 100);
        for (int e = 0; e < n; ++e) {
            auto& c = conns[events[static_cast<std::size_t>(e)].data.u32];
            if (c.done) continue;
            const auto flags = events[static_cast<std::size_t>(e)].events;
            if ((flags & EPOLLOUT) && c.busy && c.sent < request.size()) {
                const ssize_t w = ::send(c.fd, request.data() + c.sent, request.size() - c.sent, MSG_NOSIGNAL);
                if (w > 0) c.sent += static_cast<std::size_t>(w);
                if (c.sent == request.size()) {
                    epoll_event ev{};
                    ev.events = EPOLLIN | EPOLLRDHUP;
                    ev.data.u32 = events[static_cast<std::size_t>(e)].data.u32;
                    epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev);
                }
            }
            if (flags & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                bool closed = false;
                for (;;) {
                    const ssize_t r = ::recv(c.fd, buf, sizeof buf, 0);
                    if (r > 0) c.in.append(buf, static_cast<std::size_t>(r));
                    else {
                        closed = r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
                        break;
                    }
                }
                if (streaming) {
                    if (c.in.find(o.stream_end) != std::string::npos) {
                        ++completed;
                        latencies_ms.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - c.started).count());
                        if (std::atoi(c.in.c_str() + 9) / 100 != 2) ++non_2xx;
                        c.done = true;
                    } else if (closed) {
                        ++errors;
                        c.done = true;
                    }
                    if (c.done) {
                        ::close(c.fd);
                        --open;
                    }
                    continue;
                }
                int status = 0;
                while (const std::size_t length = complete_response(c.in, status)) {
                    latencies_ms.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - c.started).count());
                    ++completed;
                    if (status / 100 != 2) ++non_2xx;
                    c.in.erase(0, length);
                    c.busy = false;
                    if (o.max_requests > 0 && issued >= o.max_requests) continue; // enough requests are out
                    send_request(c);
                    epoll_event ev{};
                    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
                    ev.data.u32 = events[static_cast<std::size_t>(e)].data.u32;
                    epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev);
                }
                if (closed && !c.busy) { // nothing left to send on it (-n reached): not an error
                    ::close(c.fd);
                    c.done = true;
                    --open;
                    continue;
                }
                if (closed) { // the server closed a kept-alive connection: reconnect
                    ++errors;
                    ::close(c.fd);
                    c.in.clear();
                    c.fd = open_connection(o.port);
                    epoll_event ev{};
                    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
                    ev.data.u32 = events[static_cast<std::size_t>(e)].data.u32;
                    epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev);
                    --issued; // the lost request is sent again
                    send_request(c);
                }
            }
        }
    }
    const double elapsed = std::chrono::duration<double>(clock_type::now() - start).count();
    if (streaming) errors += open; // streams still open at the timeout did not complete
    long unanswered = 0;           // requests sent (or being sent) and not answered when the run ended
    if (!streaming)
        for (const auto& c : conns) unanswered += c.busy && !c.done ? 1 : 0;
    std::printf("{\"completed\":%ld,\"errors\":%ld,\"non_2xx\":%ld,\"unanswered\":%ld,\"seconds\":%.3f,\"rps\":%.1f,"
                "\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f}\n",
                completed, errors, non_2xx, unanswered, elapsed, static_cast<double>(completed) / elapsed, percentile(latencies_ms, 0.50),
                percentile(latencies_ms, 0.90), percentile(latencies_ms, 0.99));
}
