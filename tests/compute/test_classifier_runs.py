"""Classifier runs through the runner: dissection of a tiny classifier against exact counts (village-truth),
and unit_roles against a direct per-unit ablation loop (issue 20)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from compute import runner, spec as specmod
from compute.analyses.quantiles import upsample
from compute.core.tap import Edit, Tap
from db import store
from ingest.models.classifier import VillageClassifier, save_village_cls
from ingest.models.image_source import image_index
from ingest.samples import latents
from ingest.village import render
from ingest.village.concepts import NAMES
from ingest.village.scenes import CLASSES, HELDOUT_SEED_START, balanced_split, render_images
from ingest.zoo import BUNDLED_CLASSIFIERS, load_model_spec
from tests.helpers import VILLAGE_CLS, VILLAGE_TRUTH, analysis, model, write_spec_of



def _run(directory: Path, spec_path: Path) -> list:
    with contextlib.chdir(directory):
        return runner.run(specmod.load(spec_path), quiet=True, echo=lambda m: None)


@pytest.fixture
def tiny_cls(tmp_path: Path) -> Path:
    torch.manual_seed(3)
    net = VillageClassifier(CLASSES, (3, 3, 4, 4, 4))
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "tiny-cls.safetensors"
    save_village_cls(net.eval(), str(path))
    return path


def test_classifier_dissection_matches_exact_counts(tmp_path: Path, tiny_cls: Path) -> None:
    spec = write_spec_of(tmp_path, store=tmp_path / "store.duckdb", segmenters=[VILLAGE_TRUTH],
                         models=[model("tiny-cls", tiny_cls, family="village-cls", role="classifier", dataset="village")],
                         analyses=[analysis("d", "dissect", "tiny-cls", layers=["conv4", "conv5"],
                                            segmenter="village-truth", samples=12, batch_size=5, seed=2,
                                            threshold="q0.99")])
    assert [o.state for o in _run(tmp_path, spec)] == ["done"]
    db = str(tmp_path / "store.duckdb")
    iou = store.read("select layer, unit, concept, threshold, inter, above, concept_pixels from unit_iou", path=db)
    topk = store.read("select layer, unit, rank, sample, value, seed from unit_topk", path=db)
    layers = store.read("select layer, units, height, width from layers where model = 'tiny-cls' order by layer",
                        path=db)
    assert layers.rows() == [("conv1", 3, 64, 64), ("conv2", 3, 32, 32), ("conv3", 4, 16, 16),
                             ("conv4", 4, 16, 16), ("conv5", 4, 8, 8)]
    # the direct computation: rendered scenes, their exact labels, the classifier's featuremaps
    gen = load_model_spec(specmod.load(spec).model("tiny-cls"))
    z = latents(2, 12, gen.z_dim)
    seeds = [gen.source.scene_seed(h) for h in image_index(z)]
    labels = {c: torch.from_numpy(np.stack([render(s).labels[c] for s in seeds])) for c in NAMES[1:]}
    with torch.no_grad(), Tap(gen, ["conv4", "conv5"]) as tap:
        gen(z)
        acts = {l: tap[l] for l in ("conv4", "conv5")}
    checked = 0
    for r in iou.iter_rows(named=True):
        up = upsample(acts[r["layer"]], 64)[:, r["unit"]]  # the run's default upsampling
        above = up > r["threshold"]
        mask = labels[r["concept"]]
        assert r["above"] == int(above.sum())
        assert r["concept_pixels"] == int(mask.sum())
        assert r["inter"] == int((above & mask).sum()), r
        checked += 1
    assert checked == 2 * 4 * (len(NAMES) - 1)
    # top-k: the sample index is the dataset image identity, its value the unit's spatial max there
    for r in topk.iter_rows(named=True):
        assert r["seed"] == 2
        assert r["value"] == pytest.approx(float(acts[r["layer"]][r["sample"], r["unit"]].max()), rel=1e-5)


@pytest.mark.skipif(not BUNDLED_CLASSIFIERS["village-cls"].exists(), reason="village-cls not trained")
def test_unit_roles_match_a_direct_ablation_loop(tmp_path: Path) -> None:
    spec = write_spec_of(tmp_path, store=tmp_path / "store.duckdb", models=[VILLAGE_CLS],
                         analyses=[analysis("roles", "unit_roles", "village-cls", layers=["conv5"], samples=6,
                                            seed=4, k_max=3, draws=3, batch_size=7)])
    assert [o.state for o in _run(tmp_path, spec)] == ["done"]
    db = str(tmp_path / "store.duckdb")
    eff = store.read("select unit, class, class_index, rank, accuracy, accuracy_drop, true_logit, logit_drop "
                     "from class_unit_effects order by class_index, unit", path=db)
    curves = store.read("select class, ranking, k, draws, accuracy, other_accuracy, units "
                        "from class_ablation_curves order by class, ranking, k", path=db)
    # direct loop: the held-out split, the whole classifier with one unit ablated by a Tap edit
    from ingest.zoo import load_classifier

    clf = load_classifier("village-cls", spec)
    split = balanced_split(HELDOUT_SEED_START, 6)
    x = torch.from_numpy(render_images(split.seeds)).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.as_tensor(split.labels)

    def accuracy(ablate: list[int]) -> tuple[np.ndarray, np.ndarray]:
        alpha = torch.zeros(64)
        alpha[ablate] = 1
        with torch.no_grad(), Tap(clf, ["conv5"], edit={"conv5": Edit(alpha, 0.0)}):
            logits = clf(x)
        acc = np.array([float((logits.argmax(1)[y == c] == c).double().mean()) for c in range(len(CLASSES))])
        true = np.array([float(logits[y == c, c].mean()) for c in range(len(CLASSES))])
        return acc, true

    base_acc, base_logit = accuracy([])
    units = 64
    assert eff.height == units * len(CLASSES)
    for u in range(units):
        acc, true = accuracy([u])
        rows = eff.filter(eff["unit"] == u).sort("class_index")
        assert np.allclose(rows["accuracy"].to_numpy(), acc, atol=1e-12)
        assert np.allclose(rows["accuracy_drop"].to_numpy(), base_acc - acc, atol=1e-12)
        assert np.allclose(rows["true_logit"].to_numpy(), true, atol=1e-4)
    for c, name in enumerate(CLASSES):
        rows = eff.filter(eff["class_index"] == c).sort("rank")
        drops = rows["accuracy_drop"].to_numpy()
        assert (np.diff(drops) <= 1e-12).all()  # ranked by accuracy drop
        for r in curves.filter((curves["class"] == name) & (curves["ranking"] == "top")).iter_rows(named=True):
            ablate = [int(u) for u in r["units"].split(",")] if r["units"] else []
            assert ablate == rows["unit"].to_list()[:r["k"]]
            acc, _ = accuracy(ablate)
            assert r["accuracy"] == pytest.approx(acc[c], abs=1e-12)
            assert r["other_accuracy"] == pytest.approx(np.delete(acc, c).mean(), abs=1e-12)
        rand = curves.filter((curves["class"] == name) & (curves["ranking"] == "random"))
        assert rand["draws"].to_list() == [3] * 4 and rand["k"].to_list() == [0, 1, 2, 3]
        assert rand["accuracy"][0] == pytest.approx(base_acc[c], abs=1e-12)


def test_unit_roles_on_a_labelled_folder(tmp_path: Path, tiny_cls: Path) -> None:
    """labelled = "dir/" (one sub-folder per class): the k = 0 rows are the classifier's own accuracy there."""
    from PIL import Image

    from ingest.models.classifier import load_village_cls

    split = balanced_split(5000, 2)
    images = render_images(split.seeds)
    for i, (im, k) in enumerate(zip(images, split.labels)):
        (tmp_path / "lab" / CLASSES[k]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(tmp_path / "lab" / CLASSES[k] / f"{i}.png")
    spec = write_spec_of(tmp_path, store=tmp_path / "store.duckdb",
                         models=[model("tiny-cls", tiny_cls, family="village-cls", role="classifier")],
                         analyses=[analysis("roles", "unit_roles", "tiny-cls", layers=["conv3"], labelled="lab",
                                            k_max=2, draws=2)])
    assert [o.state for o in _run(tmp_path, spec)] == ["done"]
    db = str(tmp_path / "store.duckdb")
    base = store.read("select class, accuracy from class_ablation_curves where ranking = 'top' and k = 0",
                      path=db)
    clf = load_village_cls(str(tiny_cls))
    with torch.no_grad():
        pred = clf(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).argmax(1).numpy()
    for r in base.iter_rows(named=True):
        k = CLASSES.index(r["class"])
        assert r["accuracy"] == pytest.approx(float((pred[split.labels == k] == k).mean()))
    n = store.read("select count(*) n, min(images) lo, max(images) hi from class_unit_effects", path=db).row(0)
    assert n == (4 * len(CLASSES), 2, 2)  # conv3 of the tiny classifier has 4 units
