"""The runner: materialise every declared analysis whose run is missing, dependencies first.

Reads the spec, the models and the store's `runs` table; writes dimension rows, `runs` rows and each
analysis's result tables (one transaction per run: delete the run's slice, insert, mark done), and
streaming checkpoints under `.cache/<run_key>/` beside the store. A run key is the sha256 of the
analysis's canonical parameters, the model and segmenter checkpoint hashes, the dependencies' run keys
and the code version, so a second `gandissect run` finds every run done and computes nothing.

One process computes a run at a time: it holds the run's lease, an exclusive flock on
`.cache/<run_key>.lease` (holding "pid P since T"), which the kernel frees when the process dies, so a
killed run's lease is taken over at once. Another process skips that run, saying who holds it, or with
`--wait` waits and then finds it done. After taking a lease the runner re-reads the run's status (it
may have been finished meanwhile); a failure marks failed only a run this process started. A refused
run (bad spec, missing dependency) writes nothing, not even the store file.

    gandissect run gandissect.toml [--only NAME] [--force] [--wait] [--device auto|cpu|cuda]
                                   [--engine local|ray [--address ADDR] [--workers N]]
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any, Callable

import torch

try:
    import fcntl
except ImportError:  # not POSIX: no leases (one process at a time is then the user's job)
    fcntl = None  # type: ignore[assignment]

from compute import analyses
from compute.analyses import PACKAGE_VERSION  # noqa: F401 (re-exported: `gandissect version`)
from compute.core.device import resolve_device
from compute.jobs.context import Engine, Job, RunContext, cache_root_for
from compute.jobs.ray_engine import engine_for
from compute.spec import Spec, SpecError, canonical
from db import store
from db.errors import is_bad_input


def _job_params(spec: Spec, a, model_name: str, layers: tuple[str, ...]) -> dict[str, Any]:
    """The run's parameters: the kind's recorded defaults under the spec's keys, plus what the kind
    resolves at plan time (e.g. the hand-flagged units of a repair run)."""
    kind = analyses.kind(a.kind)
    params = {
        **kind.defaults,
        "kind": a.kind, "name": a.name, "layers": list(layers), "segmenter": a.segmenter,
        "samples": a.samples, "seed": a.seed, "threshold": a.threshold, "concepts": list(a.concepts),
        **{k: v for k, v in a.params},
    }
    if kind.resolves:
        resolved = analyses.module(a.kind).resolve(spec.store, a, model_name, layers)
        extra = sorted(set(resolved) - set(kind.resolved))
        if extra:
            raise KeyError(f"{a.kind}.resolve returned undeclared key(s) {', '.join(extra)}: add them to the "
                           f"kind's `resolved` in compute/analyses/__init__.py")
        params.update(resolved)
    return params


def plan(spec: Spec, only: str | None = None) -> list[Job]:
    """Every run the spec declares, in dependency order (each job after the runs it reads)."""
    from ingest.zoo import describe_model, file_sha256

    if only is not None and only not in {a.name for a in spec.analyses}:
        raise SpecError(spec.path, "--only", None,
                        f"no analysis named {only!r}; declared: {', '.join(a.name for a in spec.analyses)}")
    jobs: dict[tuple[str, str], Job] = {}  # (analysis name, model) -> job
    generation = kind_generations()
    order = sorted(spec.analyses, key=lambda a: generation[a.kind])  # stable: the spec's order within one
    for a in order:
        kind = analyses.kind(a.kind)
        for mn in a.models:
            m = spec.model(mn)
            layers = tuple(describe_model(m).layers) if a.layers == "all" else tuple(a.layers)
            seg = spec.segmenter(a.segmenter) if a.segmenter else None
            deps = []
            for need in kind.needs:
                dep = _find_dependency(spec, jobs, need, a, mn, layers)
                deps.append((need, dep.run_key))
            for need in kind.optional_needs:  # read when declared (e.g. repair's dissect)
                try:
                    deps.append((need, _find_dependency(spec, jobs, need, a, mn, layers).run_key))
                except SpecError:
                    pass
            params = _job_params(spec, a, mn, layers)
            code_version = kind.version
            key_src = canonical({
                "params": params, "model": file_sha256(m.checkpoint), "model_family": m.family,
                "model_options": m.options, "segmenter": file_sha256(seg.checkpoint) if seg else None,
                "deps": deps, "code_version": code_version,
            })
            run_key = hashlib.sha256(key_src.encode()).hexdigest()
            jobs[(a.name, mn)] = Job(a, m, seg, layers, run_key, tuple(deps), canonical(params), code_version,
                                     analyses.config(a.kind, params))
    selected = [j for j in jobs.values() if only is None or j.analysis.name == only]
    return selected


def kind_generations(kinds: dict[str, analyses.Kind] | None = None) -> dict[str, int]:
    """Each kind's generation in the dependency graph (graphlib): 0 for kinds that need none, else one
    more than the latest kind it needs or optionally reads. Runs are planned generation by generation;
    a circle among the kinds' needs raises graphlib.CycleError."""
    kinds = analyses.KINDS if kinds is None else kinds
    order = TopologicalSorter({k.name: {*k.needs, *k.optional_needs} for k in kinds.values()})
    order.prepare()
    generation: dict[str, int] = {}
    while order.is_active():
        ready = order.get_ready()
        for name in ready:
            kind = kinds[name]
            generation[name] = 1 + max((generation[n] for n in (*kind.needs, *kind.optional_needs)), default=-1)
        order.done(*ready)
    return generation


