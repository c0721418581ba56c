"""Just enough protobuf wire format to assemble responses from pre-encoded pieces.

A serialized message is the concatenation of its encoded fields, in any order.
Resources are encoded once per version (as the bytes of a ``resources`` field);
a response for one stream is those bytes plus a few short fields — no message
objects are built or copied per stream. Tests parse the result with the real
message classes to prove it is well-formed.
"""

from __future__ import annotations

__all__ = ["length_delimited", "string_field", "varint"]

_LENGTH_DELIMITED = 2


def varint(value: int) -> bytes:
    if value < 0x80:  # tags, and the lengths of nonces and versions
        return _SMALL[value]
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """A bytes/string/message field: tag, length, payload."""
    return varint(field_number << 3 | _LENGTH_DELIMITED) + varint(len(payload)) + payload


def string_field(field_number: int, value: str) -> bytes:
    """A string field; empty strings are omitted, as proto3 serializers do."""
    return length_delimited(field_number, value.encode()) if value else b""


_SMALL = tuple(bytes((n,)) for n in range(0x80))
