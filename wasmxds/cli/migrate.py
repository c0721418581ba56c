"""``wasmxds migrate FILE...``: Maistra ServiceMeshExtensions rewritten as WasmPlugins,
or (``--to trafficextension``) those and WasmPlugins rewritten as Istio 1.30
TrafficExtensions (:mod:`wasmxds.cli.totrafficextension`).

The conversion is :func:`wasmxds.maistra.servicemeshextension.convert_extension`,
the one the directory source uses to serve old manifests, so what ``migrate``
prints is what ``wasmxds serve`` would have served. WasmPlugin YAML goes to
stdout; problems go to stderr as ``path:line: message``, like ``validate``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wasmxds.api.convert import NO_LINES, FieldPath, Issue, Locator, format_path, prefixed
from wasmxds.api.objects import (
    API_VERSION,
    DEFAULT_NAMESPACE,
    KIND,
    TRAFFIC_EXTENSION_KIND,
    ObjectKey,
    Problem,
    Severity,
)
from wasmxds.api.parse import parse_object
from wasmxds.api.yamlload import YamlSyntaxError, load_documents
from wasmxds.cli.totrafficextension import to_traffic_extension
from wasmxds.cli.validate import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, STDIN, _collect, _plural
from wasmxds.log import configure_logging
from wasmxds.maistra.servicemeshextension import (
    EXTENSION_KIND,
    convert_extension,
    is_extension,
    key_of,
)

__all__ = ["dump_documents", "register", "run"]

_DESCRIPTION = """\
Rewrite Maistra / OpenShift Service Mesh ServiceMeshExtension objects
(maistra.io/v1 and maistra.io/v1alpha1; deprecated in OSSM 2.2, removed in
2.3) as Istio WasmPlugins (extensions.istio.io/v1alpha1), following Red Hat's
migration guide. The WasmPlugin YAML goes to standard output, one document
per object separated by ---, ready for `kubectl apply -f -` or a config
directory:

  wasmxds migrate extension.yaml > plugin.yaml

Each FILE may hold several documents and `kind: List`s (what `kubectl get
servicemeshextensions -A -o yaml` prints); a directory is searched like
`wasmxds validate` does, and - reads standard input. Only the converted
WasmPlugins are printed, unless --keep-other is given.

field mapping:
  metadata                       name, namespace, labels, annotations (fields the
                                 API server sets, status and kubectl's
                                 last-applied-configuration are dropped)
  spec.workloadSelector.labels   spec.selector.matchLabels
  spec.image                     spec.url: oci:// + the image (tag or digest kept)
  spec.imagePullPolicy           spec.imagePullPolicy (Never becomes IfNotPresent)
  spec.imagePullSecrets[0].name  spec.imagePullSecret (only one is kept)
  spec.phase                     spec.phase: PreAuthN -> AUTHN, PostAuthN -> AUTHZ,
                                 PreAuthZ -> AUTHZ, PostAuthZ -> STATS,
                                 PreStats -> STATS, PostStats -> (no phase)
  spec.priority                  spec.priority
  spec.config                    spec.pluginConfig (a string config must hold a
                                 JSON object or a YAML mapping)

Where the meaning changes a warning says how: the Post* phases share a
WasmPlugin phase with the next Pre* phase, PostStats has no equivalent, and a
missing phase or priority used to come from the image's manifest.yaml.

--to trafficextension prints Istio 1.30 TrafficExtensions instead: every
WasmPlugin (and every ServiceMeshExtension, by way of its WasmPlugin) becomes
the TrafficExtension of the same namespace/name, its module fields under
spec.wasm; the deprecated targetRef becomes targetRefs[0] (warned). wasmxds
serves a TrafficExtension as <ns>.<name>, like the WasmPlugin, so Envoy's
filter references stay; once applied, the TrafficExtension supersedes the
WasmPlugin of its name (a warning until that is deleted; see
docs/trafficextension.md).

  wasmxds migrate --to trafficextension plugins/ > extensions.yaml
"""

_EPILOG = """\
output:
  stdout                          the WasmPlugins (and, with --keep-other, the rest)
  path:line: message              an error: the object is not converted
  path:line: warning: message     a conversion that changes something, or a guess
  Notes and a summary line (files, objects, errors, warnings) go to stderr.

exit status:
  0  every ServiceMeshExtension converted (warnings allowed)
  1  at least one could not be converted (e.g. no image, an invalid name,
     a config string that holds no object)
  2  usage error, such as a FILE that does not exist
