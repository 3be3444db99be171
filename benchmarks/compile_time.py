#!/usr/bin/env python3
"""Compile time of chatkit's headers: what a translation unit pays to include one plugin, adapter
or client (every header of its include/ directory), against two baselines measured in the same run
(an empty TU that includes only nlohmann/json, and one that includes the core, chatkit/chatkit.hpp),
and what each of sample_server's own translation units costs (docs/performance.md#build-time).

The compiler and its flags are read from a configured build directory (the command ninja would run
for sample_server's main.cpp), so the figures are those of that build type. CPU seconds (user +
system of the compiler) are reported, the least of --runs runs, as they vary less than wall time
on a shared machine.

    benchmarks/compile_time.py build/test                 # every directory, and sample_server
    benchmarks/compile_time.py build/test --only openai   # directories whose name contains it
    benchmarks/compile_time.py build/test --only sample_server
"""
import argparse
import os
import pathlib
import resource
import shlex
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def sample_server_commands(build):
    """{source file name: compile command} for sample_server's own sources (not the generated assets)."""
    out = subprocess.run(["ninja", "-C", str(build), "-t", "commands", "sample_server/sample_server"],
                         check=True, capture_output=True, text=True).stdout
    commands = {}
    for line in out.splitlines():
        args = shlex.split(line)
        if "-c" in args and "/sample_server/" in args[args.index("-c") + 1] and "/generated/" not in line:
            commands[pathlib.Path(args[args.index("-c") + 1]).name] = args
    if "main.cpp" not in commands:
        sys.exit(f"{build}: no compile command for sample_server/main.cpp (configure it with the sample server on)")
    return commands


def without_outputs(command):
    """The command, writing its object nowhere and no dependency file (the build's own stay as they are)."""
    out, skip = [], False
    for a in command:
        if skip:
            skip = False
        elif a in ("-MT", "-MF", "-o"):
            skip = True
        elif a != "-MD":
            out.append(a)
    return out + ["-o", os.devnull]


def flags_of(command):
    """The compiler, and the flags that matter for any TU: defines, include paths, -O, -std, warnings."""
    keep = [a for a in command[1:] if a.startswith(("-D", "-I", "-O", "-std", "-W", "-g", "-f", "-isystem"))]
    return command[0], keep


def cpu_seconds(args, runs, cwd=None):
    best = None
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(args, capture_output=True, text=True, cwd=cwd)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            sys.exit("compile failed: " + " ".join(args[-3:]) + "\n" + done.stderr[-3000:])
        spent = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best = spent if best is None else min(best, spent)
    return best


def header_dirs():
    """(name, [headers]) for each plugin, adapter and client."""
    for kind in ("plugins", "adapters", "clients"):
        for d in sorted((ROOT / kind).iterdir()):
            inc = d / "include"
            if not inc.is_dir():
                continue
            headers = sorted(str(h.relative_to(inc)) for h in inc.rglob("*.hpp"))
            if headers:
                yield f"{kind}/{d.name}", headers


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("build", type=pathlib.Path)
    ap.add_argument("--only", default="")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--no-main", action="store_true", help="skip sample_server's own sources")
    opts = ap.parse_args()
    commands = sample_server_commands(opts.build)
    cxx, flags = flags_of(commands["main.cpp"])
    # Every plugin's include directory, whether or not sample_server uses it.
    flags += [f"-I{p}" for kind in ("plugins", "adapters", "clients") for p in sorted((ROOT / kind).glob("*/include"))]
    flags += ["-I/usr/include/postgresql"]  # libpq-fe.h, where Debian puts it

    with tempfile.TemporaryDirectory() as tmp:
        def tu(name, text):
            path = pathlib.Path(tmp) / (name.replace("/", "_") + ".cpp")
            path.write_text(text)
            return cpu_seconds([cxx, *flags, "-c", str(path), "-o", os.devnull], opts.runs)

        rows = []
        json_only = tu("json_only", "#include <nlohmann/json.hpp>\n")
        core = tu("core", "#include <chatkit/chatkit.hpp>\n")
        rows.append(("nlohmann/json alone (baseline)", json_only))
        rows.append(("chatkit/chatkit.hpp, the core (baseline)", core))
        for name, headers in header_dirs():
            if opts.only not in name:
                continue
            rows.append((name, tu(name, "".join(f"#include <{h}>\n" for h in headers))))
        if not opts.no_main and (not opts.only or opts.only in "sample_server"):
            own = [(f"sample_server/{name}", cpu_seconds(without_outputs(c), opts.runs, cwd=opts.build))
                   for name, c in sorted(commands.items())]
            rows += own
            if len(own) > 1:
                rows.append(("sample_server, its TUs together", sum(s for _, s in own)))

    width = max(len(r[0]) for r in rows)
    print(f"{'translation unit':<{width}}  CPU s  over the core")
    for name, s in rows:
        print(f"{name:<{width}}  {s:5.1f}  {s - core:+6.1f}")


if __name__ == "__main__":
    main()
