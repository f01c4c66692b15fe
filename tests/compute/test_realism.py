"""Realism scores, concept coverage and repair: exact computations and end-to-end runs on tiny models."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from compute import runner, spec as specmod
from compute.analyses.realism import Coverage, real_exclude, unit_scores
from compute.analyses.repair import flag_pr, unit_sets
from compute.core.frechet import feature_stats, frechet_distance
from db import store
from tests.conftest import write_spec


def test_coverage_streaming_equals_batch_and_round_trips() -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(10, 4, 6, 6, generator=g) > 0.8
    masks[:, 3] = False
    masks[2, 3, 0, 0] = True
    cov = Coverage(4)
    for s in range(0, 10, 3):
        cov.add(masks[s:s + 3])
    assert torch.equal(cov.pixels, masks.sum((0, 2, 3)).double())
    assert torch.equal(cov.present, masks.flatten(2).any(2).sum(0).double())
    again = Coverage(4)
    again.load_state_dict(cov.state_dict())
    rows = again.rows(["none", "a", "b", "c"], "real")
    assert [r["concept"] for r in rows] == ["a", "b", "c"]
    assert rows[2]["presence"] == pytest.approx(0.1) and rows[2]["pixel_fraction"] == pytest.approx(1 / 360)
    assert all(r["n_images"] == 10 for r in rows)
    strict = Coverage(4, min_share=2 / 36)  # at least 2 of an image's 36 pixels
    strict.add(masks)
    assert torch.equal(strict.present, (masks.flatten(2).sum(2) >= 2).sum(0).double())
    assert strict.present[3] == 0 and torch.equal(strict.pixels, cov.pixels)


def test_unit_scores_equal_the_frechet_distance_of_each_units_top_images() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 3))
    acts = torch.from_numpy(rng.normal(size=(60, 4))).float()
    real = rng.normal(size=(80, 3)) + 0.5
    scores, tops = unit_scores(acts, feats, *feature_stats(real), n_top=12)
    for u in range(4):
        top = np.argsort(-acts[:, u].numpy(), kind="stable")[:12]
        assert tops[u] == top.tolist()
        assert scores[u] == pytest.approx(frechet_distance(feats[top], real), rel=1e-9)


def test_a_unit_whose_top_images_are_odd_scores_worst() -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(200, 2))
    feats[:20] += 6.0  # 20 "artifact" images far from the real distribution
    acts = torch.from_numpy(rng.normal(size=(200, 3))).float()
    acts[:20, 1] += 10.0  # unit 1 fires on exactly those
    scores, _ = unit_scores(acts, feats, *feature_stats(rng.normal(size=(300, 2))), n_top=20)
    assert int(np.argmax(scores)) == 1 and scores[1] > 10 * max(scores[0], scores[2])


def test_flag_pr_matches_counting_by_hand() -> None:
    scores = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    flagged = [2, 3]
    rows = flag_pr(scores, flagged)
    order = np.argsort(scores)[::-1]
    for r in rows:
        top = set(order[:r["k"]].tolist())
        assert r["precision"] == pytest.approx(len(top & set(flagged)) / r["k"])
        assert r["recall"] == pytest.approx(len(top & set(flagged)) / 2)
        assert r["n_flagged"] == 2
    assert sorted(r["k"] for r in rows) == [1, 2, 3, 4, 5, 6]


def test_unit_sets_shapes() -> None:
    scores = [float(s) for s in range(10)]
    sets = unit_sets([0, 1], scores, n_units=3, draws=2, seed=1, layer_index=0)
    by = {(n, d): us for n, d, us in sets}
    assert by[("manual", 0)] == [0, 1] and by[("realism", 0)] == [7, 8, 9]
    assert by[("union", 0)] == [0, 1, 7, 8, 9]
    assert len(by[("random", 0)]) == 3 and len(by[("random", 1)]) == 3 and by[("random", 0)] != by[("random", 1)]
    assert [n for n, _, _ in unit_sets([], scores, 3, 1, 1, 0)] == ["realism", "random"]


def _spec(tmp_path, tiny_gan, tiny_seg, realism_samples: int = 48, extra: str = "") -> str:
    return write_spec(tmp_path, f"""
        [store]
        path = "{tmp_path / 'store.duckdb'}"
        [[models]]
        name = "tiny"
        family = "progan"
        checkpoint = "{tiny_gan}"
        dataset = "village"
        [[segmenters]]
        name = "tiny-seg"
        family = "village"
        checkpoint = "{tiny_seg}"
        [[analyses]]
        name = "realism"
        kind = "realism"
        models = ["tiny"]
        segmenter = "tiny-seg"
        layers = ["layer3", "layer5"]
        samples = {realism_samples}
        seed = 2
        top_fraction = 0.5
        real_samples = 20
        batch_size = 16
        [[analyses]]
        name = "repair"
        kind = "repair"
        models = ["tiny"]
        segmenter = "tiny-seg"
        layers = ["layer5"]
        samples = 24
        seed = 3
        n_units = 3
        draws = 2
        real_samples = 20
        real_exclude = ["watermark"]
        batch_size = 16
        {extra}
        """)


def test_realism_and_repair_end_to_end(tmp_path, tiny_gan, tiny_seg) -> None:
    spec = specmod.load(_spec(tmp_path, tiny_gan, tiny_seg))
    out = runner.run(spec, quiet=True, echo=lambda s: None)
    assert [o.state for o in out] == ["done", "done"], [o.error for o in out]
    db = spec.store
    real = store.read("select layer, count(*) n, min(n_top) t, min(n_real) r, min(frechet) lo from unit_realism "
                      "group by layer order by layer", path=db)
    assert real["n"].to_list() == [8, 8] and real["t"].to_list() == [24, 24] and real["r"].to_list() == [20, 20]
    assert real["lo"].min() > 0
    tops = store.read("select top_samples from unit_realism", path=db)["top_samples"]
    assert all(len(json.loads(t)) == 8 and max(json.loads(t)) < 48 for t in tops)
    cov = store.read("select source, count(*) n, max(n_images) m from concept_coverage group by source order by source",
                     path=db)
    assert cov["n"].to_list() == [cov["n"][0]] * 2 and cov["m"].to_list() == [48, 20]
    rep = store.read("select unit_set, draw, n_units, fd_before, fd_after from repair_effects order by unit_set, draw",
                     path=db)
    assert rep["unit_set"].to_list() == ["random", "random", "realism"]  # nothing flagged yet
    assert rep["fd_before"].n_unique() == 1 and (rep["n_units"] == 3).all()
    worst = store.read("select unit from unit_realism_latest where layer = 'layer5' and worst_rank <= 3 order by unit",
                       path=db)["unit"].to_list()
    assert json.loads(store.read("select units from repair_effects where unit_set = 'realism'", path=db)["units"][0]) \
        == worst
    assert store.read("select count(*) n from realism_flag_pr", path=db)["n"][0] == 0
    assert store.run_audits(db) == []
    _check_full_distribution_scores(db, tiny_gan, tiny_seg)
    # the views read the new tables
    assert store.read("select count(*) n from repair_latest", path=db)["n"][0] == 2
    assert store.read("select count(*) n from concept_coverage_latest", path=db)["n"][0] == cov["n"][0]
    # a second run does nothing; a new flag makes a new repair run (and only that)
    assert [o.state for o in runner.run(spec, quiet=True, echo=lambda s: None)] == ["up to date"] * 2
    store.set_flag("tiny", "layer5", 1, "artifact", "looks odd", path=db)
    store.set_flag("tiny", "layer5", 6, "watermark", None, path=db)
    out = runner.run(specmod.load(spec.path), quiet=True, echo=lambda s: None)
    assert [o.state for o in out] == ["up to date", "done"]
    params = json.loads(store.read("select params from runs where run_key = ?", [out[1].job.run_key], path=db)["params"][0])
    assert params["flagged"] == {"layer5": [1, 6]} and params["n_units"] == 3 and params["manual"] == "flags"
    sets = store.read("select unit_set, units from repair_latest order by unit_set", path=db)
    assert sets["unit_set"].to_list() == ["manual", "random", "realism", "union"]
    assert json.loads(sets.filter(sets["unit_set"] == "manual")["units"][0]) == [1, 6]
    pr = store.read("select k, precision, recall, n_flagged from realism_flag_pr_latest order by k", path=db)
    assert pr.height >= 1 and (pr["n_flagged"] == 2).all() and pr["recall"][-1] == 1.0
    assert store.run_audits(db) == []


def _check_full_distribution_scores(db: str, tiny_gan, tiny_seg) -> None:
    """fd_before / fd_before_full of the repair run equal a direct computation: the unedited sample's
    segmenter features against the 20 watermark-free rendered scenes, and against the first 20 rendered
    scenes with nothing left out (the full real distribution)."""
    from compute.core.features import extractor, features_and_masks
    from ingest.models.progan import load_progan
    from ingest.models.village_seg import load_village_seg
    from ingest.real import real_images, to_input
    from ingest.samples import latents

    gen, seg = load_progan(str(tiny_gan)).eval(), load_village_seg(str(tiny_seg)).eval()
    feat = extractor("segmenter", seg, torch.device("cpu"))
    with torch.no_grad():
        f_gen, _ = features_and_masks(feat, seg, gen(latents(3, 24, int(gen.z_dim))))

    def fd_to(exclude: list[str]) -> float:
        images, labels = real_images("village", 20, 0, size=int(gen.resolution), exclude=exclude)
        with torch.no_grad():
            f_real, _ = features_and_masks(feat, seg, to_input(images))
        return frechet_distance(f_gen, f_real)

    rep = store.read("select fd_before, fd_after, fd_before_full, fd_after_full from repair_effects", path=db)
    assert rep["fd_before_full"].null_count() == 0 and rep["fd_after_full"].null_count() == 0
    assert rep["fd_before"][0] == pytest.approx(fd_to(["watermark"]), rel=1e-6)
    assert rep["fd_before_full"][0] == pytest.approx(fd_to([]), rel=1e-6)
    _, labels = real_images("village", 20, 0, size=int(gen.resolution))
    from ingest.village import INDEX
    assert (labels[:, 0] == INDEX["watermark"]).any((1, 2)).sum() > 0, "the full set should hold a watermarked scene"
    assert rep["fd_before_full"][0] != pytest.approx(rep["fd_before"][0], rel=1e-9)
    assert (rep["fd_after_full"] != rep["fd_after"]).all()
    # the README's repair table shows both
    from compute.reports.diagnosis import repair_table

    md = repair_table(db, "tiny", "watermark")
    assert "| Fréchet distance (without watermark) | change | Fréchet distance (all real scenes) | change |" in md
    assert f"| none (original) | 0 | {rep['fd_before'][0]:.4f} | | {rep['fd_before_full'][0]:.4f} | |" in md
    assert "and against the full real distribution (20 scenes, nothing left out)" in md


def test_too_few_images_are_refused_before_any_work(tmp_path, tiny_gan, tiny_seg) -> None:
    spec = specmod.load(_spec(tmp_path, tiny_gan, tiny_seg, realism_samples=20))  # top half = 10 < 2 x 8
    out = runner.run(spec, only="realism", quiet=True, echo=lambda s: None)
    assert out[0].state == "failed"
    assert "10 images are too few for a stable Frechet distance in 8-d features; the minimum is 2 x 8 = 16" in out[0].error
    assert store.read("select count(*) n from unit_realism", path=spec.store)["n"][0] == 0


def test_manual_concept_set_needs_a_dissection(tmp_path, tiny_gan, tiny_seg) -> None:
    spec = specmod.load(_spec(tmp_path, tiny_gan, tiny_seg, extra='manual = "concept:watermark"'))
    out = runner.run(spec, quiet=True, echo=lambda s: None)
    assert out[1].state == "failed" and "needs a dissect analysis of model 'tiny'" in out[1].error


def test_real_images_from_a_folder_next_to_the_spec(tmp_path, tiny_gan, tiny_seg) -> None:
    from PIL import Image

    from ingest.real import RealImagesError, folder_images
    from ingest.village.render import render_batch

    images, _ = render_batch(range(20))
    (tmp_path / "real").mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).resize((48, 48)).save(tmp_path / "real" / f"{i:03d}.png")  # resized back when read
    with pytest.raises(RealImagesError, match="20 real images, 21 needed"):
        folder_images(tmp_path / "real", 21, size=64)
    body = _spec(tmp_path, tiny_gan, tiny_seg).read_text().replace(
        'real_samples = 20\nbatch_size = 16\n[[analyses]]', 'real_samples = 20\nreal = "real"\nbatch_size = 16\n[[analyses]]', 1)
    assert 'real = "real"' in body
    (tmp_path / "spec.toml").write_text(body)
    spec = specmod.load(tmp_path / "spec.toml")
    out = runner.run(spec, only="realism", quiet=True, echo=lambda s: None)
    assert out[0].state == "done", out[0].error
    assert store.read("select max(n_real) n from unit_realism", path=spec.store)["n"][0] == 20


def test_cli_exits_2_when_too_few_images_are_declared(tmp_path, tiny_gan, tiny_seg, monkeypatch, capsys) -> None:
    from compute.cli import main

    monkeypatch.chdir(tmp_path)
    path = _spec(tmp_path, tiny_gan, tiny_seg, realism_samples=20)
    assert main(["run", "--quiet", "--only", "realism", str(path)]) == 2
    assert "too few for a stable Frechet distance" in capsys.readouterr().out


def test_only_refuses_a_run_whose_dependency_is_not_done(tmp_path, tiny_gan, tiny_seg) -> None:
    spec = specmod.load(_spec(tmp_path, tiny_gan, tiny_seg))
    out = runner.run(spec, only="repair", quiet=True, echo=lambda s: None)
    assert out[0].state == "failed" and out[0].bad_input
    assert "its dependency realism" in out[0].error and "is not done" in out[0].error
    assert not os.path.exists(spec.store)  # refused before anything is written, not even the store (issue 16)
    assert [o.state for o in runner.run(spec, only="realism", quiet=True, echo=lambda s: None)] == ["done"]
    assert [o.state for o in runner.run(spec, only="repair", quiet=True, echo=lambda s: None)] == ["done"]


def test_real_exclude_given_as_one_name_is_one_concept() -> None:
    """The spec accepts real_exclude = "watermark" (StrList): one concept, not its letters."""
    from types import SimpleNamespace

    def job(v):
        return SimpleNamespace(config=SimpleNamespace(real_exclude=v))

    assert real_exclude(job("watermark")) == ["watermark"]
    assert real_exclude(job(("watermark", "tree"))) == ["watermark", "tree"]
    assert real_exclude(job(())) == []
