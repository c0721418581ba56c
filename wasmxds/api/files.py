"""Which files in a configuration directory hold WasmPlugins.

One rule, shared by ``wasmxds validate`` and the directory source, so that a
file the linter passes is a file the server reads, and the reverse:

* a config file's name ends in ``.yaml``, ``.yml`` or ``.json`` (any case);
* hidden files and directories (a name starting with ``.``) are skipped. That
  covers editor lock and swap files (``.#plugin.yaml``, ``.plugin.yaml.swp``)
  and Kubernetes ConfigMap volumes, whose real files sit in ``..data`` /
  ``..2024_01_01_...`` directories behind visible symlinks: skipping the
  hidden copies reads each file once;
* editor backups and temporaries are skipped: names ending in ``~`` or
  ``.swp``/``.swo``/``.swx``/``.tmp``/``.bak``/``.orig``, and Emacs
  auto-save files (``#plugin.yaml#``). Most fail the suffix rule anyway;
  they are listed so the intent survives a change of suffixes.

Directories are walked recursively in sorted order; symlinks to files are
followed, symlinks to directories are not (a link cycle cannot hang a scan).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CONFIG_SUFFIXES", "is_config_file", "is_hidden", "iter_config_files"]

CONFIG_SUFFIXES = frozenset({".yaml", ".yml", ".json"})
_TEMP_SUFFIXES = (".swp", ".swo", ".swx", ".tmp", ".bak", ".orig")


def is_hidden(name: str) -> bool:
    """A dot-file or dot-directory name."""
    return name.startswith(".")


def is_config_file(path: Path) -> bool:
    """Whether the file name at ``path`` is one wasmxds reads (only the name is looked at)."""
    name = path.name
    lowered = name.lower()
    if is_hidden(name) or name.endswith("~") or lowered.endswith(_TEMP_SUFFIXES):
        return False
    if name.startswith("#") and name.endswith("#"):
        return False
    return path.suffix.lower() in CONFIG_SUFFIXES


def iter_config_files(root: Path) -> Iterator[Path]:
    """Every config file under the directory ``root``, in sorted order."""
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not is_hidden(d))
        for name in sorted(names):
            path = Path(directory, name)
            if is_config_file(path) and path.is_file():
                yield path
