"""A small async client for the OCI distribution API, over the SSRF-guarded transport.

Why not ``oras`` (or any registry SDK): they are synchronous (requests), so
every pull would need a worker thread and would bypass the guarded transport
that vets every address wasmxds connects to. The API surface needed here is
small: manifests, blobs, monolithic uploads, and the auth dance.

Behaviour:

- **Auth**: anonymous first; a 401 challenge selects Basic (credentials on every
  request) or Bearer (a token from the realm, cached per registry, repository,
  access and credentials until it expires). Realms are vetted before use
  (:func:`wasmxds.modules.oci.auth.check_realm`). Credentials go only to the
  registry host and the vetted realm: a redirect to blob storage elsewhere
  never carries them.
- **TLS**: verified with system trust plus ``ca_file``. Hosts listed as
  insecure registries skip verification and, when they answer TLS with plain
  HTTP, are spoken to over plain HTTP from then on (Docker's behaviour for
  insecure registries). Unlisted hosts never fall back to plain HTTP; the
  error says how to allow it. (Istio falls back for every host, which lets
  anyone on the path downgrade the connection and read the credentials.)
- **Retries**: transport errors, 429 and 5xx (except 501/505/511) are retried
  ``tries`` times with backoff; everything else fails at once, saying whether
  a later retry could help. A registry or token service below the minimum
  transfer rate, or timing out (silent, not connecting, a stalled TLS
  handshake), fails at once (retryable later, outside the download slot),
  naming the request.
- **Limits**: every body is read with a cap, compressed transfer encodings are
  refused (no decompression bombs through Content-Encoding), blobs are checked
  against their digest and size.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import structlog

from wasmxds.api.dockerconfig import RegistryCredentials
from wasmxds.errors import (
    DigestMismatchError,
    FetchError,
    ModuleError,
    ModuleTooLargeError,
    RegistryAuthError,
)
from wasmxds.modules.download import (
    Downloader,
    Saved,
    TryAgain,
    httpx_errors,
    read_capped,
    retry_later,
    retry_now,
    retrying,
    save_capped,
)
from wasmxds.modules.oci.auth import Token, basic_header, check_realm, parse_challenges, parse_token
from wasmxds.modules.oci.reference import Reference
from wasmxds.modules.progress import excused
from wasmxds.modules.settings import FetcherSettings
from wasmxds.modules.ssrf import AddressResolver
from wasmxds.modules.transport import (
    plain_http_answer,
    tls_verification_failure,
)

__all__ = ["Credentials", "ManifestData", "RegistryClient", "Repository"]

log = structlog.get_logger(__name__)

# distribution refuses manifests over 4 MiB; anything bigger is not a manifest.
MAX_MANIFEST_BYTES = 4 << 20
_MAX_SMALL_BODY = 1 << 20


@dataclass(frozen=True, slots=True)
class Credentials:
    """Credentials for one registry and where they came from (``source`` is for messages:
    "pull secret default/regcred", "docker config /root/.docker/config.json")."""

    value: RegistryCredentials | None = field(default=None, repr=False)
    source: str = "no credentials"
    refused: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    """Called when the registry refuses ``value`` (401/403): a credential helper's kept
    answer is dropped, so the next try asks the helper again."""


@dataclass(frozen=True, slots=True)
class ManifestData:
    """A manifest as fetched: raw bytes, their sha256 (hex) and the Content-Type."""

    data: bytes = field(repr=False)
    digest: str
    content_type: str


@dataclass(slots=True)
class _Reply:
    status: int
    headers: httpx.Headers
    body: bytes
    url: httpx.URL
    saved: Saved | None = None  # a 200 answer written to disk instead of ``body``


@dataclass(frozen=True, slots=True)
class _Body:
    """How to read an answer: at most ``limit`` bytes, into a file in ``spool`` if given."""

    limit: int
    too_large: Callable[[int], ModuleError] | None
    spool: Path | None

    def over(self, _announced: int | None) -> ModuleError:
        if self.too_large is not None:
            return self.too_large(self.limit)
        return FetchError(f"answer larger than {self.limit} bytes", retryable=False)


class _SpeaksPlainHttp(Exception):
    """An insecure registry answered TLS with plain HTTP: ask again over HTTP (internal)."""


class RegistryClient(Downloader):
    """One connection pool for every registry; :meth:`repository` scopes it to an image."""

    def __init__(
        self,
        *,
        settings: FetcherSettings | None = None,
        address_resolver: AddressResolver | None = None,
    ) -> None:
        # Blobs are verified by digest as sent, so no transfer encoding is asked for.
        super().__init__(
            settings or FetcherSettings(),
            accept_encoding="identity",
            address_resolver=address_resolver,
        )
        # Insecure registries found to speak plain HTTP (host[:port]).
        self._plain: set[str] = set()
        self._auth: dict[tuple[str, str, bool, RegistryCredentials | None], _AuthState] = {}

    def repository(
        self, ref: Reference, credentials: Credentials, *, display_url: str = "", push: bool = False
    ) -> Repository:
        """Operations on ``ref``'s repository; errors name ``display_url`` (redacted)."""
        return Repository(
            self, ref, credentials, display_url=display_url or f"oci://{ref}", push=push
        )

    def scheme_for(self, host: str) -> str:
        return "http" if host in self._plain else "https"

    def is_insecure(self, host: str) -> bool:
        url = httpx.URL(f"https://{host}/")
        return self.insecure.matches(url)

    def mark_plain(self, host: str) -> None:
        self._plain.add(host)

    def auth_state(self, key: tuple[str, str, bool, RegistryCredentials | None]) -> _AuthState:
        state = self._auth.get(key)
        if state is None:
            if len(self._auth) > 1024:
                self._auth.clear()  # bounded: states are cheap to rebuild
            state = self._auth[key] = _AuthState()
        return state


