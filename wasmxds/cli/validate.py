"""``wasmxds validate PATH...``: lint WasmPlugin files the way the server will read them.

Directories are searched recursively with the same file rules as the
directory source (:mod:`wasmxds.api.files`); files named explicitly are always
read. Problems print to stdout as ``path:line: message`` sorted by path and
line, a one-line summary goes to stderr, and the exit status says whether any
error was found (warnings do not fail).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wasmxds.api.files import iter_config_files
from wasmxds.api.objects import DEFAULT_NAMESPACE, ObjectKey, Problem
from wasmxds.api.parse import ParsedFile, parse_file, parse_text
from wasmxds.log import configure_logging

__all__ = ["EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "register", "run"]

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2

STDIN = "-"

_DESCRIPTION = """\
Check WasmPlugin files (extensions.istio.io/v1alpha1) without starting a server.

Each PATH is a file or a directory. Directories are searched recursively for
*.yaml, *.yml and *.json files, skipping hidden files and directories and
editor backups (*~, *.swp, *.tmp, ...), exactly as `wasmxds serve
--config-dir` does. A file named on the command line is always read. Use -
to read from standard input, e.g. `kubectl get wasmplugins -A -o yaml |
wasmxds validate -`.

Every object is checked against the WasmPlugin schema and Istio's own
validation rules (the CRD's and the admission webhook's), plus a few checks
for specs that Istio accepts but that can never work. Maistra
ServiceMeshExtensions are checked as the WasmPlugins they are served as, with
a deprecation warning (see `wasmxds migrate`). Documents of other kinds are
ignored. The same namespace/name defined twice is an error.
"""

_EPILOG = """\
output:
  path:line: message            an error
  path:line: warning: message   a warning (does not change the exit status)
  A summary line (files, plugins, errors, warnings) goes to stderr.

exit status:
  0  no errors (warnings allowed)
  1  at least one error
  2  usage error, such as a PATH that does not exist
"""


def register(subparsers: Any) -> None:
    """Add the ``validate`` command to the ``wasmxds`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "validate",
        help="check WasmPlugin files and directories for errors",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="a file, a directory (searched recursively) or - for standard input",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the problems, not the summary line",
    )
    parser.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        metavar="NAME",
        help="namespace of objects that do not set metadata.namespace (default: %(default)s)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also log which documents were skipped and why (to stderr)",
    )
    parser.set_defaults(run=run)


@dataclass
class _Report:
    files: list[ParsedFile] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def plugins(self) -> int:
        """Valid plugins, each namespace/name counted once (duplicates are errors)."""
        return len({plugin.key for parsed in self.files for plugin in parsed.plugins})

    def count(self, *, errors: bool) -> int:
        return sum(1 for problem in self.problems if problem.is_error == errors)


def run(args: argparse.Namespace) -> int:
    """Validate ``args.paths``; returns the exit status."""
    # stdout is for problems; logs (skipped documents, with --verbose) go to stderr.
    configure_logging("debug" if args.verbose else "warning")
    missing = [p for p in args.paths if p != STDIN and not Path(p).exists()]
    if missing:
        for path in missing:
            print(f"wasmxds validate: error: {path}: no such file or directory", file=sys.stderr)
        return EXIT_USAGE
    report = _Report()
    for path in _collect(args.paths):
        if path == STDIN:
            parsed = parse_text(sys.stdin.read(), "<stdin>", default_namespace=args.namespace)
        else:
            parsed = parse_file(Path(path), default_namespace=args.namespace)
        report.files.append(parsed)
        report.problems.extend(parsed.problems)
    report.problems.extend(_duplicates(report.files))
    report.problems.sort(key=lambda p: (p.path, p.line))
    for problem in report.problems:
        print(problem)
    sys.stdout.flush()
    errors, warnings = report.count(errors=True), report.count(errors=False)
    if not args.quiet:
        print(
            f"{_plural(len(report.files), 'file')}, {_plural(report.plugins, 'plugin')},"
            f" {_plural(errors, 'error')}, {_plural(warnings, 'warning')}",
            file=sys.stderr,
        )
    return EXIT_PROBLEMS if errors else EXIT_OK


def _collect(paths: list[str]) -> list[str]:
    """The files to read, each once, sorted by path (stdin last)."""
    found: dict[str, None] = {}
    for raw in paths:
        if raw == STDIN:
            continue
        path = Path(raw)
        if path.is_dir():
            found.update((str(file), None) for file in iter_config_files(path))
        else:
            found[str(path)] = None
    ordered = sorted(found)
    if STDIN in paths:
        ordered.append(STDIN)
    return ordered


def _duplicates(files: list[ParsedFile]) -> list[Problem]:
    """A namespace/name defined in several files is an error in all but the first.

    Files are visited in sorted path order, so "first" is stable across runs.
    Objects that failed validation count too: the server would keep serving
    one definition and reject the other either way.
    """
    first: dict[ObjectKey, str] = {}
    problems: list[Problem] = []
    for parsed in files:
        for key, line in parsed.object_lines:
            if key in first:
                problems.append(
                    Problem(
                        parsed.path,
                        line,
                        f"duplicate WasmPlugin {key}: already defined at {first[key]}",
                    )
                )
            else:
                first[key] = f"{parsed.path}:{line}"
    return problems


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