def _find_dependency(spec: Spec, jobs: dict, need: str, a, model: str, layers: tuple[str, ...]) -> Job:
    for (name, mn), job in jobs.items():
        if (job.analysis.kind == need and mn == model and set(layers) <= set(job.layers)
                and (a.segmenter is None or job.analysis.segmenter == a.segmenter)):
            return job
    raise SpecError(spec.path, f"analyses ({a.name})", "kind",
                    f"a {a.kind} analysis needs a {need} analysis of model {model!r} covering layers "
                    f"{', '.join(layers)} with segmenter {a.segmenter!r} declared in the spec")


class Lease:
    """The exclusive right to compute one run: a flock on `<cache_root>/<run_key>.lease`.

    The file holds "pid P since T" of the holder. The kernel releases the flock when the holder exits
    or dies, so a lease is never stale. `release()` deletes the file while still holding it; an
    acquirer that locked a file already deleted (its inode no longer at the path) retries.
    """

    def __init__(self, cache_root: Path, run_key: str) -> None:
        self.path = Path(cache_root) / f"{run_key}.lease"
        self.fd: int | None = None

    def holder(self) -> str:
        """'pid P since T' of the current holder (best effort: the file may be changing)."""
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def acquire(self, wait: bool = False, poll_s: float = 0.2) -> bool:
        """Take the lease; False (without waiting) when another process holds it and not `wait`."""
        if fcntl is None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if not wait:
                    return False
                time.sleep(poll_s)
                continue
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released (and deleted) it between our open and our lock
                os.close(fd)
                continue
            since = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} since {since}\n".encode())
            self.fd = fd
            return True

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # releases the flock
            self.fd = None

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lease right now (probes without keeping it)."""
        return bool(store.flock_held(self.path))


@dataclass
class Outcome:
    job: Job
    state: str  # "up to date" | "done" | "failed" | "running elsewhere"
    seconds: float = 0.0
    error: str | None = None
    bad_input: bool = False  # failed on bad input (too few images, missing weights, bad units): exit 2


def run(spec: Spec, *, only: str | None = None, force: bool = False, device: str = "auto",
        quiet: bool = False, wait: bool = False, echo: Callable[[str], None] = print,
        engine: str | Engine = "local", address: str | None = None, workers: int | None = None) -> list[Outcome]:
    """Materialise every missing run; returns one outcome per planned job.

    `engine` runs the streaming passes: "local" (this process, no Ray), "ray" (shards as Ray tasks on a
    local Ray with `workers` CPUs, or the cluster at `address`; compute.jobs.ray_engine), or an Engine.

    A run another process is computing (its lease is held) is skipped with the state "running
    elsewhere", or with `wait` waited for. Nothing is written (not even the store file) until a run
    is actually started."""
    if not spec.analyses:
        raise SpecError(spec.path, "analyses", None, "the spec declares no analyses: add [[analyses]] entries")
    dev = resolve_device(device)
    jobs = plan(spec, only)
    store.check_store_path(spec.store)
    done_keys = _done_keys(spec.store, [j.run_key for j in jobs] + [k for j in jobs for _, k in j.deps])
    eng = engine_for(engine, address, workers) if isinstance(engine, str) else engine
    ctx = RunContext(device=dev, store=spec.store, quiet=quiet, engine=eng)
    _clean_done_caches(ctx, [j for j in jobs if j.run_key in done_keys])
    failed: set[str] = set()
    busy: set[str] = set()  # runs another process holds the lease of
    outcomes: list[Outcome] = []
    schema_ready = False
    for job in jobs:
        label = f"{job.analysis.name} [{job.model.name}]"
        if job.run_key in done_keys and not force:
            echo(f"up to date: {label} (run {job.run_key[:12]})")
            outcomes.append(Outcome(job, "up to date"))
            continue
        if any(k in busy for _, k in job.deps):  # its dependency is being computed by another process
            busy.add(job.run_key)
            msg = "a dependency is being computed by another process; skipped: `gandissect run --wait` waits for it"
            echo(f"busy: {label}: {msg}")
            outcomes.append(Outcome(job, "running elsewhere", error=msg))
            continue
        blocked = [k for _, k in job.deps if k in failed]
        if blocked:
            failed.add(job.run_key)
            outcomes.append(Outcome(job, "failed", error="a dependency failed"))
            echo(f"skipped: {label}: a dependency failed")
            continue
        missing = [f"{kind} (run {k[:12]})" for kind, k in job.deps if k not in done_keys]
        if missing:  # e.g. --only of a job whose dependency was never run: its reads would find nothing
            failed.add(job.run_key)
            msg = f"its dependency {', '.join(missing)} is not done: run it first (gandissect run without --only)"
            outcomes.append(Outcome(job, "failed", error=msg, bad_input=True))
            echo(f"skipped: {label}: {msg}")
            continue
        lease = Lease(ctx.cache_root, job.run_key)
        if not lease.acquire(wait=False):
            holder = lease.holder()
            if not wait:
                msg = (f"run {job.run_key[:12]} is being computed by {holder} (running elsewhere); "
                       f"skipped: `gandissect run --wait` waits for it")
                echo(f"busy: {label}: {msg}")
                busy.add(job.run_key)  # its dependants cannot run in this process either
                outcomes.append(Outcome(job, "running elsewhere", error=msg))
                continue
            echo(f"waiting: {label}: run {job.run_key[:12]} is being computed by {holder}")
            lease.acquire(wait=True)
        try:
            if not force and job.run_key in _done_keys(spec.store, [job.run_key]):  # finished meanwhile
                echo(f"up to date: {label} (run {job.run_key[:12]}, computed by another process)")
                _remove_cache(ctx, job)
                done_keys.add(job.run_key)
                outcomes.append(Outcome(job, "up to date"))
                continue
            if not schema_ready:  # the store file is created only now that a run starts
                with store.session(spec.store) as con:
                    store.ensure_schema(con)
                schema_ready = True
            outcome = _execute(job, ctx, force, echo)
        finally:
            lease.release()
        if outcome.state == "failed":
            failed.add(job.run_key)
        else:
            done_keys.add(job.run_key)
        outcomes.append(outcome)
    return outcomes


def _done_keys(path: str, keys: list[str]) -> set[str]:
    """The keys among `keys` whose run is done (none when the store or its runs table does not exist)."""
    if not keys or not store.has_table(path, "runs"):
        return set()
    df = store.read("select run_key from runs where status = 'done' and run_key in (select unnest(?))",
                    [keys], path=path)
    return set(df["run_key"].to_list())


def _remove_cache(ctx: RunContext, job: Job) -> None:
    cache = ctx.cache_root / job.run_key
    if cache.exists():
        shutil.rmtree(cache, ignore_errors=True)


def _clean_done_caches(ctx: RunContext, done: list[Job]) -> None:
    """Remove the checkpoints a done run left behind (a kill between its publish and its clean-up),
    unless another process holds that run's lease (e.g. a --force recompute)."""
    for job in done:
        if not (ctx.cache_root / job.run_key).exists():
            continue
        lease = Lease(ctx.cache_root, job.run_key)
        if lease.acquire(wait=False):
            try:
                _remove_cache(ctx, job)
            finally:
                lease.release()


