"""Pure translation: (plugins, module outcomes, node) → Envoy resources.

Nothing here does I/O or keeps state; every function is a value-in,
value-out transformation that unit tests can drive without sockets.
"""
