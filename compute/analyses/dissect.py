"""Dissection (paper section 3.1): IoU of every unit of every layer with every concept, plus a null baseline.

Reads the job's generator and segmenter; writes `unit_quantiles`, `unit_topk`, `unit_iou` and
`layer_null_iou`. Two passes over the sample set, each serving every layer at once:

1. quantiles: the generator cut after the deepest dissected layer, no segmenter (thresholds t_u);
2. IoU: one generator pass and one segmenter pass per batch; each layer's featuremap is upsampled to
   the segmentation resolution (bilinear, align_corners=True), thresholded and intersected with every
   concept mask (one matmul per layer), and also with the masks of *another* sample, circularly shifted
   by a random offset (the null baseline: same units, same thresholds, segmentations that do not belong
   to the image).

Threshold modes (`threshold` in the spec, recorded in runs.params): "q0.99" (PNAS: t_u = the unit's
0.99 quantile) or "iqr" (ICLR: per (unit, concept), the candidate level among the unit's quantiles that
maximises the information quality ratio on a held-out sample set drawn with another seed).

    gandissect run gandissect.toml --only dissect
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from compute.analyses.quantiles import DEFAULTS as QUANTILE_DEFAULTS
from compute.analyses.quantiles import (GRID, IQR_LEVELS, activation_batches, batches, check_finite,
                                        quantile_pass, quantile_rows, topk_rows, upsample)
from compute.context import Checkpoint, Job, RunContext, flat_state, unflat_state
from compute.stats import IoUCounts
from compute.tap import Tap
from ingest.samples import latents

CODE_VERSION = "1"
NEEDS: tuple[str, ...] = ()
TABLES = ("unit_quantiles", "unit_topk", "unit_iou", "layer_null_iou")
DEFAULTS: dict[str, Any] = dict(QUANTILE_DEFAULTS)  # recorded in runs.params (holdout_samples: max(64, samples // 2))
HOLDOUT_SEED_OFFSET = 1_000_003  # the IQR held-out set is seed + this


def null_masks(masks: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Masks of another sample of the batch, circularly shifted: [N, K, H, W] -> [N, K, H, W]."""
    n, _, h, w = masks.shape
    r = int(torch.randint(1, n, (1,), generator=gen)) if n > 1 else 0
    dy, dx = (int(v) for v in torch.randint(0, max(h, w), (2,), generator=gen))
    return torch.roll(masks.roll(r, dims=0), shifts=(dy % h, dx % w), dims=(2, 3))


def segment_batch(job: Job, ctx: RunContext, images: torch.Tensor, size: int) -> torch.Tensor:
    """Concept masks of generated images: [N, 3, H, W] -> bool [N, K-1, size, size] (concepts 1..K-1)."""
    seg = ctx.segmenter(job)
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return seg.concept_masks(images)[:, 1:]


def iou_pass(job: Job, ctx: RunContext, thresholds: dict[str, torch.Tensor], size: int, seed: int, n: int,
             name: str) -> tuple[dict[str, IoUCounts], dict[str, IoUCounts]]:
    """Counts at each threshold level (thresholds[layer] is [C, J]) for true and null segmentations."""
    gen = ctx.generator(job)
    bs = int(job.analysis.param("batch_size", DEFAULTS["batch_size"]))
    todo = batches(n, bs)
    ckpt = Checkpoint(ctx.cache_dir(job), name)
    done, saved, _ = ckpt.load()
    real = {l: IoUCounts(thresholds[l], device=ctx.device) for l in job.layers}
    null = {l: IoUCounts(thresholds[l], device=ctx.device) for l in job.layers}
    if done:
        for l in job.layers:
            real[l].load_state_dict(unflat_state(f"r.{l}", saved))
            null[l].load_state_dict(unflat_state(f"n.{l}", saved))
    for b in ctx.progress(range(done, len(todo)), desc=f"{job.model.name} {name}", total=len(todo), initial=done):
        s, cnt = todo[b]
        z = latents(seed, cnt, int(gen.z_dim), start=s).to(ctx.device)
        with torch.no_grad():
            with Tap(gen, job.layers) as tap:
                images = gen(z)
                acts = {l: tap[l] for l in job.layers}
            masks = segment_batch(job, ctx, images, size)
            shuffled = null_masks(masks, torch.Generator().manual_seed(seed * 100_003 + b))
            for l, a in acts.items():
                check_finite(a, l, job.model.name)
                up = upsample(a, size)
                real[l].add(up, masks)
                null[l].add(up, shuffled)
        if (b + 1) % ctx.checkpoint_every == 0:
            state: dict[str, torch.Tensor] = {}
            for l in job.layers:
                state.update(flat_state(f"r.{l}", real[l].state_dict()))
                state.update(flat_state(f"n.{l}", null[l].state_dict()))
            ckpt.save(b + 1, state)
    return real, null


