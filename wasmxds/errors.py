"""The exceptions wasmxds raises, one tree so callers can catch at the right depth.

    WasmxdsError
    ├── ConfigError                 input we were given is wrong
    │   ├── SettingsError           a command-line flag or its value
    │   ├── YamlSyntaxError         a file is not YAML (``line`` says where)
    │   │   └── YamlLimitError      a file passed a size/depth/alias bound
    │   ├── GoURLError              Go's url.Parse would refuse the URL (also a ValueError)
    │   ├── DockerConfigError       a Docker config (or pull secret) is unusable (also a ValueError)
    │   ├── KeyFormatError          a verification or signing key is unusable (also a ValueError)
    │   └── KubeConfigError         the kubeconfig or in-cluster configuration is unusable
    ├── KubeApiError                a Kubernetes API request failed (``status``, ``transient``)
    │   └── Gone                    410: the resourceVersion is too old
    ├── ProtocolError               an xDS client broke the protocol (INVALID_ARGUMENT)
    │   └── LimitExceeded           it asked for more than a stream may hold (RESOURCE_EXHAUSTED)
    ├── RolloutError                an operator action a staged rollout cannot take now (409)
    │   └── RolloutNotFound         the plugin named has no staged rollout (404)
    └── ModuleError                 a Wasm module could not be made available
        ├── UnsupportedSchemeError  the URL's scheme cannot be fetched
        ├── InvalidReferenceError   an oci:// URL is not a valid image reference
        ├── MissingPullSecretError  the plugin's imagePullSecret does not exist
        ├── FetchError              the transfer failed (network, HTTP status, timeout)
        │   ├── BlockedAddressError the host resolved to a link-local/metadata address
        │   ├── BlockedRealmError   a registry named a token realm we refuse to call
        │   ├── RegistryAuthError   the registry wants credentials, or refused them
        │   ├── CredentialHelperError a docker credential helper failed, or may not run
        │   ├── SignatureInvalidError no cosign signature by a trusted key for the manifest
        │   ├── ModuleAccessDeniedError a cached module this plugin's credentials cannot read
        │   └── DigestMismatchError registry content does not hash to its digest
        ├── ModuleTooLargeError     the module (or an archive layer) exceeds the size cap
        ├── NotWasmError            the bytes do not start with the Wasm magic number
        ├── ChecksumMismatchError   the module's sha256 differs from spec.sha256
        ├── UnknownLayoutError      an OCI image holds no module in any layout we know
        ├── UnsafeLayerError        an image layer has path traversal or link entries
        ├── ModuleIncompatibleError the pre-flight check found the module cannot run in Envoy
        └── CacheWriteError         the verified module could not be written to the cache

A :class:`ModuleError` carries its parts as fields (``url``, ``detail``,
``reason``, ``retryable``) and builds its message in ``__str__``: code that
learns which URL an error is about sets it with :meth:`ModuleError.about`
instead of rebuilding the exception.

Third-party errors (httpx, yaml, grpc, OS) are translated where they are caught,
with ``raise ... from exc`` so the original stays on ``__cause__``. Messages never
carry credentials: they name the URL (without userinfo), the file, or the field.
"""

from __future__ import annotations

from typing import ClassVar, Self

__all__ = [
    "BlockedAddressError",
    "BlockedRealmError",
    "CacheWriteError",
    "ChecksumMismatchError",
    "ConfigError",
    "CredentialHelperError",
    "DigestMismatchError",
    "DockerConfigError",
    "FetchError",
    "GoURLError",
    "Gone",
    "InvalidReferenceError",
    "KeyFormatError",
    "KubeApiError",
    "KubeConfigError",
    "LimitExceeded",
    "MissingPullSecretError",
    "ModuleAccessDeniedError",
    "ModuleError",
    "ModuleIncompatibleError",
    "ModuleTooLargeError",
    "NotWasmError",
    "ProtocolError",
    "RegistryAuthError",
    "RolloutError",
    "RolloutNotFound",
    "SettingsError",
    "SignatureInvalidError",
    "UnknownLayoutError",
    "UnsafeLayerError",
    "UnsupportedSchemeError",
    "WasmxdsError",
    "YamlLimitError",
    "YamlSyntaxError",
]


class WasmxdsError(Exception):
    """Base of every error wasmxds raises on purpose."""


# ----------------------------------------------------------------- configuration


class ConfigError(WasmxdsError):
    """Input given to wasmxds is invalid."""


class SettingsError(ConfigError):
    """A command-line flag or its value is invalid."""


