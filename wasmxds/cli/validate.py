"""``wasmxds validate PATH...``: lint WasmPlugin files the way the server will read them.

Directories are searched recursively with the same file rules as the
directory source (:mod:`wasmxds.api.files`); files named explicitly are always
read. Problems print to stdout as ``path:line: message`` sorted by path and
line, a one-line summary goes to stderr, and the exit status says whether any
error was found (warnings fail only with ``--strict``). ``--fetch`` also
fetches and verifies each plugin's module (:mod:`wasmxds.cli.fetchcheck`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wasmxds.api.files import iter_config_files
from wasmxds.api.objects import DEFAULT_NAMESPACE, ObjectKey, Problem, WasmPlugin
from wasmxds.api.parse import ParsedFile, parse_file, parse_text
from wasmxds.api.trafficextension import supersede
from wasmxds.cli.fetchcheck import FetchOptions, check_modules
from wasmxds.cli.registry import add_registry_arguments, fetch_values
from wasmxds.errors import SettingsError
from wasmxds.log import configure_logging
from wasmxds.settings import ServeSettings, fetcher_settings, parse_duration

__all__ = ["EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "register", "run"]

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
# The shell's convention for a command ended by a signal: 128 + its number.
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM

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

With --fetch, each valid plugin's module is also fetched and verified as
`wasmxds serve` would do it (reachable, within --max-module-size, a Wasm
binary, matching spec.sha256), into a temporary cache that is deleted
afterwards: run it in CI before a change lands, so a typo in a URL never
reaches the server. Image pull secrets defined in the given files are used;
file:// modules are paths on the proxy and are not checked.
"""

_EPILOG = """\
output:
  path:line: message            an error
  path:line: warning: message   a warning (fails only with --strict)
  A summary line (files, plugins, errors, warnings) goes to stderr.

exit status:
  0  no errors (warnings allowed, unless --strict)
  1  at least one error, a module that failed with --fetch, or a warning with --strict
  2  usage error, such as a PATH that does not exist
  130, 143  interrupted (Ctrl-C) or terminated (SIGTERM) during --fetch; the
     temporary module cache is deleted first
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
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail (exit 1) on warnings too",
    )
    fetching = parser.add_argument_group(
        "fetching modules",
        "With --fetch, modules are fetched as `wasmxds serve` fetches them; these options"
        " mean what they mean there.",
    )
    fetching.add_argument(
        "--fetch",
        action="store_true",
        help="also fetch each plugin's module and check it: reachable, Wasm, sha256",
    )
    fetching.add_argument(
        "--fetch-timeout",
        default="2m",
        metavar="DUR",
        help="report modules not fetched after this long as failed (default %(default)s)",
    )
    add_registry_arguments(fetching)
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
    report.problems.extend(_superseded(report.files))
    if args.fetch:
        try:
            options = _fetch_options(args)
        except SettingsError as exc:
            print(f"wasmxds validate: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if not args.verbose:
            # Each failure becomes a problem below; the fetch log would repeat it.
            configure_logging("error")
        try:
            report.problems.extend(asyncio.run(_until_terminated(report.files, options)))
        except KeyboardInterrupt:
            # asyncio.run cancelled the check first, so the temporary cache is gone.
            print("wasmxds validate: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except _Terminated:
            print("wasmxds validate: terminated", file=sys.stderr)
            return EXIT_TERMINATED
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
    return EXIT_PROBLEMS if errors or (args.strict and warnings) else EXIT_OK


class _Terminated(Exception):
    """SIGTERM arrived during ``--fetch``; the check was cancelled and cleaned up."""


async def _until_terminated(files: list[ParsedFile], options: FetchOptions) -> list[Problem]:
    """:func:`_check_modules`, cancelled (so its temporary cache is deleted) on SIGTERM."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    # Without a handler SIGTERM kills the process where it stands, cache and all.
    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await _check_modules(files, options)
    except asyncio.CancelledError:
        if terminated:
            raise _Terminated from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _fetch_options(args: argparse.Namespace) -> FetchOptions:
    # Parsed and checked as serve does, and turned into download settings the same way.
    shared = ServeSettings(config_dirs=(), **fetch_values(args))
    return FetchOptions(fetch=fetcher_settings(shared), timeout=parse_duration(args.fetch_timeout))


async def _check_modules(files: list[ParsedFile], options: FetchOptions) -> list[Problem]:
    plugins = [plugin for parsed in files for plugin in parsed.plugins]
    secrets = {secret.key: secret for parsed in files for secret in parsed.secrets}
    return await check_modules(plugins, secrets, options)


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


def _superseded(files: list[ParsedFile]) -> list[Problem]:
    """Warn about each WasmPlugin a TrafficExtension of the same namespace/name supersedes.

    The server's rule (:func:`wasmxds.api.trafficextension.supersede`), on the
    first definition of each object, as the server would serve it.
    """
    plugins: dict[ObjectKey, WasmPlugin] = {}
    for parsed in files:
        for plugin in parsed.plugins:
            plugins.setdefault(plugin.key, plugin)
    _, superseded = supersede(plugins)
    return list(superseded.values())


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
