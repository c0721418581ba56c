"""``wasmxds validate`` warns about a WasmPlugin that a TrafficExtension supersedes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.test_cli_validate import plugin, run_validate
from wasmxds.cli.validate import EXIT_OK, EXIT_PROBLEMS

EXTENSION = """\
apiVersion: extensions.istio.io/v1alpha1
kind: TrafficExtension
metadata:
  name: f
spec:
  lua: {inlineCode: 'function envoy_on_request(h) end'}
"""


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    # validate configures structlog for the process, bound to the captured stderr.
    yield
    structlog.reset_defaults()


def test_wasmplugin_of_a_trafficextensions_name_is_warned_across_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same ns/name in two files: a warning at the WasmPlugin naming both; --strict fails."""
    plugins = "# the WasmPlugin\n" + plugin("f") + "---\n" + plugin("g")
    (tmp_path / "a-plugin.yaml").write_text(plugins)
    (tmp_path / "b-extension.yaml").write_text(EXTENSION)
    assert run_validate(str(tmp_path)) == EXIT_OK
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{tmp_path / 'a-plugin.yaml'}:2: warning: WasmPlugin default/f is not served:"
        f" TrafficExtension default/f (at {tmp_path / 'b-extension.yaml'}:1) has the same"
        " resource name default.f and supersedes it, as in Istio 1.30 (which serves both by"
        " renaming the WasmPlugin); rename one of them or delete the WasmPlugin"
    ]
    assert "0 errors, 1 warning" in err
    assert run_validate("--strict", str(tmp_path)) == EXIT_PROBLEMS


def test_different_names_or_namespaces_are_not_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A TrafficExtension only supersedes the WasmPlugin of its own namespace and name."""
    other_namespace = plugin("f").replace("  name: f\n", "  name: f\n  namespace: web\n")
    (tmp_path / "p.yaml").write_text(plugin("g") + "---\n" + other_namespace)
    (tmp_path / "e.yaml").write_text(EXTENSION)
    assert run_validate(str(tmp_path)) == EXIT_OK
    out, _ = capsys.readouterr()
    assert out == ""
