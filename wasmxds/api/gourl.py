"""Go's ``net/url`` parsing rules, as far as Istio's WasmPlugin URL check depends on them.

Istio accepts ``spec.url`` when ``strictParseURL`` succeeds and the resulting
scheme is allowed; both the webhook and the CRD's CEL ``isURL`` rule rely on
Go's ``url.ParseRequestURI``. Python's ``urllib.parse`` accepts almost
anything, so the accept/reject decisions are reproduced here (read from Go's
``src/net/url/url.go`` and Istio's ``pkg/config/validation/validation.go``):
a URL Istio rejects is rejected here, with Go's reason.

Only the decision and the parts the checks need (scheme, host, path) are
kept; this is not a general URL library.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from wasmxds.errors import GoURLError

__all__ = ["GoURL", "GoURLError", "parse", "parse_request_uri", "strict_parse_url"]


@dataclass(frozen=True, slots=True)
class GoURL:
    scheme: str
    opaque: str = ""
    host: str = ""
    path: str = ""
    raw_query: str = ""
    fragment: str = ""


_HOST_EXTRA = frozenset("!$&'()*+,;=:[]<>\"")
_UNRESERVED = frozenset("-_.~")
_USERINFO = frozenset("-._:~!$&'()*+,;=%@")

# Fast paths: most URLs have nothing to unescape and no odd characters.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLAIN_HOST = re.compile(r"[A-Za-z0-9\-_.~!$&'()*+,;=:\[\]<>\"\x80-\U0010ffff]*\Z")


def _is_alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _should_escape_host(c: str) -> bool:
    return not (_is_alnum(c) or c in _HOST_EXTRA or c in _UNRESERVED)


def _unescape(text: str, *, host: bool = False, zone: bool = False) -> str:
    """Validate ``%XX`` escapes (and host characters) the way Go's ``unescape`` does."""
    if "%" not in text and not ((host or zone) and not _PLAIN_HOST.match(text)):
        return text
    hexdigits = "0123456789abcdefABCDEF"
    i = 0
    # Go unescapes into bytes: "%e4%b8%96" is one character, as UTF-8.
    out = bytearray()
    while i < len(text):
        c = text[i]
        if c == "%":
            chunk = text[i : i + 3]
            if len(chunk) < 3 or chunk[1] not in hexdigits or chunk[2] not in hexdigits:
                raise GoURLError(f'invalid URL escape "{chunk}"')
            byte = int(chunk[1:], 16)
            if host and byte < 0x80 and chunk != "%25":
                raise GoURLError(f'invalid URL escape "{chunk}"')
            if zone and chunk != "%25" and byte != 0x20 and _should_escape_host(chr(byte)):
                raise GoURLError(f'invalid URL escape "{chunk}"')
            out.append(byte)
            i += 3
            continue
        if (host or zone) and ord(c) < 0x80 and _should_escape_host(c):
            raise GoURLError(f'invalid character "{c}" in host name')
        out += c.encode("utf-8", "surrogatepass")
        i += 1
    return out.decode("utf-8", "surrogateescape")


def _get_scheme(raw: str) -> tuple[str, str]:
    for i, c in enumerate(raw):
        if c.isascii() and c.isalpha():
            continue
        if (c.isascii() and c.isdigit()) or c in "+-.":
            if i == 0:
                return "", raw
            continue
        if c == ":":
            if i == 0:
                raise GoURLError("missing protocol scheme")
            return raw[:i], raw[i + 1 :]
        return "", raw
    return "", raw


def _valid_optional_port(port: str) -> bool:
    if not port:
        return True
    return port[0] == ":" and all("0" <= c <= "9" for c in port[1:])


def _parse_host(host: str) -> str:
    if "[" in host:
        open_index = host.rindex("[")
        close_index = host.rfind("]")
        if close_index < 0:
            raise GoURLError("missing ']' in host")
        colon_port = host[close_index + 1 :]
        if not _valid_optional_port(colon_port):
            raise GoURLError(f'invalid port "{colon_port}" after host')
        hostname = host[open_index + 1 : close_index]
        zone_index = hostname.find("%25")
        if zone_index >= 0:
            literal = _unescape(hostname[:zone_index], host=True) + _unescape(
                hostname[zone_index:], zone=True
            )
        else:
            literal = _unescape(hostname, host=True)
        try:
            address = ipaddress.ip_address(literal)
        except ValueError as exc:
            raise GoURLError(f"invalid host: {exc}") from exc
        if address.version == 4:
            raise GoURLError("invalid IP-literal")
        return f"[{literal}]{colon_port}"
    colon = host.rfind(":")
    if colon >= 0 and not _valid_optional_port(host[colon:]):
        raise GoURLError(f'invalid port "{host[colon:]}" after host')
    return _unescape(host, host=True)


def _parse_authority(authority: str) -> str:
    at = authority.rfind("@")
    host = _parse_host(authority[at + 1 :])
    if at >= 0:
        userinfo = authority[:at]
        if not all(_is_alnum(c) or c in _USERINFO for c in userinfo):
            raise GoURLError("net/url: invalid userinfo")
        for part in userinfo.split(":", 1):
            _unescape(part)
    return host


def _parse(raw: str, *, via_request: bool) -> GoURL:
    if _CONTROL.search(raw):
        raise GoURLError("net/url: invalid control character in URL")
    if raw == "" and via_request:
        raise GoURLError("empty url")
    if raw == "*":
        return GoURL(scheme="", path="*")
    scheme, rest = _get_scheme(raw)
    scheme = scheme.lower()
    raw_query = ""
    if rest.endswith("?") and rest.count("?") == 1:
        rest = rest[:-1]
    else:
        rest, _, raw_query = rest.partition("?")
    if not rest.startswith("/"):
        if scheme:
            return GoURL(scheme=scheme, opaque=rest, raw_query=raw_query)
        if via_request:
            raise GoURLError("invalid URI for request")
        segment = rest.split("/", 1)[0]
        if ":" in segment:
            raise GoURLError("first path segment in URL cannot contain colon")
    host = ""
    if (scheme or (not via_request and not rest.startswith("///"))) and rest.startswith("//"):
        authority, slash, path_rest = rest[2:].partition("/")
        rest = slash + path_rest
        host = _parse_authority(authority)
    path = _unescape(rest)
    return GoURL(scheme=scheme, host=host, path=path, raw_query=raw_query)


def parse_request_uri(raw: str) -> GoURL:
    """Go's ``url.ParseRequestURI``: an absolute URI or an absolute path, no fragment."""
    return _parse(raw, via_request=True)


def parse(raw: str) -> GoURL:
    """Go's ``url.Parse``: any URI reference, with an optional ``#fragment``."""
    base, has_fragment, fragment = raw.partition("#")
    url = _parse(base, via_request=False)
    if not has_fragment or not fragment:
        return url
    return GoURL(
        scheme=url.scheme,
        opaque=url.opaque,
        host=url.host,
        path=url.path,
        raw_query=url.raw_query,
        fragment=_unescape(fragment),
    )


def strict_parse_url(raw: str) -> GoURL:
    """Istio's ``strictParseURL``: retry with ``http://`` in front before giving up.

    A URL without a scheme (``ghcr.io/org/plugin:v1``) fails the first parse
    and succeeds as ``http://ghcr.io/...``; the error reported when both fail
    is the first one, as in Istio.
    """
    try:
        url = parse_request_uri(raw)
    except GoURLError as first:
        candidate = "http://" + raw
        try:
            url = parse_request_uri(candidate)
        except GoURLError:
            raise first from None
        parse(candidate)
        return url
    parse(raw)
    return url
