"""compute/analyses/params.py agrees with the analysis modules: the ACE optimiser's own configuration
(`AceConfig`, also built by benches and tests) has a field for every ace parameter with the table's
default, every default passes its own check, and every spec shipped in the repository parses. (Modules
hold no other copy of the defaults: tests/compute/test_registry.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from compute import spec as specmod
from compute.analyses import params

ROOT = Path(__file__).resolve().parents[2]


def test_ace_config_defaults_are_the_table_defaults() -> None:
    import dataclasses

    from compute.analyses.ace import AceConfig

    fields = {f.name: f.default for f in dataclasses.fields(AceConfig) if f.name != "seed"}
    assert fields == params.defaults("ace")


@pytest.mark.parametrize("kind", list(params.KINDS))
def test_every_default_passes_its_own_check(kind: str) -> None:
    for key, p in params.table(kind).items():
        if p.default is not None:
            assert p.validate(p.default) is None, (kind, key, p.default)


def test_kinds_match_the_spec_and_the_registry() -> None:
    assert set(params.KINDS) == set(specmod.ANALYSIS_KINDS)


@pytest.mark.parametrize("value, ok", [("q0.99", True), ("q0.5", True), ("iqr", True), ("iclr", True),
                                       ("q1", False), ("q0", False), ("qx", False), ("median", False), (0.99, False)])
def test_threshold_forms(value, ok) -> None:
    assert (params.THRESHOLD.validate(value) is None) == ok


def test_booleans_are_not_integers() -> None:
    assert params.KINDS["quantiles"]["topk"].validate(True) is not None


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in [ROOT / "gandissect.toml",
                                                                          *(ROOT / "examples").glob("*.toml")]))
def test_shipped_specs_parse(path: str, monkeypatch) -> None:
    monkeypatch.delenv("GANDISSECT_DB", raising=False)
    s = specmod.load(ROOT / path, check_files=False)
    assert s.analyses
