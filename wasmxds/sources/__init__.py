"""Sources of desired state: WasmPlugin objects from directories (and, later, Kubernetes).

A source keeps the complete current set of valid objects and the problems it
found, and calls ``on_change`` whenever either changes. Invalid input never
replaces valid state: an object that stops validating keeps its last good version.
"""

from wasmxds.sources.state import SourceState

__all__ = ["SourceState"]
