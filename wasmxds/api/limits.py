"""How much input one config file or one object may hold.

A hostile or broken input must be refused cheaply, with a sentence saying
which limit it passed, rather than expanding into gigabytes or minutes of
work. The same limits apply wherever configuration comes in:

* a config file is refused whole when it is larger than ``max_bytes``, holds
  more than ``max_documents`` YAML documents, or expands (YAML aliases and
  merge keys counted every time they are used) to more than ``max_values``
  values, more than ``max_text`` characters of keys and strings, or nesting
  deeper than ``max_depth``; the file's last good content stays served;
* an object from the Kubernetes API server is refused past the same value,
  text and depth limits, and its last valid version stays served.

The figures are far beyond any real WasmPlugin or template file (a WasmPlugin
is a few dozen values, a hundred with the managedFields ``kubectl get -o yaml``
prints). An alias shares the value it names rather than copying it, so a file
costs what is written in it: a "billion laughs" file is refused in
milliseconds, and the dearest file to refuse, one that really writes
``max_values`` values (a megabyte or more of text), costs one to two seconds
of a worker thread and about 100 MiB at the peak. A config with more values
than that (a huge allow-list in ``pluginConfig``, say) should live in a file
the module fetches instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits", "check_value", "mib"]


def mib(size: int) -> str:
    """A byte count for messages: ``16 MiB``, or plain bytes below 1 MiB."""
    return f"{size / 2**20:g} MiB" if size >= 2**20 else f"{size} bytes"


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds on one config file (or one API object); see the module docstring."""

    max_bytes: int = 16 * 2**20
    max_documents: int = 10_000
    max_values: int = 250_000
    max_text: int = 16 * 2**20
    max_depth: int = 100

    def too_big(self) -> str:
        return (
            f"the file is larger than {mib(self.max_bytes)}, the limit for a config file;"
            " split it into several files"
        )

    def too_many_values(self, what: str) -> str:
        return (
            f"{what} expands to more than {self.max_values} values (YAML aliases and merge keys"
            " count every time they are used), the limit that protects the server from"
            ' "billion laughs" alias bombs; remove the repeated aliases, or split the content'
            " into several files"
        )

    def too_much_text(self, what: str) -> str:
        return (
            f"{what} expands to more than {mib(self.max_text)} of keys and strings (YAML"
            " aliases count every time they are used), the limit per file or object;"
            " remove the repeated aliases or make the values smaller"
        )

    def too_deep(self) -> str:
        return (
            f"values are nested more than {self.max_depth} levels deep here, the limit;"
            " flatten this structure"
        )


DEFAULT_LIMITS = Limits()


def check_value(value: object, what: str, limits: Limits = DEFAULT_LIMITS) -> str | None:
    """Why plain data (decoded JSON) passes ``limits``, or None when it is within them.

    Iterative, and stops at the first limit passed, so a huge or deep value
    costs no more than the limit to check. ``what`` names the value in the
    message ("the object").
    """
    values = text = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        values += 1
        if values > limits.max_values:
            return limits.too_many_values(what)
        if depth > limits.max_depth:
            return limits.too_deep()
        if isinstance(item, str):
            text += len(item)
        elif isinstance(item, Mapping):
            for key, child in item.items():
                text += len(key) if isinstance(key, str) else 0
                stack.append((child, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
        if text > limits.max_text:
            return limits.too_much_text(what)
        # Everything waiting on the stack will be counted: stop before walking it.
        if values + len(stack) > limits.max_values:
            return limits.too_many_values(what)
    return None
