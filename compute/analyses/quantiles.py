"""Activation quantiles and top-k samples of every unit of the job's layers (dissection's first pass).

Reads the job's generator; writes `unit_quantiles` (a grid of levels incl. 0.99, 0.995, 0.999 over the
featuremap upsampled to the segmentation resolution, bilinear, align_corners=True) and `unit_topk` (the
k samples with the highest spatial-max activation per unit). Streaming state is checkpointed under
`.cache/<run_key>/` every few batches, so a killed run resumes where it stopped.

    gandissect run spec.toml --only NAME      # with kind = "quantiles"
"""
from __future__ import annotations

import functools
import math
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from compute.context import Checkpoint, Job, RunContext, flat_state, unflat_state
from compute.probe import _deepest
from compute.stats import Quantile, TopK
from compute.tap import Tap
from ingest.samples import latents

CODE_VERSION = "1"
NEEDS: tuple[str, ...] = ()
TABLES = ("unit_quantiles", "unit_topk")
DEFAULTS: dict[str, Any] = {"batch_size": 32, "topk": 20}  # recorded in runs.params

# Levels stored per unit: the fixed-quantile thresholds and the IQR candidate levels.
IQR_LEVELS: tuple[float, ...] = (0.999, 0.998, 0.995, 0.99, 0.98, 0.97, 0.95, 0.9, 0.8)
GRID: tuple[float, ...] = tuple(sorted({0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999,
                                        1.0, *IQR_LEVELS}))


def batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, count) of each batch of a sample set of size n."""
    return [(s, min(batch_size, n - s)) for s in range(0, n, batch_size)]


@functools.lru_cache(maxsize=64)
def _bilinear_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """[n_out, n_in] weights of 1-D linear interpolation with align_corners=True."""
    if n_in == 1:
        return torch.ones(n_out, 1, device=device)
    pos = torch.arange(n_out, dtype=torch.float64) * (n_in - 1) / (n_out - 1)
    lo = pos.floor().long().clamp(max=n_in - 2)
    frac = pos - lo
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    w[torch.arange(n_out), lo] = 1 - frac
    w[torch.arange(n_out), lo + 1] += frac
    return w.float().to(device)


def upsample(act: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, h, w] -> [N, C, size, size], bilinear with align_corners=True (the recorded choice).

    Separable: two small matmuls (rows, then columns), several times faster on CPU than
    F.interpolate and equal to it up to float rounding (tested).
    """
    h, w = act.shape[-2:]
    if h == size and w == size:
        return act
    wy = _bilinear_matrix(h, size, act.device)  # [size, h]
    wx = _bilinear_matrix(w, size, act.device)  # [size, w]
    return torch.matmul(wy, torch.matmul(act, wx.T))


def check_finite(act: torch.Tensor, layer: str, model: str) -> None:
    """Fail with the layer and the first offending unit named if activations are NaN or infinite."""
    if torch.isfinite(act.sum()):  # fast path: NaN / inf propagate into the sum (one reduction, no bool copy)
        return
    bad = ~torch.isfinite(act)
    if bad.any():
        unit = int(bad.transpose(0, 1).flatten(1).any(1).nonzero()[0, 0])
        raise FloatingPointError(f"non-finite activation in model {model!r} layer {layer!r} unit {unit}")


def activation_batches(job: Job, ctx: RunContext, seed: int, n: int, start_batch: int,
                       desc: str) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
    """Yield (batch index, first sample, {layer: featuremap}) with the generator cut after the deepest layer."""
    gen = ctx.generator(job)
    bs = int(job.analysis.param("batch_size", DEFAULTS["batch_size"]))
    todo = batches(n, bs)
    stop = _deepest(gen, job.layers)
    for b in ctx.progress(range(start_batch, len(todo)), desc=desc, total=len(todo), initial=start_batch):
        s, k = todo[b]
        z = latents(seed, k, int(gen.z_dim), start=s).to(ctx.device)
        with torch.no_grad(), Tap(gen, job.layers, stop_after=stop) as tap:
            tap.run(z)
            acts = {name: tap[name] for name in job.layers}
        for name, a in acts.items():
            check_finite(a, name, job.model.name)
        yield b, s, acts


def quantile_pass(job: Job, ctx: RunContext, size: int, seed: int, n: int,
                  name: str = "quantiles") -> tuple[dict[str, Quantile], dict[str, TopK]]:
    """Streaming per-unit quantiles (of upsampled maps) and top-k samples, resumable from checkpoints."""
    k = int(job.analysis.param("topk", DEFAULTS["topk"]))
    ckpt = Checkpoint(ctx.cache_dir(job), name)
    done, saved, _ = ckpt.load()
    quant: dict[str, Quantile] = {}
    topk: dict[str, TopK] = {}
    for b, s, acts in activation_batches(job, ctx, seed, n, done, desc=f"{job.model.name} {name}"):
        if not quant:  # first batch seen by this process: build (and restore) the stats
            for layer, a in acts.items():
                quant[layer] = Quantile(device=ctx.device)
                topk[layer] = TopK(k, device=ctx.device)
                if done:
                    quant[layer].load_state_dict(unflat_state(f"q.{layer}", saved))
                    topk[layer].load_state_dict(unflat_state(f"t.{layer}", saved))
        index = torch.arange(s, s + next(iter(acts.values())).shape[0], device=ctx.device)
        for layer, a in acts.items():
            quant[layer].add(upsample(a, size))
            topk[layer].add(a.flatten(2).amax(2), index)
        if (b + 1) % ctx.checkpoint_every == 0:
            ckpt.save(b + 1, _state(quant, topk))
    if not quant:  # everything was already done before a crash: restore from the checkpoint
        quant, topk = _restore(job, ctx, saved, k)
    return quant, topk


def _state(quant: dict[str, Quantile], topk: dict[str, TopK]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for layer in quant:
        out.update(flat_state(f"q.{layer}", quant[layer].state_dict()))
        out.update(flat_state(f"t.{layer}", topk[layer].state_dict()))
    return out


def _restore(job: Job, ctx: RunContext, saved: dict[str, torch.Tensor], k: int
             ) -> tuple[dict[str, Quantile], dict[str, TopK]]:
    quant = {l: Quantile(device=ctx.device) for l in job.layers}
    topk = {l: TopK(k, device=ctx.device) for l in job.layers}
    for l in job.layers:
        quant[l].load_state_dict(unflat_state(f"q.{l}", saved))
        topk[l].load_state_dict(unflat_state(f"t.{l}", saved))
    return quant, topk


def quantile_rows(job: Job, quant: dict[str, Quantile], levels: Sequence[float] = GRID) -> list[dict[str, Any]]:
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
    a = job.analysis
    quant, topk = quantile_pass(job, ctx, size, a.seed, a.samples)
    return {"unit_quantiles": quantile_rows(job, quant), "unit_topk": topk_rows(job, topk, a.seed)}
