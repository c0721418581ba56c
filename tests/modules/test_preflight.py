"""The pre-flight check on real Wasm modules: what Envoy's proxy-wasm host refuses, and why."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.modules.wat import EMPTY, proxy_module
from wasmxds.errors import ModuleIncompatibleError
from wasmxds.modules.preflight import Preflight, check_wasm
from wasmxds.modules.types import Module

HEADER_FILTER = Path(__file__).resolve().parents[2] / "examples/header-filter/header-filter.wasm"

LOG = '(import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))'


def problem(data: bytes) -> str:
    verdict = check_wasm(data)
    assert verdict.abi is None, verdict
    return verdict.problem


def test_empty_valid_module_is_not_a_proxy_wasm_module() -> None:
    """A valid but empty module has no ABI version export: refused, saying so."""
    assert "exports no proxy-wasm ABI version function" in problem(EMPTY)
    assert "proxy_abi_version_0_2_1" in problem(EMPTY)


def test_missing_abi_export_is_refused_even_with_callbacks() -> None:
    """Callbacks without proxy_abi_version_* are refused: Envoy cannot tell the ABI."""
    assert "ABI version" in problem(proxy_module(abi="", network=True))


def test_abi_version_must_be_a_function() -> None:
    """A global named like the ABI export does not count (Envoy looks at functions only)."""
    data = proxy_module(
        abi="", body='(global (export "proxy_abi_version_0_2_1") i32 (i32.const 0))'
    )
    assert "ABI version" in problem(data)


def test_unknown_host_function_is_named() -> None:
    """An env import the host does not register is named in the sentence."""
    imports = '(import "env" "proxy_get_magic" (func (param i32) (result i32)))'
    assert problem(proxy_module(imports=imports)) == (
        "imports env.proxy_get_magic, which Envoy's proxy-wasm host does not provide"
    )


def test_unsupported_wasi_function_is_named() -> None:
    """A WASI function outside Envoy's subset (sock_open) is refused, naming it."""
    imports = (
        '(import "wasi_snapshot_preview1" "sock_open" (func (param i32 i32 i32) (result i32)))'
    )
    assert problem(proxy_module(imports=imports)) == (
        "imports wasi_snapshot_preview1.sock_open, a WASI function Envoy does not implement"
    )


def test_supported_wasi_functions_pass_under_both_module_names() -> None:
    """fd_write and clock_time_get, as wasi_snapshot_preview1 and wasi_unstable, link."""
    imports = "\n".join(
        f'(import "{ns}" "fd_write" (func $w{i} (param i32 i32 i32 i32) (result i32)))'
        f'(import "{ns}" "clock_time_get" (func $c{i} (param i32 i64 i32) (result i32)))'
        for i, ns in enumerate(("wasi_snapshot_preview1", "wasi_unstable"))
    )
    verdict = check_wasm(proxy_module(imports=imports))
    assert verdict.problem == ""


def test_import_from_an_unknown_module_is_refused() -> None:
    """Only env and the two WASI modules exist in Envoy's host."""
    imports = '(import "wasi:http/types" "x" (func))'
    assert "from module 'wasi:http/types'" in problem(proxy_module(imports=imports))


def test_host_function_of_another_abi_version_is_refused() -> None:
    """proxy_continue_request is registered for ABI 0.1.0 modules only."""
    imports = '(import "env" "proxy_continue_request" (func (result i32)))'
    assert problem(proxy_module(imports=imports)) == (
        "imports env.proxy_continue_request, which Envoy provides only to modules of ABI"
        " 0.1.0 (this one declares 0.2.1)"
    )
    assert check_wasm(proxy_module(abi="0_1_0", http=False, imports=imports)).problem == ""


def test_import_with_the_wrong_signature_is_refused() -> None:
    """V8 refuses an import whose type differs from the host's: proxy_log with two params."""
    imports = '(import "env" "proxy_log" (func (param i32 i32) (result i32)))'
    assert problem(proxy_module(imports=imports)) == (
        "imports env.proxy_log as (i32, i32) -> (i32), but Envoy's host provides"
        " (i32, i32, i32) -> (i32), so the module cannot be linked"
    )


def test_wasi_path_link_as_the_spec_declares_it_does_not_link() -> None:
    """Envoy's host declares path_link with six params, the WASI spec seven: a mismatch."""
    params = " ".join(["i32"] * 7)
    imports = f'(import "wasi_snapshot_preview1" "path_link" (func (param {params}) (result i32)))'
    assert "path_link as (i32, i32, i32, i32, i32, i32, i32) -> (i32)" in problem(
        proxy_module(imports=imports)
    )


def test_imported_global_is_refused() -> None:
    """V8 in Envoy links no imported globals."""
    imports = '(import "env" "__stack_pointer" (global (mut i32)))'
    assert problem(proxy_module(imports=imports)) == (
        "imports the global env.__stack_pointer; Envoy's host provides only functions,"
        " a memory and a table"
    )


def test_imported_memory_is_accepted() -> None:
    """A memory imported from env is created by the host (V8::link), so it counts."""
    imports = '(import "env" "memory" (memory 1))'
    assert check_wasm(proxy_module(imports=imports, memory=False)).problem == ""


def test_missing_malloc_memory_and_context_callback_are_each_named() -> None:
    """No allocator, no memory, no proxy_on_context_create: all three in one sentence."""
    text = problem(proxy_module(malloc=False, memory=False, context=False))
    assert "neither malloc nor proxy_on_memory_allocate" in text
    assert "has no memory" in text
    assert "exports no proxy_on_context_create" in text


