"""Wasm modules from OCI registries: an async distribution client over the SSRF-guarded
transport, credentials, and every image layout Wasm modules are published in."""
