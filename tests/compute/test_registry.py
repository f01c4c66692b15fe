"""The typed registry of analysis kinds (compute/analyses/__init__.py) is the one list of kinds: the spec,
the parameter tables and the modules agree with it; the runner plans in its dependency order (graphlib),
builds each run's frozen configuration from it, and refuses a table a kind does not declare."""
from __future__ import annotations

import dataclasses
import graphlib
import json
from pathlib import Path

import pytest

from compute import analyses, runner, spec as specmod
from compute.analyses import params
from compute.spec import canonical
from db import store
from tests.compute.test_config_types import typed_fields

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(str(p.relative_to(ROOT)) for p in [ROOT / "gandissect.toml", *(ROOT / "examples").glob("*.toml")])


def test_every_list_of_kinds_is_the_registry() -> None:
    assert list(params.KINDS) == list(analyses.KINDS)
    assert list(specmod.ANALYSIS_KINDS) == list(analyses.KINDS)
    assert set(specmod.NO_SEGMENTER_KINDS) == {k.name for k in analyses.KINDS.values() if not k.segmenter}
    for name, k in analyses.KINDS.items():
        assert k.name == name and k.module == f"compute.analyses.{name}"
        assert {*k.needs, *k.optional_needs} <= set(analyses.KINDS), name
        assert set(k.unrecorded) <= set(params.KINDS[name]), name  # unrecorded keys are real parameters


@pytest.mark.parametrize("name", list(analyses.KINDS))
def test_a_module_agrees_with_its_kind(name: str) -> None:
    """A module implements `compute`, and `resolve` exactly when the kind declares resolved keys; it
    carries no copy of the registry's facts (code version, needs, tables) or of the parameter tables'
    defaults: the registry and params.py are the one place for them, and runs read `job.config`."""
    k = analyses.kind(name)
    mod = analyses.module(name)
    assert callable(mod.compute)
    assert hasattr(mod, "resolve") == k.resolves, name
    copies = [c for c in ("CODE_VERSION", "NEEDS", "OPTIONAL_NEEDS", "TABLES", "DEFAULTS") if hasattr(mod, c)]
    assert not copies, f"{k.module} still defines {', '.join(copies)}: the registry holds them"


def test_the_registry_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, compute.analyses, compute.spec; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def _depth(kind: str) -> int:  # the runner's former hand-written order, kept here as the reference
    k = analyses.kind(kind)
    return 1 + max((_depth(n) for n in (*k.needs, *k.optional_needs)), default=0)


def test_generations_are_the_former_depths() -> None:
    gen = runner.kind_generations()
    assert {k: g + 1 for k, g in gen.items()} == {k: _depth(k) for k in analyses.KINDS}
    assert gen["dissect"] == 0 and gen["ace"] == 1 and gen["repair"] == 1 and gen["insert"] == 2


def test_a_circle_among_needs_is_refused() -> None:
    a = analyses.Kind("a", "m.a", "1", "", (), needs=("b",))
    b = analyses.Kind("b", "m.b", "1", "", (), optional_needs=("a",))
    with pytest.raises(graphlib.CycleError):
        runner.kind_generations({"a": a, "b": b})


@pytest.mark.parametrize("path", SHIPPED)
def test_config_records_exactly_the_run_params(path: str, monkeypatch) -> None:
    """job.config is frozen, reads every parameter by attribute, each of its declared type, and its recorded
    part is runs.params."""
    monkeypatch.delenv("GANDISSECT_DB", raising=False)
    jobs = runner.plan(specmod.load(ROOT / path))
    assert jobs
    for job in jobs:
        cfg = job.config
        assert canonical(cfg.recorded()) == job.params
        assert cfg.kind == job.analysis.kind and cfg.samples == job.analysis.samples
        assert job.code_version == analyses.kind(job.analysis.kind).version
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.samples = 1  # type: ignore[misc]
        for key in params.table(job.analysis.kind):
            getattr(cfg, key)  # every parameter has an attribute
        for key, (value, tp) in typed_fields(cfg).items():  # ... of its declared type
            assert analyses.conforms(value, tp), (path, job.analysis.name, key, value, tp)


def test_config_fills_unrecorded_keys_without_recording_them() -> None:
    cfg = analyses.config("dissect", {"kind": "dissect", "samples": 10, "topk": 5})
    assert cfg.holdout_samples is None and cfg.method is None and cfg.null_block == 8  # table defaults
    assert cfg.recorded() == {"kind": "dissect", "samples": 10, "topk": 5}
    with pytest.raises(KeyError, match="no key"):
        analyses.config("dissect", {"nonsense": 1})


def test_an_undeclared_table_fails_the_run_and_publishes_nothing(quantile_spec: Path, monkeypatch) -> None:
    mod = analyses.module("quantiles")
    real = mod.compute

    def compute(job, ctx):
        return {**real(job, ctx), "unit_iou": []}

    monkeypatch.setattr(mod, "compute", compute)
    spec = specmod.load(quantile_spec)
    lines: list[str] = []
    [out] = runner.run(spec, quiet=True, echo=lines.append)
    assert out.state == "failed" and not out.bad_input
    assert "UndeclaredTableError" in out.error and "unit_iou" in out.error and "does not declare" in out.error
    runs = store.read("select status, params from runs", path=spec.store)
    assert runs["status"].to_list() == ["failed"]
    assert store.read("select count(*) n from unit_quantiles", path=spec.store)["n"][0] == 0
    assert json.loads(runs["params"][0])["topk"] == 20


def test_plan_puts_each_run_after_the_runs_it_reads(tmp_path: Path, tiny_gan: Path, tiny_seg: Path) -> None:
    """Declared in reverse dependency order, the plan still runs dissect, then ace, then trace / insert
    (the spec's order kept within one generation), and each job's deps are the planned runs' keys."""
    from tests.helpers import analysis, model, segmenter, write_spec_of

    kw = {"segmenter": "s", "layers": ["layer4"], "samples": 8, "concepts": ["tree"]}
    path = write_spec_of(tmp_path, store=tmp_path / "s.duckdb", models=[model("g", tiny_gan)],
                         segmenters=[segmenter("s", tiny_seg)],
                         analyses=[analysis("t", "trace", "g", **kw), analysis("i", "insert", "g", **kw),
                                   analysis("a", "ace", "g", **kw), analysis("d", "dissect", "g", **kw)])
    jobs = runner.plan(specmod.load(path))
    assert [j.analysis.name for j in jobs] == ["d", "a", "t", "i"]
    key = {j.analysis.name: j.run_key for j in jobs}
    assert jobs[1].deps == (("dissect", key["d"]),)
    assert jobs[2].deps == jobs[3].deps == (("ace", key["a"]),)
