#!/usr/bin/env python3
"""chatkit's benchmark suite: starts everything on 127.0.0.1, measures side by side, stops it all.

Run through ./scripts/benchmark, which builds the programs in Release first. Writes results.md
and results.json into the build directory and prints the Markdown table. Figures are measured in
the same run against a baseline (the direct path to the mock upstream, nginx as the pure proxy);
nothing here asserts them. The chatkit rows run once per HTTP adapter (--servers), selected with
CHAT_SERVER in sample_server's environment.
"""
import argparse
import errno
import json
import os
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
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


ADAPTERS = ("beast", "httplib")
NGINX = "/usr/sbin/nginx"


def proc_stat_cpu_seconds(pid):
    """utime + stime (fields 14 and 15 of /proc/PID/stat): every thread of the process."""
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid, key):
    """One number from /proc/PID/status (kB for the Vm* keys), 0 when the process is gone."""
    try:
        for line in Path("/proc/%d/status" % pid).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path("/proc/%s/stat" % entry).read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def cpu_seconds_of(pids, children=False):
    """proc_stat_cpu_seconds summed over `pids`. With `children`, each one's children count too:
    those alive now (utime + stime) and those it has waited for (cutime + cstime, fields 16 and
    17), so a child that exits between two readings keeps its CPU time in the difference. A
    PostgreSQL cluster is its postmaster with children: one backend per connection, and the
    checkpointer, WAL writer, autovacuum workers."""
    total = 0.0
    for pid in pids:
        fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if children:
            total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
            for kid in proc_children(pid):
                try:
                    total += proc_stat_cpu_seconds(kid)
                except (OSError, IndexError, ValueError):
                    pass  # gone since: its time is in the parent's cutime once reaped
    return total


def proc_fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return 0


class sampler:
    """Samples the thread count and RSS of some processes every `interval` s, in a thread."""

    def __init__(self, pids, interval=0.2):
        self.pids, self.interval = pids, interval
        self.max_threads = self.max_rss_kb = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self):
        pids = self.pids()
        self.max_threads = max(self.max_threads, sum(proc_status(p, "Threads") for p in pids))
        self.max_rss_kb = max(self.max_rss_kb, sum(proc_status(p, "VmRSS") for p in pids))
        self.samples += 1

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class process:
    """A child process whose CPU time, threads and peak RSS we read from /proc."""

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

    def pids(self):
        return [self.proc.pid]

    def cpu_seconds(self):
        return proc_stat_cpu_seconds(self.proc.pid)

    def peak_rss_mb(self):
        return sum(proc_status(p, "VmHWM") for p in self.pids()) / 1024

    def rss_mb(self):
        return sum(proc_status(p, "VmRSS") for p in self.pids()) / 1024

    def threads(self):
        return sum(proc_status(p, "Threads") for p in self.pids())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class nginx_proxy(process):
    """nginx in the foreground with its own config in a temporary directory, relaying to the mock.

    One worker; its CPU time is what a request costs (the master only supervises). RSS counts the
    master and the worker. `upstream_port` is one port, or a list of ports: the servers of the
    upstream block, taken in turn (round robin), each over kept-alive connections."""

    def __init__(self, upstream_port, connections, buffering=True):
        ports = upstream_port if isinstance(upstream_port, (list, tuple)) else [upstream_port]
        servers = "\n".join("        server 127.0.0.1:%d;" % p for p in ports)
        self.dir = tempfile.mkdtemp(prefix="chatkit-bench-nginx-")
        os.chmod(self.dir, 0o755)  # the worker runs as nobody when we are root
        self.port = free_port()
        files = connections + 1024
        if os.geteuid() != 0:
            files = min(files, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        d = self.dir
        conf = f"""daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {files};
pid {d}/nginx.pid;
lock_file {d}/nginx.lock;
error_log {d}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream mock {{
{servers}
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 4s;  # below the mock's 5 s, so nginx never reuses a connection it closed
    }}
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering {"on" if buffering else "off"};
            proxy_read_timeout 120s;
        }}
    }}
}}
"""
        Path(d, "nginx.conf").write_text(conf)
        super().__init__([NGINX, "-p", d + "/", "-c", d + "/nginx.conf", "-e", d + "/error.log"], log=d + "/stdout.log")
        deadline = time.time() + 20
        self.worker = None
        while self.worker is None and time.time() < deadline and self.proc.poll() is None:
            for kid in proc_children(self.proc.pid):
                try:
                    if Path("/proc/%d/cmdline" % kid).read_bytes().startswith(b"nginx: worker"):
                        self.worker = kid
                except OSError:
                    pass
            time.sleep(0.05)
        try:
            if self.worker is None:
                raise RuntimeError("nginx started no worker")
            wait_for_port(self.port, 20)
        except RuntimeError as e:
            why = "%s:\n%s%s" % (e, self.read_log(), Path(d, "error.log").read_text(errors="replace"))
            self.stop()
            raise RuntimeError(why)

    def pids(self):
        return [self.proc.pid, self.worker]

    def cpu_seconds(self):
        return proc_stat_cpu_seconds(self.worker)

    def stop(self):
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def nginx_version():
    if not os.access(NGINX, os.X_OK):
        return None
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True)
    return (out.stderr.strip().split("/", 1) + ["?"])[1] if out.returncode == 0 else None


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


def loadgen(build, port, path, body, connections, seconds, headers=(), streams=0, stream_end="", requests=0):
    """Runs the load generator; body None sends GETs; requests > 0 stops after that many answers."""
    argv = [str(build / "benchmarks/loadgen"), "--port", str(port), "--path", path]
    body_file = None
    if body is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            f.write(json.dumps(body))
        body_file = f.name
        argv += ["--body", body_file]
    for h in headers:
        argv += ["--header", h]
    if streams:
        argv += ["--streams", str(streams), "--stream-end", stream_end, "--timeout", str(seconds)]
    else:
        argv += ["-c", str(connections), "-d", str(seconds)]
        if requests:
            argv += ["-n", str(requests)]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, preexec_fn=raise_fd_limit, timeout=seconds + 60)
    finally:
        if body_file:
            os.unlink(body_file)
    if out.returncode != 0:
        raise RuntimeError("loadgen failed: " + out.stderr)
    return json.loads(out.stdout)


