"""The proxy-wasm ABI as Envoy 1.40's host implements it, and the rules a module must meet.

Envoy links a module with proxy-wasm-cpp-host; what it needs from a module and
what it offers are data there, restated here (not copied) with the file each
comes from:

- ``src/bytecode_util.cc`` (``getAbiVersion``): the first exported *function*
  named ``proxy_abi_version_0_1_0``, ``_0_2_0`` or ``_0_2_1`` decides the ABI;
  none is "Missing or unknown Proxy-Wasm ABI version", and the VM fails.
- ``src/wasm.cc`` (``registerCallbacks``): the imports the host provides:
  ``env.proxy_*`` (``FOR_ALL_HOST_FUNCTIONS`` in ``include/proxy-wasm/exports.h``,
  plus a few per ABI version), ``env.pthread_equal``,
  ``env.emscripten_notify_memory_growth``, and the WASI functions
  (``FOR_ALL_WASI_FUNCTIONS``) under both ``wasi_snapshot_preview1`` and
  ``wasi_unstable``. Signatures are the C++ declarations in ``exports.h``
  (``Word`` is i32, ``int64_t``/``uint64_t`` i64), including two that differ
  from the WASI spec (``path_link`` and ``path_symlink`` take one argument
  fewer): V8 refuses an import whose type differs.
- ``src/wasm.cc`` (``getFunctions``) and ``include/proxy-wasm/wasm.h``: the
  exports the host looks up and the types it calls them with; ``malloc`` (or
  ``proxy_on_memory_allocate``) is required, and an export with the wrong type
  fails the VM ("Bad function signature", ``src/v8/v8.cc``).
- ``src/v8/v8.cc`` (``V8::link``): an imported global is a missing import;
  an imported memory or table is created by the host.

The lists were checked against the Envoy 1.40 binary itself (its
"restricted capability" stub messages name every host function it registers;
``tests/modules/test_proxyabi.py``). wasmxds also requires a memory and
``proxy_on_context_create``: without them Envoy loads the module but the
plugin can never receive data or get a context, so it would do nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from wasmxds.modules.types import HTTP_CALLBACKS, NETWORK_CALLBACKS, ModuleAbi, Verdict
from wasmxds.modules.wasmbin import (
    FUNC,
    KIND_NAMES,
    MEMORY,
    TABLE,
    Signature,
    WasmInterface,
)

__all__ = [
    "ABI_VERSIONS",
    "WASI_FUNCTIONS",
    "host_functions",
    "judge",
    "plugin_type_warning",
]

ABI_VERSIONS = {
    "proxy_abi_version_0_1_0": "0.1.0",
    "proxy_abi_version_0_2_0": "0.2.0",
    "proxy_abi_version_0_2_1": "0.2.1",
}
_WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")
# How many problems one message lists before "and N more".
_MAX_PROBLEMS = 3


def _sig(params: str, results: str = "i") -> Signature:
    """A signature written compactly: ``i`` is i32, ``I`` is i64 (``exports.h``'s Word, int64_t)."""
    names = {"i": "i32", "I": "i64"}
    return Signature(tuple(names[c] for c in params), tuple(names[c] for c in results))


# include/proxy-wasm/exports.h: FOR_ALL_HOST_FUNCTIONS (every ABI version), as env.proxy_<name>.
_PROXY_COMMON = {
    "log": "iii",
    "get_status": "iii",
    "set_property": "iiii",
    "get_property": "iiii",
    "send_local_response": "i" * 8,
    "get_shared_data": "i" * 5,
    "set_shared_data": "i" * 5,
    "register_shared_queue": "iii",
    "resolve_shared_queue": "i" * 5,
    "dequeue_shared_queue": "iii",
    "enqueue_shared_queue": "iii",
    "get_header_map_value": "i" * 5,
    "add_header_map_value": "i" * 5,
    "replace_header_map_value": "i" * 5,
    "remove_header_map_value": "iii",
    "get_header_map_pairs": "iii",
    "set_header_map_pairs": "iii",
    "get_header_map_size": "ii",
    "get_buffer_status": "iii",
    "get_buffer_bytes": "i" * 5,
    "set_buffer_bytes": "i" * 5,
    "http_call": "i" * 10,
    "grpc_call": "i" * 12,
    "grpc_stream": "i" * 9,
    "grpc_close": "i",
    "grpc_cancel": "i",
    "grpc_send": "iiii",
    "set_tick_period_milliseconds": "i",
    "get_current_time_nanoseconds": "i",
    "define_metric": "iiii",
    "increment_metric": "iI",
    "record_metric": "iI",
    "get_metric": "ii",
    "set_effective_context": "i",
    "done": "",
    "call_foreign_function": "i" * 6,
}
# src/wasm.cc registerCallbacks: the host functions registered for one ABI version only.
_PROXY_BY_ABI = {
    "0.1.0": {
        "get_configuration": "ii",
        "continue_request": "",
        "continue_response": "",
        "clear_route_cache": "",
    },
    "0.2.0": {"continue_stream": "i", "close_stream": "i"},
    "0.2.1": {"continue_stream": "i", "close_stream": "i", "get_log_level": "i"},
}
_PROXY_ANY_ABI = {name for names in _PROXY_BY_ABI.values() for name in names}
# include/proxy-wasm/exports.h: FOR_ALL_WASI_FUNCTIONS, with the declared parameter types
# (all return i32 but proc_exit).
WASI_FUNCTIONS = {
    "fd_write": "iiii",
    "fd_read": "iiii",
    "fd_seek": "iIii",
    "fd_close": "i",
    "fd_fdstat_get": "ii",
    "fd_fdstat_set_flags": "ii",
    "fd_fdstat_set_rights": "iII",
    "environ_get": "ii",
    "environ_sizes_get": "ii",
    "args_get": "ii",
    "args_sizes_get": "ii",
    "clock_time_get": "iIi",
    "clock_res_get": "ii",
    "fd_advise": "iIIi",
    "fd_allocate": "iII",
    "fd_datasync": "i",
    "fd_filestat_set_size": "iI",
    "fd_filestat_set_times": "iIIi",
    "fd_pread": "iiiIi",
    "fd_pwrite": "iiiIi",
    "fd_readdir": "iiiIi",
    "fd_renumber": "ii",
    "fd_sync": "i",
    "fd_tell": "ii",
    "path_create_directory": "iii",
    "path_filestat_set_times": "iiiiIIi",
    "path_link": "i" * 6,
    "path_readlink": "i" * 6,
    "path_remove_directory": "iii",
    "path_rename": "i" * 6,
    "path_symlink": "iiii",
    "path_unlink_file": "iii",
    "sock_accept": "iii",
    "sock_recv": "i" * 6,
    "sock_send": "i" * 5,
    "sock_shutdown": "ii",
    "random_get": "ii",
    "sched_yield": "",
    "poll_oneoff": "iiii",
    "proc_exit": "i",
    "path_open": "iiiiiIIii",
    "fd_prestat_get": "ii",
    "fd_prestat_dir_name": "iii",
    "path_filestat_get": "i" * 5,
    "fd_filestat_get": "ii",
}

# include/proxy-wasm/wasm.h: the exports the host looks up, and the types it calls them with
# (WasmCallVoid<N>: N i32 -> nothing; WasmCallWord<N>: N i32 -> i32).
_CALLBACKS = {
    "proxy_validate_configuration": _sig("ii"),
    "proxy_on_vm_start": _sig("ii"),
    "proxy_on_configure": _sig("ii"),
    "proxy_on_tick": _sig("i", ""),
    "proxy_on_context_create": _sig("ii", ""),
    "proxy_on_new_connection": _sig("i"),
    "proxy_on_downstream_data": _sig("iii"),
    "proxy_on_upstream_data": _sig("iii"),
    "proxy_on_downstream_connection_close": _sig("ii", ""),
    "proxy_on_upstream_connection_close": _sig("ii", ""),
    "proxy_on_request_body": _sig("iii"),
    "proxy_on_request_trailers": _sig("ii"),
    "proxy_on_request_metadata": _sig("ii"),
    "proxy_on_response_body": _sig("iii"),
    "proxy_on_response_trailers": _sig("ii"),
    "proxy_on_response_metadata": _sig("ii"),
    "proxy_on_http_call_response": _sig("iiiii", ""),
    "proxy_on_grpc_receive": _sig("iii", ""),
    "proxy_on_grpc_close": _sig("iii", ""),
    "proxy_on_grpc_receive_initial_metadata": _sig("iii", ""),
    "proxy_on_grpc_receive_trailing_metadata": _sig("iii", ""),
    "proxy_on_queue_ready": _sig("ii", ""),
    "proxy_on_done": _sig("i"),
    "proxy_on_log": _sig("i", ""),
    "proxy_on_delete": _sig("i", ""),
}
_HEADERS_CALLBACKS = ("proxy_on_request_headers", "proxy_on_response_headers")
_MEMORY_ALLOCATORS = ("malloc", "proxy_on_memory_allocate")


def host_functions(abi: str) -> dict[str, Signature]:
    """Every function import Envoy's host provides to a module of ABI ``abi``, by qualified name."""
    provided = {
        f"env.proxy_{name}": _sig(params)
        for name, params in (_PROXY_COMMON | _PROXY_BY_ABI.get(abi, {})).items()
    }
    provided["env.pthread_equal"] = _sig("ii")
    provided["env.emscripten_notify_memory_growth"] = _sig("i", "")
    for module in _WASI_MODULES:
        for name, params in WASI_FUNCTIONS.items():
            provided[f"{module}.{name}"] = _sig(params, "" if name == "proc_exit" else "i")
    return provided


def _expected_exports(abi: str, exported: Mapping[str, Signature | None]) -> dict[str, Signature]:
    """The exports the host looks up for this module, with the type it calls each with."""
    expected = dict(_CALLBACKS)
    headers = _sig("ii") if abi == "0.1.0" else _sig("iii")
    expected |= dict.fromkeys(_HEADERS_CALLBACKS, headers)
    if abi != "0.1.0":
        expected["proxy_on_foreign_function"] = _sig("iii", "")
    expected["_initialize"] = _sig("", "")
    if "_initialize" in exported:
        expected |= {"main": _sig("ii"), "__main_void": _sig("")}
    else:
        expected["_start"] = _sig("", "")
    expected["malloc"] = _sig("i")
    if "malloc" not in exported:
        expected["proxy_on_memory_allocate"] = _sig("i")
    return expected


def _import_problems(interface: WasmInterface, abi: str) -> Iterable[str]:
    provided = host_functions(abi)
    for item in interface.imports:
        name = item.qualified
        if item.kind == FUNC:
            want = provided.get(name)
            if want is None:
                yield _unknown_import(item.module, item.name, abi)
            elif item.signature != want:
                yield (
                    f"imports {name} as {item.signature}, but Envoy's host provides"
                    f" {want}, so the module cannot be linked"
                )
        elif item.kind not in (MEMORY, TABLE):
            what = KIND_NAMES.get(item.kind, "item")
            yield (
                f"imports the {what} {name}; Envoy's host provides only functions,"
                " a memory and a table"
            )


def _unknown_import(module: str, name: str, abi: str) -> str:
    qualified = f"{module}.{name}"
    if module == "env" and name.removeprefix("proxy_") in _PROXY_ANY_ABI:
        versions = [v for v, names in _PROXY_BY_ABI.items() if name[6:] in names]
        return (
            f"imports {qualified}, which Envoy provides only to modules of ABI"
            f" {' and '.join(versions)} (this one declares {abi})"
        )
    if module in _WASI_MODULES:
        return f"imports {qualified}, a WASI function Envoy does not implement"
    if module == "env":
        return f"imports {qualified}, which Envoy's proxy-wasm host does not provide"
    return (
        f"imports {qualified} from module {module!r}; Envoy provides only env,"
        f" {' and '.join(_WASI_MODULES)}"
    )


def _export_problems(interface: WasmInterface, abi: str) -> Iterable[str]:
    exported = {item.name: item.signature for item in interface.exports if item.kind == FUNC}
    if not any(name in exported for name in _MEMORY_ALLOCATORS):
        yield (
            "exports neither malloc nor proxy_on_memory_allocate, which Envoy needs"
            " to pass data into the module"
        )
    has_memory = any(item.kind == MEMORY for item in interface.exports) or any(
        item.kind == MEMORY for item in interface.imports
    )
    if not has_memory:
        yield "has no memory (exported or imported), so Envoy cannot pass it any data"
    if "proxy_on_context_create" not in exported:
        yield (
            "exports no proxy_on_context_create, so Envoy can never create the"
            " plugin's contexts and it would do nothing"
        )
    for name, want in _expected_exports(abi, exported).items():
        have = exported.get(name)
        if have is not None and have != want:
            yield (
                f"exports {name} as {have}, but Envoy calls it as {want}"
                f" (ABI {abi}), so the module fails to start"
            )


def _abi_version(interface: WasmInterface) -> str:
    for item in interface.exports:
        if item.kind == FUNC and item.name in ABI_VERSIONS:
            return ABI_VERSIONS[item.name]
    return ""


def _sentence(problems: list[str]) -> str:
    shown = problems[:_MAX_PROBLEMS]
    more = len(problems) - len(shown)
    text = "; ".join(shown)
    return f"{text}; and {more} more problem{'s' if more > 1 else ''}" if more else text


def judge(interface: WasmInterface) -> Verdict:
    """Whether Envoy 1.40 can load and run a module with this interface, and what it implements."""
    abi = _abi_version(interface)
    if not abi:
        versions = ", ".join(ABI_VERSIONS)
        return Verdict(
            None,
            f"exports no proxy-wasm ABI version function ({versions}): Envoy refuses"
            " it as not a proxy-wasm module",
        )
    problems = [*_export_problems(interface, abi), *_import_problems(interface, abi)]
    if problems:
        return Verdict(None, _sentence(problems))
    callbacks = sorted(
        item.name
        for item in interface.exports
        if item.kind == FUNC
        and (
            item.name in _CALLBACKS
            or item.name in _HEADERS_CALLBACKS
            or item.name == "proxy_on_foreign_function"
        )
    )
    return Verdict(ModuleAbi(abi, tuple(callbacks)))


def plugin_type_warning(plugin_type: str, abi: ModuleAbi) -> str:
    """A warning when a plugin of ``plugin_type`` (HTTP or NETWORK) runs a module that does
    not implement that kind of callback; "" when it does."""
    wanted = HTTP_CALLBACKS if plugin_type == "HTTP" else NETWORK_CALLBACKS
    if not wanted.isdisjoint(abi.callbacks):
        return ""
    kind, what = ("HTTP", "requests") if plugin_type == "HTTP" else ("network", "connections")
    other = "network" if plugin_type == "HTTP" else "HTTP"
    implements = "no HTTP or network callbacks"
    if abi.http or abi.network:
        implements = f"{other} callbacks and no {kind} ones"
    return (
        f"spec.type: {plugin_type}, but the module implements {implements},"
        f" so Envoy would never call it for {what}"
    )
