"""JSON renderings that must be byte-for-byte stable.

:func:`compact_json` renders ``pluginConfig`` exactly as istiod does before
handing it to the plugin (``protomarshal.ToJSON``, i.e. golang/protobuf's
``jsonpb.Marshaler`` with no indent, which uses Go's ``encoding/json`` for
keys, strings and numbers). A plugin that parses its configuration gets the
same bytes from wasmxds as from Istio, and the resource only changes when the
configuration does:

* compact, object keys sorted (byte order, which for UTF-8 is code point order);
* numbers as Go formats a float64: ``1`` not ``1.0``, ``1e+21`` from 1e21 up,
  ``1e-7`` below 1e-6, shortest digits that round-trip;
* strings escaped as Go does: ``<``, ``>``, ``&``, U+2028 and U+2029 as
  ``\\u003c``-style escapes, other control characters as ``\\n``/``\\u001b``,
  everything else (non-ASCII included) written as is.

:func:`canonical_json` is the stable rendering of plain data used for
fingerprints: sorted keys, no whitespace, UTF-8.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal

from google.protobuf import struct_pb2

__all__ = ["canonical_json", "compact_json", "go_number", "go_string"]

# Where Python's json.dumps(ensure_ascii=False) and Go's encoding/json differ: Go
# escapes <, >, &, U+2028 and U+2029, and writes a lone surrogate as \ufffd. (Both
# write \b, \f, \n, \r, \t short, as Go does since 1.22, other controls as \u00XX.)
_GO_DIFFERS = re.compile("[<>&\u2028\u2029\ud800-\udfff]")


def go_string(text: str) -> str:
    """``text`` as Go's ``json.Marshal`` writes a string (HTML-safe escaping on).

    Python's encoder (C) already writes quotes, backslashes and control characters
    as Go does; only the HTML-unsafe characters and lone surrogates differ, and they
    are rare. A character-by-character loop took 20 ms per 64 KiB, and configuration
    values (from Secrets, say) are rendered on the event loop.
    """
    rendered = json.dumps(text, ensure_ascii=False)
    if _GO_DIFFERS.search(rendered) is None:
        return rendered
    return _GO_DIFFERS.sub(_go_escape, rendered)


def _go_escape(match: re.Match[str]) -> str:
    c = match.group()
    # A lone surrogate is invalid UTF-8, which Go writes as this escape.
    return "\\ufffd" if "\ud800" <= c <= "\udfff" else f"\\u{ord(c):04x}"


def go_number(value: float) -> str:
    """A float64 as Go's ``encoding/json`` writes it.

    Raises ValueError for NaN and infinities, which JSON cannot express.
    """
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a JSON number")
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    # repr() gives the shortest digits that round-trip, as Go's 'g'/-1 does.
    exact = Decimal(repr(value)).normalize()
    magnitude = abs(value)
    if 1e-6 <= magnitude < 1e21:
        return format(exact, "f")
    sign, digits, exponent = exact.as_tuple()
    assert isinstance(exponent, int)
    mantissa = "".join(map(str, digits))
    scientific = exponent + len(digits) - 1
    body = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
    # Go writes at least two exponent digits ("e+21") but trims "e-07" to "e-7".
    exp = f"e+{scientific:02d}" if scientific >= 0 else f"e-{-scientific}"
    return ("-" if sign else "") + body + exp


def _render_value(value: struct_pb2.Value, out: list[str]) -> None:
    kind = value.WhichOneof("kind")
    if kind == "null_value":
        out.append("null")
    elif kind == "bool_value":
        out.append("true" if value.bool_value else "false")
    elif kind == "number_value":
        number = value.number_value
        # jsonpb writes non-finite numbers as strings rather than failing.
        if math.isnan(number):
            out.append('"NaN"')
        elif math.isinf(number):
            out.append('"Infinity"' if number > 0 else '"-Infinity"')
        else:
            out.append(go_number(number))
    elif kind == "string_value":
        out.append(go_string(value.string_value))
    elif kind == "struct_value":
        _render_struct(value.struct_value, out)
    elif kind == "list_value":
        out.append("[")
        for index, item in enumerate(value.list_value.values):
            if index:
                out.append(",")
            _render_value(item, out)
        out.append("]")
    else:
        # Same failure as jsonpb ("nil Value"): istiod drops such a plugin.
        raise ValueError("a google.protobuf.Value has no kind set")


def _render_struct(struct: struct_pb2.Struct, out: list[str]) -> None:
    out.append("{")
    for index, key in enumerate(sorted(struct.fields)):
        if index:
            out.append(",")
        out.append(go_string(key))
        out.append(":")
        _render_value(struct.fields[key], out)
    out.append("}")


def compact_json(struct: struct_pb2.Struct) -> str:
    """Render ``struct`` as istiod renders ``pluginConfig`` (see the module docstring).

    Raises ValueError if a nested Value has no kind (istiod drops the plugin).
    """
    out: list[str] = []
    _render_struct(struct, out)
    return "".join(out)


def canonical_json(value: object) -> str:
    """Plain data as sorted, compact JSON; equal data gives equal text.

    Raises ValueError for data JSON cannot hold (NaN, non-string keys).
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
