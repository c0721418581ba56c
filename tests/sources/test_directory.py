"""The directory source on a real filesystem with real watchfiles events."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from wasmxds.api.objects import ObjectKey
from wasmxds.sources.directory import DirectorySource
from wasmxds.sources.state import SourceState


def plugin(name: str, value: str = "v1", namespace: str = "default") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: extensions.istio.io/v1alpha1
        kind: WasmPlugin
        metadata:
          name: {name}
          namespace: {namespace}
        spec:
          url: http://modules.example/{name}.wasm
          pluginConfig:
            value: "{value}"
        """
    )


def value_of(state: SourceState, name: str, namespace: str = "default") -> str | None:
    found = state.plugins.get(ObjectKey(namespace, name))
    if found is None:
        return None
    return found.spec.plugin_config.fields["value"].string_value


class Watched:
    """A running DirectorySource and a way to wait for its state."""

    def __init__(self, source: DirectorySource) -> None:
        self.source = source
        self.changes = 0
        self.changed = asyncio.Event()

    async def until(
        self, check: Callable[[SourceState], bool], timeout: float = 10.0
    ) -> SourceState:
        async with asyncio.timeout(timeout):
            while not check(self.source.state):
                await self.changed.wait()
                self.changed.clear()
        return self.source.state


@contextlib.asynccontextmanager
async def watching(*directories: Path) -> AsyncIterator[Watched]:
    watched: Watched

    def changed() -> None:
        watched.changes += 1
        watched.changed.set()

    watched = Watched(DirectorySource(list(directories), on_change=changed))
    task = asyncio.create_task(watched.source.run())
    try:
        async with asyncio.timeout(10):
            await watched.source.loaded.wait()
        # watchfiles needs a moment to install its watches after the scan.
        await asyncio.sleep(0.2)
        yield watched
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_initial_load_is_recursive_and_skips_hidden_and_temp_files(tmp_path: Path) -> None:
    """Nested files load; hidden files, hidden dirs and editor temporaries do not."""
    (tmp_path / "a.yaml").write_text(plugin("a"))
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "b.yml").write_text(plugin("b"))
    (tmp_path / ".hidden.yaml").write_text(plugin("hidden"))
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "c.yaml").write_text(plugin("in-git"))
    (tmp_path / "a.yaml~").write_text(plugin("backup"))
    (tmp_path / "notes.txt").write_text(plugin("text"))
    async with watching(tmp_path) as watched:
        names = {key.name for key in watched.source.state.plugins}
        assert names == {"a", "b"}
        assert watched.changes == 1


async def test_files_written_into_hidden_directories_later_stay_unread(tmp_path: Path) -> None:
    """A file written into a hidden directory after the scan (a git checkout) is not loaded."""
    (tmp_path / "a.yaml").write_text(plugin("a"))
    (tmp_path / ".git").mkdir()
    async with watching(tmp_path) as watched:
        (tmp_path / ".git" / "c.yaml").write_text(plugin("in-git"))
        staged = tmp_path / ".staging"
        staged.mkdir()
        (staged / "d.yaml").write_text(plugin("in-staging"))
        (tmp_path / "b.yaml").write_text(plugin("b"))
        state = await watched.until(lambda s: ObjectKey("default", "b") in s.plugins)
        await asyncio.sleep(0.3)  # the hidden files' events came before b.yaml's
        assert {key.name for key in state.plugins} == {"a", "b"}


async def test_edit_is_applied(tmp_path: Path) -> None:
    """Rewriting a file updates its plugin."""
    path = tmp_path / "a.yaml"
    path.write_text(plugin("a", "v1"))
    async with watching(tmp_path) as watched:
        path.write_text(plugin("a", "v2"))
        await watched.until(lambda s: value_of(s, "a") == "v2")


async def test_editor_save_via_rename_is_applied(tmp_path: Path) -> None:
    """Editors that write a temp file and rename it over the original are followed."""
    path = tmp_path / "a.yaml"
    path.write_text(plugin("a", "v1"))
    async with watching(tmp_path) as watched:
        temp = tmp_path / ".a.yaml.swp"
        temp.write_text(plugin("a", "v2"))
        os.replace(temp, path)
        await watched.until(lambda s: value_of(s, "a") == "v2")


async def test_delete_removes_plugins(tmp_path: Path) -> None:
    """Deleting a file removes what it defined."""
    (tmp_path / "a.yaml").write_text(plugin("a"))
    (tmp_path / "b.yaml").write_text(plugin("b"))
    async with watching(tmp_path) as watched:
        (tmp_path / "a.yaml").unlink()
        state = await watched.until(lambda s: ObjectKey("default", "a") not in s.plugins)
        assert ObjectKey("default", "b") in state.plugins


async def test_new_and_removed_subdirectories(tmp_path: Path) -> None:
    """A new subdirectory's files are loaded; removing the directory removes them."""
    async with watching(tmp_path) as watched:
        sub = tmp_path / "team" / "edge"
        sub.mkdir(parents=True)
        (sub / "x.yaml").write_text(plugin("x"))
        await watched.until(lambda s: value_of(s, "x") == "v1")
        shutil.rmtree(tmp_path / "team")
        await watched.until(lambda s: not s.plugins)


