"""Wasm modules: fetch (http, file; oci in its own package), verify, and cache by content."""
