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
  a later retry could help.
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
from types import TracebackType
from typing import Self
from urllib.parse import urljoin, urlsplit

import httpx
import structlog

from wasmxds.api.dockerconfig import RegistryCredentials
from wasmxds.errors import (
    BlockedAddressError,
    DigestMismatchError,
    FetchError,
    ModuleError,
    ModuleTooLargeError,
    RegistryAuthError,
)
from wasmxds.modules.http import FetcherSettings
from wasmxds.modules.oci.auth import Token, basic_header, check_realm, parse_challenges, parse_token
from wasmxds.modules.oci.reference import Reference
from wasmxds.modules.ssrf import AddressResolver
from wasmxds.modules.transport import (
    guarded_client,
    plain_http_answer,
    tls_verification_failure,
)

__all__ = ["Credentials", "ManifestData", "RegistryClient", "Repository"]

log = structlog.get_logger(__name__)

# distribution refuses manifests over 4 MiB; anything bigger is not a manifest.
MAX_MANIFEST_BYTES = 4 << 20
_MAX_SMALL_BODY = 1 << 20
_PERMANENT_5XX = frozenset({501, 505, 511})
_LATER_4XX = frozenset({401, 403, 404, 408, 425, 429})


@dataclass(frozen=True, slots=True)
class Credentials:
    """Credentials for one registry and where they came from (``source`` is for messages:
    "pull secret default/regcred", "docker config /root/.docker/config.json")."""

    value: RegistryCredentials | None = field(default=None, repr=False)
    source: str = "no credentials"


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


