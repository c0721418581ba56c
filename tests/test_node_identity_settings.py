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
