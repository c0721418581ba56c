"""The repository's own WasmPlugin examples pass `wasmxds validate` with no problem at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each is one config set (what one `wasmxds serve` reads): the demo's, compose's, Kubernetes'.
CONFIG_SETS = ["examples", "compose/plugins", "deploy/example/wasmplugin.yaml"]


@pytest.mark.parametrize("path", CONFIG_SETS)
def test_shipped_config_validates_cleanly(path: str):
    """`wasmxds validate PATH` exits 0 with no error and no warning for each shipped config set."""
    done = subprocess.run(
        [sys.executable, "-m", "wasmxds", "validate", path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout == "", done.stdout
    assert done.stderr.endswith(" 0 errors, 0 warnings\n"), done.stderr
    assert " 0 plugins" not in done.stderr  # it found the examples it is meant to check
    assert done.returncode == 0
