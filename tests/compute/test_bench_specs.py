"""compute/bench/specs.py: the one spec builder of the benches (`--only dissect`'s child runs and the scale
sweep) writes a spec that loads with the names, keys and paths it was given, quotes paths that need it,
and leaves out the keys given as None."""
from __future__ import annotations

from pathlib import Path

import pytest

from compute import spec as specmod
from compute.bench import main, specs

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("method", ["one-pass", "two-pass", None])
def test_dissect_spec_loads_as_given(tmp_path: Path, method: str | None, monkeypatch) -> None:
    monkeypatch.delenv("GANDISSECT_DB", raising=False)
    store = tmp_path / 'we"ird\\dir' / "s.duckdb"  # a quote and a backslash survive TOML
    p = tmp_path / "bench.toml"
    p.write_text(specs.dissect_spec(store, main.GEN, main.SEG, 48, method=method))
    s = specmod.load(p)
    assert s.store == str(store)
    (m,) = s.models
    assert (m.name, m.family, m.checkpoint, m.dataset) == ("bench-gan", "progan", str(main.GEN), "")  # no dataset key
    (a,) = s.analyses
    assert (a.name, a.kind, a.models, a.segmenter, a.samples, a.seed) == (
        "bench-dissect", "dissect", ("bench-gan",), "bench-seg", 48, 1)
    assert a.layers == "all" and a.threshold == "q0.99"
    assert dict(a.params) == {"batch_size": specs.BATCH, **({"method": method} if method else {})}


def test_toml_values_round_trip() -> None:
    import tomllib

    value = {"s": 'a"b\\c', "u": "/tmp/\U0001F600x/é", "i": 3, "f": 0.5, "b": True, "l": [1, "x"], "t": {"k": [2.5]}}
    assert tomllib.loads(f"v = {specs.toml_value(value)}")["v"] == value
    with pytest.raises(TypeError):
        specs.toml_value(None)
