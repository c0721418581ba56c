"""``wasmxds rollouts`` and ``wasmxds rollout ACTION NS/NAME`` against a real admin server."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from tests.admin.test_server_rollouts import admin, rolling
from wasmxds.cli import main


async def cli(*argv: str) -> int:
    """``wasmxds ARGV`` run off the event loop (the admin server answers on it)."""
    return await asyncio.to_thread(main, list(argv))


def printed(capsys: pytest.CaptureFixture[str]) -> str:
    """What the command printed, without the in-process server's log lines."""
    lines = capsys.readouterr().out.splitlines(keepends=True)
    return "".join(line for line in lines if not re.match(r"\d{4}-\d\d-\d\d \d", line))


async def test_rollouts_table_and_json(tmp_path, capsys):
    """The table shows phase, step, versions and proxies; -o json prints the page unchanged."""
    fleet = rolling()
    fleet.tick(1)  # the engine counts the proxies on each version
    view = fleet.engine.view("default/p")
    assert view["proxies"]["new"] > 0
    async with admin(tmp_path, fleet.engine) as base:
        address = base.removeprefix("http://")
        assert await cli("rollouts", "--admin-address", address) == 0
        table = printed(capsys)
        header, row = table.splitlines()
        assert header.split()[:4] == ["PLUGIN", "PHASE", "STEP", "OLD"]
        assert row.startswith("default/p")
        assert "Progressing" in row
        assert "1/3 (25%)" in row
        assert view["old"]["version"][:8] in row
        assert view["new"]["version"][:8] in row
        proxies = view["proxies"]
        assert f"{proxies['new']} new/{proxies['old']} old" in row
        assert await cli("rollouts", "--admin-address", address, "-o", "json") == 0
        assert [v["plugin"] for v in json.loads(printed(capsys))] == ["default/p"]


async def test_rollout_actions_print_the_rollout_after_them(tmp_path, capsys):
    """pause, resume and promote print the phase each leaves; a finished or unknown rollout
    exits with the server's sentence."""
    fleet = rolling()
    async with admin(tmp_path, fleet.engine) as base:
        address = ("--admin-address", base.removeprefix("http://"))
        for action, phase in (("pause", "Paused"), ("resume", "Progressing")):
            assert await cli("rollout", action, "default/p", *address) == 0
            line = printed(capsys)
            assert line.startswith(f"default/p: {phase} at step 1/3 (25%)")
        assert await cli("rollout", "promote", "default/p", *address, "-o", "json") == 0
        assert json.loads(printed(capsys))["phase"] == "Complete"
        with pytest.raises(SystemExit) as finished:
            await cli("rollout", "abort", "default/p", *address)
        assert str(finished.value.code).startswith(
            "wasmxds: cannot abort the rollout of default/p: it is Complete"
        )
        with pytest.raises(SystemExit) as unknown:
            await cli("rollout", "pause", "other/q", *address)
        assert str(unknown.value.code).startswith("wasmxds: no staged rollout for 'other/q'")


async def test_no_rollouts_says_how_to_stage(tmp_path, capsys):
    """With nothing staged, the command says which annotation or flag stages a change."""
    async with admin(tmp_path, None) as base:
        assert await cli("rollouts", "--admin-address", base.removeprefix("http://")) == 0
    assert "rollout.wasmxds.io/steps" in printed(capsys)


async def test_refused_steering_names_what_opens_it(tmp_path):
    """Off loopback with --debug-public, the action exits with the server's refusal and the
    options that open it."""
    fleet = rolling()
    async with admin(tmp_path, fleet.engine, host="0.0.0.0", debug_public=True) as base:
        with pytest.raises(SystemExit) as refused:
            await cli("rollout", "abort", "default/p", "--admin-address", base[7:])
    message = str(refused.value.code)
    print(message)
    assert "refused: steering a rollout is refused" in message
    assert "--admin-cert" in message
    assert fleet.engine.view("default/p")["phase"] == "Progressing"


@pytest.mark.parametrize("target", ["p", "default/", "/p", "a/b/c"])
def test_a_target_that_is_not_namespace_slash_name_is_a_sentence(target: str):
    """A malformed NS/NAME is refused before anything is sent, with an example."""
    with pytest.raises(SystemExit) as exited:
        main(["rollout", "pause", target, "--admin-address", "127.0.0.1:1"])
    assert f"{target!r} is not NAMESPACE/NAME" in str(exited.value.code)
