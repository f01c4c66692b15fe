"""One streaming loop for every statistic: `tally`, and the `Engine` that runs a pass of it.

Reads and writes one checkpoint file per pass under `.cache/<run_key>/` (`Checkpoint`); nothing else. baukit's `tally` idea: the loop, not each analysis, owns batching, checkpointing and
resume, so a streaming analysis only says how to make its empty statistics and how to fold one batch
into them:

    def make(ctx) -> dict[str, Stat]:                       # empty statistics, named
        return {f"q.{l}": Quantile(device=ctx.device) for l in job.layers}

    def step(ctx, stats, start, count) -> None:            # fold samples [start, start + count)
        z = latents(seed, count, gen.z_dim, start=start) ...
        stats[f"q.{l}"].add(...)

    stats = ctx.engine.run_pass(job, ctx, "quantiles", make, step, n=samples, batch_size=32)

A pass is a pure function of its sample range: the statistics of samples [0, n) are the `merge` of the
statistics of any split of that range (every Stat's `merge` contract). That is what lets an engine
shard a pass over processes or machines (a Ray engine: each task calls `make` and `step` on its own
range and returns `state_dict()`s; the driver merges them in shard order). `LocalEngine` runs the
batches in order in this process, exactly as a plain loop would. `make` and `step` must therefore not
capture loaded models or open connections: they reach models through the `ctx` they are given
(`ctx.generator(job)`), so a remote worker with its own context can run them.

    from compute.jobs.tally import tally
    for start, count in tally(stats, batches(n, 32), Checkpoint(dir, "pass")):   # plain loop form
        ...fold into stats...
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, TypeVar

import torch
from safetensors.torch import load_file, save_file

from compute.core.stats import Stat
from ingest.spec import ModelSpec

T = TypeVar("T")
Batch = tuple[int, int]  # (first sample, count)


class PassJob(Protocol):
    """What a pass reads of its job (compute.jobs.context.Job)."""

    run_key: str
    model: ModelSpec


class PassContext(Protocol):
    """What a pass reads of its run context (compute.jobs.context.RunContext)."""

    checkpoint_every: int

    def cache_dir(self, job: Any) -> Path: ...

    def progress(self, it: Iterable | None = None, **kw: Any) -> Iterable: ...


Make = Callable[[Any], dict[str, Stat]]                   # (ctx) -> empty statistics
Step = Callable[[Any, dict[str, Stat], int, int], None]   # (ctx, stats, start, count) -> None


class Checkpoint:
    """Streaming state of one pass of a run, saved atomically as `.cache/<run_key>/<name>.safetensors`.

    `done` (the number of batches already folded into the state) and any small JSON extras travel in
    the same file's metadata, replaced in one `os.replace`, so a kill at any instant leaves either the
    old or the new checkpoint. A resumed run skips the batches already done.
    """

    def __init__(self, directory: Path, name: str) -> None:
        self.path = Path(directory) / f"{name}.safetensors"

    def load(self) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
        if not self.path.exists():
            return 0, {}, {}
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            meta = f.metadata() or {}
        return int(meta.get("done", 0)), load_file(str(self.path)), json.loads(meta.get("extra", "{}"))

    def save(self, done: int, tensors: dict[str, torch.Tensor], extra: dict[str, Any] | None = None) -> None:
        tmp = self.path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"done": str(done), "extra": json.dumps(extra or {})})
        os.replace(tmp, self.path)


def flat_state(prefix: str, state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Prefix a Stat's state_dict tensors for one shared safetensors file."""
    return {f"{prefix}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)}


def unflat_state(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def batches(n: int, batch_size: int, start: int = 0) -> list[Batch]:
    """(first sample, count) of each batch of the sample range [start, n)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [(s, min(batch_size, n - s)) for s in range(start, n, batch_size)]


def _identity(stats: Mapping[str, Stat], items: int | None) -> dict[str, Any]:
    """What a checkpoint must match to be this pass's: its statistics' names and kinds (and the pass length)."""
    ident: dict[str, Any] = {"stats": {name: type(st).__name__ for name, st in sorted(stats.items())}}
    if items is not None:
        ident["items"] = items
    return ident


def save_stats(cache: Checkpoint, done: int, stats: Mapping[str, Stat], extra: dict | None = None,
               items: int | None = None) -> None:
    """All named statistics' state in one atomic checkpoint, with `done` batches folded in; the metadata
    records the statistics' names and kinds (and the pass length) so a foreign file is never loaded."""
    tensors = {}
    for name, st in stats.items():
        tensors.update(flat_state(name, st.state_dict()))
    cache.save(done, tensors, {**(extra or {}), "pass": _identity(stats, items)})


def load_stats(cache: Checkpoint, stats: Mapping[str, Stat], items: int | None = None) -> int:
    """Load a checkpoint into the (empty) statistics; returns the number of batches it holds (0: none).

    A checkpoint of another pass (other statistics, other length: a file left by an older version of
    the code under the same run key, or a pass whose name collides) is not loaded: the pass starts
    over, with a note on stderr, instead of failing on a state it cannot read."""
    done, saved, extra = cache.load()
    if not done:
        return 0
    if extra.get("pass") != _identity(stats, items):
        print(f"note: {cache.path} is not a checkpoint of this pass (left by another version of the code?); "
              f"starting the pass over", file=sys.stderr)
        return 0
    for name, st in stats.items():
        st.load_state_dict(unflat_state(name, saved))
    return done


def tally(stats: Mapping[str, Stat], items: Sequence[T], cache: Checkpoint | None = None, *, every: int = 8,
          progress: Callable[..., Iterable] | None = None, desc: str | None = None) -> Iterator[T]:
    """Yield the items (batches) not yet folded into `stats`; the caller folds each one in before asking
    for the next. With a cache, the statistics are loaded from it first (the items already done are
    skipped), saved every `every` items and once at the end, so a kill at any moment loses at most
    `every` items of work. `progress` wraps the remaining range (e.g. `ctx.progress`)."""
    done = load_stats(cache, stats, len(items)) if cache is not None else 0
    todo: Iterable[int] = range(done, len(items))
    if progress is not None:
        todo = progress(todo, desc=desc, total=len(items), initial=done)
    last_saved = done
    for i in todo:
        yield items[i]
        if cache is not None and (i + 1) % every == 0:
            save_stats(cache, i + 1, stats, items=len(items))
            last_saved = i + 1
    if cache is not None and last_saved != len(items):
        save_stats(cache, len(items), stats, items=len(items))


class Engine(Protocol):
    """Runs one pass of a streaming analysis and returns its statistics, all samples folded in."""

    def run_pass(self, job: PassJob, ctx: PassContext, name: str, make: Make, step: Step, n: int,
                 batch_size: int) -> dict[str, Stat]: ...


class LocalEngine:
    """Every batch in order, in this process, checkpointed as `.cache/<run_key>/<name>.safetensors`."""

    def run_pass(self, job: PassJob, ctx: PassContext, name: str, make: Make, step: Step, n: int,
                 batch_size: int) -> dict[str, Stat]:
        stats = make(ctx)
        cache = Checkpoint(ctx.cache_dir(job), name)
        for start, count in tally(stats, batches(n, batch_size), cache, every=ctx.checkpoint_every,
                                  progress=ctx.progress, desc=f"{job.model.name} {name}"):
            step(ctx, stats, start, count)
        return stats
