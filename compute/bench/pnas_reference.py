"""The netdissect / PNAS way of dissecting, as the baseline of `gandissect bench --only dissect`.

Reads a ProGAN generator and a village segmenter (safetensors paths); writes nothing. One layer at a
time, three passes over the same samples, as the PNAS code (davidbau/dissect `dissect_unit` ->
quantiles, top-k, IoU): (1) the generator cut after the layer, streaming quantiles of the upsampled
featuremaps (the project's `stats.Quantile`), (2) again, top-k samples by spatial max (`stats.TopK`),
(3) the full generator + segmenter, IoU counts at the layer's 0.99 quantiles (`stats.IoUCounts`). No
permutation null (the reference has none). Written with this project's Stats, no copied code; the
Stats are faster than baukit's runningstats, so the measured gap to the reference is a lower bound.

    python -m compute.bench.pnas_reference N [--device cpu]      # prints seconds as JSON
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from compute.analyses.quantiles import batches, upsample
from compute.core.stats import IoUCounts, Quantile, TopK
from compute.core.tap import Tap
from ingest.samples import latents

LEVEL = 0.99
TOPK = 20


def reference_seconds(gen_path: Path, seg_path: Path, n: int, device: torch.device, batch: int = 32,
                      seed: int = 1) -> dict[str, float]:
    """Seconds of the three-pass-per-layer dissection of every layer over n samples (model loading
    excluded), and the number of layers."""
    from ingest.models.progan import load_progan
    from ingest.models.village_seg import load_village_seg

    g = load_progan(str(gen_path)).to(device).eval()
    s = load_village_seg(str(seg_path)).to(device).eval()
    size = int(s.resolution)
    layers = [name for name, _ in g.named_children() if name != "output"]   # every layer, as layers = "all"
    todo = batches(n, batch)
    t0 = time.perf_counter()
    with torch.no_grad():
        for layer in layers:
            quant = Quantile(device=device)
            for start, cnt in todo:                                   # pass 1: quantiles
                with Tap(g, [layer], stop_after=layer) as tap:
                    tap.run(latents(seed, cnt, int(g.z_dim), start=start).to(device))
                    quant.add(upsample(tap[layer], size))
            thresholds = quant.quantiles(torch.tensor([LEVEL], dtype=torch.float64))[:, 0].float()
            top = TopK(TOPK, device=device)
            for start, cnt in todo:                                   # pass 2: top-k
                with Tap(g, [layer], stop_after=layer) as tap:
                    tap.run(latents(seed, cnt, int(g.z_dim), start=start).to(device))
                    top.add(tap[layer].flatten(2).amax(2), torch.arange(start, start + cnt, device=device))
            iou = IoUCounts(thresholds, device=device)
            for start, cnt in todo:                                   # pass 3: IoU
                with Tap(g, [layer]) as tap:
                    images = g(latents(seed, cnt, int(g.z_dim), start=start).to(device))
                    act = tap[layer]
                if images.shape[-1] != size:
                    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=True)
                iou.add(upsample(act, size), s.concept_masks(images)[:, 1:])
            iou.iou()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "layers": len(layers)}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("n", type=int)
    p.add_argument("--gen", required=True)
    p.add_argument("--seg", required=True)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    print(json.dumps(reference_seconds(Path(a.gen), Path(a.seg), a.n, torch.device(a.device))))
