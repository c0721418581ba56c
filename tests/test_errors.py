"""The error tree: fields, not text, and one documented hierarchy."""

from __future__ import annotations

import pytest

from wasmxds import errors
from wasmxds.api.dockerconfig import DockerConfigError as FromDockerConfig
from wasmxds.api.gourl import GoURLError as FromGoURL
from wasmxds.api.yamlload import YamlLimitError as FromYamlLoad
from wasmxds.errors import (
    BlockedAddressError,
    ConfigError,
    FetchError,
    InvalidReferenceError,
    ModuleError,
    NotWasmError,
    WasmxdsError,
)
from wasmxds.sources.kube.protocol import KubeApiError as FromProtocol
from wasmxds.xds import stream


def test_message_is_built_from_the_url_and_the_detail() -> None:
    """str() is "<url>: <detail>", and just the detail while the URL is unknown."""
    error = NotWasmError("the bytes are not Wasm")
    assert str(error) == "the bytes are not Wasm"
    assert error.about("https://example.com/m.wasm") is error
    assert str(error) == "https://example.com/m.wasm: the bytes are not Wasm"
    assert error.detail == "the bytes are not Wasm"


def test_the_deepest_caller_names_the_url() -> None:
    """about() keeps a URL set closer to the failure (an image, not the plugin's alias)."""
    error = FetchError("HTTP 500", url="oci://registry/a:v1")
    error.about("oci://other/b:v2")
    assert str(error) == "oci://registry/a:v1: HTTP 500"


@pytest.mark.parametrize(
    ("error", "reason", "retryable"),
    [
        (FetchError("x"), "fetch_failed", True),
        (FetchError("x", retryable=False), "fetch_failed", False),
        (BlockedAddressError("x"), "blocked_address", False),
        (InvalidReferenceError("x"), "invalid_reference", False),
        (NotWasmError("x"), "not_wasm", True),
    ],
)
def test_reason_and_retryable_are_fields(error: ModuleError, reason: str, retryable: bool) -> None:
    """Each kind has its metric reason and a default for whether a later retry can help."""
    assert error.reason == reason
    assert error.retryable is retryable


def test_every_error_joins_the_one_tree() -> None:
    """The errors other modules raise are the tree's classes, and each is in the docstring."""
    assert FromYamlLoad is errors.YamlLimitError
    assert FromGoURL is errors.GoURLError
    assert FromDockerConfig is errors.DockerConfigError
    assert FromProtocol is errors.KubeApiError
    assert stream.ProtocolError is errors.ProtocolError
    assert stream.LimitExceeded is errors.LimitExceeded
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, WasmxdsError), name
        assert name in (errors.__doc__ or ""), f"{name} is missing from the drawn tree"
    assert issubclass(errors.YamlSyntaxError, ConfigError)
    # Callers that catch ValueError around URL and config parsing still do.
    assert issubclass(errors.GoURLError, ValueError)
    assert issubclass(errors.DockerConfigError, ValueError)
