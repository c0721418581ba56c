"""Files, documents and objects to validated WasmPlugins."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from wasmxds.api.json import compact_json
from wasmxds.api.objects import ObjectKey, Origin, Severity
from wasmxds.api.parse import (
    ParsedFile,
    fingerprint,
    parse_bytes,
    parse_file,
    parse_object,
    parse_text,
)
from wasmxds.api.proto import wasm_pb2

DATA = Path(__file__).parent / "data"

HEADER = """\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
"""


def plugin_yaml(
    name: str = "p", *, spec: str = "url: oci://ghcr.io/acme/f:v1", extra: str = ""
) -> str:
    return (
        HEADER
        + f"metadata:\n  name: {name}\n"
        + extra
        + "spec:\n"
        + textwrap.indent(spec, "  ")
        + "\n"
    )


def problems(parsed: ParsedFile) -> list[str]:
    return [str(problem) for problem in parsed.problems]


def parse(text: str) -> ParsedFile:
    return parse_text(textwrap.dedent(text), "f.yaml")


class TestExamples:
    """The seed documents' examples: the valid ones pass, the broken ones explain themselves."""

    @pytest.mark.parametrize(
        ("name", "key", "line"),
        [
            pytest.param(
                "openid-connect-file.yaml",
                ObjectKey("istio-ingress", "openid-connect"),
                3,
                id="file",
            ),
            pytest.param(
                "openid-connect-oci.yaml", ObjectKey("istio-system", "openid-connect"), 2, id="oci"
            ),
            pytest.param(
                "header-append.yaml",
                ObjectKey("istio-system", "header-append"),
                3,
                id="header-append",
            ),
            pytest.param(
                "tsb-wasm-add-header.yaml",
                ObjectKey("tier2", "tier2-gateway-wasm-add-header0"),
                3,
                id="tsb",
            ),
        ],
    )
    def test_valid_example(self, name: str, key: ObjectKey, line: int) -> None:
        """A real-world example parses into one plugin with no problem at all."""
        parsed = parse_file(DATA / name)
        assert parsed.problems == ()
        assert parsed.syntax_ok
        (plugin,) = parsed.plugins
        assert plugin.key == key
        assert plugin.origin == Origin(str(DATA / name), line)
        assert len(plugin.fingerprint) == 64

    def test_openid_connect_spec(self) -> None:
        """The OpenShift file example's fields all reach the proto."""
        (plugin,) = parse_file(DATA / "openid-connect-file.yaml").plugins
        spec = plugin.spec
        assert dict(spec.selector.match_labels) == {"istio": "ingressgateway"}
        assert spec.url == "file:///opt/filters/openid.wasm"
        assert spec.phase == wasm_pb2.AUTHN
        assert compact_json(spec.plugin_config) == (
            '{"openid_realm":"ingress","openid_server":"authn"}'
        )

    def test_tsb_metadata(self) -> None:
        """Server-set metadata from ``kubectl get -o yaml`` is accepted and kept."""
        (plugin,) = parse_file(DATA / "tsb-wasm-add-header.yaml").plugins
        assert plugin.resource_version == "16421353"
        assert plugin.generation == 1
        assert plugin.creation_timestamp == "2023-10-27T07:05:04Z"
        assert plugin.labels["app.kubernetes.io/managed-by"] == "tsb"
        assert plugin.annotations["tsb.tetrate.io/etag"] == '"9m3TwL8TafI="'
        assert plugin.spec.HasField("priority")
        assert plugin.spec.plugin_name == "tier2-gateway-wasm-add-header0"

    def test_helloworld_capitalised_selector(self) -> None:
        """The blog post's ``Selector:`` is caught with a case hint."""
        parsed = parse_file(DATA / "helloworld-invalid.yaml")
        path = DATA / "helloworld-invalid.yaml"
        assert problems(parsed) == [
            f'{path}:10: spec.Selector: unknown field; did you mean "selector"?'
            " (field names are case-sensitive)"
        ]
        assert parsed.plugins == ()
        assert parsed.invalid_keys == (ObjectKey("default", "helloworld"),)

    def test_openid_connect_mistakes(self) -> None:
        """Common mistakes in the OCI example each get their own line and advice."""
        path = DATA / "openid-connect-invalid.yaml"
        parsed = parse_file(path)
        assert problems(parsed) == [
            f'{path}:12: spec.url: unsupported scheme "private-registry"; use oci://, https://,'
            ' http:// or file:// (no scheme means oci://); "private-registry:5000" looks like a'
            " host and port: write oci://private-registry:5000/openid-connect/openid:latest",
            f"{path}:13: spec.sha256: must match [a-f0-9]{{64}} (use lower case)",
            f'{path}:27: spec.image_pull_policy: unknown field; did you mean "imagePullPolicy"?'
            " (Kubernetes accepts only the camelCase JSON name)",
        ]
        assert parsed.invalid_keys == (
            ObjectKey("istio-system", "openid-connect"),
            ObjectKey("istio-system", "openid-connect-policy"),
        )

    def test_kubectl_list(self) -> None:
        """A ``kind: List`` is read item by item; other kinds in it are skipped."""
        path = DATA / "list.yaml"
        parsed = parse_file(path)
        (plugin,) = parsed.plugins
        assert plugin.key == ObjectKey("istio-system", "header-append")
        assert plugin.origin.line == 4
        assert parsed.invalid_keys == (ObjectKey("istio-system", "broken"),)
        assert problems(parsed) == [
            f"{path}:24: spec.url: required: the URL of the Wasm module (oci://, https://,"
            " http:// or file://; no scheme means oci://)"
        ]


