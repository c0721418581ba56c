"""The pre-flight check: would Envoy 1.40 load and run this module? Asked before any proxy sees it.

Every module a plugin fetches (http(s) or OCI) is validated with a Wasm runtime
in the control plane (wasmtime: the whole binary, every function body, against
the core spec and the proposals V8 supports), then its imports and exports are
held against the proxy-wasm ABI Envoy's host implements
(:mod:`wasmxds.modules.proxyabi`). A module that fails is never sent to a
proxy: the resolver reports a ``module_incompatible`` failure, and the plugin
keeps its last good version or gets its failStrategy stand-in. ``file://``
modules are paths on the proxy, not here, and cannot be checked.

The check validates rather than compiles: validation reads every byte the way
a compiler starts by reading them, and costs ~5-10 ms per MiB; compiling to
machine code (which V8 does lazily anyway) costs ~0.4 s per MiB of code, and
the check needs nothing it would produce (``benchmarks/preflight.py``).
The verdict is kept per module digest in the module index, so a module is
checked once, not once per plugin, pass or restart.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from wasmxds.errors import FetchError, ModuleIncompatibleError
from wasmxds.modules.proxyabi import judge
from wasmxds.modules.types import Module, Verdict
from wasmxds.modules.wasmbin import Unreadable, read_interface

if TYPE_CHECKING:
    import wasmtime

__all__ = ["DEFAULT_TIMEOUT", "Preflight", "check_wasm"]

# Far above what validating the largest module --max-module-size allows takes (~2-3 s for
# 256 MiB): a check still running then is stuck, and the module is not served meanwhile.
DEFAULT_TIMEOUT = 30.0

# The proposals Envoy's V8 accepts, so the check does not refuse what Envoy would run;
# a module may use more than wasmtime's defaults (threads, GC, exceptions, memory64).
_FEATURES = (
    "wasm_threads",
    "wasm_simd",
    "wasm_relaxed_simd",
    "wasm_bulk_memory",
    "wasm_reference_types",
    "wasm_multi_value",
    "wasm_tail_call",
    "wasm_exceptions",
    "wasm_function_references",
    "wasm_gc",
    "wasm_memory64",
    "wasm_multi_memory",
    "gc_support",
    "shared_memory",
)

_engine: wasmtime.Engine | None = None
_engine_lock = threading.Lock()


def _get_engine() -> wasmtime.Engine:
    """One engine per process (engines are thread-safe and costly to make)."""
    global _engine
    # Imported on first use (~0.2 s, a 30 MB native library): every `wasmxds` command
    # that never checks a module starts without it.
    import wasmtime

    with _engine_lock:
        if _engine is None:
            config = wasmtime.Config()
            for feature in _FEATURES:
                setattr(config, feature, True)
            # Validation runs on one core per check (it would fan out over all of them):
            # the machine also runs the xDS server, and often Envoy.
            config.parallel_compilation = False
            _engine = wasmtime.Engine(config)
        return _engine


def check_wasm(data: bytes) -> Verdict:
    """Validate ``data`` and judge it against Envoy's proxy-wasm ABI (CPU-bound: call it off
    the event loop for anything but small modules). Raises ModuleIncompatibleError (retryable,
    not a verdict) when the module cannot be read."""
    engine = _get_engine()
    import wasmtime

    try:
        wasmtime.Module.validate(engine, data)
    except wasmtime.WasmtimeError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        return Verdict(None, f"is not valid WebAssembly: {reason}")
    try:
        interface = read_interface(data)
    except Unreadable as exc:
        # The reader knows every form the engine's proposals allow, so this is a gap in it.
        # wasmtime cannot be asked instead: listing the types of a compiled module aborts
        # the process on some (v128 parameters), so the module is held back, not judged.
        raise ModuleIncompatibleError(
            f"the pre-flight check cannot read the module's imports and exports ({exc});"
            " it is not served (--preflight off serves modules unchecked)",
            retryable=True,
        ) from exc
    return judge(interface)


def _check_file(path: Path) -> Verdict:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FetchError(f"cannot read the cached module {path} to check it: {exc}") from exc
    return check_wasm(data)


class Preflight:
    """The check as the resolver runs it (``ModuleResolver(preflight=...)``).

    Validation is CPU work in wasmtime's native code (ctypes releases the GIL), so it
    runs in a thread rather than on the event loop, which keeps serving xDS. One
    dedicated thread, not ``asyncio.to_thread``'s shared pool: checks run one at a
    time (at most one core), and a slow one cannot hold the threads the store and
    the index write with. A check that takes longer than ``timeout`` seconds fails
    (retried later, not remembered); its thread finishes in the background.
    """

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wasmxds-preflight")

    async def __call__(self, module: Module) -> Verdict:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                return await loop.run_in_executor(self._executor, _check_file, module.path)
        except TimeoutError:
            raise ModuleIncompatibleError(
                f"the pre-flight check of module {module.digest} ({module.size} bytes) did not"
                f" finish within {self._timeout:g}s; it is not served until a check passes",
                retryable=True,
            ) from None

    def close(self) -> None:
        """Stop taking checks; one that is running finishes in its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)
