"""wasmxds.api.gourl against Go's own tables (``src/net/url/url_test.go``).

The inputs and expected results below are Go's ``urltests``, ``parseRequestURLTests``
and ``TestParseErrors`` cases, kept to the fields :class:`GoURL` carries (scheme,
opaque, host, path, raw query, fragment): userinfo, ``RawPath``, ``RawFragment``
and ``ForceQuery`` are not kept by wasmxds, so they are left out of the
expectations, not the inputs. Every case of those tables is here.
"""

from __future__ import annotations

import pytest

from wasmxds.api.gourl import GoURL, GoURLError, parse, parse_request_uri

# Go's urltests: url.Parse(in) must give these fields.
URLTESTS: list[tuple[str, GoURL]] = [
    ("http://www.google.com", GoURL("http", host="www.google.com")),
    ("http://www.google.com/", GoURL("http", host="www.google.com", path="/")),
    (
        "http://www.google.com/file%20one%26two",
        GoURL("http", host="www.google.com", path="/file one&two"),
    ),
    (
        "http://www.google.com/#file%20one%26two",
        GoURL("http", host="www.google.com", path="/", fragment="file one&two"),
    ),
    ("ftp://webmaster@www.google.com/", GoURL("ftp", host="www.google.com", path="/")),
    ("ftp://john%20doe@www.google.com/", GoURL("ftp", host="www.google.com", path="/")),
    ("http://www.google.com/?", GoURL("http", host="www.google.com", path="/")),
    (
        "http://www.google.com/?foo=bar?",
        GoURL("http", host="www.google.com", path="/", raw_query="foo=bar?"),
    ),
    (
        "http://www.google.com/?q=go+language",
        GoURL("http", host="www.google.com", path="/", raw_query="q=go+language"),
    ),
    (
        "http://www.google.com/?q=go%20language",
        GoURL("http", host="www.google.com", path="/", raw_query="q=go%20language"),
    ),
    (
        "http://www.google.com/a%20b?q=c+d",
        GoURL("http", host="www.google.com", path="/a b", raw_query="q=c+d"),
    ),
    (
        "http:www.google.com/?q=go+language",
        GoURL("http", opaque="www.google.com/", raw_query="q=go+language"),
    ),
    (
        "http:%2f%2fwww.google.com/?q=go+language",
        GoURL("http", opaque="%2f%2fwww.google.com/", raw_query="q=go+language"),
    ),
    ("mailto:/webmaster@golang.org", GoURL("mailto", path="/webmaster@golang.org")),
    ("mailto:webmaster@golang.org", GoURL("mailto", opaque="webmaster@golang.org")),
    ("/foo?query=http://bad", GoURL("", path="/foo", raw_query="query=http://bad")),
    ("//foo", GoURL("", host="foo")),
    ("//user@foo/path?a=b", GoURL("", host="foo", path="/path", raw_query="a=b")),
    ("///threeslashes", GoURL("", path="///threeslashes")),
    ("http://user:password@google.com", GoURL("http", host="google.com")),
    ("http://j@ne:password@google.com", GoURL("http", host="google.com")),
    ("http://jane:p@ssword@google.com", GoURL("http", host="google.com")),
    (
        "http://j@ne:password@google.com/p@th?q=@go",
        GoURL("http", host="google.com", path="/p@th", raw_query="q=@go"),
    ),
    (
        "http://www.google.com/?q=go+language#foo",
        GoURL("http", host="www.google.com", path="/", raw_query="q=go+language", fragment="foo"),
    ),
    (
        "http://www.google.com/?q=go+language#foo&bar",
        GoURL(
            "http", host="www.google.com", path="/", raw_query="q=go+language", fragment="foo&bar"
        ),
    ),
    (
        "http://www.google.com/?q=go+language#foo%26bar",
        GoURL(
            "http", host="www.google.com", path="/", raw_query="q=go+language", fragment="foo&bar"
        ),
    ),
    ("file:///home/adg/rabbits", GoURL("file", path="/home/adg/rabbits")),
    ("file:///C:/FooBar/Baz.txt", GoURL("file", path="/C:/FooBar/Baz.txt")),
    ("MaIlTo:webmaster@golang.org", GoURL("mailto", opaque="webmaster@golang.org")),
    ("a/b/c", GoURL("", path="a/b/c")),
    ("http://%3Fam:pa%3Fsword@google.com", GoURL("http", host="google.com")),
    ("http://192.168.0.1/", GoURL("http", host="192.168.0.1", path="/")),
    ("http://192.168.0.1:8080/", GoURL("http", host="192.168.0.1:8080", path="/")),
    ("http://[fe80::1]/", GoURL("http", host="[fe80::1]", path="/")),
    ("http://[fe80::1]:8080/", GoURL("http", host="[fe80::1]:8080", path="/")),
    ("http://[fe80::1%25en0]/", GoURL("http", host="[fe80::1%en0]", path="/")),
    ("http://[fe80::1%25en0]:8080/", GoURL("http", host="[fe80::1%en0]:8080", path="/")),
    ("http://[fe80::1%25%65%6e%301-._~]/", GoURL("http", host="[fe80::1%en01-._~]", path="/")),
    (
        "http://[fe80::1%25%65%6e%301-._~]:8080/",
        GoURL("http", host="[fe80::1%en01-._~]:8080", path="/"),
    ),
    (
        "http://rest.rsc.io/foo%2fbar/baz%2Fquux?alt=media",
        GoURL("http", host="rest.rsc.io", path="/foo/bar/baz/quux", raw_query="alt=media"),
    ),
    ("mysql://a,b,c/bar", GoURL("mysql", host="a,b,c", path="/bar")),
    (
        "scheme://!$&'()*+,;=hello!:1/path",
        GoURL("scheme", host="!$&'()*+,;=hello!:1", path="/path"),
    ),
    ("http://host/!$&'()*+,;=:@[hello]", GoURL("http", host="host", path="/!$&'()*+,;=:@[hello]")),
    (
        "http://example.com/oid/[order_id]",
        GoURL("http", host="example.com", path="/oid/[order_id]"),
    ),
    ("http://192.168.0.2:8080/foo", GoURL("http", host="192.168.0.2:8080", path="/foo")),
    ("http://192.168.0.2:/foo", GoURL("http", host="192.168.0.2:", path="/foo")),
    (
        "http://2b01:e34:ef40:7730:8e70:5aff:fefe:edac:8080/foo",
        GoURL("http", host="2b01:e34:ef40:7730:8e70:5aff:fefe:edac:8080", path="/foo"),
    ),
    (
        "http://2b01:e34:ef40:7730:8e70:5aff:fefe:edac:/foo",
        GoURL("http", host="2b01:e34:ef40:7730:8e70:5aff:fefe:edac:", path="/foo"),
    ),
    (
        "http://[2b01:e34:ef40:7730:8e70:5aff:fefe:edac]:8080/foo",
        GoURL("http", host="[2b01:e34:ef40:7730:8e70:5aff:fefe:edac]:8080", path="/foo"),
    ),
    (
        "http://[2b01:e34:ef40:7730:8e70:5aff:fefe:edac]:/foo",
        GoURL("http", host="[2b01:e34:ef40:7730:8e70:5aff:fefe:edac]:", path="/foo"),
    ),
    ("http://hello.世界.com/foo", GoURL("http", host="hello.世界.com", path="/foo")),
    ("http://hello.%e4%b8%96%e7%95%8c.com/foo", GoURL("http", host="hello.世界.com", path="/foo")),
    ("http://hello.%E4%B8%96%E7%95%8C.com/foo", GoURL("http", host="hello.世界.com", path="/foo")),
    ("http://example.com//foo", GoURL("http", host="example.com", path="//foo")),
    ('myscheme://authority<"hi">/foo', GoURL("myscheme", host='authority<"hi">', path="/foo")),
    (
        "tcp://[2020::2020:20:2020:2020%25Windows%20Loves%20Spaces]:2020",
        GoURL("tcp", host="[2020::2020:20:2020:2020%Windows Loves Spaces]:2020"),
    ),
    (
        "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&dn",
        GoURL("magnet", raw_query="xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&dn"),
    ),
    ("mailto:?subject=hi", GoURL("mailto", raw_query="subject=hi")),
]