def compute(job: Job, ctx: RunContext) -> dict[str, list[dict[str, Any]]]:
    a = job.analysis
    seg = ctx.segmenter(job)
    size = int(seg.resolution)
    names = [c.name for c in seg.concepts][1:]
    quant, topk = quantile_pass(job, ctx, size, a.seed, a.samples)
    mode = a.threshold
    if mode == "iqr":
        levels = torch.tensor(IQR_LEVELS, dtype=torch.float64)
        cand = {l: quant[l].quantiles(levels).float() for l in job.layers}  # [C, J]
        hold_n = int(a.param("holdout_samples", max(64, a.samples // 2)))
        hold, _ = iou_pass(job, ctx, cand, size, a.seed + HOLDOUT_SEED_OFFSET, hold_n, "holdout")
        real, null = iou_pass(job, ctx, cand, size, a.seed, a.samples, "iou")
    else:
        q = float(mode[1:])
        cand = {l: quant[l].quantiles(torch.tensor([q], dtype=torch.float64)).float() for l in job.layers}
        hold = None
        real, null = iou_pass(job, ctx, cand, size, a.seed, a.samples, "iou")
    iou_rows: list[dict[str, Any]] = []
    null_rows: list[dict[str, Any]] = []
    absent: set[str] = set()
    for l in job.layers:
        rows, summary = _layer_rows(job, l, names, cand[l], real[l], null[l], hold[l] if hold else None)
        iou_rows += rows
        null_rows.append(summary)
        absent |= {names[k] for k in range(len(names)) if int(real[l].concept[k]) == 0}
    if absent:
        print(f"note: {job.analysis.name} [{job.model.name}]: concepts never present in the sample "
              f"(IoU NULL): {', '.join(sorted(absent))}")
    return {"unit_quantiles": quantile_rows(job, quant, GRID), "unit_topk": topk_rows(job, topk, a.seed),
            "unit_iou": iou_rows, "layer_null_iou": null_rows}


def _pick(values: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """values [C, J, K] at the per-(unit, concept) level index choice [C, K] -> [C, K]."""
    return values.gather(1, choice[:, None, :]).squeeze(1)


def _layer_rows(job: Job, layer: str, names: list[str], thresholds: torch.Tensor, real: IoUCounts,
                null: IoUCounts, hold: IoUCounts | None) -> tuple[list[dict], dict]:
    """unit_iou rows and the layer_null_iou summary of one layer; thresholds [C, J]."""
    units, levels = thresholds.shape
    k = len(names)
    if hold is not None:  # ICLR: per (unit, concept) the level with the best IQR on the held-out set
        choice = torch.nan_to_num(hold.iqr().cpu(), nan=-1.0).argmax(1)  # [C, K]
        iqr_value = _pick(real.iqr().cpu(), choice)  # reported on the main set
    else:
        choice = torch.zeros(units, k, dtype=torch.long)
        iqr_value = None
    t_sel = _pick(thresholds.double().cpu()[:, :, None].expand(units, levels, k), choice)
    i_sel = _pick(real.inter.double().cpu(), choice)
    a_sel = _pick(real.above.double().cpu()[:, :, None].expand(units, levels, k), choice)
    c_all = real.concept.double().cpu()[None, :].expand(units, k)
    iou = _pick(real.iou().cpu(), choice)
    null_iou = _pick(null.iou().cpu(), choice)
    # the layer's null distribution: each unit's best IoU against segmentations of other images
    null_best = torch.nan_to_num(null_iou, nan=-1.0).amax(1)
    mu, sd = float(null_best.mean()), float(null_best.std()) if units > 1 else 0.0
    sd = max(sd, 1e-6)
    z = (iou - mu) / sd
    p = 0.5 * torch.erfc(z / math.sqrt(2.0))  # one-sided normal tail
    rows = []
    for u in range(units):
        for c in range(k):
            v = float(iou[u, c])
            finite = math.isfinite(v)
            rows.append({
                "run_key": job.run_key, "model": job.model.name, "layer": layer, "unit": u, "concept": names[c],
                "threshold": float(t_sel[u, c]), "iou": v if finite else None,
                "inter": float(i_sel[u, c]), "above": float(a_sel[u, c]), "concept_pixels": float(c_all[u, c]),
                "iqr": float(iqr_value[u, c]) if iqr_value is not None and finite else None,
                "null_mean": mu, "null_std": sd,
                "z": float(z[u, c]) if finite else None, "p_value": float(p[u, c]) if finite else None,
            })
    summary = {"run_key": job.run_key, "model": job.model.name, "layer": layer, "method": "shuffle",
               "n_values": units, "mean": mu, "std": sd, "median": float(null_best.median()),
               "q90": float(torch.quantile(null_best, 0.90)), "q95": float(torch.quantile(null_best, 0.95)),
               "q99": float(torch.quantile(null_best, 0.99)), "max": float(null_best.max())}
    return rows, summary
