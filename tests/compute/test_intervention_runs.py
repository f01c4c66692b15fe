"""The runner end to end on tiny models: dissect -> ace -> ablate / insert / trace write rows that pass the
store audits and agree with each other; a non-held-out ablation set is refused with a clear message."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

from compute import runner, spec as specmod
from compute.jobs.tally import LocalEngine
from db import store
from tests.conftest import run_spec_in, write_spec
from tests.helpers import intervention_analyses, model, segmenter, spec_text

def body(d: Path, gan: Path, seg: Path, ablate_seed: int, insert_batch: int = 32) -> str:
    """The spec: dissect -> ace -> ablate / insert / trace of the tiny generator at layer4."""
    return spec_text(d / "store.duckdb", models=[model("tiny", gan)], segmenters=[segmenter("tiny-seg", seg)],
                     analyses=intervention_analyses(
                         "tiny", "tiny-seg", "layer4",
                         dissect=dict(samples=16, seed=2, batch_size=16),
                         ace=dict(samples=10, seed=2, concepts=["tree", "watermark"], epochs=1, steps_per_epoch=1,
                                  batch=4, eval_items=4, lr=0.05, l2=0.01),
                         ablate=dict(samples=6, seed=ablate_seed, concepts=["tree"], n_max=3, draws=2, effect_units=3,
                                     insert_locations=1),
                         insert=dict(samples=2, seed=3, concepts=["tree"], units=3, batch_size=insert_batch),
                         trace=dict(samples=2, seed=3, concepts=["tree"], units=3, location=[2, 3])))


@pytest.fixture(scope="module")
def computed(tmp_path_factory, tiny_gan: Path, tiny_seg: Path) -> tuple[Path, str]:
    d = tmp_path_factory.mktemp("intervene")
    path = write_spec(d, body(d, tiny_gan, tiny_seg, 3))
    out = run_spec_in(d, path)
    assert [o.state for o in out] == ["done"] * 5, [o.error for o in out]
    return path, str(d / "store.duckdb")


def q(db: str, sql: str):
    return store.read(sql, path=db)


def test_rows_pass_every_store_audit(computed) -> None:
    _, db = computed
    assert store.run_audits(db) == []
    counts = {t: int(q(db, f"select count(*) n from {t}")["n"][0]) for t in (
        "ace_alpha", "ace_epochs", "ace_trajectory", "ablation_curves", "causal_effects",
        "insertion_contexts", "insertion_maps", "trace_effects")}
    assert counts["ace_alpha"] == 2 * 8 and counts["ace_epochs"] == 2 * 2 and counts["ace_trajectory"] == 2 * 2 * 8
    assert counts["ablation_curves"] == 3 * 4 and counts["causal_effects"] == 3
    assert counts["insertion_maps"] == 2 * 64 and counts["insertion_contexts"] > 0
    assert counts["trace_effects"] == 2 * 16 * 16 + 2 * 32 * 32 + 2 * 64 * 64


def test_ace_rows(computed) -> None:
    _, db = computed
    df = q(db, "select concept, max(alpha_init) m, min(alpha) lo, max(alpha) hi from ace_alpha group by concept")
    assert sorted(df["concept"].to_list()) == ["tree", "watermark"]
    assert all(abs(m - 1) < 1e-9 for m in df["m"].to_list())  # IoU init: the best unit starts at 1
    params = json.loads(q(db, "select params from runs where name = 'a'")["params"][0])
    assert {"l2", "lr", "epochs", "steps_per_epoch", "batch", "seed"} <= set(params)


def test_ablation_curves_and_causal_effects_agree(computed) -> None:
    _, db = computed
    cur = q(db, "select ranking, n_units, remaining, remaining_std, draws from ablation_curves order by all")
    assert set(cur["ranking"].to_list()) == {"ace", "iou", "random"}
    assert all(abs(r - 1) < 1e-12 for r in cur.filter(cur["n_units"] == 0)["remaining"].to_list())
    rnd = cur.filter(cur["ranking"] == "random")
    assert set(rnd["draws"].to_list()) == {2} and rnd["remaining_std"].null_count() == 0
    eff = q(db, "select unit_set, n_units, units, ace, ablation, insertion from causal_effects order by unit_set")
    assert eff["unit_set"].to_list() == ["ace_top3", "iou_top3", "random_top3"]
    for row in eff.iter_rows(named=True):
        assert abs(row["ace"] - (row["ablation"] + row["insertion"])) < 1e-12
    at3 = {r["ranking"]: r["remaining"] for r in cur.filter(cur["n_units"] == 3).iter_rows(named=True)}
    by = {r["unit_set"]: r for r in eff.iter_rows(named=True)}
    assert abs(by["ace_top3"]["ablation"] - (1 - at3["ace"])) < 1e-9
    assert abs(by["random_top3"]["ablation"] - (1 - at3["random"])) < 1e-9
    top = q(db, "select unit from ace_alpha a join runs r using (run_key) where r.name = 'a' and a.concept = 'tree' "
                "order by alpha desc limit 3")["unit"].to_list()
    assert sorted(json.loads(by["ace_top3"]["units"])) == sorted(top)


def test_insertion_contexts_summarise_the_maps(computed) -> None:
    _, db = computed
    maps = q(db, "select context, count(*) n, avg(effect) e from insertion_maps where context is not null "
                 "group by context")
    ctx = q(db, "select context, locations, effect from insertion_contexts")
    by = {r["context"]: r for r in ctx.iter_rows(named=True)}
    for r in maps.iter_rows(named=True):  # tiny segmenter: no parts, so a map's context is the object
        assert by[r["context"]]["locations"] == r["n"] and abs(by[r["context"]]["effect"] - r["e"]) < 1e-9


def test_trace_effects_start_near_the_insertion(computed) -> None:
    _, db = computed
    df = q(db, "select target_layer, y, x, effect from trace_effects where target_layer = 'layer5'")
    near = df.filter((df["y"] >= 3) & (df["y"] <= 6) & (df["x"] >= 5) & (df["x"] <= 8))
    far = df.filter((df["y"] < 3) | (df["y"] > 6) | (df["x"] < 5) | (df["x"] > 8))
    assert near["effect"].min() > 0 and far["effect"].max() == 0


def test_ablation_on_the_ace_samples_is_refused(computed, tmp_path: Path, tiny_gan: Path, tiny_seg: Path) -> None:
    path, db = computed
    d = path.parent
    bad = write_spec(d, body(d, tiny_gan, tiny_seg, 2), name="bad.toml")
    cwd = os.getcwd()
    os.chdir(d)
    try:
        out = runner.run(specmod.load(bad), only="ab", quiet=True, echo=lambda m: None)
    finally:
        os.chdir(cwd)
    assert out[0].state == "failed"
    assert "seed 2 is the ACE run's seed; the ablation set must be held out" in out[0].error


class _EveryBatch(LocalEngine):
    """The local engine checkpointing after every batch."""

    def run_pass(self, job, ctx, *args):
        ctx.checkpoint_every = 1
        return super().run_pass(job, ctx, *args)


def test_a_killed_insertion_map_resumes_to_the_uninterrupted_rows(tmp_path: Path, tiny_gan: Path, tiny_seg: Path,
                                                                    monkeypatch) -> None:
    """insert's effects pass (a LayerPool stream) killed after its first batch resumes from the checkpoint:
    only the second batch runs again, and the rows equal a recompute from scratch."""
    from compute.analyses import insert

    spec = write_spec(tmp_path, body(tmp_path, tiny_gan, tiny_seg, 3, insert_batch=1))
    calls = []
    real = insert.insertion_effects

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    def run(**kw):
        with contextlib.chdir(tmp_path):
            return runner.run(specmod.load(spec), quiet=True, echo=lambda m: None, engine=_EveryBatch(), **kw)

    monkeypatch.setattr(insert, "insertion_effects", dying)
    with pytest.raises(KeyboardInterrupt):
        run()
    calls.clear()
    monkeypatch.setattr(insert, "insertion_effects", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    assert [o.state for o in run(only="ins")] == ["done"]
    assert len(calls) == 1  # the first batch came from the checkpoint
    sql = "select * exclude (run_key) from insertion_maps order by all"
    resumed = store.read(sql, path=str(tmp_path / "store.duckdb"))
    assert [o.state for o in run(only="ins", force=True)] == ["done"]
    assert len(calls) == 3 and resumed.height == 2 * 64
    assert resumed.equals(store.read(sql, path=str(tmp_path / "store.duckdb")))
