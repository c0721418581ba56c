"""The xDS server: immutable snapshots, per-stream protocol state, and the gRPC edge."""
