"""Per-unit realism scores (paper S-6.1) and what the GAN cannot generate (concept coverage).

Reads the job's generator and segmenter, and real images (`ingest.real`: rendered village scenes or a
folder); writes `unit_realism` (per unit: the Fréchet distance between the features of the `top_fraction`
of generated images that most activate it — spatial max — and the features of real images) and
`concept_coverage` (per concept: pixel share and per-image presence in generated vs real images, the
segmenter labelling both). The paper takes the top 10,000 of 200,000 images (5 %) against 50,000 real
ones; the sizes used here are recorded in the rows (n_top, n_real) and in runs.params.

Parameters (spec keys, defaults): top_fraction 0.05, real "village" (or a folder / .npy path; needed
when the model's dataset is not "village"), real_samples 2000, real_seed 0, real_exclude [] (leave out
real images that hold these concepts), presence_share 0.005 (an image holds a concept when it covers at
least this share of its pixels), features "segmenter" | "inception", inception_weights,
batch_size 64, strip 8 (top sample indices kept per unit for the dashboard's image strips); read from
`job.config` and checked at parse time (defaults in compute/analyses/params.py; code version and tables in
the registry, compute/analyses/__init__.py). Repair reads its real images through `real_set` and
`job_extractor` here, with its own configuration's keys of the same names.
Too few images for a stable distance (fewer than 2 x the feature dimension) is refused before any work.

    gandissect run gandissect.toml --only realism
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

from compute import analyses
from compute.analyses.quantiles import check_finite
from compute.jobs.context import Job, RunContext
from compute.core.features import Extractor, check_count, extractor, features_and_masks
from compute.core.pool import Gather
from compute.core.frechet import feature_stats, frechet_from_stats
from compute.core.tap import Tap
from ingest.real import RealImagesError, real_images, to_input
from ingest.samples import latents

def real_source(job: Job) -> str:
    """The job's real images: "village" (rendered scenes) or the `real` path resolved against the spec's
    directory; `real` is needed when the model's dataset is not "village"."""
    src = job.config.real
    if src is not None and src != "village":
        return str(job.analysis.path_param("real"))
    if src is None:
        if job.model.dataset != "village":
            raise RealImagesError(f"analysis {job.analysis.name!r}: model {job.model.name!r} (dataset "
                                  f"{job.model.dataset or 'unset'!r}) needs real = \"/path/to/real/images\" in the spec")
        src = "village"
    return str(src)


def real_exclude(job: Job) -> list[str]:
    """The job's `real_exclude` as a list of concept names (the spec may give one name as a string)."""
    v = job.config.real_exclude
    return [v] if isinstance(v, str) else list(v)


class Coverage:
    """Per-concept pixel counts and presence counts over a stream of segmentations (exact sums).

    An image holds a concept when the concept covers at least `min_share` of its pixels (at least one
    pixel): a few stray pixels of segmentation noise do not count as presence."""

    def __init__(self, k: int, min_share: float = 0.0) -> None:
        self.min_share = float(min_share)
        self.pixels = torch.zeros(k, dtype=torch.float64)
        self.present = torch.zeros(k, dtype=torch.float64)
        self.images, self.total = 0, 0

    def add(self, masks: torch.Tensor) -> None:
        """masks bool [N, K, H, W]."""
        per_image = masks.flatten(2).sum(2)  # [N, K]
        need = max(1, math.ceil(self.min_share * masks.shape[2] * masks.shape[3]))
        self.pixels += per_image.sum(0).double().cpu()
        self.present += (per_image >= need).sum(0).double().cpu()
        self.images += masks.shape[0]
        self.total += masks.shape[0] * masks.shape[2] * masks.shape[3]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pixels": self.pixels, "present": self.present,
                "counts": torch.tensor([self.images, self.total], dtype=torch.float64)}

    def load_state_dict(self, s: dict[str, torch.Tensor]) -> None:
        self.pixels, self.present = s["pixels"].clone(), s["present"].clone()
        self.images, self.total = int(s["counts"][0]), int(s["counts"][1])

    def merge(self, other: "Coverage") -> None:
        """Add other's counts (a shard of the same stream): equal to adding its masks here."""
        if other.min_share != self.min_share or other.pixels.shape != self.pixels.shape:
            raise ValueError("Coverage.merge: other concepts or presence share")
        self.pixels += other.pixels
        self.present += other.present
        self.images += other.images
        self.total += other.total

    def rows(self, names: list[str], source: str) -> list[dict[str, Any]]:
        return [{"concept": n, "source": source, "pixel_fraction": float(self.pixels[i] / max(self.total, 1)),
                 "presence": float(self.present[i] / max(self.images, 1)), "n_images": self.images}
                for i, n in enumerate(names) if n != "none"]


def job_extractor(job: Job, ctx: RunContext) -> Extractor:
    """The job's feature extractor on the context's device, built once per context (kept with its models)."""
    features, weights = str(job.config.features), job.analysis.path_param("inception_weights")
    key = f"f:{features}:{weights}:{job.segmenter.name if job.segmenter else ''}"
    return ctx.cached(key, lambda: extractor(features, ctx.segmenter(job), ctx.device, weights))


