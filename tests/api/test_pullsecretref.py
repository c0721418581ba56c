"""imagePullSecret read as istiod reads it (istio/istio TestToSecretName and its function)."""

from __future__ import annotations

import pytest

from wasmxds.api.pullsecretref import pull_secret_ref

# TestToSecretName's cases (plugin namespace "nm"): every one means Secret "sec" in "nm".
ISTIO_CASES = [
    "sec",
    "nm/sec",
    "nm2/sec",
    "kubernetes://nm/sec",
    "kubernetes://nm2/sec",
    "kubernetes://sec",
]


@pytest.mark.parametrize("value", ISTIO_CASES)
def test_istio_forms_name_the_secret(value: str) -> None:
    """Each of TestToSecretName's inputs names the Secret `sec`; any namespace is dropped."""
    ref = pull_secret_ref(value)
    assert (ref.name, ref.unusable) == ("sec", "")


def test_extra_segments_are_dropped_like_istiod() -> None:
    """istiod keeps the first two `/` parts, so `a/b/c` names the Secret `b`."""
    assert pull_secret_ref("a/b/c").name == "b"
    assert pull_secret_ref("kubernetes://a/b/c").name == "b"


def test_builtin_names_no_secret_and_is_usable() -> None:
    """builtin:// is dropped by istiod: no Secret, and nothing to refuse."""
    assert pull_secret_ref("builtin://x") == pull_secret_ref("builtin://")
    assert (pull_secret_ref("builtin://x").name, pull_secret_ref("builtin://x").unusable) == (
        "",
        "",
    )


@pytest.mark.parametrize(
    "value",
    [
        "configmap://nm/sec",
        "kubernetes-gateway://nm/sec",
        "invalid://",
        "kubernetes://",
        "nm/",
        "kubernetes://nm/",
        "Kubernetes://sec",
    ],
)
def test_forms_that_can_never_give_credentials_say_why(value: str) -> None:
    """Values with which istiod's pull always fails name no Secret and carry a reason."""
    ref = pull_secret_ref(value)
    assert ref.name == ""
    assert "Secret" in ref.unusable or "name" in ref.unusable
