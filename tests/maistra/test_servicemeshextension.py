"""Maistra ServiceMeshExtension → WasmPlugin: the converter and the parser's use of it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from wasmxds.api.objects import ObjectKey, Origin, Severity
from wasmxds.api.parse import parse_object, parse_text
from wasmxds.api.proto import wasm_pb2
from wasmxds.api.yamlload import load_documents
from wasmxds.cli.migrate import dump_documents
from wasmxds.maistra.servicemeshextension import PHASES, Converted, convert_extension

DATA = Path(__file__).parents[1] / "api" / "data"

# Red Hat's migration guide (OpenShift Service Mesh 2.2, "Migrating from
# ServiceMeshExtension to WasmPlugin resources"), the ServiceMeshExtension half.
SEED_EXTENSION = (Path(__file__).parent / "seeds" / "header-append-extension.yaml").read_text()
PHASE_LINE = 14
DIGEST = "sha256:" + "ab" * 32


def extension(spec: str, *, metadata: str = "name: ext\n", head: str = "") -> str:
    """A ServiceMeshExtension document with ``spec`` (YAML lines) under ``spec:``."""
    return (
        "apiVersion: maistra.io/v1\nkind: ServiceMeshExtension\n"
        + head
        + "metadata:\n"
        + textwrap.indent(metadata, "  ")
        + "spec:\n"
        + textwrap.indent(textwrap.dedent(spec), "  ")
    )


BASE_SPEC = "image: quay.io/acme/ext:1\nphase: PreAuthN\npriority: 10\n"


def convert(text: str) -> Converted:
    (document,) = load_documents(text)
    return convert_extension(
        document.value,
        check=parse_object,
        path="e.yaml",
        locate=document.lines,
        default_namespace="default",
        issues=document.issues,
    )


def messages(result: Converted) -> list[str]:
    return [str(problem) for problem in result.problems]


def spec_of(result: Converted) -> dict[str, object]:
    assert result.wasmplugin is not None, messages(result)
    spec = result.wasmplugin["spec"]
    assert isinstance(spec, dict)
    return spec


class TestSeedExample:
    def test_converts_to_the_seed_wasmplugin(self) -> None:
        """The guide's header-append extension becomes the guide's WasmPlugin, priority kept."""
        (expected,) = (
            document.value for document in load_documents((DATA / "header-append.yaml").read_text())
        )
        assert isinstance(expected, dict)
        # The guide's WasmPlugin leaves out `priority: 100`, but both APIs have the
        # field with the same meaning (higher runs first within a phase), and a
        # WasmPlugin without one runs after every plugin that sets one; keep it.
        expected["spec"]["priority"] = 100
        result = convert(SEED_EXTENSION)
        assert result.wasmplugin == expected
        assert list(result.wasmplugin) == ["apiVersion", "kind", "metadata", "spec"]
        assert list(spec_of(result)) == ["selector", "url", "phase", "priority", "pluginConfig"]

    def test_only_the_phase_warning(self) -> None:
        """PostAuthZ → STATS is the one remark, on the line of ``phase``."""
        result = convert(SEED_EXTENSION)
        assert [(p.line, p.severity) for p in result.problems] == [(PHASE_LINE, Severity.WARNING)]
        assert messages(result)[0].startswith(
            f"e.yaml:{PHASE_LINE}: warning: spec.phase: PostAuthZ becomes STATS"
        )


class TestPhases:
    @pytest.mark.parametrize(
        ("phase", "expected", "lossy"),
        [
            pytest.param("PreAuthN", "AUTHN", False, id="PreAuthN"),
            pytest.param("PostAuthN", "AUTHZ", True, id="PostAuthN"),
            pytest.param("PreAuthZ", "AUTHZ", False, id="PreAuthZ"),
            pytest.param("PostAuthZ", "STATS", True, id="PostAuthZ"),
            pytest.param("PreStats", "STATS", False, id="PreStats"),
            pytest.param("PostStats", None, True, id="PostStats"),
        ],
    )
    def test_mapping(self, phase: str, expected: str | None, lossy: bool) -> None:
        """Each Maistra phase lands where the table says; lossy ones warn on their line."""
        result = convert(extension(f"image: quay.io/a/b:1\npriority: 1\nphase: {phase}\n"))
        assert spec_of(result).get("phase") == expected
        warnings = [p for p in result.problems if p.severity is Severity.WARNING]
        if lossy:
            (warning,) = warnings
            assert warning.line == 8
            assert warning.message.startswith(f"spec.phase: {phase} ")
        else:
            assert warnings == []

    def test_table_covers_maistra_phases(self) -> None:
        """Maistra's six FilterPhase values, and only WasmPlugin phase names as targets."""
        assert list(PHASES) == [
            "PreAuthN",
            "PostAuthN",
            "PreAuthZ",
            "PostAuthZ",
            "PreStats",
            "PostStats",
        ]
        names = set(wasm_pb2.PluginPhase.DESCRIPTOR.values_by_name)
        assert {m.phase for m in PHASES.values()} - {None} <= names

    @pytest.mark.parametrize(
        ("phase", "expected"),
        [
            pytest.param(
                "postauthz",
                'spec.phase: unknown value string "postauthz"; did you mean "PostAuthZ"?'
                " (values are case-sensitive)",
                id="case",
            ),
            pytest.param(
                "STATS",
                'spec.phase: string "STATS" is a WasmPlugin phase; ServiceMeshExtension phases'
                " are PreAuthN, PostAuthN, PreAuthZ, PostAuthZ, PreStats, PostStats",
                id="wasmplugin-name",
            ),
            pytest.param(
                "3",
                "spec.phase: expected one of PreAuthN, PostAuthN, PreAuthZ, PostAuthZ, PreStats,"
                " PostStats (as a string), got number 3",
                id="number",
            ),
        ],
    )
    def test_bad_phase(self, phase: str, expected: str) -> None:
        """A phase Maistra did not have is an error that names the valid ones."""
        result = convert(extension(f"image: quay.io/a/b:1\npriority: 1\nphase: {phase}\n"))
        assert result.wasmplugin is None
        assert messages(result) == [f"e.yaml:8: {expected}"]

    def test_missing_phase_and_priority_warn(self) -> None:
        """Without phase or priority the image's manifest.yaml decided; both are warnings."""
        result = convert(extension("image: quay.io/a/b:1\n"))
        assert list(spec_of(result)) == ["url"]
        assert [(p.line, p.message.split(":")[0]) for p in result.problems] == [
            (5, "spec.phase"),
            (5, "spec.priority"),
        ]
        assert all(p.severity is Severity.WARNING for p in result.problems)


