"""scripts/system-deps.sh (run by `make test`): finds tools on PATH, asks for what is missing.

Each case runs the real script with PATH holding only stub commands, so nothing
is installed: ``apt-get`` and ``sudo`` stubs record how they were called, and an
``id`` stub decides whether the script thinks it runs as root.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "system-deps.sh"
TOOLS = {
    "clang": "clang",
    "wasm-ld": "lld",
    "wasm-objdump": "wabt",
    "docker-registry": "docker-registry",
    "docker-compose": "docker-compose",
}


def stub(directory: Path, name: str, body: str = "exit 0") -> None:
    """An executable ``name`` in ``directory`` that runs the sh ``body``."""
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def run(
    tmp_path: Path,
    *,
    tools: set[str],
    uid: int,
    sudo: str | None = None,
    apt: bool = True,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """The script's result with only ``tools`` on PATH, and every apt-get call it made."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in tools:
        stub(bin_dir, tool)
    stub(bin_dir, "id", f"echo {uid}")
    if apt:
        stub(bin_dir, "apt-get", f'echo "apt-get $*" >> {calls}')
    if sudo is not None:
        stub(bin_dir, "sudo", sudo)
    done = subprocess.run(
        ["/bin/bash", str(SCRIPT)],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return done, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("uid", [0, 1000])
def test_all_tools_on_path_installs_nothing(tmp_path, uid):
    """With every tool on PATH (and no dpkg at all) it exits 0 quietly, as root or not."""
    done, calls = run(tmp_path, tools=set(TOOLS), uid=uid)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert calls == []


def test_root_installs_only_the_packages_of_missing_tools(tmp_path):
    """As root it installs the packages of the missing tools, and only those."""
    done, calls = run(tmp_path, tools={"clang", "wasm-ld", "docker-registry"}, uid=0)
    assert done.returncode == 0, done.stderr
    assert calls == [
        "apt-get update -q",
        "apt-get install -y -q --no-install-recommends wabt docker-compose",
    ]


def test_without_root_or_sudo_it_prints_the_root_command_on_one_line(tmp_path):
    """Not root and no sudo installed: exit 1 and one line saying what to run as root."""
    done, calls = run(tmp_path, tools={"clang", "docker-compose"}, uid=1000)
    print(done.stderr)
    assert done.returncode == 1
    assert calls == []
    assert done.stderr.splitlines() == [
        "make test needs system packages; as root run: apt-get update && "
        "apt-get install -y --no-install-recommends lld wabt docker-registry"
    ]


def test_without_root_and_no_passwordless_sudo_it_prints_the_sudo_command(tmp_path):
    """Not root and sudo wants a password: exit 1 and one line, the sudo command to run."""
    done, calls = run(tmp_path, tools=set(TOOLS) - {"wasm-objdump"}, uid=1000, sudo="exit 1")
    print(done.stderr)
    assert done.returncode == 1
    assert calls == []
    assert done.stderr.splitlines() == [
        "make test needs system packages; run: sudo apt-get update && "
        "sudo apt-get install -y --no-install-recommends wabt"
    ]


def test_without_root_and_passwordless_sudo_it_installs_through_sudo(tmp_path):
    """Not root with passwordless sudo: apt-get runs through ``sudo -n``."""
    sudo = '[ "$1" = -n ] && shift; [ "$1" = true ] && exit 0; exec "$@"'
    done, calls = run(tmp_path, tools=set(TOOLS) - {"clang"}, uid=1000, sudo=sudo)
    assert done.returncode == 0, done.stderr
    assert calls == [
        "apt-get update -q",
        "apt-get install -y -q --no-install-recommends clang",
    ]


def test_without_apt_it_names_the_packages_on_one_line(tmp_path):
    """No apt-get: exit 1 and one line naming the packages to install some other way."""
    done, _ = run(tmp_path, tools=set(TOOLS) - {"docker-registry"}, uid=0, apt=False)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert "docker-registry" in done.stderr
    assert "clang" not in done.stderr