class TestDocuments:
    def test_multiple_documents_and_empty_ones(self) -> None:
        """Every document is read; empty ones and comments are skipped."""
        text = "---\n# nothing\n---\n" + plugin_yaml("a") + "---\n---\n" + plugin_yaml("b")
        parsed = parse_text(text, "f.yaml")
        assert [p.key.name for p in parsed.plugins] == ["a", "b"]
        assert [p.origin.line for p in parsed.plugins] == [4, 12]

    def test_typed_list_from_the_api(self) -> None:
        """A ``WasmPluginList`` (raw API output) is read like a ``List``."""
        parsed = parse(
            """\
            apiVersion: extensions.istio.io/v1alpha1
            kind: WasmPluginList
            items:
            - apiVersion: extensions.istio.io/v1alpha1
              kind: WasmPlugin
              metadata: {name: a}
              spec: {url: "oci://r/a:1"}
            - null
            """
        )
        assert [str(p.key) for p in parsed.plugins] == ["default/a"]

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", id="other-kind"),
            pytest.param(
                "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nspec: {}\n",
                id="sibling-kind",
            ),
            pytest.param("- a\n- b\n", id="list-document"),
            pytest.param("just text\n", id="scalar-document"),
            pytest.param("spec: {selector: {}}\n", id="no-apiversion-no-url"),
        ],
    )
    def test_other_documents_skipped_with_debug_log(self, text: str) -> None:
        """Documents that are not WasmPlugins are skipped quietly, with a debug log."""
        with capture_logs() as logs:
            parsed = parse_text(text, "f.yaml")
        assert parsed == ParsedFile("f.yaml", (), (), (), True)
        if text.startswith(("apiVersion", "spec")):
            assert logs[0]["event"] == "skipped an object that is not a WasmPlugin"
            assert logs[0]["log_level"] == "debug"
            assert logs[0]["path"] == "f.yaml"

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            pytest.param(
                "apiVersion: extensions.istio.io/v1beta1\nkind: WasmPlugin\nmetadata: {name: p}\n",
                'f.yaml:1: apiVersion: unsupported apiVersion string "extensions.istio.io/v1beta1"'
                " for kind WasmPlugin; the supported one is extensions.istio.io/v1alpha1",
                id="wrong-apiversion",
            ),
            pytest.param(
                "kind: WasmPlugin\nmetadata: {name: p}\n",
                "f.yaml:1: apiVersion: required: apiVersion extensions.istio.io/v1alpha1 for kind"
                " WasmPlugin",
                id="missing-apiversion",
            ),
            pytest.param(
                "apiVersion: extensions.istio.io/v1alpha1\nkind: Wasmplugin\nmetadata: {name: p}\n",
                'f.yaml:2: kind: unknown kind "Wasmplugin"; did you mean "WasmPlugin"? (kinds are'
                " case-sensitive)",
                id="kind-case",
            ),
            pytest.param(
                "apiVersion: extensions.istio.io/v1alpha1\nmetadata: {name: p}\n",
                "f.yaml:1: kind: required: kind WasmPlugin",
                id="missing-kind",
            ),
            pytest.param(
                "apiVersion: extensions.istio.io/v1alpha1\nkind: [WasmPlugin]\n"
                "metadata: {name: p}\n",
                "f.yaml:2: kind: must be a string",
                id="kind-not-string",
            ),
            pytest.param(
                "metadata: {name: p}\nspec:\n  url: oci://r/a:1\n",
                "f.yaml:1: apiVersion and kind are required (apiVersion:"
                " extensions.istio.io/v1alpha1, kind: WasmPlugin)",
                id="no-type-but-looks-like-one",
            ),
        ],
    )
    def test_broken_wasmplugin_identity(self, text: str, expected: str) -> None:
        """An object meant to be a WasmPlugin but with a bad apiVersion/kind is an error."""
        parsed = parse_text(text, "f.yaml")
        assert problems(parsed) == [expected]
        assert parsed.invalid_keys == (ObjectKey("default", "p"),)

    def test_yaml_issues_count_only_for_wasmplugins(self) -> None:
        """YAML that JSON cannot hold fails a WasmPlugin but not an unrelated document."""
        text = "apiVersion: v1\nkind: ConfigMap\ndata: {1: x, a: .nan}\n---\n" + plugin_yaml(
            spec="url: oci://r/a:1\npluginConfig:\n  on: true"
        )
        assert problems(parse_text(text, "f.yaml")) == [
            "f.yaml:12: spec.pluginConfig: key 'on' is read as boolean true, not a string"
            " (Kubernetes would silently turn it into a string); put it in quotes"
        ]

    def test_syntax_error(self) -> None:
        """YAML that cannot be read fails the whole file, with the line."""
        parsed = parse_text(plugin_yaml("a") + "---\nfoo: [1, 2\n", "f.yaml")
        assert not parsed.syntax_ok
        assert parsed.plugins == ()
        (problem,) = parsed.problems
        assert problem.line == 9
        assert problem.message == (
            "invalid YAML: did not find expected ',' or ']'"
            " (while parsing a flow sequence that starts on line 8)"
        )

    def test_json_file(self) -> None:
        """A JSON object is a valid file, with line numbers."""
        text = (
            '{\n  "apiVersion": "extensions.istio.io/v1alpha1",\n  "kind": "WasmPlugin",\n'
            '  "metadata": {"name": "j"},\n  "spec": {\n    "url": "oci://r/a:1",\n'
            '    "phase": "NOPE"\n  }\n}\n'
        )
        assert problems(parse_text(text, "p.json")) == [
            'p.json:7: spec.phase: unknown value string "NOPE"; valid values: UNSPECIFIED_PHASE,'
            " AUTHN, AUTHZ, STATS"
        ]


