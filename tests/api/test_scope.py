"""The scope.wasmxds.io annotations: one grammar, route selection, merge patches, problems."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.test_cli_validate import run_validate
from wasmxds.api.scope import (
    UNSCOPED,
    PluginScope,
    ScopeOverride,
    Selector,
    merge_patch,
    plugin_scope,
    scope_issues,
)


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    # validate configures structlog for the process, bound to the captured stderr.
    yield
    structlog.reset_defaults()


def test_annotations_parse_into_a_scope_with_overrides_in_label_order():
    """Lists split on commas; overrides collect their dimensions and JSON patch by label."""
    scope = plugin_scope(
        {
            "scope.wasmxds.io/hosts": "api.example.com, *.internal",
            "scope.wasmxds.io/path-prefixes": "/api/",
            "scope.wasmxds.io/override.b.routes": "checkout",
            "scope.wasmxds.io/override.b.config": '{"limit": 5}',
            "scope.wasmxds.io/override.a.hosts": "admin.internal",
            "scope.wasmxds.io/override.a.config": '{"mode": null}',
            "other.io/ignored": "x",
        }
    )
    assert scope == PluginScope(
        Selector(hosts=("api.example.com", "*.internal"), path_prefixes=("/api/",)),
        (
            ScopeOverride("a", Selector(hosts=("admin.internal",)), {"mode": None}),
            ScopeOverride("b", Selector(routes=("checkout",)), {"limit": 5}),
        ),
    )
    assert scope.scoped
    assert plugin_scope({}) == UNSCOPED
    assert not UNSCOPED.scoped


def test_selector_needs_every_given_dimension():
    """Hosts glob over a virtual host's domains; routes by name; prefixes on literal paths."""
    selector = Selector(hosts=("*.internal",), routes=("a", "b"), path_prefixes=("/v2",))
    assert selector.host_matches(("x.internal", "y.com"))
    assert selector.host_matches(("*.internal",))
    assert not selector.host_matches(("internal.com",))
    assert selector.route_matches("a", "/v2/items")
    assert not selector.route_matches("c", "/v2/items")
    assert not selector.route_matches("a", "/v1")
    assert not selector.route_matches("a", None)  # a regex route has no literal prefix
    assert Selector().host_matches(("anything",))
    assert Selector().route_matches("", None)


def test_merge_patch_follows_rfc_7386():
    """Keys replace, null deletes, nested objects merge, non-objects replace whole."""
    target = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}
    patch = {"a": None, "b": {"c": 9, "d": None}, "e": {"f": 1}, "g": "new"}
    assert merge_patch(target, patch) == {"b": {"c": 9}, "e": {"f": 1}, "g": "new"}
    assert target == {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}


@pytest.mark.parametrize(
    ("annotations", "why"),
    [
        ({"scope.wasmxds.io/routes": "a,,b"}, "no empty items"),
        ({"scope.wasmxds.io/hosts": "a b"}, "is not a host"),
        ({"scope.wasmxds.io/hosts": "*.*.x"}, "is not a host"),
        ({"scope.wasmxds.io/path-prefixes": "api"}, "must start with '/'"),
        ({"scope.wasmxds.io/host": "a"}, "unknown annotation"),
        ({"scope.wasmxds.io/override.A.routes": "a"}, "override label 'A'"),
        ({"scope.wasmxds.io/override.a.route": "a"}, "unknown override field 'route'"),
        ({"scope.wasmxds.io/override.a.routes": "a"}, "has no scope.wasmxds.io/override.a.config"),
        ({"scope.wasmxds.io/override.a.config": "{}"}, "selects no routes"),
        (
            {"scope.wasmxds.io/override.a.routes": "r", "scope.wasmxds.io/override.a.config": "[]"},
            "expected a JSON object",
        ),
        (
            {"scope.wasmxds.io/override.a.routes": "r", "scope.wasmxds.io/override.a.config": "{"},
            "not JSON",
        ),
    ],
)
def test_bad_annotations_say_what_is_wrong(annotations: dict[str, str], why: str):
    """Each malformed annotation is refused with the reason, at the annotation's line."""
    issues = scope_issues(annotations, lambda path: 3, http=True)
    assert len(issues) == 1, issues
    assert re.search(re.escape(why), issues[0].message), issues
    assert issues[0].line == 3


