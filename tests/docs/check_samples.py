#!/usr/bin/env python3
"""Every C++ sample in README.md and docs/*.md is code the build compiles.

A ```cpp block must be an excerpt of one tracked C++ file under a directory the build compiles:
its lines, whitespace aside, appear there one after another. A line `...` or `// ...` in the
block stands for lines left out. Blank lines are ignored. A sample that is not such an excerpt
has drifted from the code, or was never compiled: put it in docs/samples/ (built by
docs/samples/CMakeLists.txt) or in docs/examples/, and show it from there.
"""
import pathlib
import re
import subprocess
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2])
compiled = ("include/", "plugins/", "adapters/", "testing/", "sample_server/", "docs/examples/", "docs/samples/",
            "tests/", "benchmarks/", "fuzz/", "clients/")
elision = {"...", "// ...", "/* ... */"}


def norm(line):
    return re.sub(r"\s+", " ", line.strip())


tracked = subprocess.run(["git", "ls-files", "*.hpp", "*.cpp", "*.h"], cwd=root, capture_output=True, text=True,
                         check=True).stdout.split()
sources = {}
for f in tracked:
    if f.startswith(compiled) and not f.startswith("tests/data/"):
        sources[f] = [n for n in (norm(l) for l in (root / f).read_text().splitlines()) if n]


def segments(block):
    out, current = [], []
    for line in block.splitlines():
        n = norm(line)
        if n in elision:
            if current: out.append(current)
            current = []
        elif n:
            current.append(n)
    if current: out.append(current)
    return out


def find(lines, segment, start):
    for i in range(start, len(lines) - len(segment) + 1):
        if lines[i:i + len(segment)] == segment: return i + len(segment)
    return None


def excerpt_of(segs):
    for name, lines in sources.items():
        at = 0
        for seg in segs:
            at = find(lines, seg, at)
            if at is None: break
        else:
            return name
    return None


failures = 0
count = 0
for md in [root / "README.md"] + sorted((root / "docs").glob("*.md")):
    text = md.read_text()
    for m in re.finditer(r"^```(?:cpp|c\+\+)\n(.*?)^```", text, re.S | re.M):
        count += 1
        segs = segments(m.group(1))
        if not segs: continue
        if excerpt_of(segs) is None:
            failures += 1
            line = text[:m.start()].count("\n") + 1
            print(f"{md.relative_to(root)}:{line}: this C++ sample is not an excerpt of a compiled file "
                  f"(starts: {segs[0][0][:70]})")
print(f"{count - failures} of {count} C++ samples are excerpts of compiled files")
sys.exit(1 if failures else 0)
