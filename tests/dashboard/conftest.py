"""Fixture stores for the dashboard tests.

`dash_store`: the db tests' small hand-made store (toy-gan, every table filled) plus "tiny-gan", a tiny
random-weight ProGAN saved as safetensors (tests/conftest.py `tiny_gan`) whose dissection rows are real
enough to draw images: thresholds are its units' 0.99 activation quantiles and its top-k samples are the
samples that activate each unit most (IoUs are made up). `empty_store`: a store with the schema and no
rows. `missing_store`: a path where no store exists.
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

    from compute.probe import layer_shapes
    from compute.tap import Tap
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


@pytest.fixture(scope="session")
def dash_store_master(tmp_path_factory, tiny_gan) -> Path:
    from tests.db.fixture_store import build_small_store

    path = build_small_store(tmp_path_factory.mktemp("dash") / "dash.duckdb")
    add_tiny_model(path, tiny_gan)
    add_tiny_model(path, tiny_gan, TINY_EARLY, 50, flag=False)
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
