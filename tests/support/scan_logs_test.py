#!/usr/bin/env python3
"""scan_logs.py can fail: it finds a planted secret, a password from a URL and a chatkit key,
masks them in what it prints, and passes logs that hold none (short values are not secrets)."""
import pathlib
import subprocess
import sys
import tempfile

SCAN = pathlib.Path(__file__).with_name("scan_logs.py")


def scan(files: dict) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as d:
        for name, text in files.items():
            (pathlib.Path(d) / name).write_text(text)
        return subprocess.run([sys.executable, str(SCAN), d], capture_output=True, text=True)


def main() -> int:
    failures = []

    def expect(what, result, code, shown=(), hidden=()):
        if result.returncode != code:
            failures.append(f"{what}: exit {result.returncode}, expected {code}\n{result.stdout}{result.stderr}")
        for s in shown:
            if s not in result.stdout:
                failures.append(f"{what}: {s!r} not in the report\n{result.stdout}")
        for s in hidden:
            if s in result.stdout:
                failures.append(f"{what}: the report shows {s!r}\n{result.stdout}")

    key = "sk-planted-SECRET-0123456789"
    clean = '{"level":"info","msg":"request","status":200}\n'
    expect("clean logs", scan({"a.log": clean, "a.secrets": key + "\ntesting\n"}), 0, shown=["0 found"])
    # A secret one process was given, found in another process's log.
    expect("planted key", scan({"a.log": clean, "a.secrets": key + "\n", "b.log": clean + f'{{"msg":"upstream said {key}"}}\n'}),
           1, shown=["b.log:2", "sk-p…"], hidden=[key])
    expect("short values", scan({"a.log": "testing testing\n", "a.secrets": "testing\n"}), 0)
    ck = "ck-" + "A1b2C3d4E5" * 4 + "xyz"
    expect("chatkit key", scan({"a.log": f'{{"msg":"made {ck}"}}\n'}), 1, shown=["a.log:1"], hidden=[ck])
    expect("a command's answer", scan({"a.log": f'{{"id":"key_1","key":"{ck}"}}\n'}), 0)
    expect("the same key in a log line", scan({"a.log": f'{{"level":"info","msg":"made","key":"{ck}"}}\n'}), 1, hidden=[ck])
    expect("key prefix only", scan({"a.log": '{"prefix":"ck-A1b2C3"}\n'}), 0)
    for f in failures:
        print(f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
