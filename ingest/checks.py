"""Typed values of a spec entry: what a key accepts, its default, and one phrase when a value is wrong.

Reads nothing, writes nothing, imports no torch. `compute.analyses.params` builds every analysis
kind's parameter table from these; `ingest.spec` checks the options of [[models]] entries with them.

    python -c "from ingest.checks import Int; print(Int(1, 1, 8).validate(0))"
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

# Threshold is re-exported here: the one parser of threshold modes (it lives in db, which the store needs)
from db.threshold import ACCEPTS as THRESHOLD_ACCEPTS, Threshold  # noqa: F401

Check = Callable[[Any], str | None]  # value -> None when fine, else what is wrong (a phrase)


@dataclass(frozen=True)
class Param:
    """One parameter: what it accepts (`check`), its default, a short description of both, and `type`, the
    Python type of the value a run's configuration holds (`compute.analyses.config_type` declares each
    field with it; `None` is added to it when the default is None)."""

    accepts: str  # e.g. "an integer in [1, 4096]"
    check: Check
    default: Any = None
    help: str = ""
    # e.g. int, float, tuple[int, ...], Literal["l2", "l2sq"]; Any only for [[models]] options (ingest.spec),
    # never in an analysis's table (tests/compute/test_config_types.py)
    type: Any = field(default=Any, kw_only=True)

    @property
    def hint(self) -> Any:
        """The declared type of a configuration field holding this parameter (Optional when the default is
        None: the analysis computes that value)."""
        return Optional[self.type] if self.default is None else self.type

    def validate(self, value: Any) -> str | None:
        """None when `value` is acceptable, else a phrase saying what is wrong (without the key)."""
        problem = self.check(value)
        return None if problem is None else f"{problem}; allowed: {self.accepts}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def Int(default: Any, lo: int | None = None, hi: int | None = None, help: str = "") -> Param:
    """An integer in [lo, hi] (either bound may be open-ended)."""
    def check(v: Any) -> str | None:
        if not _is_int(v):
            return f"got {v!r}, not an integer"
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return f"got {v}, out of range"
        return None
    rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
    return Param(f"an integer in {rng}", check, default, help, type=int)


def Float(default: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
          hi_open: bool = False, help: str = "") -> Param:
    """A finite number in the interval (bounds closed unless `lo_open` / `hi_open`)."""
    def check(v: Any) -> str | None:
        if not _is_num(v):
            return f"got {v!r}, not a finite number"
        if lo is not None and (v < lo or (lo_open and v == lo)):
            return f"got {v}, out of range"
        if hi is not None and (v > hi or (hi_open and v == hi)):
            return f"got {v}, out of range"
        return None
    rng = (("(" if lo_open else "[") + ("-inf" if lo is None else f"{lo:g}") + ", "
           + ("inf" if hi is None else f"{hi:g}") + (")" if hi_open or hi is None else "]"))
    return Param(f"a number in {rng}", check, default, help, type=float)  # an int is a float (PEP 484)


def Choice(default: Any, options: tuple[Any, ...], help: str = "") -> Param:
    """One of `options` (its type: the Literal of the options)."""
    def check(v: Any) -> str | None:
        return None if isinstance(v, (str, int, float)) and not isinstance(v, bool) and v in options \
            else f"got {v!r}"
    return Param("one of " + ", ".join(repr(o) for o in options), check, default, help,
                 type=Literal[tuple(options)])  # type: ignore[valid-type]


def Str(default: Any = None, help: str = "", nonempty: bool = True) -> Param:
    """A string (non-empty unless `nonempty=False`)."""
    def check(v: Any) -> str | None:
        if not isinstance(v, str):
            return f"got {v!r}, not a string"
        return "got an empty string" if nonempty and not v.strip() else None
    return Param("a string" if not nonempty else "a non-empty string", check, default, help, type=str)


def StrList(default: Any = (), help: str = "") -> Param:
    """One string or a list of strings. A run keeps the form the spec gave (one name stays a string: the
    canonical JSON of runs.params, and so the run key, differ between "a" and ["a"]); lists are tuples."""
    def check(v: Any) -> str | None:
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) and x for x in items):
            return f"got {v!r}"
        return None
    return Param("a string or a list of strings", check, tuple(default), help, type=str | tuple[str, ...])


def IntList(lo: int = 0, hi: int | None = None, length: int | None = None, help: str = "",
            default: Any = None) -> Param:
    """A list of integers in [lo, hi] (of `length` when given); a run holds it as a tuple."""
    def check(v: Any) -> str | None:
        if not isinstance(v, (list, tuple)) or not all(_is_int(x) for x in v):
            return f"got {v!r}, not a list of integers"
        if length is not None and len(v) != length:
            return f"got {len(v)} integers"
        if any(x < lo or (hi is not None and x > hi) for x in v):
            return f"got {list(v)}, out of range"
        return None
    what = f"{length} integers" if length else "a list of integers"
    return Param(f"{what} in [{lo}, {'inf' if hi is None else hi}]", check, default, help, type=tuple[int, ...])


def ThresholdParam(default: str, help: str = "") -> Param:
    """A threshold mode text that `Threshold.parse` accepts ("q0.99", "iqr", "iclr")."""
    def check(v: Any) -> str | None:
        try:
            Threshold.parse(v)
        except ValueError:
            return f"got {v!r}"
        return None
    return Param(THRESHOLD_ACCEPTS, check, default, help, type=str)  # the text; Threshold.parse(cfg.threshold)
