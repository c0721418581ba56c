"""--verification-key and --module-access-ttl: keys read at start-up, refusals name the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from wasmxds.cli import build_parser
from wasmxds.cli.serve import settings_from_args
from wasmxds.errors import SettingsError
from wasmxds.settings import ServeSettings


def _settings(tmp_path: Path, *flags: str) -> ServeSettings:
    args = build_parser().parse_args(["serve", "--config-dir", str(tmp_path), *flags])
    return settings_from_args(args)


def _public_key_file(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def test_keys_are_read_once_and_collected(tmp_path: Path) -> None:
    """Each --verification-key file becomes a key; the same key twice counts once."""
    first = _public_key_file(tmp_path / "a.pem")
    second = _public_key_file(tmp_path / "b.pem")
    settings = _settings(
        tmp_path,
        *("--verification-key", str(first)),
        *("--verification-key", str(second)),
        *("--verification-key", str(first)),
        *("--module-access-ttl", "90s"),
    )
    assert [key.algorithm for key in settings.verification_keys] == ["ecdsa-p256"] * 2
    assert settings.module_access_ttl == 90.0
    assert _settings(tmp_path).verification_keys == ()
    assert _settings(tmp_path).module_access_ttl == 300.0


@pytest.mark.parametrize(
    ("content", "sentence"),
    [
        (None, "cannot read"),
        ("not a key", "no PEM block found"),
    ],
)
def test_unusable_key_files_are_refused_naming_flag_and_file(
    tmp_path: Path, content: str | None, sentence: str
) -> None:
    """A missing or malformed key file stops serve with a sentence naming the flag and file."""
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SettingsError) as caught:
        _settings(tmp_path, "--verification-key", str(path))
    assert str(caught.value).startswith("--verification-key: ")
    assert str(path) in str(caught.value)
    assert sentence in str(caught.value)
