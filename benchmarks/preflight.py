"""What the pre-flight check costs per module size (prints; asserts nothing).

    .venv/bin/python -m benchmarks.preflight [--rounds 5] [--compile]

Builds proxy-wasm modules of about 10 KiB, 1 MiB and 10 MiB, made of code (many
functions with arithmetic bodies: validation's worst case) or mostly of data (a
large data segment, as Go and Rust modules carry), plus the example filter, and
times, median of ``--rounds``:

- ``check``: what ``serve`` runs once per module digest
  (:func:`wasmxds.modules.preflight.check_wasm`): wasmtime validation, reading
  the imports and exports, judging them against Envoy's ABI;
- ``validate`` and ``read``: its two parts;
- ``compile`` (``--compile``): what a full Cranelift compile of the same bytes
  would cost, the alternative the check avoids (seconds at 10 MiB of code).

Wall and CPU time are printed in milliseconds. Validation runs on one core
(``parallel_compilation`` off, as in ``serve``).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import wasmtime

from wasmxds.modules.preflight import _get_engine, check_wasm
from wasmxds.modules.wasmbin import read_interface

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "header-filter" / "header-filter.wasm"
SIZES = (("10KiB", 10 << 10), ("1MiB", 1 << 20), ("10MiB", 10 << 20))

_HEAD = """(module
  (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) i32.const 0)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0)
"""


def _function(seed: int) -> str:
    body = " ".join(
        f"(local.set 0 (i32.add (i32.mul (local.get 0) (i32.const {i * 7 + seed}))"
        f" (i32.xor (local.get 1) (i32.const {i}))))"
        for i in range(40)
    )
    return f"(func (param i32 i32) (result i32) (local i32) {body} (local.get 0))"


def code_module(size: int) -> bytes:
    """About ``size`` bytes of distinct functions."""
    one = len(wasmtime.wat2wasm(f"(module {_function(1)})")) - 8
    count = max(1, size // one)
    return bytes(wasmtime.wat2wasm(_HEAD + "\n".join(_function(i) for i in range(count)) + ")"))


def data_module(size: int) -> bytes:
    """About ``size`` bytes, nearly all of it one data segment."""
    pages = size // 65536 + 2
    data = "\\00" * size
    text = _HEAD.replace('(memory (export "memory") 1)', f'(memory (export "memory") {pages})')
    return bytes(wasmtime.wat2wasm(text + f'(data (i32.const 0) "{data}"))'))


def timed(work: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of ``work``."""
    walls, cpus = [], []
    for _ in range(rounds):
        cpu, wall = time.process_time(), time.perf_counter()
        work()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time a full compile")
    args = parser.parse_args()
    engine = _get_engine()
    modules = [("example filter", EXAMPLE.read_bytes())]
    for label, size in SIZES:
        modules.append((f"{label} code", code_module(size)))
        modules.append((f"{label} data", data_module(size)))
    columns = ["check", "validate", "read"] + (["compile"] if args.compile else [])
    print(f"{'module':16} {'bytes':>10}  " + "  ".join(f"{c + ' ms (cpu)':>22}" for c in columns))
    for label, data in modules:
        verdict = check_wasm(data)
        assert verdict.abi is not None, verdict.problem
        work: dict[str, Callable[[], object]] = {
            "check": functools.partial(check_wasm, data),
            "validate": functools.partial(wasmtime.Module.validate, engine, data),
            "read": functools.partial(read_interface, data),
            "compile": functools.partial(wasmtime.Module, engine, data),
        }
        cells = []
        for column in columns:
            rounds = 1 if column == "compile" else args.rounds
            wall, cpu = timed(work[column], rounds)
            cells.append(f"{wall:10.1f} ({cpu:8.1f})")
        print(f"{label:16} {len(data):>10}  " + "  ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
