"""``wasmxds validate --fetch`` against real loopback module hosts, signals, and ``--strict``."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.test_cli_validate import plugin, run_validate

# A real proxy-wasm module: --fetch runs the pre-flight check, which refuses a bare header.
WASM = (Path(__file__).parents[1] / "examples/header-filter/header-filter.wasm").read_bytes()


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404, "no such module")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean


class ModuleHost:
    """A threaded HTTP(S) server on 127.0.0.1 serving ``files`` by path; others are 404."""

    def __init__(self, files: dict[str, bytes], context: ssl.SSLContext | None = None) -> None:
        handler = type("Handler", (_Handler,), {"files": files})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if context is not None else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}{path}"

    def __enter__(self) -> ModuleHost:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def host() -> Iterator[ModuleHost]:
    files = {"/good.wasm": WASM, "/text.wasm": b"<html>not wasm</html>"}
    with ModuleHost(files) as server:
        yield server


def test_fetch_reports_each_unusable_module_at_its_plugin(
    host: ModuleHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Good, 404, wrong sha256 and not-Wasm modules: one path:line problem per bad one, exit 1."""
    good = hashlib.sha256(WASM).hexdigest()
    documents = [
        plugin("good", url=host.url("/good.wasm"), extra=f"  sha256: '{good}'\n"),
        plugin("typo", url=host.url("/typo.wasm")),
        plugin("wrong-sum", url=host.url("/good.wasm"), extra=f"  sha256: '{'0' * 64}'\n"),
        plugin("text", url=host.url("/text.wasm")),
    ]
    (tmp_path / "p.yaml").write_text("---\n".join(documents))
    assert run_validate(str(tmp_path / "p.yaml")) == 0  # without --fetch: nothing fetched
    capsys.readouterr()

    assert run_validate("--fetch", str(tmp_path / "p.yaml")) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3, out
    typo, wrong_sum, text = lines
    assert typo.startswith(f"{tmp_path}/p.yaml:9: spec.url: module unavailable: ")
    assert host.url("/typo.wasm") in typo
    assert "404" in typo
    assert wrong_sum.startswith(f"{tmp_path}/p.yaml:16: spec.sha256: module unavailable: ")
    assert good in wrong_sum
    assert "0" * 64 in wrong_sum
    assert text.startswith(f"{tmp_path}/p.yaml:24: spec.url: module unavailable: ")
    assert "wasm" in text.lower()
    assert err == "1 file, 4 plugins, 3 errors, 0 warnings\n"


