"""LayerPool: the one intervention loop, "sample set -> featuremap at a layer -> (edit) -> finish -> segment
-> statistic", and the two small statistics the intervention analyses stream into (`Gather`, `Sum`).

Reads nothing from disk and writes nothing itself; a pass run through `LayerPool.stream` is checkpointed
by the context's engine (`compute.jobs.tally`, `.cache/<run_key>/<name>.safetensors`).

A pool owns the latents of a sample set (samples [start, start + count) of a seed, or given latents),
the generator cut at one layer (`featuremap` / `finish` below, through `compute.core.tap`, which work on
every generator family), the segmenter call and the device. `batch(start, count)` runs the generator below
the layer once per sample and segments the unedited images; batches are kept (memoised) so that later
loops over the same samples (edits, tracing) do not rerun the lower generator:

    pool = LayerPool.of(job, ctx, "layer4", seed=a.seed)                 # or LayerPool(gen, "layer4", seg, ...)
    k = pool.constants(ctx, job, n, batch_size, "insert.layer4.k")       # [K, C] insertion constants (resumable)
    for start, count in batches(n, batch_size):                          # compute.jobs.tally.batches
        b = pool.batch(start, count)                                     # b.z, b.r, b.masks (cached)
        images = pool.finish(edit_featuremap(b.r, alpha, kc), b.z)

`stream` runs any per-batch fold over the pool's batches as one pass of `ctx.engine.run_pass`, so each
intervention analysis is resumable (and shardable) the same way as the streaming analyses.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import torch
import torch.nn.functional as F

from compute.core.stats import ConditionalMean, Stat
from compute.core.tap import Tap, forward_from
from ingest.samples import latents

__all__ = ["LayerPool", "PoolBatch", "Gather", "Sum", "featuremap", "finish", "coverage"]


# ----------------------------------------------------------------------------- generator halves

def featuremap(gen: torch.nn.Module, layer: str, z: torch.Tensor) -> torch.Tensor:
    """The output of `layer` for latents z [N, z_dim]: [N, C, h, w] (layers above never run; no grad)."""
    with torch.no_grad(), Tap(gen, [layer], stop_after=layer) as tap:
        tap.run(z)
        return tap[layer]


def finish(gen: torch.nn.Module, layer: str, r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Images [N, 3, H, W] from a (possibly edited) featuremap r [N, C, h, w] of `layer` and the latents
    z [N, z_dim] its samples came from (keeps autograd; see `compute.core.tap.forward_from`)."""
    return forward_from(gen, layer, r, z.to(r.device))


