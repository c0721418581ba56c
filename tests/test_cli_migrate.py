"""``wasmxds migrate``: output, problems, exit status, --keep-other and the entry point."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from wasmxds.api.parse import parse_file, parse_text
from wasmxds.api.yamlload import load_documents
from wasmxds.cli import main, migrate, validate
from wasmxds.cli.migrate import dump_documents

DATA = Path(__file__).parent / "api" / "data"
REPO = Path(__file__).resolve().parents[1]

# Red Hat's migration guide, the ServiceMeshExtension half (its WasmPlugin
# half is tests/api/data/header-append.yaml).
SEED_EXTENSION = (
    Path(__file__).parent / "maistra" / "seeds" / "header-append-extension.yaml"
).read_text()

CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: 'on'\n"


def sme(
    name: str, *, spec: str = "image: quay.io/acme/ext:1\nphase: PreAuthN\npriority: 1\n"
) -> str:
    return (
        f"apiVersion: maistra.io/v1\nkind: ServiceMeshExtension\nmetadata:\n  name: {name}\n"
        "spec:\n" + textwrap.indent(spec, "  ")
    )


def run_migrate(*argv: str) -> int:
    """Parse ``argv`` with a parser holding only the migrate command, then run it."""
    parser = argparse.ArgumentParser(prog="wasmxds")
    migrate.register(parser.add_subparsers())
    args = parser.parse_args(["migrate", *argv])
    result: int = args.run(args)
    return result


def values(text: str) -> list[object]:
    return [document.value for document in load_documents(text)]


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    # migrate configures structlog for the process, bound to the captured stderr.
    yield
    structlog.reset_defaults()


@pytest.fixture(name="seed")
def _seed(tmp_path: Path) -> Path:
    path = tmp_path / "extension.yaml"
    path.write_text(SEED_EXTENSION)
    return path


class TestSeedExample:
    def test_prints_the_seed_wasmplugin(
        self, seed: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The guide's extension prints as the guide's WasmPlugin (plus its priority), exit 0."""
        assert run_migrate(str(seed)) == 0
        out, err = capsys.readouterr()
        (expected,) = values((DATA / "header-append.yaml").read_text())
        assert isinstance(expected, dict)
        expected["spec"]["priority"] = 100  # the guide drops it; see test_servicemeshextension
        assert values(out) == [expected]
        assert out == textwrap.dedent(
            """\
            apiVersion: extensions.istio.io/v1alpha1
            kind: WasmPlugin
            metadata:
              name: header-append
              namespace: istio-system
            spec:
              selector:
                matchLabels:
                  app: httpbin
              url: oci://quay.io/maistra-dev/header-append-filter:2.2
              phase: STATS
              priority: 100
              pluginConfig:
                first-header: some-value
                another-header: another-value
            """
        )
        lines = err.splitlines()
        assert lines[0].startswith(f"{seed}:14: warning: spec.phase: PostAuthZ becomes STATS")
        assert [line for line in lines if line.startswith("note: ")] == [
            f"note: {note}" for note in migrate._NOTES
        ]
        assert lines[-1] == "1 file, 1 of 1 ServiceMeshExtension converted, 0 errors, 1 warning"

    def test_output_passes_validate(
        self, seed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """What migrate prints, ``wasmxds validate`` accepts without a single remark."""
        run_migrate(str(seed))
        converted = tmp_path / "out" / "plugin.yaml"
        converted.parent.mkdir()
        converted.write_text(capsys.readouterr().out)
        parser = argparse.ArgumentParser(prog="wasmxds")
        validate.register(parser.add_subparsers())
        args = parser.parse_args(["validate", str(converted.parent)])
        assert args.run(args) == 0
        assert capsys.readouterr() == ("", "1 file, 1 plugin, 0 errors, 0 warnings\n")

    def test_served_spec_equals_migrated_spec(
        self, seed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The directory source serves an extension exactly as its migrated WasmPlugin."""
        run_migrate(str(seed))
        migrated_file = tmp_path / "migrated.yaml"
        migrated_file.write_text(capsys.readouterr().out)
        served = parse_file(seed)
        (migrated,) = parse_file(migrated_file).plugins
        (plugin,) = served.plugins
        assert plugin.spec == migrated.spec
        assert plugin.key == migrated.key
        assert any("is deprecated" in p.message for p in served.problems)
        assert parse_file(migrated_file).problems == ()


class TestInputs:
    def test_list_and_documents(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Extensions in Lists and multi-document files each print as a WasmPlugin, in order."""
        listed = textwrap.dedent(
            """\
            apiVersion: v1
            kind: List
            items:
            - apiVersion: maistra.io/v1
              kind: ServiceMeshExtension
              metadata: {name: b}
              spec: {image: quay.io/acme/b:1, phase: PreAuthZ, priority: 1}
            - apiVersion: maistra.io/v1
              kind: ServiceMeshExtension
              metadata: {name: c}
              spec: {image: quay.io/acme/c:1, phase: PreStats, priority: 1}
            """
        )
        (tmp_path / "in.yaml").write_text(sme("a") + "---\n" + CONFIGMAP + "---\n" + listed)
        assert run_migrate(str(tmp_path / "in.yaml")) == 0
        documents = values(capsys.readouterr().out)
        assert [d["metadata"]["name"] for d in documents] == ["a", "b", "c"]  # type: ignore[index]
        assert {d["kind"] for d in documents} == {"WasmPlugin"}  # type: ignore[index]

    def test_keep_other(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--keep-other copies other documents, and objects that failed, in their place."""
        broken = sme("broken", spec="phase: PreAuthN\npriority: 1\n")
        (tmp_path / "in.yaml").write_text(
            CONFIGMAP + "---\n" + sme("a") + "---\n" + broken + "---\n# only a comment\n"
        )
        assert run_migrate("--keep-other", str(tmp_path / "in.yaml")) == 1
        out, err = capsys.readouterr()
        documents = values(out)
        assert documents[0] == values(CONFIGMAP)[0]
        assert documents[1]["kind"] == "WasmPlugin"  # type: ignore[index]
        assert documents[2] == values(broken)[0]
        assert len(documents) == 3
        assert "mode: 'on'" in out  # still a string for kubectl
        assert f"{tmp_path}/in.yaml:21: spec.image: required" in err

    def test_without_keep_other_only_wasmplugins(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """By default other documents and failed objects are left out."""
        broken = sme("broken", spec="phase: PreAuthN\npriority: 1\n")
        (tmp_path / "in.yaml").write_text(CONFIGMAP + "---\n" + sme("a") + "---\n" + broken)
        assert run_migrate(str(tmp_path / "in.yaml")) == 1
        out, err = capsys.readouterr()
        assert [d["metadata"]["name"] for d in values(out)] == ["a"]  # type: ignore[index]
        assert err.endswith("1 file, 1 of 2 ServiceMeshExtensions converted, 1 error, 0 warnings\n")

    def test_keep_other_reports_what_reading_dropped(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A copied document that lost a key JSON cannot hold says so."""
        (tmp_path / "in.yaml").write_text("kind: ConfigMap\ndata:\n  on: x\n---\n" + sme("a"))
        assert run_migrate("--keep-other", "-q", str(tmp_path / "in.yaml")) == 0
        out, err = capsys.readouterr()
        assert values(out)[0] == {"kind": "ConfigMap", "data": {}}
        assert err.startswith(f"{tmp_path}/in.yaml:3: warning: data: key 'on' is read as")
        assert "; copied without it" in err

    def test_duplicates(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Two extensions with one namespace/name cannot both become WasmPlugins."""
        (tmp_path / "a.yaml").write_text(sme("x"))
        (tmp_path / "b.yaml").write_text(sme("x"))
        assert run_migrate(str(tmp_path)) == 1
        out, err = capsys.readouterr()
        assert len(values(out)) == 1
        assert (
            f"{tmp_path}/b.yaml:1: duplicate ServiceMeshExtension default/x: already defined at"
            f" {tmp_path}/a.yaml:1; not converted" in err
        )

    def test_stdin(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``-`` reads standard input; problems name ``<stdin>``."""
        monkeypatch.setattr(sys, "stdin", io.StringIO(SEED_EXTENSION))
        assert run_migrate("-") == 0
        out, err = capsys.readouterr()
        assert values(out)[0]["kind"] == "WasmPlugin"  # type: ignore[index]
        assert err.startswith("<stdin>:14: warning: spec.phase:")

    def test_nothing_to_convert(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A file without extensions prints nothing and says so; exit 0."""
        assert run_migrate(str(DATA / "header-append.yaml")) == 0
        out, err = capsys.readouterr()
        assert out == ""
        assert err == (
            "wasmxds migrate: no ServiceMeshExtension found in 1 file\n"
            "1 file, 0 of 0 ServiceMeshExtensions converted, 0 errors, 0 warnings\n"
        )

    def test_syntax_error(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A file that is not YAML is an error with its line; exit 1."""
        (tmp_path / "bad.yaml").write_text("a: [\n")
        assert run_migrate("-q", str(tmp_path / "bad.yaml")) == 1
        assert capsys.readouterr().err.startswith(f"{tmp_path}/bad.yaml:2: invalid YAML:")

    def test_missing_file_is_a_usage_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A FILE that does not exist: exit 2, nothing converted."""
        assert run_migrate(str(tmp_path / "nope.yaml")) == 2
        assert capsys.readouterr() == (
            "",
            f"wasmxds migrate: error: {tmp_path}/nope.yaml: no such file or directory\n",
        )

    def test_quiet(self, seed: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """-q leaves the problems only: no notes, no summary."""
        assert run_migrate("-q", str(seed)) == 0
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert err.startswith(f"{seed}:14: warning:")


class TestHelp:
    def test_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        """-h explains the mapping, --keep-other, the output and the exit status."""
        with pytest.raises(SystemExit) as exited:
            run_migrate("-h")
        assert exited.value.code == 0
        out = capsys.readouterr().out
        for phrase in (
            "FILE",
            "--keep-other",
            "maistra.io/v1",
            "PostAuthZ -> STATS",
            "spec.workloadSelector.labels",
            "path:line: warning: message",
            "exit status",
        ):
            assert phrase in out

    def test_no_file_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """At least one FILE is required (argparse exits with 2)."""
        with pytest.raises(SystemExit) as exited:
            run_migrate()
        assert exited.value.code == 2
        assert "FILE" in capsys.readouterr().err


class TestYamlOutput:
    @pytest.mark.parametrize(
        "text",
        ["y", "n", "on", "Off", "NO", "1e3", ".5", "0x1F", "017", "1_000", "null", "~", "", "true"],
    )
    def test_strings_kubectl_would_not_read_as_strings_are_quoted(self, text: str) -> None:
        """Strings that go-yaml v2 reads as booleans, numbers or null are quoted."""
        out = dump_documents([{"k": text}])
        assert out != f"k: {text}\n"
        assert values(out) == [{"k": text}]

    def test_plain_where_it_is_safe(self) -> None:
        """Ordinary strings stay plain and keys keep their order."""
        data = {"z": "some-value", "a": "quay.io/x:2.2", "m": [1, 2.5, True, None]}
        assert dump_documents([data]) == (
            "z: some-value\na: quay.io/x:2.2\nm:\n- 1\n- 2.5\n- true\n- null\n"
        )

    def test_multiline_and_separators(self) -> None:
        """Multi-line strings are literal blocks; documents are separated by ---."""
        out = dump_documents([{"pem": "a\nb\n"}, {"b": 1}])
        assert out == "pem: |\n  a\n  b\n---\nb: 1\n"
        assert values(out) == [{"pem": "a\nb\n"}, {"b": 1}]


class TestEntryPoint:
    def test_main_runs_migrate(self, seed: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """``wasmxds.cli.main(["migrate", ...])`` dispatches to this command."""
        assert main(["migrate", "-q", str(seed)]) == 0
        assert values(capsys.readouterr().out)[0]["kind"] == "WasmPlugin"  # type: ignore[index]

    def test_python_dash_m(self, tmp_path: Path) -> None:
        """Real processes: migrate prints the WasmPlugin; validate reads the old file, warning."""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        config = tmp_path / "config"
        config.mkdir()
        (config / "extension.yaml").write_text(SEED_EXTENSION)
        migrated = subprocess.run(
            [sys.executable, "-m", "wasmxds", "migrate", str(config / "extension.yaml")],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert migrated.returncode == 0, migrated.stderr
        (plugin,) = parse_text(migrated.stdout, "out.yaml").plugins
        assert plugin.spec.url == "oci://quay.io/maistra-dev/header-append-filter:2.2"
        assert migrated.stderr.endswith(
            "1 file, 1 of 1 ServiceMeshExtension converted, 0 errors, 1 warning\n"
        )
        validated = subprocess.run(
            [sys.executable, "-m", "wasmxds", "validate", str(config)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert validated.returncode == 0, validated.stdout
        assert validated.stdout.startswith(
            f"{config}/extension.yaml:2: warning: ServiceMeshExtension is deprecated"
        )
        assert validated.stderr == "1 file, 1 plugin, 0 errors, 2 warnings\n"
        missing = subprocess.run(
            [sys.executable, "-m", "wasmxds", "migrate", str(tmp_path / "nope.yaml")],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert (missing.returncode, missing.stdout) == (2, "")
