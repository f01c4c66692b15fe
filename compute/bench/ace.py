"""Benchmarks of the interventions: one ACE alpha optimisation (`bench_ace`) and one insertion-context
map (`bench_insert`), on the bundled village-gan / village-seg or on given models.

Reads the bundled weights (`ingest/zoo/`); writes nothing (`gandissect bench --only ace|insert` stores
the rows it returns in the `benchmarks` table).

    gandissect bench --only ace
    python -c "from compute.bench.ace import bench_insert; print(bench_insert())"
"""
from __future__ import annotations

import json
import time
from typing import Any

import torch

from compute.analyses.ace import AceConfig, build_pool, candidates, optimise_alpha
from compute.core.intervene import cell_contexts, concept_index, constant_for, insertion_effects, unit_alpha
from compute.core.pool import LayerPool
from ingest.zoo import load_generator, load_segmenter

__all__ = ["bench_ace", "bench_insert"]


def _bundled(gen: torch.nn.Module | None, seg: Any | None, device: torch.device) -> tuple[Any, Any, str, str]:
    g = gen if gen is not None else load_generator("village-gan", device=device)
    s = seg if seg is not None else load_segmenter("village-seg", device=device)
    return g.to(device).eval(), s.to(device).eval(), "village-gan" if gen is None else "given", \
        "village-seg" if seg is None else "given"


def bench_ace(device: torch.device | str = "cpu", gen: torch.nn.Module | None = None, seg: Any | None = None,
              layer: str = "layer4", concept: str = "tree", samples: int = 64, epochs: int = 4,
              steps_per_epoch: int = 5, batch: int = 24, eval_items: int = 24) -> list[dict[str, Any]]:
    """Seconds for one alpha optimisation of one concept (sample pool and constants, candidate locations,
    `epochs * steps_per_epoch` Adam steps of `batch` locations, per-epoch evaluation) on the bundled
    village-gan / village-seg (or the given models); also the seconds of one step, to scale to longer
    runs. Rows for the `benchmarks` table."""
    device = torch.device(device)
    g, s, gname, sname = _bundled(gen, seg, device)
    cfg = AceConfig(epochs=epochs, steps_per_epoch=steps_per_epoch, batch=batch, eval_items=eval_items, seed=1)
    c = concept_index(s, concept)
    t0 = time.perf_counter()
    pool = build_pool(LayerPool(g, layer, s, seed=1, device=device, probs=True), samples, cfg)
    cands = candidates(g, s, layer, pool, c, cfg)
    t1 = time.perf_counter()
    optimise_alpha(g, s, layer, pool, c, torch.full((pool.r.shape[1],), 0.5), cfg, cands=cands)
    t2 = time.perf_counter()
    steps = epochs * steps_per_epoch
    params = json.dumps({"device": str(device), "threads": torch.get_num_threads(), "generator": gname,
                         "segmenter": sname, "layer": layer, "concept": concept, "samples": samples,
                         "epochs": epochs, "steps_per_epoch": steps_per_epoch, "batch": batch,
                         "eval_items": eval_items})
    return [{"bench": "ace", "metric": "seconds", "value": t2 - t0, "unit": "s", "params": params},
            {"bench": "ace", "metric": "pool_seconds", "value": t1 - t0, "unit": "s", "params": params},
            {"bench": "ace", "metric": "seconds_per_step", "value": (t2 - t1) / max(steps, 1), "unit": "s",
             "params": params}]


def bench_insert(device: torch.device | str = "cpu", gen: torch.nn.Module | None = None, seg: Any | None = None,
                 layer: str = "layer4", concept: str = "door", samples: int = 16, n_units: int = 20,
                 chunk: int = 256) -> list[dict[str, Any]]:
    """Seconds for one full insertion-context map: `n_units` units inserted at every featuremap location
    of every one of `samples` samples, effects and contexts (the constants k_c come from the same samples).
    Rows for the `benchmarks` table."""
    device = torch.device(device)
    g, s, gname, sname = _bundled(gen, seg, device)
    c = concept_index(s, concept)
    t0 = time.perf_counter()
    lp = LayerPool(g, layer, s, seed=2, device=device)
    k = lp.constants(None, None, samples, samples)
    held = lp.batch(0, samples)
    r, z, masks = held.r, held.z, held.masks
    kc = constant_for(k, s, concept, f"the {samples} bench samples")
    units = torch.argsort(kc, descending=True)[:n_units]  # a fixed unit set: the units with the largest k_c
    alpha = unit_alpha(units, r.shape[1], layer=layer, device=device)
    effects = insertion_effects(g, s, layer, r, z, masks[:, c], alpha, kc, c, chunk=chunk)
    cell_contexts(s, masks, r.shape[2], r.shape[3])
    seconds = time.perf_counter() - t0
    params = json.dumps({"device": str(device), "threads": torch.get_num_threads(), "generator": gname,
                         "segmenter": sname, "layer": layer, "concept": concept, "samples": samples,
                         "locations": int(effects.numel()), "n_units": n_units, "chunk": chunk})
    return [{"bench": "insert", "metric": "seconds", "value": seconds, "unit": "s", "params": params},
            {"bench": "insert", "metric": "ms_per_location", "value": seconds / effects.numel() * 1000,
             "unit": "ms", "params": params}]
