"""Tracing an insertion (supplement S-6.5, Fig. 17): the change it causes at every later layer.

Reads the job's generator and segmenter and the alphas of the ACE run it depends on (`ace_alpha`);
writes `trace_effects` (one row per inserted concept, later layer and location of that layer).

For each declared concept c and edited layer: the top-`units` alpha units are set to k_c (estimated
on this analysis's samples) at one featuremap location `location = [y, x]` (default: the middle of
the bottom third, where buildings' walls and doors usually stand in the village world) of every
sample. At every later layer the change |edited - unedited| of each channel is divided by that
channel's mean |activation| over the unedited samples, averaged over channels and then over samples:
one value per location of the later layer's featuremap.

    gandissect run examples/intervene.toml --only trace
"""
from __future__ import annotations

from typing import Any

import torch

from compute.analyses.ace import require_concepts
from compute.analyses.insert import top_units
from compute.jobs.context import Job, RunContext
from compute.core.intervene import (InterventionError, channel_scales, concept_index, constant_for, coverage,
                               featuremap, finish, later_layers, trace_insertion, unit_alpha)
from compute.core.stats import ConditionalMean
from ingest.samples import latents

CODE_VERSION = "1"
NEEDS: tuple[str, ...] = ("ace",)
TABLES = ("trace_effects",)
DEFAULTS: dict[str, Any] = {"units": 20, "radius": 0, "batch_size": 32}


def default_location(h: int, w: int) -> tuple[int, int]:
    return (min(h - 1, (5 * h) // 6), w // 2)


def compute(job: Job, ctx: RunContext) -> dict[str, list[dict[str, Any]]]:
    a = job.analysis
    gen, seg = ctx.generator(job), ctx.segmenter(job)
    concepts = require_concepts(job)
    n_units = int(a.param("units", DEFAULTS["units"]))
    radius = int(a.param("radius", DEFAULTS["radius"]))
    bs = int(a.param("batch_size", DEFAULTS["batch_size"]))
    base = {"run_key": job.run_key, "model": job.model.name}
    rows: list[dict[str, Any]] = []
    for layer in job.layers:
        targets = later_layers(gen, layer)
        rs, zs, stat = [], [], ConditionalMean()
        for s in range(0, a.samples, bs):
            z = latents(a.seed, min(bs, a.samples - s), int(gen.z_dim), start=s).to(ctx.device)
            r = featuremap(gen, layer, z)
            with torch.no_grad():
                m = seg.concept_masks(finish(gen, layer, r, z))
            stat.add(r, coverage(m, r.shape[2], r.shape[3]))
            rs.append(r)
            zs.append(z)
        n = sum(r.shape[0] for r in rs)
        units, h, w = rs[0].shape[1:]
        loc = a.param("location", None)
        y, x = (int(loc[0]), int(loc[1])) if loc is not None else default_location(h, w)
        if not (0 <= y < h and 0 <= x < w):
            raise InterventionError(f"trace location ({y}, {x}) is outside the {h}x{w} featuremap of {layer!r}")
        scales: dict[str, torch.Tensor] = {}
        for r, z in zip(rs, zs):  # mean |activation| over all samples (equal spatial sizes: weight by sample count)
            for t, v in channel_scales(gen, layer, r, z, targets).items():
                scales[t] = scales.get(t, 0) + v * (r.shape[0] / n)
        k = stat.result().T.float()
        for name in concepts:
            c = concept_index(seg, name)
            kc = constant_for(k, seg, name, f"the {n} samples of seed {a.seed}").to(rs[0].device)
            alpha = unit_alpha(top_units(ctx, job.dep("ace"), layer, name, n_units), units, layer=layer,
                               device=rs[0].device)
            sums: dict[str, torch.Tensor] = {}
            for r, z in zip(rs, zs):
                for t, ch in trace_insertion(gen, layer, r, z, alpha, kc, (y, x), targets, scales, radius).items():
                    sums[t] = sums.get(t, 0) + ch.sum(0).cpu()
            for t, total in sums.items():
                mean = (total / n).double()
                rows += [{**base, "layer": layer, "concept": name, "target_layer": t, "y": yy, "x": xx,
                          "effect": float(mean[yy, xx])}
                         for yy in range(mean.shape[0]) for xx in range(mean.shape[1])]
    return {"trace_effects": rows}
