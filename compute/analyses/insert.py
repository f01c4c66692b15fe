"""Insertion by context (paper section 4.4, Fig. 11): where can a concept be inserted?

Reads the job's generator and segmenter and the alphas of the ACE run it depends on (`ace_alpha`);
writes `insertion_contexts` (one row per inserted concept and context concept) and `insertion_maps`
(one row per inserted concept, sample and featuremap location: where insertion works).

For each declared concept c and layer: the top-`units` units by alpha (ties by unit index) are set to
the insertion constant k_c (S-6.4; estimated on this analysis's samples) at ONE featuremap location
at a time, for every location of every sample (the generator below the layer runs once per sample,
on an nn.Sequential generator; elsewhere each copy reruns the forward on its latent, layer replaced;
edited copies are stacked `chunk` per pass). The effect is the number of pixels labelled c after the
edit that were not before, within the pixel block of the location's (2*neighbourhood+1)^2 cells.
The constants and the effects are resumable passes of a `compute.core.pool.LayerPool` (checkpointed
under `.cache/<run_key>/`). Parameters (units, radius, neighbourhood, chunk, batch_size) are
`job.config`'s (defaults in compute/analyses/params.py; code version, needs and tables in the registry,
compute/analyses/__init__.py).

Context = what the unedited image shows at the location: per segmenter category (object, part,
material), the concept covering the largest share of the location's pixel block (unless most of it
is none of that category's concepts). `insertion_contexts` has one row per context concept with the
number of locations, the mean effect and its standard deviation (a wall location also counts under
building and brick). `insertion_maps.context` is the location's part if any, else its object.

    gandissect run examples/intervene.toml --only insert
"""
from __future__ import annotations

from typing import Any

import torch

from compute import analyses
from compute.analyses.ace import require_concepts
from compute.core.intervene import (InterventionError, cell_contexts, concept_index, constant_for, insertion_effects,
                                    map_context, unit_alpha)
from compute.core.pool import Gather, LayerPool, PoolBatch
from compute.jobs.context import Job, RunContext, pass_name

TOP_SQL = ("select unit from ace_alpha where run_key = ? and layer = ? and concept = ? "
           "order by alpha desc, unit limit ?")


def top_units(ctx: RunContext, ace_key: str, layer: str, concept: str, n: int) -> list[int]:
    """The n highest-alpha units of a concept in an ACE run."""
    units = [int(u) for u in ctx.read(TOP_SQL, [ace_key, layer, concept, n])["unit"].to_list()]
    if not units:
        raise InterventionError(f"the ACE run has no alpha for concept {concept!r} at layer {layer!r}: "
                                f"declare it in the ace analysis's concepts")
    return units


def context_rows(seg: Any, effects: torch.Tensor, contexts: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Effect statistics per context concept: effects [N, h, w], contexts {category: [N, h, w] indices}."""
    rows = []
    e = effects.flatten().double().cpu()
    for cat, lab in contexts.items():
        lab = lab.flatten().cpu()
        for k in sorted(set(lab.tolist()) - {0}):
            sel = e[lab == k]
            rows.append({"context": seg.concepts[k].name, "locations": int(sel.numel()),
                         "effect": float(sel.mean()), "effect_std": float(sel.std(unbiased=False))})
    return rows


def compute(job: Job, ctx: RunContext) -> dict[str, list[dict[str, Any]]]:
    cfg = job.config
    seg = ctx.segmenter(job)
    concepts = require_concepts(job)
    n_units, radius, hood = int(cfg.units), int(cfg.radius), int(cfg.neighbourhood)
    chunk, bs = int(cfg.chunk), int(cfg.batch_size)
    seed, samples = int(cfg.seed), int(cfg.samples)
    base = {"run_key": job.run_key, "model": job.model.name}
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in analyses.kind("insert").tables}
    for layer in job.layers:
        pool = LayerPool.of(job, ctx, layer, seed)
        k = pool.constants(ctx, job, samples, bs, pass_name("insert", layer, "k"))
        held = pool.all(samples, bs)
        n, units, h, w = held.r.shape
        contexts = cell_contexts(seg, held.masks, h, w)
        single = map_context(contexts).cpu()
        for name in concepts:
            c = concept_index(seg, name)
            kc = constant_for(k, seg, name, f"the {n} samples of seed {seed}").to(held.r.device)
            alpha = unit_alpha(top_units(ctx, job.dep("ace"), layer, name, n_units), units, layer=layer,
                               device=held.r.device)

            def fold(p: LayerPool, st: dict[str, Any], b: PoolBatch) -> None:
                st["effects"].add(insertion_effects(p.gen, p.seg, layer, b.r, b.z, b.masks[:, c], alpha, kc, c,
                                                    radius=radius, neighbourhood=hood, chunk=chunk).view(-1, h, w))

            effects = pool.stream(ctx, job, pass_name("insert", layer, name, "effects"), lambda _: {"effects": Gather()},
                                  fold, samples, bs)["effects"].result()  # [N, h, w]
            row = {**base, "layer": layer, "concept": name}
            out["insertion_contexts"] += [{**row, **cr} for cr in context_rows(seg, effects, contexts)]
            for i in range(n):
                for y in range(h):
                    for x in range(w):
                        lab = int(single[i, y, x])
                        out["insertion_maps"].append({
                            **row, "seed": seed, "sample": i, "y": y, "x": x,
                            "context": seg.concepts[lab].name if lab else None, "effect": float(effects[i, y, x])})
    return out
