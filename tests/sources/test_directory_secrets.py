"""Pull secrets in watched directories follow the same last-known-good rules as plugins."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.sources.test_directory import plugin, watching
from wasmxds.api.objects import ObjectKey

KEY = ObjectKey("default", "regcred")


def secret(password: str, *, name: str = "regcred") -> str:
    config = json.dumps({"auths": {"r.example": {"username": "me", "password": password}}})
    encoded = base64.b64encode(config.encode()).decode()
    return (
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/dockerconfigjson\n"
        f"metadata:\n  name: {name}\ndata:\n  .dockerconfigjson: {encoded}\n"
    )


def password_of(state: object, key: ObjectKey = KEY) -> str | None:
    found = state.secrets.get(key)  # type: ignore[attr-defined]
    if found is None:
        return None
    creds = found.config.lookup("r.example")
    return None if creds is None else str(creds.password)


async def test_secrets_load_change_and_go(tmp_path: Path) -> None:
    """A Secret file is loaded beside plugins, follows edits, and disappears with its file."""
    (tmp_path / "plugin.yaml").write_text(plugin("a"))
    path = tmp_path / "secret.yaml"
    path.write_text(secret("one"))
    async with watching(tmp_path) as watched:
        assert password_of(watched.source.state) == "one"
        assert ObjectKey("default", "a") in watched.source.state.plugins
        path.write_text(secret("two"))
        await watched.until(lambda s: password_of(s) == "two")
        path.unlink()
        await watched.until(lambda s: KEY not in s.secrets)


async def test_broken_secret_keeps_its_last_good_version(tmp_path: Path) -> None:
    """An edit that breaks a Secret (or the whole file) keeps serving the last good one."""
    path = tmp_path / "secret.yaml"
    path.write_text(secret("good"))
    async with watching(tmp_path) as watched:
        path.write_text(
            secret("good").replace("data:\n  .dockerconfigjson: ", "data:\n  .dockerconfigjson: %")
        )
        state = await watched.until(
            lambda s: any("keeping the last valid" in p.message for p in s.problems)
        )
        assert password_of(state) == "good"
        path.write_text("key: [unclosed\n")
        state = await watched.until(lambda s: any("this file" in p.message for p in s.problems))
        assert password_of(state) == "good"


async def test_same_secret_in_two_files_keeps_the_first(tmp_path: Path) -> None:
    """A Secret defined in two files keeps the first-loaded definition and reports the second."""
    (tmp_path / "a.yaml").write_text(secret("first"))
    (tmp_path / "b.yaml").write_text(secret("second"))
    async with watching(tmp_path) as watched:
        state = watched.source.state
        assert password_of(state) == "first"
        assert any("Secret default/regcred is already defined" in p.message for p in state.problems)


def opaque(value: str) -> str:
    encoded = base64.b64encode(value.encode()).decode()
    return (
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: api-keys\n"
        f"data:\n  primary: {encoded}\n  both: {encoded}\nstringData:\n  both: plain-{value}\n"
    )


async def test_opaque_secrets_load_change_and_go(tmp_path: Path) -> None:
    """An Opaque Secret beside the plugins is loaded (stringData over data), follows edits,
    keeps its last good version when broken, and goes with its file."""
    key = ObjectKey("default", "api-keys")
    path = tmp_path / "keys.yaml"
    path.write_text(opaque("one"))
    async with watching(tmp_path) as watched:
        found = watched.source.state.config_secrets[key]
        assert dict(found.data) == {"primary": b"one", "both": b"plain-one"}
        path.write_text(opaque("two"))
        await watched.until(lambda s: s.config_secrets[key].data["primary"] == b"two")
        path.write_text(opaque("two").replace("primary: ", "primary: x$"))
        state = await watched.until(
            lambda s: any(
                "keeping the last valid version of Secret" in p.message for p in s.problems
            )
        )
        assert state.config_secrets[key].data["primary"] == b"two"
        assert "two" not in " ".join(p.message for p in state.problems)
        path.unlink()
        await watched.until(lambda s: key not in s.config_secrets)