class _TryAgain(Exception):
    """An attempt failed in a way worth retrying at once (internal)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class RegistryClient:
    """One connection pool for every registry; :meth:`repository` scopes it to an image."""

    def __init__(
        self,
        *,
        settings: FetcherSettings | None = None,
        address_resolver: AddressResolver | None = None,
    ) -> None:
        self.settings = settings or FetcherSettings()
        # Blobs are verified by digest as sent, so no transfer encoding is asked for.
        self.http, self._insecure = guarded_client(
            self.settings, accept_encoding="identity", address_resolver=address_resolver
        )
        # Insecure registries found to speak plain HTTP (host[:port]).
        self._plain: set[str] = set()
        self._auth: dict[tuple[str, str, bool, RegistryCredentials | None], _AuthState] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    def repository(
        self, ref: Reference, credentials: Credentials, *, shown: str = "", push: bool = False
    ) -> Repository:
        """Operations on ``ref``'s repository; errors start with ``shown`` (a redacted URL)."""
        return Repository(self, ref, credentials, shown=shown or f"oci://{ref}", push=push)

    def scheme_for(self, host: str) -> str:
        return "http" if host in self._plain else "https"

    def is_insecure(self, host: str) -> bool:
        url = httpx.URL(f"https://{host}/")
        return self._insecure.matches(url)

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
        shown: str,
        push: bool,
    ) -> None:
        self._client = client
        self._ref = ref
        self._host = ref.host
        self._credentials = credentials
        self._shown = shown
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
                f"{self._shown}: manifest is larger than {n} bytes", retryable=False
            ),
        )
        digest = hashlib.sha256(reply.body).hexdigest()
        if identifier.startswith("sha256:") and identifier != f"sha256:{digest}":
            raise DigestMismatchError(
                f"{self._shown}: the registry returned a manifest with digest sha256:{digest}"
                f" for {identifier}"
            )
        content_type = reply.headers.get("content-type", "")
        return ManifestData(reply.body, digest, content_type)

    async def blob(self, digest: str, size: int, *, max_size: int) -> bytes:
        """GET a blob; refused when over ``max_size`` or when it differs from its digest."""
        label = f"layer sha256:{digest[:12]}"
        if size > max_size:
            raise ModuleTooLargeError(
                f"{self._shown}: {label} is {size} bytes, over the {max_size}-byte limit"
            )
        reply = await self._call(
            "GET",
            f"blobs/sha256:{digest}",
            limit=size,
            too_large=lambda n: DigestMismatchError(
                f"{self._shown}: {label} is larger than the {n} bytes its descriptor says"
            ),
        )
        actual = await asyncio.to_thread(lambda: hashlib.sha256(reply.body).hexdigest())
        if actual != digest or len(reply.body) != size:
            raise DigestMismatchError(
                f"{self._shown}: {label} downloaded as {len(reply.body)} bytes with digest"
                f" sha256:{actual[:12]}, not the {size} bytes the manifest describes"
            )
        return reply.body

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
            raise FetchError(f"{self._shown}: the registry started an upload without a Location")
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
    ) -> _Reply:
        settings = self._client.settings
        tries = settings.tries
        authenticated = False
        attempt = 0
        while True:
            attempt += 1
            try:
                reply = await self._once(method, path, headers, content, limit, too_large)
            except _TryAgain as again:
                if attempt >= tries:
                    noun = "attempt" if tries == 1 else "attempts"
                    raise FetchError(
                        f"{self._shown}: {again.detail} (after {tries} {noun})"
                    ) from again.__cause__
                log.debug("oci.retry", url=self._shown, attempt=attempt, error=again.detail)
                await asyncio.sleep(settings.backoff.delay(attempt))
                continue
            if reply.status == 401 and not authenticated:
                await self._authenticate(reply)
                authenticated = True
                attempt -= 1  # the challenge round trip is not a failed attempt
                continue
            if reply.status in ok:
                return reply
            raise self._status_error(method, reply)

    async def _once(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None,
        content: bytes | None,
        limit: int,
        too_large: Callable[[int], ModuleError] | None,
    ) -> _Reply:
        url = self._url(path)
        request_headers = dict(headers or {})
        auth = self._state.header()
        if auth is not None and _host_of(url) == self._host:
            request_headers["Authorization"] = auth
        try:
            async with self._client.http.stream(
                method, url, headers=request_headers, content=content
            ) as response:
                status = response.status_code
                if (status >= 500 and status not in _PERMANENT_5XX) or status == 429:
                    raise _TryAgain(f"{method} {_path_of(response.url)}: HTTP {status}")
                body = b"" if method == "HEAD" else await _read(response, limit, too_large)
                return _Reply(status, response.headers, body, response.url)
        except BlockedAddressError as exc:
            raise BlockedAddressError(f"{self._shown}: {exc}") from exc
        except httpx.TooManyRedirects as exc:
            raise FetchError(f"{self._shown}: too many redirects", retryable=False) from exc
        except httpx.TimeoutException as exc:
            raise _TryAgain(f"{method} {_path_of(httpx.URL(url))}: timed out") from exc
        except httpx.TransportError as exc:
            return await self._transport_failure(
                exc, method, path, headers, content, limit, too_large
            )

    async def _transport_failure(
        self,
        exc: httpx.TransportError,
        method: str,
        path: str,
        headers: dict[str, str] | None,
        content: bytes | None,
        limit: int,
        too_large: Callable[[int], ModuleError] | None,
    ) -> _Reply:
        host = self._host
        if plain_http_answer(exc) and self._client.scheme_for(host) == "https":
            if self._client.is_insecure(host):
                log.info("oci.plain_http", registry=host)
                self._client.mark_plain(host)
                return await self._once(method, path, headers, content, limit, too_large)
            raise FetchError(
                f"{self._shown}: registry {host} answered HTTPS with plain HTTP; to allow plain"
                f" HTTP for it, list it with --insecure-registry {host}",
                retryable=False,
            ) from exc
        reason = tls_verification_failure(exc)
        if reason is not None:
            raise FetchError(
                f"{self._shown}: TLS certificate verification failed for {host} ({reason}); trust"
                " its CA with --registry-ca FILE or list it with --insecure-registry"
            ) from exc
        detail = str(exc) or type(exc).__name__
        raise _TryAgain(f"cannot reach registry {host}: {detail}") from exc

    async def _authenticate(self, reply: _Reply) -> None:
        challenges = parse_challenges(reply.headers.get_list("www-authenticate"))
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        creds = self._credentials.value
        async with self._state.lock:
            if bearer is not None and bearer.realm:
                check_realm(bearer.realm, self._host)
                if creds is not None and creds.registry_token:
                    self._state.token = Token(creds.registry_token, float("inf"))
                    return
                self._state.token = await self._fetch_token(bearer.realm, bearer.params)
                return
            if basic is not None or not challenges:
                if creds is None or not creds.has_basic:
                    raise RegistryAuthError(
                        f"{self._shown}: registry {self._host} requires a username and password;"
                        f" {self._credentials.source} has none for it"
                    )
                self._state.basic = basic_header(creds)
                return
        schemes = ", ".join(c.scheme for c in challenges)
        raise RegistryAuthError(
            f"{self._shown}: registry {self._host} asks for unsupported auth scheme(s): {schemes}"
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
        try:
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
                body = await _read(response, _MAX_SMALL_BODY, None)
            finally:
                await response.aclose()
        except BlockedAddressError as exc:
            raise BlockedAddressError(f"{self._shown}: token realm: {exc}") from exc
        except httpx.HTTPError as exc:
            raise FetchError(
                f"{self._shown}: cannot reach the token service on {realm_host}:"
                f" {type(exc).__name__}"
            ) from exc
        if status in (401, 403):
            raise RegistryAuthError(
                f"{self._shown}: the token service on {realm_host} refused"
                f" {self._credentials.source} (HTTP {status})"
            )
        if status != 200:
            raise FetchError(
                f"{self._shown}: the token service on {realm_host} answered HTTP {status}",
                retryable=status >= 500 or status in _LATER_4XX,
            )
        return parse_token(body, realm_host)

    def _status_error(self, method: str, reply: _Reply) -> ModuleError:
        where = f"{method} {_path_of(reply.url)}"
        detail = f"HTTP {reply.status}{_registry_error(reply.body)}"
        if reply.status == 401:
            self._state.token = None
            self._state.basic = None
            return RegistryAuthError(
                f"{self._shown}: registry {self._host} refused {self._credentials.source}"
                f" ({where}: {detail})"
            )
        if reply.status == 403:
            return RegistryAuthError(
                f"{self._shown}: registry {self._host} denied access with"
                f" {self._credentials.source} ({where}: {detail})"
            )
        if reply.status == 404:
            return FetchError(f"{self._shown}: not found ({where}: {detail})")
        retryable = reply.status >= 500 or reply.status in _LATER_4XX
        return FetchError(f"{self._shown}: {where}: {detail}", retryable=retryable)


async def _read(
    response: httpx.Response, limit: int, too_large: Callable[[int], ModuleError] | None
) -> bytes:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise FetchError(
            f"the registry sent Content-Encoding {encoding!r} though identity was asked for",
            retryable=False,
        )

    def over() -> ModuleError:
        if too_large is not None:
            return too_large(limit)
        return FetchError(f"answer larger than {limit} bytes", retryable=False)

    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise over()
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            raise over()
    return bytes(body)


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
