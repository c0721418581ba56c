"""Versions as debug pages show them: masked for resources with values from Secrets."""

from __future__ import annotations

from envoy.config.core.v3 import extension_pb2

from wasmxds.xds.resources import EcdsTag, prepare, secret_versions_exist, shown_version


def _config(value: str) -> extension_pb2.TypedExtensionConfig:
    return extension_pb2.TypedExtensionConfig(name=value)


def test_version_of_a_resource_with_secret_values_is_shown_as_an_hmac():
    """Such a version (looked up by string too, as delta streams hold only versions) is
    shown as a stable h:-prefixed HMAC; any other version is shown as it is."""
    plain = prepare("default.plain", _config("plain"))
    assert shown_version(plain.version) == plain.version
    masked = _config("masked")
    holding = prepare("default.secret", _config("real"), tag=EcdsTag(noop=False, display=masked))
    shown = shown_version(holding.version)
    assert shown.startswith("h:")
    assert holding.version not in shown
    assert shown_version(holding.version) == shown
    assert secret_versions_exist()
    # A derived version (a type's, a snapshot's) is masked when the caller says so.
    assert shown_version("0123abcd", secret=True) != "0123abcd"
