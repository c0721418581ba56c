"""The rollout.wasmxds.io/steps and /interval annotations: parsing, defaults, and problems."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.test_cli_validate import run_validate
from wasmxds.api.rollout import (
    RolloutPolicy,
    parse_interval,
    parse_steps,
    rollout_issues,
    rollout_policy,
)
from wasmxds.errors import SettingsError
from wasmxds.settings import ROLLOUT_INTERVAL


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    # validate configures structlog for the process, bound to the captured stderr.
    yield
    structlog.reset_defaults()


def test_steps_and_interval_parse():
    """Percentages (with or without %) and durations with a unit."""
    assert parse_steps("5, 25%,100") == (5.0, 25.0, 100.0)
    assert parse_steps("100") == (100.0,)
    assert parse_interval("90s") == 90.0
    assert parse_interval("500ms") == 0.5


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("5,25,90", "the last step must be 100"),
        ("25,5,100", "steps must increase"),
        ("0,100", "not in (0, 100]"),
        ("5,,100", "comma-separated"),
        ("five,100", "'five' is not a percentage"),
        ("", "comma-separated"),
    ],
)
def test_bad_steps_say_what_is_wrong(text: str, why: str):
    """Each malformed steps value is refused with the reason."""
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_steps(text)


def test_policy_takes_annotations_over_the_default():
    """Each annotation overrides its half of the server default; absent ones keep it."""
    default = RolloutPolicy((50.0, 100.0), 30.0)
    assert rollout_policy({}, default) == default
    assert rollout_policy({"rollout.wasmxds.io/interval": "2s"}, default) == RolloutPolicy(
        (50.0, 100.0), 2.0
    )
    steps = rollout_policy({"rollout.wasmxds.io/steps": "10,100"}, RolloutPolicy())
    assert steps.staged
    assert not RolloutPolicy().staged


def test_validate_names_the_annotation_and_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """wasmxds validate reports a malformed rollout annotation at its file line."""
    path = tmp_path / "p.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            apiVersion: extensions.istio.io/v1alpha1
            kind: WasmPlugin
            metadata:
              name: p
              annotations:
                rollout.wasmxds.io/steps: "5,25,90"
                rollout.wasmxds.io/interval: "60"
            spec:
              url: oci://ghcr.io/acme/f:v1
            """
        )
    )
    assert run_validate(str(path)) == 1
    out, _ = capsys.readouterr()
    assert out.splitlines() == [
        f'{path}:6: metadata.annotations["rollout.wasmxds.io/steps"]:'
        " the last step must be 100 (every proxy), not 90",
        f'{path}:7: metadata.annotations["rollout.wasmxds.io/interval"]:'
        " '60' is not a duration: use a number with ms, s, m or h (e.g. 60s)",
    ]


@pytest.mark.parametrize("text", ["9" * 400 + "h", "169h", "7.5d", "604801s"])
def test_interval_must_be_finite_and_at_most_a_week(text: str) -> None:
    """An interval that overflows to inf or exceeds 7 days is refused with a sentence."""
    with pytest.raises(ValueError, match=r"(at most 7 days|not a duration)") as caught:
        parse_interval(text)
    assert "inf" not in str(caught.value).split("(")[0]
    issues = rollout_issues({"rollout.wasmxds.io/interval": text}, lambda path: 4)
    assert len(issues) == 1, issues
    assert issues[0].line == 4
    assert parse_interval("168h") == 7 * 24 * 3600.0


def test_rollout_interval_flag_is_bounded_too() -> None:
    """--rollout-interval refuses the same overflowing or too-long durations."""
    with pytest.raises(SettingsError, match="at most 7 days"):
        ROLLOUT_INTERVAL.parse("9" * 400 + "h")
    with pytest.raises(SettingsError, match="at most 7 days"):
        ROLLOUT_INTERVAL.parse("200h")
    assert ROLLOUT_INTERVAL.parse("90s") == 90.0
