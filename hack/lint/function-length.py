#!/usr/bin/env python3
"""Fails when a function in the given source folders is longer than the limit.

A function is counted from its `fn` line to its closing brace. Unit-test modules (`mod tests`)
and the functions named in ALLOWED (a pod spec that is one struct literal) are left out:
the limit is for logic, which should read as short steps.
"""
import re
import sys
from pathlib import Path

LIMIT = 80
ALLOWED = {("operator/src/pod_spec.rs", "runner_pod")}
FN = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?(?:const\s+)?(?:unsafe\s+)?fn\s+(\w+)")


def functions(path: Path):
    lines = path.read_text().splitlines()
    i = 0
    skip_depth = None
    depth = 0
    while i < len(lines):
        line = lines[i]
        if skip_depth is None and re.match(r"^\s*(pub\s+)?mod tests\s*\{", line):
            skip_depth = depth
        m = FN.match(line) if skip_depth is None else None
        if m and not line.rstrip().endswith(";"):
            start, d, opened = i, 0, False
            j = i
            while j < len(lines):
                code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j].split("//")[0])
                d += code.count("{") - code.count("}")
                opened = opened or "{" in code
                if opened and d <= 0:
                    break
                j += 1
            yield m.group(1), start + 1, j - start + 1
        code = re.sub(r'"(\\.|[^"\\])*"', '""', line.split("//")[0])
        depth += code.count("{") - code.count("}")
        if skip_depth is not None and depth <= skip_depth and "}" in code:
            skip_depth = None
        i += 1


def main(roots):
    repo = Path(__file__).resolve().parents[2]
    too_long = []
    for root in roots:
        for path in sorted((repo / root).rglob("*.rs")):
            rel = str(path.relative_to(repo))
            for name, line, length in functions(path):
                if length > LIMIT and (rel, name) not in ALLOWED:
                    too_long.append(f"{rel}:{line}: fn {name} is {length} lines (limit {LIMIT})")
    for t in too_long:
        print(t)
    return 1 if too_long else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["operator/src", "apiserver/src"]))