def test_network_plugins_cannot_be_scoped():
    """Routes exist only for HTTP: a NETWORK plugin with scope annotations is refused."""
    issues = scope_issues({"scope.wasmxds.io/hosts": "a.com"}, lambda path: 0, http=False)
    assert [i.message for i in issues] == [
        "scope annotations apply to HTTP plugins only (type is NETWORK)"
    ]


def test_validate_names_the_annotation_and_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """wasmxds validate reports a malformed scope annotation at its file line."""
    path = tmp_path / "p.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            apiVersion: extensions.istio.io/v1alpha1
            kind: WasmPlugin
            metadata:
              name: p
              annotations:
                scope.wasmxds.io/hosts: "api.example.com"
                scope.wasmxds.io/override.strict.routes: "checkout"
                scope.wasmxds.io/override.strict.config: '{"limit": '
            spec:
              url: oci://ghcr.io/acme/f:v1
            """
        )
    )
    assert run_validate(str(path)) == 1
    out, _ = capsys.readouterr()
    assert out.splitlines() == [
        f'{path}:8: metadata.annotations["scope.wasmxds.io/override.strict.config"]:'
        " not JSON: Expecting value (line 1 column 11)",
    ]


@pytest.mark.parametrize(
    ("annotation", "value", "why"),
    [
        (
            "scope.wasmxds.io/hosts",
            ",".join(f"h{i}.example.com" for i in range(20000)),
            "at most 64",
        ),
        ("scope.wasmxds.io/routes", ",".join(f"r{i}" for i in range(65)), "at most 64"),
        ("scope.wasmxds.io/override.a.path-prefixes", "/a," * 64 + "/b", "at most 64"),
        ("scope.wasmxds.io/hosts", "a" * 254 + ".com", "at most 253 characters"),
        ("scope.wasmxds.io/routes", "r" * 257, "at most 256 characters"),
        ("scope.wasmxds.io/path-prefixes", "/" + "p" * 1024, "at most 1024 characters"),
    ],
)
def test_lists_are_bounded_in_items_and_characters(annotation: str, value: str, why: str):
    """A scope list longer than 64 items, or an item over its length limit, is refused."""
    annotations = {annotation: value}
    if ".a." in annotation:
        annotations["scope.wasmxds.io/override.a.config"] = "{}"
    issues = scope_issues(annotations, lambda path: 5, http=True)
    assert [i.path[-1] for i in issues] == [annotation], issues
    assert why in issues[0].message, issues
    assert issues[0].line == 5


def test_sixty_four_items_of_the_longest_kind_are_accepted():
    """The limits themselves are allowed: 64 hosts of 253 characters."""
    host = "a" * 249 + ".com"
    hosts = ",".join(f"{i:02d}{host[2:]}" for i in range(64))
    assert scope_issues({"scope.wasmxds.io/hosts": hosts}, lambda path: 0, http=True) == []


def test_host_matching_is_exact_or_glob_in_any_case():
    """Exact names match case-insensitively via the set; '*' patterns by glob."""
    selector = plugin_scope({"scope.wasmxds.io/hosts": "API.example.com,*.internal"}).selector
    assert selector.host_matches(("api.EXAMPLE.com",))
    assert selector.host_matches(("x.Internal",))
    assert selector.host_matches(("*.internal",))
    assert not selector.host_matches(("example.com", "internal"))


def test_overrides_on_a_lua_extension_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Lua TrafficExtension has no pluginConfig: a per-route override is refused at its line."""
    path = tmp_path / "lua.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            apiVersion: extensions.istio.io/v1alpha1
            kind: TrafficExtension
            metadata:
              name: lua-header
              namespace: default
              annotations:
                scope.wasmxds.io/hosts: "api.example.com"
                scope.wasmxds.io/override.strict.routes: "checkout"
                scope.wasmxds.io/override.strict.config: '{"limit": 1}'
            spec:
              phase: AUTHN
              lua:
                inlineCode: |
                  function envoy_on_request(request_handle) end
            """
        )
    )
    assert run_validate(str(path)) == 1
    out, _ = capsys.readouterr()
    assert out.splitlines() == [
        f'{path}:9: metadata.annotations["scope.wasmxds.io/override.strict.config"]:'
        " overrides change pluginConfig, which a Lua TrafficExtension does not have;"
        " remove scope.wasmxds.io/override.strict.* (scope.wasmxds.io/hosts, routes and"
        " path-prefixes do apply to Lua)",
    ]