# Go's parseRequestURLTests: whether url.ParseRequestURI accepts the input.
PATH_THAT_LOOKS_SCHEME_RELATIVE = "//not.a.user@not.a.host/just/a/path"
PARSE_REQUEST_URI: list[tuple[str, bool]] = [
    ("http://foo.com", True),
    ("http://foo.com/", True),
    ("http://foo.com/path", True),
    ("/", True),
    (PATH_THAT_LOOKS_SCHEME_RELATIVE, True),
    ("//not.a.user@%66%6f%6f.com/just/a/path/also", True),
    ("*", True),
    ("http://192.168.0.1/", True),
    ("http://192.168.0.1:8080/", True),
    ("http://[fe80::1]/", True),
    ("http://[fe80::1]:8080/", True),
    ("http://[fe80::1%25en0]/", True),
    ("http://[fe80::1%25en0]:8080/", True),
    ("http://[fe80::1%25%65%6e%301-._~]/", True),
    ("http://[fe80::1%25%65%6e%301-._~]:8080/", True),
    ("foo.html", False),
    ("../dir/", False),
    (" http://foo.com", False),
    ("http://192.168.0.%31/", False),
    ("http://192.168.0.%31:8080/", False),
    ("http://[fe80::%31]/", False),
    ("http://[fe80::%31]:8080/", False),
    ("http://[fe80::%31%25en0]/", False),
    ("http://[fe80::%31%25en0]:8080/", False),
    ("http://[fe80::1%en0]/", False),
    ("http://[fe80::1%en0]:8080/", False),
]