def generated_pool(job: Job, ctx: RunContext, n_concepts: int, seed: int, n: int, batch_size: int,
                   presence_share: float = 0.0) -> tuple[dict[str, torch.Tensor], np.ndarray, Coverage]:
    """One pass over samples 0..n-1 of `seed`: per-layer spatial-max activations {layer: [n, U]},
    features float64 [n, D] and the segmenter's concept coverage. One pass of the context's engine
    (`realism.features`, resumable; shardable: per-sample rows are gathered in sample order, coverage
    counts add)."""
    layers = job.layers

    def make(_: RunContext) -> dict[str, Any]:
        return {"cov": Coverage(n_concepts, presence_share), "features": Gather(),
                **{f"act.{layer}": Gather() for layer in layers}}

    def step(c: RunContext, stats: dict[str, Any], start: int, count: int) -> None:
        gen, seg = c.generator(job), c.segmenter(job)
        z = latents(seed, count, int(gen.z_dim), start=start).to(c.device)
        with torch.no_grad(), Tap(gen, list(layers)) as tap:
            images = gen(z)
            for layer in layers:
                a = tap[layer].amax((2, 3)).float().cpu()  # [B, U]; NaN / inf survive the max
                check_finite(a, layer, job.model.name)
                stats[f"act.{layer}"].add(a)
            f, m = features_and_masks(job_extractor(job, c), seg, images)
            stats["features"].add(torch.from_numpy(f))
            stats["cov"].add(m)

    stats = ctx.engine.run_pass(job, ctx, "realism.features", make, step, n, batch_size)
    return ({layer: stats[f"act.{layer}"].result() for layer in layers}, stats["features"].result().numpy(),
            stats["cov"])


def real_set(job: Job, seg: Any, feat: Extractor, size: int, device: torch.device,
             exclude: list[str] | None = None, presence_share: float = 0.0) -> tuple[np.ndarray, Coverage]:
    """Features float64 [n_real, D] and concept coverage of the job's real images (one segmenter pass),
    read from the job's `real`, `real_samples`, `real_seed` and `real_exclude` (a realism or repair job).

    exclude: concepts whose images are left out (None: the job's `real_exclude`; [] = the full distribution).
    presence_share: the coverage's presence share (realism's parameter; repair reads only the features)."""
    cfg = job.config
    src = real_source(job)
    exclude = real_exclude(job) if exclude is None else list(exclude)
    images, _ = real_images(src, int(cfg.real_samples), int(cfg.real_seed), size=size, exclude=exclude)
    x = to_input(images)
    cov = Coverage(len(seg.concepts), float(presence_share))
    names = [c.name for c in seg.concepts]
    feats: list[np.ndarray] = []
    with torch.no_grad():
        for s in range(0, x.shape[0], 128):
            f, m = features_and_masks(feat, seg, x[s:s + 128].to(device))
            if src != "village" and exclude:  # no ground truth: leave out what the segmenter finds
                hit = torch.stack([m[:, names.index(c)].flatten(1).any(1) for c in exclude], 1).any(1)
                f, m = f[~hit.cpu().numpy()], m[~hit]
            feats.append(f)
            cov.add(m)
    return np.concatenate(feats), cov


def unit_scores(acts: torch.Tensor, feats: np.ndarray, real_mu: np.ndarray, real_cov: np.ndarray,
                n_top: int) -> tuple[list[float], list[list[int]]]:
    """acts [N, U], feats [N, D] -> per unit the Fréchet distance of its top-n_top images to the real
    Gaussian, and its top sample indices (descending activation)."""
    order = torch.argsort(acts, dim=0, descending=True, stable=True)[:n_top].T  # [U, n_top]
    scores, tops = [], []
    for u in range(acts.shape[1]):
        idx = order[u].numpy()
        scores.append(frechet_from_stats(*feature_stats(feats[idx]), real_mu, real_cov))
        tops.append(idx.tolist())
    return scores, tops


def compute(job: Job, ctx: RunContext) -> dict[str, list[dict[str, Any]]]:
    cfg = job.config
    name, samples = cfg.name, int(cfg.samples)
    gen, seg = ctx.generator(job), ctx.segmenter(job)
    feat = job_extractor(job, ctx)
    frac = float(cfg.top_fraction)  # in (0, 1]: checked at parse time
    n_top = max(1, int(math.floor(frac * samples + 0.5)))
    check_count(n_top, feat.dim, f"analysis {name!r}: top images per unit ({frac} x {samples} samples)")
    check_count(int(cfg.real_samples), feat.dim, f"analysis {name!r}: real_samples")
    real_f, real_cov = real_set(job, seg, feat, int(gen.resolution), ctx.device,
                                presence_share=float(cfg.presence_share))
    check_count(real_f.shape[0], feat.dim, f"analysis {name!r}: real images left after real_exclude")
    acts, gen_f, gen_cov = generated_pool(job, ctx, len(seg.concepts), int(cfg.seed), samples,
                                          int(cfg.batch_size), float(cfg.presence_share))
    mu_r, s_r = feature_stats(real_f)
    strip = int(cfg.strip)
    base = {"run_key": job.run_key, "model": job.model.name}
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in analyses.kind("realism").tables}
    for layer in ctx.progress(job.layers, desc="realism: scores"):
        scores, tops = unit_scores(acts[layer], gen_f, mu_r, s_r, n_top)
        for u, (fd, top) in enumerate(zip(scores, tops)):
            out["unit_realism"].append({**base, "layer": layer, "unit": u, "frechet": fd, "n_top": n_top,
                                        "n_real": int(real_f.shape[0]), "top_samples": json.dumps(top[:strip])})
    names = [c.name for c in seg.concepts]
    seg_name = job.segmenter.name if job.segmenter else "?"
    for cov, source in ((gen_cov, "generated"), (real_cov, "real")):
        out["concept_coverage"] += [{**base, "segmenter": seg_name, **r} for r in cov.rows(names, source)]
    return out