def measure(build, server, port, path, body, connections, seconds, headers=()):
    """One load run against `server`: throughput, latency, CPU per 1k requests, peak RSS."""
    cpu_before = server.cpu_seconds()
    r = loadgen(build, port, path, body, connections, seconds, headers)
    cpu = server.cpu_seconds() - cpu_before
    r["cpu_s_per_1k"] = 1000 * cpu / max(r["completed"], 1)
    r["cpu_us_per_req"] = 1e6 * cpu / max(r["completed"], 1)
    r["peak_rss_mb"] = server.peak_rss_mb()
    return r


def measure_split(build, parts, port, path, body, connections, seconds, headers=()):
    """measure() for a system of several processes: `parts` maps a name to a function that returns
    that part's CPU seconds so far (cpu_seconds_of its pids). cpu_us_per_req is the sum of the
    parts, cpu_us_per_req_by each part's."""
    before = {name: cpu() for name, cpu in parts.items()}
    r = loadgen(build, port, path, body, connections, seconds, headers)
    n = max(r["completed"], 1)
    r["cpu_us_per_req_by"] = {name: 1e6 * (cpu() - before[name]) / n for name, cpu in parts.items()}
    r["cpu_us_per_req"] = sum(r["cpu_us_per_req_by"].values())
    r["cpu_s_per_1k"] = r["cpu_us_per_req"] / 1000
    return r


