"""The Ray engine: one streaming pass split into shards of its sample range, one Ray task per shard.

Reads the job's models in each worker (from their checkpoint paths, `ctx.generator(job)`); writes each
shard's finished statistics as `.cache/<run_key>/shards/<pass>-<first>-<last>.safetensors` (its batch
range) on the driver (a killed driver re-runs only the shards missing there) and, in the worker, the
shard's in-progress checkpoint `<pass>-<first>-<last>-partial.safetensors` (a retried task on the same machine resumes it). Workers
send Stat `state_dict()`s, never featuremaps; the driver merges them in shard order (copies of one
`make(ctx)`: `load_state_dict` of each shard, shard 0 then `merge` of the rest). Shards are contiguous
runs of whole batches, so each batch is the one a local run folds; by every Stat's merge contract the
result equals one process adding every batch: exactly for counts, quantile sketches and top-k, and up
to summation order for float sums (the permutation null's moments, conditional means: measured
<= 3e-14 relative). A run's key does not include the engine.

    gandissect run spec.toml --engine ray --workers 2                  # a local Ray, 2 CPUs
    ray start --head; gandissect run spec.toml --engine ray --address auto   # an existing cluster

On a cluster every machine needs this package installed (pip install -e '.[ray]') and the spec's model
files at the same paths; only the driver writes the store (DuckDB has one writer). Which passes are
sharded: every one that runs through `ctx.engine.run_pass` (quantiles; dissect's quantile, hold-out,
IoU + null and one-pass passes; realism's feature pass; the LayerPool passes of ablate, insert, trace,
repair and ACE's statistics); ACE's alpha optimisation is sequential and stays on the driver.

`engine_for("local" | "ray", ...)` builds the engine the runner puts in its RunContext; "local" never
imports Ray (the `ray` extra: pip install -e '.[ray]').
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compute.core.stats import Stat
from db.errors import BadInput, is_bad_input
from compute.jobs.tally import (Batch, Checkpoint, Engine, LocalEngine, Make, PassJob, Step, batches, load_stats,
                                save_stats, tally)

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class WorkerConfig:
    """What a shard task needs to build its own RunContext (nothing loaded, nothing open)."""

    device: str
    store: str
    cache_root: str
    checkpoint_every: int


class EngineError(BadInput):
    """An engine that cannot be built from the arguments given (exit status 2)."""


class ShardError(RuntimeError):
    """Shards of a pass that could not finish (after Ray's retries), with each one's reason."""


class ShardInputError(ShardError, BadInput):
    """Shards that failed on bad input (a missing file, a bad parameter): exit status 2, as a local run."""


def shard_ranges(n_batches: int, shards: int) -> list[tuple[int, int]]:
    """[first, last) batch indices of `shards` contiguous, near-equal runs of whole batches (no empty one)."""
    shards = max(1, min(shards, n_batches))
    base, extra = divmod(n_batches, shards)
    out, lo = [], 0
    for i in range(shards):
        hi = lo + base + (1 if i < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


_CONTEXTS: dict[tuple, Any] = {}  # one RunContext (with its loaded models) per worker process and run


def _worker_context(cfg: WorkerConfig, run_key: str) -> Any:
    from compute.jobs.context import RunContext

    key = (cfg, run_key)
    if key not in _CONTEXTS:
        _CONTEXTS.clear()  # models of another run are not reused (the same model name may be a new file)
        _CONTEXTS[key] = RunContext(device=torch.device(cfg.device), store=cfg.store, cache_root=Path(cfg.cache_root),
                                    quiet=True, checkpoint_every=cfg.checkpoint_every)
    return _CONTEXTS[key]


def shard_name(name: str, first: int, last: int) -> str:
    """A shard's checkpoint name: the pass and its batch range [first, last) (batch size and sample count are
    in the run key), so a driver restarted with another number of workers never reuses another split's state."""
    return f"{name}-{first}-{last}"


def run_shard(cfg: WorkerConfig, job: PassJob, name: str, make: Make, step: Step, items: list[Batch],
              first: int) -> dict[str, dict[str, Any]]:
    """Fold the shard's batches into fresh statistics (resuming its partial checkpoint); their state_dicts
    on the CPU, by statistic name. Runs in a Ray worker, one thread."""
    torch.set_num_threads(1)
    ctx = _worker_context(cfg, job.run_key)
    stats = make(ctx)
    cache = Checkpoint(shard_dir(ctx, job), shard_name(name, first, first + len(items)) + "-partial")
    for start, count in tally(stats, items, cache, every=ctx.checkpoint_every):
        step(ctx, stats, start, count)
    return {k: {f: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for f, v in st.state_dict().items()}
            for k, st in stats.items()}


def shard_dir(ctx: Any, job: PassJob) -> Path:
    d = Path(ctx.cache_dir(job)) / "shards"
    d.mkdir(parents=True, exist_ok=True)
    return d


