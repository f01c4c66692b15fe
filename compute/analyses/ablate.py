"""Ablation curves (paper Fig. 4, 9, 10) and causal effects of unit sets, on a held-out sample set.

Reads the job's generator and segmenter, the IoU of the dissection (`unit_iou`) and the alphas of the
ACE run (`ace_alpha`) it depends on; writes `ablation_curves` and `causal_effects`.

For each declared concept c and layer, the units are ranked three ways: by alpha (`ace`: alpha
descending, ties by IoU), by IoU (`iou`) and at random (`random`: `draws` permutations). The top-n
units (n in 0..`n_max`, or the list `n_units`) are ablated (set to 0) over the whole image, and `remaining` is the fraction of
c's baseline pixels (hard segmentation, summed over the held-out images) still labelled c; for random,
the mean over draws with its standard deviation.

`causal_effects` evaluates the top-`effect_units` sets (ace, iou and each random draw, averaged) as in
S-6.4's evaluation: ablation over the whole image, insertion (units set to k_c, estimated on the same
held-out samples) at `insert_locations` uniformly drawn featuremap locations per sample, with s_c the
hard segmentation's share of c in the location's pixel block:
    ablation  = (E[s_c(x)] - E[s_c(x_a)]) / E[s_c(x)]       (whole image: 1 - remaining)
    insertion = (E[s_c(x_i)] - E[s_c(x)]) / E[s_c(x)]       (E[s_c(x)] = c's pixel fraction)
    ace       = ablation + insertion
The held-out set is samples 0..samples-1 of this analysis's seed, which must differ from the ACE
run's seed. The generator below the layer runs once per sample (on an nn.Sequential generator; on
StyleGAN2 and module generators each edited copy reruns the whole forward pass on its latent with the
layer's output replaced: `compute.core.intervene.finish`); all edits run on stacked copies. The held-out
pool (`compute.core.pool.LayerPool`) and each concept's ablated pixel counts are resumable passes, named by
`compute.jobs.context.pass_name` (a dotted layer or concept never shares another pass's checkpoint).
Parameters (n_max, n_units, draws, effect_units, insert_locations, chunk, batch_size) are `job.config`'s
(defaults in compute/analyses/params.py; code version, needs and tables in the registry,
compute/analyses/__init__.py).

    gandissect run examples/intervene.toml --only ablate
"""
from __future__ import annotations

import json
import math
from typing import Any

import torch

from compute import analyses
from compute.analyses.ace import require_concepts
from compute.core.intervene import (InterventionError, block_mean, concept_index, edit_featuremap, location_masks,
                                    unit_alpha)
from compute.core.pool import LayerPool, PoolBatch, Sum
from compute.jobs.context import Job, RunContext, pass_name

ALPHA_SQL = ("select a.unit, a.alpha, i.iou from ace_alpha a left join unit_iou i on i.run_key = ? "
             "and i.layer = a.layer and i.unit = a.unit and i.concept = a.concept "
             "where a.run_key = ? and a.layer = ? and a.concept = ? order by a.unit")
RUN_SQL = "select seed, n_samples from runs where run_key = ?"


def rankings(ctx: RunContext, job: Job, layer: str, concept: str, units: int) -> tuple[list[int], list[int]]:
    """Unit orders by alpha (ties by IoU, then index) and by IoU (then index) for one concept."""
    df = ctx.read(ALPHA_SQL, [job.dep("dissect"), job.dep("ace"), layer, concept])
    if len(df) == 0:
        raise InterventionError(f"the ACE run has no alpha for concept {concept!r} at layer {layer!r}: "
                                f"declare it in the ace analysis's concepts")
    alpha = {int(u): float(a) for u, a in zip(df["unit"], df["alpha"])}
    iou = {int(u): (float(v) if v is not None and math.isfinite(v) else -1.0) for u, v in zip(df["unit"], df["iou"])}
    by_alpha = sorted(range(units), key=lambda u: (-alpha.get(u, 0.0), -iou.get(u, -1.0), u))
    by_iou = sorted(range(units), key=lambda u: (-iou.get(u, -1.0), u))
    return by_alpha, by_iou


