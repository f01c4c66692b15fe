"""Dissection (paper section 3.1): IoU of every unit of every layer with every concept, and a permutation test.

Reads the job's generator and segmenter; writes `unit_quantiles`, `unit_topk`, `unit_iou` and
`layer_null_iou`. `method` (runs.params when "one-pass"; default "two-pass", measured faster on CPU; one-pass needs a
q<level> threshold, a rank known before the pass):

- "one-pass": one generator + segmenter pass per batch; per layer a `JointHist` (compute/core/joint_hist.py:
  unit x bin x concept-pattern counts on per-unit edges from the first batch, and the exact permutation
  null at candidate edges around rank q) and a TopK. After the pass the threshold is the candidate edge
  nearest rank q (rank error measured exactly, nominally 9.4e-5 to 6.3e-4 (the candidate window widens with the first batch's spread), warned about above 1e-3), and
  every count, IoU and null moment is exact at it; unit_quantiles interpolate inside equal-mass bins
  (rank error ~1e-3). Featuremaps are upsampled one chunk of units at a time.
- "two-pass" (the passes below), each serving every layer at once:

1. quantiles: the generator cut after the deepest dissected layer, no segmenter (thresholds t_u);
2. (iqr mode) held-out IoU counts at 100 candidate levels on a sample set drawn with another seed;
3. IoU and null: one generator pass and one segmenter pass per batch; each layer's featuremap is
   upsampled to the segmentation resolution (`upsample`: "pnas" default, "iclr", "align_corners"; see
   quantiles.upsample), thresholded and intersected with every concept mask, for every pairing of maps
   and masks inside blocks of `null_block` samples (stats.PermutationNull: the exact permutation mean and
   variance of the intersection count, i.e. the IoU the unit would get with the segmentations of *other*
   images, masks left in place). p = the normal tail of the count's permutation distribution;
   q = Benjamini-Hochberg over every unit x concept test of the layer; a unit beats chance when its best
   concept has q < 0.05 (the unit_labels view).

Threshold modes (`threshold`, recorded in runs.params):
- "q0.99" (PNAS; any q<level>): t_u = the unit's 0.99 quantile of the upsampled map;
- "iclr": t_u = the unit's 0.995 quantile of the raw (not upsampled) featuremap, as the ICLR code;
- "iqr" (ICLR's information quality ratio): candidate levels 1 - logspace(-3, 0, 100) of the unit's
  quantiles; on the held-out set, pairs are ruled out when pixel agreement <= 0.8, the level is <= 0 or
  the lowest one, the concept covers < 0.1 % of pixels, or the unit is not positively associated with
  the concept (|A & M| <= |A| |M| / pixels: an anti-detector); the best remaining IQR picks the level.
  `iqr_threshold = "unit"` (default, the ICLR code's per-unit threshold: the level of the unit's best
  (concept, level) pair, applied to every concept) or "unit_concept" (the paper's text: each pair at its
  own level).

`parts = "quad"` adds the ICLR concept-t/-b/-l/-r halves of every connected component of each object
concept (category "quad"; see ingest.models.village_seg.quad_expand).

Parameters are `job.config`'s, checked at parse time (defaults in compute/analyses/params.py; code version
and tables in the registry, compute/analyses/__init__.py); `method` is resolved at plan time (`resolve`).

    gandissect run gandissect.toml --only dissect
"""
from __future__ import annotations

import copy
import functools
import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from compute.analyses.quantiles import (GRID, IQR_LEVELS, check_finite, quantile_pass, quantile_rows,
                                        topk_rows, upsample)
from compute.jobs.context import Job, RunContext
from compute.core.joint_hist import JointHist
from compute.core.stats import IoUCounts, PermutationNull, TopK, bh_qvalues
from compute.core.tap import Tap
from ingest.checks import Threshold
from ingest.samples import latents

