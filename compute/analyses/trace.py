"""Tracing an insertion (supplement S-6.5, Fig. 17): the change it causes at every later layer.

Reads the job's generator and segmenter and the alphas of the ACE run it depends on (`ace_alpha`);
writes `trace_effects` (one row per inserted concept, later layer and location of that layer).

For each declared concept c and edited layer: the top-`units` alpha units are set to k_c (estimated
on this analysis's samples) at one featuremap location `location = [y, x]` (default: the middle of
the bottom third, where buildings' walls and doors usually stand in the village world) of every
sample. At every later layer the change |edited - unedited| of each channel is divided by that
channel's mean |activation| over the unedited samples, averaged over channels and then over samples:
one value per location of the later layer's featuremap. The sample pool (constants and channel scales)
and each concept's changes are resumable passes of a `compute.core.pool.LayerPool` (named by
`compute.jobs.context.pass_name`: a concept named "pool" has its own checkpoint). Parameters (units,
radius, batch_size, location) are `job.config`'s (defaults in compute/analyses/params.py; code version,
needs and tables in the registry, compute/analyses/__init__.py).

    gandissect run examples/intervene.toml --only trace
"""
from __future__ import annotations

from typing import Any

from compute.analyses.ace import require_concepts
from compute.analyses.insert import top_units
from compute.core.intervene import (InterventionError, channel_scales, concept_index, constant_for, later_layers,
                                    trace_insertion, unit_alpha)
from compute.core.pool import LayerPool, PoolBatch, Sum
from compute.core.stats import ConditionalMean
from compute.jobs.context import Job, RunContext, pass_name


def default_location(h: int, w: int) -> tuple[int, int]:
    return (min(h - 1, (5 * h) // 6), w // 2)


def compute(job: Job, ctx: RunContext) -> dict[str, list[dict[str, Any]]]:
    cfg = job.config
    gen, seg = ctx.generator(job), ctx.segmenter(job)
    concepts = require_concepts(job)
    n_units, radius, bs = int(cfg.units), int(cfg.radius), int(cfg.batch_size)
    seed, n = int(cfg.seed), int(cfg.samples)
    base = {"run_key": job.run_key, "model": job.model.name}
    rows: list[dict[str, Any]] = []
    for layer in job.layers:
        targets = later_layers(gen, layer)
        pool = LayerPool.of(job, ctx, layer, seed)

        def make(_: Any) -> dict[str, Any]:
            return {"k": ConditionalMean(), **{f"scale.{t}": Sum() for t in targets}}

        def fold(p: LayerPool, st: dict[str, Any], b: PoolBatch) -> None:
            p.fold_constants(st["k"], b)
            # mean |activation| over all samples (equal spatial sizes: weight by sample count)
            for t, v in channel_scales(p.gen, layer, b.r, b.z, targets).items():
                st[f"scale.{t}"].add(v * (b.r.shape[0] / n))

        stats = pool.stream(ctx, job, pass_name("trace", layer, "pool"), make, fold, n, bs)
        first = pool.batch(0, min(bs, n))
        device = first.r.device
        units, h, w = first.r.shape[1:]
        loc = cfg.location
        y, x = (int(loc[0]), int(loc[1])) if loc is not None else default_location(h, w)
        if not (0 <= y < h and 0 <= x < w):
            raise InterventionError(f"trace location ({y}, {x}) is outside the {h}x{w} featuremap of {layer!r}")
        scales = {t: stats[f"scale.{t}"].result().to(device) for t in targets}
        k = stats["k"].result().T.float()
        for name in concepts:
            c = concept_index(seg, name)
            kc = constant_for(k, seg, name, f"the {n} samples of seed {seed}").to(device)
            alpha = unit_alpha(top_units(ctx, job.dep("ace"), layer, name, n_units), units, layer=layer, device=device)

            def fold_change(p: LayerPool, st: dict[str, Any], b: PoolBatch) -> None:
                for t, ch in trace_insertion(p.gen, layer, b.r, b.z, alpha, kc, (y, x), targets, scales,
                                             radius).items():
                    st[t].add(ch.sum(0))

            sums = pool.stream(ctx, job, pass_name("trace", layer, name, "change"), lambda _: {t: Sum() for t in targets},
                               fold_change, n, bs)
            for t in targets:
                mean = (sums[t].result() / n).double()
                rows += [{**base, "layer": layer, "concept": name, "target_layer": t, "y": yy, "x": xx,
                          "effect": float(mean[yy, xx])}
                         for yy in range(mean.shape[0]) for xx in range(mean.shape[1])]
    return {"trace_effects": rows}
