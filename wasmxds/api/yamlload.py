"""YAML text to plain data with a line for every field, read the way Kubernetes reads it.

``kubectl`` turns YAML into JSON with go-yaml v2 (``sigs.k8s.io/yaml``),
which resolves unquoted scalars differently from PyYAML. The same WasmPlugin
must mean the same thing here as in Istio, so plain scalars are resolved with
go-yaml v2's rules rather than PyYAML's:

* ``y``, ``Y``, ``n``, ``N`` are booleans (as are yes/no/on/off/true/false);
* ``1e3`` and ``.5`` are numbers; ``10:30`` (a YAML 1.1 base-60 number in
  PyYAML) and ``2024-01-01`` (a timestamp in PyYAML) are strings;
* ``017`` is octal, ``0x1F`` hex, ``0b101`` binary, ``1_000`` is 1000;
* an integer beyond 64 bits written in decimal becomes a float.

What JSON cannot carry becomes an :class:`~wasmxds.api.convert.Issue` on the
document instead of an exception, because only WasmPlugin documents are
checked: ``.nan``/``.inf``, keys that are not strings (Kubernetes would turn
``on:`` into ``"true"`` silently), ``!!binary`` and other tags, duplicate keys,
and alias cycles. The offending value is dropped (or replaced by ``None``).

Merge keys (``<<: *base``) and aliases are expanded; the expansion is capped
so a "billion laughs" document cannot exhaust memory.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import yaml

from wasmxds.api.convert import FieldPath, Issue, LineTable, describe

__all__ = ["Document", "YamlSyntaxError", "load_documents"]

# The libyaml-backed loader is ~10x faster; both resolve through our hook.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_MERGE, _MAP, _SEQ = _TAG + "merge", _TAG + "map", _TAG + "seq"

_EXACT: dict[str, tuple[str, object]] = {}
for _words, _resolved in (
    ("y Y yes Yes YES true True TRUE on On ON", (_BOOL, True)),
    ("n N no No NO false False FALSE off Off OFF", (_BOOL, False)),
    ("~ null Null NULL", (_NULL, None)),
    (".nan .NaN .NAN", (_FLOAT, math.nan)),
    (".inf .Inf .INF +.inf +.Inf +.INF", (_FLOAT, math.inf)),
    ("-.inf -.Inf -.INF", (_FLOAT, -math.inf)),
):
    for _word in _words.split():
        _EXACT[_word] = _resolved
_EXACT[""] = (_NULL, None)

# go-yaml v2 yamlStyleFloat, and Go's strconv.ParseInt(s, 0, 64) syntax.
_GO_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_GO_INT = re.compile(r"([-+]?)(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)\Z")
_GO_INT_SHAPE = re.compile(r"[-+]?(0[xX][0-9a-fA-F]+|0[oO][0-9]+|0[bB][0-9]+|[0-9]+)\Z")

_MAX_NODES = 1_000_000


def _go_int(text: str) -> tuple[int | None, bool]:
    """Parse like Go's ParseInt/ParseUint (base 0, 64 bits): (value, out_of_range)."""
    match = _GO_INT.match(text)
    if match is None:
        return None, False
    sign, body = match.groups()
    if len(body) > 1 and body[0] == "0" and body[1].isdigit():
        magnitude = int(body, 8)
    else:
        magnitude = int(body, 0)
    value = -magnitude if sign == "-" else magnitude
    if -(2**63) <= value <= 2**63 - 1 or (sign == "" and value <= 2**64 - 1):
        return value, False
    return None, True


@functools.lru_cache(maxsize=8192)
def _resolve_plain(text: str) -> tuple[str, object]:
    """Tag and value of an unquoted scalar, following go-yaml v2's ``resolve``."""
    exact = _EXACT.get(text)
    if exact is not None:
        return exact
    first = text[0]
    if first == ".":
        if _GO_FLOAT.match(text):
            return _FLOAT, float(text)
    elif first.isdigit() or first in "+-":
        plain = text.replace("_", "")
        number, out_of_range = _go_int(plain)
        if number is not None:
            return _INT, number
        if _GO_FLOAT.match(plain):
            value = float(plain)
            if math.isfinite(value):
                return _FLOAT, value
        if out_of_range and _GO_INT_SHAPE.match(plain):
            # go-yaml keeps a too-large hex/octal/binary integer as a big int.
            sign = -1 if plain.startswith("-") else 1
            return _INT, sign * int(plain.lstrip("+-"), 0)
    return _STR, text


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """A safe loader whose plain scalars resolve as go-yaml v2 resolves them."""

    def resolve(self, kind: type[yaml.Node], value: str | None, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0] and value is not None:
            if value == "<<":
                return _MERGE
            return _resolve_plain(value)[0]
        tag: str = super().resolve(kind, value, implicit)
        return tag


class YamlSyntaxError(Exception):
    """The text is not YAML; ``line`` is 1-based (0 when unknown)."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document as plain data.

    ``value`` holds dicts, lists, str, int, float, bool and None only.
    ``lines`` knows the line of every mapping key and list item; ``issues``
    are the document's problems that JSON (and so Kubernetes) cannot express.
    """

    value: object
    lines: LineTable
    start_line: int
    issues: tuple[Issue, ...]


