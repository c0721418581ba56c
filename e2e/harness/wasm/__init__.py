"""Test-only Wasm modules, built from C at test time with clang and wasm-ld."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["TRAP_SOURCE", "build_trap_module"]

HERE = Path(__file__).resolve().parent
TRAP_SOURCE = HERE / "trap.c"
# The proxy-wasm entry points the host looks up by name (as the Makefile's WASM_EXPORTS).
_TRAP_EXPORTS = (
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "malloc",
    "proxy_on_context_create",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_request_headers",
    "proxy_on_done",
    "proxy_on_delete",
)


def build_trap_module(cache: Path) -> Path:
    """trap.c compiled to ``cache/trap-<hash of source>.wasm`` (reused while the source is
    unchanged). Fails the test, not skips it, without clang or wasm-ld."""
    clang = shutil.which(os.environ.get("CLANG", "clang"))
    if clang is None or shutil.which("wasm-ld") is None:
        pytest.fail(
            "clang and wasm-ld are needed to build the trap module (apt-get install clang lld)"
        )
    source = TRAP_SOURCE.read_bytes()
    out = cache / f"trap-{hashlib.sha256(source).hexdigest()[:16]}.wasm"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(f".{os.getpid()}.partial")
    args = [
        clang,
        "--target=wasm32",
        "-std=c11",
        "-Oz",
        "-ffreestanding",
        "-nostdlib",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wl,--no-entry",
        "-Wl,--strip-all",
        "-Wl,--gc-sections",
        "-Wl,--stack-first",
        "-Wl,-z,stack-size=65536",
        *(f"-Wl,--export={name}" for name in _TRAP_EXPORTS),
        "-o",
        str(partial),
        str(TRAP_SOURCE),
    ]
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    partial.replace(out)
    return out
