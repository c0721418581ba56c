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
Symlinks that go round in a loop, and symlinks to directories, are listed
anyway (whatever their name, hidden ones aside), so that reading them reports
the loop, or that the directory is not read, instead of skipping them unseen.
So is anything with a config file's name that is not a regular file: a
dangling symlink (a warning: its target may be on its way) and a FIFO,
socket or device (an error); none of them is opened.

:func:`read_config_file` reads one file, at most a given number of bytes, and
explains every failure in a sentence (:class:`ConfigFileError`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from wasmxds.api.objects import Severity

__all__ = [
    "CONFIG_SUFFIXES",
    "ConfigFileError",
    "is_config_file",
    "is_hidden",
    "is_link_loop",
    "is_listed",
    "iter_config_files",
    "read_config_file",
]

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
    """Every config file under the directory ``root``, in sorted order (see :func:`is_listed`)."""
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not is_hidden(d))
        # os.walk lists a symlink to a directory among the directories, and does not enter it.
        links = [d for d in subdirs if os.path.islink(os.path.join(directory, d))]
        for name in sorted([*names, *links]):
            path = Path(directory, name)
            if is_listed(path):
                yield path


def is_listed(path: Path) -> bool:
    """Whether a scan lists ``path``: a config file, or a link that loops or names a directory.

    A config file's name on anything but a directory is listed, so that a
    dangling link or a FIFO is reported rather than skipped unseen.
    """
    if is_hidden(path.name):
        return False
    if path.is_symlink():
        return path.is_dir() or is_link_loop(path) or is_config_file(path)
    return is_config_file(path) and (path.exists() and not path.is_dir())


def is_link_loop(path: Path) -> bool:
    """Whether ``path`` is a symbolic link that never reaches a file (it goes round in a loop)."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


class ConfigFileError(Exception):
    """A config file that cannot be read; ``reason`` says why, for the user.

    ``missing`` is True when the file is simply not there (any more): a
    watcher treats that as a delete, not a problem. ``severity`` is a warning
    for a symlink to a directory, which is left out by design.
    """

    def __init__(
        self, reason: str, *, missing: bool = False, severity: Severity = Severity.ERROR
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing
        self.severity = severity


def read_config_file(path: Path, max_bytes: int) -> bytes:
    """The content of the file at ``path``, at most ``max_bytes + 1`` bytes of it.

    One byte more than the limit is read so the caller can tell a file that is
    too large without reading all of it. Raises :class:`ConfigFileError`.
    """
    if path.is_symlink() and path.is_dir():
        raise ConfigFileError(
            "a symbolic link to a directory is not followed, so nothing under it is read"
            " (following links could loop); give its target as a directory of its own"
            " (another --config-dir, or another argument to validate)",
            severity=Severity.WARNING,
        )
    try:
        # Looked at before it is opened: opening a device can have effects of its own.
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise _explain(path, exc) from exc
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise ConfigFileError(_not_a_file(path, mode))
    try:
        # Non-blocking, so a FIFO named like a config file cannot hang the read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise _explain(path, exc) from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise ConfigFileError("cannot read the file: it is a directory")
        raise ConfigFileError(_not_a_file(path, mode))
    with os.fdopen(fd, "rb") as file:
        try:
            return file.read(max_bytes + 1)
        except OSError as exc:
            raise _explain(path, exc) from exc


def _not_a_file(path: Path, mode: int) -> str:
    kind = (
        "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "not a regular file"
    )
    link = f" (through the symbolic link to {os.readlink(path)})" if path.is_symlink() else ""
    return (
        f"cannot read the file: it is {kind}{link}, not a regular file; only regular files"
        " hold configuration, so remove it, or rename it so it does not end in .yaml, .yml"
        " or .json"
    )


def _explain(path: Path, exc: OSError) -> ConfigFileError:
    if exc.errno == errno.ELOOP:
        return ConfigFileError(
            f"the symbolic link never reaches a file, it goes round in a loop"
            f" ({_link_chain(path)}); point it at a real file or remove it"
        )
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        if path.is_symlink():
            return ConfigFileError(
                f"the symbolic link points to {os.readlink(path)}, which does not exist, so"
                " nothing is read from it; create the target or remove the link",
                severity=Severity.WARNING,
            )
        return ConfigFileError("cannot read the file: it does not exist", missing=True)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ConfigFileError(
            "cannot read the file: permission denied; make it readable by the user wasmxds runs as"
        )
    return ConfigFileError(f"cannot read the file: {exc.strerror or exc}")


def _link_chain(path: Path) -> str:
    """``a.yaml -> b.yaml -> a.yaml``: the links followed until one repeats."""
    seen: list[Path] = []
    current = path
    while current not in seen and len(seen) < 8:
        seen.append(current)
        try:
            target = Path(os.readlink(current))
        except OSError:
            break
        current = target if target.is_absolute() else current.parent / target
    names = [str(p) if p.parent != path.parent else p.name for p in (*seen, current)]
    return " -> ".join(names)