def test_proxy_on_memory_allocate_replaces_malloc() -> None:
    """The allocator may be exported under its proxy-wasm name instead of malloc."""
    body = '(func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 0)'
    assert check_wasm(proxy_module(malloc=False, body=body)).problem == ""


def test_callback_with_the_wrong_signature_is_refused() -> None:
    """proxy_on_request_headers takes three params in ABI 0.2.x; two fails the VM's start."""
    body = '(func (export "proxy_on_request_headers") (param i32 i32) (result i32) i32.const 0)'
    assert problem(proxy_module(http=False, body=body)) == (
        "exports proxy_on_request_headers as (i32, i32) -> (i32), but Envoy calls it as"
        " (i32, i32, i32) -> (i32) (ABI 0.2.1), so the module fails to start"
    )


def test_abi_0_1_0_headers_callbacks_take_two_params() -> None:
    """The same two-param callback is right for ABI 0.1.0."""
    body = '(func (export "proxy_on_request_headers") (param i32 i32) (result i32) i32.const 0)'
    verdict = check_wasm(proxy_module(abi="0_1_0", http=False, body=body))
    assert verdict.abi is not None
    assert verdict.abi.version == "0.1.0"


def test_many_problems_are_summarised() -> None:
    """Past three problems the sentence says how many more there are."""
    imports = "\n".join(f'(import "env" "proxy_x{i}" (func))' for i in range(5))
    text = problem(proxy_module(imports=imports))
    assert text.endswith("; and 2 more problems")


def test_invalid_bytes_are_refused_by_the_runtime() -> None:
    """Bytes that are not valid WebAssembly fail validation, with wasmtime's reason."""
    assert problem(b"\0asm\x01\0\0\0garbage").startswith("is not valid WebAssembly: ")


def test_type_errors_in_function_bodies_are_found() -> None:
    """Validation reads every function body: an i64 where i32 is due is refused."""
    body = '(func (export "f") (result i32) i64.const 1)'
    assert "type mismatch" in problem(proxy_module(body=body))


@pytest.mark.parametrize(
    ("http", "network"), [(True, False), (False, True), (False, False)], ids=["http", "net", "none"]
)
def test_capabilities_are_reported(http: bool, network: bool) -> None:
    """A valid module's verdict says which kinds of callbacks it implements, and its ABI."""
    verdict = check_wasm(proxy_module(http=http, network=network))
    assert verdict.problem == ""
    assert verdict.abi is not None
    assert (verdict.abi.version, verdict.abi.http, verdict.abi.network) == ("0.2.1", http, network)


def test_the_example_filter_implements_both_kinds() -> None:
    """examples/header-filter is a real C module with HTTP and network callbacks."""
    verdict = check_wasm(HEADER_FILTER.read_bytes())
    assert verdict.abi is not None
    assert (verdict.abi.version, verdict.abi.http, verdict.abi.network) == ("0.2.1", True, True)
    assert "proxy_on_request_headers" in verdict.abi.callbacks
    assert "proxy_on_new_connection" in verdict.abi.callbacks


def test_gc_types_do_not_confuse_the_reader() -> None:
    """Struct, array and recursive types before the function types keep the indices right."""
    body = (
        "(type $s (struct (field i8) (field (mut i32))))"
        "(rec (type $a (array i32)) (type $f (func (param (ref null $a)))))"
        '(func (export "g") (type $f))'
    )
    assert check_wasm(proxy_module(body=body)).problem == ""


def stored(tmp_path: Path, data: bytes) -> Module:
    path = tmp_path / "m.wasm"
    path.write_bytes(data)
    return Module(hashlib.sha256(data).hexdigest(), path, len(data))


async def test_preflight_checks_the_stored_file(tmp_path: Path) -> None:
    """The resolver's callable reads the cached file and answers off the event loop."""
    preflight = Preflight()
    try:
        verdict = await preflight(stored(tmp_path, HEADER_FILTER.read_bytes()))
        refused = await preflight(stored(tmp_path, EMPTY))
    finally:
        preflight.close()
    assert verdict.abi is not None
    assert verdict.abi.http
    assert refused.abi is None
    assert "ABI version" in refused.problem


async def test_preflight_that_takes_too_long_fails_and_may_be_retried(tmp_path: Path) -> None:
    """A check past its time bound is a retryable module_incompatible failure, not a verdict."""
    preflight = Preflight(timeout=0)
    try:
        with pytest.raises(ModuleIncompatibleError) as caught:
            await preflight(stored(tmp_path, HEADER_FILTER.read_bytes()))
    finally:
        preflight.close()
    assert caught.value.retryable
    assert "did not finish within 0s" in str(caught.value)


def test_a_module_the_reader_cannot_read_is_held_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader gap is a retryable failure, never a guess: the module is not served."""
    from wasmxds.modules import preflight as preflight_module
    from wasmxds.modules.wasmbin import Unreadable

    def unreadable(data: bytes) -> None:
        raise Unreadable("a form from the future")

    monkeypatch.setattr(preflight_module, "read_interface", unreadable)
    with pytest.raises(ModuleIncompatibleError) as caught:
        check_wasm(HEADER_FILTER.read_bytes())
    assert caught.value.retryable
    assert "cannot read the module's imports and exports (a form from the future)" in str(
        caught.value
    )
