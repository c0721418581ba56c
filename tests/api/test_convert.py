"""The strict data-to-proto converter and the Kubernetes-compatible YAML reader."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import struct_pb2

from wasmxds.api.convert import (
    NO_LINES,
    Issue,
    LineTable,
    convert,
    format_path,
    prefixed,
    suggest,
)
from wasmxds.api.objects import Severity
from wasmxds.api.proto import selector_pb2, wasm_pb2
from wasmxds.api.yamlload import YamlLimitError, YamlSyntaxError, load_documents


def spec_issues(value: object) -> list[str]:
    return [str(issue) for issue in convert(value, wasm_pb2.WasmPlugin, path=("spec",)).issues]


def yaml_value(text: str) -> Any:
    (document,) = load_documents(text)
    assert document.issues == ()
    return document.value


class TestConvert:
    def test_full_spec_converts(self) -> None:
        """Every field of the schema converts from its camelCase JSON name."""
        result = convert(
            {
                "selector": {"matchLabels": {"app": "web"}},
                "url": "oci://ghcr.io/acme/filter:1",
                "sha256": "a" * 64,
                "imagePullPolicy": "Always",
                "imagePullSecret": "pull",
                "pluginConfig": {"a": [1, "x", None, True, {"b": 2.5}]},
                "pluginName": "root",
                "phase": "AUTHZ",
                "priority": -3,
                "failStrategy": "FAIL_OPEN",
                "vmConfig": {
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": "HOST"}]
                },
                "match": [{"mode": "SERVER", "ports": [{"number": 8080}]}],
                "type": "NETWORK",
                "verificationKey": "k",
            },
            wasm_pb2.WasmPlugin,
        )
        assert result.ok
        assert result.issues == ()
        spec = result.message
        assert dict(spec.selector.match_labels) == {"app": "web"}
        assert spec.image_pull_policy == wasm_pb2.Always
        assert spec.priority.value == -3
        assert spec.fail_strategy == wasm_pb2.FAIL_OPEN
        assert spec.vm_config.env[1].value_from == wasm_pb2.HOST
        assert spec.match[0].mode == selector_pb2.SERVER
        assert spec.match[0].ports[0].number == 8080
        assert spec.type == wasm_pb2.NETWORK
        assert spec.plugin_config.fields["a"].list_value.values[4].struct_value.fields[
            "b"
        ].number_value == pytest.approx(2.5)

    def test_target_refs_and_optional_namespace(self) -> None:
        """Gateway API references keep proto3 presence for their optional namespace."""
        result = convert(
            {"targetRefs": [{"kind": "Gateway", "name": "gw", "namespace": ""}]},
            wasm_pb2.WasmPlugin,
        )
        assert result.ok
        assert result.message.targetRefs[0].HasField("namespace")

    def test_null_means_unset(self) -> None:
        """A YAML/JSON null leaves the field unset, as Kubernetes prunes it."""
        result = convert({"priority": None, "selector": None, "url": None}, wasm_pb2.WasmPlugin)
        assert result.ok
        assert not result.message.HasField("priority")
        assert not result.message.HasField("selector")
        assert result.present == frozenset()

    def test_present_records_written_fields(self) -> None:
        """Fields written with a zero value are recorded as present, with their full path."""
        result = convert(
            {"pluginName": "", "vmConfig": {"env": [{"name": "A", "value": ""}]}},
            wasm_pb2.WasmPlugin,
            path=("spec",),
        )
        assert ("spec", "pluginName") in result.present
        assert ("spec", "vmConfig", "env", 0, "value") in result.present
        assert ("spec", "url") not in result.present

    def test_empty_mapping_sets_message_presence(self) -> None:
        """``selector: {}`` is a present selector (Istio warns about it), not an absent one."""
        result = convert({"selector": {}}, wasm_pb2.WasmPlugin)
        assert result.message.HasField("selector")

    def test_zero_priority_is_present(self) -> None:
        """``priority: 0`` differs from no priority (unset sorts after every set value)."""
        result = convert({"priority": 0}, wasm_pb2.WasmPlugin)
        assert result.message.HasField("priority")
        assert result.message.priority.value == 0

    def test_integral_float_accepted_for_integers(self) -> None:
        """``8080.0`` is accepted for an integer field, as the Kubernetes API server accepts it."""
        result = convert({"match": [{"ports": [{"number": 8080.0}]}]}, wasm_pb2.WasmPlugin)
        assert result.ok
        assert result.message.match[0].ports[0].number == 8080

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param(
                {"image_pull_policy": "Always"},
                'spec.image_pull_policy: unknown field; did you mean "imagePullPolicy"?'
                " (Kubernetes accepts only the camelCase JSON name)",
                id="snake-case-name",
            ),
            pytest.param(
                {"Selector": {}},
                'spec.Selector: unknown field; did you mean "selector"?'
                " (field names are case-sensitive)",
                id="wrong-case",
            ),
            pytest.param(
                {"pluginConfg": {}},
                'spec.pluginConfg: unknown field; did you mean "pluginConfig"?',
                id="typo",
            ),
            pytest.param(
                {"zzz": 1},
                "spec.zzz: unknown field; valid fields: failStrategy, imagePullPolicy,"
                " imagePullSecret, match, phase, pluginConfig, pluginName, priority, selector,"
                " sha256, targetRef, targetRefs, type, url, verificationKey, vmConfig",
                id="nothing-close",
            ),
            pytest.param(
                {"url": 5},
                "spec.url: expected a string, got number 5 (unquoted yes/no/on/off/y/n/true/false"
                " are booleans and unquoted digits are numbers in YAML; put the value in quotes)",
                id="number-for-string",
            ),
            pytest.param(
                {"url": ["a"]}, "spec.url: expected a string, got a list", id="list-for-string"
            ),
            pytest.param(
                {"selector": "app=web"},
                'spec.selector: expected a mapping, got string "app=web"',
                id="string-for-message",
            ),
            pytest.param(
                {"match": {"ports": []}},
                "spec.match: expected a list, got a mapping",
                id="mapping-for-list",
            ),
            pytest.param(
                {"match": [None]},
                "spec.match[0]: list items must not be null",
                id="null-list-item",
            ),
            pytest.param(
                {"selector": {"matchLabels": {"app": 1}}},
                "spec.selector.matchLabels.app: expected a string, got number 1 (unquoted"
                " yes/no/on/off/y/n/true/false are booleans and unquoted digits are numbers in"
                " YAML; put the value in quotes)",
                id="number-label-value",
            ),
            pytest.param(
                {"selector": {"matchLabels": ["app"]}},
                "spec.selector.matchLabels: expected a mapping, got a list",
                id="list-for-map",
            ),
            pytest.param(
                {"phase": "authn"},
                'spec.phase: unknown value string "authn"; did you mean "AUTHN"?'
                " (values are case-sensitive)",
                id="enum-wrong-case",
            ),
            pytest.param(
                {"failStrategy": "FAIL_CLOSED"},
                'spec.failStrategy: unknown value string "FAIL_CLOSED";'
                " valid values: FAIL_CLOSE, FAIL_OPEN, FAIL_RELOAD",
                id="enum-unknown-name",
            ),
            pytest.param(
                {"phase": 1},
                "spec.phase: expected one of UNSPECIFIED_PHASE, AUTHN, AUTHZ, STATS (as a string),"
                " got number 1",
                id="enum-integer",
            ),
            pytest.param(
                {"priority": 2**31},
                "spec.priority: 2147483648 is out of range for int32 (-2147483648 to 2147483647)",
                id="priority-range",
            ),
            pytest.param(
                {"priority": "10"},
                'spec.priority: expected an integer, got string "10"',
                id="priority-string",
            ),
            pytest.param(
                {"priority": True},
                "spec.priority: expected an integer, got boolean true",
                id="priority-boolean",
            ),
            pytest.param(
                {"priority": 1.5},
                "spec.priority: expected an integer, got number 1.5",
                id="priority-fraction",
            ),
            pytest.param(
                {"match": [{"ports": [{"number": -1}]}]},
                "spec.match[0].ports[0].number: -1 is out of range for uint32 (0 to 4294967295)",
                id="port-negative",
            ),
            pytest.param(
                {"pluginConfig": ["a"]},
                "spec.pluginConfig: expected a mapping, got a list",
                id="plugin-config-not-mapping",
            ),
            pytest.param(
                {"pluginConfig": {"a": math.nan}},
                "spec.pluginConfig.a: nan is not a JSON number",
                id="plugin-config-nan",
            ),
            pytest.param(
                {"pluginConfig": {"a": {1: "x"}}},
                "spec.pluginConfig.a: keys must be strings, got number 1",
                id="plugin-config-int-key",
            ),
            pytest.param(
                {"pluginConfig": {"a": b"x"}},
                "spec.pluginConfig.a: bytes is not JSON data",
                id="plugin-config-bytes",
            ),
            pytest.param({1: "x"}, "spec: field names must be strings, got number 1", id="int-key"),
        ],
    )
    def test_schema_errors(self, value: object, expected: str) -> None:
        """Each kind of schema problem is reported once, naming the field and what is wrong."""
        assert spec_issues(value) == [expected]

    def test_all_problems_reported(self) -> None:
        """Conversion continues past the first problem and reports them all."""
        issues = spec_issues({"url": 1, "phase": "X", "bogus": 2})
        assert len(issues) == 3

    def test_big_integer_in_plugin_config_warns(self) -> None:
        """An integer beyond 2^53 in pluginConfig converts, with a precision warning."""
        result = convert({"pluginConfig": {"n": 2**60}}, wasm_pb2.WasmPlugin)
        assert result.ok
        (issue,) = result.issues
        assert issue.severity is Severity.WARNING
        assert "beyond 2^53" in issue.message

    def test_locator_gives_lines(self) -> None:
        """Problems get the line of the offending field from the locator."""
        lines = LineTable({(): 1, ("spec",): 5, ("spec", "phase"): 9})
        result = convert({"phase": "nope"}, wasm_pb2.WasmPlugin, path=("spec",), locate=lines)
        assert [issue.line for issue in result.issues] == [9]

    def test_plain_data_has_line_zero(self) -> None:
        """Without a locator (Kubernetes JSON), every line is 0."""
        result = convert({"phase": "nope"}, wasm_pb2.WasmPlugin)
        assert [issue.line for issue in result.issues] == [0]

    def test_unsupported_well_known_type_is_a_programming_error(self) -> None:
        """Converting into a well-known type the schema does not use raises instead of guessing."""
        from google.protobuf import duration_pb2

        with pytest.raises(TypeError, match="Duration"):
            convert({}, duration_pb2.Duration)

    def test_struct_and_list_value_roots(self) -> None:
        """Struct and ListValue convert directly from plain JSON data."""
        assert convert({"a": 1}, struct_pb2.Struct).ok
        assert convert([1, "a"], struct_pb2.ListValue).message.values[1].string_value == "a"
        assert convert(None, struct_pb2.Value).message.WhichOneof("kind") == "null_value"


class TestHelpers:
    @pytest.mark.parametrize(
        ("path", "rendered"),
        [
            pytest.param(
                ("spec", "vmConfig", "env", 0, "name"), "spec.vmConfig.env[0].name", id="index"
            ),
            pytest.param(
                ("spec", "selector", "matchLabels", "app.kubernetes.io/name"),
                'spec.selector.matchLabels["app.kubernetes.io/name"]',
                id="quoted-key",
            ),
            pytest.param(
                ("spec", "pluginConfig", "first-header"),
                "spec.pluginConfig.first-header",
                id="dash",
            ),
            pytest.param((), "", id="root"),
        ],
    )
    def test_format_path(self, path: tuple[str | int, ...], rendered: str) -> None:
        """Paths render as users write them, quoting keys that are not identifiers."""
        assert format_path(path) == rendered

    def test_line_table_falls_back_to_ancestor(self) -> None:
        """A path without its own line takes its nearest ancestor's (a missing field's parent)."""
        table = LineTable({(): 3, ("spec",): 7})
        assert table(("spec", "url")) == 7
        assert table(("metadata", "name")) == 3
        assert LineTable({})(("x",)) == 0

    def test_prefixed_locator(self) -> None:
        """A prefixed locator looks up paths inside a List item."""
        table = LineTable({("items", 1): 10, ("items", 1, "spec"): 12})
        assert prefixed(table, ("items", 1))(("spec", "url")) == 12
        assert prefixed(table, ())(("items", 1)) == 10
        assert NO_LINES(("a",)) == 0

    def test_issue_renders_with_and_without_path(self) -> None:
        """An issue names its field first, and becomes a Problem tied to a source."""
        issue = Issue(("spec", "url"), 4, "required")
        assert str(issue) == "spec.url: required"
        assert str(Issue((), 1, "whole object")) == "whole object"
        problem = issue.to_problem("a.yaml")
        assert str(problem) == "a.yaml:4: spec.url: required"

    def test_suggest_prefers_alias(self) -> None:
        """A known wrong spelling beats fuzzy matching."""
        assert "imagePullSecret" in suggest(
            "image_pull_secret",
            ["imagePullSecret"],
            aliases={"image_pull_secret": "imagePullSecret"},
        )


class TestYamlScalars:
    """Unquoted scalars resolve as Kubernetes' YAML parser (go-yaml v2) resolves them."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            pytest.param("y", True, id="y-is-true"),
            pytest.param("N", False, id="N-is-false"),
            pytest.param("yes", True, id="yes"),
            pytest.param("Off", False, id="Off"),
            pytest.param("~", None, id="tilde-null"),
            pytest.param("", None, id="empty-null"),
            pytest.param("10:30", "10:30", id="no-base-60"),
            pytest.param("2024-01-01", "2024-01-01", id="date-stays-text"),
            pytest.param("2023-10-27T07:05:04Z", "2023-10-27T07:05:04Z", id="timestamp-stays-text"),
            pytest.param("1e3", 1000.0, id="exponent-float"),
            pytest.param(".5", 0.5, id="leading-dot-float"),
            pytest.param("1.", 1.0, id="trailing-dot-float"),
            pytest.param("017", 15, id="octal"),
            pytest.param("0o17", 15, id="octal-prefix"),
            pytest.param("0x1F", 31, id="hex"),
            pytest.param("0b101", 5, id="binary"),
            pytest.param("-0x10", -16, id="negative-hex"),
            pytest.param("1_000", 1000, id="underscores"),
            pytest.param("+5", 5, id="plus-sign"),
            pytest.param("089", 89.0, id="bad-octal-is-float"),
            pytest.param("18446744073709551615", 2**64 - 1, id="uint64-max"),
            pytest.param("99999999999999999999", 1e20, id="huge-decimal-is-float"),
            pytest.param("0x1FFFFFFFFFFFFFFFFF", 0x1FFFFFFFFFFFFFFFFF, id="huge-hex-stays-int"),
            pytest.param("1e400", "1e400", id="overflowing-float-is-text"),
            pytest.param("1.2.3", "1.2.3", id="version-is-text"),
            pytest.param("+", "+", id="lone-sign-is-text"),
            pytest.param("<<x", "<<x", id="text"),
        ],
    )
    def test_plain_scalar(self, text: str, expected: object) -> None:
        """One row per go-yaml v2 resolution rule that differs from PyYAML or matters here."""
        value = yaml_value(f"v: {text}\n")["v"]
        assert value == expected
        assert type(value) is type(expected)

    def test_quoted_scalars_stay_strings(self) -> None:
        """Quoting keeps any text a string."""
        assert yaml_value("a: \"yes\"\nb: '1'\n") == {"a": "yes", "b": "1"}

    def test_explicit_tags(self) -> None:
        """Standard explicit tags convert; a contradicting one is reported."""
        assert yaml_value("a: !!str 5\nb: !!float 2\nc: !!int '7'\n") == {
            "a": "5",
            "b": 2.0,
            "c": 7,
        }
        (document,) = load_documents("a: !!int abc\n")
        assert [str(issue) for issue in document.issues] == ["a: cannot read 'abc' as a int"]

    def test_json_reads_as_yaml(self) -> None:
        """JSON files (tabs and escaped slashes included) read through the same loader."""
        assert yaml_value('{\n\t"a": 1,\n\t"b": "x\\/y",\n\t"c": [1.5, true, null]\n}') == {
            "a": 1,
            "b": "x/y",
            "c": [1.5, True, None],
        }


