"""A small, hand-made, audit-clean store with every table filled: for the db tests and usable by
other packages' tests (e.g. dashboard smoke tests): `build_small_store(tmp_path / "s.duckdb")`.

Writes only through the public `db.store` API. Model "toy-gan" has layers "layer1" (4 units, 4x4)
and "layer2" (3 units, 8x8); segmenter "toy-seg" labels sky, tree (object), door (part) and brick
(material, never present in the sample). `EXPECTED_LABELS` is what `unit_labels` must say.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from db import store

MODEL, SEG = "toy-gan", "toy-seg"
LAYERS = {"layer1": (0, 4, 4, 4), "layer2": (1, 3, 8, 8)}  # layer -> (index, units, height, width)
CONCEPTS = {"sky": ("object", 1), "tree": ("object", 2), "door": ("part", 3), "brick": ("material", 4)}
QS = (0.5, 0.9, 0.99, 0.995, 0.999)

# best IoU per (layer, unit) of the newest quantile-mode dissection: (concept, iou, p_value)
BEST_Q = {
    ("layer1", 0): ("sky", 0.30, 0.001), ("layer1", 1): ("tree", 0.05, 0.02),
    ("layer1", 2): ("door", 0.035, 0.2), ("layer1", 3): ("door", 0.12, 0.004),
    ("layer2", 0): ("door", 0.20, 0.0005), ("layer2", 1): ("sky", 0.01, 0.6),
    ("layer2", 2): ("tree", 0.045, 0.03),
}
# iqr-mode dissection of layer1: (concept, iou, iqr)
BEST_IQR = {0: ("sky", 0.06, 0.02), 1: ("tree", 0.06, 0.005), 2: ("door", 0.045, 0.5), 3: ("door", 0.20, 0.1)}

EXPECTED_LABELS = {  # (threshold_mode, layer, unit) -> (concept, category, interpretable)
    ("quantile", "layer1", 0): ("sky", "object", True),
    ("quantile", "layer1", 1): ("tree", "object", True),
    ("quantile", "layer1", 2): ("door", "part", False),
    ("quantile", "layer1", 3): ("door", "part", True),
    ("quantile", "layer2", 0): ("door", "part", True),
    ("quantile", "layer2", 1): ("sky", "object", False),
    ("quantile", "layer2", 2): ("tree", "object", True),
    ("iqr", "layer1", 0): ("sky", "object", True),
    ("iqr", "layer1", 1): ("tree", "object", False),
    ("iqr", "layer1", 2): ("door", "part", False),
    ("iqr", "layer1", 3): ("door", "part", True),
}

RUNS = {  # name -> run_key
    "dissect_old": "k-dissect-old", "dissect": "k-dissect", "dissect_iqr": "k-dissect-iqr",
    "dissect_failed": "k-dissect-failed", "ace": "k-ace", "ablate": "k-ablate", "insert": "k-insert",
    "trace": "k-trace", "realism": "k-realism", "repair": "k-repair", "coverage": "k-coverage",
}


def iou_row(run_key: str, layer: str, unit: int, concept: str, iou: float | None, above: float = 100.0,
            concept_pixels: float = 80.0, **extra: Any) -> dict[str, Any]:
    """A unit_iou row whose counts agree with its IoU (iou None: the concept never appears)."""
    if iou is None:
        inter, concept_pixels = 0.0, 0.0
    else:
        inter = iou * (above + concept_pixels) / (1 + iou)
    return {"run_key": run_key, "model": MODEL, "layer": layer, "unit": unit, "concept": concept,
            "threshold": 1.0 + unit, "iou": iou, "inter": inter, "above": above,
            "concept_pixels": concept_pixels, **extra}


def _iou_rows(run_key: str, best: dict[tuple[str, int], tuple[str, float, float]]) -> list[dict[str, Any]]:
    rows = []
    for (layer, unit), (concept, iou, p) in best.items():
        for c in CONCEPTS:
            if c == "brick":
                rows.append(iou_row(run_key, layer, unit, c, None))
            elif c == concept:
                z = (iou - 0.01) / 0.005
                rows.append(iou_row(run_key, layer, unit, c, iou, null_mean=0.01, null_std=0.005, z=z, p_value=p))
            else:
                rows.append(iou_row(run_key, layer, unit, c, round(iou / 4, 6), p_value=0.9))
    return rows


def _quantile_rows(layers: dict[str, tuple[int, int, int, int]]) -> list[dict[str, Any]]:
    return [{"model": MODEL, "layer": layer, "unit": u, "q": q, "value": u + 10 * q}
            for layer, (_, units, _, _) in layers.items() for u in range(units) for q in QS]


def _topk_rows(layers: dict[str, tuple[int, int, int, int]], k: int = 3) -> list[dict[str, Any]]:
    return [{"model": MODEL, "layer": layer, "unit": u, "rank": r, "seed": 1, "sample": 10 * u + r,
             "value": 5.0 - r} for layer, (_, units, _, _) in layers.items() for u in range(units)
            for r in range(1, k + 1)]


def _null_rows(layers: list[str]) -> list[dict[str, Any]]:
    return [{"model": MODEL, "layer": layer, "method": "shuffle", "n_values": 100, "mean": 0.011,
             "std": 0.004, "median": 0.010, "q90": 0.016, "q95": 0.018, "q99": 0.025, "max": 0.03}
            for layer in layers]


def _run(path: Path, name: str, analysis: str, layer: str | None, params: dict[str, Any], **kw: Any) -> str:
    key = RUNS[name]
    store.start_run(key, analysis, name=name, model=MODEL, layer=layer, segmenter=SEG, n_samples=20, seed=1,
                    params=params, code_version="test", device="cpu", path=path, **kw)
    return key


def _finish_times(path: Path) -> None:
    """Give runs distinct, ordered finish times (the old dissection finishes first)."""
    base = dt.datetime(2026, 1, 1)
    with store.session(path) as con:
        for i, key in enumerate(RUNS.values()):
            con.execute("UPDATE runs SET started_at = ?, finished_at = CASE WHEN finished_at IS NULL THEN NULL "
                        "ELSE ? END WHERE run_key = ?",
                        [base + dt.timedelta(hours=i), base + dt.timedelta(hours=i, minutes=30), key])


def build_small_store(path: str | Path) -> Path:
    path = Path(path)
    store.upsert_dimension("models", [{"model": MODEL, "family": "progan", "dataset": "village",
                                       "checkpoint": "toy.safetensors", "checkpoint_sha256": "0" * 64,
                                       "resolution": 32, "z_dim": 8, "training_step": 1000,
                                       "model_group": MODEL}], path)
    store.upsert_dimension("layers", [{"model": MODEL, "layer": name, "layer_index": i, "units": u,
                                       "height": h, "width": w} for name, (i, u, h, w) in LAYERS.items()], path)
    store.upsert_dimension("segmenters", [{"segmenter": SEG, "family": "village", "resolution": 32}], path)
    store.upsert_dimension("concepts", [{"segmenter": SEG, "concept": c, "category": cat, "concept_index": k}
                                        for c, (cat, k) in CONCEPTS.items()], path)
    done = {"status": "done", "seconds": 1.0}

    # an older quantile-mode dissection whose labels must NOT show
    old = _run(path, "dissect_old", "dissect", "*", {"threshold": "q0.99"})
    store.publish_many(old, {"unit_iou": _iou_rows(old, {k: ("tree", 0.5, 0.001) for k in BEST_Q})}, done, path)
    key = _run(path, "dissect", "dissect", "*", {"threshold": "q0.99"})
    store.publish_many(key, {"unit_iou": _iou_rows(key, BEST_Q), "unit_quantiles": _quantile_rows(LAYERS),
                             "unit_topk": _topk_rows(LAYERS), "layer_null_iou": _null_rows(list(LAYERS))},
                       done, path)
    iqr = _run(path, "dissect_iqr", "dissect", "layer1", {"threshold": "iqr"})
    rows = []
    for unit, (concept, iou, q) in BEST_IQR.items():
        rows += [iou_row(iqr, "layer1", unit, c, iou if c == concept else iou / 3 if c != "brick" else None,
                         iqr=q if c == concept else 0.001 if c != "brick" else None) for c in CONCEPTS]
    store.publish_many(iqr, {"unit_iou": rows}, done, path)
    failed = _run(path, "dissect_failed", "dissect", "*", {"threshold": "q0.99"})
    store.fail_run(failed, "RuntimeError: NaN activations in layer1 unit 2", 0.5, path=path)

    ace = _run(path, "ace", "ace", "layer1", {"lambda": 0.01, "concepts": ["door"]})
    store.publish_many(ace, {
        "ace_alpha": [{"model": MODEL, "layer": "layer1", "concept": "door", "unit": u, "alpha": a,
                       "alpha_init": i} for u, a, i in [(0, 0.0, 0.1), (1, 0.2, 0.3), (2, 0.7, 0.3), (3, 1.0, 1.0)]],
        "ace_epochs": [{"model": MODEL, "layer": "layer1", "concept": "door", "epoch": e, "loss": -0.1 * e,
                        "effect": 0.1 * e + 0.05, "alpha_l1": 1.7, "alpha_l2": 1.2} for e in range(3)],
        "ace_trajectory": [{"model": MODEL, "layer": "layer1", "concept": "door", "epoch": e, "unit": u,
                            "alpha": min(1.0, 0.2 * e + 0.1 * u)} for e in range(3) for u in range(4)],
        "causal_effects": [{"model": MODEL, "layer": "layer1", "concept": "door", "unit_set": "ace_top2",
                            "n_units": 2, "units": json.dumps([3, 2]), "ace": 0.6, "ablation": 0.4,
                            "insertion": 0.2}],
    }, done, path)
    abl = _run(path, "ablate", "ablate", "layer1", {"rankings": ["ace", "iou", "random"]})
    store.publish_many(abl, {"ablation_curves": [
        {"model": MODEL, "layer": "layer1", "concept": "door", "ranking": r, "n_units": n,
         "remaining": 1.0 - f * n, "remaining_std": 0.02 if r == "random" else None,
         "draws": 5 if r == "random" else 1, "baseline_pixels": 500.0}
        for r, f in [("ace", 0.2), ("iou", 0.1), ("random", 0.01)] for n in range(4)]}, done, path)
    ins = _run(path, "insert", "insert", "layer1", {"concept": "door", "units": 2})
    store.publish_many(ins, {
        "insertion_contexts": [{"model": MODEL, "layer": "layer1", "concept": "door", "context": c,
                                "locations": n, "effect": e, "effect_std": 1.0}
                               for c, n, e in [("sky", 10, 0.5), ("tree", 3, 1.0), ("none", 3, 0.0)]],
        "insertion_maps": [{"model": MODEL, "layer": "layer1", "concept": "door", "seed": 1, "sample": s,
                            "y": y, "x": x, "context": "sky" if y < 2 else "tree", "effect": float(y + x)}
                           for s in range(2) for y in range(4) for x in range(4)],
    }, done, path)
    tr = _run(path, "trace", "trace", "layer1", {"concept": "door"})
    store.publish_many(tr, {"trace_effects": [
        {"model": MODEL, "layer": "layer1", "concept": "door", "target_layer": "layer2", "y": y, "x": x,
         "effect": math.exp(-((y - 4) ** 2 + (x - 4) ** 2) / 8)} for y in range(8) for x in range(8)]},
        done, path)
    real = _run(path, "realism", "realism", "layer2", {"n_top": 10, "n_real": 50})
    store.publish_many(real, {"unit_realism": [
        {"model": MODEL, "layer": "layer2", "unit": u, "frechet": f, "n_top": 10, "n_real": 50,
         "top_samples": json.dumps([10 * u + r for r in (1, 2, 3)])}
        for u, f in [(0, 50.0), (1, 300.0), (2, 80.0)]]}, done, path)
    rep = _run(path, "repair", "repair", "layer2", {"n_random": 2})
    store.publish_many(rep, {"repair_effects": [
        {"model": MODEL, "layer": "layer2", "unit_set": s, "draw": d, "n_units": 1, "units": json.dumps([u]),
         "fd_before": 100.0, "fd_after": a}
        for s, d, u, a in [("manual", 0, 1, 80.0), ("realism", 0, 1, 80.0), ("union", 0, 1, 80.0),
                           ("random", 0, 0, 101.0), ("random", 1, 2, 99.0)]],
        "repair_concepts": [  # door pixels: the flagged unit 1 draws most of them
            {"model": MODEL, "layer": "layer2", "unit_set": s, "draw": d, "concept": c, "fraction_before": b,
             "fraction_after": a}
            for s, d, c, b, a in [("manual", 0, "door", 0.04, 0.01), ("realism", 0, "door", 0.04, 0.01),
                                  ("union", 0, "door", 0.04, 0.01), ("random", 0, "door", 0.04, 0.039),
                                  ("random", 1, "door", 0.04, 0.041), ("manual", 0, "sky", 0.3, 0.31),
                                  ("realism", 0, "sky", 0.3, 0.31), ("union", 0, "sky", 0.3, 0.31),
                                  ("random", 0, "sky", 0.3, 0.3), ("random", 1, "sky", 0.3, 0.29)]],
        "realism_flag_pr": [  # the k worst of units 1 (300), 2 (80), 0 (50) against the flagged unit 1
            {"model": MODEL, "layer": "layer2", "k": k, "frechet": f, "precision": 1 / k, "recall": 1.0,
             "n_flagged": 1} for k, f in [(1, 300.0), (2, 80.0), (3, 50.0)]],
    }, done, path)
    cov = _run(path, "coverage", "coverage", None, {"n_images": 20})
    store.publish_many(cov, {"concept_coverage": [
        {"model": MODEL, "segmenter": SEG, "concept": c, "source": s, "pixel_fraction": f, "presence": p,
         "n_images": 20}
        for c, s, f, p in [("sky", "generated", 0.3, 1.0), ("sky", "real", 0.35, 1.0),
                           ("door", "generated", 0.01, 0.4), ("door", "real", 0.02, 0.7)]]}, done, path)
    store.set_flag(MODEL, "layer2", 1, "artifact", "blotch", path=path)
    store.set_flag(MODEL, "layer1", 3, "label", "doorway", path=path)
    store.record_benchmarks([{"bench": "dissect", "metric": "overhead_ratio", "value": 1.2, "unit": "ratio",
                              "params": {"samples": 100}}], path)
    _finish_times(path)
    return path
