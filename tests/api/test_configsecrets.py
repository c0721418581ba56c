"""The secrets.wasmxds.io/plugin-config annotation, the merge, and Opaque Secrets."""

from __future__ import annotations

import base64

import pytest
from google.protobuf import json_format, struct_pb2

from wasmxds.api.configsecrets import (
    ANNOTATION,
    MAX_REFERENCES,
    ConfigSecret,
    SecretRef,
    SecretValue,
    config_secret_refs,
    parse_annotation,
    parse_config_secret,
    path_collisions,
    with_values,
)
from wasmxds.api.objects import ObjectKey
from wasmxds.api.parse import parse_text

VALUE = "sk-live-do-not-print-4242"


def struct(value: dict[str, object]) -> struct_pb2.Struct:
    return json_format.ParseDict(value, struct_pb2.Struct())


def test_lines_become_references():
    """Each line is path=secret/key; blanks and comments are skipped; lines are counted."""
    refs, problems = parse_annotation(
        "# keys for the upstream\nauth.api_key=api-keys/primary\n\n  upstream.token = tok/token \n"
    )
    assert problems == ()
    assert refs == (
        SecretRef(("auth", "api_key"), "api-keys", "primary", 2),
        SecretRef(("upstream", "token"), "tok", "token", 4),
    )
    assert str(refs[0]) == "auth.api_key=api-keys/primary"
    assert refs[0].masked == "[from secret api-keys/primary]"


def test_escaped_dots_and_equals_stay_in_a_key():
    r"""``\.`` and ``\=`` are part of a key; the dotted form writes them back escaped."""
    (ref,), problems = parse_annotation(r"headers.x-api\.key\=v=s/k.with.dots")
    assert problems == ()
    assert ref.path == ("headers", "x-api.key=v")
    assert ref.key == "k.with.dots"
    assert ref.dotted == r"headers.x-api\.key=v"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no equals sign", "expected <path>=<secret>/<key>"),
        ("a..b=s/k", "is not a dotted pluginConfig path"),
        ("=s/k", "is not a dotted pluginConfig path"),
        (r"a\nb=s/k", r"only \. \= and \\ may be escaped"),
        ("a=other-ns/s/k", "names a namespace"),
        ("a=s", "is not <secret>/<key>"),
        ("a=Not_A_Name/k", "is not a valid Secret name"),
        ("a=s/bad key", "is not a valid Secret key"),
    ],
)
def test_malformed_lines_are_refused(text, message):
    """Every malformed line is a problem at its own line, saying what is expected."""
    refs, problems = parse_annotation(f"ok=s/k\n{text}")
    assert [ref.line for ref in refs] == [1]
    assert [p.line for p in problems] == [2]
    assert message in problems[0].message


def test_a_path_set_twice_or_inside_another_is_refused():
    """Two lines may not set the same path, nor one path inside another's string."""
    _, problems = parse_annotation("a.b=s/k\na.b=s/k2\na.b.c=s/k3")
    assert [(p.line, p.message.split(",")[0]) for p in problems] == [
        (2, "path a.b is already set on line 1"),
        (3, "path a.b.c is inside a.b"),
    ]


def test_too_many_references_are_refused():
    """More than MAX_REFERENCES lines is a problem (a configuration, not a vault)."""
    text = "\n".join(f"k{i}=s/k" for i in range(MAX_REFERENCES + 1))
    _, problems = parse_annotation(text)
    assert any(f"at most {MAX_REFERENCES}" in p.message for p in problems)


def test_collisions_with_plugin_config():
    """A path pluginConfig already sets, or that crosses a non-object, collides."""
    refs, _ = parse_annotation("a.b=s/k\nn.x=s/k\nlist.x=s/k\nfree.x=s/k\nobj.new=s/k")
    config = struct({"a": {"b": "placeholder"}, "n": 3, "list": [1], "obj": {"old": 1}})
    found = {str(ref): message for ref, message in path_collisions(refs, config)}
    assert found == {
        "a.b=s/k": "pluginConfig already sets a.b (a string)",
        "n.x=s/k": "pluginConfig.n is a number, not an object",
        "list.x=s/k": "pluginConfig.list is a list, not an object",
    }


def test_values_are_merged_into_a_copy():
    """with_values creates objects as needed and leaves the plugin's own Struct alone."""
    config = struct({"obj": {"old": 1}, "keep": True})
    refs, _ = parse_annotation("obj.new=s/k\ndeep.er.x=s/k2")
    merged = with_values(config, [(refs[0].path, "v1"), (refs[1].path, "v2")])
    assert json_format.MessageToDict(merged) == {
        "obj": {"old": 1.0, "new": "v1"},
        "deep": {"er": {"x": "v2"}},
        "keep": True,
    }
    assert json_format.MessageToDict(config) == {"obj": {"old": 1.0}, "keep": True}