class TestObjects:
    @pytest.mark.parametrize(
        ("extra", "metadata", "spec", "expected"),
        [
            pytest.param(
                "",
                "metadata: {}\n",
                "spec: {url: 'oci://r/a:1'}\n",
                ["f.yaml:3: metadata.name: required: the plugin's name"],
                id="name-required",
            ),
            pytest.param(
                "",
                "metadata: {generateName: p-}\n",
                "spec: {url: 'oci://r/a:1'}\n",
                [
                    "f.yaml:3: metadata.name: required (generateName is not supported: there is"
                    " no API server to generate a name)"
                ],
                id="generate-name",
            ),
            pytest.param(
                "",
                "metadata: {name: My_Plugin}\n",
                "spec: {url: 'oci://r/a:1'}\n",
                [
                    "f.yaml:3: metadata.name: 'My_Plugin' is not a valid object name: must"
                    " consist of lower case alphanumeric characters, '-' or '.', and must start and"
                    " end with an alphanumeric character (e.g. 'example.com')"
                ],
                id="name-syntax",
            ),
            pytest.param(
                "",
                "metadata: {name: p, namespace: a.b}\n",
                "spec: {url: 'oci://r/a:1'}\n",
                [
                    "f.yaml:3: metadata.namespace: 'a.b' is not a valid namespace: must consist of"
                    " lower case alphanumeric characters or '-', and must start and end with an"
                    " alphanumeric character (e.g. 'my-name')"
                ],
                id="namespace-syntax",
            ),
            pytest.param(
                "",
                "metadata:\n  name: p\n  lables: {}\n",
                "spec: {url: 'oci://r/a:1'}\n",
                ['f.yaml:5: metadata.lables: unknown field; did you mean "labels"?'],
                id="unknown-metadata-field",
            ),
            pytest.param(
                "",
                "metadata:\n  name: p\n  generation: '1'\n",
                "spec: {url: 'oci://r/a:1'}\n",
                ['f.yaml:5: metadata.generation: expected an integer, got string "1"'],
                id="metadata-type",
            ),
            pytest.param(
                "",
                "metadata:\n  name: 7\n",
                "spec: {url: 'oci://r/a:1'}\n",
                ["f.yaml:4: metadata.name: expected a string, got number 7"],
                id="name-type",
            ),
            pytest.param(
                "",
                "metadata:\n  name: p\n  labels:\n    version: 1.0\n",
                "spec: {url: 'oci://r/a:1'}\n",
                [
                    "f.yaml:6: metadata.labels.version: expected a string, got number 1.0 (put the"
                    " value in quotes)"
                ],
                id="label-value-type",
            ),
            pytest.param(
                "",
                "metadata:\n  name: p\n  labels:\n    bad key: x\n",
                "spec: {url: 'oci://r/a:1'}\n",
                [
                    'f.yaml:6: metadata.labels["bad key"]: invalid key: the name part must consist'
                    " of alphanumeric characters, '-', '_' or '.', and must start and end with an"
                    " alphanumeric character"
                ],
                id="label-key-syntax",
            ),
            pytest.param(
                "",
                "metadata:\n  name: p\n  labels:\n    app: -x\n",
                "spec: {url: 'oci://r/a:1'}\n",
                [
                    "f.yaml:6: metadata.labels.app: invalid label value: must consist of"
                    " alphanumeric characters, '-', '_' or '.', and must start and end with an"
                    " alphanumeric character"
                ],
                id="label-value-syntax",
            ),
            pytest.param(
                "",
                "metadata:\n  name: p\n  annotations: [a]\n",
                "spec: {url: 'oci://r/a:1'}\n",
                ["f.yaml:5: metadata.annotations: expected a mapping, got a list"],
                id="annotations-type",
            ),
            pytest.param(
                "",
                "metadata: p\n",
                "spec: {url: 'oci://r/a:1'}\n",
                ['f.yaml:3: metadata: expected a mapping, got string "p"'],
                id="metadata-not-mapping",
            ),
            pytest.param(
                "",
                "",
                "spec: {url: 'oci://r/a:1'}\n",
                ["f.yaml:1: metadata: required: metadata.name names the plugin"],
                id="metadata-required",
            ),
            pytest.param(
                "",
                "metadata: {name: p}\n",
                "",
                ["f.yaml:1: spec: required: the WasmPlugin spec"],
                id="spec-required",
            ),
            pytest.param(
                "specs: {}\n",
                "metadata: {name: p}\n",
                "spec: {url: 'oci://r/a:1'}\n",
                ['f.yaml:3: specs: unknown field; did you mean "spec"?'],
                id="unknown-top-level-field",
            ),
        ],
    )
    def test_object_errors(self, extra: str, metadata: str, spec: str, expected: list[str]) -> None:
        """Object and metadata rules, each reported on the line of the field (or its parent)."""
        parsed = parse_text(HEADER + extra + metadata + spec, "f.yaml")
        assert problems(parsed) == expected
        assert parsed.plugins == ()

    def test_annotations_size_limit(self) -> None:
        """Annotations over 256 KiB in total are rejected, as by the API server."""
        big = "x" * (200 * 1024)
        text = plugin_yaml(extra=f"  annotations:\n    a: {big}\n    b: {big}\n")
        (problem,) = parse_text(text, "f.yaml").problems
        assert problem.message.startswith("metadata.annotations: must be no more than 262144 bytes")

    def test_status_is_ignored(self) -> None:
        """``status`` may hold anything and does not affect the fingerprint."""
        base = parse_text(plugin_yaml(), "f.yaml").plugins[0]
        with_status = parse_text(
            plugin_yaml() + "status:\n  conditions: [{type: Ready}]\n", "f.yaml"
        )
        assert with_status.problems == ()
        assert with_status.plugins[0].fingerprint == base.fingerprint

    def test_default_namespace(self) -> None:
        """An object without a namespace (or with an empty one) gets the default namespace."""
        parsed = parse_text(plugin_yaml(), "f.yaml", default_namespace="edge")
        assert parsed.plugins[0].key == ObjectKey("edge", "p")
        empty = parse_text(plugin_yaml(extra="  namespace: ''\n"), "f.yaml")
        assert empty.plugins[0].key == ObjectKey("default", "p")

    def test_semantic_checks_run_after_a_clean_schema(self) -> None:
        """Istio's rules run when the schema is clean; warnings keep the plugin."""
        parsed = parse_text(plugin_yaml(spec="url: oci://r/a:1\nselector: {}"), "f.yaml")
        (problem,) = parsed.problems
        assert problem.severity is Severity.WARNING
        assert problem.line == 7
        assert len(parsed.plugins) == 1

    def test_semantic_checks_skipped_after_schema_errors(self) -> None:
        """With a schema error, only schema problems are reported (no knock-on noise)."""
        parsed = parse_text(plugin_yaml(spec="url: 5\nsha256: x"), "f.yaml")
        assert [p.message.split(":")[0] for p in parsed.problems] == ["spec.url"]

    def test_missing_required_field_points_at_parent(self) -> None:
        """A missing required field is reported on the line of the mapping that lacks it."""
        parsed = parse_text(plugin_yaml(spec="phase: AUTHN"), "f.yaml")
        assert [p.line for p in parsed.problems] == [5]

    def test_all_problems_of_an_object(self) -> None:
        """Metadata and spec problems are reported together."""
        parsed = parse_text(plugin_yaml("Bad", spec="url: 5"), "f.yaml")
        assert [p.line for p in parsed.problems] == [4, 6]
        assert parsed.invalid_keys == ()


