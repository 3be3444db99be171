#!/usr/bin/env python3
"""A bounded soak of sample_server: a mixed load for --minutes, its RSS and open descriptors
sampled every few seconds, and their growth after warm-up reported against the goal of <= 5%.

Run through ./scripts/soak (which builds sample_server in Release first), or directly:

    python3 benchmarks/soak.py --build build/bench --minutes 10
    python3 benchmarks/soak.py --server build/sanitize/sample_server/sample_server --minutes 3   # LeakSanitizer
    python3 benchmarks/soak.py --set CHAT_SERVER=httplib   # another adapter, store or limits: any CHAT_* setting

The server is the Beast adapter on a SQLite file with the echo provider (history and usage on,
the default cache). The load, paced at --rate requests a second over --workers kept-alive
connections, mixes plain chats (/chat and /v1/chat/completions), streamed chats read to their
end, streams the client abandons after the first event, and requests that fail: bad JSON (400),
an unknown path (404) and a body over CHAT_MAX_BODY_BYTES (413). When the build has
tests/support/fake_openai_server (and unless --no-upstream), the server routes (CHAT_CONFIG) the
model "fake-1" to it as an OpenAI upstream, plain and streamed, and "down-1" to an OpenAI
upstream whose port is closed: relayed chats, and chats that fail upstream (502, or 503 once the
router cools the provider down). Warm-up is the first 20% of the
run; growth compares the median of the samples in the 10% after it with the median of the last
10%. Nothing is asserted: the figures are printed, and written to soak.md and soak.json in the
build directory (or beside --server). A server built with AddressSanitizer is stopped with
SIGTERM at the end and its log searched for LeakSanitizer's report (its RSS is not comparable:
ASan keeps freed memory in quarantine, 256 MB by default). --set NAME=VALUE (repeatable) changes
one of the server's settings (a PostgreSQL store, limits counted in Redis, the cpp-httplib
adapter); the report names every one it changed.
"""
import argparse
import http.client
import json
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the suite's process and /proc helpers)

MAX_BODY = 64 * 1024  # CHAT_MAX_BODY_BYTES for the run: the oversized requests send twice that

# What the load sends, with its weight.
MIX = [("chat", 30), ("completions", 15), ("stream", 15), ("abandoned", 10), ("bad_json", 10), ("not_found", 10),
       ("oversized", 10)]
# With an upstream (CHAT_CONFIG): relayed chats, plain and streamed, and chats whose upstream is down.
UPSTREAM_MIX = [("relay", 10), ("relay_stream", 5), ("upstream_down", 5)]


def words(n, seed):
    return " ".join("w%d" % ((seed + i) % 997) for i in range(n))


