"""A real OCI registry (Debian's ``docker-registry``, distribution 2.8) on loopback for tests.

Variants: plain HTTP, htpasswd (Basic auth), TLS with a test CA (trustme), and
bearer tokens from a token service the test runs (:class:`TokenService`,
which signs JWTs the way distribution's ``token`` auth expects). The first
start binds a kernel-chosen port; :meth:`Registry.stop` and
:meth:`Registry.start` then simulate an outage on the same address with the
same storage. The context manager always stops the process, so a failing
test never leaves a registry behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import trustme
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

__all__ = [
    "Registry",
    "TokenService",
    "registry_binary",
    "running_registry",
    "token_service",
]

_LISTENING = re.compile(r'msg="listening on ([^,"]+)')


def registry_binary() -> str | None:
    return shutil.which("docker-registry")


@dataclass
class Registry:
    """One registry process; ``host`` is ``127.0.0.1:PORT`` once started."""

    workdir: Path
    htpasswd: Mapping[str, str] | None = None
    tls: trustme.CA | None = None
    token: TokenService | None = None
    host: str = ""
    proc: asyncio.subprocess.Process | None = field(default=None, repr=False)
    starts: int = 0

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def ref(self, repository: str, tag: str = "v1") -> str:
        return f"{self.host}/{repository}:{tag}"

    def url(self, repository: str, tag: str = "v1") -> str:
        return f"oci://{self.ref(repository, tag)}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _config(self) -> dict[str, Any]:
        http: dict[str, Any] = {"addr": self.host or "127.0.0.1:0", "secret": "wasmxds-tests"}
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "data")},
                "delete": {"enabled": True},
            },
            "http": http,
        }
        if self.tls is not None:
            cert = self.tls.issue_cert("127.0.0.1", "localhost")
            cert_path, key_path = self.workdir / "tls.crt", self.workdir / "tls.key"
            cert.cert_chain_pems[0].write_to_path(str(cert_path))
            for extra in cert.cert_chain_pems[1:]:
                extra.write_to_path(str(cert_path), append=True)
            cert.private_key_pem.write_to_path(str(key_path))
            http["tls"] = {"certificate": str(cert_path), "key": str(key_path)}
        if self.htpasswd is not None:
            lines = [
                f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}"
                for user, password in self.htpasswd.items()
            ]
            path = self.workdir / "htpasswd"
            path.write_text("\n".join(lines) + "\n")
            config["auth"] = {"htpasswd": {"realm": "wasmxds-tests", "path": str(path)}}
        elif self.token is not None:
            bundle = self.workdir / "token-ca.pem"
            bundle.write_bytes(self.token.cert_pem)
            config["auth"] = {
                "token": {
                    "realm": self.token.realm,
                    "service": self.token.service,
                    "issuer": self.token.issuer,
                    "rootcertbundle": str(bundle),
                }
            }
        return config

    async def start(self) -> None:
        binary = registry_binary()
        if binary is None:
            raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "config.yml"
        config_path.write_text(yaml.safe_dump(self._config()))
        self.log_path.write_text("")
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                binary,
                "serve",
                str(config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        self.starts += 1
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self, timeout: float = 20.0) -> None:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            while not self.host:
                match = _LISTENING.search(self.log_text())
                if match:
                    self.host = match.group(1).strip()
                    break
                if self.proc.returncode is not None:
                    raise RuntimeError(f"docker-registry exited:\n{self.log_text()[-3000:]}")
                await asyncio.sleep(0.02)
            verify: Any = False
            async with httpx.AsyncClient(verify=verify, timeout=2.0) as client:
                while True:
                    if self.proc.returncode is not None:
                        raise RuntimeError(f"docker-registry exited:\n{self.log_text()[-3000:]}")
                    with contextlib.suppress(httpx.HTTPError):
                        response = await client.get(f"{self.scheme}://{self.host}/v2/")
                        if response.status_code in (200, 401):
                            return
                    await asyncio.sleep(0.02)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def running_registry(
    workdir: Path,
    *,
    htpasswd: Mapping[str, str] | None = None,
    tls: trustme.CA | None = None,
    token: TokenService | None = None,
) -> AsyncIterator[Registry]:
    """Start a registry in ``workdir``; it is stopped on exit whatever happens."""
    registry = Registry(workdir, htpasswd=htpasswd, tls=tls, token=token)
    try:
        await registry.start()
        yield registry
    finally:
        await registry.stop()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenService:
    """A bearer-token service for the registry's ``token`` auth (JWT, ES256, x5c header).

    With ``users`` it demands Basic credentials (401 otherwise); without, it
    issues anonymous tokens. ``requests`` records (has_basic_auth, scopes) per call.
    """

    users: Mapping[str, str] | None = None
    service: str = "wasmxds-test-registry"
    issuer: str = "wasmxds-test-issuer"
    port: int = 0
    requests: list[tuple[bool, list[str]]] = field(default_factory=list)
    _key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    _cert: x509.Certificate | None = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def cert_pem(self) -> bytes:
        return self._certificate().public_bytes(serialization.Encoding.PEM)

    def _certificate(self) -> x509.Certificate:
        if self._cert is None:
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wasmxds token signer")])
            now = datetime.datetime.now(datetime.UTC)
            self._cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(self._key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self._key, hashes.SHA256())
            )
        return self._cert

    def issue(self, subject: str, scopes: Sequence[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, _actions = rest.rpartition(":")
            # Every token may push: oras-py reuses its first (pull) token for uploads.
            access.append({"type": kind, "name": name, "actions": ["pull", "push"]})
        now = int(time.time())
        header = {
            "alg": "ES256",
            "typ": "JWT",
            "x5c": [
                base64.b64encode(
                    self._certificate().public_bytes(serialization.Encoding.DER)
                ).decode()
            ],
        }
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{_b64url(signature)}"

    async def handle(self, request: web.Request) -> web.Response:
        scopes = request.query.getall("scope", [])
        header = request.headers.get("Authorization", "")
        self.requests.append((header.startswith("Basic "), list(scopes)))
        subject = "anonymous"
        if self.users is not None:
            try:
                user, _, password = (
                    base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
                )
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            if not header.startswith("Basic ") or self.users.get(user) != password:
                return web.json_response({"details": "bad credentials"}, status=401)
            subject = user
        return web.json_response({"token": self.issue(subject, scopes), "expires_in": 300})


@contextlib.asynccontextmanager
async def token_service(users: Mapping[str, str] | None = None) -> AsyncIterator[TokenService]:
    service = TokenService(users=users)
    app = web.Application()
    app.router.add_get("/token", service.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    service.port = int(runner.addresses[0][1])
    try:
        yield service
    finally:
        await runner.cleanup()


def registry_env() -> dict[str, str]:
    """The environment for commands that must not read the developer's docker config."""
    return {**os.environ, "DOCKER_CONFIG": "/nonexistent"}
