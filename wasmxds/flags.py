"""One declaration per setting, from which the flags, the defaults and the docs are made.

A :class:`Setting` names a :class:`~wasmxds.settings.ServeSettings` field, its
flag, how the flag's text becomes a value, the default (as the user would type
it) and what it means. :func:`add_flags` makes the argparse arguments,
:meth:`Setting.value` turns what argparse stored into the field's value with a
sentence naming the flag when the text is wrong, :attr:`Setting.default` is the
field's default, and :func:`markdown_table` writes the docs' flag table. Checks
that relate two flags (``--tls-cert`` and ``--tls-key``) stay with the command
that owns them; a declaration checks only its own value.
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from wasmxds.errors import SettingsError

__all__ = ["Group", "Kind", "Setting", "add_flags", "add_groups", "markdown_table", "values"]

T = TypeVar("T")

Check = Callable[[str, str, Any], str | None]
"""``(flag, text, value)`` → the sentence refusing the value, or None when it is fine."""


class Kind(enum.Enum):
    VALUE = "value"
    """``--flag TEXT``; the last one given wins."""
    REPEATED = "repeated"
    """``--flag TEXT`` any number of times; ``collect`` makes the field from the list."""
    SWITCH = "switch"
    """``--flag`` alone turns it on."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting(Generic[T]):
    """One ``wasmxds serve`` flag and the :class:`ServeSettings` field it sets."""

    field: str
    flag: str
    help: str
    """What the flag does, in one sentence for ``--help``."""
    parse: Callable[[str], Any] = str
    """The text of one occurrence → its value; raises :class:`SettingsError` on bad text."""
    default: str | None = None
    """The default as the user would type it; None when the flag is off or empty unless given."""
    default_factory: Callable[[], str] | None = None
    """For defaults that depend on the environment (``$XDG_CACHE_HOME``)."""
    kind: Kind = Kind.VALUE
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    collect: Callable[[list[Any]], Any] = tuple
    """:attr:`Kind.REPEATED`: the field's value from the parsed occurrences."""
    check: Check | None = None
    argparse_type: bool = False
    """Let argparse run ``parse`` itself (``int``: its usage error is the one users know)."""
    doc: str | None = None
    """The docs table's longer meaning, when it says more than ``help``."""
    shown_default: str | None = None
    """The docs' and ``--help``'s default, when not ``default`` itself (``~/.cache/wasmxds``)."""
    refusal: str = "{flag}: {reason}"
    """How a parser's refusal is put to the user; ``reason`` quotes the text."""

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def default_text(self) -> str | None:
        return self.default_factory() if self.default_factory is not None else self.default

    @property
    def value_default(self) -> T:
        """The field's default: the default text parsed exactly as a given flag would be."""
        if self.kind is Kind.SWITCH:
            return cast(T, False)
        if self.kind is Kind.REPEATED:
            return cast(T, self.collect([]))
        text = self.default_text()
        return cast(T, None if text is None else self.convert(text))

    def convert(self, text: str) -> Any:
        """One occurrence's text → its value, refused with a sentence naming the flag."""
        try:
            value = self.parse(text)
        except SettingsError as exc:
            raise SettingsError(self.refusal.format(flag=self.flag, reason=exc)) from None
        self._check(text, value)
        return value

    def value(self, args: argparse.Namespace) -> T:
        """The field's value from what argparse stored for this flag."""
        raw = getattr(args, self.dest)
        if self.kind is Kind.SWITCH:
            return cast(T, bool(raw))
        if self.kind is Kind.REPEATED:
            return cast(T, self.collect([self._one(item) for item in raw]))
        return cast(T, None if raw is None else self._one(raw))

    def _one(self, raw: Any) -> Any:
        if self.argparse_type:
            self._check(str(raw), raw)
            return raw
        return self.convert(raw)

    def _check(self, text: str, value: Any) -> None:
        if self.check is not None and (refused := self.check(self.flag, text, value)):
            raise SettingsError(refused)

    def shown(self) -> str | None:
        """The default as the docs show it, or None when there is nothing to show."""
        if self.shown_default is not None:
            return self.shown_default
        return f"`{self.default}`" if self.default is not None else None


@dataclass(frozen=True, slots=True)
class Group:
    """Settings of one concern, shown together in ``--help`` and in the docs."""

    title: str
    description: str
    settings: tuple[Setting[Any], ...]


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, settings: Iterable[Setting[Any]]
) -> None:
    """Add each setting's flag; values stay text until :meth:`Setting.value`."""
    for setting in settings:
        options: dict[str, Any] = {"dest": setting.dest}
        # The same sentence serves the docs table; backticks are markdown there.
        help_text = setting.help.replace("`", "")
        if setting.kind is Kind.SWITCH:
            options["action"] = "store_true"
        else:
            if setting.kind is Kind.REPEATED:
                options["action"] = "append"
                options["default"] = []
            else:
                options["default"] = setting.default_text()
            if setting.argparse_type:
                options["type"] = setting.parse
            if setting.choices is not None:
                options["choices"] = list(setting.choices)
            else:
                options["metavar"] = setting.metavar
            if setting.default_text() is not None:
                help_text += " (default %(default)s)"
            elif setting.kind is Kind.VALUE and (shown := setting.shown()):
                help_text += f" (default: {shown.replace('`', '')})"
        options["help"] = help_text
        parser.add_argument(setting.flag, **options)


def add_groups(parser: argparse.ArgumentParser, groups: Iterable[Group]) -> None:
    for group in groups:
        add_flags(parser.add_argument_group(group.title, group.description), group.settings)


def values(args: argparse.Namespace, settings: Iterable[Setting[Any]]) -> dict[str, Any]:
    """``{field: value}`` for these settings, each refused with its flag named when wrong."""
    return {setting.field: setting.value(args) for setting in settings}


_HEADER = "| flag | default | meaning |\n|---|---|---|"


def markdown_table(groups: Sequence[Group]) -> str:
    """The docs' flag tables: one per group, one row per flag, in ``--help``'s order."""
    parts = []
    for group in groups:
        rows = [f"**{group.title}**: {group.description}", "", _HEADER]
        for setting in group.settings:
            name = f"{setting.flag} {setting.metavar}" if setting.metavar else setting.flag
            default = setting.shown() or ("off" if setting.kind is Kind.SWITCH else "none")
            meaning = (setting.doc or setting.help).replace("|", "\\|")
            rows.append(f"| `{name}` | {default} | {meaning} |")
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)
