"""Fixture stores for the dashboard tests.

`dash_store`: the db tests' small hand-made store (toy-gan, every table filled) plus "tiny-gan", a tiny
random-weight ProGAN saved as safetensors (tests/conftest.py `tiny_gan`) whose dissection rows are real
enough to draw images: thresholds are its units' 0.99 activation quantiles and its top-k samples are the
samples that activate each unit most (IoUs are made up); its diagnosis rows (realism scores, repair,
flag precision / recall, concept coverage: `add_tiny_diagnosis`) are hand-made. `empty_store`: a store
with the schema and no rows. `missing_store`: a path where no store exists.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

TINY = "tiny-gan"
TINY_EARLY = "tiny-gan-step50"  # an earlier checkpoint of the same model group (same weights file)
TINY_LAYERS = ("layer3", "layer5")  # the dissected layers of tiny-gan
TINY_SEED, TINY_SAMPLES, TINY_K = 7, 24, 5


def add_tiny_model(path: Path, checkpoint: Path, model: str = TINY, step: int = 100, flag: bool = True) -> None:
    """Register `model` (group tiny-gan) with every layer, and publish a dissection of TINY_LAYERS
    computed from it."""
    import numpy as np
    import torch

    from compute.core.probe import layer_shapes
    from compute.core.tap import Tap
    from db import store
    from ingest.models.progan import load_progan
    from ingest.samples import latents
    from ingest.zoo import file_sha256
    from tests.db.fixture_store import CONCEPTS, SEG

    net = load_progan(checkpoint, "cpu")
    shapes = layer_shapes(net, net.layers, torch.device("cpu"))
    store.upsert_dimension("models", [{"model": model, "family": "progan", "dataset": "village",
                                       "checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint),
                                       "resolution": int(net.resolution), "z_dim": int(net.z_dim),
                                       "training_step": step, "model_group": TINY}], path)
    store.upsert_dimension("layers", [{"model": model, "layer": name, "layer_index": i, "units": shapes[name][0],
                                       "height": shapes[name][1], "width": shapes[name][2]}
                                      for i, name in enumerate(net.layers)], path)
    z = latents(TINY_SEED, TINY_SAMPLES, int(net.z_dim))
    with torch.no_grad(), Tap(net, list(TINY_LAYERS)) as tap:
        net(z)
        acts = {name: tap[name] for name in TINY_LAYERS}
    quantiles, topk, iou = [], [], []
    gen = torch.Generator().manual_seed(step)
    for name, a in acts.items():  # a: [N, C, h, w]
        up = torch.nn.functional.interpolate(a, size=(int(net.resolution),) * 2, mode="bilinear", align_corners=True)
        flat = up.transpose(0, 1).flatten(1).numpy()  # [C, N*H*W]
        qs = (0.5, 0.9, 0.99, 0.999)
        values = np.quantile(flat, qs, axis=1)  # [Q, C]
        peak = a.flatten(2).amax(2)  # [N, C]
        for u in range(a.shape[1]):
            quantiles += [{"model": model, "layer": name, "unit": u, "q": q, "value": float(values[j, u])}
                          for j, q in enumerate(qs)]
            order = torch.argsort(peak[:, u], descending=True)[:TINY_K]
            topk += [{"model": model, "layer": name, "unit": u, "rank": r + 1, "seed": TINY_SEED, "sample": int(s),
                      "value": float(peak[s, u])} for r, s in enumerate(order)]
            t = float(values[qs.index(0.99), u])
            for c in CONCEPTS:
                v = None if c == "brick" else round(float(torch.rand(1, generator=gen)) * 0.2 * step / 100, 4)
                above, pixels = 100.0, (0.0 if v is None else 80.0)
                inter = 0.0 if v is None else v * (above + pixels) / (1 + v)
                iou.append({"model": model, "layer": name, "unit": u, "concept": c, "threshold": t, "iou": v,
                            "inter": inter, "above": above, "concept_pixels": pixels})
    key = f"k-{model}-dissect"
    store.start_run(key, "dissect", name="tiny-dissect", model=model, layer="*", segmenter=SEG,
                    n_samples=TINY_SAMPLES, seed=TINY_SEED, params={"threshold": "q0.99"}, code_version="test",
                    device="cpu", path=path)
    store.publish_many(key, {"unit_quantiles": quantiles, "unit_topk": topk, "unit_iou": iou},
                       {"status": "done", "seconds": 0.1}, path)
    if flag:
        store.set_flag(model, TINY_LAYERS[0], 1, "interesting", "a note", path=path)


# hand-made diagnosis rows of tiny-gan's first dissected layer (8 units): realism scores (unit 3 worst),
# a repair run (fd 140 -> 125.4 manual [3, 6], 118.2 realism [3, 7, 5], 116.9 union, random 140.6 ± 0.7),
# door pixels removed by the flagged units, precision / recall against the flags {3, 6}, and coverage
TINY_REALISM_LAYER = TINY_LAYERS[0]
TINY_FRECHET = (120.5, 80.2, 95.0, 310.7, 60.1, 150.3, 70.4, 240.9)  # unit -> Frechet distance
TINY_REPAIR = [("manual", 0, [3, 6], 125.4), ("realism", 0, [3, 7, 5], 118.2), ("union", 0, [3, 5, 6, 7], 116.9),
               ("random", 0, [0, 2, 4], 140.9), ("random", 1, [1, 4, 6], 139.6), ("random", 2, [0, 1, 7], 141.3)]
TINY_DOOR_AFTER = {"manual": 0.01, "realism": 0.02, "union": 0.008, "random": 0.049}
TINY_COVERAGE = [("sky", 0.40, 0.35, 1.0, 1.0), ("tree", 0.10, 0.15, 0.6, 0.8), ("door", 0.01, 0.03, 0.3, 0.7),
                 ("brick", 0.0, 0.02, 0.0, 0.2)]  # concept, generated share, real share, generated / real presence


def add_tiny_diagnosis(path: Path, model: str = TINY) -> None:
    """Publish realism (top samples: the dissection's top-k, so strips draw), repair, flag P/R and coverage
    runs for `model`'s TINY_REALISM_LAYER."""
    import json

    from db import store
    from tests.db.fixture_store import SEG

    layer = TINY_REALISM_LAYER
    topk = store.read("SELECT unit, list(sample ORDER BY rank) AS samples FROM unit_topk WHERE model = ? AND layer = ? "
                      "GROUP BY unit", [model, layer], path=path)
    top = dict(zip(topk["unit"].to_list(), topk["samples"].to_list()))
    done = {"status": "done", "seconds": 0.1}

    def run(kind: str, **kw) -> str:
        key = f"k-{model}-{kind}"
        store.start_run(key, kind, name=f"tiny-{kind}", model=model, segmenter=SEG, n_samples=TINY_SAMPLES,
                        seed=TINY_SEED, code_version="test", device="cpu", path=path, **kw)
        return key

    store.publish_many(run("realism", layer=layer, params={"n_top": TINY_K, "n_real": 40}), {"unit_realism": [
        {"model": model, "layer": layer, "unit": u, "frechet": f, "n_top": TINY_K, "n_real": 40,
         "top_samples": json.dumps(top[u])} for u, f in enumerate(TINY_FRECHET)]}, done, path)
    worst = sorted(range(len(TINY_FRECHET)), key=lambda u: -TINY_FRECHET[u])
    flagged = {3, 6}
    pr = []
    for k in range(1, len(worst) + 1):
        hits = len(flagged & set(worst[:k]))
        pr.append({"model": model, "layer": layer, "k": k, "frechet": TINY_FRECHET[worst[k - 1]],
                   "precision": hits / k, "recall": hits / len(flagged), "n_flagged": len(flagged)})
    store.publish_many(run("repair", layer=layer, params={"n_random": 3, "flags": sorted(flagged),
                                                          "real_exclude": ["watermark"]}), {
        "repair_effects": [{"model": model, "layer": layer, "unit_set": s, "draw": d, "n_units": len(us),
                            "units": json.dumps(us), "fd_before": 140.0, "fd_after": a,
                            "fd_before_full": 150.0, "fd_after_full": a + 20} for s, d, us, a in TINY_REPAIR],
        "repair_concepts": [{"model": model, "layer": layer, "unit_set": s, "draw": d, "concept": c,
                             "fraction_before": b,
                             "fraction_after": TINY_DOOR_AFTER[s] if c == "door" else b + 0.001 * d}
                            for s, d, _, _ in TINY_REPAIR for c, b in [("door", 0.05), ("sky", 0.4)]],
        "realism_flag_pr": pr}, done, path)
    store.publish_many(run("coverage", params={"n_images": TINY_SAMPLES}), {"concept_coverage": [
        {"model": model, "segmenter": SEG, "concept": c, "source": src, "pixel_fraction": f, "presence": pres,
         "n_images": TINY_SAMPLES}
        for c, g, r, gp, rp in TINY_COVERAGE for src, f, pres in [("generated", g, gp), ("real", r, rp)]]}, done, path)


@pytest.fixture(scope="session")
def dash_store_master(tmp_path_factory, tiny_gan) -> Path:
    from tests.db.fixture_store import build_small_store

    path = build_small_store(tmp_path_factory.mktemp("dash") / "dash.duckdb")
    add_tiny_model(path, tiny_gan)
    add_tiny_model(path, tiny_gan, TINY_EARLY, 50, flag=False)
    add_tiny_diagnosis(path)
    return path


@pytest.fixture
def dash_store(dash_store_master: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of the dashboard fixture store, named by GANDISSECT_DB."""
    dst = tmp_path / "dash.duckdb"
    shutil.copy(dash_store_master, dst)
    monkeypatch.setenv("GANDISSECT_DB", str(dst))
    return dst


@pytest.fixture
def empty_store(tmp_path: Path, monkeypatch) -> Path:
    """A store with the full schema and no rows, named by GANDISSECT_DB."""
    from db import store

    path = tmp_path / "empty.duckdb"
    store.connect(path).close()
    monkeypatch.setenv("GANDISSECT_DB", str(path))
    return path


@pytest.fixture
def missing_store(tmp_path: Path, monkeypatch) -> Path:
    """GANDISSECT_DB naming a file that does not exist."""
    path = tmp_path / "nothing-here.duckdb"
    monkeypatch.setenv("GANDISSECT_DB", str(path))
    return path


@pytest.fixture(autouse=True)
def _fresh_caches():
    """Every test starts with empty Streamlit caches (each store path is its own cache key anyway)."""
    import streamlit as st

    st.cache_data.clear()
    yield


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """test-output/dashboard under the repository (gitignored): screenshots of the browser test."""
    out = Path(__file__).resolve().parents[2] / "test-output" / "dashboard"
    out.mkdir(parents=True, exist_ok=True)
    return out


def env_without_db() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "GANDISSECT_DB"}