class TestImage:
    @pytest.mark.parametrize(
        ("image", "url", "warning"),
        [
            pytest.param(
                "quay.io/maistra-dev/header-append-filter:2.2",
                "oci://quay.io/maistra-dev/header-append-filter:2.2",
                "",
                id="tag",
            ),
            pytest.param(
                f"quay.io/acme/ext@{DIGEST}", f"oci://quay.io/acme/ext@{DIGEST}", "", id="digest"
            ),
            pytest.param(
                f"quay.io/acme/ext:1.0@{DIGEST}",
                f"oci://quay.io/acme/ext:1.0@{DIGEST}",
                "",
                id="tag-and-digest",
            ),
            pytest.param(
                "localhost:5000/ext:1", "oci://localhost:5000/ext:1", "", id="registry-port"
            ),
            pytest.param(
                "header-append:2.2",
                "oci://header-append:2.2",
                "docker.io/library/header-append:2.2",
                id="short-name",
            ),
            pytest.param(
                "acme/ext:1", "oci://acme/ext:1", "docker.io/acme/ext:1", id="docker-hub-org"
            ),
        ],
    )
    def test_url(self, image: str, url: str, warning: str) -> None:
        """``image`` becomes ``oci://`` + the image as written; a short name gets a warning."""
        result = convert(extension(f"image: '{image}'\nphase: PreAuthN\npriority: 1\n"))
        assert spec_of(result)["url"] == url
        if warning:
            (problem,) = result.problems
            assert problem.line == 6
            assert problem.severity is Severity.WARNING
            assert f"read it as Docker Hub ({warning})" in problem.message
        else:
            assert result.problems == ()

    @pytest.mark.parametrize(
        ("spec", "expected"),
        [
            pytest.param(
                "phase: PreAuthN\npriority: 1\n",
                "e.yaml:5: spec.image: required: the container image that holds the extension",
                id="missing",
            ),
            pytest.param(
                "image: ''\nphase: PreAuthN\npriority: 1\n",
                "e.yaml:6: spec.image: required: the container image that holds the extension",
                id="empty",
            ),
            pytest.param(
                "image: oci://quay.io/a/b:1\nphase: PreAuthN\npriority: 1\n",
                "e.yaml:6: spec.image: 'oci://quay.io/a/b:1' is not a container image reference"
                " (it has a scheme); ServiceMeshExtension images are written without oci://",
                id="scheme",
            ),
            pytest.param(
                "image: 7\nphase: PreAuthN\npriority: 1\n",
                "e.yaml:6: spec.image: expected a string, got number 7",
                id="number",
            ),
        ],
    )
    def test_bad_image_is_an_error(self, spec: str, expected: str) -> None:
        """No usable image means no WasmPlugin, and one error (not a second about url)."""
        result = convert(extension(spec))
        assert result.wasmplugin is None
        assert messages(result) == [expected]