def coverage(masks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Share of each featuremap location covered by each concept: bool [N, K, H, W] -> [N, K, h, w] in [0, 1]."""
    return F.adaptive_avg_pool2d(masks.float(), (h, w))


class Segmenter(Protocol):
    """What a pool reads of a segmenter: ingest.roles.Segmenter's `concept_masks`, and `probs` (ACE)."""

    def concept_masks(self, images: torch.Tensor) -> torch.Tensor: ...  # [N, 3, H, W] -> bool [N, K, H, W]

    def probs(self, images: torch.Tensor) -> torch.Tensor: ...  # [N, 3, H, W] -> [N, K, H, W]


class PoolJob(Protocol):
    """What `LayerPool.of` and `stream` read of a job (compute.jobs.context.Job)."""

    run_key: str


class PoolContext(Protocol):
    """What `LayerPool.of` and `stream` read of a run context (compute.jobs.context.RunContext)."""

    device: torch.device
    engine: Any  # compute.jobs.tally.Engine (jobs is a layer above core: not imported here)

    def generator(self, job: Any) -> torch.nn.Module: ...

    def segmenter(self, job: Any) -> Any: ...


@dataclass
class PoolBatch:
    """One batch of a pool: the unedited samples at the pool's layer."""
    z: torch.Tensor                    # [B, z_dim] latents (the rest of the generator may read them)
    r: torch.Tensor                    # [B, C, h, w] featuremaps of the layer
    masks: torch.Tensor | None         # bool [B, K, H, W] concept masks of the unedited images (None: no segmenter)
    probs: torch.Tensor | None = None  # [B, K, h, w] soft probability per concept averaged over each location's block


# The pools alive now, by (id of their run context, job, layer, seed, options): `of` finds a pool its
# analysis still holds; a pool (with its kept batches) goes when the analysis drops it.
_POOLS: "weakref.WeakValueDictionary[tuple, LayerPool]" = weakref.WeakValueDictionary()


class LayerPool:
    """Samples of one seed (or given latents) at one layer of a generator, with their segmentation."""

    def __init__(self, gen: torch.nn.Module, layer: str, seg: Segmenter | None = None, *, seed: int | None = None,
                 z: torch.Tensor | None = None, device: torch.device | str | None = None, probs: bool = False,
                 keep: bool = True, segment: bool = True) -> None:
        if (seed is None) == (z is None):
            raise ValueError("a LayerPool needs exactly one of seed (samples of a seed) or z (given latents)")
        self.gen, self.layer, self.seg, self.seed = gen, layer, seg, seed
        self.device = torch.device(device) if device is not None else next(gen.parameters()).device
        self.z = z
        self.with_probs, self.keep = probs, keep
        self.segments = segment and seg is not None  # whether `batch` segments the unedited images
        self._memo: dict[tuple[int, int], PoolBatch] = {}
        self._recipe: tuple[Any, str, int, bool, bool, bool] | None = None  # how `of` built it (see `stream`)
        self.context: Any = None  # the run context it was built from (`of`), else None

    @classmethod
    def of(cls, job: Any, ctx: PoolContext, layer: str, seed: int, probs: bool = False, segment: bool = True,
           keep: bool = True) -> "LayerPool":
        """The pool of a job's generator and segmenter at `layer`, samples of `seed`, on the context's device;
        the pool already alive for this (context, job, layer, seed, options) if any, so a pass's steps find the
        pool (and kept batches) of the analysis that runs it.
        segment=False: `batch` does not segment (the fold segments edited images itself)."""
        recipe = (job, layer, seed, probs, segment, keep)
        key = (id(ctx), job.run_key, *recipe[1:])
        pool = _POOLS.get(key)
        if pool is None:
            pool = cls(ctx.generator(job), layer, ctx.segmenter(job), seed=seed, device=ctx.device, probs=probs,
                       keep=keep, segment=segment)
            pool._recipe, pool.context = recipe, ctx  # the context stays alive with the pool: its id is not reused
            _POOLS[key] = pool
        return pool

    # ------------------------------------------------------------------------------ one batch
    def latents(self, start: int, count: int) -> torch.Tensor:
        """Latents [count, z_dim] of samples [start, start + count) on the pool's device."""
        if self.z is not None:
            return self.z[start:start + count].to(self.device)
        return latents(self.seed, count, int(self.gen.z_dim), start=start).to(self.device)

    def finish(self, r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] from (possibly edited) featuremaps r [N, C, h, w] of the pool's layer (keeps autograd)."""
        return finish(self.gen, self.layer, r, z)

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Concept masks bool [N, K, H, W] of images [N, 3, H, W] (no grad)."""
        if self.seg is None:
            raise ValueError("this LayerPool has no segmenter")
        with torch.no_grad():
            return self.seg.concept_masks(images)

    def batch(self, start: int, count: int) -> PoolBatch:
        """Samples [start, start + count): latents, featuremaps and (with a segmenter) masks of the unedited images;
        kept for the next call with the same range unless keep=False."""
        key = (start, count)
        if key in self._memo:
            return self._memo[key]
        z = self.latents(start, count)
        r = featuremap(self.gen, self.layer, z)
        masks = probs = None
        if self.segments:
            with torch.no_grad():
                images = self.finish(r, z)
                masks = self.seg.concept_masks(images)
                if self.with_probs:
                    probs = F.adaptive_avg_pool2d(self.seg.probs(images), tuple(r.shape[2:]))
        b = PoolBatch(z, r, masks, probs)
        if self.keep:
            self._memo[key] = b
        return b

    def all(self, n: int, batch_size: int) -> PoolBatch:
        """Samples [0, n) as one batch (each part computed, or taken from the memo, `batch_size` at a time)."""
        parts = [self.batch(s, min(batch_size, n - s)) for s in range(0, n, batch_size)]
        cat = lambda xs: torch.cat(xs) if xs and xs[0] is not None else None  # noqa: E731
        return PoolBatch(torch.cat([p.z for p in parts]), torch.cat([p.r for p in parts]),
                         cat([p.masks for p in parts]), cat([p.probs for p in parts]))

    # -------------------------------------------------------------------------- streamed passes
    def stream(self, ctx: PoolContext, job: PoolJob, name: str, make: Callable[[Any], dict[str, Stat]],
               fold: Callable[["LayerPool", dict[str, Stat], PoolBatch], None], n: int, batch_size: int
               ) -> dict[str, Stat]:
        """One resumable pass over samples [0, n): `fold(pool, stats, batch)` per batch of `batch_size`, run by
        the context's engine (checkpoint `.cache/<run_key>/<name>.safetensors`). Returns the statistics.

        The pass's step carries how the pool was built, not the pool (nor its models and kept batches): on
        the context it was built from it finds this pool again, on an engine's worker the worker's own pool
        (`of` on the worker's context). `fold` must likewise reach models through the pool it is given."""
        recipe, local = self._recipe, (self if self._recipe is None else None)

        def step(c: Any, stats: dict[str, Stat], start: int, count: int) -> None:
            pool = local if local is not None else LayerPool.of(recipe[0], c, *recipe[1:])
            fold(pool, stats, pool.batch(start, count))

        return ctx.engine.run_pass(job, ctx, name, make, step, n, batch_size)

    def fold_constants(self, stat: ConditionalMean, b: PoolBatch) -> None:
        """Fold one batch into the insertion constants' statistic (each location weighted by concept coverage)."""
        stat.add(b.r, coverage(b.masks, b.r.shape[2], b.r.shape[3]))

    def fold_all(self, stat: ConditionalMean, n: int, batch_size: int) -> None:
        """Fold samples [0, n) into the insertion constants' statistic, `batch_size` at a time (a plain loop)."""
        for s in range(0, n, batch_size):
            self.fold_constants(stat, self.batch(s, min(batch_size, n - s)))

    def constants(self, ctx: PoolContext | None, job: PoolJob | None, n: int, batch_size: int,
                  name: str = "") -> torch.Tensor:
        """Insertion constants k [K, C] of samples [0, n) (S-6.4; NaN rows: concept never present); with a run
        context one resumable pass `name`, without (tools, benchmarks) a plain loop. Fills the pool's memo."""
        if ctx is None or job is None:
            stat = ConditionalMean()
            self.fold_all(stat, n, batch_size)
        else:
            stat = self.stream(ctx, job, name, lambda c: {"k": ConditionalMean()},
                               lambda p, st, b: p.fold_constants(st["k"], b), n, batch_size)["k"]
        return stat.result().T.float()


# ------------------------------------------------------------------------------ two small stats

class Gather:
    """Per-sample values in sample order: add(x [B, ...]) appends B rows; `result()` is every row [N, ...].

    merge(other) appends other's rows (shards merged in order give the rows of the whole range)."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        self.parts.append(x.detach().cpu())

    def result(self) -> torch.Tensor:
        if not self.parts:
            raise ValueError("Gather: nothing was added")
        return torch.cat(self.parts)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"rows": self.result()} if self.parts else {}

    def load_state_dict(self, d: Mapping[str, torch.Tensor]) -> None:
        self.parts = [d["rows"].clone()] if "rows" in d else []

    def merge(self, other: "Gather") -> None:
        self.parts += other.parts


class Sum:
    """The sum of the tensors added (all of one shape): add(x [...]); `result()` [...] (None before any add).

    The first add keeps x itself (0 + x is x), later ones add in order."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().cpu()
        self.total = x.clone() if self.total is None else self.total + x

    def result(self) -> torch.Tensor:
        if self.total is None:
            raise ValueError("Sum: nothing was added")
        return self.total

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"sum": self.total} if self.total is not None else {}

    def load_state_dict(self, d: Mapping[str, torch.Tensor]) -> None:
        self.total = d["sum"].clone() if "sum" in d else None

    def merge(self, other: "Sum") -> None:
        if other.total is not None:
            self.add(other.total)
