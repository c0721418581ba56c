"""Real processes on loopback for end-to-end tests: Envoy, an echo upstream, wasmxds itself."""
