"""The committed protobuf code matches what ``make protos`` generates from protos/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
GENERATED = ROOT / "wasmxds" / "api" / "proto"


def _generated_files(directory: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for path in sorted(directory.iterdir())
        if path.name.endswith(("_pb2.py", "_pb2.pyi"))
    }


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    """Regenerating with the Makefile's protoc command reproduces the committed files exactly."""
    sources = sorted(
        str(p.relative_to(PROTOS)) for p in (PROTOS / "wasmxds/api/proto").glob("*.proto")
    )
    assert sources, "no .proto files found under protos/"
    env = dict(os.environ)
    # protoc finds the mypy plugin (protoc-gen-mypy) on PATH, next to this Python.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={tmp_path}",
            f"--mypy_out=quiet:{tmp_path}",
            *(str(PROTOS / source) for source in sources),
        ],
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
    )
    fresh = _generated_files(tmp_path / "wasmxds" / "api" / "proto")
    committed = _generated_files(GENERATED)
    stale = sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )
    assert not stale, (
        f"generated protobuf code is out of date ({', '.join(stale)}): run `make protos`"
    )