"""

_NOTES = (
    "the images keep their ServiceMeshExtension layout (a manifest.yaml naming the"
    " module). wasmxds reads that layout, but Istio needs the module at /plugin.wasm in"
    " the image: rebuild the images before applying these WasmPlugins to Istio.",
    'Maistra gave each filter the root_id "<name>_root"; a WasmPlugin passes its'
    " pluginName instead (none is set). If a module looks its root context up by id,"
    ' add pluginName: "<name>_root".',
)


def register(subparsers: Any) -> None:
    """Add the ``migrate`` command to the ``wasmxds`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "migrate",
        help="convert Maistra ServiceMeshExtensions into WasmPlugins",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="FILE",
        help="a file, a directory (searched recursively) or - for standard input",
    )
    parser.add_argument(
        "--to",
        choices=(_TO_WASMPLUGIN, _TO_EXTENSION),
        default=_TO_WASMPLUGIN,
        help=(
            "what to write: WasmPlugins (default: ServiceMeshExtensions are converted), or"
            " TrafficExtensions (WasmPlugins and ServiceMeshExtensions are converted)"
        ),
    )
    parser.add_argument(
        "--keep-other",
        action="store_true",
        help=(
            "also print every other document, unchanged, in its place (comments and"
            " formatting are not kept), and copy objects that could not be converted"
            " as they are, so the output can replace the input file"
        ),
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the problems on stderr, not the notes and the summary line",
    )
    parser.set_defaults(run=run)


_TO_WASMPLUGIN, _TO_EXTENSION = "wasmplugin", "trafficextension"


@dataclass
class _Run:
    keep_other: bool
    to: str = _TO_WASMPLUGIN
    from_maistra: int = 0
    documents: list[object] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files: int = 0
    found: int = 0
    converted: int = 0
    first: dict[ObjectKey, str] = field(default_factory=dict)

    def read(self, path: str, text: str) -> None:
        self.files += 1
        try:
            documents = load_documents(text)
        except YamlSyntaxError as exc:
            self.problems.append(Problem(path, exc.line, exc.message))
            return
        for document in documents:
            value = document.value
            if value is None:
                continue
            items = _list_items(value)
            if items is None:
                self.add(path, value, document.lines, document.issues, ())
                continue
            for index, item in enumerate(items):
                self.add(path, item, document.lines, document.issues, ("items", index))

    def add(
        self,
        path: str,
        value: object,
        locate: Locator,
        issues: Sequence[Issue],
        prefix: FieldPath,
    ) -> None:
        depth = len(prefix)
        own_issues = [
            Issue(issue.path[depth:], issue.line, issue.message, issue.severity, issue.rule)
            for issue in issues
            if issue.path[:depth] == prefix
        ]
        maistra = isinstance(value, Mapping) and is_extension(value)
        wasmplugin = (
            self.to == _TO_EXTENSION
            and isinstance(value, Mapping)
            and value.get("kind") == KIND
            and value.get("apiVersion") == API_VERSION
        )
        if not (maistra or wasmplugin):
            if self.keep_other:
                self.documents.append(value)
                # What JSON cannot hold (a key read as a boolean...) was dropped on reading.
                self.problems.extend(
                    Problem(path, issue.line, f"{issue}; copied without it", Severity.WARNING)
                    for issue in own_issues
                )
            return
        self.found += 1
        where = prefixed(locate, prefix)
        assert isinstance(value, Mapping)
        converted: dict[str, object] | None
        if maistra:
            converted, problems = convert_extension(
                value,
                check=parse_object,
                path=path,
                locate=where,
                default_namespace=DEFAULT_NAMESPACE,
                issues=own_issues,
            )
            self.problems.extend(problems)
        else:
            converted = self.checked(value, path, where, own_issues)
        if converted is not None and self.to == _TO_EXTENSION:
            converted = self.extension(converted, path, where if wasmplugin else None)
        if converted is not None:
            key = key_of(converted, DEFAULT_NAMESPACE)
            line = where(())
            if key in self.first:
                self.problems.append(
                    Problem(
                        path,
                        line,
                        f"duplicate {EXTENSION_KIND} {key}: already defined at {self.first[key]};"
                        " not converted (two WasmPlugins cannot share a namespace/name)",
                    )
                )
                converted = None
            else:
                self.first[key] = f"{path}:{line}"
        if converted is not None:
            self.converted += 1
            self.from_maistra += maistra
            self.documents.append(converted)
        elif self.keep_other:
            self.documents.append(value)

    def checked(
        self, value: Mapping[object, object], path: str, where: Locator, issues: list[Issue]
    ) -> dict[str, object] | None:
        """A WasmPlugin to rewrite, if it is valid (its problems are reported)."""
        parsed = parse_object(
            value,
            source=path,
            line=where(()),
            locate=where,
            default_namespace=DEFAULT_NAMESPACE,
            issues=issues,
            source_limits=None,
        )
        assert parsed is not None  # a WasmPlugin by its kind and apiVersion
        self.problems.extend(parsed.problems)
        return {str(k): v for k, v in value.items()} if parsed.plugin is not None else None

    def extension(
        self, plugin: Mapping[str, object], path: str, where: Locator | None
    ) -> dict[str, object] | None:
        """``plugin`` as a TrafficExtension, checked; ``where`` locates the WasmPlugin's
        fields (None: it was converted from another object, whose start is the line)."""
        rewritten = to_traffic_extension(plugin)
        line: Locator = where if where is not None else NO_LINES
        for field_path, note in rewritten.notes:
            self.problems.append(
                Problem(
                    path, line(field_path), f"{format_path(field_path)}: {note}", Severity.WARNING
                )
            )
        parsed = parse_object(rewritten.value, source=path, line=line(()), source_limits=None)
        if parsed is None or parsed.plugin is None:
            self.problems.extend(
                Problem(p.path, p.line, f"as a {TRAFFIC_EXTENSION_KIND}: {p.message}", p.severity)
                for p in (parsed.problems if parsed is not None else ())
            )
            return None
        return rewritten.value

    def count(self, *, errors: bool) -> int:
        return sum(1 for problem in self.problems if problem.is_error == errors)


def run(args: argparse.Namespace) -> int:
    """Convert ``args.paths``; returns the exit status."""
    configure_logging("warning")
    missing = [p for p in args.paths if p != STDIN and not Path(p).exists()]
    if missing:
        for path in missing:
            print(f"wasmxds migrate: error: {path}: no such file or directory", file=sys.stderr)
        return EXIT_USAGE
    state = _Run(keep_other=args.keep_other, to=args.to)
    for path in _collect(args.paths):
        if path == STDIN:
            state.read("<stdin>", sys.stdin.read())
            continue
        try:
            text = Path(path).read_bytes().decode("utf-8-sig")
        except OSError as exc:
            state.files += 1
            state.problems.append(Problem(path, 0, f"cannot read the file: {exc.strerror or exc}"))
            continue
        except UnicodeDecodeError as exc:
            state.files += 1
            state.problems.append(Problem(path, 0, f"not UTF-8 text ({exc.reason})"))
            continue
        state.read(path, text)
    sys.stdout.write(dump_documents(state.documents))
    sys.stdout.flush()
    for problem in sorted(state.problems, key=lambda p: (p.path, p.line)):
        print(problem, file=sys.stderr)
    errors, warnings = state.count(errors=True), state.count(errors=False)
    if not args.quiet:
        if state.from_maistra:
            for note in _NOTES:
                print(f"note: {note}", file=sys.stderr)
        what = EXTENSION_KIND if state.to == _TO_WASMPLUGIN else f"{KIND} or {EXTENSION_KIND}"
        if not state.found:
            print(
                f"wasmxds migrate: no {what} found in {_plural(state.files, 'file')}",
                file=sys.stderr,
            )
        counted = EXTENSION_KIND if state.to == _TO_WASMPLUGIN else "object"
        print(
            f"{_plural(state.files, 'file')},"
            f" {state.converted} of {_plural(state.found, counted)} converted,"
            f" {_plural(errors, 'error')}, {_plural(warnings, 'warning')}",
            file=sys.stderr,
        )
    return EXIT_PROBLEMS if errors else EXIT_OK


def _list_items(value: object) -> list[object] | None:
    """The items of a ``kind: List`` (or ``...List``) that holds a ServiceMeshExtension."""
    if not isinstance(value, Mapping):
        return None
    kind, items = value.get("kind"), value.get("items")
    if not (isinstance(kind, str) and kind.endswith("List") and isinstance(items, list)):
        return None
    if not any(isinstance(item, Mapping) and is_extension(item) for item in items):
        return None  # passed through whole with --keep-other
    return items


# YAML output ------------------------------------------------------------------------


def dump_documents(documents: Sequence[object]) -> str:
    """``---``-separated YAML that reads back as ``documents`` under Kubernetes' rules.

    Keys keep their order. A string that a plain scalar would not carry
    (``y``, ``on``, ``1e3``, ``0x1F`` are not strings to kubectl) is quoted.
    """
    text = "---\n".join(
        yaml.dump(
            document,
            Dumper=_Dumper,
            sort_keys=False,
            default_flow_style=False,
            allow_unicode=True,
            width=1 << 16,
        )
        for document in documents
    )
    if [document.value for document in load_documents(text)] != list(documents):
        raise AssertionError("the YAML written does not read back as the data given")
    return text


class _Dumper(yaml.SafeDumper):
    """A safe dumper that quotes every string go-yaml v2 would read as something else."""

    def resolve(self, kind: type[yaml.Node], value: str | None, implicit: tuple[bool, bool]) -> str:
        tag: str = super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
        if (
            kind is yaml.ScalarNode
            and implicit[0]
            and tag == _STR
            and value is not None
            and not _reads_back(value)
        ):
            return _QUOTED
        return tag

    def ignore_aliases(self, data: object) -> bool:
        del data
        return True  # no &anchors: each object is written out in full


_STR = "tag:yaml.org,2002:str"
_QUOTED = "tag:wasmxds,2025:quoted"  # any tag but str's makes the emitter quote


@functools.lru_cache(maxsize=4096)
def _reads_back(text: str) -> bool:
    """Whether ``text`` written as a plain scalar reads back as the same string."""
    try:
        documents = load_documents(text)
    except YamlSyntaxError:
        return False
    return len(documents) == 1 and not documents[0].issues and documents[0].value == text


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar(_STR, data, style=style)


_Dumper.add_representer(str, _represent_str)
