"""Side-by-side cost of one village-gan G+D training step in float32 and in --precision bf16.

Reads nothing from disk (fresh `default`-width weights, random images); prints seconds per step for fp32,
bf16 autocast, and bf16 autocast with channels-last tensors (what `--precision bf16` uses), interleaved
over `--reps` rounds on the same threads, and the best of each.

    python -m compute.bench.precision --threads 1 --reps 3
"""
from __future__ import annotations

import argparse
import time

import torch

from compute.train.gan import build, d_step, g_step, parse_args

VARIANTS = (("fp32", "fp32", False), ("bf16", "bf16", False), ("bf16 channels-last", "bf16", True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compute.bench.precision")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    b = p.parse_args(argv)
    torch.set_num_threads(b.threads)
    a = parse_args(["--widths", "default", "--batch", str(b.batch), "--device", "cpu"])
    device = torch.device("cpu")
    st = build(a, device)
    nets = (st["G"], st["D"])
    real = torch.randn(b.batch, 3, 64, 64)
    best: dict[str, float] = {}
    for _ in range(b.reps):
        for name, precision, channels_last in VARIANTS:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            for net in nets:
                net.to(memory_format=fmt)
            t0 = time.time()
            for _ in range(2):
                z1, z2 = torch.randn(b.batch, a.z_dim), torch.randn(b.batch, a.z_dim)
                d_step(st["G"], st["D"], st["opt_d"], real.contiguous(memory_format=fmt), z1, 1.0, 16, False, precision)
                g_step(st["G"], st["D"], st["opt_g"], z2, precision)
            dt = (time.time() - t0) / 2
            best[name] = min(best.get(name, dt), dt)
            print(f"{name}: {dt:.2f} s/step", flush=True)
    for name, sec in best.items():
        print(f"best {name}: {sec:.2f} s/step ({best['fp32'] / sec:.1f}x fp32)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
