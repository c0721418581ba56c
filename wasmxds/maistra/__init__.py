"""Maistra's deprecated ServiceMeshExtension, converted to the WasmPlugin wasmxds serves."""