class TestConfig:
    @pytest.mark.parametrize(
        ("config", "expected", "warning"),
        [
            pytest.param("{a: 1, b: {c: [x]}}", {"a": 1, "b": {"c": ["x"]}}, "", id="mapping"),
            pytest.param("{}", None, "", id="empty-mapping"),
            pytest.param("''", None, "", id="empty-string"),
            pytest.param(
                """'{"b": 1, "a": "y"}'""", {"b": 1, "a": "y"}, "a JSON object", id="json-string"
            ),
            pytest.param(
                '"first-header: some-value\\nflag: y\\n"',
                {"first-header": "some-value", "flag": True},
                "a YAML mapping",
                id="yaml-string",
            ),
        ],
    )
    def test_becomes_plugin_config(
        self, config: str, expected: dict[str, object] | None, warning: str
    ) -> None:
        """An object is kept; a string holding one becomes it, with a warning on its line."""
        result = convert(extension(BASE_SPEC + f"config: {config}\n"))
        assert spec_of(result).get("pluginConfig") == expected
        if warning:
            (problem,) = result.problems
            assert (problem.line, problem.severity) == (9, Severity.WARNING)
            assert problem.message.startswith(f"spec.config: a string holding {warning};")
        else:
            assert result.problems == ()

    @pytest.mark.parametrize(
        "config",
        [
            pytest.param("plain text", id="text"),
            pytest.param("'[1, 2]'", id="json-array"),
            pytest.param("'42'", id="json-number"),
        ],
    )
    def test_text_that_holds_no_object_is_an_error(self, config: str) -> None:
        """Text Maistra passed verbatim cannot become an object: the extension is not converted."""
        result = convert(extension(BASE_SPEC + f"config: {config}\n"))
        assert result.wasmplugin is None
        (problem,) = result.problems
        assert problem.line == 9
        assert problem.message.startswith(
            "spec.config: a string that holds no JSON object or YAML mapping;"
        )

    def test_other_types_are_errors(self) -> None:
        """A list or number config is neither Maistra version's type."""
        result = convert(extension(BASE_SPEC + "config: [a]\n"))
        assert messages(result) == [
            "e.yaml:9: spec.config: expected a mapping (or a string holding a JSON object),"
            " got a list"
        ]

    def test_wasmplugin_checks_name_config_fields(self) -> None:
        """pluginConfig problems found by the WasmPlugin checks name ``spec.config``."""
        result = convert(extension(BASE_SPEC + "config:\n  big: 100000000000000001\n"))
        (problem,) = result.problems
        assert problem.line == 10
        assert problem.message.startswith("spec.config.big: integer 100000000000000001 is beyond")


