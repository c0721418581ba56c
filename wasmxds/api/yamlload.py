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

Merge keys (``<<: *base``) and aliases are expanded. A whole file is bounded
(:mod:`wasmxds.api.limits`): its size, its number of documents, and, across
all its documents, the values and text it expands to and how deep it nests.
Each bound is checked while the text is read, so a "billion laughs" file is
abandoned after at most ``max_values`` values of work rather than read to
the end, and a file past a bound raises :class:`YamlLimitError` (a
:class:`YamlSyntaxError`: nothing of the file is used).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import yaml

from wasmxds.api.convert import FieldPath, Issue, LineTable, describe
from wasmxds.api.limits import DEFAULT_LIMITS, Limits
from wasmxds.errors import YamlLimitError, YamlSyntaxError

__all__ = ["Document", "YamlLimitError", "YamlSyntaxError", "load_documents"]

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
    """A safe loader whose plain scalars resolve as go-yaml v2 resolves them.

    With a budget, it also counts the nodes it composes: libyaml builds a
    whole document's node tree before any of it is looked at, and a big file
    of tiny values costs seconds and hundreds of MiB to compose, so the count
    must stop it on the way. Every node without an explicit tag passes
    through :meth:`resolve`; a node with one needs a ``!`` in the text, which
    :func:`load_documents` counts up front.
    """

    budget: _Budget | None = None

    def resolve(self, kind: type[yaml.Node], value: str | None, implicit: tuple[bool, bool]) -> str:
        if self.budget is not None:
            self.budget.composed()
        if kind is yaml.ScalarNode and implicit[0] and value is not None:
            if value == "<<":
                return _MERGE
            return _resolve_plain(value)[0]
        tag: str = super().resolve(kind, value, implicit)
        return tag