def start_trace_collector():
    """An OTLP/HTTP receiver that accepts every export and counts its bytes: the tracing rows'
    collector. Exports come in batches (512 spans, or every 5 s), so Python keeps up."""
    import http.server

    received = {"exports": 0, "bytes": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            self.rfile.read(n)
            received["exports"] += 1
            received["bytes"] += n
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


def start_mock(build, env=None):
    p = process([str(build / "tests/support/fake_openai_server")], env=env, ready=first_json_with("port"), stdin=subprocess.PIPE)
    return p, p.ready


def adapter_env(adapter, connections):
    """sample_server's environment for one HTTP adapter. cpp-httplib gives each connection a worker
    for the connection's whole life, so its pool must cover every connection the scenario opens; an
    event-loop adapter needs no such sizing and runs on its own defaults."""
    env = {"CHAT_SERVER": adapter}
    if adapter == "httplib" and connections:
        env["CHAT_THREADS"] = str(connections)
    return env


def reported_adapter(server):
    """The HTTP adapter named in sample_server's "listening" line, or None when it names none."""
    for line in server.read_log().splitlines():
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("msg") == "listening":
            for key in ("server", "adapter", "http_server", "http"):
                if isinstance(j.get(key), str):
                    return j[key]
            return None
    return None


def start_chatkit(build, env, tmp, adapter=None, connections=0):
    """sample_server on a free port; with `adapter`, CHAT_SERVER and the adapter's sizing are set."""
    base = {"CHAT_PORT": "0", "CHAT_RATE_LIMIT": "off", "CHAT_DRAIN_DELAY": "0", "CHAT_LOG_LEVEL": "info",
            "CHAT_DATABASE_URL": "sqlite:%s/bench-%d.db" % (tmp, time.time_ns())}
    if adapter:
        base.update(adapter_env(adapter, connections))
    p = process([str(build / "sample_server/sample_server")], env={**base, **env}, ready=first_json_with("port"))
    return p, p.ready


def create_bench_key(build, db, tmp):
    """A team and a key whose limits never refuse, made in the database `db` (a CHAT_DATABASE_URL)
    with sample_server's `teams create` and `keys create`, and a price for the mock's model (a
    budgeted key may use priced models only). Returns (key, gateway environment)."""
    prices = Path(tmp) / "prices.json"
    prices.write_text(json.dumps({"models": {"fake-1": {"input": 0.15, "output": 0.6}}}))
    cli_env = {**os.environ, "CHAT_DATABASE_URL": db}
    exe = str(build / "sample_server/sample_server")
    limits = ["--rpm", "1000000000", "--tpm", "1000000000", "--budget-usd", "1000000", "--budget-period", "day"]
    for argv in ([exe, "teams", "create", "--id", "bench", *limits], [exe, "keys", "create", "--team", "bench", *limits]):
        made = subprocess.run(argv, env=cli_env, capture_output=True)
        if made.returncode != 0:
            raise RuntimeError("%s failed (%d): %s%s" % (" ".join(argv[1:3]), made.returncode, made.stdout.decode(errors="replace"),
                                                        made.stderr.decode(errors="replace")))
    key = json.loads(made.stdout.decode().strip().splitlines()[-1])["key"]
    return key, {"CHAT_DATABASE_URL": db, "CHAT_AUTH": "keys", "CHAT_USAGE": "on", "CHAT_PRICING_FILE": str(prices)}


def start_gateway(build, relay_env, tmp, adapter, connections, db=None):
    """sample_server with CHAT_AUTH=keys, a team and a key whose limits never refuse, and a price
    for the mock's model, on the SQLite file `db` (default: a new one in `tmp`). Returns (server,
    port, key)."""
    db = db or "sqlite:%s/gateway-%d.db" % (tmp, time.time_ns())
    key, gateway_env = create_bench_key(build, db, tmp)
    server, port = start_chatkit(build, {**relay_env, **gateway_env}, tmp, adapter=adapter, connections=connections)
    return server, port, key


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


STALLED_REQUEST = b"GET /health HTTP/1.1\r\nHost: x\r\n"  # half a request header, never finished


def open_stalled(port, n, seconds=20):
    """n connections that each send half a request header and then nothing, opened within `seconds`.
    Returns (the connected sockets, how many failed to connect)."""
    ep = select.epoll()
    pending, connected, failed = {}, [], 0
    deadline = time.time() + seconds

    def settle(timeout):
        nonlocal failed
        for fd, _ in ep.poll(timeout, maxevents=max(len(pending), 1)):
            sock = pending.pop(fd)
            ep.unregister(fd)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                try:
                    sock.send(STALLED_REQUEST)
                    connected.append(sock)
                    continue
                except OSError:
                    pass
            sock.close()
            failed += 1

    for i in range(n):
        if time.time() > deadline:
            failed += n - i
            break
        sock = socket.socket()
        sock.setblocking(False)
        if sock.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
            sock.close()
            failed += 1
            continue
        pending[sock.fileno()] = sock
        ep.register(sock.fileno(), select.EPOLLOUT)
        if len(pending) >= 512:  # keep the server's accept queue short
            settle(0.01)
    while pending and time.time() < deadline:
        settle(0.1)
    failed += len(pending)
    for sock in pending.values():
        sock.close()
    ep.close()
    return connected, failed


def stalled_dropped(socks):
    """How many of the stalled connections the server has answered or closed by now."""
    if not socks:
        return 0
    ep = select.epoll()
    for sock in socks:
        ep.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
    dropped = len(ep.poll(0, maxevents=len(socks)))
    ep.close()
    return dropped


def close_now(socks):
    for sock in socks:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST: no TIME_WAIT
        except OSError:
            pass
        sock.close()


def stalled_scenario(build, adapter, n, tmp, record, health_requests=2000, health_seconds=5):
    """/health latency on fresh kept-alive connections, first alone, then with n connections open
    that each sent half a request header. The server runs on the adapter's defaults (cpp-httplib:
    64 workers, 10 s read timeout): a stall is what a slow or hostile client does, and the rows
    show what the defaults make of it. One sequential client, at most `health_requests` requests
    or `health_seconds` each, so the scenario ends by itself."""
    server, port = start_chatkit(build, {"CHAT_PROVIDER": "echo", "CHAT_DATABASE_URL": "none", "CHAT_CACHE_SIZE": "0"},
                                 tmp, adapter=adapter)
    socks = []
    label = "chatkit[%s] /health" % adapter
    try:
        base = loadgen(build, port, "/health", None, 1, health_seconds, requests=health_requests)
        record(label + ", no stalled connections (baseline)",
               {**base, "timed_out": base["unanswered"], "threads": server.threads(), "rss_mb": server.rss_mb(),
                "peak_rss_mb": server.peak_rss_mb()}, adapter=adapter, health=True)
        fds_before = proc_fd_count(server.proc.pid)
        socks, failed = open_stalled(port, n)
        # Wait (at most 10 s) until the server has accepted them: one descriptor each.
        deadline, last, last_change = time.time() + 10, -1, time.time()
        while time.time() < deadline:
            accepted = proc_fd_count(server.proc.pid) - fds_before
            if accepted >= len(socks) or time.time() - last_change > 1:
                break
            if accepted != last:
                last, last_change = accepted, time.time()
            time.sleep(0.1)
        accepted = max(0, min(len(socks), proc_fd_count(server.proc.pid) - fds_before))
        with sampler(server.pids, interval=0.1) as sample:
            r = loadgen(build, port, "/health", None, 1, health_seconds, requests=health_requests)
        dropped = stalled_dropped(socks)
        r.update(timed_out=r["unanswered"], threads=sample.max_threads, rss_mb=sample.max_rss_kb / 1024,
                 peak_rss_mb=server.peak_rss_mb(), stalled=n, stalled_connected=len(socks), stalled_failed=failed,
                 stalled_accepted=accepted, stalled_dropped_by_server=dropped, stalled_still_open=len(socks) - dropped,
                 baseline_p50_ms=base["p50_ms"], baseline_p99_ms=base["p99_ms"])
        record(label + ", %d stalled connections open" % n, r, adapter=adapter, health=True)
    except Exception as e:  # a size this machine cannot hold is a result, not a crash of the suite
        record(label + ", %d stalled connections open" % n, {"errors": 1, "failure": str(e), "stalled": n}, adapter=adapter, health=True)
    finally:
        close_now(socks)
        server.stop()


def stream_run(build, server, port, n, **extra):
    """n concurrent SSE streams through `server`, sampling its threads and RSS while they are open."""
    # A pool started with the server may still be spawning its threads: wait (at most 3 s) until
    # the count holds still, so "idle" is the server at rest.
    deadline, idle_threads = time.time() + 3, server.threads()
    while time.time() < deadline:
        time.sleep(0.3)
        now = server.threads()
        if now == idle_threads:
            break
        idle_threads = now
    idle_rss = server.rss_mb()
    with sampler(server.pids) as sample:
        r = loadgen(build, port, "/v1/chat/completions", STREAM_BODY, 0, 120, streams=n, stream_end="data: [DONE]")
    r["peak_rss_mb"] = server.peak_rss_mb()
    r["rss_kb_per_stream"] = 1024 * r["peak_rss_mb"] / n
    r["rss_kb_per_stream_over_idle"] = 1024 * max(r["peak_rss_mb"] - idle_rss, 0) / n
    r.update(threads=sample.max_threads, threads_idle=idle_threads, streams=n, **extra)
    return r


ASK = {"model": "fake-1", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
STREAM_BODY = dict(ASK, stream=True)
STREAM_WORDS = " ".join("w%d" % i for i in range(49))  # "echo:"-free content: 49 words + the role chunk = 50 chunks


def start_slow_mock(build, n):
    """The streams' upstream: slow_stream_server (one event loop) when built; otherwise
    fake_openai_server, whose thread per connection needs a pool covering all n streams."""
    env = {"FAKE_OPENAI_CHUNK_DELAY_MS": "100", "FAKE_OPENAI_CONTENT": STREAM_WORDS}
    program = build / "tests/support/slow_stream_server"
    if not program.exists():
        return start_mock(build, {**env, "FAKE_OPENAI_THREADS": str(n + 64)})
    p = process([str(program)], env=env, ready=first_json_with("port"), stdin=subprocess.PIPE)
    return p, p.ready


def postgres_bindir():
    """PostgreSQL's server programs, which Debian keeps off PATH: /usr/lib/postgresql/<major>/bin,
    the newest, or CHATKIT_PG_BINDIR (as tests/support/postgres_server.hpp finds them). None when
    initdb or pg_ctl is missing."""
    if os.environ.get("CHATKIT_PG_BINDIR"):
        candidates = [Path(os.environ["CHATKIT_PG_BINDIR"])]
    else:
        candidates = sorted((b for b in Path("/usr/lib/postgresql").glob("*/bin") if b.parent.name.isdigit()),
                            key=lambda b: int(b.parent.name), reverse=True)
    for b in candidates:
        if os.access(b / "initdb", os.X_OK) and os.access(b / "pg_ctl", os.X_OK):
            return b
    return None


class postgres_cluster:
    """A throw-away PostgreSQL cluster, as the tests' (tests/support/postgres_server.hpp): initdb into
    a temporary directory, the server on 127.0.0.1 and a free port with its Unix socket in that
    directory, started and stopped with pg_ctl. TCP connections are trusted (no password). fsync
    stays on: the fleet's commits are as durable as the SQLite row's. PostgreSQL refuses to run as
    root: as root, its programs run as `nobody` (setgroups, setgid, setuid, as the tests do).
    stop() stops it and removes the directory."""

    def __init__(self, bindir):
        self.bindir = Path(bindir)
        self.dir = tempfile.mkdtemp(prefix="chatkit-bench-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.pid = None
        self.as_user = {}
        try:
            if os.geteuid() == 0:
                import pwd
                try:
                    pw = pwd.getpwnam("nobody")
                except KeyError:
                    raise RuntimeError("running as root, and there is no user 'nobody' to run PostgreSQL as")
                os.chown(self.dir, pw.pw_uid, pw.pw_gid)
                self.as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            self.run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
            self.run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "postgres.log"), "-w", "-t", "60", "-o",
                     "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200" % (self.port, self.dir), "start")
            self.pid = int(Path(self.data, "postmaster.pid").read_text().split()[0])
        except BaseException:
            self.stop()
            raise

    def run(self, program, *args):
        """One of the cluster's programs, as its owner, in its directory; raises with its output on failure."""
        with tempfile.TemporaryFile("w+") as out:
            done = subprocess.run([str(self.bindir / program), *args], cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=120, **self.as_user)
            out.seek(0)
            text = out.read()
        if done.returncode != 0:
            log = Path(self.dir, "postgres.log")
            raise RuntimeError("%s failed (%d): %s%s" % (program, done.returncode, text[-2000:],
                                                         log.read_text(errors="replace")[-2000:] if log.exists() else ""))
        return text

    def create_database(self, name):
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return "postgresql://postgres@127.0.0.1:%d/%s" % (self.port, name)

    def version(self):
        return self.run("postgres", "--version").strip().split(" ", 2)[-1]

    def cpu_seconds(self):
        """The postmaster and every process it has forked: backends, checkpointer, WAL writer, ..."""
        return cpu_seconds_of([self.pid], children=True)

    def stop(self):
        pid_file = os.path.join(self.data, "postmaster.pid")
        if os.path.exists(pid_file):
            pid = self.pid or int(Path(pid_file).read_text().split()[0])
            try:
                self.run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")
            except Exception as e:
                print("  note: pg_ctl stop failed, killing the postmaster: %s" % str(e).strip()[:300], flush=True)
                try:
                    os.kill(pid, signal.SIGQUIT)  # immediate shutdown: the postmaster takes its children with it
                except ProcessLookupError:
                    pass
            # pg_ctl daemonized it: init reaps it, a moment after it exits.
            deadline = time.time() + 20
            while os.path.exists("/proc/%d" % pid) and time.time() < deadline:
                time.sleep(0.05)
        self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)


