"""Istio's one rule for module URLs written without a scheme: they are OCI references."""

from __future__ import annotations

__all__ = ["OCI_PREFIX", "has_scheme", "module_scheme", "with_scheme"]

OCI_PREFIX = "oci://"


def has_scheme(url: str) -> bool:
    """True when ``url`` names its scheme (``https://...``); ``ghcr.io/a/b`` does not."""
    return "://" in url


def with_scheme(url: str) -> str:
    """``url`` with ``oci://`` in front when it has no scheme, as istiod does."""
    return url if has_scheme(url) else OCI_PREFIX + url


def module_scheme(url: str) -> str:
    """The lower-case scheme ``url`` is fetched with (``oci`` when it names none)."""
    return with_scheme(url).split("://", 1)[0].lower()
