"""The exceptions wasmxds raises, one tree so callers can catch at the right depth.

    WasmxdsError
    ├── ConfigError                 input we were given is wrong
    │   ├── SettingsError           a command-line flag or its value
    │   └── ObjectError             a WasmPlugin (or other object) failed validation
    └── ModuleError                 a Wasm module could not be made available
        ├── UnsupportedSchemeError  the URL's scheme cannot be fetched
        ├── InvalidReferenceError   an oci:// URL is not a valid image reference
        ├── MissingPullSecretError  the plugin's imagePullSecret does not exist
        ├── FetchError              the transfer failed (network, HTTP status, timeout)
        │   ├── BlockedAddressError the host resolved to a link-local/metadata address
        │   ├── BlockedRealmError   a registry named a token realm we refuse to call
        │   ├── RegistryAuthError   the registry wants credentials, or refused them
        │   └── DigestMismatchError registry content does not hash to its digest
        ├── ModuleTooLargeError     the module (or an archive layer) exceeds the size cap
        ├── NotWasmError            the bytes do not start with the Wasm magic number
        ├── ChecksumMismatchError   the module's sha256 differs from spec.sha256
        ├── UnknownLayoutError      an OCI image holds no module in any layout we know
        ├── UnsafeLayerError        an image layer has path traversal or link entries
        └── CacheWriteError         the verified module could not be written to the cache

Third-party errors (httpx, yaml, grpc, OS) are translated where they are caught,
with ``raise ... from exc`` so the original stays on ``__cause__``. Messages never
carry credentials: they name the URL (without userinfo), the file, or the field.
"""

from __future__ import annotations

__all__ = [
    "BlockedAddressError",
    "BlockedRealmError",
    "CacheWriteError",
    "ChecksumMismatchError",
    "ConfigError",
    "DigestMismatchError",
    "FetchError",
    "InvalidReferenceError",
    "MissingPullSecretError",
    "ModuleError",
    "ModuleTooLargeError",
    "NotWasmError",
    "ObjectError",
    "RegistryAuthError",
    "SettingsError",
    "UnknownLayoutError",
    "UnsafeLayerError",
    "UnsupportedSchemeError",
    "WasmxdsError",
]


class WasmxdsError(Exception):
    """Base of every error wasmxds raises on purpose."""


class ConfigError(WasmxdsError):
    """Input given to wasmxds is invalid."""


class SettingsError(ConfigError):
    """A command-line flag or its value is invalid."""


class ObjectError(ConfigError):
    """An object from a source failed validation; ``str()`` names file/object and field."""


class ModuleError(WasmxdsError):
    """A Wasm module could not be made available to proxies.

    ``reason`` is a short machine-friendly label used in metrics and status
    (``fetch_failed``, ``checksum_mismatch``...); the message is for humans.
    """

    reason = "module_error"


class UnsupportedSchemeError(ModuleError):
    """The module URL uses a scheme wasmxds cannot fetch."""

    reason = "unsupported_scheme"


class FetchError(ModuleError):
    """Transferring the module failed: connection, HTTP status, or timeout.

    ``retryable`` tells the caller whether trying again later can help
    (a 404 may become a 200 once the module is published; a 501 will not change).
    """

    reason = "fetch_failed"

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class BlockedAddressError(FetchError):
    """The module host resolved to a link-local or cloud-metadata address (SSRF guard)."""

    reason = "blocked_address"

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class ModuleTooLargeError(ModuleError):
    """The module, or an archive it is packed in, exceeds the configured size cap."""

    reason = "too_large"


class NotWasmError(ModuleError):
    """The fetched bytes are not a WebAssembly binary (no ``\\0asm`` header)."""

    reason = "not_wasm"


class ChecksumMismatchError(ModuleError):
    """The module's SHA-256 differs from the ``sha256`` the plugin asks for."""

    reason = "checksum_mismatch"


class CacheWriteError(ModuleError):
    """Writing a verified module into the local cache failed (disk full, permissions)."""

    reason = "cache_write_failed"


class InvalidReferenceError(ModuleError):
    """An ``oci://`` URL (or a URL without a scheme) is not a valid image reference."""

    reason = "invalid_reference"


class MissingPullSecretError(ModuleError):
    """The plugin names an ``imagePullSecret`` that no source provides."""

    reason = "pull_secret_missing"


class BlockedRealmError(FetchError):
    """A registry's bearer-token realm points somewhere wasmxds refuses to send requests."""

    reason = "blocked_realm"

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class RegistryAuthError(FetchError):
    """The registry requires credentials we do not have, or rejected the ones we sent."""

    reason = "auth_failed"


class DigestMismatchError(FetchError):
    """A manifest or blob does not hash to the digest it was requested by (corrupt or lying)."""

    reason = "digest_mismatch"


class UnknownLayoutError(ModuleError):
    """An OCI image holds no Wasm module in any layout wasmxds knows; the message lists
    the media types that were found."""

    reason = "unknown_layout"


class UnsafeLayerError(ModuleError):
    """An image layer has an entry escaping it (``..``), or a link where a file is needed."""

    reason = "unsafe_layer"
