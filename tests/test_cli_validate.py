"""``wasmxds validate``: output format, exit status, file discovery and the entry point."""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from wasmxds.api.files import is_config_file
from wasmxds.cli import main, validate

DATA = Path(__file__).parent / "api" / "data"
VALID = (
    "openid-connect-file.yaml",
    "openid-connect-oci.yaml",
    "header-append.yaml",
    "tsb-wasm-add-header.yaml",
)


def plugin(name: str, *, url: str = "oci://ghcr.io/acme/f:v1", extra: str = "") -> str:
    return (
        textwrap.dedent(
            f"""\
        apiVersion: extensions.istio.io/v1alpha1
        kind: WasmPlugin
        metadata:
          name: {name}
        spec:
          url: {url}
        """
        )
        + extra
    )


def run_validate(*argv: str) -> int:
    """Parse ``argv`` with a parser holding only the validate command, then run it."""
    parser = argparse.ArgumentParser(prog="wasmxds")
    validate.register(parser.add_subparsers())
    args = parser.parse_args(["validate", *argv])
    result: int = args.run(args)
    return result


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    # validate configures structlog for the process, bound to the captured stderr.
    yield
    structlog.reset_defaults()


@pytest.fixture(name="valid_dir")
def _valid_dir(tmp_path: Path) -> Path:
    for name in VALID:
        shutil.copy(DATA / name, tmp_path / name)
    return tmp_path