async def test_broken_yaml_keeps_last_good_content(tmp_path: Path) -> None:
    """A file that stops parsing keeps serving its plugins; the error is reported with its line."""
    path = tmp_path / "a.yaml"
    path.write_text(plugin("a", "good"))
    async with watching(tmp_path) as watched:
        path.write_text(plugin("a", "bad") + "spec: [unclosed\n")
        state = await watched.until(lambda s: any(p.is_error for p in s.problems))
        assert value_of(state, "a") == "good"
        error = next(p for p in state.problems if p.is_error)
        assert error.path == str(path)
        assert error.line > 0
        path.write_text(plugin("a", "fixed"))
        state = await watched.until(lambda s: value_of(s, "a") == "fixed")
        assert not any(p.is_error for p in state.problems)


async def test_invalid_object_keeps_its_last_version_others_update(tmp_path: Path) -> None:
    """One object going invalid keeps its previous version; its neighbours still change."""
    path = tmp_path / "both.yaml"
    path.write_text(plugin("a", "1") + "---\n" + plugin("b", "1"))
    async with watching(tmp_path) as watched:
        broken_a = plugin("a", "2").replace("url: http://modules.example/a.wasm", "url: ftp://x/a")
        path.write_text(broken_a + "---\n" + plugin("b", "2"))
        state = await watched.until(lambda s: value_of(s, "b") == "2")
        assert value_of(state, "a") == "1"
        assert any("spec.url" in p.message for p in state.problems if p.is_error)


async def test_duplicate_keeps_the_first_definition(tmp_path: Path) -> None:
    """The same namespace/name in a second file is an error; the first stays until it goes."""
    (tmp_path / "a.yaml").write_text(plugin("same", "first"))
    async with watching(tmp_path) as watched:
        (tmp_path / "b.yaml").write_text(plugin("same", "second"))
        state = await watched.until(
            lambda s: any("already defined" in p.message for p in s.problems)
        )
        assert value_of(state, "same") == "first"
        duplicate = next(p for p in state.problems if "already defined" in p.message)
        assert duplicate.path == str(tmp_path / "b.yaml")
        assert str(tmp_path / "a.yaml") in duplicate.message
        (tmp_path / "a.yaml").unlink()
        state = await watched.until(lambda s: value_of(s, "same") == "second")
        assert not state.problems


async def test_configmap_symlink_swap_is_followed(tmp_path: Path) -> None:
    """A Kubernetes ConfigMap volume update (the ..data symlink swap) reloads the files."""
    first = tmp_path / "..2026_01_01"
    first.mkdir()
    (first / "a.yaml").write_text(plugin("a", "v1"))
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "a.yaml").symlink_to("..data/a.yaml")
    async with watching(tmp_path) as watched:
        assert value_of(watched.source.state, "a") == "v1"
        second = tmp_path / "..2026_01_02"
        second.mkdir()
        (second / "a.yaml").write_text(plugin("a", "v2"))
        (tmp_path / "..data_tmp").symlink_to(second.name)
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        shutil.rmtree(first)
        await watched.until(lambda s: value_of(s, "a") == "v2")


async def test_unchanged_rewrite_is_not_a_change(tmp_path: Path) -> None:
    """Touching a file without changing its bytes does not trigger a push."""
    path = tmp_path / "a.yaml"
    path.write_text(plugin("a"))
    async with watching(tmp_path) as watched:
        path.write_text(plugin("a"))
        (tmp_path / "other.yaml").write_text(plugin("other"))
        await watched.until(lambda s: ObjectKey("default", "other") in s.plugins)
        assert watched.changes == 2


@pytest.mark.parametrize("namespace", ["edge", "istio-system"])
async def test_namespaces_are_kept_apart(tmp_path: Path, namespace: str) -> None:
    """The same name in two namespaces is two plugins, not a duplicate."""
    (tmp_path / "a.yaml").write_text(plugin("p") + "---\n" + plugin("p", namespace=namespace))
    async with watching(tmp_path) as watched:
        assert set(watched.source.state.plugins) == {
            ObjectKey("default", "p"),
            ObjectKey(namespace, "p"),
        }


async def test_broken_file_note_points_at_the_error(tmp_path: Path) -> None:
    """The "keeping last good" note for an unreadable file sits on the syntax error's line."""
    path = tmp_path / "a.yaml"
    path.write_text(plugin("a"))
    async with watching(tmp_path) as watched:
        path.write_text(plugin("a") + "spec: [unclosed\n")
        state = await watched.until(lambda s: any(not p.is_error for p in s.problems))
        error = next(p for p in state.problems if p.is_error)
        note = next(p for p in state.problems if not p.is_error)
        assert note.line == error.line
        assert "1 object(s)" in note.message
