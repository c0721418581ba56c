"""The WasmPlugin API: the object model, strict YAML parsing and Istio's validation rules."""
