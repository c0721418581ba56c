"""Strict conversion of plain data (as decoded from YAML or JSON) into protobuf messages.

The converter walks a message descriptor alongside the data and reports every
problem it finds instead of stopping at the first one. It follows what the
Kubernetes API server would accept for a CRD generated from the same proto:

* field names are the JSON (camelCase) names only; ``image_pull_policy`` is an
  unknown field with a "did you mean imagePullPolicy?" hint, as ``kubectl``
  would reject it;
* enums are accepted by name only (the CRD declares them ``type: string``);
* ``null`` means "not set", as Kubernetes prunes nulls before validation;
* integers must be integers (an integral float such as ``1.0`` is accepted,
  as the API server does) and fit the field's protobuf type;
* ``google.protobuf.Struct`` takes arbitrary JSON data and the wrapper types
  (``Int32Value``...) take their plain value.

Data does not have to come from a file: lines come from an optional
``locator`` that maps a :data:`FieldPath` to a 1-based line (0 = unknown), so
the Kubernetes source can feed decoded JSON dicts through the same code.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from google.protobuf import descriptor, struct_pb2
from google.protobuf.message import Message

from wasmxds.api.objects import Problem, Severity

__all__ = [
    "NO_LINES",
    "Conversion",
    "FieldPath",
    "Issue",
    "LineTable",
    "Locator",
    "convert",
    "describe",
    "format_path",
    "prefixed",
    "suggest",
]

FieldPath = tuple[str | int, ...]
"""Where a value sits in an object: field names and map keys (str), list indexes (int)."""

Locator = Callable[[FieldPath], int]
"""Maps a field path to its 1-based source line, or 0 when unknown."""

M = TypeVar("M", bound=Message)

_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")

# Beyond 2**53 a float64 (what a JSON number becomes in a Struct, in Istio as
# here) no longer holds every integer.
_MAX_EXACT_INT = 2**53


def NO_LINES(path: FieldPath) -> int:
    """The locator for data without source positions."""
    del path
    return 0


def format_path(path: FieldPath) -> str:
    """Render a path the way users write it: ``spec.vmConfig.env[0].name``.

    Keys that are not identifier-like (label keys with dots or slashes) are
    JSON-quoted in brackets: ``spec.selector.matchLabels["app.kubernetes.io/name"]``.
    """
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _SIMPLE_KEY.match(part):
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{json.dumps(part, ensure_ascii=False)}]")
    return "".join(out)


def prefixed(locate: Locator, prefix: FieldPath) -> Locator:
    """A locator for a sub-object (a ``kind: List`` item) of the one ``locate`` knows."""
    if not prefix:
        return locate
    return lambda path: locate(prefix + path)


class LineTable:
    """Lines recorded for field paths; a missing path falls back to its nearest ancestor.

    The fallback is what makes a missing required field point at its parent
    mapping, and a value inside a multi-line scalar at the key that holds it.
    """

    __slots__ = ("_default", "_lines")

    def __init__(self, lines: Mapping[FieldPath, int], *, default: int = 0) -> None:
        self._lines = dict(lines)
        self._default = default

    def __call__(self, path: FieldPath) -> int:
        for end in range(len(path), 0, -1):
            line = self._lines.get(path[:end])
            if line is not None:
                return line
        return self._lines.get((), self._default)

    def __len__(self) -> int:
        return len(self._lines)


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in an object, before it is tied to a file.

    ``rule`` names the :data:`wasmxds.api.validate.CHECKS` entry that found it;
    schema problems found while converting have ``rule == ""``.
    """

    path: FieldPath
    line: int
    message: str
    severity: Severity = Severity.ERROR
    rule: str = ""

    def __str__(self) -> str:
        return f"{format_path(self.path)}: {self.message}" if self.path else self.message

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def to_problem(self, source: str) -> Problem:
        """Attach the issue to ``source`` (a file path, or ``kubernetes:ns/name``)."""
        return Problem(path=source, line=self.line, message=str(self), severity=self.severity)