def _execute(job: Job, ctx: RunContext, force: bool, echo: Callable[[str], None]) -> Outcome:
    label = f"{job.analysis.name} [{job.model.name}]"
    cache = ctx.cache_root / job.run_key
    if force and cache.exists():
        shutil.rmtree(cache)
    echo(f"running: {label} (run {job.run_key[:12]}, {job.config.samples} samples, "
         f"{len(job.layers)} layer(s), {ctx.device})")
    t0 = time.time()
    started = False  # only a run this process started is marked failed (never another's rows)
    try:
        _register(job, ctx)
        store.start_run(job.run_key, job.analysis.kind, name=job.analysis.name,
                        model=job.model.name, layer=job.layer_label,
                        segmenter=job.segmenter.name if job.segmenter else None,
                        n_samples=job.config.samples, seed=job.config.seed, params=job.params,
                        code_version=job.code_version, device=str(ctx.device), path=ctx.store)
        started = True  # its runs row exists: a failure from here on is recorded there
        results = analyses.module(job.analysis.kind).compute(job, ctx)
        check_tables(job, results)
        seconds = time.time() - t0
        # one transaction: delete the run's slice, insert, audit, mark done
        store.publish_many(job.run_key, results, finish={"status": "done", "seconds": seconds}, path=ctx.store)
    except Exception as e:  # the run is marked failed with its error; no result rows remain
        seconds = time.time() - t0
        msg = f"{type(e).__name__}: {' '.join(str(e).split())}"
        if started:
            try:
                store.fail_run(job.run_key, msg + "\n" + traceback.format_exc(limit=8), seconds, path=ctx.store)
            except Exception as e2:  # the store itself failed: report both
                msg += f" (and recording the failure failed: {' '.join(str(e2).split())})"
        echo(f"failed: {label}: {msg}")
        return Outcome(job, "failed", seconds, msg, bad_input=is_bad_input(e))
    if cache.exists():
        shutil.rmtree(cache, ignore_errors=True)
    echo(f"done: {label} in {seconds:.1f} s")
    return Outcome(job, "done", seconds)