# (code version 2: permutation null + BH q-values, upsample modes, ICLR IQR grid and filters, quad parts;
# method = "one-pass" is recorded in runs.params, so its runs get their own keys; two-pass rows are unchanged)
HOLDOUT_SEED_OFFSET = 1_000_003  # the IQR held-out set is seed + this
FDR = 0.05                       # beats chance: BH q < FDR (the unit_labels view)
MIN_CONCEPT_FRACTION = 1e-3      # IQR: concepts rarer than this are not trusted (the ICLR code)
MIN_AGREEMENT = 0.8              # IQR: pixel agreement must exceed this (the ICLR code)
RANK_WARN = 1e-3                 # one-pass: warn where a threshold's exact rank is further than this from q


def default_method(threshold: str) -> str:
    """two-pass: measured faster on CPU than this one-pass implementation (README, dissection benchmark),
    whose rows agree within the stated bound; one-pass is opt-in (q<level> thresholds only)."""
    return "two-pass"


def resolve(store: str, a: Any, model: str, layers: tuple[str, ...]) -> dict[str, Any]:
    """Plan-time parameters: method = "one-pass" when chosen (recorded in runs.params and the run key);
    nothing for the default two-pass, so its run keys and rows stay those of earlier runs."""
    m = str(a.param("method", default_method(a.threshold)))
    return {"method": m} if m != "two-pass" else {}


def method_of(job: Job) -> str:
    """The run's method: `method` when given (checked at parse time), else `default_method`; one-pass
    needs a q<level> threshold."""
    cfg = job.config
    m = str(cfg.method) if cfg.method is not None else default_method(cfg.threshold)
    if m == "one-pass" and Threshold.parse(cfg.threshold).kind != "quantile":
        raise ValueError(f"method = \"one-pass\" needs a q<level> threshold (got {cfg.threshold!r}); "
                         "use method = \"two-pass\"")
    return m


def concept_names(job: Job, ctx: RunContext) -> tuple[list[str], list[str]]:
    """(names, categories) of the concepts dissected: the segmenter's concepts 1..K-1, then with
    `parts = "quad"` the c-t/-b/-l/-r halves of every object concept (category "quad")."""
    seg = ctx.segmenter(job)
    names = [c.name for c in seg.concepts][1:]
    cats = [c.category for c in seg.concepts][1:]
    if job.config.parts == "quad":
        objects = [n for n, c in zip(names, cats) if c == "object"]
        quads = [f"{n}-{s}" for n in objects for s in ("t", "b", "l", "r")]
        names, cats = names + quads, cats + ["quad"] * len(quads)
    return names, cats


def segment_batch(job: Job, ctx: RunContext, images: torch.Tensor, size: int) -> torch.Tensor:
    """Concept masks of generated images: [N, 3, H, W] -> bool [N, K', size, size] (concepts 1..K-1, then
    the quad halves of the object concepts when `parts = "quad"`)."""
    from ingest.models.village_seg import quad_expand

    seg = ctx.segmenter(job)
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    masks = seg.concept_masks(images)[:, 1:]
    if job.config.parts == "quad":
        cats = [c.category for c in seg.concepts][1:]
        obj = [k for k, c in enumerate(cats) if c == "object"]
        quad, _ = quad_expand(masks[:, obj].cpu().numpy(), [str(k) for k in obj])
        masks = torch.cat([masks, torch.from_numpy(quad).to(masks.device)], 1)
    return masks


def count_pass(job: Job, ctx: RunContext, make: Callable[[str], Any], size: int, seed: int, n: int,
               name: str) -> dict[str, Any]:
    """One generator + segmenter pass over n samples of `seed`; stats[layer] = make(layer) gets
    add(upsampled featuremap [N, C, size, size], masks bool [N, K, size, size]) per batch. One pass of
    the context's engine (resumable; shardable: every shard starts from a copy of the empty statistics
    made here, so `make` may close over this context)."""
    bs, mode = int(job.config.batch_size), str(job.config.upsample)
    empty = {f"s.{l}": make(l) for l in job.layers}

    def fresh(c: RunContext) -> dict[str, Any]:
        return copy.deepcopy(empty)

    def step(c: RunContext, stats: dict[str, Any], start: int, count: int) -> None:
        images, acts = generate(job, c, seed, start, count)
        with torch.no_grad():
            masks = segment_batch(job, c, images, size)
            for l, a in acts.items():
                stats[f"s.{l}"].add(upsample(a, size, mode), masks)

    stats = ctx.engine.run_pass(job, ctx, name, fresh, step, n, bs)
    return {l: stats[f"s.{l}"] for l in job.layers}


