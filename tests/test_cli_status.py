"""``wasmxds status`` / ``plugins`` when no wasmxds answers at the admin address."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from wasmxds.cli import main


@pytest.fixture(name="silent_address")
def _silent_address() -> Iterator[str]:
    """A loopback address whose port is held (so nobody else takes it) but not listening."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{held.getsockname()[1]}"


class _NotWasmxds(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>some other service</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output clean


@pytest.fixture(name="other_service")
def _other_service() -> Iterator[str]:
    """Something that is not wasmxds answering HTML on a loopback port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotWasmxds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("command", ["status", "plugins"])
def test_nothing_listening_names_the_address_and_the_flag(command: str, silent_address: str):
    """Nothing listening: the message says no wasmxds answers there and how to point elsewhere."""
    with pytest.raises(SystemExit) as exited:
        main([command, "--admin-address", silent_address])
    message = str(exited.value.code)
    assert message.startswith(f"wasmxds: no wasmxds answers at admin address {silent_address} (")
    assert "is `wasmxds serve` running?" in message
    assert "--admin-address HOST:PORT" in message


def test_another_service_is_not_taken_for_wasmxds(other_service: str):
    """A server that answers something other than wasmxds's JSON is reported, not a traceback."""
    with pytest.raises(SystemExit) as exited:
        main(["status", "--admin-address", other_service])
    message = str(exited.value.code)
    assert f"http://{other_service}/debug/syncz did not answer like a wasmxds admin server" in (
        message
    )
    assert "--admin-address HOST:PORT" in message
