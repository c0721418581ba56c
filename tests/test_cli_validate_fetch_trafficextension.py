"""`wasmxds validate --fetch` on TrafficExtensions: Wasm ones are fetched, Lua ones need nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli_validate import run_validate
from tests.test_cli_validate_fetch import (
    ModuleHost,
    host,  # noqa: F401  (the fixture)
)


def extension(name: str, body: str) -> str:
    return (
        "apiVersion: extensions.istio.io/v1alpha1\nkind: TrafficExtension\n"
        f"metadata:\n  name: {name}\nspec:\n{body}"
    )


def test_fetch_checks_wasm_extensions_and_skips_lua(
    host: ModuleHost,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A missing module is reported at spec.wasm.url; a good one and a Lua body pass."""
    documents = [
        extension("good", f"  wasm:\n    url: {host.url('/good.wasm')}\n"),
        extension("typo", f"  wasm:\n    url: {host.url('/typo.wasm')}\n"),
        extension("lua", "  lua:\n    inlineCode: 'function envoy_on_request(h) end'\n"),
    ]
    (tmp_path / "e.yaml").write_text("---\n".join(documents))
    assert run_validate("--fetch", str(tmp_path / "e.yaml")) == 1
    out, err = capsys.readouterr()
    (line,) = out.splitlines()
    assert line.startswith(f"{tmp_path}/e.yaml:9: spec.wasm.url: module unavailable: ")
    assert "404" in line
    assert err == "1 file, 3 plugins, 1 error, 0 warnings\n"
