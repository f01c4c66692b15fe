"""The one base class of "bad input" errors: whatever the user must change (a spec, an argument, a file).

Reads nothing, writes nothing. The CLI (`compute/cli.py`) answers every `BadInput` with one line on
stderr and exit status 2; anything else is exit status 1. Error types elsewhere subclass it
(`SpecError`, `UsageError`, `GuardError`, `StorePathError`, `EditError`, ...).

    from db.errors import BadInput, did_you_mean
    raise BadInput("spec.toml: analyses[0]: key 'treshold': unknown" + did_you_mean("treshold", ["threshold"]))
"""
from __future__ import annotations

import difflib
from typing import Iterable


class BadInput(ValueError):
    """Bad input: the message is one line naming what to change; the CLI exits with status 2."""


def is_bad_input(e: BaseException) -> bool:
    """Whether `e` means the user's input is wrong (exit status 2; a failed run's `bad_input`): a
    `BadInput`, or a file that is not there. The one place that decides it."""
    return isinstance(e, (BadInput, FileNotFoundError))


def nearest(word: str, options: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The option closest to `word` (difflib ratio >= cutoff), else None."""
    found = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=cutoff)
    return found[0] if found else None


def did_you_mean(word: str, options: Iterable[str], cutoff: float = 0.6) -> str:
    """'; did you mean 'x'?' when an option is close to `word`, else ''."""
    best = nearest(word, options, cutoff)
    return f"; did you mean {best!r}?" if best is not None else ""


def one_line(text: str, limit: int = 500) -> str:
    """`text` on one line (newlines and runs of spaces collapsed), at most `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
