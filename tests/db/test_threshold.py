"""db.threshold.Threshold: the one parser of threshold modes, and the runs columns it writes."""
from __future__ import annotations

import pytest

from db.threshold import INTERPRETABLE_IQR, THRESHOLD_COLUMNS, Threshold, run_columns


@pytest.mark.parametrize("text, kind, mode, level", [
    ("q0.99", "quantile", "quantile", 0.99), ("q0.5", "quantile", "quantile", 0.5),
    ("q0.995", "quantile", "quantile", 0.995), ("iqr", "iqr", "iqr", None), ("iclr", "iclr", "quantile", 0.995),
])
def test_parse_and_str_round_trip(text: str, kind: str, mode: str, level: float | None) -> None:
    t = Threshold.parse(text)
    assert (t.kind, t.mode, t.level) == (kind, mode, level)
    assert str(t) == text
    assert Threshold.parse(str(t)) == t


@pytest.mark.parametrize("bad", ["q1", "q0", "q1.5", "q-0.1", "qx", "q", "IQR", "0.99", "", None, 0.99, "qnan",
                                 "qinf"])
def test_parse_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="allowed: \"q<level>\""):
        Threshold.parse(bad)


def test_constructor_checks_the_level() -> None:
    with pytest.raises(ValueError):
        Threshold("quantile", 1.0)
    with pytest.raises(ValueError):
        Threshold("iqr", 0.5)
    with pytest.raises(ValueError):
        Threshold("iclr", 0.99)


def test_interpretable_defaults_and_overrides() -> None:
    assert Threshold.parse("q0.99").interpretable_iou == 0.04
    assert Threshold.parse("iclr").interpretable_iou == 0.04
    assert Threshold.parse("iqr").interpretable_iou == 0.05
    cols = run_columns({"threshold": "iqr", "interpretable_iou": 0.07})
    assert cols == {"threshold_spec": "iqr", "threshold_mode": "iqr", "threshold_level": None,
                    "interpretable_iou": 0.07, "interpretable_iqr": INTERPRETABLE_IQR}
    assert run_columns({"threshold": "q0.9", "interpretable_iou": "x"})["interpretable_iou"] == 0.04
    assert tuple(cols) == THRESHOLD_COLUMNS


@pytest.mark.parametrize("params", [None, {}, {"lambda": 0.1}, {"threshold": "nonsense"}])
def test_runs_without_a_threshold_get_null_columns(params: dict | None) -> None:
    assert run_columns(params) == dict.fromkeys(THRESHOLD_COLUMNS)


def test_the_spec_parameter_uses_it() -> None:
    from compute.analyses.params import THRESHOLD
    assert THRESHOLD.validate("q0.99") is None and THRESHOLD.validate("iclr") is None
    assert THRESHOLD.validate("q2") == "got 'q2'; allowed: \"q<level>\" with level in (0, 1) (e.g. \"q0.99\"), " \
                                       "\"iqr\" or \"iclr\""
