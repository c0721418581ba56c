"""The ``wasmxds`` command line: one module per subcommand, each registering itself."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from wasmxds import __version__
from wasmxds.cli import (
    bootstrap,
    migrate,
    pull,
    push,
    rollouts,
    serve,
    status,
    validate,
    verify,
)

__all__ = ["main"]

_COMMANDS = (serve, validate, migrate, bootstrap, pull, push, verify, status, rollouts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wasmxds",
        description=(
            "Istio's WasmPlugin API for plain Envoy: reads WasmPlugin YAML, fetches and "
            "verifies each Wasm module, and streams the filters to Envoy over ADS/ECDS."
        ),
    )
    parser.add_argument("--version", action="version", version=f"wasmxds {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in _COMMANDS:
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result
