"""`gandissect bench`: the performance benchmarks, printed and written to the `benchmarks` table.

Reads the bundled (or spec-declared) village-gan and village-seg; writes rows (bench, metric, value,
unit, params, created_at) to the store named by the spec / $GANDISSECT_DB. Each dissection
measurement runs in a fresh subprocess so its peak RSS is its own.

    gandissect bench [--json] [--only dissect|edit|ace|insert|invert|adapt|scale] [--samples N] [--device cpu|cuda]
    python -m compute.bench.main --child N [--method one-pass|two-pass] [--device D]   # internal
    python -m compute.bench.main --width C      # JointHist peak RSS at layer width C (internal)

`--only dissect` runs side by side, on the same model, samples (N, default $GANDISSECT_BENCH_N or 256),
batch and threads: the bare generator + segmenter forward passes, gandissect's dissection of every
layer at q0.99 by both methods (one-pass, two-pass), and the PNAS-style reference
(compute/bench/pnas_reference.py: per layer a quantile, a top-k and an IoU pass). Ratios:
overhead_ratio = default-method dissection / forward, speedup_vs_pnas = reference / that dissection
(one_pass_* the same for one-pass). Memory: the one-pass dissection's peak RSS at N / 4 and N samples,
and a JointHist's at layer width 256 and 512.
`--device cuda` runs the same on the GPU (bench "dissect-cuda"; skipped where CUDA is absent).
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

from compute.bench.specs import BATCH, dissect_spec

REPO = Path(__file__).resolve().parents[2]
GEN = REPO / "ingest" / "zoo" / "village-gan.safetensors"
SEG = REPO / "ingest" / "zoo" / "village-seg.safetensors"
SMALL_N = int(os.environ.get("GANDISSECT_BENCH_N", "256"))


def child(n: int, gen: Path, seg: Path, method: str = "one-pass", device: str = "cpu") -> dict[str, Any]:
    """One full dissection of every layer, in this process; seconds and peak RSS."""
    import torch

    from compute import runner, spec as specmod

    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        p = Path(d) / "bench.toml"
        p.write_text(dissect_spec(Path(d) / "bench.duckdb", gen, seg, n, method=method))
        s = specmod.load(p)
        t0 = time.perf_counter()
        out = runner.run(s, quiet=True, device=device, echo=lambda m: None)
        seconds = time.perf_counter() - t0
        if out[0].state != "done":
            raise RuntimeError(f"bench dissection failed: {out[0].error}")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"seconds": seconds, "compute_seconds": out[0].seconds, "peak_rss_mb": rss_mb,
            "threads": torch.get_num_threads()}


def width_child(width: int, batches: int = 2) -> dict[str, Any]:
    """Peak RSS of a JointHist fed `batches` batches of 32 synthetic featuremaps [32, width, 16, 16]
    lifted to 64 x 64 (the bundled model's layer5 grid; ProGAN-256 layer4 has 512 units) with 14
    concept masks from a fixed label map of 3 heads; seconds too."""
    import torch

    from compute.analyses.quantiles import upsample
    from compute.core.joint_hist import JointHist

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (3, 32, 64, 64), generator=g)                # 3 heads, as village-seg
    masks = torch.cat([torch.stack([labels[h] == c for c in range(1, 5 + (h < 2))], 1) for h in range(3)], 1)
    stat = JointHist()
    t0 = time.perf_counter()
    for _ in range(batches):
        a = torch.relu(torch.randn(32, width, 16, 16, generator=g))
        stat.add(a, masks[:, :14], lift=lambda x: upsample(x, 64))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def forward_seconds(n: int, gen: Path, seg: Path, device: str = "cpu") -> float:
    """Bare generator + segmenter forward passes over n samples (the same batches as dissection)."""
    import torch

    from ingest.models.progan import load_progan
    from ingest.models.village_seg import load_village_seg
    from ingest.samples import latents

    dev = torch.device(device)
    g, s = load_progan(str(gen)).to(dev).eval(), load_village_seg(str(seg)).to(dev).eval()
    z_all = latents(1, n, g.z_dim).to(dev)
    with torch.no_grad():
        s.concept_masks(g(z_all[:2]))  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, n, BATCH):
            s.concept_masks(g(z_all[i:i + BATCH]))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def _run(args: list[str]) -> dict[str, Any]:
    """Run a bench child (a fresh process: its peak RSS is its own) and read its JSON line."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("GANDISSECT_DB", None)                         # each child dissects into its own temporary store
    r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"bench child failed: {r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _run_child(n: int, gen: Path, seg: Path, method: str = "one-pass", device: str = "cpu") -> dict[str, Any]:
    return _run(["compute.bench.main", "--child", str(n), "--gen", str(gen.resolve()), "--seg", str(seg.resolve()),
                 "--method", method, "--device", device])


def bench_dissect(gen: Path, seg: Path, n: int = SMALL_N, device: str = "cpu") -> list[dict[str, Any]]:
    """Forward passes, one-pass and two-pass dissection and the PNAS-style reference, side by side."""
    import torch

    from compute.analyses.dissect import default_method

    if device == "cuda" and not torch.cuda.is_available():
        print("bench dissect --device cuda: skipped (no CUDA device)", file=sys.stderr)
        return []
    bench = "dissect" if device == "cpu" else f"dissect-{device}"
    load_start = os.getloadavg()[0]                    # the machine may be shared: load before and after
    fwd = forward_seconds(n, gen, seg, device)
    one = _run_child(n, gen, seg, "one-pass", device)
    small = _run_child(max(BATCH, n // 4), gen, seg, "one-pass", device)
    two = _run_child(n, gen, seg, "two-pass", device)
    ref = _run(["compute.bench.pnas_reference", str(n), "--gen", str(gen.resolve()), "--seg", str(seg.resolve()),
                "--device", device])
    w1, w2 = (_run(["compute.bench.main", "--width", str(w)]) for w in (256, 512))
    params = json.dumps({"samples": n, "samples_small": max(BATCH, n // 4), "batch": BATCH, "device": device,
                         "threads": one["threads"], "generator": gen.name, "segmenter": seg.name,
                         "layers": "all", "threshold": "q0.99", "default_method": default_method("q0.99"),
                         "memory": "one-pass at samples_small vs samples; JointHist alone at width 256 vs 512",
                         "load_average_1m_start": load_start, "load_average_1m": os.getloadavg()[0]})
    per_1k = lambda sec: sec / n * 1000  # noqa: E731
    fwd_1k, one_1k = per_1k(fwd), per_1k(one["compute_seconds"])
    two_1k, ref_1k = per_1k(two["compute_seconds"]), per_1k(ref["seconds"])
    dis_1k = two_1k if default_method("q0.99") == "two-pass" else one_1k    # gandissect's default dissection
    metrics = [
        ("forward_s_per_1k", fwd_1k, "s"), ("dissect_s_per_1k", dis_1k, "s"),
        ("one_pass_s_per_1k", one_1k, "s"), ("two_pass_s_per_1k", two_1k, "s"), ("pnas_s_per_1k", ref_1k, "s"),
        ("overhead_ratio", dis_1k / fwd_1k, "x"), ("speedup_vs_pnas", ref_1k / dis_1k, "x"),
        ("one_pass_overhead_ratio", one_1k / fwd_1k, "x"), ("two_pass_overhead_ratio", two_1k / fwd_1k, "x"),
        ("pnas_overhead_ratio", ref_1k / fwd_1k, "x"), ("one_pass_speedup_vs_pnas", ref_1k / one_1k, "x"),
        ("peak_rss_mb_small", small["peak_rss_mb"], "MB"), ("peak_rss_mb_large", one["peak_rss_mb"], "MB"),
        ("rss_ratio_4x_samples", one["peak_rss_mb"] / small["peak_rss_mb"], "x"),
        ("peak_rss_mb_width_256", w1["peak_rss_mb"], "MB"), ("peak_rss_mb_width_512", w2["peak_rss_mb"], "MB"),
        ("rss_ratio_2x_width", w2["peak_rss_mb"] / w1["peak_rss_mb"], "x"),
    ]
    return [{"bench": bench, "metric": m, "value": v, "unit": u, "params": params} for m, v, u in metrics]


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


BENCHES: tuple[str, ...] = ("dissect", "edit", "ace", "insert", "invert", "adapt", "scale")  # `--only` choices


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
        n = getattr(a, "samples", None) or SMALL_N
        rows += bench_dissect(gen, seg, n, getattr(a, "device", None) or "cpu")
    if only in (None, "edit"):
        rows += _optional("edit", "compute.paint.engine", "bench_edit")
    if only in (None, "ace"):
        rows += _optional("ace", "compute.bench.ace", "bench_ace")
    if only in (None, "insert"):
        rows += _optional("insert", "compute.bench.ace", "bench_insert")
    if only in (None, "invert"):
        rows += _optional("invert", "compute.invert.cli", "bench_invert")
    if only in (None, "adapt"):
        rows += _optional("adapt", "compute.paint.photo", "bench_adapt")
    if only in (None, "scale"):  # compute/bench/scale.py: checkpoint sweep, local vs Ray (skipped without Ray)
        from compute.bench.scale import SAMPLES, bench_scale

        rows += bench_scale(getattr(a, "samples", None) or SAMPLES)
    path = store_path(None, a.spec)
    with store.session(path) as con:
        store.ensure_schema(con)
    store.record_benchmarks(rows, path=path)
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(f"{r['bench']:<8} {r['metric']:<24} {r['value']:>10.4g} {r['unit']}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--child", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--method", default="one-pass", choices=("one-pass", "two-pass"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--gen", default=str(GEN))
    p.add_argument("--seg", default=str(SEG))
    args = p.parse_args()
    if args.width:
        print(json.dumps(width_child(args.width)))
    elif args.child:
        print(json.dumps(child(args.child, Path(args.gen), Path(args.seg), args.method, args.device)))
    else:
        p.error("one of --child N, --width C")