class TestFields:
    @pytest.mark.parametrize(
        ("spec", "head", "expected"),
        [
            pytest.param(
                "url: oci://quay.io/a/b:1\n",
                "",
                'e.yaml:9: spec.url: unknown field; did you mean "image"? (url is the WasmPlugin'
                " name)",
                id="wasmplugin-url",
            ),
            pytest.param(
                "priorty: 3\n",
                "",
                'e.yaml:9: spec.priorty: unknown field; did you mean "priority"?',
                id="typo",
            ),
            pytest.param(
                "sha256: " + "ab" * 32 + "\n",
                "",
                "e.yaml:9: spec.sha256: unknown field; sha256 is a WasmPlugin field that"
                " ServiceMeshExtension does not have; add it to the WasmPlugin that"
                " `wasmxds migrate` writes",
                id="wasmplugin-only-field",
            ),
            pytest.param(
                "workloadSelector:\n  matchLabels: {app: a}\n",
                "",
                "e.yaml:10: spec.workloadSelector.matchLabels: unknown field; did you mean"
                ' "labels"? (matchLabels is the WasmPlugin name)',
                id="match-labels",
            ),
            pytest.param(
                "imagePullSecrets: [{name: s, namespace: n}]\n",
                "",
                'e.yaml:9: spec.imagePullSecrets[0].namespace: unknown field; did you mean "name"?',
                id="secret-field",
            ),
            pytest.param(
                "",
                "extra: 1\n",
                "e.yaml:3: extra: unknown field; valid fields: apiVersion, kind, metadata, spec,"
                " status",
                id="top-level",
            ),
        ],
    )
    def test_unknown_fields_are_errors(self, spec: str, head: str, expected: str) -> None:
        """Unknown fields are errors with a hint, like the WasmPlugin converter's."""
        result = convert(extension(BASE_SPEC + spec, head=head))
        assert result.wasmplugin is None
        assert expected in messages(result)

    @pytest.mark.parametrize(
        ("policy", "expected", "problem"),
        [
            pytest.param("Always", "Always", "", id="always"),
            pytest.param("IfNotPresent", "IfNotPresent", "", id="if-not-present"),
            pytest.param(
                "Never",
                "IfNotPresent",
                "e.yaml:9: warning: spec.imagePullPolicy: Never has no WasmPlugin equivalent;"
                " it becomes IfNotPresent (pulled when not cached yet)",
                id="never",
            ),
            pytest.param(
                "always",
                None,
                'e.yaml:9: spec.imagePullPolicy: unknown value string "always"; did you mean'
                ' "Always"? (values are case-sensitive)',
                id="case",
            ),
        ],
    )
    def test_pull_policy(self, policy: str, expected: str | None, problem: str) -> None:
        """Kubernetes pull policies map onto WasmPlugin's two."""
        result = convert(extension(BASE_SPEC + f"imagePullPolicy: {policy}\n"))
        if expected is None:
            assert result.wasmplugin is None
        else:
            assert spec_of(result)["imagePullPolicy"] == expected
        assert messages(result) == ([problem] if problem else [])

    def test_pull_secrets(self) -> None:
        """The first pull secret is kept; the others are dropped with a warning on the second."""
        result = convert(extension(BASE_SPEC + "imagePullSecrets:\n- name: a\n- name: b\n"))
        assert spec_of(result)["imagePullSecret"] == "a"
        assert messages(result) == [
            "e.yaml:11: warning: spec.imagePullSecrets[1]: a WasmPlugin takes one"
            ' imagePullSecret; "a" is kept and "b" dropped (merge their registry credentials'
            " into one Secret)"
        ]

    def test_pull_secret_without_name(self) -> None:
        """A pull secret reference needs a name."""
        result = convert(extension(BASE_SPEC + "imagePullSecrets:\n- {}\n"))
        assert messages(result) == [
            "e.yaml:10: spec.imagePullSecrets[0].name: required: the name of a Secret"
        ]

    def test_pull_secret_checked_as_wasmplugin(self) -> None:
        """WasmPlugin's imagePullSecret rules report against the extension's field."""
        result = convert(extension(BASE_SPEC + "imagePullSecrets:\n- name: " + "s" * 254 + "\n"))
        (problem,) = result.problems
        assert problem.line == 10
        assert problem.message.startswith("spec.imagePullSecrets[0].name: must be 1 to 253")

    def test_labels_checked_as_wasmplugin(self) -> None:
        """Label rules of the WasmPlugin selector name ``workloadSelector.labels`` and its line."""
        result = convert(
            extension(BASE_SPEC + "workloadSelector:\n  labels:\n    app: 'a*'\n    ok: b\n")
        )
        assert result.wasmplugin is None
        assert messages(result) == [
            "e.yaml:11: spec.workloadSelector.labels.app: wildcards are not supported in"
            " selectors: app=a*"
        ]

    def test_empty_selector_means_no_selector(self) -> None:
        """``workloadSelector`` without labels selects every workload, as no selector does."""
        result = convert(extension(BASE_SPEC + "workloadSelector: {labels: {}}\n"))
        assert "selector" not in spec_of(result)
        assert result.problems == ()

    def test_priority_out_of_range(self) -> None:
        """Maistra's priority was a Go int; beyond int32 it cannot be a WasmPlugin priority."""
        result = convert(extension("image: quay.io/a/b:1\nphase: PreAuthN\npriority: 3000000000\n"))
        assert result.wasmplugin is None
        assert messages(result) == [
            "e.yaml:8: spec.priority: 3000000000 is out of range for int32 (-2147483648 to"
            " 2147483647)"
        ]

    def test_missing_spec_is_one_error(self) -> None:
        """No spec: one error, not one per missing field."""
        result = convert(
            "apiVersion: maistra.io/v1\nkind: ServiceMeshExtension\nmetadata: {name: e}\n"
        )
        assert messages(result) == ["e.yaml:1: spec: required: the ServiceMeshExtension spec"]

    def test_yaml_issues_make_it_invalid(self) -> None:
        """Duplicate keys in the document are errors of the object."""
        result = convert(extension(BASE_SPEC + "phase: PostStats\n"))
        assert result.wasmplugin is None
        assert messages(result) == ["e.yaml:9: spec.phase: duplicate key (first defined on line 7)"]