@dataclass(frozen=True, slots=True)
class Conversion(Generic[M]):
    """The outcome of :func:`convert`.

    ``message`` holds everything that converted cleanly; it is only meaningful
    when there are no error issues. ``present`` lists every field path that was
    given a non-null value, which proto3 cannot tell apart from an explicit
    zero value (``pluginName: ""`` versus no ``pluginName``); the semantic
    checks need that to apply the CRD's ``minLength: 1`` rules.
    """

    message: M
    issues: tuple[Issue, ...]
    present: frozenset[FieldPath]

    @property
    def ok(self) -> bool:
        return not any(issue.is_error for issue in self.issues)


def convert(
    value: object,
    message_type: type[M],
    *,
    path: FieldPath = (),
    locate: Locator = NO_LINES,
) -> Conversion[M]:
    """Convert ``value`` into a new ``message_type``, collecting every problem.

    ``path`` is where ``value`` sits in the enclosing object (``("spec",)``
    for a WasmPlugin spec) and prefixes every reported path; ``locate`` is
    asked for lines with those full paths.
    """
    result = message_type()
    walker = _Walker(locate)
    walker.message(value, result, path)
    return Conversion(result, tuple(walker.issues), frozenset(walker.present))


def describe(value: object) -> str:
    """Name the JSON type of ``value`` for an error message (``boolean true``, ``a mapping``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {json.dumps(value, ensure_ascii=False)}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def suggest(
    name: str, candidates: Iterable[str], *, aliases: Mapping[str, str] | None = None
) -> str:
    """A hint for an unknown field name, or "" when nothing is close.

    ``aliases`` maps names that are wrong but recognisable (a proto field's
    snake_case name) to the right one.
    """
    options = sorted(candidates)
    if aliases and name in aliases:
        right = aliases[name]
        return f'did you mean "{right}"? (Kubernetes accepts only the camelCase JSON name)'
    folded = {option.casefold(): option for option in options}
    if name.casefold() in folded:
        return f'did you mean "{folded[name.casefold()]}"? (field names are case-sensitive)'
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if close:
        return f'did you mean "{close[0]}"?'
    return "valid fields: " + ", ".join(options)


_INT_RANGES: dict[int, tuple[int, int, str]] = {
    descriptor.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1, "int32"),
    descriptor.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1, "int32"),
    descriptor.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1, "int32"),
    descriptor.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1, "uint32"),
    descriptor.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1, "uint32"),
    descriptor.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1, "int64"),
    descriptor.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1, "int64"),
    descriptor.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1, "int64"),
    descriptor.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1, "uint64"),
    descriptor.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1, "uint64"),
}

_WRAPPERS = frozenset(
    f"google.protobuf.{name}"
    for name in (
        "DoubleValue",
        "FloatValue",
        "Int64Value",
        "UInt64Value",
        "Int32Value",
        "UInt32Value",
        "BoolValue",
        "StringValue",
    )
)

_QUOTE_HINT = (
    " (unquoted yes/no/on/off/y/n/true/false are booleans and unquoted digits are numbers"
    " in YAML; put the value in quotes)"
)


class _Walker:
    """One conversion: the descriptor-guided walk and the issues it collects."""

    def __init__(self, locate: Locator) -> None:
        self.locate = locate
        self.issues: list[Issue] = []
        self.present: set[FieldPath] = set()

    def error(self, path: FieldPath, text: str, severity: Severity = Severity.ERROR) -> None:
        self.issues.append(Issue(path, self.locate(path), text, severity))

    # Messages ---------------------------------------------------------------

    def message(self, value: object, msg: Message, path: FieldPath) -> None:
        full_name = msg.DESCRIPTOR.full_name
        if full_name == "google.protobuf.Struct":
            self.struct(value, msg, path)  # type: ignore[arg-type]
            return
        if full_name == "google.protobuf.Value":
            self.json_value(value, msg, path)  # type: ignore[arg-type]
            return
        if full_name == "google.protobuf.ListValue":
            self.list_value(value, msg, path)  # type: ignore[arg-type]
            return
        if full_name in _WRAPPERS:
            field = _fields(msg.DESCRIPTOR)["value"]
            scalar = self.scalar(value, field, path)
            if scalar is not _INVALID:
                msg.value = scalar  # type: ignore[attr-defined]
            return
        if full_name.startswith("google.protobuf."):
            # The WasmPlugin schema needs no other well-known type; treating
            # one as a plain message would accept the wrong JSON form.
            raise TypeError(f"conversion of {full_name} is not supported")
        if not isinstance(value, Mapping):
            self.error(path, f"expected a mapping, got {describe(value)}")
            return
        fields = _fields(msg.DESCRIPTOR)
        by_json = {field.json_name: field for field in fields.values()}
        aliases = {f.name: f.json_name for f in fields.values() if f.name != f.json_name}
        for key, item in value.items():
            if not isinstance(key, str):
                self.error(path, f"field names must be strings, got {describe(key)}")
                continue
            item_path = (*path, key)
            known = by_json.get(key)
            if known is None:
                self.error(item_path, f"unknown field; {suggest(key, by_json, aliases=aliases)}")
                continue
            if item is None:
                continue
            self.present.add(item_path)
            self.field(item, msg, known, item_path)

    def field(
        self,
        value: object,
        msg: Message,
        field: descriptor.FieldDescriptor,
        path: FieldPath,
    ) -> None:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            self.map_field(value, getattr(msg, field.name), field.message_type, path)
        elif field.is_repeated:
            self.repeated(value, getattr(msg, field.name), field, path)
        elif field.message_type is not None:
            sub = getattr(msg, field.name)
            sub.SetInParent()
            self.message(value, sub, path)
        else:
            scalar = self.scalar(value, field, path)
            if scalar is not _INVALID:
                setattr(msg, field.name, scalar)

    def map_field(
        self,
        value: object,
        target: object,
        entry: descriptor.Descriptor,
        path: FieldPath,
    ) -> None:
        if not isinstance(value, Mapping):
            self.error(path, f"expected a mapping, got {describe(value)}")
            return
        key_field, value_field = _fields(entry)["key"], _fields(entry)["value"]
        if key_field.type != descriptor.FieldDescriptor.TYPE_STRING:
            raise TypeError(f"map keys of type {key_field.type} are not supported")
        for key, item in value.items():
            if not isinstance(key, str):
                self.error(path, f"keys must be strings, got {describe(key)}")
                continue
            item_path = (*path, key)
            if value_field.message_type is not None:
                self.message(item, target[key], item_path)  # type: ignore[index]
                continue
            scalar = self.scalar(item, value_field, item_path)
            if scalar is not _INVALID:
                target[key] = scalar  # type: ignore[index]

    def repeated(
        self,
        value: object,
        target: object,
        field: descriptor.FieldDescriptor,
        path: FieldPath,
    ) -> None:
        if not isinstance(value, list | tuple):
            self.error(path, f"expected a list, got {describe(value)}")
            return
        for index, item in enumerate(value):
            item_path = (*path, index)
            if item is None:
                self.error(item_path, "list items must not be null")
                continue
            if field.message_type is not None:
                self.message(item, target.add(), item_path)  # type: ignore[attr-defined]
                continue
            scalar = self.scalar(item, field, item_path)
            if scalar is not _INVALID:
                target.append(scalar)  # type: ignore[attr-defined]

    # Scalars ------------------------------------------------------------------

    def scalar(self, value: object, field: descriptor.FieldDescriptor, path: FieldPath) -> object:
        kind = field.type
        types = descriptor.FieldDescriptor
        if kind == types.TYPE_STRING:
            if isinstance(value, str):
                return value
            hint = _QUOTE_HINT if isinstance(value, bool | int | float) else ""
            self.error(path, f"expected a string, got {describe(value)}{hint}")
            return _INVALID
        if kind == types.TYPE_BOOL:
            if isinstance(value, bool):
                return value
            self.error(path, f"expected a boolean, got {describe(value)}")
            return _INVALID
        if kind == types.TYPE_ENUM and field.enum_type is not None:
            return self.enum(value, field.enum_type, path)
        if kind in _INT_RANGES:
            return self.integer(value, kind, path)
        if kind in (types.TYPE_DOUBLE, types.TYPE_FLOAT):
            if (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                return float(value)
            self.error(path, f"expected a number, got {describe(value)}")
            return _INVALID
        raise TypeError(f"fields of type {kind} are not supported")

    def integer(self, value: object, kind: int, path: FieldPath) -> object:
        low, high, name = _INT_RANGES[kind]
        number: int
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(path, f"expected an integer, got {describe(value)}")
            return _INVALID
        if isinstance(value, float):
            if not value.is_integer():
                self.error(path, f"expected an integer, got {describe(value)}")
                return _INVALID
            number = int(value)
        else:
            number = value
        if not low <= number <= high:
            self.error(path, f"{number} is out of range for {name} ({low} to {high})")
            return _INVALID
        return number

    def enum(self, value: object, enum_type: descriptor.EnumDescriptor, path: FieldPath) -> object:
        names = [v.name for v in enum_type.values]
        if isinstance(value, str) and value in enum_type.values_by_name:
            return enum_type.values_by_name[value].number
        valid = ", ".join(names)
        if isinstance(value, str):
            folded = {name.casefold(): name for name in names}
            if value.casefold() in folded:
                hint = f'; did you mean "{folded[value.casefold()]}"? (values are case-sensitive)'
                self.error(path, f"unknown value {describe(value)}{hint}")
                return _INVALID
            self.error(path, f"unknown value {describe(value)}; valid values: {valid}")
            return _INVALID
        self.error(path, f"expected one of {valid} (as a string), got {describe(value)}")
        return _INVALID

    # JSON data (google.protobuf.Struct) -----------------------------------------

    def struct(self, value: object, msg: struct_pb2.Struct, path: FieldPath) -> None:
        if not isinstance(value, Mapping):
            self.error(path, f"expected a mapping, got {describe(value)}")
            return
        for key, item in value.items():
            if not isinstance(key, str):
                self.error(path, f"keys must be strings, got {describe(key)}")
                continue
            self.json_value(item, msg.fields[key], (*path, key))

    def list_value(self, value: object, msg: struct_pb2.ListValue, path: FieldPath) -> None:
        if not isinstance(value, list | tuple):
            self.error(path, f"expected a list, got {describe(value)}")
            return
        for index, item in enumerate(value):
            self.json_value(item, msg.values.add(), (*path, index))

    def json_value(self, value: object, msg: struct_pb2.Value, path: FieldPath) -> None:
        if value is None:
            msg.null_value = struct_pb2.NULL_VALUE
        elif isinstance(value, bool):
            msg.bool_value = value
        elif isinstance(value, int):
            if abs(value) > _MAX_EXACT_INT:
                self.error(
                    path,
                    f"integer {value} is beyond 2^53 and becomes {float(value)!r} as a JSON"
                    " number (in Istio too); quote it to keep every digit",
                    Severity.WARNING,
                )
            try:
                msg.number_value = float(value)
            except OverflowError:
                self.error(path, f"number {value} is too large for a JSON number")
        elif isinstance(value, float):
            if not math.isfinite(value):
                self.error(path, f"{value!r} is not a JSON number")
                return
            msg.number_value = value
        elif isinstance(value, str):
            msg.string_value = value
        elif isinstance(value, Mapping):
            msg.struct_value.SetInParent()
            self.struct(value, msg.struct_value, path)
        elif isinstance(value, list | tuple):
            msg.list_value.SetInParent()
            self.list_value(value, msg.list_value, path)
        else:
            self.error(path, f"{describe(value)} is not JSON data")


def _fields(message_descriptor: Any) -> dict[str, descriptor.FieldDescriptor]:
    """A message's fields by proto name.

    The stubs type descriptors as a union of the Python and upb classes, which
    share an interface but no base class; this is the one place that bridges them.
    """
    return cast("dict[str, descriptor.FieldDescriptor]", dict(message_descriptor.fields_by_name))


class _Invalid:
    """Marks a scalar that failed conversion (``None`` is a valid outcome elsewhere)."""

    __slots__ = ()


_INVALID = _Invalid()
