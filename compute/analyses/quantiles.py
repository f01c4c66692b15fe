"""Activation quantiles and top-k samples of every unit of the job's layers (dissection's first pass).

Reads the job's generator; writes `unit_quantiles` (a grid of levels incl. 0.99, 0.995, 0.999 over the
featuremap upsampled to the segmentation resolution on the grid named by `upsample`, default the PNAS
code's) and `unit_topk` (the
k samples with the highest spatial-max activation per unit). Streaming state is checkpointed under
`.cache/<run_key>/` every few batches, so a killed run resumes where it stopped.

Parameters (batch_size, topk, upsample) are `job.config`'s, checked at parse time (defaults in
compute/analyses/params.py; code version and tables in the registry, compute/analyses/__init__.py).

    gandissect run spec.toml --only NAME      # with kind = "quantiles"
"""
from __future__ import annotations

import functools
import math
from typing import Any, Protocol, Sequence

import torch

from compute.analyses.params import UPSAMPLE_MODES
from compute.jobs.context import Job, RunContext
from compute.jobs.tally import batches  # noqa: F401 (re-exported: compute/bench/pnas_reference reads it here)
from compute.core.stats import Quantile, TopK
from compute.core.tap import Tap
from ingest.samples import latents

# The IQR candidate levels of the ICLR code (netdissect/dissection.py collect_iqr): 1 - logspace(-3, 0, 100),
# from 0.999 down to 0 (the unit's minimum), far below the median.
IQR_LEVELS: tuple[float, ...] = tuple(float(1.0 - 10.0 ** (-3.0 + 3.0 * i / 99)) for i in range(100))
# Levels stored per unit in unit_quantiles.
GRID: tuple[float, ...] = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998,
                           0.999, 1.0)


def source_coords(mode: str, n_in: int, n_out: int) -> torch.Tensor:
    """Where each of n_out output pixels samples the input, in input pixel units (0 = centre of the first
    input pixel), float64 [n_out]. "pnas" and "iclr" use the references' `upsample_grid` (pixel centres:
    scale s = n_out / n_in, offset 0.5 s - 0.5, grid g = (t - offset) * 2 / (s (n_in - 1)) - 1), read
    by `grid_sample` with align_corners=False in the PNAS code (davidbau/dissect, current torch) and
    with the pre-1.3 default align_corners=True in the ICLR code; "align_corners" is
    F.interpolate(align_corners=True)."""
    t = torch.arange(n_out, dtype=torch.float64)
    if mode == "align_corners":
        return t * (n_in - 1) / max(n_out - 1, 1)
    s = n_out / n_in
    g = (t - (0.5 * s - 0.5)) * (2.0 / (s * (n_in - 1))) - 1.0
    if mode == "iclr":
        return (g + 1.0) * (n_in - 1) / 2.0
    if mode == "pnas":
        return ((g + 1.0) * n_in - 1.0) / 2.0
    raise ValueError(f"upsample mode {mode!r}; allowed: {', '.join(UPSAMPLE_MODES)}")


@functools.lru_cache(maxsize=64)
def _bilinear_matrix(n_in: int, n_out: int, device: torch.device, mode: str = "align_corners") -> torch.Tensor:
    """[n_out, n_in] weights of 1-D linear interpolation at `source_coords(mode)`: "pnas" pads with
    zeros (a neighbour outside the map contributes 0, as grid_sample's padding_mode="zeros"), "iclr"
    clamps to the border (padding_mode="border"). A 1-pixel input is copied everywhere (the reference
    grid is undefined there)."""
    if n_in == 1:
        return torch.ones(n_out, 1, device=device)
    pos = source_coords(mode, n_in, n_out)
    if mode != "pnas":
        pos = pos.clamp(0, n_in - 1)
    lo = pos.floor().long()
    frac = pos - lo
    w = torch.zeros(n_out, n_in + 2, dtype=torch.float64)             # columns 0 and n_in + 1: outside
    rows = torch.arange(n_out)
    w.index_put_((rows, (lo + 1).clamp(0, n_in + 1)), 1 - frac, accumulate=True)
    w.index_put_((rows, (lo + 2).clamp(0, n_in + 1)), frac, accumulate=True)
    return w[:, 1:n_in + 1].float().to(device)


def upsample(act: torch.Tensor, size: int, mode: str = "pnas") -> torch.Tensor:
    """[N, C, h, w] -> [N, C, size, size], bilinear on the grid of `mode` (recorded as `upsample` in
    runs.params): "pnas" (default, the PNAS code's grid, zero padding), "iclr" (the ICLR code's; equal
    to half-pixel bilinear, F.interpolate(align_corners=False)) or "align_corners".

    Separable: two small matmuls (rows, then columns), several times faster on CPU than grid_sample
    and equal to it up to float rounding (tested against the references' grids).
    """
    h, w = act.shape[-2:]
    if h == size and w == size and mode != "pnas":
        return act
    wy = _bilinear_matrix(h, size, act.device, mode)  # [size, h]
    wx = _bilinear_matrix(w, size, act.device, mode)  # [size, w]
    return torch.matmul(wy, torch.matmul(act, wx.T))