class worker(threading.Thread):
    """One client: a kept-alive connection, reopened whenever a request ends it."""

    def __init__(self, port, pace, stop, counts, lock, seed, mix):
        super().__init__(daemon=True)
        self.port, self.pace, self.stop, self.counts, self.lock = port, pace, stop, counts, lock
        self.random = random.Random(seed)
        self.conn = None
        self.kinds = [k for k, w in mix for _ in range(w)]

    def connection(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        return self.conn

    def drop(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def count(self, kind, outcome):
        with self.lock:
            self.counts.setdefault(kind, {}).setdefault(outcome, 0)
            self.counts[kind][outcome] += 1

    def send(self, method, path, body=None, raw=None):
        conn = self.connection()
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        return conn.getresponse()

    def one(self, kind):
        user = "soak-%d" % self.random.randrange(64)
        question = "question %d" % self.random.randrange(10000)
        if kind == "chat":
            r = self.send("POST", "/chat", {"user_id": user, "content": question})
            body = r.read()
            return "ok" if r.status == 200 and json.loads(body).get("content") == question else "status %d" % r.status
        if kind == "completions":
            r = self.send("POST", "/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": question}]})
            r.read()
            return "ok" if r.status == 200 else "status %d" % r.status
        if kind == "stream":
            path, body, end = self.random.choice([
                ("/chat", {"user_id": user, "content": words(5, self.random.randrange(997)), "stream": True}, b"event: done"),
                ("/v1/chat/completions", {"model": "echo", "stream": True,
                                          "messages": [{"role": "user", "content": words(5, self.random.randrange(997))}]},
                 b"data: [DONE]")])
            r = self.send("POST", path, body)
            text = r.read()
            return "ok" if r.status == 200 and end in text else "status %d, no end" % r.status
        if kind == "abandoned":
            # 40 words, 10 ms apart: the client reads the first event and leaves mid-stream.
            r = self.send("POST", "/chat", {"user_id": user, "content": words(40, self.random.randrange(997)), "stream": True})
            if r.status != 200:
                r.read()
                return "status %d" % r.status
            while True:
                line = r.fp.readline()
                if not line or line.startswith(b"data:"):
                    break
            self.drop()
            return "ok" if line else "ended before an event"
        if kind in ("relay", "relay_stream"):
            streamed = kind == "relay_stream"
            r = self.send("POST", "/v1/chat/completions", {"model": "fake-1", "stream": streamed,
                                                           "messages": [{"role": "user", "content": question}]})
            text = r.read()
            return "ok" if r.status == 200 and (not streamed or b"data: [DONE]" in text) else "status %d" % r.status
        if kind == "upstream_down":
            r = self.send("POST", "/v1/chat/completions", {"model": "down-1", "messages": [{"role": "user", "content": question}]})
            r.read()
            return "ok" if r.status in (502, 503) else "status %d" % r.status
        if kind == "bad_json":
            r = self.send("POST", "/chat", raw=b'{"user_id": "soak", "content": ')
            r.read()
            return "ok" if r.status == 400 else "status %d" % r.status
        if kind == "not_found":
            r = self.send("GET", "/no/such/path")
            r.read()
            return "ok" if r.status == 404 else "status %d" % r.status
        if kind == "oversized":
            body = json.dumps({"user_id": user, "content": "x" * (2 * MAX_BODY)}).encode()
            try:
                r = self.send("POST", "/chat", raw=body)
                r.read()
                outcome = "ok" if r.status == 413 else "status %d" % r.status
            except (ConnectionError, http.client.HTTPException):
                outcome = "ok"  # refused on its Content-Length and closed before all of the body was sent
            self.drop()  # the server closes after a refusal
            return outcome
        raise ValueError(kind)

    def run(self):
        while not self.stop.is_set():
            if not self.pace():
                break
            kind = self.random.choice(self.kinds)
            try:
                outcome = self.one(kind)
            except (OSError, http.client.HTTPException, ValueError) as e:
                outcome = "error: %s" % type(e).__name__
                self.drop()
            self.count(kind, outcome)
        self.drop()


def median_of(samples, key, start, end):
    values = [s[key] for s in samples if start <= s["t"] <= end]
    if not values:  # a window shorter than the interval: the first sample in or after it
        values = [s[key] for s in samples if s["t"] >= start][:1]
    return statistics.median(values) if values else None


