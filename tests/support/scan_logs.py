#!/usr/bin/env python3
"""Fails if a secret appears in the logs the test suite's servers wrote.

The test launchers (server_process, run_to_exit, the Lambda sandbox) copy each log they read
into $CHATKIT_TEST_LOG_DIR with a sidecar NAME.secrets: the secrets, one per line, the process was given
in its environment (upstream API keys, AWS secret keys and session tokens, the admin key,
passwords in Redis and PostgreSQL URLs). Every log is checked against the secrets of every
process, since a key one test planted must show up in no log at all, and for anything shaped
like a chatkit API key ("ck-" and 43 base62 characters), which no log line may hold whole.
A line that is a JSON object without "msg" is not a log line but a command's answer on stdout
(`sample_server keys create` prints the new key, once, by design), and is not scanned.

    scan_logs.py DIR     exit 0: nothing found; exit 1: each finding printed, secrets masked
"""
import json
import pathlib
import re
import sys

CHATKIT_KEY = re.compile(r"ck-[0-9A-Za-z]{43}")
MIN_SECRET = 8  # shorter values ("testing", as the emulators' credentials) would match anywhere


def masked(secret: str) -> str:
    return secret[:4] + "…" + f"({len(secret)} characters)"


def is_command_answer(line: str) -> bool:
    try:
        j = json.loads(line)
    except ValueError:
        return False
    return isinstance(j, dict) and "msg" not in j


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = pathlib.Path(sys.argv[1])
    logs = sorted(root.glob("*.log"))
    secrets = set()
    for sidecar in root.glob("*.secrets"):
        secrets.update(s for s in sidecar.read_text().splitlines() if len(s) >= MIN_SECRET)
    # One pattern for all of them: the regex engine goes over each log once.
    pattern = re.compile("|".join([re.escape(s) for s in sorted(secrets, key=len, reverse=True)] + [CHATKIT_KEY.pattern]))
    findings = 0
    for log in logs:
        text = log.read_text(errors="replace")
        if not pattern.search(text):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if is_command_answer(line):
                continue
            for match in pattern.finditer(line):
                findings += 1
                print(f"{log.name}:{number}: a secret in the log: {masked(match.group(0))}")
    print(f"scanned {len(logs)} logs for {len(secrets)} secrets and chatkit keys: {findings} found")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