def check_finite(act: torch.Tensor, layer: str, model: str) -> None:
    """Fail with the layer and the first offending unit named if activations are NaN or infinite."""
    if torch.isfinite(act.sum()):  # fast path: NaN / inf propagate into the sum (one reduction, no bool copy)
        return
    bad = ~torch.isfinite(act)
    if bad.any():
        unit = int(bad.transpose(0, 1).flatten(1).any(1).nonzero()[0, 0])
        raise FloatingPointError(f"non-finite activation in model {model!r} layer {layer!r} unit {unit}")


def activations(job: Job, ctx: RunContext, seed: int, start: int, count: int) -> dict[str, torch.Tensor]:
    """{layer: featuremap [count, C, h, w]} of samples [start, start + count) of the seed's sample set,
    the generator cut after the job's layers; fails on a non-finite activation."""
    gen = ctx.generator(job)
    z = latents(seed, count, int(gen.z_dim), start=start).to(ctx.device)
    with torch.no_grad(), Tap(gen, job.layers, stop_after=job.layers) as tap:
        tap.run(z)
        acts = {name: tap[name] for name in job.layers}
    for name, a in acts.items():
        check_finite(a, name, job.model.name)
    return acts


def quantile_pass(job: Job, ctx: RunContext, size: int, seed: int, n: int, name: str = "quantiles",
                  raw: bool = False) -> tuple[dict[str, Quantile], dict[str, TopK], dict[str, Quantile] | None]:
    """Streaming per-unit quantiles of the upsampled maps and top-k samples, one pass run by the context's
    engine (resumable); with raw=True also the quantiles of the featuremaps as the layer outputs them
    (the ICLR code's thresholds), else None. Returns (quantiles, topk, raw quantiles), by layer."""
    cfg = job.config
    k, mode, bs = int(cfg.topk), str(cfg.upsample), int(cfg.batch_size)

    def make(c: RunContext) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        for l in job.layers:
            stats[f"q.{l}"] = Quantile(device=c.device)
            stats[f"t.{l}"] = TopK(k, device=c.device)
            if raw:
                stats[f"r.{l}"] = Quantile(device=c.device)
        return stats

    def step(c: RunContext, stats: dict[str, Any], start: int, count: int) -> None:
        acts = activations(job, c, seed, start, count)
        index = torch.arange(start, start + count, device=c.device)
        for layer, a in acts.items():
            stats[f"q.{layer}"].add(upsample(a, size, mode))
            stats[f"t.{layer}"].add(a.flatten(2).amax(2), index)
            if raw:
                stats[f"r.{layer}"].add(a)

    stats = ctx.engine.run_pass(job, ctx, name, make, step, n, bs)
    quant = {l: stats[f"q.{l}"] for l in job.layers}
    topk = {l: stats[f"t.{l}"] for l in job.layers}
    return quant, topk, ({l: stats[f"r.{l}"] for l in job.layers} if raw else None)


class Quantiles(Protocol):
    """What quantile_rows reads: stats.Quantile (two-pass) or joint_hist.JointHist (one-pass)."""

    def quantiles(self, qs: torch.Tensor | Sequence[float]) -> torch.Tensor: ...  # [Q] -> [C, Q]


def quantile_rows(job: Job, quant: dict[str, Quantiles], levels: Sequence[float] = GRID) -> list[dict[str, Any]]:
    qs = torch.tensor(levels, dtype=torch.float64)
    rows: list[dict[str, Any]] = []
    for layer, stat in quant.items():
        values = stat.quantiles(qs).double().cpu()  # [C, Q]
        for u in range(values.shape[0]):
            for j, q in enumerate(levels):
                rows.append({"run_key": job.run_key, "model": job.model.name, "layer": layer, "unit": u,
                             "q": float(q), "value": float(values[u, j])})
    return rows


def topk_rows(job: Job, topk: dict[str, TopK], seed: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for layer, stat in topk.items():
        values, index = stat.result()
        for u in range(values.shape[0]):
            for r in range(values.shape[1]):
                v = float(values[u, r])
                if math.isfinite(v):
                    rows.append({"run_key": job.run_key, "model": job.model.name, "layer": layer, "unit": u,
                                 "rank": r + 1, "sample": int(index[u, r]), "value": v, "seed": seed})
    return rows


def segmentation_size(job: Job, ctx: RunContext) -> int:
    """The resolution featuremaps are upsampled to: the segmenter's, else the generator's output."""
    if job.segmenter is not None:
        return int(ctx.segmenter(job).resolution)
    return int(ctx.generator(job).resolution)


def compute(job: Job, ctx: RunContext) -> dict[str, list[dict[str, Any]]]:
    size = segmentation_size(job, ctx)
    seed = int(job.config.seed)
    quant, topk, _ = quantile_pass(job, ctx, size, seed, int(job.config.samples))
    return {"unit_quantiles": quantile_rows(job, quant), "unit_topk": topk_rows(job, topk, seed)}
