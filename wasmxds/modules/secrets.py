"""The image pull secrets the sources currently offer, for the module stage.

The reconcile stage calls :meth:`PullSecrets.update` with the merged secrets of
every source on each pass. Requests carry only a secret's namespace/name; the
resolver asks :meth:`PullSecrets.version` whether it exists (and whether it
changed since a failed fetch), and the OCI fetcher asks :meth:`PullSecrets.get`
for the credentials at the moment it needs them.
"""

from __future__ import annotations

from collections.abc import Mapping

from wasmxds.api.objects import ObjectKey
from wasmxds.api.secrets import PullSecret

__all__ = ["PullSecrets"]


class PullSecrets:
    """A lookup of pull secrets by namespace/name; ``repr`` never shows credentials."""

    def __init__(self, secrets: Mapping[ObjectKey, PullSecret] | None = None) -> None:
        self._secrets: dict[ObjectKey, PullSecret] = dict(secrets or {})

    def update(self, secrets: Mapping[ObjectKey, PullSecret]) -> bool:
        """Replace the known secrets; True when any secret appeared, changed or went away."""
        before = {key: secret.fingerprint for key, secret in self._secrets.items()}
        self._secrets = dict(secrets)
        after = {key: secret.fingerprint for key, secret in self._secrets.items()}
        return before != after

    def get(self, key: ObjectKey) -> PullSecret | None:
        return self._secrets.get(key)

    def version(self, key: ObjectKey) -> str | None:
        """An opaque token that changes when the secret's content does; None when it is missing."""
        secret = self._secrets.get(key)
        return None if secret is None else secret.fingerprint

    def __len__(self) -> int:
        return len(self._secrets)

    def __repr__(self) -> str:
        return f"PullSecrets({sorted(str(key) for key in self._secrets)})"
