"""`gandissect bench`: the performance benchmarks, printed and written to the `benchmarks` table.

Reads the bundled (or spec-declared) village-gan and village-seg; writes rows (bench, metric, value,
unit, params, created_at) to the store named by the spec / $GANDISSECT_DB. Each dissection
measurement runs in a fresh subprocess so its peak RSS is its own.

    gandissect bench [--json] [--only dissect|edit|ace|insert]
    python -m compute.bench.main --child N      # one dissection of N samples, prints JSON (internal)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
GEN = REPO / "ingest" / "zoo" / "village-gan.safetensors"
SEG = REPO / "ingest" / "zoo" / "village-seg.safetensors"
SMALL_N = int(os.environ.get("GANDISSECT_BENCH_N", "256"))
BATCH = 32


def _spec_text(store: Path, n: int, gen: Path, seg: Path) -> str:
    return f"""
[store]
path = "{store}"
[[models]]
name = "bench-gan"
family = "progan"
checkpoint = "{gen}"
[[segmenters]]
name = "bench-seg"
family = "village"
checkpoint = "{seg}"
[[analyses]]
name = "bench-dissect"
kind = "dissect"
models = ["bench-gan"]
segmenter = "bench-seg"
samples = {n}
seed = 1
batch_size = {BATCH}
"""


def child(n: int, gen: Path, seg: Path) -> dict[str, Any]:
    """One full dissection of every layer (both passes), in this process; seconds and peak RSS."""
    import torch

    from compute import runner, spec as specmod

    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        p = Path(d) / "bench.toml"
        p.write_text(_spec_text(Path(d) / "bench.duckdb", n, gen, seg))
        s = specmod.load(p)
        t0 = time.perf_counter()
        out = runner.run(s, quiet=True, device="cpu", echo=lambda m: None)
        seconds = time.perf_counter() - t0
        if out[0].state != "done":
            raise RuntimeError(f"bench dissection failed: {out[0].error}")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"seconds": seconds, "compute_seconds": out[0].seconds, "peak_rss_mb": rss_mb,
            "threads": torch.get_num_threads()}


def forward_seconds(n: int, gen: Path, seg: Path) -> float:
    """Bare generator + segmenter forward passes over n samples (the same batches as dissection)."""
    import torch

    from ingest.models.progan import load_progan
    from ingest.models.village_seg import load_village_seg
    from ingest.samples import latents

    g, s = load_progan(str(gen)), load_village_seg(str(seg))
    z_all = latents(1, n, g.z_dim)
    with torch.no_grad():
        s.concept_masks(g(z_all[:2]))  # warm-up
        t0 = time.perf_counter()
        for i in range(0, n, BATCH):
            s.concept_masks(g(z_all[i:i + BATCH]))
        return time.perf_counter() - t0


def _run_child(n: int, gen: Path, seg: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "compute.bench.main", "--child", str(n), "--gen", str(gen.resolve()),
                        "--seg", str(seg.resolve())], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"bench child failed: {r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_dissect(gen: Path, seg: Path, n: int = SMALL_N) -> list[dict[str, Any]]:
    fwd = forward_seconds(n, gen, seg)
    small = _run_child(n, gen, seg)
    large = _run_child(4 * n, gen, seg)
    params = json.dumps({"samples_small": n, "samples_large": 4 * n, "batch": BATCH, "device": "cpu",
                         "threads": small["threads"], "generator": gen.name, "segmenter": seg.name,
                         "layers": "all", "threshold": "q0.99"})
    fwd_1k = fwd / n * 1000
    dis_1k = large["compute_seconds"] / (4 * n) * 1000
    return [
        {"bench": "dissect", "metric": "forward_s_per_1k", "value": fwd_1k, "unit": "s", "params": params},
        {"bench": "dissect", "metric": "dissect_s_per_1k", "value": dis_1k, "unit": "s", "params": params},
        {"bench": "dissect", "metric": "overhead_ratio", "value": dis_1k / fwd_1k, "unit": "x", "params": params},
        {"bench": "dissect", "metric": "peak_rss_mb_small", "value": small["peak_rss_mb"], "unit": "MB",
         "params": params},
        {"bench": "dissect", "metric": "peak_rss_mb_large", "value": large["peak_rss_mb"], "unit": "MB",
         "params": params},
    ]


def _optional(bench: str, module: str, func: str) -> list[dict[str, Any]]:
    """Benchmarks provided by other modules (intervention, painting) when they exist."""
    import importlib

    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError):
        print(f"bench {bench}: skipped ({module}.{func} is not available)", file=sys.stderr)
        return []
    import torch

    rows = fn(torch.device("cpu"))
    return [dict(r, bench=bench) for r in rows]


def main(a: argparse.Namespace) -> int:
    from compute.spec import store_path
    from db import store

    gen, seg = GEN, SEG
    for p in (gen, seg):
        if not p.exists():
            raise FileNotFoundError(f"bundled model missing: {p} (train it: gandissect train ...)")
    rows: list[dict[str, Any]] = []
    only = a.only
    if only in (None, "dissect"):
        rows += bench_dissect(gen, seg)
    if only in (None, "edit"):
        rows += _optional("edit", "compute.paint.engine", "bench_edit")
    if only in (None, "ace"):
        rows += _optional("ace", "compute.bench.ace", "bench_ace")
    if only in (None, "insert"):
        rows += _optional("insert", "compute.bench.ace", "bench_insert")
    if only in (None, "invert"):
        rows += _optional("invert", "compute.invert.cli", "bench_invert")
    path = store_path(None, a.spec)
    with store.session(path) as con:
        store.ensure_schema(con)
    store.record_benchmarks(rows, path=path)
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(f"{r['bench']:<8} {r['metric']:<20} {r['value']:>10.3f} {r['unit']}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--child", type=int, required=True)
    p.add_argument("--gen", default=str(GEN))
    p.add_argument("--seg", default=str(SEG))
    args = p.parse_args()
    print(json.dumps(child(args.child, Path(args.gen), Path(args.seg))))
