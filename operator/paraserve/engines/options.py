"""The options a plan decides, and finding them again among a user's extra engine arguments.

Both engines parse with argparse, which also accepts ``--flag=value`` and any unambiguous
prefix of an option (``--tensor-parallel`` for ``--tensor-parallel-size``, ``-t`` for
``-tp``); vLLM also reads underscores as dashes. An extra argument is matched the same ways,
so a spelling the engine would take as one of the plan's options is found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Owned:
    """An option whose value comes from the plan: every spelling of it, and from what."""

    flags: tuple[str, ...]
    source: str  # what in the spec or plan decides it, for the message
    takes_value: bool = True
    per_rank: bool = False  # differs between the ranks of a replica (node rank, headless)

    @property
    def flag(self) -> str:
        return self.flags[0]


@dataclass(frozen=True)
class Rendered:
    """One option as rendered for a rank."""

    owned: Owned
    value: str | None = None

    def argv(self) -> list[str]:
        return [self.owned.flag] if self.value is None else [self.owned.flag, self.value]

    def text(self) -> str:
        return " ".join(self.argv())


@dataclass(frozen=True)
class Occurrence:
    """An owned option found among the extra arguments, as the user wrote it."""

    owned: Owned
    text: str
    value: str | None


def _name_and_value(token: str) -> tuple[str, str | None]:
    if "=" in token:
        name, value = token.split("=", 1)
        return name, value
    return token, None


def _normalise(name: str, underscores: bool) -> str:
    if underscores and name.startswith("--"):
        return "--" + name[2:].replace("_", "-")
    return name


def _is_option(token: str) -> bool:
    # A negative number is a value, not an option.
    return token.startswith("-") and len(token) > 1 and not token[1:2].isdigit()


def matches(name: str, owned: Owned, exact: frozenset[str]) -> bool:
    """``name`` selects ``owned``: one of its spellings, or a prefix argparse would expand.

    ``exact`` holds the engine's other option names: a name that is one of them exactly is
    that option, not an abbreviation.
    """
    if name in owned.flags:
        return True
    if name in exact:
        return False
    # argparse expands a unique prefix of a long option, and of a short one (`-t` for `-tp`).
    if len(name) < (4 if name.startswith("--") else 2):
        return False
    long_ = name.startswith("--")
    return any(flag.startswith(name) and flag.startswith("--") == long_ for flag in owned.flags)


def find(
    args: Sequence[str],
    owned: Sequence[Owned],
    *,
    underscores: bool = False,
    exact: frozenset[str] = frozenset(),
) -> list[Occurrence]:
    """Every owned option among ``args``, in order, with the value the engine would read."""
    found: list[Occurrence] = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not _is_option(token):
            continue
        name, value = _name_and_value(token)
        name = _normalise(name, underscores)
        hit = next((o for o in owned if matches(name, o, exact)), None)
        if hit is None:
            continue
        text = token
        if hit.takes_value and value is None and i < len(args) and not _is_option(args[i]):
            value = args[i]
            text = f"{token} {value}"
            i += 1
        found.append(Occurrence(hit, text, value))
    return found


def conflict_message(occurrence: Occurrence, rendered: Rendered | None) -> str:
    """One line naming the extra argument and what the plan renders in its place."""
    owned = occurrence.owned
    said = f"engine.args {occurrence.text!r}"
    if owned.per_rank:
        sets = f"the operator sets {owned.flag} per rank, from {owned.source}"
        return f"{said} contradicts the plan: {sets}"
    if rendered is None:
        return f"{said} contradicts {owned.source}"
    if occurrence.value == rendered.value or (rendered.value is None and not owned.takes_value):
        return (
            f"{said} repeats {rendered.text()!r}, which the operator renders from"
            f" {owned.source}: leave it out"
        )
    return f"{said} contradicts {owned.source}: the operator renders {rendered.text()!r}"
