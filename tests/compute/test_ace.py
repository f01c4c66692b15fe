"""ACE optimisation on tiny random models: an empty change has ACE 0, alpha stays in [0, 1], the objective
reads the intervened locations, a resumed optimisation equals an uninterrupted one, absent concepts fail."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compute.analyses import ace
from compute.jobs.context import Checkpoint
from compute.core.pool import LayerPool
from compute.core.intervene import ConceptAbsentError, block_mean, concept_index, edit_featuremap, finish, location_masks
from ingest.models.progan import load_progan
from ingest.models.village_seg import load_village_seg

LAYER = "layer4"
CFG = ace.AceConfig(epochs=2, steps_per_epoch=1, batch=4, eval_items=4, lr=0.3, l2=0.01, seed=2, batch_size=8)


@pytest.fixture(scope="module")
def setup(tiny_gan: Path, tiny_seg: Path):
    gen, seg = load_progan(str(tiny_gan)).eval(), load_village_seg(str(tiny_seg)).eval()
    pool = ace.build_pool(LayerPool(gen, LAYER, seg, seed=2, device=torch.device("cpu"), probs=True), 12, CFG)
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
            p = seg.probs(finish(gen, LAYER, edit_featuremap(pool.r[n:n + 1], alpha, 0.0, m), pool.z[n:n + 1]))[0, c]
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


def test_penalty_forms() -> None:
    a = torch.tensor([0.6, 0.8, 0.0])
    assert abs(float(ace.penalty(a, "l2")) - 1.0) < 1e-6 and abs(float(ace.penalty(a, "l2sq")) - 1.0) < 1e-6
    b = 2 * a
    assert abs(float(ace.penalty(b, "l2")) - 2.0) < 1e-6 and abs(float(ace.penalty(b, "l2sq")) - 4.0) < 1e-6
    with pytest.raises(ValueError, match="penalty = 'l1'"):
        ace.AceConfig(penalty="l1")


def test_l2sq_penalty_enters_the_loss_and_moves_alpha_differently(setup) -> None:
    gen, seg, pool, c, cands = setup
    init = torch.linspace(0.2, 1, 8)
    strong = {**CFG.__dict__, "l2": 5.0}  # a penalty large enough that its form decides the step
    l2 = ace.optimise_alpha(gen, seg, LAYER, pool, c, init, ace.AceConfig(**strong), cands=cands)
    sq = ace.optimise_alpha(gen, seg, LAYER, pool, c, init, ace.AceConfig(**{**strong, "penalty": "l2sq"}),
                            cands=cands)
    for e, a in zip(sq.epochs, sq.trajectory):
        assert abs(e["loss"] - (-e["effect"] + 5.0 * float((a * a).sum()))) < 1e-4
    for e, a in zip(l2.epochs, l2.trajectory):
        assert abs(e["loss"] - (-e["effect"] + 5.0 * float(a.norm()))) < 1e-4
    assert not torch.allclose(l2.alpha, sq.alpha)


ZOO = Path(__file__).resolve().parents[2] / "ingest" / "zoo"


@pytest.mark.slow
@pytest.mark.skipif(not (ZOO / "village-gan.safetensors").exists(), reason="bundled village-gan not present")
@pytest.mark.parametrize("penalty", ["l2", "l2sq"])
def test_delta_rises_from_the_iou_init_on_the_bundled_model(tmp_path: Path, penalty: str) -> None:
    """On the bundled village-gan (layer4, door), the α optimisation raises δ (evaluated on its fixed
    locations) from the dissection's IoU initialisation, and lowers the loss, with either penalty."""
    import duckdb

    from tests.conftest import run_spec_in, write_spec

    spec = write_spec(tmp_path, f"""
        [store]
        path = "{tmp_path / 'a.duckdb'}"
        [[models]]
        name = "village-gan"
        family = "progan"
        checkpoint = "{ZOO / 'village-gan.safetensors'}"
        dataset = "village"
        [[segmenters]]
        name = "village-seg"
        family = "village"
        checkpoint = "{ZOO / 'village-seg.safetensors'}"
        [[analyses]]
        name = "dissect"
        kind = "dissect"
        models = ["village-gan"]
        layers = ["layer4"]
        segmenter = "village-seg"
        samples = 200
        seed = 1
        [[analyses]]
        name = "ace"
        kind = "ace"
        models = ["village-gan"]
        layers = ["layer4"]
        segmenter = "village-seg"
        samples = 100
        seed = 1
        concepts = ["door"]
        epochs = 4
        steps_per_epoch = 5
        batch = 16
        eval_items = 48
        penalty = "{penalty}"
        """)
    outcomes = run_spec_in(tmp_path, spec)
    assert all(o.state == "done" for o in outcomes), [(o.job.analysis.name, o.state, o.error) for o in outcomes]
    with duckdb.connect(str(tmp_path / "a.duckdb"), read_only=True) as con:
        rows = con.execute("select epoch, effect, loss from ace_epochs order by epoch").fetchall()
        params = con.execute("select params from runs where analysis = 'ace'").fetchone()[0]
    assert f'"penalty": "{penalty}"' in params or f'"penalty":"{penalty}"' in params
    (_, d0, loss0), (_, d_end, loss_end) = rows[0], rows[-1]
    print(f"penalty {penalty}: delta per epoch {[round(r[1], 4) for r in rows]}")
    assert d_end > d0, rows
    assert loss_end < loss0, rows