def start_redis():
    """A throw-away redis-server on 127.0.0.1 and a free port, keeping nothing on disk."""
    port = free_port()
    p = process(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, 20)
    except RuntimeError as e:
        p.stop()
        raise RuntimeError("%s:\n%s" % (e, p.read_log()))
    return p, port


def redis_command(port, *args):
    """One command to the Redis on 127.0.0.1:`port` through redis-cli (redis-server's own client), its reply as text."""
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=True, timeout=10).stdout


def redis_calls(port):
    """Calls by command since the last CONFIG RESETSTAT ({"evalsha": n, ...}), from INFO commandstats."""
    calls = {}
    for line in redis_command(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line[len("cmdstat_"):].partition(":")
            calls[name] = int(dict(kv.split("=") for kv in stats.split(","))["calls"])
    return calls


def log_problems(server):
    """The distinct messages of a sample_server's warning and error log lines."""
    seen = []
    for line in server.read_log().splitlines():
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("level") not in ("warning", "warn", "error", "critical"):
            continue
        # An access-log line is an error for a 5xx: name the request, not just "request".
        what = j.get("msg") if j.get("msg") != "request" else "request %s %s %s: %s" % (
            j.get("status"), j.get("method"), j.get("path"), j.get("error", j.get("code", "")))
        if what not in seen:
            seen.append(what)
    return seen


def requests_served(server, path):
    """How many requests for `path` the server's access log shows."""
    n = 0
    for line in server.read_log().splitlines():
        if "request" in line:
            try:
                j = json.loads(line)
            except ValueError:
                continue
            n += j.get("msg") == "request" and j.get("path") == path
    return n


def fleet_scenario(build, adapter, args, tmp, record, results, nginx_ver):
    """Two sample_server replicas behind nginx (round robin, kept-alive upstream connections), their
    key limits counted in Redis (CHAT_LIMITS=shared) and their history, keys and usage records in
    PostgreSQL, against one sample_server on SQLite; both as a gateway (a ck- key whose limits never
    refuse, every answer priced and recorded), relaying to the mock, on the same machine in the same
    run. CPU per request is split by process: replicas, nginx (master and worker), redis-server, and
    PostgreSQL (the postmaster and every process it forks)."""
    bindir = postgres_bindir()
    missing = [name for name, found in (("redis-server", shutil.which("redis-server")),
                                        ("PostgreSQL (initdb, pg_ctl)", bindir), ("nginx", nginx_ver)) if not found]
    if missing:
        print("  %s not installed: skipped" % ", ".join(missing), flush=True)
        results["fleet"] = {"skipped": "not installed: " + ", ".join(missing)}
        return
    path = "/v1/chat/completions"
    body = dict(ASK, messages=[{"role": "user", "content": "question"}], cache=False)
    entry = results["fleet"] = {"replicas": 2, "adapter": adapter}
    one_name = "one chatkit[%s] on SQLite (gateway: auth, key limits, usage records)" % adapter
    fleet_name = "fleet: nginx -> 2 x chatkit[%s], Redis limits, PostgreSQL store (gateway)" % adapter
    mock = redis = pg = proxy = None
    replicas = []
    try:
        # Two replicas each keep their own upstream connections: the mock serves one per thread.
        mock, mock_port = start_mock(build, {"FAKE_OPENAI_THREADS": str(args.connections * 4)})
        relay_env = {"CHAT_PROVIDER": "openai", "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": "http://127.0.0.1:%d/v1" % mock_port,
                     "CHAT_CACHE_SIZE": "0"}
        redis, redis_port = start_redis()
        pg = postgres_cluster(bindir)
        entry["versions"] = {"redis": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2].removeprefix("v="),
                             "postgresql": pg.version(), "nginx": nginx_ver}

        # One process on SQLite: the gateway row of section 2-3, on its own file.
        one, port, key = start_gateway(build, relay_env, tmp, adapter, args.connections * 2, db="sqlite:%s/one.db" % tmp)
        try:
            base = record(one_name, measure_split(build, {"sample_server": lambda: cpu_seconds_of(one.pids())}, port, path, body,
                                                  args.connections, args.seconds, headers=("Authorization: Bearer " + key,)),
                          adapter=adapter, peak_rss_mb=one.peak_rss_mb(), log_problems=log_problems(one))
        finally:
            one.stop()
        entry["one"] = base

        # The fleet: the team and key made once in PostgreSQL, then the replicas, then nginx.
        key, gateway_env = create_bench_key(build, pg.create_database("chatkit_bench"), tmp)
        fleet_env = {**relay_env, **gateway_env, "CHAT_REDIS_URL": "redis://127.0.0.1:%d/0" % redis_port, "CHAT_LIMITS": "shared"}
        for _ in range(2):
            replicas.append(start_chatkit(build, fleet_env, tmp, adapter=adapter, connections=args.connections * 2)[0])
        proxy = nginx_proxy([r.ready for r in replicas], connections=4 * args.connections + 256)
        parts = {"replicas": lambda: cpu_seconds_of([r.proc.pid for r in replicas]),
                 "nginx": lambda: cpu_seconds_of(proxy.pids()),
                 "redis": lambda: cpu_seconds_of(redis.pids()),
                 "postgres": pg.cpu_seconds}
        redis_command(redis_port, "CONFIG", "RESETSTAT")
        r = measure_split(build, parts, proxy.port, path, body, args.connections, args.seconds,
                          headers=("Authorization: Bearer " + key,))
        # Round trips to Redis per request: a take before each answer, and the settlements after
        # the last byte, merged and written in batches (coalescing_counter_store).
        time.sleep(0.2)  # the last batch of settlements
        calls = redis_calls(redis_port)
        # (INFO counts the commands a script runs too: its GETs and INCRBYs are not round trips.)
        r["redis_round_trips_per_req"] = sum(n for c, n in calls.items() if c in ("evalsha", "eval", "script|load")) / max(r["completed"], 1)
        r["redis_calls"] = calls
        fleet = record(fleet_name, r, adapter=adapter, peak_rss_mb=sum(x.peak_rss_mb() for x in replicas),
                       requests_by_replica=[requests_served(x, path) for x in replicas],
                       log_problems=[m for x in replicas for m in log_problems(x)])
        entry["fleet"] = fleet
        entry["cpu_vs_one"] = fleet["cpu_us_per_req"] / max(base["cpu_us_per_req"], 1e-9)
        entry["throughput_vs_one"] = fleet["rps"] / max(base["rps"], 1e-9)
        print("  CPU us/req by process: one process %s; fleet %s; requests per replica %s" % (
            ", ".join("%s %.1f" % kv for kv in base["cpu_us_per_req_by"].items()),
            ", ".join("%s %.1f" % kv for kv in fleet["cpu_us_per_req_by"].items()),
            "/".join(str(n) for n in fleet["requests_by_replica"])), flush=True)
        print("  Redis round trips per request: %.3f (%d requests; calls, those inside scripts included: %s)" % (
            r["redis_round_trips_per_req"], r["completed"],
            ", ".join("%s %d" % kv for kv in sorted(r["redis_calls"].items()) if kv[0] != "info")), flush=True)

        # Durable appends on the same cluster (fsync on), next to SQLite's 64 writers in the same run.
        pg_bench = build / "benchmarks/postgres_store_bench"
        if pg_bench.exists():
            for x in replicas:  # nothing else writing
                x.stop()
            replicas.clear()
            done = subprocess.run([str(pg_bench), pg.create_database("chatkit_appends")], capture_output=True, text=True, timeout=300)
            entry["postgres_store_table"] = done.stdout + done.stderr
            print(done.stdout + done.stderr, flush=True)
        else:
            print("  %s not built: PostgreSQL appends skipped" % pg_bench, flush=True)
    except Exception as e:  # a part this machine cannot run is a result, not a crash of the suite
        record(fleet_name if "one" in entry else one_name, {"errors": 1, "failure": str(e)}, adapter=adapter)
        entry["failure"] = str(e)
    finally:
        if proxy:
            proxy.stop()
        for x in replicas:
            x.stop()
        if pg:
            pg.stop()
        if redis:
            redis.stop()
        if mock:
            mock.stop()