def test_fetch_passes_good_modules(
    host: ModuleHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every module reachable, Wasm and matching: exit 0 and no output but the summary."""
    (tmp_path / "p.yaml").write_text(plugin("good", url=host.url("/good.wasm")))
    assert run_validate("--fetch", str(tmp_path)) == 0
    assert capsys.readouterr() == ("", "1 file, 1 plugin, 0 errors, 0 warnings\n")


def test_fetch_names_a_missing_pull_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An OCI plugin whose imagePullSecret is not among the files is reported on that field."""
    (tmp_path / "p.yaml").write_text(
        plugin("private", url="oci://127.0.0.1:9/acme/f:v1", extra="  imagePullSecret: regcred\n")
    )
    assert run_validate("--fetch", str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path}/p.yaml:1: spec.imagePullSecret: module unavailable: ")
    assert "image pull secret default/regcred not found" in out


def test_fetch_honours_registry_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A host with a private CA fails verification; --registry-ca or --insecure-registry fix it."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with ModuleHost({"/good.wasm": WASM}, context) as tls:
        (tmp_path / "p.yaml").write_text(plugin("tls", url=tls.url("/good.wasm")))
        assert run_validate("--fetch", str(tmp_path / "p.yaml")) == 1
        assert "certificate" in capsys.readouterr().out.lower()
        assert run_validate("--fetch", "--registry-ca", str(ca_file), str(tmp_path / "p.yaml")) == 0
        assert capsys.readouterr().out == ""
        insecure = ("--insecure-registry", "127.0.0.1")
        assert run_validate("--fetch", *insecure, str(tmp_path / "p.yaml")) == 0
        assert capsys.readouterr().out == ""


def test_fetch_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad fetch option is a usage error (exit 2) naming the option."""
    (tmp_path / "p.yaml").write_text(plugin("p"))
    assert run_validate("--fetch", "--fetch-timeout", "soon", str(tmp_path)) == 2
    assert "invalid duration 'soon'" in capsys.readouterr().err
    assert run_validate("--fetch", "--registry-ca", str(tmp_path / "no.pem"), str(tmp_path)) == 2
    assert f"--registry-ca {tmp_path}/no.pem: no such file" in capsys.readouterr().err


def test_strict_fails_on_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Warnings alone exit 0, and 1 with --strict; --strict changes nothing when all is clean."""
    (tmp_path / "warn.yaml").write_text(plugin("p", extra="  selector: {}\n"))
    assert run_validate(str(tmp_path / "warn.yaml")) == 0
    assert run_validate("--strict", str(tmp_path / "warn.yaml")) == 1
    out, err = capsys.readouterr()
    assert out.count("warning: spec.selector") == 2
    assert err.count("0 errors, 1 warning\n") == 2
    (tmp_path / "clean.yaml").write_text(plugin("q"))
    assert run_validate("--strict", str(tmp_path / "clean.yaml")) == 0


class SilentHost:
    """A loopback TCP server that accepts connections and never answers (a hung module host)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        # accept() in a thread is not woken by close(): poll, so __exit__ can stop it.
        self.sock.settimeout(0.1)
        self.accepted: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                connection, _ = self.sock.accept()
                self.accepted.append(connection)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}{path}"

    def __enter__(self) -> SilentHost:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()
        self.sock.close()
        for connection in self.accepted:
            connection.close()


@pytest.mark.parametrize(
    ("signum", "status", "said"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
    ids=["SIGTERM", "Ctrl-C"],
)
def test_signal_during_fetch_cleans_up_and_exits_quietly(
    tmp_path: Path, signum: signal.Signals, status: int, said: str
) -> None:
    """A real `wasmxds validate --fetch` stuck on a silent host: signalled, it deletes its cache."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    with SilentHost() as silent:
        (tmp_path / "p.yaml").write_text(plugin("hung", url=silent.url("/hung.wasm")))
        # Only the signal may end it: under load the test can notice the fetch late, and
        # the 15 s idle timeout would fail the download first (exit 1, not 130/143).
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wasmxds",
                "validate",
                "--fetch",
                "--fetch-idle-timeout",
                "10m",
                str(tmp_path / "p.yaml"),
            ],
            env={**os.environ, "TMPDIR": str(temp)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            started = time.monotonic()
            # Signal once the fetch is under way: its temporary cache exists, the host is silent.
            while not (list(temp.glob("wasmxds-validate-*")) and silent.accepted):
                assert process.poll() is None, process.communicate()
                assert time.monotonic() - started < 30, "the fetch never started"
                time.sleep(0.05)
            process.send_signal(signum)
            _, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    text = err.decode()
    print(f"\nexit {process.returncode} after {time.monotonic() - started:.2f}s; stderr: {text!r}")
    assert process.returncode == status, text
    assert f"wasmxds validate: {said}" in text
    assert "Traceback" not in text
    assert "KeyboardInterrupt" not in text
    assert list(temp.iterdir()) == []


def test_fetch_limits_are_serves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--fetch-idle-timeout and friends mean what they mean in serve: a silent host fails fast."""
    (tmp_path / "p.yaml").write_text(plugin("p"))
    assert run_validate("--fetch", "--fetch-min-rate", "fast", str(tmp_path)) == 2
    assert "--fetch-min-rate 'fast'" in capsys.readouterr().err
    assert run_validate("--fetch", "--fetch-idle-timeout", "0s", str(tmp_path)) == 2
    assert "--fetch-idle-timeout must be positive" in capsys.readouterr().err
    with SilentHost() as silent:
        (tmp_path / "p.yaml").write_text(plugin("hung", url=silent.url("/hung.wasm")))
        started = time.monotonic()
        code = run_validate(
            "--fetch", "--fetch-idle-timeout", "200ms", "--fetch-timeout", "60s", str(tmp_path)
        )
        took = time.monotonic() - started
    out = capsys.readouterr().out
    print(f"\nsilent host reported after {took:.2f}s: {out.strip()}")
    assert code == 1
    assert f"{tmp_path}/p.yaml:1: spec.url: module unavailable: " in out
    # The overall --fetch-timeout (60 s) did not decide it: the idle limit did, retries included.
    assert "not fetched within" not in out
