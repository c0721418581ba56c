"""Hostile YAML for tests: alias bombs, in a plugin and in documents of other kinds."""

from __future__ import annotations

import textwrap


def alias_bomb(levels: int, indent: str = "", anchor: str = "a") -> str:
    """YAML lines whose last key expands to 10**levels strings."""
    lines = [f"{indent}{anchor}0: &{anchor}0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        refs = ", ".join([f"*{anchor}{level - 1}"] * 10)
        lines.append(f"{indent}{anchor}{level}: &{anchor}{level} [{refs}]")
    return "\n".join(lines) + "\n"


def plugin(name: str = "p", config: str = "    value: v1\n") -> str:
    """A WasmPlugin whose pluginConfig is ``config`` (lines indented by four spaces)."""
    head = textwrap.dedent(
        f"""\
        apiVersion: extensions.istio.io/v1alpha1
        kind: WasmPlugin
        metadata:
          name: {name}
        spec:
          url: oci://ghcr.io/acme/filter:v1
          pluginConfig:
        """
    )
    return head + config


def bomb_documents(count: int) -> str:
    """Documents of a kind wasmxds ignores, each an alias bomb of over a million values."""
    return "".join(
        f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c{i}\ndata:\n"
        + alias_bomb(6, "  ")
        for i in range(count)
    )