@dataclass(slots=True)
class _AuthState:
    """How to authenticate to one (registry, repository, access, credentials)."""

    basic: str | None = field(default=None, repr=False)
    token: Token | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def header(self) -> str | None:
        if self.token is not None:
            if self.token.valid():
                return f"Bearer {self.token.value}"
            self.token = None
        return self.basic


class Repository:
    """Manifests and blobs of one repository, authenticated as needed."""

    def __init__(
        self,
        client: RegistryClient,
        ref: Reference,
        credentials: Credentials,
        *,
        display_url: str,
        push: bool,
    ) -> None:
        self._client = client
        self._ref = ref
        self._host = ref.host
        self._credentials = credentials
        self._display_url = display_url
        self._push = push
        self._scope = f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"
        self._state = client.auth_state((self._host, ref.repository, push, credentials.value))

    # ------------------------------------------------------------------ API

    async def manifest(self, identifier: str, accept: Sequence[str]) -> ManifestData:
        """GET a manifest by tag or ``sha256:`` digest; checks the digest when pinned."""
        reply = await self._call(
            "GET",
            f"manifests/{identifier}",
            headers={"Accept": ", ".join(accept)},
            limit=MAX_MANIFEST_BYTES,
            too_large=lambda n: FetchError(
                f"manifest is larger than {n} bytes",
                retryable=False,
                url=self._display_url,
            ),
        )
        digest = hashlib.sha256(reply.body).hexdigest()
        if identifier.startswith("sha256:") and identifier != f"sha256:{digest}":
            raise DigestMismatchError(
                f"the registry returned a manifest with digest sha256:{digest} for {identifier}",
                url=self._display_url,
            )
        content_type = reply.headers.get("content-type", "")
        return ManifestData(reply.body, digest, content_type)

    async def blob(self, digest: str, size: int, *, max_size: int, spool: Path) -> Path:
        """GET a blob into a new file in ``spool`` (the caller owns it); refused when over
        ``max_size`` or when it differs from its digest."""
        label = f"layer sha256:{digest[:12]}"
        if size > max_size:
            raise ModuleTooLargeError(
                f"{label} is {size} bytes, over the {max_size}-byte limit",
                url=self._display_url,
            )
        reply = await self._call(
            "GET",
            f"blobs/sha256:{digest}",
            limit=size,
            spool=spool,
            too_large=lambda n: DigestMismatchError(
                f"{label} is larger than the {n} bytes its descriptor says",
                url=self._display_url,
            ),
        )
        saved = reply.saved
        assert saved is not None  # a 200 with a spool is always saved
        if saved.digest != digest or saved.size != size:
            await asyncio.to_thread(saved.path.unlink, missing_ok=True)
            raise DigestMismatchError(
                f"{label} downloaded as {saved.size} bytes with digest"
                f" sha256:{saved.digest[:12]}, not the {size} bytes the manifest describes",
                url=self._display_url,
            )
        return saved.path

    async def blob_exists(self, digest: str) -> bool:
        reply = await self._call("HEAD", f"blobs/sha256:{digest}", ok=(200, 404))
        return reply.status == 200

    async def upload_blob(self, data: bytes) -> str:
        """Upload ``data`` (POST then PUT) unless the registry has it; returns its digest."""
        digest = hashlib.sha256(data).hexdigest()
        if await self.blob_exists(digest):
            return digest
        started = await self._call("POST", "blobs/uploads/", ok=(202,), content=b"")
        location = started.headers.get("location")
        if not location:
            raise FetchError(
                "the registry started an upload without a Location", url=self._display_url
            )
        target = httpx.URL(urljoin(str(started.url), location))
        target = target.copy_merge_params({"digest": f"sha256:{digest}"})
        await self._call(
            "PUT",
            str(target),
            ok=(201, 204),
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return digest

    async def put_manifest(self, identifier: str, media_type: str, data: bytes) -> str:
        """PUT a manifest under a tag (or its digest); returns the manifest's hex digest."""
        await self._call(
            "PUT",
            f"manifests/{identifier}",
            ok=(201, 204),
            content=data,
            headers={"Content-Type": media_type},
        )
        return hashlib.sha256(data).hexdigest()

    # ----------------------------------------------------------- machinery

    def _url(self, path: str) -> str:
        if "://" in path:
            return path
        scheme = self._client.scheme_for(self._host)
        return f"{scheme}://{self._host}/v2/{self._ref.repository}/{path}"

    async def _call(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        ok: Sequence[int] = (200,),
        limit: int = _MAX_SMALL_BODY,
        too_large: Callable[[int], ModuleError] | None = None,
        spool: Path | None = None,
    ) -> _Reply:
        authenticated = False
        body = _Body(limit, too_large, spool)

        async def attempt() -> _Reply:
            nonlocal authenticated
            reply = await self._once(method, path, headers, content, body)
            if reply.status == 401 and not authenticated:
                # The challenge round trip is part of this attempt, not a failed one.
                await self._authenticate(reply)
                authenticated = True
                reply = await self._once(method, path, headers, content, body)
            return reply

        reply = await retrying(
            attempt,
            settings=self._client.settings,
            url=self._display_url,
            summary=lambda detail, tries: f"{detail} (after {tries})",
        )
        if reply.status in ok:
            return reply
        raise self._status_error(method, reply)

    async def _once(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None,
        content: bytes | None,
        body: _Body,
    ) -> _Reply:
        url = self._url(path)
        request_headers = dict(headers or {})
        auth = self._state.header()
        if auth is not None and _host_of(url) == self._host:
            request_headers["Authorization"] = auth

        try:
            with httpx_errors(
                self._display_url,
                self._client.settings,
                where=f"{method} {_path_of(httpx.URL(url))}",
                unreachable=self._unreachable,
            ):
                async with self._client.http.stream(
                    method, url, headers=request_headers, content=content
                ) as response:
                    status = response.status_code
                    if retry_now(status) or status == 429:
                        raise TryAgain(f"{method} {_path_of(response.url)}: HTTP {status}")
                    reply = _Reply(status, response.headers, b"", response.url)
                    if method == "HEAD":
                        return reply
                    if status == 200 and body.spool is not None:
                        reply.saved = await save_capped(response, body.spool, body.limit, body.over)
                    else:
                        reply.body = await read_capped(response, body.limit, body.over)
                    return reply
        except _SpeaksPlainHttp:
            return await self._once(method, path, headers, content, body)

    def _unreachable(self, exc: httpx.TransportError) -> BaseException:
        host = self._host
        if plain_http_answer(exc) and self._client.scheme_for(host) == "https":
            if self._client.is_insecure(host):
                log.info("oci.plain_http", registry=host)
                self._client.mark_plain(host)
                return _SpeaksPlainHttp()
            return FetchError(
                f"registry {host} answered HTTPS with plain HTTP; to allow plain"
                f" HTTP for it, list it with --insecure-registry {host}",
                retryable=False,
            )
        reason = tls_verification_failure(exc)
        if reason is not None:
            return FetchError(
                f"TLS certificate verification failed for {host} ({reason}); trust"
                " its CA with --registry-ca FILE or list it with --insecure-registry"
            )
        detail = str(exc) or type(exc).__name__
        return TryAgain(f"cannot reach registry {host}: {detail}")

    async def _authenticate(self, reply: _Reply) -> None:
        challenges = parse_challenges(reply.headers.get_list("www-authenticate"))
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        creds = self._credentials.value
        async with excused():
            await self._state.lock.acquire()  # another pull may be fetching the token
        try:
            if bearer is not None and bearer.realm:
                check_realm(bearer.realm, self._host)
                if creds is not None and creds.registry_token:
                    self._state.token = Token(creds.registry_token, float("inf"))
                    return
                self._state.token = await self._fetch_token(bearer.realm, bearer.params)
                return
            if basic is not None or not challenges:
                if creds is None or not creds.has_basic:
                    self._refused()
                    raise RegistryAuthError(
                        f"registry {self._host} requires a username and password;"
                        f" {self._credentials.source} has none for it",
                        url=self._display_url,
                    )
                self._state.basic = basic_header(creds)
                return
        finally:
            self._state.lock.release()
        schemes = ", ".join(c.scheme for c in challenges)
        raise RegistryAuthError(
            f"registry {self._host} asks for unsupported auth scheme(s): {schemes}",
            url=self._display_url,
        )

    async def _fetch_token(self, realm: str, params: dict[str, str]) -> Token:
        creds = self._credentials.value
        scopes = [self._scope]
        offered = params.get("scope", "")
        if offered and offered != self._scope:
            scopes.append(offered)
        query: list[tuple[str, str | int | float | bool | None]] = [
            ("scope", scope) for scope in scopes
        ]
        if params.get("service"):
            query.insert(0, ("service", params["service"]))
        headers: dict[str, str] = {}
        realm_host = _host_of(realm)
        where = f"the token service on {realm_host}"

        def unreachable(exc: httpx.TransportError) -> BaseException:
            return FetchError(f"cannot reach {where}: {type(exc).__name__}")

        with httpx_errors(
            self._display_url, self._client.settings, where=where, unreachable=unreachable
        ):
            if creds is not None and creds.identity_token:
                # OAuth2 refresh-token grant: what `docker login` stores for ACR and the like.
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": creds.identity_token,
                    "client_id": "wasmxds",
                    "service": params.get("service", ""),
                    "scope": " ".join(scopes),
                }
                request = self._client.http.build_request("POST", realm, data=form)
            else:
                if creds is not None and creds.has_basic:
                    headers["Authorization"] = basic_header(creds)
                request = self._client.http.build_request(
                    "GET", realm, params=query, headers=headers
                )
            response = await self._client.http.send(request, stream=True)
            try:
                status = response.status_code
                body = await read_capped(response, _MAX_SMALL_BODY, _small_body_too_large)
            finally:
                await response.aclose()
        if status in (401, 403):
            self._refused()
            raise RegistryAuthError(
                f"the token service on {realm_host} refused"
                f" {self._credentials.source} (HTTP {status})",
                url=self._display_url,
            )
        if status != 200:
            raise FetchError(
                f"the token service on {realm_host} answered HTTP {status}",
                retryable=retry_later(status),
                url=self._display_url,
            )
        return parse_token(body, realm_host)

    def _refused(self) -> None:
        if self._credentials.refused is not None:
            self._credentials.refused()

    def _status_error(self, method: str, reply: _Reply) -> ModuleError:
        where = f"{method} {_path_of(reply.url)}"
        detail = f"HTTP {reply.status}{_registry_error(reply.body)}"
        if reply.status in (401, 403):
            self._refused()
        if reply.status == 401:
            self._state.token = None
            self._state.basic = None
            return RegistryAuthError(
                f"registry {self._host} refused {self._credentials.source} ({where}: {detail})",
                url=self._display_url,
            )
        if reply.status == 403:
            return RegistryAuthError(
                f"registry {self._host} denied access with"
                f" {self._credentials.source} ({where}: {detail})",
                url=self._display_url,
            )
        if reply.status == 404:
            return FetchError(f"not found ({where}: {detail})", url=self._display_url)
        return FetchError(
            f"{where}: {detail}", retryable=retry_later(reply.status), url=self._display_url
        )

    async def get_if_present(
        self, path: str, *, limit: int, accept: Sequence[str] = ()
    ) -> bytes | None:
        """GET ``manifests/<tag>`` or ``blobs/sha256:<hex>`` into memory, at most ``limit``
        bytes; None when the registry has no such thing (404). The caller checks digests."""
        headers = {"Accept": ", ".join(accept)} if accept else None
        reply = await self._call("GET", path, headers=headers, ok=(200, 404), limit=limit)
        return reply.body if reply.status == 200 else None


def _small_body_too_large(_announced: int | None) -> ModuleError:
    return FetchError(f"answer larger than {_MAX_SMALL_BODY} bytes", retryable=False)


def _registry_error(body: bytes) -> str:
    """`` (MANIFEST_UNKNOWN: manifest unknown)`` from a distribution error body, if any."""
    try:
        document = json.loads(body[:4096])
        first = document["errors"][0]
        code, message = str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""
    text = ": ".join(part for part in (code, message[:200]) if part)
    return f" ({text})" if text else ""


def _host_of(url: str) -> str:
    return urlsplit(url).netloc.rsplit("@", 1)[-1].lower()


def _path_of(url: httpx.URL) -> str:
    # The path only: blob redirects carry signed credentials in their query strings.
    return f"{url.scheme}://{url.netloc.decode()}{url.path}"
