"""Diagnosis and repair on the bundled village-gan (issue 8): the watermark units are found and repaired.

A dissection of layer5 (2000 samples, as in the demo spec: the watermark-IoU "manual" set), per-unit realism scores
(6000 samples, top 5 %, against 2000 rendered scenes) and a repair of layer5 (1000 samples, 6-unit
sets, 3 random draws, Fréchet distance against watermark-free rendered scenes), into a temporary store.
The README's diagnosis table comes from the same analyses at the demo spec's sizes.
"""
from __future__ import annotations

import json

import pytest

from db import store as dbstore
from tests.helpers import VILLAGE_GAN, VILLAGE_SEG, analysis, run_spec_in, write_spec_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("diagnosis")
    on = dict(layers=["layer5"], segmenter="village-seg")
    path = write_spec_of(d, store=d / "v.duckdb", models=[VILLAGE_GAN], segmenters=[VILLAGE_SEG], analyses=[
        analysis("dissect", "dissect", "village-gan", **on, samples=2000, seed=1),
        analysis("realism", "realism", "village-gan", **on, samples=6000, seed=2),
        analysis("repair", "repair", "village-gan", **on, samples=1000, seed=3, n_units=6, draws=3,
                 manual="concept:watermark", real_exclude=["watermark"])])
    out = run_spec_in(d, path)
    assert [o.state for o in out] == ["done"] * 3, [o.error for o in out]
    return str(d / "v.duckdb")


def _sets(store: str):
    df = dbstore.read("select unit_set, n_units, fd_before, fd_after, fd_after_std, units from repair_latest", path=store)
    return {r["unit_set"]: r for r in df.iter_rows(named=True)}


def test_watermark_units_rank_among_the_worst_realism_scores(store: str) -> None:
    manual = json.loads(_sets(store)["manual"]["units"])
    assert len(manual) >= 3  # units with watermark IoU >= 0.04
    worst = dbstore.read("select unit from unit_realism_latest where layer = 'layer5' order by worst_rank, unit limit 20",
                         path=store)["unit"].to_list()
    assert worst[0] in manual  # the least realistic unit of the layer is a watermark unit
    recall20 = len(set(worst) & set(manual)) / len(manual)
    assert recall20 >= 0.5, recall20  # chance: 20 of 64 units -> 0.31
    pr = dbstore.read("select precision, recall from realism_flag_pr_latest where k = 20", path=store)
    assert pr["recall"][0] == pytest.approx(recall20)


def test_ablating_watermark_units_removes_watermark_and_improves_the_distance(store: str) -> None:
    s = _sets(store)
    before = s["manual"]["fd_before"]
    assert s["manual"]["fd_after"] < before and s["union"]["fd_after"] < before
    wm = dbstore.read("select unit_set, fraction_before, fraction_after from repair_concepts_latest "
                      "where concept = 'watermark'", path=store)
    change = {r["unit_set"]: r["fraction_after"] / r["fraction_before"] - 1 for r in wm.iter_rows(named=True)}
    assert change["manual"] <= -0.2 and change["union"] <= -0.2, change  # README: -31 % and -47 %
    assert change["random"] > change["manual"] + 0.1, change


def test_random_ablation_does_not_repair(store: str) -> None:
    s = _sets(store)
    assert s["random"]["fd_after"] > s["random"]["fd_before"]
    assert s["random"]["fd_after"] > s["manual"]["fd_after"]


def test_generated_vs_real_coverage_lists_every_concept(store: str) -> None:
    cov = dbstore.read("select concept, generated_fraction, real_fraction from concept_coverage_latest", path=store)
    assert cov.height == 14 and cov["real_fraction"].min() > 0
