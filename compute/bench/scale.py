"""`gandissect bench --only scale`: a checkpoint sweep dissected locally and on Ray, the speed-up ratio.

Reads the bundled training checkpoints `ingest/zoo/village-gan-step*.safetensors` (7 files, declared as
one glob model entry: one model per file, `sweep@village-gan-step<N>`) and village-seg; writes each
mode's runs into its own temporary store, and the rows below (bench "scale") through
`compute/bench/main.py` to the `benchmarks` table.

The same spec (every layer, q0.99, `samples` per checkpoint, seed 1, batch 32) is run three times,
each in a fresh process:

- `local_1thread`: `gandissect run` (local engine), torch at 1 thread;
- `local_<W>threads`: the same with torch at W threads (intra-op threading, the local default);
- `ray_<W>workers`: `--engine ray --workers W` on a local Ray started by the run (`ray.init`, counted),
  every worker at 1 thread, the driver at 1 thread.

Metrics: each mode's wall seconds for the whole sweep; `speedup` = local_1thread / ray (the issue's
ratio: W workers of 1 thread against one process of 1 thread); `speedup_vs_threads` = local_<W>threads
/ ray; `rows_equal` = 1 when every table of the Ray store equals the local store's (time columns left
out, as compute/reports/store_diff.py) and 0 otherwise, with the differing tables in params;
`max_rel_diff` the largest relative difference of a number between the two stores (0 when equal;
inf for a differing row count or text). The 1-minute
load average before and after is in params: on a shared machine it bounds what W workers can gain.

    gandissect bench --only scale [--samples N]     # N per checkpoint, default 64
    python -m compute.bench.scale --child local|ray --dir D --samples N --threads T [--workers W]  # internal
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from compute.bench.specs import BATCH, dissect_spec

REPO = Path(__file__).resolve().parents[2]
ZOO = REPO / "ingest" / "zoo"
CHECKPOINTS = "village-gan-step*.safetensors"  # the bundled training checkpoints (ingest/zoo/village-gan.md)
SEG = ZOO / "village-seg.safetensors"
SAMPLES = 64
WORKERS = 2


def spec_text(store: Path, samples: int) -> str:
    """The sweep: one glob model entry over the training checkpoints, one dissection of every layer."""
    return dissect_spec(store, ZOO / CHECKPOINTS, SEG, samples, names=("sweep", "seg", "sweep-dissect"),
                        dataset="village")


def child(engine: str, directory: Path, samples: int, threads: int, workers: int | None) -> dict[str, Any]:
    """One sweep in this process: wall seconds of `runner.run` (Ray's start included) and the outcomes."""
    import torch

    from compute import runner, spec as specmod

    torch.set_num_threads(threads)
    os.chdir(directory)
    path = directory / "sweep.toml"
    path.write_text(spec_text(directory / "sweep.duckdb", samples))
    spec = specmod.load(path)
    kwargs: dict[str, Any] = {"engine": engine, "workers": workers} if engine == "ray" else {}
    t0 = time.perf_counter()
    outcomes = runner.run(spec, device="cpu", quiet=True, echo=lambda m: None, **kwargs)
    seconds = time.perf_counter() - t0
    bad = [f"{o.job.model.name}: {o.error}" for o in outcomes if o.state != "done"]
    if bad:
        raise RuntimeError(f"scale bench ({engine}): {len(bad)} run(s) not done: {'; '.join(bad)}")
    return {"seconds": seconds, "runs": len(outcomes), "threads": torch.get_num_threads(),
            "models": [o.job.model.name for o in outcomes]}


def _run_child(engine: str, directory: Path, samples: int, threads: int, workers: int | None = None) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("GANDISSECT_DB", None)  # each mode writes its own store
    args = [sys.executable, "-m", "compute.bench.scale", "--child", engine, "--dir", str(directory),
            "--samples", str(samples), "--threads", str(threads)]
    if workers is not None:
        args += ["--workers", str(workers)]
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        raise RuntimeError(f"scale bench child ({engine}) failed: {tail}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def compare_stores(a: Path, b: Path) -> tuple[list[str], float]:
    """(tables whose rows differ, the largest relative difference of a number between them).

    Time columns are left out (as compute/reports/store_diff.py). Rows are paired in sorted order; a table
    in one store only, another row count, or a differing non-number makes the difference infinite."""
    import duckdb

    from compute.reports.store_diff import _tables, table_rows  # the one definition of "rows equal" between stores

    ca, cb = duckdb.connect(str(a), read_only=True), duckdb.connect(str(b), read_only=True)
    try:
        ta, tb = _tables(ca), _tables(cb)
        out, worst = sorted(ta ^ tb), (math.inf if ta ^ tb else 0.0)
        for t in sorted(ta & tb):
            ra, rb = table_rows(ca, cb, t)
            if ra == rb:
                continue
            out.append(t)
            worst = max(worst, _max_rel_diff(ra, rb))
        return sorted(out), worst
    finally:
        ca.close()
        cb.close()


def differing_tables(a: Path, b: Path) -> list[str]:
    """Tables whose rows differ between two stores (time columns left out; a table in one store only counts)."""
    return compare_stores(a, b)[0]


def _max_rel_diff(ra: list[tuple], rb: list[tuple]) -> float:
    if len(ra) != len(rb):
        return math.inf
    worst = 0.0
    for x, y in zip(ra, rb):
        for u, v in zip(x, y):
            if u == v or (isinstance(u, float) and isinstance(v, float) and math.isnan(u) and math.isnan(v)):
                continue
            if not (isinstance(u, (int, float)) and isinstance(v, (int, float))):
                return math.inf
            d = abs(u - v) / max(abs(u), abs(v))
            if math.isnan(d):  # NaN against a number, inf against a finite value: not a rounding difference
                return math.inf
            worst = max(worst, d)
    return worst


def bench_scale(samples: int = SAMPLES, workers: int = WORKERS) -> list[dict[str, Any]]:
    """The sweep local (1 thread, W threads) and on Ray (W workers of 1 thread); benchmark rows."""
    try:
        import ray
    except ImportError:
        print("bench scale: skipped (Ray is not installed: pip install -e '.[ray]')", file=sys.stderr)
        return []
    checkpoints = sorted(p.name for p in ZOO.glob(CHECKPOINTS))
    if not checkpoints:
        raise FileNotFoundError(f"no bundled training checkpoints match {ZOO / CHECKPOINTS}")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gandissect-scale-") as d:
        root = Path(d)
        local1 = _run_child("local", root / "local1", samples, 1)
        localw = _run_child("local", root / f"local{workers}", samples, workers)
        on_ray = _run_child("ray", root / "ray", samples, 1, workers)
        differ, rel = compare_stores(root / "local1" / "sweep.duckdb", root / "ray" / "sweep.duckdb")
    load_after = os.getloadavg()[0]
    params = json.dumps({
        "samples_per_checkpoint": samples, "checkpoints": checkpoints, "runs": on_ray["runs"], "kind": "dissect",
        "layers": "all", "threshold": "q0.99", "batch": BATCH, "workers": workers, "threads_per_worker": 1,
        "driver_threads": 1, "ray": ray.__version__, "ray_start_counted": True, "cpus": os.cpu_count(),
        "tables_differing": differ, "load_average_1m_before": round(load_before, 2),
        "load_average_1m_after": round(load_after, 2),
    })
    w = workers
    metrics = [
        ("local_1thread_s", local1["seconds"], "s"), (f"local_{w}threads_s", localw["seconds"], "s"),
        (f"ray_{w}workers_s", on_ray["seconds"], "s"),
        ("speedup", local1["seconds"] / on_ray["seconds"], "x"),
        ("speedup_vs_threads", localw["seconds"] / on_ray["seconds"], "x"),
        ("rows_equal", 0.0 if differ else 1.0, "bool"),
        ("max_rel_diff", rel, "ratio"),
    ]
    return [{"bench": "scale", "metric": m, "value": v, "unit": u, "params": params} for m, v, u in metrics]


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m compute.bench.scale")
    p.add_argument("--child", choices=("local", "ray"), required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--samples", type=int, default=SAMPLES)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int)
    args = p.parse_args()
    print(json.dumps(child(args.child, Path(args.dir), args.samples, args.threads, args.workers)))
