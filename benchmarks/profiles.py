"""Where a server's time goes: summarize py-spy ``--format raw`` profiles (collapsed stacks).

    python -m benchmarks.profiles PROFILE.txt [...]

``benchmarks.run --profile DIR`` records them (``py-spy record --format raw``)
for each server during the initial sync and during the pushes. Each sample is
attributed by its innermost frame: code in wasmxds's protocol modules, the
server's handler glue, the metrics and logging libraries, asyncio's event loop
(task wakeups, futures, callbacks), or the line of a handler that awaits a gRPC
read or write. py-spy sees Python frames only, so time spent inside grpc's
Cython and C core (serializing frames, the completion queue, the socket) shows
up on the line that called into it: ``context.write`` / ``context.read``.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["categorize", "summarize"]

# (category, substrings of the innermost frame) — the first match wins.
_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("logging (structlog)", ("structlog/", "logging/")),
    (
        "protocol: per-stream state and response assembly",
        (
            "wasmxds/xds/sotw.py",
            "wasmxds/xds/delta.py",
            "wasmxds/xds/stream.py",
            "wasmxds/xds/snapshot.py",
            "wasmxds/xds/wire.py",
            "wasmxds/xds/resources.py",
        ),
    ),
    ("reading the node (json_format)", ("json_format", "wasmxds/xds/node.py")),
    ("event loop: wakeups, futures, callbacks (asyncio)", ("asyncio/",)),
    ("file watcher threads (watchfiles, anyio)", ("anyio/", "watchfiles/", "threading.py")),
    (
        "gRPC read/write and handler glue (server code awaiting cygrpc)",
        ("wasmxds/xds/server.py", "benchmarks/floor.py", "grpc/"),
    ),
    ("reconcile, sources, snapshot building", ("wasmxds/",)),
]


GC = "cyclic garbage collector (gc_collect_main)"
GRPC_NATIVE = "gRPC (cygrpc and C core)"


def categorize(frames: Sequence[str]) -> str:
    """The category of one sample, from its stack (outermost first).

    With native frames (``py-spy --native``) the garbage collector and gRPC's
    Cython/C code are told apart from the Python line that called into them.
    """
    if any("gc_collect" in frame for frame in frames):
        return GC
    python = [i for i, frame in enumerate(frames) if ".py:" in frame]
    innermost = python[-1] if python else len(frames) - 1
    deeper = frames[innermost + 1 :]
    if any("cygrpc" in frame or "libgrpc" in frame for frame in deeper):
        return GRPC_NATIVE
    frame = frames[innermost]
    for category, needles in _CATEGORIES:
        if any(needle in frame for needle in needles):
            return category
    return "other"


def _samples(path: Path) -> Iterable[tuple[list[str], int]]:
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def summarize(path: Path, *, top: int = 15) -> str:
    """Categories (by innermost frame), hottest innermost lines, hottest functions (inclusive)."""
    by_category: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, count in _samples(path):
        total += count
        leaf = frames[-1]
        by_category[categorize(frames)] += count
        by_leaf[leaf] += count
        for function in {frame.split(" (")[0] for frame in frames}:
            inclusive[function] += count
    if not total:
        return f"{path}: no samples"
    lines = [f"{path.name}: {total} samples"]
    lines.append("  by category (innermost frame):")
    for category, count in by_category.most_common():
        lines.append(f"    {count / total:6.1%}  {category}")
    lines.append("  hottest innermost frames:")
    for leaf, count in by_leaf.most_common(top):
        lines.append(f"    {count / total:6.1%}  {leaf}")
    lines.append("  hottest functions (inclusive):")
    skip = ("<module>", "_run_code", "_run_module_as_main", "main", "run", "Runner.run")
    shown = 0
    for function, count in inclusive.most_common():
        if function in skip or function.startswith(("BaseEventLoop.run", "Handle._run")):
            continue
        lines.append(f"    {count / total:6.1%}  {function}")
        shown += 1
        if shown == top:
            break
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    for path in paths:
        print(summarize(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
