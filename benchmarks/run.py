#!/usr/bin/env python3
"""chatkit's benchmark suite: starts everything on 127.0.0.1, measures side by side, stops it all.

Run through ./scripts/benchmark, which builds the programs in Release first. Writes results.md
and results.json into the build directory and prints the Markdown table. Figures are measured in
the same run against a baseline (the direct path to the mock upstream); nothing here asserts them.
"""
import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class process:
    """A child process whose CPU time and peak RSS we read from /proc."""

    def __init__(self, argv, env=None, ready=None, log=None, stdin=None):
        self.log = log or tempfile.NamedTemporaryFile(prefix="chatkit-bench-", suffix=".log", delete=False).name
        self.proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT, stdin=stdin, preexec_fn=raise_fd_limit)
        if ready:
            deadline = time.time() + 60
            while time.time() < deadline:
                value = ready(self.read_log())
                if value is not None:
                    self.ready = value
                    break
                if self.proc.poll() is not None:
                    raise RuntimeError("%s exited during start-up:\n%s" % (argv[0], self.read_log()))
                time.sleep(0.05)
            else:
                raise RuntimeError("%s did not start:\n%s" % (argv[0], self.read_log()))

    def read_log(self):
        return Path(self.log).read_text(errors="replace")

    def cpu_seconds(self):
        fields = Path("/proc/%d/stat" % self.proc.pid).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self):
        for line in Path("/proc/%d/status" % self.proc.pid).read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for_port(port, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("nothing listens on port %d" % port)


def first_json_with(key):
    def ready(text):
        for line in text.splitlines():
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if key in j and (key != "port" or j.get("msg", "listening") == "listening"):
                return j[key]
        return None
    return ready


def loadgen(build, port, path, body, connections, seconds, headers=(), streams=0, stream_end=""):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(json.dumps(body))
    argv = [str(build / "benchmarks/loadgen"), "--port", str(port), "--path", path, "--body", f.name]
    for h in headers:
        argv += ["--header", h]
    if streams:
        argv += ["--streams", str(streams), "--stream-end", stream_end, "--timeout", str(seconds)]
    else:
        argv += ["-c", str(connections), "-d", str(seconds)]
    out = subprocess.run(argv, capture_output=True, text=True, preexec_fn=raise_fd_limit)
    os.unlink(f.name)
    if out.returncode != 0:
        raise RuntimeError("loadgen failed: " + out.stderr)
    return json.loads(out.stdout)


def measure(build, server, port, path, body, connections, seconds, headers=()):
    """One load run against `server`: throughput, latency, CPU per 1k requests, peak RSS."""
    cpu_before = server.cpu_seconds()
    r = loadgen(build, port, path, body, connections, seconds, headers)
    cpu = server.cpu_seconds() - cpu_before
    r["cpu_s_per_1k"] = 1000 * cpu / max(r["completed"], 1)
    r["peak_rss_mb"] = server.peak_rss_mb()
    return r


def start_mock(build, env=None):
    p = process([str(build / "tests/support/fake_openai_server")], env=env, ready=first_json_with("port"), stdin=subprocess.PIPE)
    return p, p.ready


def start_chatkit(build, env, tmp):
    base = {"CHAT_PORT": "0", "CHAT_RATE_LIMIT": "off", "CHAT_LOG_LEVEL": "info",
            "CHAT_DATABASE_URL": "sqlite:%s/bench-%d.db" % (tmp, time.time_ns())}
    p = process([str(build / "sample_server/sample_server")], env={**base, **env}, ready=first_json_with("port"))
    return p, p.ready


def server_latency_ms(server, path):
    """p50 of the access log's latency_ms for `path`: the time spent inside the server."""
    values = []
    for line in server.read_log().splitlines():
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("msg") == "request" and j.get("path") == path:
            values.append(j["latency_ms"])
    values.sort()
    return values[len(values) // 2] if values else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default=str(ROOT / "build/bench"))
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--streams", default="1000,5000,10000")
    args = parser.parse_args()
    build = Path(args.build)
    tmp = tempfile.mkdtemp(prefix="chatkit-bench-")
    raise_fd_limit()
    results = {"machine": {"cores": os.cpu_count(), "connections": args.connections, "seconds": args.seconds}, "scenarios": []}
    ask = {"model": "fake-1", "messages": [{"role": "user", "content": "What is the capital of France?"}]}

    def record(name, r, **extra):
        r = {**r, **extra, "scenario": name}
        results["scenarios"].append(r)
        print("  %-48s %9.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d" % (name, r.get("rps", 0), r.get("p50_ms", 0), r.get("p99_ms", 0), r.get("errors", 0) + r.get("non_2xx", 0)), flush=True)
        return r

    mock, mock_port = start_mock(build, {"FAKE_OPENAI_THREADS": str(args.connections * 2)})
    try:
        print("1. direct: load generator -> mock upstream", flush=True)
        direct = record("direct (mock upstream)", measure(build, mock, mock_port, "/v1/chat/completions", ask, args.connections, args.seconds))

        print("2-3. through chatkit", flush=True)
        relay_env = {"CHAT_PROVIDER": "openai", "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": "http://127.0.0.1:%d/v1" % mock_port,
                     "CHAT_CACHE_SIZE": "0", "CHAT_THREADS": str(args.connections * 2)}
        chatkit, port = start_chatkit(build, relay_env, tmp)
        try:
            unique = dict(ask, messages=[{"role": "user", "content": "question"}], cache=False)
            through = record("chatkit /v1/chat/completions (store on, cache off)",
                             measure(build, chatkit, port, "/v1/chat/completions", unique, args.connections, args.seconds))
            record("chatkit /chat (store on, cache off)",
                   measure(build, chatkit, port, "/chat", {"content": "question", "cache": False}, args.connections, args.seconds))
        finally:
            chatkit.stop()
        through["added_p50_ms"] = through["p50_ms"] - direct["p50_ms"]
        through["added_p99_ms"] = through["p99_ms"] - direct["p99_ms"]
        through["throughput_vs_direct"] = through["rps"] / direct["rps"]

        cached, port = start_chatkit(build, {**relay_env, "CHAT_CACHE_SIZE": "1024", "CHAT_DATABASE_URL": "none"}, tmp)
        try:
            hit = record("chatkit /chat, every request a cache hit (no store)",
                         measure(build, cached, port, "/chat", {"content": "the same question"}, args.connections, args.seconds))
            hit["server_p50_ms"] = server_latency_ms(cached, "/chat")
        finally:
            cached.stop()

        print("4. peer gateway", flush=True)
        portkey_start = ROOT / "benchmarks/node_modules/@portkey-ai/gateway/build/start-server.js"
        if shutil.which("node") and portkey_start.exists():
            pk_port = free_port()
            # Portkey listens on every interface; the preload pins it to 127.0.0.1.
            portkey = process(["node", "--require", str(ROOT / "benchmarks/loopback_only.cjs"), str(portkey_start),
                               "--headless", "--port=%d" % pk_port])
            wait_for_port(pk_port)
            try:
                pk = record("Portkey gateway 1.15.2 -> mock upstream",
                            measure(build, portkey, pk_port, "/v1/chat/completions", ask, args.connections, args.seconds,
                                    headers=("x-portkey-provider: openai", "x-portkey-custom-host: http://127.0.0.1:%d/v1" % mock_port,
                                             "Authorization: Bearer sk-bench")))
                through["throughput_vs_portkey"] = through["rps"] / max(pk["rps"], 1e-9)
            finally:
                portkey.stop()
        else:
            print("  Portkey gateway not installed (npm ci --prefix benchmarks): skipped", flush=True)
    finally:
        mock.stop()

    print("5. concurrent streams (50 chunks, 100 ms apart)", flush=True)
    words = " ".join("w%d" % i for i in range(49))  # "echo:"-free content: 49 words + the role chunk = 50 chunks
    for n in [int(x) for x in args.streams.split(",") if x]:
        slow, slow_port = start_mock(build, {"FAKE_OPENAI_CHUNK_DELAY_MS": "100", "FAKE_OPENAI_CONTENT": words,
                                             "FAKE_OPENAI_THREADS": str(n + 64)})
        chatkit, port = start_chatkit(build, {"CHAT_PROVIDER": "openai", "OPENAI_API_KEY": "sk-bench",
                                              "OPENAI_BASE_URL": "http://127.0.0.1:%d/v1" % slow_port, "CHAT_CACHE_SIZE": "0",
                                              "CHAT_DATABASE_URL": "none", "CHAT_THREADS": str(n + 64),
                                              "CHAT_UPSTREAM_TIMEOUT": "120", "CHAT_READ_TIMEOUT": "120"}, tmp)
        try:
            stream_body = dict(ask, stream=True)
            r = loadgen(build, port, "/v1/chat/completions", stream_body, 0, 120, streams=n, stream_end="data: [DONE]")
            r["peak_rss_mb"] = chatkit.peak_rss_mb()
            r["rss_kb_per_stream"] = 1024 * r["peak_rss_mb"] / n
            record("%d concurrent streams through chatkit" % n, r, streams=n)
        except Exception as e:  # a size this machine cannot hold is a result, not a crash of the suite
            record("%d concurrent streams through chatkit" % n, {"errors": n, "failure": str(e)}, streams=n)
        finally:
            chatkit.stop()
            slow.stop()

    print("6. store: durable appends", flush=True)
    store = subprocess.run([str(build / "benchmarks/store_bench")], capture_output=True, text=True)
    results["store_table"] = store.stdout

    shutil.rmtree(tmp, ignore_errors=True)
    write_reports(build, results)


def write_reports(build, results):
    rows = ["| scenario | req/s | p50 ms | p90 ms | p99 ms | CPU s / 1k req | peak RSS MB | errors |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results["scenarios"]:
        rows.append("| %s | %s | %.2f | %.2f | %.2f | %s | %.0f | %d |" % (
            r["scenario"], "%.0f" % r["rps"] if "streams" not in r else "%d/%d done" % (r.get("completed", 0), r["streams"]),
            r.get("p50_ms", 0), r.get("p90_ms", 0), r.get("p99_ms", 0),
            "%.3f" % r["cpu_s_per_1k"] if "cpu_s_per_1k" in r else "-", r.get("peak_rss_mb", 0), r.get("errors", 0) + r.get("non_2xx", 0)))
    notes = []
    for r in results["scenarios"]:
        if "added_p50_ms" in r:
            notes.append("- chatkit adds %.3f ms at p50 and %.3f ms at p99 over the direct path, at %.0f%% of its throughput." % (
                r["added_p50_ms"], r["added_p99_ms"], 100 * r["throughput_vs_direct"]))
        if "throughput_vs_portkey" in r:
            notes.append("- chatkit's throughput is %.1fx the Portkey gateway's on the same mock." % r["throughput_vs_portkey"])
        if r.get("server_p50_ms") is not None:
            notes.append("- a cache hit takes %.3f ms inside the server (access-log p50)." % r["server_p50_ms"])
        if "rss_kb_per_stream" in r:
            notes.append("- %d streams: %d completed, %d failed; %.0f KB of RSS per stream." % (
                r["streams"], r.get("completed", 0), r.get("errors", 0), r["rss_kb_per_stream"]))
    text = "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n\n" + results.get("store_table", "")
    (build / "results.md").write_text(text)
    (build / "results.json").write_text(json.dumps(results, indent=2))
    print("\n" + text)
    print("written: %s, %s" % (build / "results.md", build / "results.json"))


if __name__ == "__main__":
    sys.exit(main())
