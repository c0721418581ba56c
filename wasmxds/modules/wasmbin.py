"""The imports and exports of a Wasm binary, read straight from its sections.

The pre-flight check needs only what a module imports and exports, with
function signatures. wasmtime reports those only for a compiled module, and
compiling costs ~0.4 s per MiB of code (Cranelift; seconds for a 10 MiB Go
module), while validating costs ~5-10 ms per MiB. So the module is validated
by wasmtime (:mod:`wasmxds.modules.preflight`) and then read here: the type,
import, function and export sections (binary format, WebAssembly core spec
§5.5, with the GC proposal's type forms), nothing else. Only validated bytes
reach this reader; a form it does not know raises :class:`Unreadable`, and
the check holds the module back rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Export", "Import", "Signature", "Unreadable", "WasmInterface", "read_interface"]

# External kinds (import and export descriptors).
FUNC, TABLE, MEMORY, GLOBAL, TAG = 0, 1, 2, 3, 4
KIND_NAMES = {FUNC: "function", TABLE: "table", MEMORY: "memory", GLOBAL: "global", TAG: "tag"}

_NUMERIC = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128"}
_PACKED = {0x78, 0x77}  # i8, i16 (struct and array fields only)
# Reference types written as one byte (funcref, externref, and the GC proposal's).
_REF_SHORTHANDS = set(range(0x69, 0x75))
_REF, _REF_NULL = 0x64, 0x63
_FUNC_TYPE, _STRUCT_TYPE, _ARRAY_TYPE = 0x60, 0x5F, 0x5E
_SUB, _SUB_FINAL, _REC = 0x50, 0x4F, 0x4E


class Unreadable(Exception):
    """The bytes use a form this reader does not know."""


@dataclass(frozen=True, slots=True)
class Signature:
    """A function type; non-numeric types are shown as ``ref``."""

    params: tuple[str, ...]
    results: tuple[str, ...]

    def __str__(self) -> str:
        results = ", ".join(self.results)
        return f"({', '.join(self.params)}) -> ({results})"


@dataclass(frozen=True, slots=True)
class Import:
    module: str
    name: str
    kind: int
    signature: Signature | None = None  # functions only

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True, slots=True)
class Export:
    name: str
    kind: int
    signature: Signature | None = None  # functions only


@dataclass(frozen=True, slots=True)
class WasmInterface:
    """What a module imports and exports, in the order the binary lists them."""

    imports: tuple[Import, ...]
    exports: tuple[Export, ...]


class _Reader:
    def __init__(self, data: bytes | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise Unreadable("unexpected end of section")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uleb(self) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise Unreadable("LEB128 number too long")

    def name(self) -> str:
        size = self.uleb()
        if self.pos + size > self.end:
            raise Unreadable("name runs past its section")
        raw = bytes(self.data[self.pos : self.pos + size])
        self.pos += size
        return raw.decode("utf-8", errors="replace")

    def valtype(self) -> str:
        code = self.byte()
        if code in _NUMERIC:
            return _NUMERIC[code]
        if code in _REF_SHORTHANDS:
            return "ref"
        if code in (_REF, _REF_NULL):
            self.uleb()  # heap type: an abstract type (one byte) or a type index
            return "ref"
        raise Unreadable(f"unknown value type 0x{code:02x}")

    def storage_type(self) -> None:
        if self.pos < self.end and self.data[self.pos] in _PACKED:
            self.pos += 1
        else:
            self.valtype()
        self.byte()  # mutability

    def limits(self) -> None:
        flags = self.byte()
        self.uleb()
        if flags & 0x01:
            self.uleb()
        if flags & 0x08:
            self.uleb()  # custom page size (log2)


def _composite(reader: _Reader) -> Signature | None:
    """One composite type: a function's signature; None for a struct or an array."""
    form = reader.byte()
    if form == _FUNC_TYPE:
        params = tuple(reader.valtype() for _ in range(reader.uleb()))
        results = tuple(reader.valtype() for _ in range(reader.uleb()))
        return Signature(params, results)
    if form == _STRUCT_TYPE:
        for _ in range(reader.uleb()):
            reader.storage_type()
        return None
    if form == _ARRAY_TYPE:
        reader.storage_type()
        return None
    raise Unreadable(f"unknown type form 0x{form:02x}")


def _subtype(reader: _Reader) -> Signature | None:
    if reader.pos < reader.end and reader.data[reader.pos] in (_SUB, _SUB_FINAL):
        reader.pos += 1
        for _ in range(reader.uleb()):
            reader.uleb()  # supertypes
    return _composite(reader)


def _types(reader: _Reader) -> list[Signature | None]:
    types: list[Signature | None] = []
    for _ in range(reader.uleb()):
        if reader.pos < reader.end and reader.data[reader.pos] == _REC:
            reader.pos += 1
            types.extend(_subtype(reader) for _ in range(reader.uleb()))
        else:
            types.append(_subtype(reader))
    return types


def _signature(types: list[Signature | None], index: int) -> Signature:
    if index >= len(types) or types[index] is None:
        raise Unreadable(f"function type {index} is not a function type")
    signature = types[index]
    assert signature is not None
    return signature


def read_interface(data: bytes) -> WasmInterface:
    """The imports and exports of a valid Wasm binary (raises :class:`Unreadable`)."""
    view = memoryview(data)
    if bytes(view[:8]) != b"\0asm\x01\0\0\0":
        raise Unreadable("not a Wasm 1.0 binary")
    sections: dict[int, _Reader] = {}
    reader = _Reader(view, 8)
    while reader.pos < reader.end:
        section_id = reader.byte()
        size = reader.uleb()
        start = reader.pos
        if start + size > reader.end:
            raise Unreadable("section runs past the end of the module")
        if section_id in (1, 2, 3, 7):
            sections[section_id] = _Reader(view, start, start + size)
        reader.pos = start + size
    types = _types(sections[1]) if 1 in sections else []
    imports: list[Import] = []
    functions: list[Signature] = []
    if 2 in sections:
        section = sections[2]
        for _ in range(section.uleb()):
            module, name = section.name(), section.name()
            kind = section.byte()
            signature = None
            if kind == FUNC:
                signature = _signature(types, section.uleb())
                functions.append(signature)
            elif kind == TABLE:
                section.valtype()
                section.limits()
            elif kind == MEMORY:
                section.limits()
            elif kind == GLOBAL:
                section.valtype()
                section.byte()
            elif kind == TAG:
                section.byte()
                section.uleb()
            else:
                raise Unreadable(f"unknown import kind {kind}")
            imports.append(Import(module, name, kind, signature))
    if 3 in sections:
        section = sections[3]
        functions.extend(_signature(types, section.uleb()) for _ in range(section.uleb()))
    exports: list[Export] = []
    if 7 in sections:
        section = sections[7]
        for _ in range(section.uleb()):
            name, kind, index = section.name(), section.byte(), section.uleb()
            if kind == FUNC:
                if index >= len(functions):
                    raise Unreadable(f"export {name!r} names function {index}, which is not there")
                exports.append(Export(name, kind, functions[index]))
            else:
                exports.append(Export(name, kind))
    return WasmInterface(tuple(imports), tuple(exports))