def random_orders(units: int, draws: int, seed: int, concept: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed * 31_337 + concept)
    return [torch.randperm(units, generator=g).tolist() for _ in range(draws)]


class Samples:
    """The held-out set's featuremaps and baseline masks at one layer (lower generator run once), from a
    `LayerPool` whose constants pass is resumable."""

    def __init__(self, job: Job, ctx: RunContext, layer: str, seed: int, n: int, batch_size: int) -> None:
        self.pool = LayerPool.of(job, ctx, layer, seed)
        self.k = self.pool.constants(ctx, job, n, batch_size, pass_name("ablate", layer, "k"))  # [K, C]
        self.parts = [self.pool.batch(s, min(batch_size, n - s)) for s in range(0, n, batch_size)]
        self.r = [b.r for b in self.parts]  # per batch: featuremaps [B, C, h, w]
        self.z = [b.z for b in self.parts]  # per batch: latents [B, z_dim]
        self.masks = torch.cat([b.masks for b in self.parts])  # bool [N, K, H, W]
        self.counts = self.masks.sum((0, 2, 3)).double().cpu()  # [K] baseline pixels
        self.n, self.batch_size = n, batch_size


def ablated_counts(job: Job, ctx: RunContext, name: str, layer: str, data: Samples, sets: list[tuple[int, ...]],
                   chunk: int) -> dict[tuple[int, ...], torch.Tensor]:
    """Pixels of every concept [K] over the held-out images with each unit set ablated everywhere (one
    resumable pass `name` over the held-out batches).

    Several unit sets share a forward pass (about `chunk` edited featuremaps per pass); the empty set
    is the baseline.
    """
    out: dict[tuple[int, ...], torch.Tensor] = {(): data.counts.clone()}
    todo = [s for s in dict.fromkeys(sets) if s]
    units = data.r[0].shape[1]
    alphas = {us: unit_alpha(list(us), units, layer=layer, device=data.r[0].device) for us in todo}

    def fold(p: LayerPool, st: dict[str, Any], b: PoolBatch) -> None:
        r, z = b.r, b.z
        group = max(1, chunk // r.shape[0])
        with torch.no_grad():
            for g in range(0, len(todo), group):
                keys = todo[g:g + group]
                edited = torch.cat([edit_featuremap(r, alphas[us], 0.0, None, layer) for us in keys])
                counts = p.segment(p.finish(edited, z.repeat(len(keys), 1))).sum((2, 3)).double().cpu()  # [G*B, K]
                for i, us in enumerate(keys):
                    st[str(g + i)].add(counts[i * r.shape[0]:(i + 1) * r.shape[0]].sum(0))

    if todo:
        totals = data.pool.stream(ctx, job, name, lambda _: {str(i): Sum() for i in range(len(todo))}, fold, data.n,
                                  data.batch_size)
        out.update({us: totals[str(i)].result() for i, us in enumerate(todo)})
    return out


def insertion_share(layer: str, data: Samples, units: tuple[int, ...], c: int,
                    locations: torch.Tensor, chunk: int) -> tuple[float, float]:
    """Mean share of c in the pixel block of each (sample, location) before and after inserting `units`
    there (value k_c). locations [N, m, 2] -> (before, after)."""
    r_all, z_all = torch.cat(data.r), torch.cat(data.z)
    n, ch, h, w = r_all.shape
    alpha = unit_alpha(list(units), ch, layer=layer, device=r_all.device)
    kc = data.k[c].to(r_all.device)
    m = locations.shape[1]
    flat = locations.reshape(-1, 2).to(r_all.device)
    sample = torch.arange(n, device=r_all.device).repeat_interleave(m)
    before = block_mean(data.masks[:, c].float(), h, w)[sample, flat[:, 0], flat[:, 1]]
    after = torch.empty_like(before)
    with torch.no_grad():
        for s in range(0, flat.shape[0], chunk):
            idx = slice(s, s + chunk)
            masks = location_masks(h, w, flat[idx], device=r_all.device)
            images = data.pool.finish(edit_featuremap(r_all[sample[idx]], alpha, kc, masks, layer), z_all[sample[idx]])
            share = block_mean(data.pool.segment(images)[:, c].float(), h, w)
            after[idx] = share[torch.arange(share.shape[0]), flat[idx, 0], flat[idx, 1]]
    return float(before.mean()), float(after.mean())


def compute(job: Job, ctx: RunContext) -> dict[str, list[dict[str, Any]]]:
    cfg = job.config
    analysis, seed = cfg.name, int(cfg.seed)
    seg = ctx.segmenter(job)
    concepts = require_concepts(job)
    ace_run = ctx.read(RUN_SQL, [job.dep("ace")])
    if len(ace_run) and int(ace_run["seed"][0]) == seed:
        raise InterventionError(f"analysis {analysis!r}: seed {seed} is the ACE run's seed; the ablation set must "
                                f"be held out: choose another seed")
    n_max, draws, top = int(cfg.n_max), int(cfg.draws), int(cfg.effect_units)
    n_loc, chunk, bs = int(cfg.insert_locations), int(cfg.chunk), int(cfg.batch_size)
    sizes = cfg.n_units if cfg.n_units is not None else range(0, n_max + 1)
    base = {"run_key": job.run_key, "model": job.model.name}
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in analyses.kind("ablate").tables}
    for layer in job.layers:
        data = Samples(job, ctx, layer, seed, int(cfg.samples), bs)
        units = data.r[0].shape[1]
        grid = sorted({int(n) for n in sizes if 0 <= int(n) <= units} | {0})
        h, w = data.r[0].shape[2:]
        pixels = float(data.masks.shape[0] * data.masks.shape[2] * data.masks.shape[3])
        for name in concepts:
            c = concept_index(seg, name)
            if data.counts[c] == 0:
                print(f"note: {analysis} [{job.model.name}] {layer}: concept {name!r} is absent from every held-out "
                      f"sample; no ablation curve")
                continue
            by_alpha, by_iou = rankings(ctx, job, layer, name, units)
            rand = random_orders(units, draws, seed, c)
            orders = {"ace": [by_alpha], "iou": [by_iou], "random": rand}
            sets = [tuple(sorted(o[:n])) for os in orders.values() for o in os for n in grid]
            sets += [tuple(sorted(o[:top])) for os in orders.values() for o in os]
            counts = ablated_counts(job, ctx, pass_name("ablate", layer, name, "counts"), layer, data, sets, chunk)
            g = torch.Generator().manual_seed(seed * 7 + c)
            locs = torch.stack([torch.randint(h, (data.n, n_loc), generator=g),
                                torch.randint(w, (data.n, n_loc), generator=g)], -1)
            effects = {}
            for kind, os in orders.items():
                vals = []
                for o in os:
                    us = tuple(sorted(o[:top]))
                    before, after = insertion_share(layer, data, us, c, locs, chunk)
                    frac = float(data.counts[c]) / pixels
                    ablation = 1 - float(counts[us][c] / data.counts[c])
                    insertion = (after - before) / frac
                    vals.append((ablation, insertion, list(o[:top])))
                effects[kind] = vals
            curves = {kind: [[float(counts[tuple(sorted(o[:n]))][c] / data.counts[c]) for n in grid] for o in os]
                      for kind, os in orders.items()}
            row = {**base, "layer": layer, "concept": name}
            for kind, per_draw in curves.items():
                t = torch.tensor(per_draw, dtype=torch.float64)  # [draws, len(grid)]
                for j, n in enumerate(grid):
                    out["ablation_curves"].append({
                        **row, "ranking": kind, "n_units": n, "remaining": float(t[:, j].mean()),
                        "remaining_std": float(t[:, j].std(unbiased=False)) if kind == "random" else None,
                        "draws": t.shape[0], "baseline_pixels": float(data.counts[c])})
            for kind, vals in effects.items():
                ab = sum(v[0] for v in vals) / len(vals)
                ins = sum(v[1] for v in vals) / len(vals)
                out["causal_effects"].append({
                    **row, "unit_set": f"{kind}_top{top}", "n_units": min(top, units),
                    "units": json.dumps(vals[0][2]) if len(vals) == 1 else None,
                    "ace": ab + ins, "ablation": ab, "insertion": ins})
    return out
