"""``wasmxds validate`` reports files past the input limits and symlink loops, and fails on them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.api.bombs import alias_bomb, bomb_documents, plugin
from wasmxds.cli import main


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    # validate configures structlog for the process, bound to the captured stderr.
    yield
    structlog.reset_defaults()


def test_plugin_config_bomb_fails_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pluginConfig alias bomb is an error at path:line, and validate exits 1."""
    path = tmp_path / "p.yaml"
    path.write_text(plugin(config=alias_bomb(7, "    ")))
    assert main(["validate", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    (line,) = out.splitlines()
    assert line.startswith(f"{path}:13: the file expands to more than 250000 values")
    assert err == "1 file, 0 plugins, 1 error, 0 warnings\n"


def test_bomb_of_other_kinds_fails_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bomb with no WasmPlugin in it is reported too, though such documents are skipped."""
    (tmp_path / "ok.yaml").write_text(plugin("ok"))
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(bomb_documents(16))
    assert main(["validate", str(tmp_path)]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{bomb}:12: the file expands to more than")


def test_symlink_loop_fails_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config-file link loop in a directory is named, with the loop, and validate exits 1."""
    (tmp_path / "ok.yaml").write_text(plugin("ok"))
    (tmp_path / "loop.yaml").symlink_to("loop.yaml")
    assert main(["validate", str(tmp_path)]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line == (
        f"{tmp_path / 'loop.yaml'}:1: the symbolic link never reaches a file, it goes round in a"
        " loop (loop.yaml -> loop.yaml); point it at a real file or remove it"
    )


def test_directory_symlink_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A link to a directory is named as not followed; a warning, so validate still exits 0."""
    (tmp_path / "ok.yaml").write_text(plugin("ok"))
    (tmp_path / "up").symlink_to("..")
    assert main(["validate", str(tmp_path)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{tmp_path / 'up'}:1: warning: a symbolic link to a directory is not")


def test_special_files_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A FIFO named *.yaml fails validation; a dangling link is a warning; both at line 1."""
    (tmp_path / "ok.yaml").write_text(plugin("ok"))
    (tmp_path / "dangling.yaml").symlink_to("gone.yaml")
    assert main(["validate", str(tmp_path)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{tmp_path / 'dangling.yaml'}:1: warning: the symbolic link points to")
    os.mkfifo(tmp_path / "pipe.yaml")
    assert main(["validate", str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(f"{tmp_path / 'pipe.yaml'}:1: cannot read the file: it is a FIFO")