class _LimitPassed(Exception):
    """Raised inside the loader and builder; becomes a :class:`YamlLimitError`."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class _Budget:
    """What one file may still expand to, shared by all its documents."""

    def __init__(self, limits: Limits, tagged: int) -> None:
        self.limits = limits
        # Explicitly tagged nodes skip the loader's count; each needs a "!".
        self.composed_nodes = tagged
        self.values = 0
        self.text = 0
        self.documents = 0

    def composed(self) -> None:
        self.composed_nodes += 1
        if self.composed_nodes > self.limits.max_values:
            raise _LimitPassed(self.limits.too_many_values("the file"), None)

    def value(self, node: yaml.Node, depth: int) -> None:
        self.values += 1
        if self.values > self.limits.max_values:
            raise _LimitPassed(self.limits.too_many_values("the file"), _line(node))
        if depth > self.limits.max_depth:
            raise _LimitPassed(self.limits.too_deep(), _line(node))

    def charge(self, values: int, text: int, depth: int, line: int) -> None:
        """Count a value built before, used again through an alias, at ``line``."""
        self.values += values
        if self.values > self.limits.max_values:
            raise _LimitPassed(self.limits.too_many_values("the file"), line)
        if depth > self.limits.max_depth:
            raise _LimitPassed(self.limits.too_deep(), line)
        self.text += text
        if self.text > self.limits.max_text:
            raise _LimitPassed(self.limits.too_much_text("the file"), line)

    def chars(self, node: yaml.Node, count: int) -> None:
        self.text += count
        if self.text > self.limits.max_text:
            raise _LimitPassed(self.limits.too_much_text("the file"), _line(node))

    def document(self, line: int) -> None:
        self.documents += 1
        if self.documents > self.limits.max_documents:
            raise _LimitPassed(
                f"the file holds more than {self.limits.max_documents} YAML documents, the limit"
                " per file; split it into several files",
                line,
            )


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _shape(node: yaml.Node) -> str:
    """What a node is, for messages: ``the list``, ``the value 'x'``."""
    if isinstance(node, yaml.SequenceNode):
        return "the list"
    if isinstance(node, yaml.ScalarNode):
        text = node.value if len(node.value) <= 40 else node.value[:40] + "..."
        return f"the value {text!r}"
    return f"the {node.tag.removeprefix(_TAG)} value"


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


def load_documents(text: str, limits: Limits = DEFAULT_LIMITS) -> list[Document]:
    """Split ``text`` into documents; raises :class:`YamlSyntaxError` if it is not YAML.

    Raises :class:`YamlLimitError` when the text passes one of ``limits``.
    Empty documents (``---`` with nothing but comments) come back with value None.
    """
    if len(text) > limits.max_bytes:
        raise YamlLimitError(limits.too_big(), 1)
    budget = _Budget(limits, _tag_marks(text))
    loader = _Loader(text)
    loader.budget = budget
    documents: list[Document] = []
    last_line = 1
    try:
        while loader.check_node():
            node = loader.get_node()
            budget.document(_line(node))
            documents.append(_Builder(budget).document(node))
            last_line = int(node.end_mark.line) + 1
    except _LimitPassed as exc:
        line = exc.line if exc.line is not None else _next_line(loader, last_line)
        raise YamlLimitError(exc.message, line) from None
    except RecursionError:
        # A guard, not a path: libyaml stops nesting at 1,000 levels and the
        # builder at limits.max_depth, far below Python's recursion limit.
        raise YamlLimitError(limits.too_deep(), last_line) from None
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, limits) from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YamlSyntaxError(f"invalid YAML: {exc.reason} (U+{code:04X})", line) from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"invalid YAML: {exc}", 1) from exc
    finally:
        loader.dispose()
    return documents


def _tag_marks(text: str) -> int:
    """At least the number of explicit tags in ``text``: every tag starts with a ``!``.

    Counting every ``!`` over-counts (one inside a string is no tag), but
    libyaml starts a token after characters that are easy to miss (``\x85``,
    ``\u2028``, a BOM); no list of them can be trusted to be complete.
    """
    return text.count("!")


def _next_line(loader: _Loader, fallback: int) -> int:
    """Where the loader stopped composing: the line of the next event, when it can tell."""
    loader.budget = None
    try:
        event = loader.peek_event()
    except yaml.YAMLError:
        return fallback
    mark = getattr(event, "start_mark", None)
    return int(mark.line) + 1 if mark is not None else fallback


def _syntax_error(exc: yaml.MarkedYAMLError, limits: Limits) -> YamlSyntaxError:
    """A readable message: the problem first, then where the construct began."""
    mark = exc.problem_mark or exc.context_mark
    message = f"invalid YAML: {exc.problem or exc.context or 'cannot parse'}"
    if exc.context and exc.problem:
        message += f" ({exc.context}"
        if exc.context_mark is not None and exc.context_mark.line != getattr(mark, "line", None):
            message += f" that starts on line {exc.context_mark.line + 1}"
        message += ")"
    if "maximum nesting depth" in message:
        # libyaml's own guard, at 1,000 levels: usually brackets left open.
        message += (
            f"; values may nest at most {limits.max_depth} levels deep: close any bracket"
            " ([ or {) left open, or flatten this structure"
        )
    return YamlSyntaxError(message, mark.line + 1 if mark is not None else 1)


class _Builder:
    """Turns one composed node tree into plain data, recording lines and issues."""

    def __init__(self, budget: _Budget) -> None:
        self.lines: dict[FieldPath, int] = {}
        self.issues: list[Issue] = []
        self.active: set[int] = set()
        self.budget = budget
        self.built: set[int] = set()
        # Lists and mappings already built, with what they cost: (value, values,
        # text, levels below). Aliases share the value instead of copying it, so
        # a file costs what is written in it, not what it expands to; the
        # expansion is still charged to the budget in full. Lines are recorded
        # once, where the anchor is; a field inside an alias reports the line
        # where the alias is used (LineTable falls back to the nearest ancestor).
        # With the first problem found inside, its path relative to the value.
        self.reused: dict[int, tuple[object, int, int, int, Issue | None]] = {}
        # The line of the value being built and of the one holding it (see at()).
        self.here = self.parent_line = 1
        self.deepest = 0
        # Where the alias being expanded now was used: a limit passed inside an
        # expansion is reported there, not at the anchor the values come from.
        self.alias_line: int | None = None

    def document(self, node: yaml.Node) -> Document:
        start = node.start_mark.line + 1
        self.lines[()] = start
        self.here = self.parent_line = start
        try:
            value = self.build(node, ())
        except _LimitPassed as exc:
            if self.alias_line is not None:
                exc.line = self.alias_line
            raise
        return Document(value, LineTable(self.lines), start, tuple(self.issues))

    def issue(self, path: FieldPath, line: int, message: str) -> None:
        self.issues.append(Issue(path, line, message))

    def build(self, node: yaml.Node, path: FieldPath) -> object:
        depth = len(path) + 1
        reused = self.reused.get(id(node))
        if reused is not None:
            # An alias of a list or mapping built before without problems: the
            # same value again, charged in one step for everything it holds.
            value, values, text, height, issue = reused
            line = self.alias_line or self.parent_line
            self.budget.charge(values, text, depth + height, line)
            self.deepest = max(self.deepest, depth + height)
            if issue is not None:
                # The value is as broken here as where it was built; one issue
                # per use says so (its field, the first problem found).
                self.issue((*path, *issue.path), line, issue.message)
            return value
        self.budget.value(node, depth)
        self.deepest = max(self.deepest, depth)
        if id(node) in self.active:
            self.issue(path, node.start_mark.line + 1, "an alias refers to itself (a cycle)")
            return None
        if id(node) in self.built and self.alias_line is None:
            # An alias (its node was built before): what follows is its expansion.
            self.alias_line = self.parent_line
            value = self.node(node, path)
            self.alias_line = None
            return value
        self.built.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            return self.node(node, path)
        values, text, issues = self.budget.values - 1, self.budget.text, len(self.issues)
        outer, self.deepest = self.deepest, depth
        value = self.node(node, path)
        height = self.deepest - depth
        self.deepest = max(outer, self.deepest)
        first = None
        if len(self.issues) > issues:
            found = self.issues[issues]
            first = Issue(found.path[len(path) :], found.line, found.message)
        self.reused[id(node)] = (
            value,
            self.budget.values - values,
            self.budget.text - text,
            height,
            first,
        )
        return value

    def node(self, node: yaml.Node, path: FieldPath) -> object:
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
        self.budget.chars(node, len(text))
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
        here = self.here
        for index, child in enumerate(node.value):
            child_path = (*path, index)
            # An alias's node carries the anchor's line, not the line it is used on.
            line = here if id(child) in self.built else child.start_mark.line + 1
            self.at(child_path, line, here)
            items.append(self.build(child, child_path))
        return items

    def at(self, path: FieldPath, line: int, parent: int) -> None:
        """Note that the value at ``path`` is on ``line``, inside a value on line ``parent``.

        A line equal to the parent's is not stored: LineTable finds it from
        the parent, and a deep structure written on one line would otherwise
        store a path as long as its depth for every value.
        """
        if line != parent:
            self.lines[path] = line
        self.here, self.parent_line = line, parent

    def mapping(self, node: yaml.MappingNode, path: FieldPath) -> dict[str, object]:
        result: dict[str, object] = {}
        explicit: dict[str, int] = {}
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        sources: set[int] = set()
        here = self.here
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.extend(self.merge_sources(key_node, value_node, path, sources))
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
            self.at(child_path, key_line, here)
            result[key] = self.build(value_node, child_path)
        # Keys written in the mapping itself win over merged ones, and earlier
        # merge sources win over later ones (YAML merge key semantics).
        for key_node, value_node in merged:
            key = self.key(key_node, path)
            if key is None or key in result:
                continue
            child_path = (*path, key)
            self.at(child_path, key_node.start_mark.line + 1, here)
            result[key] = self.build(value_node, child_path)
        return result

    def merge_sources(
        self, merge_key: yaml.Node, node: yaml.Node, path: FieldPath, seen: set[int]
    ) -> list[tuple[yaml.Node, yaml.Node]]:
        """The (key, value) pairs a merge key (``<<``) brings into the mapping at ``path``.

        Every source and every pair is charged to the budget before it is
        kept, at the line of the ``<<``: ``<<: [*big, *big, ...]`` would
        otherwise build millions of pairs before any limit looked at them. A
        source already merged into this mapping adds nothing (its keys are
        there already), so it is skipped after its charge.
        """
        depth = len(path) + 1
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        pairs: list[tuple[yaml.Node, yaml.Node]] = []
        for source in items:
            self.budget.value(merge_key, depth)
            if not isinstance(source, yaml.MappingNode) or source.tag != _MAP:
                raise YamlSyntaxError(
                    f"invalid YAML: a merge key (<<) takes a mapping or a list of mappings,"
                    f" and {_shape(source)} on line {_line(source)} is not one;"
                    " anchor a mapping (&name) and merge it with <<: *name",
                    _line(merge_key),
                )
            if id(source) in seen:
                continue
            seen.add(id(source))
            for key, value in source.value:
                self.budget.value(merge_key, depth)
                if key.tag != _MERGE:
                    pairs.append((key, value))
        return pairs

    def key(self, node: yaml.Node, path: FieldPath) -> str | None:
        line = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            self.budget.chars(node, len(node.value))
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
