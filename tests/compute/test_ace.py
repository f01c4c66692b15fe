"""ACE optimisation on tiny random models: an empty change has ACE 0, alpha stays in [0, 1], the objective
reads the intervened locations, a resumed optimisation equals an uninterrupted one, absent concepts fail."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compute.analyses import ace
from compute.context import Checkpoint
from compute.intervene import ConceptAbsentError, block_mean, concept_index, edit_featuremap, finish, location_masks
from ingest.models.progan import load_progan
from ingest.models.village_seg import load_village_seg

LAYER = "layer4"
CFG = ace.AceConfig(epochs=2, steps_per_epoch=1, batch=4, eval_items=4, lr=0.3, l2=0.01, seed=2, batch_size=8)


@pytest.fixture(scope="module")
def setup(tiny_gan: Path, tiny_seg: Path):
    gen, seg = load_progan(str(tiny_gan)).eval(), load_village_seg(str(tiny_seg)).eval()
    pool = ace.build_pool(gen, seg, LAYER, seed=2, n=12, cfg=CFG, device=torch.device("cpu"))
    c = concept_index(seg, "tree")
    cands = ace.candidates(gen, seg, LAYER, pool, c, CFG)
    return gen, seg, pool, c, cands


def test_pool_and_candidates(setup) -> None:
    gen, seg, pool, c, (rem, ins) = setup
    assert pool.r.shape == (12, 8, 8, 8) and pool.cover.shape == (12, len(seg.concepts), 8, 8)
    assert rem.shape[0] > 0 and bool((pool.cover[rem[:, 0], c, rem[:, 1], rem[:, 2]] >= CFG.presence).all())
    if ins.shape[0]:
        assert bool((pool.cover[ins[:, 0], c, ins[:, 1], ins[:, 2]] == 0).all())


def test_ace_of_an_empty_change_is_zero(setup) -> None:
    gen, seg, pool, c, (rem, ins) = setup
    zero = torch.zeros(8)
    with torch.no_grad():
        d = ace.effect(gen, seg, LAYER, pool, c, zero, rem[:5], rem[5:8], (0.5, 0.5), 0.3)
    assert abs(float(d)) < 1e-5


def test_objective_reads_the_intervened_location(setup) -> None:
    gen, seg, pool, c, (rem, _) = setup
    items = rem[:3]
    alpha = torch.full((8,), 0.7)
    with torch.no_grad():
        got = ace._scores(gen, seg, LAYER, pool, c, alpha, items, 0.0)
    for j, (n, y, x) in enumerate(items.tolist()):
        m = location_masks(8, 8, torch.tensor([[y, x]]))
        with torch.no_grad():
            p = seg.probs(finish(gen, LAYER, edit_featuremap(pool.r[n:n + 1], alpha, 0.0, m)))[0, c]
        assert abs(float(got[j]) - float(p[8 * y:8 * y + 8, 8 * x:8 * x + 8].mean())) < 1e-5
    assert block_mean(torch.ones(1, 64, 64), 8, 8).shape == (1, 8, 8)


def test_alpha_stays_in_unit_interval_and_trajectory_is_kept(setup) -> None:
    gen, seg, pool, c, cands = setup
    init = torch.linspace(0, 1, 8)
    res = ace.optimise_alpha(gen, seg, LAYER, pool, c, init, CFG, cands=cands)
    assert len(res.trajectory) == CFG.epochs + 1 and torch.equal(res.trajectory[0], init)
    for a in res.trajectory:
        assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert [e["epoch"] for e in res.epochs] == [0, 1, 2]
    assert not torch.equal(res.alpha, init), "a large learning rate must move alpha"
    for e in res.epochs:
        assert abs(e["loss"] - (-e["effect"] + CFG.l2 * e["alpha_l2"])) < 1e-5


def test_resumed_optimisation_equals_uninterrupted(setup, tmp_path: Path) -> None:
    gen, seg, pool, c, cands = setup
    init = torch.full((8,), 0.5)
    full = ace.optimise_alpha(gen, seg, LAYER, pool, c, init, CFG, cands=cands)
    ckpt = Checkpoint(tmp_path, "a")
    half = ace.AceConfig(**{**CFG.__dict__, "epochs": 1})
    ace.optimise_alpha(gen, seg, LAYER, pool, c, init, half, ckpt, cands=cands)
    resumed = ace.optimise_alpha(gen, seg, LAYER, pool, c, init, CFG, ckpt, cands=cands)
    assert torch.allclose(resumed.alpha, full.alpha, atol=1e-6)
    assert [round(e["effect"], 6) for e in resumed.epochs] == [round(e["effect"], 6) for e in full.epochs]


def test_absent_concept_says_no_optimisation_is_possible(setup) -> None:
    gen, seg, pool, _, _ = setup
    sky = concept_index(seg, "sky")  # the tiny random segmenter never labels sky
    assert float(pool.cover[:, sky].sum()) == 0
    with pytest.raises(ConceptAbsentError, match="'sky' is absent from every one of the 12 samples of seed 2: "
                                                 "no alpha optimisation is possible"):
        ace.optimise_alpha(gen, seg, LAYER, pool, sky, torch.zeros(8), CFG)
