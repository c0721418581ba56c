"""Running docker credential helpers: the protocol, the cache, and helpers that misbehave."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.modules.oci.helperscripts import HelperScripts, path_with
from wasmxds.errors import CredentialHelperError
from wasmxds.modules.oci.credhelper import CredentialHelpers, _kill, find_program

SECRET = "helper-S3cret-value"
SERVER = "registry.example:5000"


@pytest.fixture
def scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HelperScripts:
    found = HelperScripts(tmp_path / "bin")
    monkeypatch.setenv("PATH", path_with(found.path_entry))
    return found


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_answer_is_read_from_stdout_for_the_server_on_stdin(scripts: HelperScripts) -> None:
    """The helper gets `get` and the server URL on stdin; Username/Secret become credentials."""
    scripts.answering("good", "robot", SECRET)
    helpers = CredentialHelpers({"good"})
    found = await helpers.get("good", SERVER)
    assert found is not None
    assert (found.username, found.password) == ("robot", SECRET)
    assert scripts.calls("good") == [SERVER]
    assert SECRET not in repr(found)
    assert SECRET not in repr(helpers)


async def test_token_username_means_an_identity_token(scripts: HelperScripts) -> None:
    """Username `<token>` makes Secret an identity (refresh) token, as docker/cli reads it."""
    scripts.answering("acr", "<token>", SECRET)
    found = await CredentialHelpers({"*"}).get("acr", SERVER)
    assert found is not None
    assert found.identity_token == SECRET
    assert not found.has_basic


async def test_not_found_is_no_credentials_not_a_failure(scripts: HelperScripts) -> None:
    """The "credentials not found in native keychain" answer means anonymous, and is kept."""
    scripts.not_found("empty")
    helpers = CredentialHelpers({"empty"})
    assert await helpers.get("empty", SERVER) is None
    assert await helpers.get("empty", SERVER) is None
    assert scripts.calls("empty") == [SERVER]


async def test_a_fleet_of_pulls_runs_the_helper_once(scripts: HelperScripts) -> None:
    """Fifty concurrent and later lookups of one (helper, server) start one process."""
    scripts.answering("good", "robot", SECRET)
    helpers = CredentialHelpers({"good"})
    answers = await asyncio.gather(*(helpers.get("good", SERVER) for _ in range(50)))
    answers.append(await helpers.get("good", SERVER))
    assert all(a is not None and a.password == SECRET for a in answers)
    assert scripts.calls("good") == [SERVER]
    await helpers.get("good", "other.example")
    assert scripts.calls("good") == [SERVER, "other.example"]


async def test_answers_expire_and_can_be_forgotten(scripts: HelperScripts) -> None:
    """A kept answer is used until its time is up, or until forget() drops it."""
    scripts.answering("good", "robot", SECRET)
    clock = Clock()
    helpers = CredentialHelpers({"good"}, ttl=60.0, clock=clock)
    await helpers.get("good", SERVER)
    clock.now += 59.0
    await helpers.get("good", SERVER)
    assert len(scripts.calls("good")) == 1
    clock.now += 2.0
    await helpers.get("good", SERVER)
    assert len(scripts.calls("good")) == 2
    helpers.forget("good", SERVER)
    await helpers.get("good", SERVER)
    assert len(scripts.calls("good")) == 3


async def test_hanging_helper_times_out_and_its_process_group_is_killed(
    scripts: HelperScripts,
) -> None:
    """A helper that never answers fails (retryable) at the deadline; it and its child die."""
    scripts.hanging("stuck")
    helpers = CredentialHelpers({"stuck"}, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(CredentialHelperError, match="did not answer within 1 s") as caught:
        await helpers.get("stuck", SERVER)
    elapsed = time.monotonic() - started
    print(f"hanging helper failed after {elapsed:.2f} s (deadline 1 s)")
    assert caught.value.retryable
    assert caught.value.reason == "credential_helper_failed"
    assert "docker-credential-stuck" in str(caught.value)
    await _gone(scripts.child_pid("stuck"))


async def test_cancelled_lookup_kills_the_helper(scripts: HelperScripts) -> None:
    """A pull cancelled while its helper runs leaves no helper process behind."""
    scripts.hanging("stuck")
    helpers = CredentialHelpers({"stuck"}, timeout=60.0)
    task = asyncio.create_task(helpers.get("stuck", SERVER))
    child = scripts.directory / "stuck.child"
    async with asyncio.timeout(20):
        while not child.exists() or not child.read_text():
            await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _gone(scripts.child_pid("stuck"))


async def test_helper_whose_unread_flood_paused_the_reader_is_still_reaped(
    scripts: HelperScripts,
) -> None:
    """A helper killed while its stdout is full and unread is reaped (3.11 waits for the pipe)."""
    program = scripts.flooding("flood", 1 << 20)
    proc = await asyncio.create_subprocess_exec(
        str(program),
        "get",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.close()
    async with asyncio.timeout(20):
        # The state the cap leaves behind under load: the reader stopped reading the pipe.
        while not proc.stdout._paused:  # type: ignore[attr-defined]
            await asyncio.sleep(0.02)
    async with asyncio.timeout(20):
        await _kill(proc)
    assert proc.returncode == -9


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("garbage", "answered with something other than"),
        ("nested", "answered with something other than"),
        ("failing", r"failed \(exit status 3\)"),
        ("stderr", r"failed \(exit status 2\)"),
        ("flood", "printed more than 65536 bytes"),
    ],
)
async def test_misbehaving_helper_fails_without_showing_its_output(
    scripts: HelperScripts, capfd: pytest.CaptureFixture[str], kind: str, expected: str
) -> None:
    """Garbage, a failing exit, stderr chatter and a flood are retryable failures naming the
    helper and exit status only: neither stdout nor stderr reaches the error or our output."""
    if kind == "garbage":
        scripts.garbage("bad", f"token={SECRET}")
    elif kind == "nested":
        scripts.garbage("bad", "[" * 60000)
    elif kind == "failing":
        scripts.failing("bad", f'{{"Secret": "{SECRET}"}}', 3)
    elif kind == "stderr":
        scripts.echo_to_stderr("bad", SECRET)
    else:
        scripts.flooding("bad", 1 << 20)
    with pytest.raises(CredentialHelperError, match=expected) as caught:
        await CredentialHelpers({"bad"}).get("bad", SERVER)
    assert caught.value.retryable
    assert SECRET not in str(caught.value)
    assert SERVER not in str(caught.value)  # stdin echoed back must not show either
    out, err = capfd.readouterr()
    assert SECRET not in out + err
    assert "stdin was" not in out + err


async def test_only_allowed_and_well_named_helpers_run(scripts: HelperScripts) -> None:
    """A helper not allowed, or whose name could be a path, is refused and never started."""
    scripts.answering("good", "robot", SECRET)
    with pytest.raises(CredentialHelperError, match="--credential-helpers") as caught:
        await CredentialHelpers({"other"}).get("good", SERVER)
    assert not caught.value.retryable
    for name in ("../good", "a/b", "", "-rf", "x" * 65):
        assert not CredentialHelpers({"*"}).allows(name)
    assert CredentialHelpers({"*"}).allows("ecr-login")
    assert scripts.calls("good") == []


async def test_helper_missing_from_path_is_a_retryable_failure(scripts: HelperScripts) -> None:
    """An allowed helper that is not installed fails, saying so, and can succeed later."""
    with pytest.raises(CredentialHelperError, match="not on PATH") as caught:
        await CredentialHelpers({"later"}).get("later", SERVER)
    assert caught.value.retryable


def test_relative_path_entries_are_not_searched(tmp_path: Path) -> None:
    """A helper in a relative PATH entry (the working directory) is never found."""
    scripts = HelperScripts(tmp_path / "bin")
    scripts.answering("rel", "u", "p")
    relative = os.path.relpath(scripts.directory)
    assert find_program("rel", relative) is None
    assert find_program("rel", f"{relative}{os.pathsep}") is None
    assert find_program("rel", scripts.path_entry) == scripts.directory / "docker-credential-rel"


async def _gone(pid: int) -> None:
    async with asyncio.timeout(10):
        while _alive(pid):
            await asyncio.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()