# The sections of the suite, by number; --only takes either.
SECTIONS = {"1": "direct", "2": "chatkit", "3": "chatkit", "4": "peers", "5": "streams", "6": "stalled", "7": "store", "8": "fleet"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default=str(ROOT / "build/bench"))
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--streams", default="1000,5000,10000")
    parser.add_argument("--nginx-streams", default=None,
                        help="stream counts to run through nginx too (default: the smallest of --streams)")
    parser.add_argument("--stalled", type=int, default=10000, help="stalled connections in the /health scenario (0: skip it)")
    parser.add_argument("--servers", default=",".join(ADAPTERS),
                        help="sample_server HTTP adapters to measure, each selected with CHAT_SERVER")
    parser.add_argument("--only", default=None, metavar="SECTIONS",
                        help="run only these sections, by name or number (%s; default: all)" % ", ".join(
                            "%s=%s" % (n, name) for n, name in SECTIONS.items()))
    args = parser.parse_args()
    only = None
    if args.only is not None:
        only = set()
        for word in (x.strip() for x in args.only.split(",") if x.strip()):
            if word not in SECTIONS and word not in SECTIONS.values():
                parser.error("unknown section %r in --only (known: %s)" % (word, ", ".join(dict.fromkeys(SECTIONS.values()))))
            only.add(SECTIONS.get(word, word))
        if "chatkit" in only:
            only.add("direct")  # the chatkit rows' added latency is measured against it

    def want(section):
        return only is None or section in only
    servers = [x for x in args.servers.split(",") if x]
    for name in servers:
        if name not in ADAPTERS:
            parser.error("unknown adapter %r in --servers (known: %s)" % (name, ", ".join(ADAPTERS)))
    stream_counts = [int(x) for x in args.streams.split(",") if x]
    nginx_streams = ([int(x) for x in args.nginx_streams.split(",") if x] if args.nginx_streams is not None
                     else stream_counts[:1] and [min(stream_counts)])
    build = Path(args.build)
    tmp = tempfile.mkdtemp(prefix="chatkit-bench-")
    raise_fd_limit()
    nginx_ver = nginx_version()
    results = {"machine": {"cores": os.cpu_count(), "connections": args.connections, "seconds": args.seconds,
                           "servers": servers}, "nginx_version": nginx_ver, "scenarios": []}
    if not nginx_ver:
        print("note: nginx not found at %s (apt-get install nginx-light): its rows are skipped" % NGINX, flush=True)
    ask = ASK

    def record(name, r, **extra):
        r = {**r, **extra, "scenario": name}
        results["scenarios"].append(r)
        errors = r.get("errors", 0) + r.get("non_2xx", 0) + r.get("timed_out", 0)
        if r.get("completed", 0):
            line = "  %-64s %9.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d" % (
                name, r.get("rps", 0), r.get("p50_ms", 0), r.get("p99_ms", 0), errors)
        else:
            line = "  %-64s no answer                                       errors %d" % (name, errors)
        if "cpu_us_per_req" in r:
            line += "  CPU %.1f us/req" % r["cpu_us_per_req"]
        if "threads" in r:
            line += "  threads %d" % r["threads"]
        if r.get("failure"):
            line += "  FAILED: " + r["failure"][:200]
        print(line, flush=True)
        return r

    def check_adapter(server, adapter):
        named = reported_adapter(server)
        if named != adapter and adapter not in results.setdefault("adapter_notes", {}):
            results["adapter_notes"][adapter] = named
            print("  note: sample_server started with CHAT_SERVER=%s reports %s" % (
                adapter, "adapter %r" % named if named else "no adapter in its 'listening' line (it may ignore CHAT_SERVER)"), flush=True)

    mock, mock_port = (start_mock(build, {"FAKE_OPENAI_THREADS": str(args.connections * 2)})
                       if want("direct") or want("chatkit") or want("peers") else (None, 0))
    throughs = {}
    try:
        if want("direct"):
            print("1. direct: load generator -> mock upstream", flush=True)
            direct = record("direct (mock upstream)", measure(build, mock, mock_port, "/v1/chat/completions", ask, args.connections, args.seconds))

        relay_env = {"CHAT_PROVIDER": "openai", "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": "http://127.0.0.1:%d/v1" % mock_port,
                     "CHAT_CACHE_SIZE": "0"}
        for adapter in (servers if want("chatkit") else ()):
            print("2-3. through chatkit [%s]" % adapter, flush=True)
            unique = dict(ask, messages=[{"role": "user", "content": "question"}], cache=False)
            # The pure relay (the issue's ≤ 20 µs row): no store, no cache.
            bare, port = start_chatkit(build, {**relay_env, "CHAT_DATABASE_URL": "none"}, tmp, adapter=adapter,
                                       connections=args.connections * 2)
            check_adapter(bare, adapter)
            try:
                through = record("chatkit[%s] /v1/chat/completions (store off, cache off)" % adapter,
                                 measure(build, bare, port, "/v1/chat/completions", unique, args.connections, args.seconds),
                                 adapter=adapter)
            finally:
                bare.stop()
            # What counting every request for GET /metrics costs, and what tracing every request
            # (OTLP/protobuf to a collector that accepts everything) costs: the relay with both
            # off, with metrics on, and with tracing on, alternated three times with fresh servers,
            # medians compared. One run of each is not enough here: consecutive rows of the same
            # server differ by more than these costs (measured on 2026-12-03: 74, 64, 65 µs with
            # metrics off against 53, 65, 64 µs on).
            collector, collected = start_trace_collector()
            modes = {"off": {"CHAT_METRICS": "off"},
                     "metrics": {"CHAT_METRICS": "on"},
                     "tracing": {"CHAT_METRICS": "off",
                                 "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:%d" % collector.server_address[1]}}
            samples = {mode: [] for mode in modes}
            try:
                for _ in range(3):
                    for mode, extra in modes.items():
                        s, port = start_chatkit(build, {**relay_env, "CHAT_DATABASE_URL": "none", **extra}, tmp,
                                                adapter=adapter, connections=args.connections * 2)
                        try:
                            samples[mode].append(measure(build, s, port, "/v1/chat/completions", unique, args.connections,
                                                         max(2, args.seconds // 2)))
                        finally:
                            s.stop()
            finally:
                collector.shutdown()
            median = lambda rows: sorted(r["cpu_us_per_req"] for r in rows)[1]
            plain = record("chatkit[%s] /v1/chat/completions (store off, cache off, metrics off; median of 3)" % adapter,
                           sorted(samples["off"], key=lambda r: r["cpu_us_per_req"])[1], adapter=adapter)
            traced = record("chatkit[%s] /v1/chat/completions (store off, cache off, tracing on; median of 3)" % adapter,
                            sorted(samples["tracing"], key=lambda r: r["cpu_us_per_req"])[1], adapter=adapter)
            through["metrics_cpu_us"] = median(samples["metrics"]) - median(samples["off"])
            through["metered_cpu_us_per_req"] = median(samples["metrics"])
            through["unmetered_cpu_us_per_req"] = plain["cpu_us_per_req"]
            through["tracing_cpu_us"] = traced["cpu_us_per_req"] - plain["cpu_us_per_req"]
            through["traced_cpu_us_per_req"] = traced["cpu_us_per_req"]
            through["trace_exports"] = collected["exports"]
            through["trace_bytes"] = collected["bytes"]
            chatkit, port = start_chatkit(build, {**relay_env, "CHAT_USAGE": "off"}, tmp, adapter=adapter,
                                          connections=args.connections * 2)
            try:
                stored = record("chatkit[%s] /v1/chat/completions (store on, cache off)" % adapter,
                                measure(build, chatkit, port, "/v1/chat/completions", unique, args.connections, args.seconds),
                                adapter=adapter)
                record("chatkit[%s] /chat (store on, cache off)" % adapter,
                       measure(build, chatkit, port, "/chat", {"content": "question", "cache": False}, args.connections, args.seconds),
                       adapter=adapter)
            finally:
                chatkit.stop()
            # The same, as a gateway: every request with a ck- key (CHAT_AUTH=keys), through the key's
            # requests-per-minute, tokens-per-minute and budget (set high enough never to refuse),
            # priced, and recorded as a usage record. Against the row above, from the same run.
            gateway, port, key = start_gateway(build, relay_env, tmp, adapter, args.connections * 2)
            try:
                gw = record("chatkit[%s] /v1/chat/completions (gateway: auth, key limits, usage records; store on)" % adapter,
                            measure(build, gateway, port, "/v1/chat/completions", unique, args.connections, args.seconds,
                                    headers=("Authorization: Bearer " + key,)),
                            adapter=adapter)
                gw["gateway_cpu_us_over_store"] = gw["cpu_us_per_req"] - stored["cpu_us_per_req"]
                gw["store_cpu_us_per_req"] = stored["cpu_us_per_req"]
            finally:
                gateway.stop()
            through["added_p50_ms"] = through["p50_ms"] - direct["p50_ms"]
            through["added_p99_ms"] = through["p99_ms"] - direct["p99_ms"]
            through["throughput_vs_direct"] = through["rps"] / direct["rps"]
            throughs[adapter] = through

            cached, port = start_chatkit(build, {**relay_env, "CHAT_CACHE_SIZE": "1024", "CHAT_DATABASE_URL": "none"}, tmp,
                                         adapter=adapter, connections=args.connections * 2)
            try:
                hit = record("chatkit[%s] /chat, every request a cache hit (no store)" % adapter,
                             measure(build, cached, port, "/chat", {"content": "the same question"}, args.connections, args.seconds),
                             adapter=adapter)
                hit["server_p50_ms"] = server_latency_ms(cached, "/chat")
            finally:
                cached.stop()

        if want("peers"):
            print("4. peers: nginx (pure proxy) and the Portkey gateway", flush=True)
            if nginx_ver:
                try:
                    proxy = nginx_proxy(mock_port, connections=4 * args.connections + 256)
                    try:
                        nx = record("nginx %s (pure proxy) -> mock upstream" % nginx_ver,
                                    measure(build, proxy, proxy.port, "/v1/chat/completions", ask, args.connections, args.seconds),
                                    threads=proxy.threads(), peer="nginx")
                    finally:
                        proxy.stop()
                    for adapter, through in throughs.items():
                        through["cpu_vs_nginx"] = through["cpu_us_per_req"] / max(nx["cpu_us_per_req"], 1e-9)
                        through["nginx_cpu_us_per_req"] = nx["cpu_us_per_req"]
                except Exception as e:
                    record("nginx (pure proxy) -> mock upstream", {"errors": 1, "failure": str(e)}, peer="nginx")
            else:
                print("  nginx not installed: skipped", flush=True)

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
                    for through in throughs.values():
                        through["throughput_vs_portkey"] = through["rps"] / max(pk["rps"], 1e-9)
                finally:
                    portkey.stop()
            else:
                print("  Portkey gateway not installed (npm ci --prefix benchmarks): skipped", flush=True)
    finally:
        if mock:
            mock.stop()

    if want("streams"):
        print("5. concurrent streams (50 chunks, 100 ms apart)", flush=True)
    else:
        stream_counts = nginx_streams = []
    for n in stream_counts:
        for adapter in servers:
            name = "%d concurrent streams through chatkit[%s]" % (n, adapter)
            slow, slow_port = start_slow_mock(build, n)
            chatkit = None
            try:
                chatkit, port = start_chatkit(build, {"CHAT_PROVIDER": "openai", "OPENAI_API_KEY": "sk-bench",
                                                      "OPENAI_BASE_URL": "http://127.0.0.1:%d/v1" % slow_port, "CHAT_CACHE_SIZE": "0",
                                                      "CHAT_DATABASE_URL": "none",
                                                      "CHAT_UPSTREAM_TIMEOUT": "120", "CHAT_READ_TIMEOUT": "120"}, tmp,
                                              adapter=adapter, connections=n + 64)
                record(name, stream_run(build, chatkit, port, n), adapter=adapter)
            except Exception as e:  # a size this machine cannot hold is a result, not a crash of the suite
                record(name, {"errors": n, "failure": str(e)}, streams=n, adapter=adapter)
            finally:
                if chatkit:
                    chatkit.stop()
                slow.stop()
        if n in nginx_streams and nginx_ver:
            name = "%d concurrent streams through nginx (proxy_buffering off)" % n
            slow, slow_port = start_slow_mock(build, n)
            proxy = None
            try:
                proxy = nginx_proxy(slow_port, connections=2 * n + 256, buffering=False)
                record(name, stream_run(build, proxy, proxy.port, n), peer="nginx")
            except Exception as e:
                record(name, {"errors": n, "failure": str(e)}, streams=n, peer="nginx")
            finally:
                if proxy:
                    proxy.stop()
                slow.stop()
    if nginx_streams and not nginx_ver:
        print("  nginx not installed: its stream rows are skipped", flush=True)

    if args.stalled > 0 and want("stalled"):
        print("6. /health with %d stalled connections (half a request header each)" % args.stalled, flush=True)
        for adapter in servers:
            stalled_scenario(build, adapter, args.stalled, tmp, record)

    if want("store"):
        print("7. store: durable appends", flush=True)
        store_bench = build / "benchmarks/store_bench"
        if store_bench.exists():
            store = subprocess.run([str(store_bench)], capture_output=True, text=True)
            results["store_table"] = store.stdout
        else:
            print("  %s not built: skipped" % store_bench, flush=True)

    if want("fleet"):
        print("8. fleet: two replicas behind nginx, Redis limits and the PostgreSQL store, next to one process on SQLite "
              "(same run)", flush=True)
        fleet_scenario(build, servers[0] if servers else ADAPTERS[0], args, tmp, record, results, nginx_ver)

    shutil.rmtree(tmp, ignore_errors=True)
    write_reports(build, results)


def write_reports(build, results):
    rows = ["| scenario | req/s | p50 ms | p90 ms | p99 ms | CPU s / 1k req | CPU µs / req | peak RSS MB | threads | errors |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["scenarios"]:
        answered = r.get("completed", 0) > 0
        latency = ["%.2f" % r.get(k, 0) if answered else "-" for k in ("p50_ms", "p90_ms", "p99_ms")]
        rows.append("| %s | %s | %s | %s | %s | %s | %s | %.0f | %s | %d |" % (
            r["scenario"], "%.0f" % r.get("rps", 0) if "streams" not in r else "%d/%d done" % (r.get("completed", 0), r["streams"]),
            *latency,
            "%.3f" % r["cpu_s_per_1k"] if "cpu_s_per_1k" in r else "-",
            "%.1f" % r["cpu_us_per_req"] if "cpu_us_per_req" in r else "-",
            r.get("peak_rss_mb", 0), "%d" % r["threads"] if "threads" in r else "-",
            r.get("errors", 0) + r.get("non_2xx", 0) + r.get("timed_out", 0)))
    notes = []
    if not results.get("nginx_version"):
        notes.append("- nginx was not found: its rows were skipped.")
    for adapter, named in results.get("adapter_notes", {}).items():
        notes.append("- sample_server started with CHAT_SERVER=%s reported %s." % (
            adapter, "adapter %s" % named if named else "no adapter in its start-up line (it may have ignored CHAT_SERVER)"))
    nginx_streams = {r["streams"]: r for r in results["scenarios"] if r.get("peer") == "nginx" and "rss_kb_per_stream" in r}
    for r in results["scenarios"]:
        who = "chatkit[%s]" % r["adapter"] if "adapter" in r else "chatkit"
        if r.get("failure"):
            notes.append("- %s: failed: %s" % (r["scenario"], r["failure"].strip().splitlines()[-1][:300] if r["failure"].strip() else "?"))
        if "added_p50_ms" in r:
            notes.append("- %s adds %.3f ms at p50 and %.3f ms at p99 over the direct path, at %.0f%% of its throughput." % (
                who, r["added_p50_ms"], r["added_p99_ms"], 100 * r["throughput_vs_direct"]))
        if "cpu_vs_nginx" in r:
            notes.append("- %s spends %.1f µs of CPU per relayed request, %.2fx nginx's %.1f µs (goal ≤ 2x: %s)." % (
                who, r["cpu_us_per_req"], r["cpu_vs_nginx"], r["nginx_cpu_us_per_req"], "met" if r["cpu_vs_nginx"] <= 2 else "not met"))
        if "metrics_cpu_us" in r:
            notes.append("- %s relay with metrics on (the default): %.1f µs of CPU per request against %.1f µs with CHAT_METRICS=off "
                         "(%+.1f µs; medians of three alternated runs each)." % (
                             who, r["metered_cpu_us_per_req"], r["unmetered_cpu_us_per_req"], r["metrics_cpu_us"]))
        if "tracing_cpu_us" in r:
            notes.append("- %s relay with tracing on (OTLP/protobuf, every request sampled): %.1f µs of CPU per request against "
                         "%.1f µs with tracing and metrics off (%+.1f µs; medians of three alternated runs each; "
                         "%d exports, %.0f KB received by the collector)." % (
                             who, r["traced_cpu_us_per_req"], r["unmetered_cpu_us_per_req"], r["tracing_cpu_us"],
                             r["trace_exports"], r["trace_bytes"] / 1024))
        if "gateway_cpu_us_over_store" in r:
            notes.append("- %s as a gateway (a ck- key, its rpm, tpm and budget checked, every answer priced and recorded): "
                         "%.1f µs of CPU per request, %+.1f µs over the same relay with the store on and the gateway off (%.1f µs)." % (
                             who, r["cpu_us_per_req"], r["gateway_cpu_us_over_store"], r["store_cpu_us_per_req"]))
        if "throughput_vs_portkey" in r:
            notes.append("- %s's throughput is %.1fx the Portkey gateway's on the same mock." % (who, r["throughput_vs_portkey"]))
        if r.get("server_p50_ms") is not None:
            notes.append("- %s: a cache hit takes %.3f ms inside the server (access-log p50)." % (who, r["server_p50_ms"]))
        if "rss_kb_per_stream" in r:
            line = "- %d streams through %s: %d completed, %d failed; %.0f KB of RSS per stream (%.0f KB over idle); %d threads while open (%d idle)." % (
                r["streams"], "nginx (master+worker)" if r.get("peer") == "nginx" else who, r.get("completed", 0), r.get("errors", 0),
                r["rss_kb_per_stream"], r["rss_kb_per_stream_over_idle"], r.get("threads", 0), r.get("threads_idle", 0))
            if r.get("peer") != "nginx" and r["streams"] in nginx_streams:
                nx = nginx_streams[r["streams"]]
                line += " nginx: %.0f KB per stream (%.0f KB over idle)." % (nx["rss_kb_per_stream"], nx["rss_kb_per_stream_over_idle"])
            notes.append(line)
        if "stalled_connected" in r:
            if r.get("completed", 0):
                health = "/health p50 %.2f ms, p99 %.2f ms (%d answered, %d unanswered)" % (
                    r["p50_ms"], r["p99_ms"], r["completed"], r.get("timed_out", 0))
            else:
                health = "/health got no answer in %.0f s" % r.get("seconds", 0)
            notes.append("- %s with %d of %d stalled connections open (%d accepted): %s, against p50 %.2f ms, p99 %.2f ms "
                         "without them; %d threads, %.0f MB RSS during the stall; %d stalled connections dropped by the server "
                         "by the end, %d still open." % (
                             who, r["stalled_connected"], r["stalled"], r["stalled_accepted"], health, r["baseline_p50_ms"],
                             r["baseline_p99_ms"], r["threads"], r["rss_mb"], r["stalled_dropped_by_server"], r["stalled_still_open"]))
    fleet = results.get("fleet", {})
    if fleet.get("skipped"):
        notes.append("- fleet: skipped (%s)." % fleet["skipped"])
    if "one" in fleet and "fleet" in fleet:
        split = lambda r: ", ".join("%s %.1f" % kv for kv in r["cpu_us_per_req_by"].items())
        notes.append("- Two replicas behind nginx, limits in Redis, history, keys and usage in PostgreSQL: %.1f µs of CPU per request "
                     "in all (%s), %.2fx one process on SQLite (%.1f µs); %.0f req/s, %.0f%% of its throughput; requests per "
                     "replica %s." % (fleet["fleet"]["cpu_us_per_req"], split(fleet["fleet"]), fleet["cpu_vs_one"],
                                      fleet["one"]["cpu_us_per_req"], fleet["fleet"]["rps"], 100 * fleet["throughput_vs_one"],
                                      "/".join(str(n) for n in fleet["fleet"]["requests_by_replica"])))
        for row in ("one", "fleet"):
            if fleet[row].get("log_problems"):
                notes.append("- %s logged: %s." % (fleet[row]["scenario"], "; ".join(fleet[row]["log_problems"])[:500]))
    text = ("\n".join(rows) + "\n\n" + "\n".join(notes) + "\n\n" + results.get("store_table", "") +
            (results.get("fleet") or {}).get("postgres_store_table", ""))
    (build / "results.md").write_text(text)
    (build / "results.json").write_text(json.dumps(results, indent=2))
    print("\n" + text)
    print("written: %s, %s" % (build / "results.md", build / "results.json"))


if __name__ == "__main__":
    sys.exit(main())
