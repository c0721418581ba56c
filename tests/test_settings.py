"""Each serve setting is declared once: flags, defaults and docs come from the declarations."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wasmxds.cli import build_parser
from wasmxds.cli.registry import FETCH_FLAGS, fetch_values
from wasmxds.cli.serve import settings_from_args
from wasmxds.errors import SettingsError
from wasmxds.flags import Kind, Setting
from wasmxds.settings import (
    GROUPS,
    TABLE_END,
    TABLE_START,
    ServeSettings,
    docs_with_table,
    parse_duration,
    parse_host_port,
    parse_rate,
    parse_size,
)

ROOT = Path(__file__).resolve().parents[1]
RUNNING = ROOT / "docs" / "running.md"
SETTINGS = [setting for group in GROUPS for setting in group.settings]
TEXT_PARSERS: dict[Callable[[str], Any], str] = {
    parse_duration: "10",
    parse_size: "lots",
    parse_rate: "fast",
    parse_host_port: "x",
}


def parse_serve(*flags: str) -> Any:
    return build_parser().parse_args(["serve", *flags])


def test_docs_flag_table_is_generated_from_the_declarations():
    """docs/running.md's table is what `python -m wasmxds.settings --markdown` prints now."""
    text = RUNNING.read_text()
    assert TABLE_START in text
    assert TABLE_END in text
    assert docs_with_table(text) == text, (
        "docs/running.md's flag table is stale: run `make flags-doc`"
    )


def test_a_stale_table_is_noticed():
    """A row edited by hand (or a flag added without regenerating) differs from the output."""
    text = RUNNING.read_text()
    stale = text.replace(
        "| `--debounce-after DUR` | `100ms` |", "| `--debounce-after DUR` | `1s` |"
    )
    assert stale != text
    assert docs_with_table(stale) == text