class TestDuplicates:
    def test_later_duplicate_in_file_is_an_error(self) -> None:
        """The same namespace/name twice in one file: the first wins, the later is an error."""
        text = (
            plugin_yaml("a", spec="url: oci://r/first:1")
            + "---\n"
            + plugin_yaml("a", spec="url: oci://r/second:1")
        )
        parsed = parse_text(text, "f.yaml")
        assert [p.spec.url for p in parsed.plugins] == ["oci://r/first:1"]
        assert problems(parsed) == [
            "f.yaml:8: duplicate WasmPlugin default/a: already defined on line 1; this definition"
            " is ignored"
        ]
        assert parsed.object_lines == ((ObjectKey("default", "a"), 1),)

    def test_duplicate_of_an_invalid_object(self) -> None:
        """An invalid first definition still wins; the valid later one is not used."""
        text = plugin_yaml("a", spec="url: 5") + "---\n" + plugin_yaml("a")
        parsed = parse_text(text, "f.yaml")
        assert parsed.plugins == ()
        assert parsed.invalid_keys == (ObjectKey("default", "a"),)
        assert len(parsed.problems) == 2

    def test_same_name_in_two_namespaces(self) -> None:
        """Identity is namespace and name together."""
        text = plugin_yaml("a") + "---\n" + plugin_yaml("a", extra="  namespace: other\n")
        assert len(parse_text(text, "f.yaml").plugins) == 2