def load_documents(text: str) -> list[Document]:
    """Split ``text`` into documents; raises :class:`YamlSyntaxError` if it is not YAML.

    Empty documents (``---`` with nothing but comments) come back with value None.
    """
    loader = _Loader(text)
    documents: list[Document] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            documents.append(_Builder().document(node))
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc) from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YamlSyntaxError(f"invalid YAML: {exc.reason} (U+{code:04X})", line) from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"invalid YAML: {exc}", 0) from exc
    finally:
        loader.dispose()
    return documents


def _syntax_error(exc: yaml.MarkedYAMLError) -> YamlSyntaxError:
    """A readable message: the problem first, then where the construct began."""
    mark = exc.problem_mark or exc.context_mark
    message = f"invalid YAML: {exc.problem or exc.context or 'cannot parse'}"
    if exc.context and exc.problem:
        message += f" ({exc.context}"
        if exc.context_mark is not None and exc.context_mark.line != getattr(mark, "line", None):
            message += f" that starts on line {exc.context_mark.line + 1}"
        message += ")"
    return YamlSyntaxError(message, mark.line + 1 if mark is not None else 0)


class _Builder:
    """Turns one composed node tree into plain data, recording lines and issues."""

    def __init__(self) -> None:
        self.lines: dict[FieldPath, int] = {}
        self.issues: list[Issue] = []
        self.active: set[int] = set()
        self.count = 0

    def document(self, node: yaml.Node) -> Document:
        start = node.start_mark.line + 1
        self.lines[()] = start
        try:
            value = self.build(node, ())
        except _TooLarge:
            value = None
            self.issue((), start, f"the document expands to more than {_MAX_NODES} values")
        return Document(value, LineTable(self.lines), start, tuple(self.issues))

    def issue(self, path: FieldPath, line: int, message: str) -> None:
        self.issues.append(Issue(path, line, message))

    def build(self, node: yaml.Node, path: FieldPath) -> object:
        self.count += 1
        if self.count > _MAX_NODES:
            raise _TooLarge
        if id(node) in self.active:
            self.issue(path, node.start_mark.line + 1, "an alias refers to itself (a cycle)")
            return None
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ:
                return self.sequence(node, path)
            if isinstance(node, yaml.MappingNode) and node.tag == _MAP:
                return self.mapping(node, path)
        finally:
            self.active.discard(id(node))
        self.issue(path, node.start_mark.line + 1, f"unsupported YAML tag {node.tag}")
        return None

    def scalar(self, node: yaml.ScalarNode, path: FieldPath) -> object:
        line = node.start_mark.line + 1
        tag, text = node.tag, node.value
        value: object
        if tag == _STR or tag == _TAG + "timestamp":
            # Kubernetes keeps timestamps as the text that was written.
            return text
        if tag in (_INT, _FLOAT, _BOOL, _NULL):
            resolved_tag, value = _resolve_plain(text)
            if resolved_tag != tag and not (tag == _FLOAT and resolved_tag == _INT):
                self.issue(path, line, f"cannot read {text!r} as a {tag.removeprefix(_TAG)}")
                return None
            if tag == _FLOAT:
                value = float(value)  # type: ignore[arg-type]
        else:
            self.issue(path, line, f"unsupported YAML tag {tag}")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.issue(path, line, f"{text} is not a JSON number")
            return None
        return value

    def sequence(self, node: yaml.SequenceNode, path: FieldPath) -> list[object]:
        items: list[object] = []
        for index, child in enumerate(node.value):
            child_path = (*path, index)
            self.lines[child_path] = child.start_mark.line + 1
            items.append(self.build(child, child_path))
        return items

    def mapping(self, node: yaml.MappingNode, path: FieldPath) -> dict[str, object]:
        result: dict[str, object] = {}
        explicit: dict[str, int] = {}
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.extend(self.merge_sources(value_node, path))
                continue
            key_line = key_node.start_mark.line + 1
            key = self.key(key_node, path)
            if key is None:
                continue
            child_path = (*path, key)
            if key in explicit:
                self.issue(
                    child_path,
                    key_line,
                    f"duplicate key (first defined on line {explicit[key]})",
                )
                continue
            explicit[key] = key_line
            self.lines[child_path] = key_line
            result[key] = self.build(value_node, child_path)
        # Keys written in the mapping itself win over merged ones, and earlier
        # merge sources win over later ones (YAML merge key semantics).
        for key_node, value_node in merged:
            key = self.key(key_node, path)
            if key is None or key in result:
                continue
            child_path = (*path, key)
            self.lines[child_path] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, child_path)
        return result

    def merge_sources(self, node: yaml.Node, path: FieldPath) -> list[tuple[yaml.Node, yaml.Node]]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        pairs: list[tuple[yaml.Node, yaml.Node]] = []
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                self.issue(path, source.start_mark.line + 1, "a merge key (<<) needs a mapping")
                continue
            pairs.extend((k, v) for k, v in source.value if k.tag != _MERGE)
        return pairs

    def key(self, node: yaml.Node, path: FieldPath) -> str | None:
        line = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode) and node.tag in (_STR, _TAG + "timestamp"):
            return str(node.value)
        if isinstance(node, yaml.ScalarNode) and node.tag in (_INT, _FLOAT, _BOOL, _NULL):
            _, value = _resolve_plain(node.value)
            self.issue(
                path,
                line,
                f"key {node.value!r} is read as {describe(value)}, not a string"
                " (Kubernetes would silently turn it into a string); put it in quotes",
            )
            return None
        self.issue(path, line, "mapping keys must be strings")
        return None


class _TooLarge(Exception):
    """Alias expansion passed the node budget."""