class TestMetadata:
    def test_server_fields_and_last_applied_dropped(self) -> None:
        """Name, namespace, labels and annotations carry over; what servers set does not."""
        metadata = textwrap.dedent(
            """\
            annotations:
              kubectl.kubernetes.io/last-applied-configuration: '{"kind":"ServiceMeshExtension"}'
              team: edge
            creationTimestamp: "2022-01-01T00:00:00Z"
            generation: 3
            labels: {app: ext}
            managedFields: []
            name: ext
            namespace: prod
            resourceVersion: "42"
            selfLink: /apis/maistra.io/v1/namespaces/prod/servicemeshextensions/ext
            uid: 0b6d6e4e-1c1b-4a4e-9d3a-1f1f1f1f1f1f
            """
        )
        text = extension(BASE_SPEC, metadata=metadata) + "status:\n  phase: PreAuthN\n"
        result = convert(text)
        assert result.wasmplugin is not None
        assert result.wasmplugin["metadata"] == {
            "name": "ext",
            "namespace": "prod",
            "labels": {"app": "ext"},
            "annotations": {"team": "edge"},
        }
        assert list(result.wasmplugin["metadata"]) == ["name", "namespace", "labels", "annotations"]
        assert result.problems == ()

    @pytest.mark.parametrize(
        ("metadata", "expected"),
        [
            pytest.param(
                "name: Bad_Name\n",
                "e.yaml:4: metadata.name: 'Bad_Name' is not a valid object name: must consist of"
                " lower case alphanumeric characters, '-' or '.', and must start and end with an"
                " alphanumeric character (e.g. 'example.com')",
                id="invalid-name",
            ),
            pytest.param(
                "namespace: prod\n",
                "e.yaml:3: metadata.name: required: the plugin's name",
                id="no-name",
            ),
            pytest.param(
                "name: e\nlables: {}\n",
                'e.yaml:5: metadata.lables: unknown field; did you mean "labels"?',
                id="typo",
            ),
        ],
    )
    def test_checked_as_wasmplugin_metadata(self, metadata: str, expected: str) -> None:
        """Metadata goes through the WasmPlugin checks unchanged."""
        result = convert(extension(BASE_SPEC, metadata=metadata))
        assert result.wasmplugin is None
        assert messages(result) == [expected]

    def test_namespace_stays_as_written(self) -> None:
        """An extension without a namespace gives a WasmPlugin without one."""
        result = convert(extension(BASE_SPEC))
        assert result.wasmplugin is not None
        assert result.wasmplugin["metadata"] == {"name": "ext"}


class TestApiVersions:
    def test_v1alpha1(self) -> None:
        """Maistra 2.0's maistra.io/v1alpha1 is read the same way."""
        text = extension(BASE_SPEC).replace("maistra.io/v1", "maistra.io/v1alpha1")
        assert spec_of(convert(text))["phase"] == "AUTHN"

    def test_other_version_is_an_error(self) -> None:
        """Any other apiVersion is named in an error."""
        result = convert(extension(BASE_SPEC).replace("maistra.io/v1", "maistra.io/v2"))
        assert messages(result) == [
            'e.yaml:1: apiVersion: unsupported apiVersion string "maistra.io/v2" for kind'
            " ServiceMeshExtension; the supported ones are maistra.io/v1 and maistra.io/v1alpha1"
        ]


