"""Listener/Cluster templates: strict Envoy schema, wrapper fields, errors with lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from wasmxds.api.templates import Direction, parse_templates

LISTENER = (Path(__file__).parent / "templates" / "ingress.yaml").read_text()


def test_valid_file_gives_listener_and_cluster():
    """Both kinds parse, with direction, node selector and the Envoy objects."""
    parsed = parse_templates(LISTENER.encode(), "t.yaml")
    assert parsed.problems == ()
    (listener,) = parsed.listeners
    assert listener.direction is Direction.INBOUND
    assert listener.port == 8080
    assert listener.nodes.matches("edge", {"app": "gw", "x": "y"})
    assert not listener.nodes.matches("other", {"app": "gw"})
    assert parsed.clusters[0].cluster.name == "upstream"


@pytest.mark.parametrize(
    ("edit", "line", "fragment"),
    [
        pytest.param(
            ("direction: INBOUND", "direction: SIDEWAYS"), 6, "spec.direction", id="bad-direction"
        ),
        pytest.param(
            ("stat_prefix: ingress", "stat_prefx: ingress"),
            18,
            "stat_prefx",
            id="unknown-envoy-field",
        ),
        pytest.param(
            ("jwt_authn.v3.JwtAuthentication", "jwt_authn.v3.NoSuchThing"),
            22,
            "NoSuchThing",
            id="unknown-type",
        ),
        pytest.param(
            ("    name: ingress\n    address", "    address"),
            10,
            "name",
            id="listener-name-required",
        ),
        pytest.param(("  nodes:\n", "  nodez:\n"), 7, "nodez", id="unknown-wrapper-field"),
        pytest.param(
            ("kind: ListenerTemplate", "kind: ListenerTemplat"), 2, "kind", id="unknown-kind"
        ),
    ],
)
def test_errors_name_the_field_and_line(edit, line, fragment):
    """Each mistake is one error at the line of the field it is about."""
    old, new = edit
    assert old in LISTENER
    parsed = parse_templates(LISTENER.replace(old, new, 1).encode(), "t.yaml")
    errors = [p for p in parsed.problems if p.is_error]
    assert errors, "expected an error"
    assert errors[0].line == line, errors
    assert fragment in errors[0].message
    assert parsed.listeners == ()


def test_syntax_error_marks_the_file_untrustworthy():
    """Broken YAML is reported with its line and syntax_ok False."""
    parsed = parse_templates(b"kind: [oops\n", "t.yaml")
    assert not parsed.syntax_ok
    assert parsed.problems[0].line in (1, 2)  # the open bracket, or where it should close


def test_other_documents_are_errors():
    """A templates directory holds only templates; anything else is reported."""
    parsed = parse_templates(b"apiVersion: v1\nkind: ConfigMap\n", "t.yaml")
    assert [p.message for p in parsed.problems] == [
        "expected a ListenerTemplate or ClusterTemplate (wasmxds.io/v1alpha1)"
    ]


ANCHORED = LISTENER.replace(
    "  listener:\n",
    "  anchors:\n    authn: [envoy.filters.http.jwt_authn]\n"
    "    stats: [envoy.filters.network.http_connection_manager]\n  listener:\n",
    1,
)


def test_anchors_mark_filters_by_name():
    """spec.anchors maps HTTP and network filter names to their roles."""
    parsed = parse_templates(ANCHORED.encode(), "t.yaml")
    assert parsed.problems == ()
    assert parsed.listeners[0].anchors == {
        "envoy.filters.http.jwt_authn": "authn",
        "envoy.filters.network.http_connection_manager": "stats",
    }


@pytest.mark.parametrize(
    ("edit", "line", "fragment"),
    [
        pytest.param(
            ("authn: [envoy.filters.http.jwt_authn]", "authn: [envoy.filters.http.jwt_auth]"),
            11,
            "'envoy.filters.http.jwt_auth' is not the name of a filter in spec.listener"
            " (anchors mark the template's own filters by name); did you mean"
            ' "envoy.filters.http.jwt_authn"?',
            id="unknown-filter",
        ),
        pytest.param(
            (
                "stats: [envoy.filters.network.http_connection_manager]",
                "authz: [envoy.filters.http.jwt_authn]",
            ),
            12,
            "'envoy.filters.http.jwt_authn' is already marked authn",
            id="two-roles",
        ),
        pytest.param(
            ("    authn:", "    authenticate:"), 11, "spec.anchors.authenticate", id="role"
        ),
        pytest.param(
            ("authn: [envoy.filters.http.jwt_authn]", "authn: envoy.filters.http.jwt_authn"),
            11,
            "expected a list of filter names",
            id="not-a-list",
        ),
    ],
)
def test_anchor_mistakes_name_the_entry_and_line(edit, line, fragment):
    """A mark that names no filter, a second role, or a bad role is refused at its line."""
    old, new = edit
    assert old in ANCHORED
    parsed = parse_templates(ANCHORED.replace(old, new, 1).encode(), "t.yaml")
    errors = [p for p in parsed.problems if p.is_error]
    assert [e.line for e in errors] == [line], errors
    assert fragment in errors[0].message
    assert parsed.listeners == ()