class TestFingerprint:
    def test_order_and_whitespace_do_not_matter(self) -> None:
        """Same content, different key order and layout: same fingerprint."""
        one = parse_text(plugin_yaml(spec="url: oci://r/a:1\nphase: AUTHN"), "a.yaml")
        two = parse_text(
            HEADER.replace("kind", "kind ")
            + 'spec: {phase: AUTHN,   url: "oci://r/a:1"}\nmetadata: {name: p}\n',
            "b.yaml",
        )
        assert one.plugins[0].fingerprint == two.plugins[0].fingerprint

    def test_any_change_changes_it(self) -> None:
        """A change in spec or metadata changes the fingerprint."""
        base = parse_text(plugin_yaml(), "f.yaml").plugins[0].fingerprint
        spec = parse_text(plugin_yaml(spec="url: oci://r/b:1"), "f.yaml").plugins[0].fingerprint
        label = parse_text(plugin_yaml(extra="  labels: {a: b}\n"), "f.yaml").plugins[0].fingerprint
        assert len({base, spec, label}) == 3

    def test_fingerprint_function(self) -> None:
        """The fingerprint is the sha256 of the canonical JSON without status."""
        assert fingerprint({"a": 1, "status": {"x": 1}}) == fingerprint({"a": 1})
        assert fingerprint({"a": 1}) != fingerprint({"a": 2})


