"""Directory sources and hostile files: refused with a problem, last good content kept."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from tests.api.bombs import alias_bomb, bomb_documents
from tests.sources.test_directory import plugin, value_of, watching
from wasmxds.api.objects import ObjectKey
from wasmxds.sources.state import TemplateState
from wasmxds.sources.templates import TemplateSource

TEMPLATES = Path(__file__).parents[1] / "api" / "templates" / "ingress.yaml"


async def test_plugin_turning_into_a_bomb_keeps_its_last_version(tmp_path: Path) -> None:
    """A plugin whose pluginConfig becomes an alias bomb stays served, and the bomb is reported."""
    path = tmp_path / "a.yaml"
    path.write_text(plugin("a", "good"))
    async with watching(tmp_path) as watched:
        path.write_text(plugin("a", "good").replace('value: "good"', "") + alias_bomb(7, "    "))
        state = await watched.until(lambda s: any(p.is_error for p in s.problems))
        assert value_of(state, "a") == "good"
        error, note = state.problems
        assert (error.path, error.is_error) == (str(path), True)
        assert error.line > 9
        assert "expands to more than 250000 values" in error.message
        assert "keeping the last valid version of this file's 1 object(s)" in note.message


async def test_bomb_of_other_kinds_is_reported(tmp_path: Path) -> None:
    """A multi-document bomb with no WasmPlugin in it is a problem on its file; others load."""
    (tmp_path / "good.yaml").write_text(plugin("good"))
    async with watching(tmp_path) as watched:
        bomb = tmp_path / "bomb.yaml"
        bomb.write_text(bomb_documents(16))
        state = await watched.until(lambda s: bool(s.problems))
        (problem,) = state.problems
        assert (problem.path, problem.line) == (str(bomb), 12)  # where the first aliases are used
        assert "expands to more than" in problem.message
        assert value_of(state, "good") == "v1"


async def test_symlink_loop_is_reported_until_removed(tmp_path: Path) -> None:
    """Config-file links that loop are a problem naming the loop, there at start and after."""
    (tmp_path / "a.yaml").symlink_to("b.yaml")
    (tmp_path / "b.yaml").symlink_to("a.yaml")
    async with watching(tmp_path) as watched:
        state = watched.source.state
        assert {p.path for p in state.problems} == {str(tmp_path / n) for n in ("a.yaml", "b.yaml")}
        assert all("goes round in a loop" in p.message for p in state.problems)
        (tmp_path / "c.yaml").symlink_to("c.yaml")
        state = await watched.until(lambda s: len(s.problems) == 3)
        assert "(c.yaml -> c.yaml)" in state.problems[-1].message
        for name in ("a.yaml", "b.yaml", "c.yaml"):
            (tmp_path / name).unlink()
        await watched.until(lambda s: not s.problems)


async def test_directory_symlink_is_a_warning_and_not_followed(tmp_path: Path) -> None:
    """A link to a directory (here a loop back to the config dir) is noted, never walked."""
    (tmp_path / "a.yaml").write_text(plugin("a"))
    (tmp_path / "self").symlink_to(".")
    async with watching(tmp_path) as watched:
        (problem,) = watched.source.state.problems
        assert (problem.path, problem.is_error) == (str(tmp_path / "self"), False)
        assert "symbolic link to a directory is not followed" in problem.message
        # Made while running, a link is not walked either: no second copy of a.yaml.
        (tmp_path / "again").symlink_to(".")
        state = await watched.until(lambda s: len(s.problems) == 2)
        assert [p.path for p in state.problems] == [str(tmp_path / n) for n in ("self", "again")]
        assert not any(p.is_error for p in state.problems)
        assert list(state.plugins) == [ObjectKey("default", "a")]


@contextlib.asynccontextmanager
async def watching_templates(directory: Path) -> AsyncIterator[TemplateSource]:
    changed = asyncio.Event()
    source = TemplateSource([directory], on_change=changed.set)
    task = asyncio.create_task(source.run())
    try:
        async with asyncio.timeout(10):
            await changed.wait()
        await asyncio.sleep(0.2)  # watchfiles installs its watches after the scan
        yield source
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until_templates(
    source: TemplateSource, check: Callable[[TemplateState], bool]
) -> TemplateState:
    async with asyncio.timeout(10):
        while not check(source.state):
            await asyncio.sleep(0.02)
    return source.state


async def test_template_file_turning_into_a_bomb_keeps_its_templates(tmp_path: Path) -> None:
    """Listener templates are bounded the same way, and the file's last good set stays."""
    path = tmp_path / "ingress.yaml"
    path.write_text(TEMPLATES.read_text())
    async with watching_templates(tmp_path) as source:
        before = source.state.templates
        assert before.listeners
        path.write_text(bomb_documents(2))
        state = await until_templates(source, lambda s: any(p.is_error for p in s.problems))
        assert state.templates.version == before.version
        error = next(p for p in state.problems if p.is_error)
        assert (error.path, error.line) == (str(path), 12)
        assert "expands to more than" in error.message