def test_a_value_never_shows_in_a_repr():
    """SecretValue and ConfigSecret reprs name references and keys, never values."""
    (ref,), _ = parse_annotation("a=s/k")
    assert VALUE not in repr(SecretValue(ref, VALUE))
    parsed = parse_config_secret(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s"},
            "stringData": {"k": VALUE},
        },
        source="s.yaml",
        line=1,
        locate=lambda _: 1,
        default_namespace="default",
    )
    assert parsed is not None
    assert parsed.secret is not None
    assert VALUE not in repr(parsed.secret)
    assert VALUE not in str(parsed.secret)
    assert "keys=['k']" in repr(parsed.secret)


def test_opaque_secret_data_and_string_data_merge():
    """data is base64; stringData wins key by key, as the API server merges them."""
    encoded = base64.b64encode(b"from-data").decode()
    parsed = parse_config_secret(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": "api-keys", "namespace": "team-a"},
            "data": {"primary": encoded, "both": encoded},
            "stringData": {"both": "from-stringData"},
        },
        source="s.yaml",
        line=1,
        locate=lambda _: 1,
        default_namespace="default",
    )
    assert parsed is not None
    assert parsed.secret is not None
    assert parsed.secret.key == ObjectKey("team-a", "api-keys")
    assert dict(parsed.secret.data) == {"primary": b"from-data", "both": b"from-stringData"}


def test_other_secret_types_are_not_config_secrets():
    """Only Opaque (or untyped) Secrets count; a TLS Secret is somebody else's."""
    value: dict[object, object] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
    }
    assert (
        parse_config_secret(
            value, source="s.yaml", line=1, locate=lambda _: 1, default_namespace="default"
        )
        is None
    )


def test_file_problems_point_at_the_annotation_line_and_never_hold_a_value():
    """In a file, an annotation problem names path:line of its own line; a bad Secret's
    problem names the key, not the value."""
    text = f"""\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: p
  annotations:
    {ANNOTATION}: |
      auth.api_key=api-keys/primary
      existing.x=api-keys/other
spec:
  url: file:///filter.wasm
  pluginConfig:
    existing: 3
---
apiVersion: v1
kind: Secret
metadata:
  name: api-keys
data:
  primary: "{VALUE}!"
"""
    parsed = parse_text(text, "p.yaml")
    rendered = [str(p) for p in parsed.problems]
    assert rendered == [
        f'p.yaml:8: metadata.annotations["{ANNOTATION}"]: line 2: existing.x=api-keys/other:'
        " pluginConfig.existing is a number, not an object; remove one of the two",
        "p.yaml:19: data.primary: not valid base64",
    ]
    assert parsed.invalid_config_secrets == (ObjectKey("default", "api-keys"),)
    assert VALUE not in repr(parsed)


def test_valid_file_yields_plugin_refs_and_secret():
    """A valid plugin keeps its annotation (references only); the Secret is collected."""
    text = f"""\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: p
  annotations:
    {ANNOTATION}: "auth.api_key=api-keys/primary"
spec:
  url: file:///filter.wasm
---
apiVersion: v1
kind: Secret
metadata:
  name: api-keys
stringData:
  primary: {VALUE}
"""
    parsed = parse_text(text, "p.yaml")
    assert parsed.problems == ()
    (plugin,) = parsed.plugins
    assert [str(r) for r in config_secret_refs(plugin.annotations)] == [
        "auth.api_key=api-keys/primary"
    ]
    (secret,) = parsed.config_secrets
    assert secret.data["primary"] == VALUE.encode()


@pytest.mark.parametrize(
    ("labels", "labelled"),
    [
        ({"secrets.wasmxds.io/plugin-config": "true"}, True),
        ({"secrets.wasmxds.io/plugin-config": "yes"}, False),
        ({"other": "true"}, False),
        (None, False),
    ],
)
def test_only_the_label_set_to_true_opts_a_secret_in(labels, labelled):
    """A Secret is readable by plugins only with secrets.wasmxds.io/plugin-config: "true";
    adding the label changes its fingerprint (so it pushes like an edit)."""

    def parse(with_labels: object) -> ConfigSecret:
        metadata: dict[str, object] = {"name": "s"}
        if with_labels is not None:
            metadata["labels"] = with_labels
        parsed = parse_config_secret(
            {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "stringData": {"k": "v"}},
            source="s.yaml",
            line=1,
            locate=lambda _: 1,
            default_namespace="default",
        )
        assert parsed is not None
        assert parsed.secret is not None
        return parsed.secret

    secret = parse(labels)
    assert secret.labelled is labelled
    unlabelled = parse(None)
    assert (secret.fingerprint != unlabelled.fingerprint) is labelled
