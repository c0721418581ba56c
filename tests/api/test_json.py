"""JSON renderings: istiod-compatible pluginConfig and canonical fingerprints."""

from __future__ import annotations

import json
import math

import pytest
from google.protobuf import struct_pb2

from wasmxds.api.convert import convert
from wasmxds.api.json import canonical_json, compact_json, go_number, go_string


def struct(value: dict[str, object]) -> struct_pb2.Struct:
    conversion = convert(value, struct_pb2.Struct)
    assert conversion.ok
    return conversion.message


class TestGoNumber:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param(1.0, "1", id="integral"),
            pytest.param(-2.0, "-2", id="negative-integral"),
            pytest.param(0.0, "0", id="zero"),
            pytest.param(-0.0, "-0", id="negative-zero"),
            pytest.param(1.5, "1.5", id="fraction"),
            pytest.param(0.1, "0.1", id="shortest-digits"),
            pytest.param(1e20, "100000000000000000000", id="below-1e21-fixed"),
            pytest.param(1e21, "1e+21", id="from-1e21-exponent"),
            pytest.param(1.2345e22, "1.2345e+22", id="exponent-with-fraction"),
            pytest.param(1e100, "1e+100", id="three-digit-exponent"),
            pytest.param(0.000001, "0.000001", id="1e-6-fixed"),
            pytest.param(1e-7, "1e-7", id="small-exponent-trimmed"),
            pytest.param(-1.5e-10, "-1.5e-10", id="negative-small"),
            pytest.param(123456789.0, "123456789", id="large-integral"),
            pytest.param(2.0**53, "9007199254740992", id="2-to-53"),
            pytest.param(5e-324, "5e-324", id="smallest-subnormal"),
            pytest.param(1.7976931348623157e308, "1.7976931348623157e+308", id="largest"),
        ],
    )
    def test_formats_like_go(self, value: float, expected: str) -> None:
        """Floats print as Go's encoding/json prints a float64."""
        assert go_number(value) == expected

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
    def test_rejects_non_finite(self, value: float) -> None:
        """NaN and infinities are not JSON numbers."""
        with pytest.raises(ValueError, match="not a JSON number"):
            go_number(value)


class TestGoString:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            pytest.param("plain", '"plain"', id="plain"),
            pytest.param('a"b\\c', '"a\\"b\\\\c"', id="quote-backslash"),
            pytest.param("\n\r\t\b\f", '"\\n\\r\\t\\b\\f"', id="short-escapes"),
            pytest.param("\x00\x1b", '"\\u0000\\u001b"', id="control-lowercase-hex"),
            pytest.param("<a&b>", '"\\u003ca\\u0026b\\u003e"', id="html-safe"),
            pytest.param("\u2028\u2029", '"\\u2028\\u2029"', id="line-separators"),
            pytest.param("é中😀\x7f", '"é中😀\x7f"', id="non-ascii-raw"),
            pytest.param("a\ud800b", '"a\\ufffdb"', id="lone-surrogate"),
        ],
    )
    def test_escapes_like_go(self, text: str, expected: str) -> None:
        """Strings are escaped as Go's json.Marshal escapes them."""
        assert go_string(text) == expected


class TestCompactJson:
    def test_openshift_example(self) -> None:
        """The OpenShift example's pluginConfig renders as istiod sends it (keys sorted)."""
        config = struct({"openid_server": "authn", "openid_realm": "ingress"})
        assert compact_json(config) == '{"openid_realm":"ingress","openid_server":"authn"}'

    def test_tsb_example_matches_istio_output(self) -> None:
        """The TSB example renders byte-for-byte as the Envoy config dump in its README shows."""
        config = struct(
            {"header": "x-ingress-header", "path": "response", "value": "from tsb ingress gateway"}
        )
        assert compact_json(config) == (
            '{"header":"x-ingress-header","path":"response","value":"from tsb ingress gateway"}'
        )

    def test_nested_values(self) -> None:
        """Nested objects, lists, numbers, booleans and null render compactly."""
        config = struct({"b": [1, 2.5, True, None, {"z": 1, "a": "x"}], "a": {}, "c": []})
        assert compact_json(config) == '{"a":{},"b":[1,2.5,true,null,{"a":"x","z":1}],"c":[]}'

    def test_key_order_is_code_point_order(self) -> None:
        """Keys sort by code point, which equals Go's byte order for UTF-8."""
        config = struct({"é": 1, "z": 2, "Z": 3, "\U0001f600": 4, "\uffff": 5})
        assert compact_json(config) == '{"Z":3,"z":2,"é":1,"\uffff":5,"\U0001f600":4}'

    def test_empty(self) -> None:
        """An empty Struct is an empty object."""
        assert compact_json(struct_pb2.Struct()) == "{}"

    def test_non_finite_numbers_become_strings(self) -> None:
        """Like jsonpb, NaN and infinities render as strings instead of failing."""
        config = struct_pb2.Struct()
        config.fields["n"].number_value = math.nan
        config.fields["i"].number_value = -math.inf
        assert compact_json(config) == '{"i":"-Infinity","n":"NaN"}'

    def test_value_without_kind_fails(self) -> None:
        """A Value with no kind cannot render; istiod drops such a plugin."""
        config = struct_pb2.Struct()
        config.fields["x"].SetInParent()
        with pytest.raises(ValueError, match="no kind"):
            compact_json(config)

    def test_output_is_valid_json(self) -> None:
        """Whatever the content, the output parses back to the same data."""
        data: dict[str, object] = {
            "s": '<tag> & \u2028 "q" \\ \x01',
            "n": [0.1, -3, 1e300, 1e-300],
            "o": {"k": None},
        }
        assert json.loads(compact_json(struct(data))) == data


class TestCanonicalJson:
    def test_key_order_and_whitespace_do_not_matter(self) -> None:
        """Equal data renders to equal text."""
        assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == canonical_json(
            {"a": [1, {"c": 3, "d": 2}], "b": 1}
        )
        assert canonical_json({"a": "é"}) == '{"a":"é"}'

    def test_rejects_nan(self) -> None:
        """NaN is not JSON, so it cannot take part in a fingerprint."""
        with pytest.raises(ValueError, match="Out of range"):
            canonical_json({"a": math.nan})
