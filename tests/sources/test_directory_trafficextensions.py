"""TrafficExtensions in watched directories, beside WasmPlugins."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.sources.test_directory import plugin, value_of, watching
from wasmxds.api.objects import TRAFFIC_EXTENSION_KIND, ObjectKey
from wasmxds.sources.state import SourceState

EXT = ObjectKey("default", "a", TRAFFIC_EXTENSION_KIND)


def extension(code: str) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: extensions.istio.io/v1alpha1
        kind: TrafficExtension
        metadata:
          name: a
        spec:
          lua:
            inlineCode: "{code}"
        """
    )


def code_of(state: SourceState) -> str | None:
    found = state.plugins.get(EXT)
    return None if found is None else found.lua


async def test_extension_beside_wasmplugin_edits_and_keeps_last_good(tmp_path: Path) -> None:
    """Both kinds of default/a load; an edit flows; a broken edit keeps the last valid one."""
    (tmp_path / "p.yaml").write_text(plugin("a"))
    (tmp_path / "e.yaml").write_text(extension("-- v1"))
    async with watching(tmp_path) as watched:
        state = watched.source.state
        assert value_of(state, "a") == "v1"
        assert code_of(state) == "-- v1"

        (tmp_path / "e.yaml").write_text(extension("-- v2"))
        await watched.until(lambda s: code_of(s) == "-- v2")

        (tmp_path / "e.yaml").write_text(extension("-- v3") + "  wasm: {url: oci://r/f:v1}\n")
        state = await watched.until(lambda s: bool(s.problems))
        assert code_of(state) == "-- v2"
        assert [str(p) for p in state.problems] == [
            f"{tmp_path / 'e.yaml'}:5: spec: exactly one of wasm or lua must be set (the CRD's"
            " rule), not both",
            f"{tmp_path / 'e.yaml'}:1: warning: keeping the last valid version of"
            " TrafficExtension default/a until the error above is fixed",
        ]
        assert value_of(state, "a") == "v1"
