"""The section reader agrees with wasmtime's own view of a module's imports and exports."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

from tests.modules.wat import module, proxy_module
from wasmxds.modules.wasmbin import (
    FUNC,
    GLOBAL,
    MEMORY,
    TABLE,
    Export,
    Import,
    Signature,
    Unreadable,
    WasmInterface,
    read_interface,
)

HEADER_FILTER = Path(__file__).resolve().parents[2] / "examples/header-filter/header-filter.wasm"


def _shape(kind: object) -> tuple[int, Signature | None]:
    if isinstance(kind, wasmtime.FuncType):
        return FUNC, Signature(
            tuple(str(v) for v in kind.params), tuple(str(v) for v in kind.results)
        )
    if isinstance(kind, wasmtime.MemoryType):
        return MEMORY, None
    if isinstance(kind, wasmtime.TableType):
        return TABLE, None
    assert isinstance(kind, wasmtime.GlobalType)
    return GLOBAL, None


def compiled_interface(data: bytes) -> WasmInterface:
    """wasmtime's view, from a compiled module (numeric types only: it aborts on v128)."""
    compiled = wasmtime.Module(wasmtime.Engine(), data)
    imports = [Import(i.module, i.name or "", *_shape(i.type)) for i in compiled.imports]
    exports = [Export(e.name, *_shape(e.type)) for e in compiled.exports]
    return WasmInterface(tuple(imports), tuple(exports))


@pytest.mark.parametrize(
    "data",
    [
        HEADER_FILTER.read_bytes(),
        proxy_module(
            network=True,
            imports='(import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))'
            '(import "env" "t" (table 1 funcref))'
            '(import "wasi_unstable" "fd_seek" (func (param i32 i64 i32 i32) (result i32)))',
            body='(func (export "f") (param f32 f64) (result i64 i32) i64.const 0 i32.const 0)'
            '(global (export "g") i32 (i32.const 1))',
        ),
    ],
    ids=["header-filter", "mixed"],
)
def test_reader_matches_wasmtime(data: bytes) -> None:
    """Every import and export, with kinds and function signatures, as wasmtime sees them."""
    assert read_interface(data) == compiled_interface(data)


def test_signatures_and_kinds() -> None:
    """An i64 parameter, a table import and a memory export read as what they are; v128
    (which wasmtime's type listing cannot show) reads too."""
    data = module(
        '(module (import "wasi_unstable" "fd_seek" (func (param i32 i64 i32 i32) (result i32)))'
        ' (import "env" "t" (table 1 funcref)) (memory (export "memory") 1)'
        ' (func (export "simd") (param v128)))'
    )
    interface = read_interface(data)
    assert [(i.qualified, i.kind) for i in interface.imports] == [
        ("wasi_unstable.fd_seek", FUNC),
        ("env.t", TABLE),
    ]
    assert interface.imports[0].signature == Signature(("i32", "i64", "i32", "i32"), ("i32",))
    assert [(e.name, e.kind) for e in interface.exports] == [("memory", MEMORY), ("simd", FUNC)]
    assert interface.exports[1].signature == Signature(("v128",), ())


def test_non_wasm_bytes_are_unreadable() -> None:
    """Anything but a Wasm 1.0 binary is refused by the reader (validation runs first anyway)."""
    with pytest.raises(Unreadable):
        read_interface(b"\0asm\x0d\0\x01\0")
    with pytest.raises(Unreadable):
        read_interface(bytes(wasmtime.wat2wasm("(module)"))[:8] + b"\x07\x05")
