"""Small ``docker-credential-<name>`` programs for tests, written into a directory put on PATH.

Each is a real executable speaking Docker's helper protocol (``get``, server
URL on stdin), so the code under test runs them exactly as it would run
``docker-credential-ecr-login``. Every run appends the server URL it was asked
for to ``<dir>/<name>.calls``, so a test can count runs and check stdin.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from pathlib import Path

__all__ = ["HelperScripts", "path_with"]

_PRELUDE = """\
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
name = os.path.basename(__file__).removeprefix("docker-credential-")
assert sys.argv[1:] == ["get"], sys.argv
server = sys.stdin.read()
with open(os.path.join(here, name + ".calls"), "a") as calls:
    calls.write(server + "\\n")
"""


class HelperScripts:
    """Writes helper programs into ``directory``; :attr:`path_entry` goes first on PATH."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def path_entry(self) -> str:
        return str(self.directory.absolute())

    def calls(self, name: str) -> list[str]:
        """The server URLs the helper was asked for, one per run."""
        path = self.directory / f"{name}.calls"
        return path.read_text().splitlines() if path.exists() else []

    def write(self, name: str, body: str) -> Path:
        path = self.directory / f"docker-credential-{name}"
        script = f"#!{sys.executable}\n{_PRELUDE}{textwrap.dedent(body)}"
        path.write_text(script)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return path

    def answering(self, name: str, username: str, secret: str) -> Path:
        """Answers ``{"ServerURL", "Username", "Secret"}`` for any server."""
        answer = {"Username": username, "Secret": secret}
        return self.write(
            name,
            f"""\
            answer = {{"ServerURL": server, **{json.dumps(answer)}}}
            print(json.dumps(answer))
            """,
        )

    def from_file(self, name: str) -> Path:
        """Answers with the Username/Secret in ``<dir>/<name>.json`` (a test changes it)."""
        return self.write(
            name,
            """\
            with open(os.path.join(here, name + ".json")) as answer:
                print(json.dumps({"ServerURL": server, **json.load(answer)}))
            """,
        )

    def set_answer(self, name: str, username: str, secret: str) -> None:
        target = self.directory / f"{name}.json"
        target.write_text(json.dumps({"Username": username, "Secret": secret}))

    def not_found(self, name: str) -> Path:
        """Docker's "no credentials for this server" answer."""
        return self.write(
            name,
            """\
            print("credentials not found in native keychain")
            sys.exit(1)
            """,
        )

    def hanging(self, name: str) -> Path:
        """Starts a child (its pid in ``<dir>/<name>.child``), then never answers."""
        return self.write(
            name,
            """\
            import subprocess
            child = subprocess.Popen(["sleep", "600"])
            with open(os.path.join(here, name + ".child"), "w") as out:
                out.write(str(child.pid))
            time.sleep(600)
            """,
        )

    def child_pid(self, name: str) -> int:
        return int((self.directory / f"{name}.child").read_text())

    def garbage(self, name: str, text: str) -> Path:
        """Exits 0 having printed ``text``, which is not the credentials JSON."""
        return self.write(name, f"print({text!r})\n")

    def failing(self, name: str, stdout: str, status: int) -> Path:
        """Prints ``stdout`` (a secret, say) and exits with ``status``."""
        return self.write(name, f"print({stdout!r})\nsys.exit({status})\n")

    def echo_to_stderr(self, name: str, secret: str) -> Path:
        """Writes its stdin and ``secret`` to stderr, then fails."""
        return self.write(
            name,
            f"""\
            sys.stderr.write("stdin was " + server + " and the secret is " + {secret!r} + "\\n")
            sys.stderr.flush()
            sys.exit(2)
            """,
        )

    def flooding(self, name: str, size: int) -> Path:
        """Prints ``size`` bytes of something that starts like JSON."""
        return self.write(
            name,
            f"""\
            sys.stdout.write('{{"Username": "' + "x" * {size})
            sys.stdout.flush()
            """,
        )


def path_with(entry: str) -> str:
    """``PATH`` with ``entry`` first."""
    return os.pathsep.join([entry, os.environ.get("PATH", os.defpath)])