class TestOutput:
    def test_valid_directory(self, valid_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Valid files: nothing on stdout, a summary on stderr, exit 0."""
        assert run_validate(str(valid_dir)) == 0
        out, err = capsys.readouterr()
        assert out == ""
        assert err == "4 files, 4 plugins, 0 errors, 0 warnings\n"

    def test_problems_sorted_by_path_and_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Each problem is one ``path:line: message`` line, sorted by path then line; exit 1."""
        assert run_validate(str(DATA)) == 1
        out, err = capsys.readouterr()
        lines = out.splitlines()
        assert lines == [
            f"{DATA}/helloworld-invalid.yaml:10: spec.Selector: unknown field; did you mean"
            ' "selector"? (field names are case-sensitive)',
            f"{DATA}/list.yaml:4: duplicate WasmPlugin istio-system/header-append: already"
            f" defined at {DATA}/header-append.yaml:3",
            f"{DATA}/list.yaml:24: spec.url: required: the URL of the Wasm module (oci://,"
            " https://, http:// or file://; no scheme means oci://)",
            f"{DATA}/openid-connect-invalid.yaml:12: spec.url: unsupported scheme"
            ' "private-registry"; use oci://, https://, http:// or file:// (no scheme means'
            " oci://);"
            ' "private-registry:5000" looks like a host and port: write'
            " oci://private-registry:5000/openid-connect/openid:latest",
            f"{DATA}/openid-connect-invalid.yaml:13: spec.sha256: must match [a-f0-9]{{64}}"
            " (use lower case)",
            f"{DATA}/openid-connect-invalid.yaml:27: spec.image_pull_policy: unknown field; did you"
            ' mean "imagePullPolicy"? (Kubernetes accepts only the camelCase JSON name)',
            f"{DATA}/openid-connect-oci.yaml:2: duplicate WasmPlugin istio-system/openid-connect:"
            f" already defined at {DATA}/openid-connect-invalid.yaml:3",
        ]
        assert err == "7 files, 4 plugins, 7 errors, 0 warnings\n"

    def test_warnings_do_not_fail(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Warnings print with ``warning:`` and leave the exit status at 0."""
        (tmp_path / "p.yaml").write_text(plugin("p", extra="  selector: {}\n"))
        assert run_validate(str(tmp_path / "p.yaml")) == 0
        out, err = capsys.readouterr()
        assert out == (
            f"{tmp_path}/p.yaml:7: warning: spec.selector: workload selector specified without"
            " labels; it matches every proxy in the plugin's namespace (every proxy, in the root"
            " namespace)\n"
        )
        assert err == "1 file, 1 plugin, 0 errors, 1 warning\n"

    def test_quiet(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--quiet prints the problems and nothing else."""
        (tmp_path / "p.yaml").write_text(plugin("p", url='""'))
        assert run_validate("--quiet", str(tmp_path)) == 1
        out, err = capsys.readouterr()
        assert out.count("\n") == 1
        assert err == ""

    def test_syntax_error(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A file that is not YAML is one error on its line."""
        (tmp_path / "bad.yaml").write_text("a: [1\n")
        assert run_validate(str(tmp_path)) == 1
        out, _ = capsys.readouterr()
        assert out.startswith(f"{tmp_path}/bad.yaml:2: invalid YAML: ")


class TestDuplicates:
    def test_duplicate_across_files(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The later file in sorted order gets the error, naming where the first one is."""
        (tmp_path / "b.yaml").write_text(plugin("same"))
        (tmp_path / "a.yaml").write_text("# first\n" + plugin("same"))
        assert run_validate(str(tmp_path / "b.yaml"), str(tmp_path / "a.yaml")) == 1
        out, err = capsys.readouterr()
        assert out == (
            f"{tmp_path}/b.yaml:1: duplicate WasmPlugin default/same: already defined at"
            f" {tmp_path}/a.yaml:2\n"
        )
        assert err == "2 files, 1 plugin, 1 error, 0 warnings\n"

    def test_same_file_twice_is_read_once(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A file named directly and found through its directory is read once."""
        (tmp_path / "a.yaml").write_text(plugin("a"))
        assert run_validate(str(tmp_path), str(tmp_path / "a.yaml")) == 0
        assert capsys.readouterr().err == "1 file, 1 plugin, 0 errors, 0 warnings\n"

    def test_other_namespace_is_no_duplicate(self, tmp_path: Path) -> None:
        """The same name in two namespaces is two plugins."""
        (tmp_path / "a.yaml").write_text(plugin("same"))
        (tmp_path / "b.yaml").write_text(
            plugin("same").replace("name: same", "name: same\n  namespace: x")
        )
        assert run_validate(str(tmp_path)) == 0


class TestFiles:
    @pytest.mark.parametrize(
        ("name", "read"),
        [
            pytest.param("plugin.yaml", True, id="yaml"),
            pytest.param("plugin.yml", True, id="yml"),
            pytest.param("plugin.json", True, id="json"),
            pytest.param("PLUGIN.YAML", True, id="upper-case-suffix"),
            pytest.param("plugin.txt", False, id="other-suffix"),
            pytest.param("plugin", False, id="no-suffix"),
            pytest.param(".plugin.yaml", False, id="hidden"),
            pytest.param("plugin.yaml~", False, id="backup"),
            pytest.param(".#plugin.yaml", False, id="emacs-lock"),
            pytest.param("#plugin.yaml#", False, id="emacs-autosave"),
            pytest.param("plugin.yaml.swp", False, id="vim-swap"),
            pytest.param("plugin.yaml.tmp", False, id="temporary"),
            pytest.param("plugin.tmp.yaml", True, id="tmp-inside-name"),
        ],
    )
    def test_is_config_file(self, name: str, read: bool) -> None:
        """The shared name rule decides which files the linter and the server read."""
        assert is_config_file(Path("dir") / name) is read

    def test_discovery_rules(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Directories yield .yaml/.yml/.json files; hidden and editor files are skipped."""
        broken = "not: [yaml\n"
        (tmp_path / "a.yaml").write_text(plugin("a"))
        (tmp_path / "b.YML").write_text(plugin("b"))
        sub = tmp_path / "nested" / "deeper"
        sub.mkdir(parents=True)
        (sub / "c.json").write_text(
            '{"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",'
            ' "metadata": {"name": "c"}, "spec": {"url": "oci://r/c:1"}}'
        )
        for skipped in (
            ".hidden.yaml",
            "a.yaml~",
            ".#a.yaml",
            "#a.yaml#",
            "a.yaml.swp",
            "x.tmp",
            "notes.txt",
        ):
            (tmp_path / skipped).write_text(broken)
        (tmp_path / ".git").mkdir()
        (tmp_path / ".git" / "config.yaml").write_text(broken)
        (tmp_path / "..data").mkdir()
        (tmp_path / "..data" / "a.yaml").write_text(broken)
        assert run_validate(str(tmp_path)) == 0
        assert capsys.readouterr().err == "3 files, 3 plugins, 0 errors, 0 warnings\n"

    def test_explicit_file_is_always_read(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A file named on the command line is read whatever its name."""
        (tmp_path / "plugin.txt").write_text(plugin("p"))
        assert run_validate(str(tmp_path / "plugin.txt")) == 0
        assert capsys.readouterr().err == "1 file, 1 plugin, 0 errors, 0 warnings\n"

    def test_missing_path_is_a_usage_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A path that does not exist exits 2 and names it; nothing is validated."""
        (tmp_path / "a.yaml").write_text(plugin("a"))
        missing = tmp_path / "nope"
        assert run_validate(str(tmp_path), str(missing)) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err == f"wasmxds validate: error: {missing}: no such file or directory\n"

    def test_stdin(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``-`` reads standard input, reported as <stdin>."""
        monkeypatch.setattr(sys, "stdin", io.StringIO(plugin("p", url="ftp://x/y")))
        assert run_validate("-") == 1
        out, _ = capsys.readouterr()
        assert out.startswith('<stdin>:6: spec.url: unsupported scheme "ftp"')

    def test_unreadable_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A file that is not UTF-8 is an error, not a crash."""
        (tmp_path / "a.yaml").write_bytes(b"\xff\xfe")
        assert run_validate(str(tmp_path)) == 1
        assert capsys.readouterr().out == f"{tmp_path}/a.yaml:1: not UTF-8 text (byte 0xff)\n"


class TestOptions:
    def test_namespace_option(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--namespace sets the namespace of objects without one (seen in duplicate reports)."""
        (tmp_path / "a.yaml").write_text(plugin("p") + "---\n" + plugin("p"))
        assert run_validate("--namespace", "edge", str(tmp_path)) == 1
        assert "duplicate WasmPlugin edge/p" in capsys.readouterr().out

    def test_verbose_logs_skipped_documents(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--verbose logs skipped documents to stderr, never to stdout."""
        (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: ConfigMap\n")
        assert run_validate("--verbose", str(tmp_path)) == 0
        out, err = capsys.readouterr()
        assert out == ""
        assert "skipped an object that is not a WasmPlugin" in err
        assert "kind=ConfigMap" in err

    def test_quiet_by_default_about_skipped_documents(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --verbose, skipping other kinds prints nothing but the summary."""
        (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: ConfigMap\n")
        assert run_validate(str(tmp_path)) == 0
        assert capsys.readouterr() == ("", "1 file, 0 plugins, 0 errors, 0 warnings\n")

    def test_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        """-h explains paths, output format and exit status."""
        with pytest.raises(SystemExit) as exited:
            run_validate("-h")
        assert exited.value.code == 0
        out = capsys.readouterr().out
        for phrase in ("PATH", "--quiet", "path:line: message", "exit status", "*.yaml, *.yml"):
            assert phrase in out

    def test_no_path_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """At least one PATH is required (argparse exits with 2)."""
        with pytest.raises(SystemExit) as exited:
            run_validate()
        assert exited.value.code == 2
        assert "PATH" in capsys.readouterr().err


class TestEntryPoint:
    def test_main_runs_validate(self, valid_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """``wasmxds.cli.main(["validate", ...])`` dispatches to this command."""
        assert main(["validate", str(valid_dir)]) == 0
        assert capsys.readouterr().err == "4 files, 4 plugins, 0 errors, 0 warnings\n"

    def test_python_dash_m(self, valid_dir: Path) -> None:
        """``python -m wasmxds validate`` works as a real process, with exit codes 0 and 1."""
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        ok = subprocess.run(
            [sys.executable, "-m", "wasmxds", "validate", str(valid_dir)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert (ok.returncode, ok.stdout) == (0, "")
        assert ok.stderr.endswith("4 files, 4 plugins, 0 errors, 0 warnings\n")
        bad = subprocess.run(
            [sys.executable, "-m", "wasmxds", "validate", str(DATA / "helloworld-invalid.yaml")],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert bad.returncode == 1
        assert bad.stdout.count("\n") == 1


def test_config_secret_annotation_problems_name_path_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed secrets.wasmxds.io/plugin-config line is an error at its own file line."""
    path = tmp_path / "p.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            apiVersion: extensions.istio.io/v1alpha1
            kind: WasmPlugin
            metadata:
              name: p
              annotations:
                secrets.wasmxds.io/plugin-config: |
                  auth.key=api-keys/primary
                  auth.token=other-ns/tokens/token
            spec:
              url: oci://ghcr.io/acme/f:v1
            """
        )
    )
    assert run_validate(str(path)) == 1
    out, _ = capsys.readouterr()
    assert out == (
        f'{path}:8: metadata.annotations["secrets.wasmxds.io/plugin-config"]: line 2:'
        " 'other-ns/tokens/token' names a namespace: a plugin reads Secrets of its own"
        " namespace only; write <secret>/<key>\n"
    )