def generate(job: Job, ctx: RunContext, seed: int, start: int, count: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images [count, 3, H, W] of samples [start, start + count) of the seed's sample set and the job's
    layers' featuremaps {layer: [count, C, h, w]} (checked finite)."""
    gen = ctx.generator(job)
    z = latents(seed, count, int(gen.z_dim), start=start).to(ctx.device)
    with torch.no_grad():
        with Tap(gen, job.layers) as tap:
            images = gen(z)
            acts = {l: tap[l] for l in job.layers}
    for l, a in acts.items():
        check_finite(a, l, job.model.name)
    return images, acts


def iqr_choice(hold: IoUCounts, levels: torch.Tensor, per: str) -> torch.Tensor:
    """The ICLR level choice from held-out counts at T candidate levels (thresholds [C, T], levels [T]
    descending to 0): index [C, K] (per = "unit_concept") or [C] (per = "unit") into the levels; where
    every level is ruled out, index 0 (the highest level)."""
    iqr = iqr_candidates(hold, levels)
    if per == "unit_concept":
        return iqr.argmax(1)                                                        # [C, K]
    flat = iqr.flatten(1).argmax(1)                                                 # best (level, concept)
    return flat // iqr.shape[2]                                                     # [C]


def iqr_candidates(hold: IoUCounts, levels: torch.Tensor) -> torch.Tensor:
    """Held-out IQR [C, T, K] float64 with ruled-out pairs set to -1: pixel agreement <= 0.8, level <= 0
    or the last level, concepts under 0.1 % of pixels, no positive association (|A & M| <= |A| |M| / pixels)."""
    iqr = torch.nan_to_num(hold.iqr().double(), nan=-1.0)                           # [C, T, K]
    px = max(hold.pixels, 1)
    inter = hold.inter.double()
    above = hold.above.double()[:, :, None]
    concept = hold.concept.double()[None, None, :]
    agreement = (px - above - concept + 2 * inter) / px
    bad = (agreement <= MIN_AGREEMENT) | (inter * px <= above * concept)
    bad |= (concept / px < MIN_CONCEPT_FRACTION).expand_as(bad)
    bad[:, (levels <= 0).to(bad.device)] = True
    bad[:, -1] = True
    return torch.where(bad, torch.full_like(iqr, -1.0), iqr)


def compute(job: Job, ctx: RunContext) -> dict[str, list[dict[str, Any]]]:
    cfg = job.config
    seed, samples = int(cfg.seed), int(cfg.samples)
    seg = ctx.segmenter(job)
    size = int(seg.resolution)
    names, cats = concept_names(job, ctx)
    if cfg.parts == "quad":  # the quad concepts join the segmenter's in the concepts dimension
        from db import store
        store.upsert_dimension("concepts", [{"segmenter": job.segmenter.name, "concept": n, "category": c,
                                             "concept_index": None}
                                            for n, c in zip(names, cats) if c == "quad"], path=ctx.store)
    threshold = Threshold.parse(cfg.threshold)
    block = int(cfg.null_block)
    if method_of(job) == "one-pass":
        return one_pass(job, ctx, size, names, threshold.level, block)
    per = str(cfg.iqr_threshold)
    quant, topk, raw = quantile_pass(job, ctx, size, seed, samples, raw=threshold.kind == "iclr")
    if threshold.kind == "iqr":
        levels = torch.tensor(IQR_LEVELS, dtype=torch.float64)
        cand = {l: quant[l].quantiles(levels).float() for l in job.layers}         # [C, T]
        hold_n = int(cfg.holdout_samples) if cfg.holdout_samples is not None else max(64, samples // 2)
        hold = count_pass(job, ctx, lambda l: IoUCounts(cand[l], device=ctx.device), size,
                          seed + HOLDOUT_SEED_OFFSET, hold_n, "holdout")
        thr = {}
        for l in job.layers:
            choice = iqr_choice(hold[l], levels, per).to(cand[l].device)
            thr[l] = cand[l].gather(1, choice if choice.dim() == 2 else choice[:, None])
            thr[l] = thr[l] if per == "unit_concept" else thr[l][:, 0]              # [C, K] or [C]
    elif threshold.kind == "iclr":
        thr = {l: raw[l].quantiles(torch.tensor([threshold.level], dtype=torch.float64))[:, 0].float()
               for l in job.layers}
    else:
        q = threshold.level
        thr = {l: quant[l].quantiles(torch.tensor([q], dtype=torch.float64))[:, 0].float() for l in job.layers}
    main = count_pass(job, ctx, lambda l: PermutationNull(thr[l], block=block, device=ctx.device), size,
                      seed, samples, "iou")
    iou_rows: list[dict[str, Any]] = []
    null_rows: list[dict[str, Any]] = []
    absent: set[str] = set()
    for l in job.layers:
        rows, summary = layer_rows(job, l, names, main[l], with_iqr=threshold.kind == "iqr")
        iou_rows += rows
        null_rows.append(summary)
        absent |= {names[k] for k in range(len(names)) if int(main[l].concept[k]) == 0}
    if absent:
        print(f"note: {job.analysis.name} [{job.model.name}]: concepts never present in the sample "
              f"(IoU NULL): {', '.join(sorted(absent))}")
    return {"unit_quantiles": quantile_rows(job, quant, GRID), "unit_topk": topk_rows(job, topk, seed),
            "unit_iou": iou_rows, "layer_null_iou": null_rows}


def one_pass_stats(job: Job, ctx: RunContext, size: int, level: float,
                   block: int) -> tuple[dict[str, JointHist], dict[str, TopK]]:
    """One generator + segmenter pass over the job's samples: per layer a JointHist (featuremaps
    upsampled a chunk of units at a time) and the top-k samples by spatial max. One pass of the context's
    engine (resumable; shardable: the JointHist edges come from the first batch in every shard's `make`,
    as they would from the first `add` of one stat)."""
    cfg = job.config
    bs, k, mode = int(cfg.batch_size), int(cfg.topk), str(cfg.upsample)
    seed, samples = int(cfg.seed), int(cfg.samples)
    lift = functools.partial(upsample, size=size, mode=mode)

    def make(c: RunContext) -> dict[str, Any]:
        _, acts = generate(job, c, seed, 0, min(bs, samples))   # the first batch fixes every unit's edges
        stats: dict[str, Any] = {}
        for l in job.layers:
            stats[f"h.{l}"] = JointHist(level=level, block=block, device=c.device)
            stats[f"h.{l}"].warm_up(acts[l], lift)
            stats[f"t.{l}"] = TopK(k, device=c.device)
        return stats

    def step(c: RunContext, stats: dict[str, Any], start: int, count: int) -> None:
        images, acts = generate(job, c, seed, start, count)
        with torch.no_grad():
            masks = segment_batch(job, c, images, size)
            index = torch.arange(start, start + count, device=c.device)
            for l, act in acts.items():
                stats[f"t.{l}"].add(act.flatten(2).amax(2), index)
                stats[f"h.{l}"].add(act, masks, lift=lift)

    stats = ctx.engine.run_pass(job, ctx, "onepass", make, step, samples, bs)
    return {l: stats[f"h.{l}"] for l in job.layers}, {l: stats[f"t.{l}"] for l in job.layers}


def one_pass(job: Job, ctx: RunContext, size: int, names: list[str], level: float,
             block: int) -> dict[str, list[dict[str, Any]]]:
    """The q<level> dissection's four tables from one pass (method = "one-pass")."""
    hist, top = one_pass_stats(job, ctx, size, level, block)
    iou_rows: list[dict[str, Any]] = []
    null_rows: list[dict[str, Any]] = []
    absent: set[str] = set()
    worst = 0.0
    for l in job.layers:
        _, j = hist[l].threshold()
        worst = max(worst, float(hist[l].rank_error().max()))
        stat = hist[l].null_at(j)
        rows, summary = layer_rows(job, l, names, stat)
        iou_rows += rows
        null_rows.append(summary)
        absent |= {names[k] for k in range(len(names)) if int(stat.concept[k]) == 0}
    if absent:
        print(f"note: {job.analysis.name} [{job.model.name}]: concepts never present in the sample "
              f"(IoU NULL): {', '.join(sorted(absent))}")
    if worst > RANK_WARN:
        print(f"note: {job.analysis.name} [{job.model.name}]: a one-pass threshold is {worst:.2g} in rank from "
              f"q{level} (the first batch misjudged the unit's level); method = \"two-pass\" counts at the exact quantile")
    return {"unit_quantiles": quantile_rows(job, hist, GRID), "unit_topk": topk_rows(job, top, int(job.config.seed)),
            "unit_iou": iou_rows, "layer_null_iou": null_rows}


def layer_tests(stat: PermutationNull) -> dict[str, torch.Tensor]:
    """Per (unit, concept) [C, K] float64: iou, null mean/sd IoU, z, p, log10 p and the layer's BH q."""
    iou = stat.iou().cpu()
    null_mean, null_sd = (t.cpu() for t in stat.null_iou())
    p = stat.p_value().cpu()
    return {"iou": iou, "null_mean": null_mean, "null_std": null_sd, "z": stat.z().cpu(), "p": p,
            "log10_p": stat.log10_p().cpu(), "q": bh_qvalues(p)}


def _num(v: float) -> float | None:
    return v if math.isfinite(v) else None


def layer_rows(job: Job, layer: str, names: list[str], stat: PermutationNull,
               with_iqr: bool = False) -> tuple[list[dict], dict]:
    """unit_iou rows and the layer_null_iou summary of one layer."""
    t = layer_tests(stat)
    units, k = t["iou"].shape
    thr = stat.thresholds.double().cpu()
    thr = thr[:, None].expand(units, k) if thr.dim() == 1 else thr
    above = stat.above.cpu()
    inter = stat.inter.cpu()
    concept = stat.concept.cpu()
    iqr = stat.iqr().cpu() if with_iqr else None
    cols = {key: v.tolist() for key, v in t.items()}
    rows = []
    for u in range(units):
        for c in range(k):
            present = int(concept[c]) > 0
            rows.append({
                "run_key": job.run_key, "model": job.model.name, "layer": layer, "unit": u, "concept": names[c],
                "threshold": float(thr[u, c]), "iou": cols["iou"][u][c] if present else None,
                "inter": float(inter[u, c]), "above": float(above[u, c]), "concept_pixels": float(concept[c]),
                "iqr": float(iqr[u, c]) if iqr is not None and present else None,
                "null_mean": _num(cols["null_mean"][u][c]), "null_std": _num(cols["null_std"][u][c]),
                "z": _num(cols["z"][u][c]), "p_value": _num(cols["p"][u][c]),
                "q_value": _num(cols["q"][u][c]), "log10_p": _num(cols["log10_p"][u][c]),
            })
    # the null's expected best IoU per unit: max over concepts of the permutation mean IoU
    null_best = torch.nan_to_num(t["null_mean"], nan=-1.0).amax(1).clamp(min=0)
    q = lambda x: float(torch.quantile(null_best, x))  # noqa: E731
    summary = {"run_key": job.run_key, "model": job.model.name, "layer": layer, "method": "permutation",
               "n_values": units, "mean": float(null_best.mean()),
               "std": float(null_best.std()) if units > 1 else 0.0, "median": float(null_best.median()),
               "q90": q(0.90), "q95": q(0.95), "q99": q(0.99), "max": float(null_best.max())}
    return rows, summary


def fraction_beating_chance(tests: dict[str, torch.Tensor], fdr: float = FDR) -> float:
    """Share of units whose best concept (by IoU) has BH q < fdr."""
    best = torch.nan_to_num(tests["iou"], nan=-1.0).argmax(1)
    q = tests["q"].gather(1, best[:, None])[:, 0]
    return float(np.mean(np.nan_to_num(q.numpy(), nan=1.0) < fdr))