def shown(settings):
    """The settings as the report shows them: a URL's password masked, as sample_server logs it."""
    return ", ".join("%s=%s" % (name, re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", value)) for name, value in sorted(settings.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", default=str(run.ROOT / "build/bench"), help="build directory with sample_server")
    parser.add_argument("--server", default=None, help="the sample_server binary (default: BUILD/sample_server/sample_server)")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--interval", type=float, default=5, help="seconds between samples")
    parser.add_argument("--rate", type=float, default=300, help="requests a second, all workers together")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--no-upstream", action="store_true", help="echo only: no fake OpenAI upstream, no failing one")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a CHAT_* setting of the server, over the soak's own (repeatable): CHAT_SERVER=httplib, "
                             "CHAT_DATABASE_URL=postgresql://..., CHAT_LIMITS=shared with CHAT_REDIS_URL=redis://...")
    args = parser.parse_args()
    settings = {}
    for item in args.set:
        name, eq, value = item.partition("=")
        if not eq or not name.startswith("CHAT_"):
            parser.error("--set takes CHAT_NAME=VALUE, not %r" % item)
        settings[name] = value

    server_path = Path(args.server) if args.server else Path(args.build) / "sample_server/sample_server"
    out_dir = Path(args.build) if not args.server else server_path.parent
    tmp = tempfile.mkdtemp(prefix="chatkit-soak-")
    run.raise_fd_limit()
    env = {"CHAT_SERVER": "beast", "CHAT_PROVIDER": "echo", "CHAT_PORT": "0", "CHAT_RATE_LIMIT": "off", "CHAT_DRAIN_DELAY": "0",
           "CHAT_DATABASE_URL": "sqlite:%s/soak.db" % tmp, "CHAT_USAGE": "on", "CHAT_ECHO_DELAY_MS": "10",
           "CHAT_MAX_BODY_BYTES": str(MAX_BODY),
           "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "detect_leaks=1")}
    mix, mock = list(MIX), None
    fake = Path(args.build) / "tests/support/fake_openai_server"
    if not args.no_upstream and fake.exists():
        mock, mock_port = run.start_mock(Path(args.build), {"FAKE_OPENAI_THREADS": str(args.workers * 2 + 8)})
        config = {"providers": [{"name": "echo", "type": "echo"},
                                {"name": "fake", "type": "openai", "base_url": "http://127.0.0.1:%d/v1" % mock_port,
                                 "api_key_env": "SOAK_UPSTREAM_KEY"},
                                {"name": "down", "type": "openai", "base_url": "http://127.0.0.1:%d/v1" % run.free_port(),
                                 "api_key_env": "SOAK_UPSTREAM_KEY", "max_retries": 0}],
                  "models": [{"name": "echo", "route": ["echo"]}, {"name": "fake-1", "route": ["fake"]},
                             {"name": "down-1", "route": ["down"]}]}
        Path(tmp, "gateway.json").write_text(json.dumps(config))
        env.pop("CHAT_PROVIDER")
        env.update(CHAT_CONFIG=str(Path(tmp, "gateway.json")), SOAK_UPSTREAM_KEY="sk-soak")
        mix += UPSTREAM_MIX
    elif not args.no_upstream:
        print("note: %s not built: no upstream in the mix" % fake, flush=True)
    env.update(settings)
    server = run.process([str(server_path)], env=env, ready=run.first_json_with("port"))
    port = server.ready
    pid = server.proc.pid
    sanitized = b"__asan_init" in server_path.read_bytes()
    seconds = args.minutes * 60
    print("soak: %s on port %d, %.1f min, %.0f req/s over %d connections%s%s%s" % (
        server_path, port, args.minutes, args.rate, args.workers, ", with upstreams" if mock else "",
        " (AddressSanitizer build)" if sanitized else "",
        ", " + shown(settings) if settings else ""), flush=True)

    stop, lock, counts = threading.Event(), threading.Lock(), {}
    start = time.monotonic()
    ticket = [0]

    def pace():
        with lock:
            n = ticket[0]
            ticket[0] += 1
        due = start + n / args.rate
        while not stop.is_set():
            left = due - time.monotonic()
            if left <= 0:
                return True
            stop.wait(min(left, 0.5))
        return False

    workers = [worker(port, pace, stop, counts, lock, seed, mix) for seed in range(args.workers)]
    for w in workers:
        w.start()
    samples = []
    print("%8s %10s %9s %6s %8s %8s" % ("t (s)", "requests", "RSS MB", "fds", "threads", "req/s"), flush=True)
    last_total, last_t = 0, 0.0
    try:
        while True:
            t = time.monotonic() - start
            if server.proc.poll() is not None:
                print("the server exited (%d):\n%s" % (server.proc.returncode, server.read_log()[-3000:]), flush=True)
                break
            with lock:
                total = sum(sum(v.values()) for v in counts.values())
            sample = {"t": round(t, 1), "requests": total, "rss_kb": run.proc_status(pid, "VmRSS"), "fds": run.proc_fd_count(pid),
                      "threads": run.proc_status(pid, "Threads")}
            samples.append(sample)
            rate = (total - last_total) / max(t - last_t, 1e-9)
            last_total, last_t = total, t
            print("%8.0f %10d %9.1f %6d %8d %8.0f" % (t, total, sample["rss_kb"] / 1024, sample["fds"], sample["threads"], rate),
                  flush=True)
            if t >= seconds:
                break
            time.sleep(max(0.0, min(args.interval, seconds - t)))
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=40)

    # Growth after warm-up: the median of the 10% after it against the median of the last 10%.
    t_end = samples[-1]["t"] if samples else 0
    warm = 0.2 * t_end
    report = {"server": str(server_path), "minutes": args.minutes, "rate": args.rate, "workers": args.workers, "upstream": bool(mock),
              "sanitized": sanitized, "settings": shown(settings), "counts": counts, "samples": samples}
    lines = ["settings changed: %s" % shown(settings)] if settings else []
    for key, label in (("rss_kb", "RSS"), ("fds", "open descriptors")):
        after_warm = median_of(samples, key, warm, warm + 0.1 * t_end)
        final = median_of(samples, key, 0.9 * t_end, t_end)
        peak = max((s[key] for s in samples if s["t"] >= warm), default=None)
        if after_warm and final is not None:
            growth = 100.0 * (final - after_warm) / after_warm
            report[key + "_growth_percent"] = growth
            unit = (lambda v: "%.1f MB" % (v / 1024)) if key == "rss_kb" else (lambda v: "%d" % v)
            lines.append("%s after warm-up (%.0f-%.0f s) %s, at the end %s, peak after warm-up %s: growth %+.2f%% (goal <= 5%%: %s)" % (
                label, warm, warm + 0.1 * t_end, unit(after_warm), unit(final), unit(peak), growth,
                "met" if growth <= 5 else "not met"))
    unexpected = {k: {o: n for o, n in v.items() if o != "ok"} for k, v in counts.items()}
    unexpected = {k: v for k, v in unexpected.items() if v}
    report["unexpected"] = unexpected
    by_kind = ", ".join("%s %d" % (k, sum(counts.get(k, {}).values())) for k, _ in mix)
    lines.append("requests: %d (%s); unexpected outcomes: %s" % (
        sum(sum(v.values()) for v in counts.values()), by_kind, json.dumps(unexpected) if unexpected else "none"))

    server.stop()  # SIGTERM: a sanitized server runs LeakSanitizer as it exits
    if mock:
        mock.stop()
    log = server.read_log()
    found = [at for at in (log.find("ERROR: LeakSanitizer"), log.find("ERROR: AddressSanitizer"), log.find("runtime error:")) if at >= 0]
    report["exit_code"] = server.proc.returncode
    keep_log = bool(found)
    if found:
        at = log.rfind("\n", 0, min(found)) + 1
        report["sanitizer_report"] = log[at:at + 20000]
        lines.append("sanitizer report (exit code %d; the whole log: %s):\n%s" % (server.proc.returncode, server.log, log[at:at + 4000]))
    elif sanitized:
        lines.append("AddressSanitizer, LeakSanitizer and UBSan: no report (exit code %d)" % server.proc.returncode)
    else:
        lines.append("server exit code %d" % server.proc.returncode)

    table = ["| t (s) | requests | RSS MB | open fds | threads |", "|---|---|---|---|---|"]
    step = max(1, len(samples) // 20)  # about 20 rows, and always the last
    for s in samples[::step] + ([samples[-1]] if samples and (len(samples) - 1) % step else []):
        table.append("| %.0f | %d | %.1f | %d | %d |" % (s["t"], s["requests"], s["rss_kb"] / 1024, s["fds"], s["threads"]))
    text = "\n".join(table) + "\n\n" + "\n".join("- " + line for line in lines) + "\n"
    (out_dir / "soak.md").write_text(text)
    (out_dir / "soak.json").write_text(json.dumps(report, indent=2))
    print("\n" + text)
    print("written: %s, %s" % (out_dir / "soak.md", out_dir / "soak.json"))
    run.shutil.rmtree(tmp, ignore_errors=True)
    if not keep_log:
        os.unlink(server.log)
    if mock:
        os.unlink(mock.log)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