class UndeclaredTableError(RuntimeError):
    """An analysis returned a table its kind does not declare (a code error, not bad input)."""


def check_tables(job: Job, results: dict[str, Any]) -> None:
    """Every table an analysis returns must be one its kind declares (`Kind.tables`)."""
    kind = analyses.kind(job.analysis.kind)
    extra = sorted(set(results) - set(kind.tables))
    if extra:
        raise UndeclaredTableError(
            f"the {kind.name} analysis returned table(s) {', '.join(extra)} that its kind does not declare "
            f"(declared: {', '.join(kind.tables)}): add them to the kind's tables in compute/analyses/__init__.py")


def _register(job: Job, ctx: RunContext) -> None:
    """Dimension rows for the job's model, layers, segmenter and concepts (idempotent upserts)."""
    from compute.core.probe import layer_shapes
    from ingest import register
    from ingest.zoo import describe_model, describe_segmenter

    net = describe_model(job.model)
    shapes = layer_shapes(net, list(net.layers), torch.device("cpu"))
    store.upsert_dimension("models", [register.model_row(job.model, net)], path=ctx.store)
    store.upsert_dimension("layers", register.layer_rows(job.model.name, net.layers, shapes), path=ctx.store)
    if job.segmenter is not None:
        seg = describe_segmenter(job.segmenter)
        store.upsert_dimension("segmenters", [register.segmenter_row(job.segmenter, seg)], path=ctx.store)
        store.upsert_dimension("concepts", register.concept_rows(job.segmenter.name, seg), path=ctx.store)


def status(spec: Spec) -> list[tuple[Job, str, str | None]]:
    """Each planned job with its state: pending / running / done / failed (and the error)."""
    jobs = plan(spec)
    store.check_store_path(spec.store)
    if not store.has_table(spec.store, "runs"):  # no store yet, or a DuckDB file without the schema
        return [(j, "pending", None) for j in jobs]
    df = store.read("select run_key, status, error from runs where run_key in (select unnest(?))",
                    [[j.run_key for j in jobs]], path=spec.store)
    by_key = {r["run_key"]: (r["status"], r["error"]) for r in df.iter_rows(named=True)}
    root = cache_root_for(spec.store)
    out = []
    for j in jobs:
        state, error = by_key.get(j.run_key, ("pending", None))
        if state == "running" and not Lease(root, j.run_key).held_elsewhere():
            state, error = "stopped", "no process holds its lease (killed?): `gandissect run` resumes it"
        elif state == "running":
            error = f"by {Lease(root, j.run_key).holder()}"
        out.append((j, state, error))
    return out
