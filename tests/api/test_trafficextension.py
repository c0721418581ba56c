"""TrafficExtension objects to the internal WasmPlugin model, with Istio's rules."""

from __future__ import annotations

import textwrap

import pytest

from wasmxds.api.objects import TRAFFIC_EXTENSION_KIND, ObjectKey, WasmPlugin
from wasmxds.api.parse import ParsedFile, parse_object, parse_text
from wasmxds.api.proto import wasm_pb2
from wasmxds.api.trafficextension import supersede

SHA = "a" * 64


def extension(spec: str, *, name: str = "ext", extra: str = "") -> str:
    return (
        "apiVersion: extensions.istio.io/v1alpha1\n"
        "kind: TrafficExtension\n"
        f"metadata:\n  name: {name}\n  namespace: web\n{extra}"
        "spec:\n" + textwrap.indent(textwrap.dedent(spec), "  ")
    )


def parse(text: str) -> ParsedFile:
    return parse_text(text, "te.yaml")


def only(parsed: ParsedFile) -> WasmPlugin:
    assert [str(p) for p in parsed.problems] == []
    assert len(parsed.plugins) == 1
    return parsed.plugins[0]


def messages(parsed: ParsedFile) -> list[str]:
    return [str(p) for p in parsed.problems]


def test_wasm_part_becomes_the_same_spec_as_a_wasmplugin() -> None:
    """Every WasmConfig field lands where the WasmPlugin spec keeps it."""
    plugin = only(
        parse(
            extension(
                f"""\
                selector: {{matchLabels: {{app: web}}}}
                phase: AUTHZ
                priority: 7
                match: [{{mode: SERVER, ports: [{{number: 8080}}]}}]
                wasm:
                  url: oci://reg.example/f:v1
                  sha256: {SHA}
                  imagePullPolicy: Always
                  imagePullSecret: pull
                  pluginName: root
                  pluginConfig: {{a: 1}}
                  failStrategy: FAIL_OPEN
                  vmConfig: {{env: [{{name: POD, valueFrom: HOST}}]}}
                  type: HTTP
                """
            )
        )
    )
    spec = plugin.spec
    assert plugin.key == ObjectKey("web", "ext", TRAFFIC_EXTENSION_KIND)
    assert plugin.lua is None
    assert (spec.url, spec.sha256, spec.image_pull_secret) == (
        "oci://reg.example/f:v1",
        SHA,
        "pull",
    )
    assert spec.image_pull_policy == wasm_pb2.Always
    assert spec.fail_strategy == wasm_pb2.FAIL_OPEN
    assert (spec.plugin_name, spec.phase, spec.priority.value) == ("root", wasm_pb2.AUTHZ, 7)
    assert spec.selector.match_labels == {"app": "web"}
    assert spec.match[0].ports[0].number == 8080
    assert spec.vm_config.env[0].value_from == wasm_pb2.HOST
    assert spec.plugin_config.fields["a"].number_value == 1


def test_lua_keeps_its_code_and_placement() -> None:
    """A Lua extension carries its code and only placement fields in the spec."""
    code = 'function envoy_on_request(h) h:headers():add("x-a", "1") end\n'
    plugin = only(
        parse(extension(f"phase: UNSPECIFIED\npriority: 3\nlua:\n  inlineCode: '{code.strip()}'\n"))
    )
    assert plugin.lua == code.strip()
    assert plugin.spec.url == ""
    assert plugin.spec.phase == wasm_pb2.UNSPECIFIED_PHASE
    assert plugin.spec.priority.value == 3


