"""Which Secret an ``imagePullSecret`` names, read exactly as istiod reads it.

istiod accepts four spellings and they all mean the Secret ``name`` in the
plugin's own namespace: ``name``, ``ns/name``, ``kubernetes://name`` and
``kubernetes://ns/name`` (istio/istio ``pilot/pkg/model/extensions.go``,
tested by ``TestToSecretName``). A namespace in the value is read and then
replaced by the plugin's: a plugin can never borrow another namespace's
credentials. istiod splits on ``/`` and keeps the first two parts, so
``a/b/c`` means the Secret ``b``.

Other schemes never give credentials in Istio: ``builtin://`` is dropped (the
module is pulled as if no secret were named), while ``configmap://``,
``kubernetes-gateway://`` and ``invalid://`` name no Secret istiod will read,
so the pull fails with "missing image pulling secret". wasmxds pulls the
first like Istio and refuses the others at validation, as it refuses other
specs that can never work.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PullSecretRef", "pull_secret_ref"]

_KUBERNETES = "kubernetes://"
_BUILTIN = "builtin://"
# Schemes istiod keeps as they are but never reads pull credentials from.
_UNUSABLE = ("configmap://", "kubernetes-gateway://", "invalid://")


@dataclass(frozen=True, slots=True)
class PullSecretRef:
    """What an ``imagePullSecret`` value names.

    ``name`` is the Secret's name in the plugin's namespace; empty when the
    value names no Secret (``builtin://``, where istiod pulls without one).
    ``unusable`` says why no Secret can ever be read (then ``name`` is empty).
    """

    name: str
    unusable: str = ""


def pull_secret_ref(value: str) -> PullSecretRef:
    """Read ``value`` as istiod's ToResourceName + ParseResourceName do."""
    if value.startswith(_BUILTIN):
        return PullSecretRef("")
    for scheme in _UNUSABLE:
        if value.startswith(scheme):
            return PullSecretRef(
                "",
                unusable=f"{scheme} names no Secret istiod reads pull credentials from;"
                " name a Secret in the plugin's namespace (`name` or `kubernetes://name`)",
            )
    parts = value.removeprefix(_KUBERNETES).split("/")
    # A namespace (parts[0] of two or more) is read and dropped, as istiod does.
    name = parts[0] if len(parts) == 1 else parts[1]
    if not name:
        return PullSecretRef(
            "",
            unusable="istiod reads it as `namespace/name` (after an optional `kubernetes://`)"
            " and finds no name, so the pull would fail for a missing secret",
        )
    return PullSecretRef(name)