class RayEngine:
    """Runs each pass as Ray tasks over shards of its batches; the driver merges and checkpoints.

    address: a Ray cluster (`ray start --head` prints it; "auto" finds a local one); None starts a local
    Ray with `workers` CPUs. workers: shards per pass (default: the cluster's CPUs). A task asks for one
    CPU, and `num_gpus` (default 1 when the run's device is cuda) GPUs. A failing task is retried
    `max_retries` times (any exception); a shard that still fails makes the pass raise ShardError after
    the other shards finished (their states are kept for a resume)."""

    def __init__(self, address: str | None = None, workers: int | None = None, num_gpus: float | None = None,
                 max_retries: int = 2, shards_per_worker: int = 1) -> None:
        if workers is not None and workers < 1:
            raise EngineError(f"--workers must be >= 1, got {workers}")
        self.address, self.workers, self.num_gpus = address, workers, num_gpus
        self.max_retries, self.shards_per_worker = int(max_retries), int(shards_per_worker)
        self.tasks_run = 0  # shard tasks submitted by this engine (a resumed pass submits only missing ones)

    def _init(self) -> Any:
        import ray

        if not ray.is_initialized():
            env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            if self.address is None:
                ray.init(num_cpus=self.workers or os.cpu_count() or 1, include_dashboard=False,
                         log_to_driver=False, runtime_env={"env_vars": env})
            else:
                ray.init(address=self.address, log_to_driver=False, runtime_env={"env_vars": env})
        return ray

    def _shards(self, ray: Any) -> int:
        workers = self.workers or int(ray.cluster_resources().get("CPU", 1))
        return max(1, workers * self.shards_per_worker)

    def run_pass(self, job: PassJob, ctx: Any, name: str, make: Make, step: Step, n: int,
                 batch_size: int) -> dict[str, Stat]:
        ray = self._init()
        items = batches(n, batch_size)
        ranges = shard_ranges(len(items), self._shards(ray))
        folder = shard_dir(ctx, job)
        states: list[dict[str, Stat] | None] = [None] * len(ranges)
        template: list[dict[str, Stat]] = []

        def empty() -> dict[str, Stat]:  # `make` once on the driver (it may run a batch), then copies
            if not template:
                template.append(make(ctx))
            return copy.deepcopy(template[0])

        for i in range(len(ranges)):  # shards a killed driver already finished
            done_ck = Checkpoint(folder, shard_name(name, *ranges[i]))
            if done_ck.path.exists():
                st = empty()
                if load_stats(done_ck, st) == ranges[i][1] - ranges[i][0]:
                    states[i] = st
        gpus = self.num_gpus if self.num_gpus is not None else (1 if torch.device(ctx.device).type == "cuda" else 0)
        if gpus and ray.cluster_resources().get("GPU", 0) < gpus:  # Ray would leave the tasks pending forever
            raise EngineError(f"the run's device is {ctx.device} but the Ray cluster has no GPU "
                              f"(resources: {ray.cluster_resources()}); run with --device cpu, or add GPU workers")
        task = ray.remote(run_shard).options(num_cpus=1, num_gpus=gpus, max_retries=self.max_retries,
                                             retry_exceptions=True)
        device = torch.device(ctx.device)  # a worker sees its own GPU as cuda (Ray sets CUDA_VISIBLE_DEVICES)
        cfg = WorkerConfig("cuda" if device.type == "cuda" else str(device), str(ctx.store), str(ctx.cache_root), int(ctx.checkpoint_every))
        pending = {}
        for i, (lo, hi) in enumerate(ranges):
            if states[i] is None:
                pending[task.remote(cfg, job, name, make, step, items[lo:hi], lo)] = i
                self.tasks_run += 1
        errors: list[str] = []
        causes: list[BaseException] = []
        bar = ctx.progress(total=len(ranges), initial=len(ranges) - len(pending), desc=f"{job.model.name} {name} shards")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except Exception as e:  # retries spent: keep going so the other shards' states are saved
                errors.append(f"shard {i} (batches {ranges[i][0]}..{ranges[i][1] - 1}): {_reason(e)}")
                causes.append(_cause(e))
                continue
            st = empty()
            for k, s in st.items():
                s.load_state_dict(result[k])
            save_stats(Checkpoint(folder, shard_name(name, *ranges[i])), ranges[i][1] - ranges[i][0], st)
            Checkpoint(folder, shard_name(name, *ranges[i]) + "-partial").path.unlink(missing_ok=True)
            states[i] = st
            if hasattr(bar, "update"):
                bar.update(1)
        if hasattr(bar, "close"):
            bar.close()
        if errors:
            kind = ShardInputError if all(is_bad_input(c) for c in causes) else ShardError
            raise kind(f"pass {name!r} of {job.model.name}: {len(errors)} of {len(ranges)} shard(s) failed "
                             f"after {self.max_retries} retries: " + "; ".join(errors))
        out = states[0]
        assert out is not None
        for st in states[1:]:
            for k, s in out.items():
                s.merge(st[k])  # type: ignore[index]
        return out


def _cause(e: BaseException) -> BaseException:
    cause = getattr(e, "cause", None)  # RayTaskError: the worker's exception
    return cause if isinstance(cause, BaseException) else e


def _reason(e: BaseException) -> str:
    err = _cause(e)
    return f"{type(err).__name__}: {' '.join(str(err).split())[:500]}"


def engine_for(name: str, address: str | None = None, workers: int | None = None) -> Engine:
    """The engine the runner uses: "local" (every batch in this process) or "ray" (shards on Ray)."""
    if name == "local":
        if address is not None or workers is not None:
            raise EngineError("--address and --workers need --engine ray")
        return LocalEngine()
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError as e:
            raise EngineError("--engine ray needs Ray: pip install -e '.[ray]'") from e
        return RayEngine(address=address, workers=workers)
    raise EngineError(f"engine {name!r}; allowed: {', '.join(ENGINES)}")
