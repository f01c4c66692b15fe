"""The dissection threshold as one value: `Threshold.parse("q0.99")`, `str(t) == "q0.99"`.

Reads nothing, writes nothing, imports nothing but the standard library (the store uses it, so it lives
in `db`, the lowest layer; `ingest.checks` re-exports it for specs and parameter tables). It is the
one parser of the `threshold` text of a spec entry and of runs.params:

- "q<level>", level in (0, 1): the fixed-quantile (PNAS) mode, each unit's `level` activation quantile;
- "iqr": the ICLR information-quality-ratio mode (a level per unit chosen on held-out counts);
- "iclr": the ICLR code's raw-featuremap 0.995 quantile (a fixed quantile: family "quantile").

`db.store.start_run` stores the parsed value in the runs row (threshold_spec, threshold_mode,
threshold_level, interpretable_iou, interpretable_iqr), so SQL views read real columns, not JSON.

    python -c "from db.threshold import Threshold; t = Threshold.parse('iqr'); print(t.mode, t.interpretable_iou)"
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping

Kind = Literal["quantile", "iqr", "iclr"]

ICLR_LEVEL = 0.995  # "iclr": the raw featuremap's 0.995 quantile (the ICLR code's level)
DEFAULT_TEXT = "q0.99"
ACCEPTS = '"q<level>" with level in (0, 1) (e.g. "q0.99"), "iqr" or "iclr"'
# a unit is interpretable when its best IoU exceeds this (and, in iqr mode, its IQR exceeds INTERPRETABLE_IQR)
INTERPRETABLE_IOU = {"quantile": 0.04, "iqr": 0.05}  # PNAS 0.04 (q0.99); ICLR 0.05 (iqr)
INTERPRETABLE_IQR = 0.01


@dataclass(frozen=True)
class Threshold:
    """A threshold mode: `kind` quantile (with `level`), iqr (no level) or iclr (level 0.995)."""

    kind: Kind
    level: float | None = None

    def __post_init__(self) -> None:
        if self.kind == "quantile":
            if not (isinstance(self.level, float) and math.isfinite(self.level) and 0.0 < self.level < 1.0):
                raise ValueError(f"a quantile threshold needs a level in (0, 1), got {self.level!r}")
        elif self.kind == "iclr":
            if self.level != ICLR_LEVEL:
                raise ValueError(f"the iclr threshold's level is {ICLR_LEVEL}, got {self.level!r}")
        elif self.kind == "iqr":
            if self.level is not None:
                raise ValueError(f"the iqr threshold has no level, got {self.level!r}")
        else:
            raise ValueError(f"unknown threshold kind {self.kind!r}")

    @classmethod
    def parse(cls, text: Any) -> "Threshold":
        """'q0.99' | 'iqr' | 'iclr' -> Threshold; anything else raises ValueError (`got ...; allowed: ...`)."""
        if text == "iqr":
            return cls("iqr")
        if text == "iclr":
            return cls("iclr", ICLR_LEVEL)
        if isinstance(text, str) and text.startswith("q"):
            try:
                level = float(text[1:])
            except ValueError:
                level = -1.0
            if math.isfinite(level) and 0.0 < level < 1.0:
                return cls("quantile", level)
        raise ValueError(f"got {text!r}; allowed: {ACCEPTS}")

    def __str__(self) -> str:
        return f"q{self.level!r}" if self.kind == "quantile" else self.kind

    @property
    def mode(self) -> str:
        """The display family the views group by: 'iqr', else 'quantile' (q<level> and iclr)."""
        return "iqr" if self.kind == "iqr" else "quantile"

    @property
    def interpretable_iou(self) -> float:
        """The default IoU above which a unit counts as interpretable in this mode."""
        return INTERPRETABLE_IOU[self.mode]

    def columns(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The runs columns of this threshold; `interpretable_iou` / `interpretable_iqr` in `params`
        (runs.params) override the mode's defaults."""
        p = params or {}
        return {"threshold_spec": str(self), "threshold_mode": self.mode, "threshold_level": self.level,
                "interpretable_iou": _number(p.get("interpretable_iou"), self.interpretable_iou),
                "interpretable_iqr": _number(p.get("interpretable_iqr"), INTERPRETABLE_IQR)}


THRESHOLD_COLUMNS = ("threshold_spec", "threshold_mode", "threshold_level", "interpretable_iou",
                     "interpretable_iqr")


def _number(v: Any, default: float) -> float:
    if isinstance(v, bool):
        return default
    try:
        x = float(v)
    except (TypeError, ValueError):
        return default
    return x if math.isfinite(x) else default


def run_columns(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The threshold columns of a runs row from its params: every column NULL when params hold no
    parsable `threshold` (a run that is not thresholded)."""
    text = (params or {}).get("threshold")
    try:
        t = Threshold.parse(text)
    except ValueError:
        return dict.fromkeys(THRESHOLD_COLUMNS)
    return t.columns(params)