class YamlSyntaxError(ConfigError):
    """The text is not YAML; ``line`` is 1-based (1 when unknown)."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class YamlLimitError(YamlSyntaxError):
    """The text passed a bound of :class:`~wasmxds.api.limits.Limits`; none of it is used."""


class GoURLError(ConfigError, ValueError):
    """Go's ``url.Parse`` would fail; the message is Go's reason."""


class DockerConfigError(ConfigError, ValueError):
    """The content is not a usable Docker config; the message names the field, never its value."""


class KeyFormatError(ConfigError, ValueError):
    """A PEM key cannot be used to verify or sign; the message names where it came from."""


class KubeConfigError(ConfigError):
    """The kubeconfig or in-cluster configuration cannot be used (fatal: fix and restart)."""


# -------------------------------------------------------------------- Kubernetes


class KubeApiError(WasmxdsError):
    """A request failed. ``status`` is the HTTP (or Status ``code``) value, 0 when no
    answer came at all (connection refused or dropped, timeout, TLS failure)."""

    def __init__(self, what: str, status: int, message: str) -> None:
        self.what = what
        self.status = status
        self.message = message
        code = f"HTTP {status}" if status else "no answer"
        super().__init__(f"{what}: {code}: {message}")

    @property
    def transient(self) -> bool:
        """Worth retrying as is: no answer, throttled, or a server-side failure."""
        return self.status == 0 or self.status == 429 or self.status >= 500


class Gone(KubeApiError):
    """410: the resourceVersion (or continue token) is older than the server's history."""


# -------------------------------------------------------------------------- xDS


class ProtocolError(WasmxdsError):
    """The client broke the protocol; the stream should end with INVALID_ARGUMENT."""


class LimitExceeded(ProtocolError):
    """The client asked for more than a stream may hold; the stream ends with RESOURCE_EXHAUSTED."""


# ----------------------------------------------------------------------- modules


class ModuleError(WasmxdsError):
    """A Wasm module could not be made available to proxies.

    ``reason`` is a short machine-friendly label used in metrics and status
    (``fetch_failed``, ``checksum_mismatch``...). ``detail`` says what went wrong
    and ``url`` (redacted, "" until known) which module it is about; ``str()`` is
    ``"<url>: <detail>"``. ``retryable`` tells the caller whether trying again
    later can help (a 404 may become a 200 once the module is published; a 501
    will not change); each class has a default.
    """

    reason: ClassVar[str] = "module_error"
    retry_helps: ClassVar[bool] = True

    def __init_subclass__(cls, *, reason: str = "", retryable: bool = True) -> None:
        # Declared on the class line, so each kind of failure is one line plus its docstring.
        super().__init_subclass__()
        if reason:
            cls.reason = reason
        cls.retry_helps = retryable and cls.retry_helps

    def __init__(self, detail: str, *, url: str = "", retryable: bool | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.url = url
        self.retryable = self.retry_helps if retryable is None else retryable

    def __str__(self) -> str:
        return f"{self.url}: {self.detail}" if self.url else self.detail

    def about(self, url: str) -> Self:
        """Name the module this error is about, unless a deeper caller already did."""
        if not self.url:
            self.url = url
        return self


class UnsupportedSchemeError(ModuleError, reason="unsupported_scheme", retryable=False): ...


class FetchError(ModuleError, reason="fetch_failed"): ...


class BlockedAddressError(FetchError, reason="blocked_address", retryable=False): ...


class ModuleTooLargeError(ModuleError, reason="too_large"): ...


class NotWasmError(ModuleError, reason="not_wasm"): ...


class ChecksumMismatchError(ModuleError, reason="checksum_mismatch"): ...


class CacheWriteError(ModuleError, reason="cache_write_failed"): ...


class InvalidReferenceError(ModuleError, reason="invalid_reference", retryable=False): ...


class MissingPullSecretError(ModuleError, reason="pull_secret_missing"): ...


class BlockedRealmError(FetchError, reason="blocked_realm", retryable=False): ...


class RegistryAuthError(FetchError, reason="auth_failed"): ...


class CredentialHelperError(FetchError, reason="credential_helper_failed"):
    """A ``docker-credential-<name>`` program failed, hung or may not run; the message names
    the helper and its exit status only (what it printed may be a secret)."""


class DigestMismatchError(FetchError, reason="digest_mismatch"): ...


class UnknownLayoutError(ModuleError, reason="unknown_layout"): ...


class UnsafeLayerError(ModuleError, reason="unsafe_layer"): ...


class ModuleIncompatibleError(ModuleError, reason="module_incompatible", retryable=False):
    """The pre-flight check refused the module: it is not valid Wasm, or does not fit the
    proxy-wasm ABI Envoy implements (the detail names the export or import that is wrong)."""


class SignatureInvalidError(FetchError, reason="signature_invalid"):
    """No cosign signature by a trusted key for the manifest (retryable: one may come later)."""


class ModuleAccessDeniedError(FetchError, reason="module_access_denied"):
    """The module is cached (fetched with other credentials), but the registry refuses this
    plugin's credentials for it (retryable: access may be granted, or the secret fixed)."""


# ----------------------------------------------------------------- staged rollouts


class RolloutError(WasmxdsError):
    """An operator action on a staged rollout that cannot be done in its current state."""


class RolloutNotFound(RolloutError):
    """No staged rollout is known for the plugin named."""
