"""wasmxds: Istio's WasmPlugin API for plain Envoy, over ECDS/ADS."""

__version__ = "0.1.0"
