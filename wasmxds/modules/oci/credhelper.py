"""Run ``docker-credential-<name>`` programs the way Docker does, and remember their answers.

The protocol (docker-credential-helpers' ``client.Get``, used by docker/cli's
native store): run ``docker-credential-<name> get``, write the server URL to
its stdin, read ``{"ServerURL", "Username", "Secret"}`` from its stdout. A
``Username`` of ``<token>`` means ``Secret`` is an identity (OAuth2 refresh)
token. A failing exit whose output is ``credentials not found in native
keychain`` means the helper has nothing for that registry: Docker then goes
on with what the config file itself holds, usually nothing (anonymous).

What wasmxds adds, because it runs helpers unattended inside a server:

- only names the operator allowed (``--credential-helpers``) run, and only
  names that cannot be read as a path; the program is looked up on absolute
  ``PATH`` entries only (a relative entry would depend on the working
  directory);
- one run at a time per (helper, server URL), with a deadline; on timeout or
  cancellation the helper's whole process group is killed;
- stdout is read up to a cap, stderr is discarded: neither is logged or put
  into an error, since either may hold the secret. Errors name the helper
  and its exit status only;
- answers (found or not found) are kept for ``ttl`` seconds so a fleet of
  pulls asks once; :meth:`CredentialHelpers.forget` drops one when the
  registry refuses it, so the next try asks again.

Subprocesses are asyncio's: no thread is started here (Python 3.11's default
child watcher still waits for each child in a thread of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from wasmxds.api.dockerconfig import RegistryCredentials, valid_helper_name
from wasmxds.errors import CredentialHelperError

__all__ = ["ANY_HELPER", "CredentialHelpers", "find_program", "program_name"]

log = structlog.get_logger(__name__)

ANY_HELPER = "*"
"""``--credential-helpers '*'``: every validly named helper may run."""

_PREFIX = "docker-credential-"
# docker-credential-helpers' credentials/error.go: the one answer that is not a failure.
_NOT_FOUND = b"credentials not found in native keychain"
# What docker/cli's native store reads as "Secret is an identity token".
_TOKEN_USERNAME = "<token>"

DEFAULT_TTL = 300.0
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_OUTPUT = 64 << 10
_MAX_ENTRIES = 256
_DRAIN_CHUNK = 64 << 10
_REAP_SECONDS = 5.0


def program_name(helper: str) -> str:
    return f"{_PREFIX}{helper}"


def find_program(helper: str, path: str | None = None) -> Path | None:
    """``docker-credential-<helper>`` on the absolute entries of ``PATH``; None if absent."""
    search = os.environ.get("PATH", os.defpath) if path is None else path
    for entry in search.split(os.pathsep):
        if not entry or not os.path.isabs(entry):
            continue
        candidate = Path(entry) / program_name(helper)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(slots=True)
class _Answer:
    credentials: RegistryCredentials | None = field(repr=False)
    expires_at: float


class CredentialHelpers:
    """The helpers the operator allowed, run on demand; answers cached per (helper, server)."""

    def __init__(
        self,
        allowed: Iterable[str] = (),
        *,
        ttl: float = DEFAULT_TTL,
        timeout: float = DEFAULT_TIMEOUT,
        max_output: int = DEFAULT_MAX_OUTPUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._allowed = frozenset(allowed)
        self._ttl = ttl
        self._timeout = timeout
        self._max_output = max_output
        self._clock = clock
        self._answers: OrderedDict[tuple[str, str], _Answer] = OrderedDict()
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def allows(self, helper: str) -> bool:
        return valid_helper_name(helper) and (
            ANY_HELPER in self._allowed or helper in self._allowed
        )

    def __repr__(self) -> str:
        return f"CredentialHelpers(allowed={sorted(self._allowed)!r}, cached={len(self._answers)})"

    async def get(self, helper: str, server_url: str) -> RegistryCredentials | None:
        """The helper's credentials for ``server_url``, None when it has none.

        Raises :class:`CredentialHelperError`: not retryable when the helper may
        not run; retryable when it is missing, fails, hangs or answers something
        that is not credentials.
        """
        if not self.allows(helper):
            raise CredentialHelperError(
                f"credential helper {program_name(helper)} is not allowed"
                " (allow it with --credential-helpers)",
                retryable=False,
            )
        key = (helper, server_url)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one run per key; the others wait and read its answer
            cached = self._fresh(key)
            if cached is not None:
                return cached.credentials
            credentials = await self._run(helper, server_url)
            self._remember(key, credentials)
            return credentials

    def forget(self, helper: str, server_url: str) -> None:
        """Drop the kept answer (the registry refused it): the next pull asks the helper."""
        if self._answers.pop((helper, server_url), None) is not None:
            log.info("oci.credential_helper_forgotten", helper=helper, registry=server_url)

    def _fresh(self, key: tuple[str, str]) -> _Answer | None:
        answer = self._answers.get(key)
        if answer is None:
            return None
        if self._clock() >= answer.expires_at:
            del self._answers[key]
            return None
        return answer

    def _remember(self, key: tuple[str, str], credentials: RegistryCredentials | None) -> None:
        self._answers[key] = _Answer(credentials, self._clock() + self._ttl)
        self._answers.move_to_end(key)
        while len(self._answers) > _MAX_ENTRIES:
            self._answers.popitem(last=False)

    async def _run(self, helper: str, server_url: str) -> RegistryCredentials | None:
        program = program_name(helper)
        path = find_program(helper)
        if path is None:
            raise CredentialHelperError(
                f"credential helper {program} is not on PATH (absolute directories only)"
            )
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                str(path),
                "get",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # its own process group, killed as one
            )
        except OSError as exc:
            raise CredentialHelperError(
                f"credential helper {program} could not be started"
                f" ({exc.strerror or type(exc).__name__})"
            ) from None
        finished = False
        try:
            async with asyncio.timeout(self._timeout):
                output = await self._exchange(proc, program, server_url)
                status = await proc.wait()
            finished = True
        except TimeoutError:
            raise CredentialHelperError(
                f"credential helper {program} did not answer within {self._timeout:g} s"
            ) from None
        finally:
            if not finished:  # timed out, over the cap, or the pull was cancelled
                await _kill(proc)
        credentials = self._read(program, status, output)
        log.info(
            "oci.credential_helper",
            helper=helper,
            registry=server_url,
            found=credentials is not None,
            seconds=round(time.monotonic() - started, 3),
        )
        return credentials

    async def _exchange(
        self, proc: asyncio.subprocess.Process, program: str, server_url: str
    ) -> bytes:
        assert proc.stdin is not None
        assert proc.stdout is not None
        # A helper may exit without reading its input; that is its business.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(server_url.encode())
            await proc.stdin.drain()
            proc.stdin.close()
            await proc.stdin.wait_closed()
        output = bytearray()
        while chunk := await proc.stdout.read(self._max_output + 1 - len(output)):
            output += chunk
            if len(output) > self._max_output:
                raise CredentialHelperError(
                    f"credential helper {program} printed more than {self._max_output} bytes"
                )
        return bytes(output)

    @staticmethod
    def _read(program: str, status: int, output: bytes) -> RegistryCredentials | None:
        if status != 0:
            if output.strip() == _NOT_FOUND:
                return None
            how = f"exit status {status}" if status > 0 else f"killed by signal {-status}"
            raise CredentialHelperError(f"credential helper {program} failed ({how})")
        try:
            document = json.loads(output)
        except (ValueError, RecursionError):  # 64 KiB of '[' nests too deep to decode
            document = None
        username = document.get("Username", "") if isinstance(document, dict) else None
        secret = document.get("Secret", "") if isinstance(document, dict) else None
        if not isinstance(username, str) or not isinstance(secret, str):
            raise CredentialHelperError(
                f"credential helper {program} answered with something other than"
                ' {"Username", "Secret"} JSON'
            )
        if username == _TOKEN_USERNAME:
            credentials = RegistryCredentials(identity_token=secret)
        else:
            credentials = RegistryCredentials(username=username, password=secret)
        return None if credentials.is_empty else credentials


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill the helper's whole process group and reap the helper.

    The group too, because a helper that exited may have left a child holding
    its stdout; while any member lives, the kernel keeps the group id from
    being reused, so this reaches only what the helper started.

    Python 3.11's ``wait()`` returns only once stdout is closed as well, and a
    helper that flooded it leaves the reader paused (its buffer full), so the
    end of the pipe would never be seen: what is left is read and dropped. A
    process that left the group (``setsid``) could hold the pipe open for ever;
    after ``_REAP_SECONDS`` it is given up on, logged, not waited for.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)

    async def reap() -> None:
        if proc.stdout is not None:
            while await proc.stdout.read(_DRAIN_CHUNK):
                pass
        await proc.wait()

    try:
        async with asyncio.timeout(_REAP_SECONDS):
            await asyncio.shield(reap())
    except TimeoutError:
        log.warning("oci.credential_helper_not_reaped", pid=proc.pid)