class TestParser:
    """The directory source and ``validate`` read ServiceMeshExtensions as WasmPlugins."""

    def test_served_as_wasmplugin_with_deprecation_warning(self) -> None:
        """The extension becomes the WasmPlugin of the same key, origin at its document."""
        parsed = parse_text(SEED_EXTENSION, "old/ext.yaml")
        (plugin,) = parsed.plugins
        assert plugin.key == ObjectKey("istio-system", "header-append")
        assert plugin.origin == Origin("old/ext.yaml", 1)
        assert plugin.spec.url == "oci://quay.io/maistra-dev/header-append-filter:2.2"
        assert plugin.spec.phase == wasm_pb2.STATS
        assert plugin.spec.priority.value == 100
        assert str(parsed.problems[0]) == (
            "old/ext.yaml:2: warning: ServiceMeshExtension is deprecated (removed in OpenShift"
            " Service Mesh 2.3); it is served as WasmPlugin istio-system/header-append — run"
            " 'wasmxds migrate old/ext.yaml' to convert it"
        )
        assert [p.line for p in parsed.problems] == [2, PHASE_LINE]
        assert not parsed.has_errors

    def test_same_spec_as_the_converted_wasmplugin(self) -> None:
        """What the parser serves is the spec of the WasmPlugin the converter writes."""
        converted = convert(SEED_EXTENSION).wasmplugin
        assert converted is not None
        (migrated,) = parse_text(dump_documents([converted]), "new.yaml").plugins
        (served,) = parse_text(SEED_EXTENSION, "old.yaml").plugins
        assert served.spec == migrated.spec
        assert served.key == migrated.key

    def test_collides_with_wasmplugin_of_the_same_name(self) -> None:
        """A WasmPlugin and an extension with one namespace/name are duplicates."""
        wasmplugin = (DATA / "header-append.yaml").read_text()
        parsed = parse_text(wasmplugin + "---\n" + SEED_EXTENSION, "f.yaml")
        assert [p.key for p in parsed.plugins] == [ObjectKey("istio-system", "header-append")]
        assert not parsed.plugins[0].spec.HasField("priority")  # the WasmPlugin, read first
        assert any(
            p.message.startswith("duplicate WasmPlugin istio-system/header-append")
            for p in parsed.problems
        )

    def test_invalid_extension_keeps_its_key(self) -> None:
        """A broken extension is an invalid object with a key (its last good version stays)."""
        parsed = parse_text(
            extension("phase: PreAuthN\n", metadata="name: e\nnamespace: ns\n"), "f.yaml"
        )
        assert parsed.plugins == ()
        assert parsed.invalid_keys == (ObjectKey("ns", "e"),)
        assert [p.message.split(":")[0] for p in parsed.problems if p.is_error] == ["spec.image"]
        assert not any("deprecated" in p.message for p in parsed.problems)

    def test_inside_a_list(self) -> None:
        """``kubectl get servicemeshextensions -o yaml`` output (a List) is read item by item."""
        item = textwrap.indent(SEED_EXTENSION, "  ").replace("  apiVersion", "- apiVersion", 1)
        parsed = parse_text("apiVersion: v1\nkind: List\nitems:\n" + item, "l.yaml")
        (plugin,) = parsed.plugins
        assert plugin.origin.line == 4
        assert [p.line for p in parsed.problems] == [5, PHASE_LINE + 3]

    def test_wrong_api_version(self) -> None:
        """``kind: ServiceMeshExtension`` with another apiVersion is an error, not skipped."""
        parsed = parse_text(SEED_EXTENSION.replace("maistra.io/v1", "maistra.io/v9"), "f.yaml")
        assert parsed.invalid_keys == (ObjectKey("istio-system", "header-append"),)
        assert [str(p) for p in parsed.problems] == [
            'f.yaml:1: apiVersion: unsupported apiVersion string "maistra.io/v9" for kind'
            " ServiceMeshExtension; the supported ones are maistra.io/v1 and maistra.io/v1alpha1"
        ]

    def test_parse_object_from_json(self) -> None:
        """Decoded JSON (the Kubernetes source's input) converts too."""
        parsed = parse_object(
            {
                "apiVersion": "maistra.io/v1",
                "kind": "ServiceMeshExtension",
                "metadata": {"name": "e", "namespace": "n"},
                "spec": {"image": "quay.io/a/b:1", "phase": "PreAuthZ", "priority": 1},
            },
            source="kubernetes:n/e",
        )
        assert parsed is not None
        assert parsed.plugin is not None
        assert parsed.plugin.spec.phase == wasm_pb2.AUTHZ
        assert [p.severity for p in parsed.problems] == [Severity.WARNING]