async def test_file_over_the_size_limit_keeps_its_last_content(tmp_path: Path) -> None:
    """A plugin file grown past 16 MiB is refused at line 1 and its plugin stays served."""
    path = tmp_path / "a.yaml"
    path.write_text(plugin("a", "good"))
    async with watching(tmp_path) as watched:
        path.write_text(plugin("a", "big") + "# padding\n" * (2 << 20))
        state = await watched.until(lambda s: any(p.is_error for p in s.problems))
        assert value_of(state, "a") == "good"
        error = state.problems[0]
        assert (error.path, error.line) == (str(path), 1)
        assert error.message.startswith("the file is larger than 16 MiB")


def _heavy_file(index: int) -> str:
    """A file that really writes more values than the limit: expensive to refuse, not a bomb."""
    return f"# heavy {index}\nitems: [" + ", ".join(["1"] * 260_000) + "]\n"


async def test_good_edit_is_applied_promptly_beside_hostile_files(tmp_path: Path) -> None:
    """Forty alias bombs and six expensive files written just before do not hold up a good edit."""
    good = tmp_path / "good.yaml"
    good.write_text(plugin("good", "v1"))
    async with watching(tmp_path) as watched:
        for index in range(40):
            (tmp_path / f"bomb{index:03}.yaml").write_text(alias_bomb(9) + f"# {index}\n")
        for index in range(6):
            (tmp_path / f"heavy{index}.yaml").write_text(_heavy_file(index))
        await asyncio.sleep(0.3)  # the hostile files' batch is being read now
        started = asyncio.get_running_loop().time()
        good.write_text(plugin("good", "v2"))
        await watched.until(lambda s: value_of(s, "good") == "v2", timeout=120)
        applied = asyncio.get_running_loop().time() - started
        state = await watched.until(lambda s: len(s.problems) == 46, timeout=120)
        everything = asyncio.get_running_loop().time() - started
        print(
            f"good edit applied after {applied:.2f} s; all 46 hostile files reported after"
            f" {everything:.2f} s"
        )
        assert all("expands to more than" in p.message for p in state.problems)
        assert applied < 5, "a good edit waited for the hostile files"


async def test_special_files_are_reported_at_start_and_when_made(tmp_path: Path) -> None:
    """A dangling link and a FIFO named like config files are problems, not skipped unseen."""
    (tmp_path / "a.yaml").write_text(plugin("a"))
    (tmp_path / "dangling.yaml").symlink_to("gone.yaml")
    async with watching(tmp_path) as watched:
        (warning,) = watched.source.state.problems
        assert (warning.path, warning.line, warning.is_error) == (
            str(tmp_path / "dangling.yaml"),
            1,
            False,
        )
        os.mkfifo(tmp_path / "pipe.yaml")
        state = await watched.until(lambda s: len(s.problems) == 2)
        error = state.problems[1]
        assert (error.path, error.line, error.is_error) == (str(tmp_path / "pipe.yaml"), 1, True)
        assert "FIFO" in error.message
        assert value_of(state, "a") == "v1"


async def test_first_definition_wins_in_path_order_though_files_are_read_in_parallel(
    tmp_path: Path,
) -> None:
    """A slow first file still wins a duplicate name over a quick later one read alongside it."""
    slow = plugin("same", "first") + "---\nitems: [" + ", ".join(["1"] * 200_000) + "]\n"
    (tmp_path / "a.yaml").write_text(slow)
    (tmp_path / "b.yaml").write_text(plugin("same", "second"))
    async with watching(tmp_path) as watched:
        state = watched.source.state
        assert value_of(state, "same") == "first"
        (duplicate,) = state.problems
        assert duplicate.path == str(tmp_path / "b.yaml")
        assert "already defined" in duplicate.message
