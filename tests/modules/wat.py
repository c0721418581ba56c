"""Small real Wasm modules for the pre-flight tests, written as WAT and assembled by wasmtime."""

from __future__ import annotations

import wasmtime

__all__ = ["EMPTY", "module", "proxy_module"]

_HTTP = """
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0)
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) i32.const 0)"""
_NETWORK = """
  (func (export "proxy_on_new_connection") (param i32) (result i32) i32.const 0)
  (func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32) i32.const 0)"""


def module(text: str) -> bytes:
    """Assemble one WAT module."""
    return bytes(wasmtime.wat2wasm(text))


# A valid Wasm module with nothing in it: not a proxy-wasm module.
EMPTY = module("(module)")


def proxy_module(
    *,
    abi: str = "0_2_1",
    http: bool = True,
    network: bool = False,
    imports: str = "",
    body: str = "",
    memory: bool = True,
    malloc: bool = True,
    context: bool = True,
) -> bytes:
    """A minimal proxy-wasm module: the ABI export, memory, malloc, context creation, and
    the HTTP and/or network callbacks asked for (``imports`` and ``body`` add WAT)."""
    parts = [imports]
    if memory:
        parts.append('(memory (export "memory") 1)')
    if abi:
        parts.append(f'(func (export "proxy_abi_version_{abi}"))')
    if malloc:
        parts.append('(func (export "malloc") (param i32) (result i32) i32.const 0)')
    if context:
        parts.append('(func (export "proxy_on_context_create") (param i32 i32))')
    if http:
        parts.append(_HTTP)
    if network:
        parts.append(_NETWORK)
    parts.append(body)
    return module("(module\n" + "\n".join(parts) + "\n)")