def test_a_trafficextension_supersedes_a_wasmplugin_of_the_same_name() -> None:
    """Both kinds are named <ns>.<name>; the WasmPlugin of a shared name is dropped, warned."""
    text = (
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n"
        "metadata: {name: ext, namespace: web}\nspec: {url: oci://r/g:v1}\n---\n"
        + extension("wasm: {url: oci://r/f:v1}\n")
        + "---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n"
        "metadata: {name: other, namespace: web}\nspec: {url: oci://r/h:v1}\n"
    )
    parsed = parse(text)
    assert messages(parsed) == []
    assert sorted(p.resource_name for p in parsed.plugins) == ["web.ext", "web.ext", "web.other"]
    kept, dropped = supersede({p.key: p for p in parsed.plugins})
    assert sorted(str(key) for key in kept) == ["TrafficExtension web/ext", "web/other"]
    assert [str(problem) for problem in dropped.values()] == [
        "te.yaml:1: warning: WasmPlugin web/ext is not served: TrafficExtension web/ext"
        " (at te.yaml:6) has the same resource name web.ext and supersedes it, as in Istio 1.30"
        " (which serves both by renaming the WasmPlugin); rename one of them or delete the"
        " WasmPlugin"
    ]
    assert list(dropped) == [ObjectKey("web", "ext")]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            "phase: STATS\n",
            "te.yaml:6: spec: exactly one of wasm or lua must be set (the CRD's rule; istiod"
            " would drop an extension with neither)",
            id="neither",
        ),
        pytest.param(
            "wasm: {url: oci://r/f:v1}\nlua: {inlineCode: x}\n",
            "te.yaml:6: spec: exactly one of wasm or lua must be set (the CRD's rule), not both",
            id="both",
        ),
        pytest.param(
            "wasm: {url: ''}\n",
            "te.yaml:7: spec.wasm.url: required: the URL of the Wasm module (oci://, https://,"
            " http:// or file://; no scheme means oci://)",
            id="empty-url",
        ),
        pytest.param(
            "lua: {inlineCode: ''}\n",
            "te.yaml:7: spec.lua.inlineCode: must not be empty (the CRD requires it; istiod"
            " would drop the extension)",
            id="empty-lua",
        ),
        pytest.param(
            "lua: {}\n",
            "te.yaml:7: spec.lua.inlineCode: required: the Lua code (envoy_on_request and/or"
            " envoy_on_response)",
            id="lua-without-code",
        ),
        pytest.param(
            "url: oci://r/f:v1\nwasm: {url: oci://r/f:v1}\n",
            "te.yaml:7: spec.url: unknown field; in a TrafficExtension it belongs under spec.wasm",
            id="wasm-field-at-top",
        ),
        pytest.param(
            "wasm:\n  url: oci://r/f:v1\n  priority: 3\n",
            "te.yaml:9: spec.wasm.priority: unknown field; it belongs directly under spec,"
            " not spec.wasm",
            id="placement-field-in-wasm",
        ),
        pytest.param(
            "phase: UNSPECIFIED_PHASE\nwasm: {url: oci://r/f:v1}\n",
            'te.yaml:7: spec.phase: invalid value string "UNSPECIFIED_PHASE"; valid options:'
            " UNSPECIFIED, AUTHN, AUTHZ, STATS",
            id="wasmplugin-phase-name",
        ),
        pytest.param(
            "lua: {inlineCode: x, code: y}\n",
            "te.yaml:7: spec.lua.code: unknown field; valid fields: inlineCode",
            id="lua-unknown-field",
        ),
        pytest.param(
            "selector: {matchLabels: {a: b}}\ntargetRefs: [{kind: Gateway, group:"
            " gateway.networking.k8s.io, name: g}]\nlua: {inlineCode: x}\n",
            "te.yaml:8: spec.targetRefs: only one of selector, targetRef or targetRefs may be set;"
            " found selector and targetRefs",
            id="selector-and-targetrefs",
        ),
        pytest.param(
            "wasm: {url: oci://r/f:v1, sha256: abc}\n",
            "te.yaml:7: spec.wasm.sha256: must be 64 characters long (got 3)",
            id="wasm-rule-at-its-own-path",
        ),
    ],
)
def test_istio_rules_refuse_with_path_and_line(spec: str, expected: str) -> None:
    """Each CRD/webhook rule refuses the object, naming the field at its line."""
    parsed = parse(extension(spec))
    assert expected in messages(parsed)
    assert parsed.plugins == ()
    assert parsed.invalid_keys == (ObjectKey("web", "ext", TRAFFIC_EXTENSION_KIND),)


def test_lua_size_limits_count_characters_and_bytes() -> None:
    """The CRD limits characters, the webhook bytes; both at 64 KiB."""
    ascii_ok = {"inlineCode": "-" * 65536}
    too_many_chars = {"inlineCode": "-" * 65537}
    too_many_bytes = {"inlineCode": "é" * 40000}  # 40000 characters, 80000 bytes

    def check(lua: dict[str, str]) -> list[str]:
        value = {
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "TrafficExtension",
            "metadata": {"name": "ext", "namespace": "web"},
            "spec": {"lua": lua},
        }
        parsed = parse_object(value, source="kubernetes:web/ext")
        assert parsed is not None
        return [str(p) for p in parsed.problems]

    assert check(ascii_ok) == []
    assert check(too_many_chars) == [
        "kubernetes:web/ext:0: spec.lua.inlineCode: must be at most 65536 characters (the CRD's"
        " maxLength), got 65537; use a Wasm module for larger filters"
    ]
    assert check(too_many_bytes) == [
        "kubernetes:web/ext:0: spec.lua.inlineCode: must be at most 65536 bytes as UTF-8 (Istio's"
        " webhook; istiod would drop the extension), got 80000"
    ]


def test_wrong_apiversion_keeps_the_extension_key() -> None:
    """A TrafficExtension with a bad apiVersion is invalid under its own key, not a WasmPlugin's."""
    text = extension("lua: {inlineCode: x}\n").replace("v1alpha1", "v1", 1)
    parsed = parse(text)
    assert messages(parsed) == [
        'te.yaml:1: apiVersion: unsupported apiVersion string "extensions.istio.io/v1" for kind'
        " TrafficExtension; the supported one is extensions.istio.io/v1alpha1"
    ]
    assert parsed.invalid_keys == (ObjectKey("web", "ext", TRAFFIC_EXTENSION_KIND),)


def test_duplicate_extension_in_one_file_is_named_by_kind() -> None:
    """The second definition of one TrafficExtension is ignored with a message naming its kind."""
    doc = extension("lua: {inlineCode: x}\n")
    parsed = parse(doc + "---\n" + doc)
    assert messages(parsed) == [
        "te.yaml:9: duplicate TrafficExtension web/ext: already defined on"
        " line 1; this definition is ignored"
    ]