class TestEntryPoints:
    def test_parse_file_missing(self, tmp_path: Path) -> None:
        """An unreadable file is a problem on the file, and not syntax_ok."""
        parsed = parse_file(tmp_path / "nope.yaml")
        assert not parsed.syntax_ok
        assert parsed.problems[0].message.startswith("cannot read the file:")

    def test_parse_bytes_rejects_non_utf8(self) -> None:
        """Bytes that are not UTF-8 fail the file, naming the line of the bad byte."""
        parsed = parse_bytes(b"a: 1\nb: \xff\n", "f.yaml")
        assert not parsed.syntax_ok
        assert [str(p) for p in parsed.problems] == ["f.yaml:2: not UTF-8 text (byte 0xff)"]

    def test_parse_bytes_accepts_bom(self) -> None:
        """A UTF-8 byte order mark is allowed."""
        parsed = parse_bytes(b"\xef\xbb\xbf" + plugin_yaml().encode(), "f.yaml")
        assert len(parsed.plugins) == 1

    def test_parse_object_from_kubernetes_json(self) -> None:
        """Plain decoded JSON (the Kubernetes source) validates with line 0 everywhere."""
        value: dict[str, Any] = {
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "WasmPlugin",
            "metadata": {"name": "p", "namespace": "ns", "resourceVersion": "42", "generation": 3},
            "spec": {"url": "oci://r/a:1", "sha256": "bad"},
        }
        parsed = parse_object(value, source="kubernetes:ns/p")
        assert parsed is not None
        assert parsed.plugin is None
        assert parsed.key == ObjectKey("ns", "p")
        assert [str(p) for p in parsed.problems] == [
            "kubernetes:ns/p:0: spec.sha256: must be 64 characters long (got 3)"
        ]
        value["spec"]["sha256"] = "a" * 64
        parsed = parse_object(value, source="kubernetes:ns/p")
        assert parsed is not None
        assert parsed.plugin is not None
        assert parsed.plugin.resource_version == "42"
        assert parsed.plugin.generation == 3
        assert parsed.plugin.origin == Origin("kubernetes:ns/p", 0)

    def test_parse_object_rejects_data_json_cannot_hold(self) -> None:
        """In-memory data that has no JSON form is an error, not a crash."""
        value = {
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "WasmPlugin",
            "metadata": {"name": "p", "managedFields": [{"x": {1, 2}}]},
            "spec": {"url": "oci://r/a:1"},
        }
        parsed = parse_object(value, source="mem")
        assert parsed is not None
        assert parsed.plugin is None
        assert [p.message for p in parsed.problems] == [
            "cannot be rendered as JSON: Object of type set is not JSON serializable"
        ]

    def test_parse_object_skips_other_kinds(self) -> None:
        """parse_object returns None for data that is not a WasmPlugin."""
        assert parse_object({"apiVersion": "v1", "kind": "Secret"}, source="k") is None
        assert parse_object(["x"], source="k") is None