# Go's TestParseErrors: whether url.Parse refuses the input.
PARSE_ERRORS: list[tuple[str, bool]] = [
    ("http://[::1]", False),
    ("http://[::1]:80", False),
    ("http://[::1]:namedport", True),
    ("http://x:namedport", True),
    ("http://[::1]/", False),
    ("http://[::1]a", True),
    ("http://[::1]%23", True),
    ("http://[::1%25en0]", False),
    ("http://[::1]:", False),
    ("http://x:", False),
    ("http://[::1]:%38%30", True),
    ("http://[::1%25%41]", False),
    ("http://[%10::1]", True),
    ("http://[::1]/%48", False),
    ("http://%41:8080/", True),
    ("mysql://x@y(z:123)/foo", True),
    ("mysql://x@y(1.2.3.4:123)/foo", True),
    (" http://foo.com", True),
    ("ht tp://foo.com", True),
    ("ahttp://foo.com", False),
    ("1http://foo.com", True),
    (
        "http://[]%20%48%54%54%50%2f%31%2e%31%0a%4d%79%48%65%61%64%65%72%3a%20%31%32%33%0a%0a/",
        True,
    ),
    ("http://a b.com/", True),
    ("cache_object://foo", True),
    ("cache_object:foo", True),
    ("cache_object:foo/bar", True),
    ("cache_object/:foo/bar", False),
]


@pytest.mark.parametrize(("raw", "expected"), URLTESTS, ids=[case[0] for case in URLTESTS])
def test_parse_matches_go(raw: str, expected: GoURL) -> None:
    """url.Parse splits each of Go's urltests inputs into the same parts."""
    assert parse(raw) == expected


@pytest.mark.parametrize(
    ("raw", "valid"), PARSE_REQUEST_URI, ids=[case[0] for case in PARSE_REQUEST_URI]
)
def test_parse_request_uri_accepts_what_go_accepts(raw: str, valid: bool) -> None:
    """url.ParseRequestURI accepts and refuses the same inputs as Go's."""
    if valid:
        parse_request_uri(raw)
    else:
        with pytest.raises(GoURLError):
            parse_request_uri(raw)


def test_parse_request_uri_keeps_a_scheme_relative_looking_path() -> None:
    """A request URI starting with // is a path, not an authority (Go's own follow-up check)."""
    assert parse_request_uri(PATH_THAT_LOOKS_SCHEME_RELATIVE).path == (
        PATH_THAT_LOOKS_SCHEME_RELATIVE
    )


@pytest.mark.parametrize(("raw", "refused"), PARSE_ERRORS, ids=[case[0] for case in PARSE_ERRORS])
def test_parse_refuses_what_go_refuses(raw: str, refused: bool) -> None:
    """url.Parse refuses exactly Go's TestParseErrors inputs marked wantErr."""
    if refused:
        with pytest.raises(GoURLError):
            parse(raw)
    else:
        parse(raw)
