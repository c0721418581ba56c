"""--node-identity and --trust-domain: defaults, and the combinations refused with a sentence."""

from __future__ import annotations

from pathlib import Path

import pytest

from wasmxds.cli import build_parser
from wasmxds.cli.serve import settings_from_args
from wasmxds.errors import SettingsError
from wasmxds.settings import ServeSettings


def _settings(tmp_path: Path, *flags: str, mtls: bool = False) -> ServeSettings:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    tls = ["--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")]
    if mtls:
        tls += ["--client-ca", str(tmp_path / "ca.pem")]
    args = build_parser().parse_args(["serve", "--config-dir", str(tmp_path), *tls, *flags])
    return settings_from_args(args)


def test_certificate_identity_is_the_default_with_a_client_ca(tmp_path):
    """--client-ca alone: namespaces come from certificates; without it, from metadata."""
    assert _settings(tmp_path, mtls=True).identity_from_certificate
    assert not _settings(tmp_path).identity_from_certificate


def test_metadata_identity_can_be_chosen_with_mutual_tls(tmp_path):
    """--node-identity metadata keeps the old behaviour even with --client-ca."""
    assert not _settings(
        tmp_path, "--node-identity", "metadata", mtls=True
    ).identity_from_certificate


def test_trust_domains_are_collected(tmp_path):
    """--trust-domain is repeatable."""
    settings = _settings(
        tmp_path, "--trust-domain", "cluster.local", "--trust-domain", "prod.example", mtls=True
    )
    assert settings.trust_domains == {"cluster.local", "prod.example"}


@pytest.mark.parametrize(
    ("flags", "mtls", "sentence"),
    [
        (
            ("--node-identity", "certificate"),
            False,
            "--node-identity certificate needs --client-ca",
        ),
        (("--trust-domain", "cluster.local"), False, "--trust-domain restricts"),
        (
            ("--node-identity", "metadata", "--trust-domain", "cluster.local"),
            True,
            "--trust-domain restricts",
        ),
        (("--trust-domain", "Bad Domain"), True, "a trust domain is lowercase letters"),
    ],
)
def test_combinations_that_cannot_work_are_refused(tmp_path, flags, mtls, sentence):
    """Identity flags that would silently do nothing are usage errors with a sentence."""
    with pytest.raises(SettingsError, match=sentence):
        _settings(tmp_path, *flags, mtls=mtls)


def _admin_mtls(tmp_path: Path) -> tuple[str, ...]:
    return (
        *("--admin-tls-cert", str(tmp_path / "cert.pem")),
        *("--admin-tls-key", str(tmp_path / "key.pem")),
        *("--admin-client-ca", str(tmp_path / "ca.pem")),
    )


def test_debug_identities_and_admin_trust_domains(tmp_path):
    """--debug-identity (an ID or ns/<ns>/*) needs --admin-client-ca; --trust-domain is
    accepted with admin mTLS alone, since the admin port applies it too."""
    _settings(tmp_path)  # writes the files
    settings = _settings(
        tmp_path,
        *_admin_mtls(tmp_path),
        *("--trust-domain", "cluster.local"),
        *("--debug-identity", "spiffe://cluster.local/ns/ops/*"),
        *("--debug-identity", "spiffe://cluster.local/ns/sre/sa/oncall"),
    )
    assert settings.trust_domains == {"cluster.local"}
    assert settings.debug_identities == {
        "spiffe://cluster.local/ns/ops/*",
        "spiffe://cluster.local/ns/sre/sa/oncall",
    }


@pytest.mark.parametrize(
    ("flags", "admin", "sentence"),
    [
        (("--debug-identity", "spiffe://cluster.local/ns/ops/*"), False, "needs --admin-client-ca"),
        (("--debug-identity", "ops"), True, "expected a SPIFFE ID"),
        (("--debug-identity", "spiffe://cluster.local/ops/*"), True, "expected a SPIFFE ID"),
        (
            ("--trust-domain", "prod.example", "--debug-identity", "spiffe://cluster.local/ns/o/*"),
            True,
            "no certificate could match it",
        ),
    ],
)
def test_debug_identity_combinations_that_cannot_work_are_refused(tmp_path, flags, admin, sentence):
    """A --debug-identity that could never match, or without admin mTLS, is a usage error."""
    _settings(tmp_path)
    extra = _admin_mtls(tmp_path) if admin else ()
    with pytest.raises(SettingsError, match=sentence):
        _settings(tmp_path, *extra, *flags)