class TestYamlDocuments:
    def test_lines_of_keys_and_items(self) -> None:
        """Every key and list item gets its 1-based line."""
        (document,) = load_documents("# comment\na: 1\nb:\n  - x\n  - c: 2\n")
        assert document.start_line == 2
        assert document.lines(("a",)) == 2
        assert document.lines(("b",)) == 3
        assert document.lines(("b", 0)) == 4
        assert document.lines(("b", 1, "c")) == 5

    def test_multiple_and_empty_documents(self) -> None:
        """Documents split on ---; an empty one comes back as None."""
        documents = load_documents("a: 1\n---\n# nothing\n---\nb: 2\n")
        assert [d.value for d in documents] == [{"a": 1}, None, {"b": 2}]
        assert [d.start_line for d in documents] == [1, 4, 5]

    def test_merge_keys_and_aliases(self) -> None:
        """Merge keys and aliases expand; written keys win over merged ones."""
        value = yaml_value("base: &b {x: 1, y2: 2}\nuse:\n  <<: *b\n  x: 3\nagain: *b\n")
        assert value["use"] == {"x": 3, "y2": 2}
        assert value["again"] == {"x": 1, "y2": 2}

    def test_merge_of_a_list_of_mappings(self) -> None:
        """A merge key with a list merges each mapping, earlier ones winning."""
        value = yaml_value("a: &a {k: 1}\nb: &b {k: 2, j: 3}\nc:\n  <<: [*a, *b]\n")
        assert value["c"] == {"k": 1, "j": 3}

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            pytest.param(
                "a: 1\na: 2\n", "a: duplicate key (first defined on line 1)", id="duplicate-key"
            ),
            pytest.param(
                "on: 1\n",
                "key 'on' is read as boolean true, not a string (Kubernetes would silently turn it"
                " into a string); put it in quotes",
                id="boolean-key",
            ),
            pytest.param(
                "1: x\n",
                "key '1' is read as number 1, not a string (Kubernetes would silently turn it into"
                " a string); put it in quotes",
                id="integer-key",
            ),
            pytest.param("? [a]\n: x\n", "mapping keys must be strings", id="list-key"),
            pytest.param("a: .nan\n", "a: .nan is not a JSON number", id="nan"),
            pytest.param("a: -.inf\n", "a: -.inf is not a JSON number", id="infinity"),
            pytest.param(
                "a: !!binary aGk=\n",
                "a: unsupported YAML tag tag:yaml.org,2002:binary",
                id="binary",
            ),
            pytest.param("a: !custom x\n", "a: unsupported YAML tag !custom", id="custom-tag"),
            pytest.param(
                "a: !!set {x}\n", "a: unsupported YAML tag tag:yaml.org,2002:set", id="set"
            ),
            pytest.param("a: &x [*x]\n", "a[0]: an alias refers to itself (a cycle)", id="cycle"),
        ],
    )
    def test_document_issues(self, text: str, expected: str) -> None:
        """What JSON cannot hold is reported on the document, with the line, not raised."""
        (document,) = load_documents(text)
        assert [str(issue) for issue in document.issues] == [expected]
        assert all(issue.line >= 1 for issue in document.issues)

    def test_alias_bomb_is_capped(self) -> None:
        """A "billion laughs" document stops expanding and is refused at the line it stopped."""
        lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
        for level in range(1, 8):
            prev = f"*a{level - 1}"
            lines.append(f"a{level}: &a{level} [{', '.join([prev] * 10)}]")
        with pytest.raises(YamlLimitError) as raised:
            load_documents("\n".join(lines) + "\n")
        assert "expands to more than" in raised.value.message
        assert raised.value.line >= 1

    @pytest.mark.parametrize(
        ("text", "line", "fragment"),
        [
            pytest.param("a: [1, 2\n", 2, "invalid YAML", id="unclosed-flow"),
            pytest.param("a: b\n c: d\n  - e\n", 2, "invalid YAML", id="bad-indent"),
            pytest.param("a: *nope\n", 1, "undefined alias", id="undefined-alias"),
            pytest.param("a: 1\n---\nb: \x00\n", 3, "(U+0000)", id="control-char"),
        ],
    )
    def test_syntax_errors(self, text: str, line: int, fragment: str) -> None:
        """Text that is not YAML raises with the line of the problem."""
        with pytest.raises(YamlSyntaxError) as raised:
            load_documents(text)
        assert raised.value.line == line
        assert fragment in raised.value.message