def test_markdown_command_prints_the_table():
    """`python -m wasmxds.settings --markdown` prints a row for every flag."""
    out = subprocess.run(
        [sys.executable, "-m", "wasmxds.settings", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert out in RUNNING.read_text()
    for setting in SETTINGS:
        assert f"| `{setting.flag}" in out


def test_every_field_has_one_declaration_and_every_flag_one_field():
    """ServeSettings' fields and the declarations match one to one; no flag is declared twice."""
    fields = [f.name for f in dataclasses.fields(ServeSettings)]
    declared = [setting.field for setting in SETTINGS]
    assert sorted(declared) == sorted(fields)
    flags = [setting.flag for setting in SETTINGS]
    assert len(set(flags)) == len(flags)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.flag)
def test_every_flag_parses_its_default_to_the_field_default(setting: Setting[Any]):
    """The default text, parsed as a given flag would be, is ServeSettings' default."""
    fields = {f.name: f for f in dataclasses.fields(ServeSettings)}
    field = fields[setting.field]
    if field.default is not dataclasses.MISSING:
        assert setting.value_default == field.default
    text = setting.default_text()
    if text is not None:
        assert setting.convert(text) == setting.value_default


def test_serve_without_flags_gets_the_declared_defaults(tmp_path: Path):
    """`serve --config-dir D` gives ServeSettings(config_dirs=(D,)) exactly."""
    settings = settings_from_args(parse_serve("--config-dir", str(tmp_path)))
    assert settings == ServeSettings(config_dirs=(tmp_path,))


def test_defaults_are_the_documented_contract(tmp_path: Path):
    """A few defaults e2e and the deploy manifests rely on, spelled out."""
    settings = settings_from_args(parse_serve("--config-dir", str(tmp_path)))
    assert str(settings.xds_address) == "127.0.0.1:18000"
    assert str(settings.admin_address) == "127.0.0.1:18001"
    assert (settings.debounce_after, settings.debounce_max) == (0.1, 10.0)
    assert settings.max_module_size == 256 << 20
    assert settings.module_expiry == 24 * 3600.0
    assert (settings.repull_interval, settings.cache_max_bytes) == (None, None)


def test_cache_dir_default_follows_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """$XDG_CACHE_HOME is read when the flags are made, not when the module is imported."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    settings = settings_from_args(parse_serve("--config-dir", str(tmp_path)))
    assert settings.cache_dir == tmp_path / "xdg" / "wasmxds"
    assert ServeSettings(config_dirs=()).cache_dir == tmp_path / "xdg" / "wasmxds"


@pytest.mark.parametrize(
    "setting",
    [
        s
        for s in SETTINGS
        if s.parse in TEXT_PARSERS or getattr(s.parse, "__name__", "") == "<lambda>"
    ],
    ids=lambda s: s.flag,
)
def test_bad_durations_sizes_rates_and_addresses_name_the_flag(
    tmp_path: Path, setting: Setting[Any]
):
    """A value the parser refuses comes back as one sentence that starts with the flag."""
    bad = TEXT_PARSERS.get(setting.parse, "1 fortnight")
    args = parse_serve("--config-dir", str(tmp_path), setting.flag, bad)
    with pytest.raises(SettingsError) as refused:
        settings_from_args(args)
    message = str(refused.value)
    assert message.startswith(setting.flag), message
    assert repr(bad) in message


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--debounce-after", "15", "--debounce-after: invalid duration '15': use a number with"),
        ("--max-module-size", "big", "--max-module-size: invalid size 'big'"),
        ("--xds-address", "nowhere", "--xds-address: invalid address 'nowhere'"),
        ("--fetch-min-rate", "fast", "--fetch-min-rate 'fast': use a size per second"),
        ("--module-expiry", "0s", "--module-expiry must be positive, got '0s'"),
        ("--repull-interval", "0ms", "--repull-interval must be positive, got '0ms'"),
        ("--max-parallel-pulls", "0", "--max-parallel-pulls must be at least 1, got 0"),
        ("--max-resource-names", "0", "--max-resource-names must be at least 1, got 0"),
        ("--registry-ca", "/nonexistent/ca.pem", "--registry-ca /nonexistent/ca.pem: no such"),
        ("--listeners", "/nonexistent", "--listeners /nonexistent: not a directory"),
        ("--module-base-url", "wasmxds:18001", "--module-base-url 'wasmxds:18001': expected"),
    ],
)
def test_refusals_are_sentences_naming_flag_and_value(
    tmp_path: Path, flag: str, value: str, message: str
):
    """Each kind of per-flag check says which flag, which value and what is expected."""
    args = parse_serve("--config-dir", str(tmp_path), flag, value)
    with pytest.raises(SettingsError, match=message):
        settings_from_args(args)


def test_an_empty_optional_value_means_off(tmp_path: Path):
    """`--repull-interval=` and `--cache-max-bytes=` (an unset env var in a manifest) are off."""
    args = parse_serve("--config-dir", str(tmp_path), "--repull-interval=", "--cache-max-bytes=")
    settings = settings_from_args(args)
    assert (settings.repull_interval, settings.cache_max_bytes) == (None, None)


def test_a_non_integer_count_is_argparses_usage_error(capsys: pytest.CaptureFixture[str]):
    """Counts are parsed by argparse, so the usual usage message and exit 2 stay."""
    with pytest.raises(SystemExit) as exited:
        parse_serve("--max-parallel-pulls", "four")
    assert exited.value.code == 2
    assert "--max-parallel-pulls: invalid int value: 'four'" in capsys.readouterr().err


def test_help_shows_every_flag_and_its_default(capsys: pytest.CaptureFixture[str]):
    """`wasmxds serve --help` is made from the declarations: each flag, with its default."""
    with pytest.raises(SystemExit):
        parse_serve("--help")
    out = " ".join(capsys.readouterr().out.split())
    for setting in SETTINGS:
        assert setting.flag in out
    assert "(default 100ms)" in out
    assert "(default: unlimited)" in out
    for group in GROUPS:
        assert f"{group.title}:" in out


def test_validate_fetch_shares_serves_fetch_flags(tmp_path: Path):
    """`validate --fetch` takes the same flags, defaults and checks from the same declarations."""
    validate = build_parser().parse_args(["validate", str(tmp_path)])
    serve = settings_from_args(parse_serve("--config-dir", str(tmp_path)))
    shared = fetch_values(validate)
    assert {s.field: shared[s.field] for s in FETCH_FLAGS} == {
        s.field: getattr(serve, s.field) for s in FETCH_FLAGS
    }
    bad = build_parser().parse_args(["validate", "--fetch-rate-window", "0s", str(tmp_path)])
    with pytest.raises(SettingsError, match="--fetch-rate-window must be positive"):
        fetch_values(bad)


def test_repeated_flags_collect_as_declared(tmp_path: Path):
    """Repeatable flags keep their order, and --namespace drops repeats."""
    other = tmp_path / "b"
    other.mkdir()
    args = parse_serve(
        "--config-dir", str(tmp_path), "--config-dir", str(other),
        "--insecure-registry", "a:5000", "--insecure-registry", "*",
    )  # fmt: skip
    settings = settings_from_args(args)
    assert settings.config_dirs == (tmp_path, other)
    assert settings.insecure_registries == frozenset({"a:5000", "*"})
    namespaces = next(s for s in SETTINGS if s.flag == "--namespace")
    assert namespaces.kind is Kind.REPEATED
    assert namespaces.collect(["a", "b", "a"]) == ("a", "b")


@pytest.mark.parametrize(
    ("flags", "sentence"),
    [
        (("--admin-tls-cert",), "--admin-tls-cert and --admin-tls-key go together"),
        (("--admin-client-ca",), "--admin-client-ca needs --admin-tls-cert and --admin-tls-key"),
    ],
)
def test_admin_tls_flags_that_go_together(tmp_path: Path, flags: tuple[str, ...], sentence: str):
    """Admin TLS half-configured is refused with a sentence naming the missing flags."""
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    args = parse_serve("--config-dir", str(tmp_path), *(a for f in flags for a in (f, str(pem))))
    with pytest.raises(SettingsError, match=sentence):
        settings_from_args(args)


def test_admin_tls_and_debug_public_reach_the_settings(tmp_path: Path):
    """--admin-tls-*, --admin-client-ca and --debug-public land in ServeSettings."""
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    args = parse_serve(
        "--config-dir", str(tmp_path), "--admin-tls-cert", str(pem), "--admin-tls-key", str(pem),
        "--admin-client-ca", str(pem), "--debug-public",
    )  # fmt: skip
    settings = settings_from_args(args)
    assert (settings.admin_tls_cert, settings.admin_tls_key, settings.admin_client_ca) == (pem,) * 3
    assert settings.debug_public
    assert not settings_from_args(parse_serve("--config-dir", str(tmp_path))).debug_public
