"""Train (or evaluate) the bundled village segmenters `village-seg` / `village-seg-parts` on rendered scenes.

Reads: the village renderer (`ingest.village.render_batch`); a pre-rendered pool of training scenes
cached under `.cache/village-seg/` (re-rendered when missing or when the renderer's source changes);
with --evaluate-only, the weights at --out.
Writes: float16 safetensors weights at --out (default `ingest/zoo/village-seg.safetensors`) and the
model card beside them (`village-seg.md`: architecture, command, seeds, steps, time, per-concept IoU
on held-out scenes).

    python -m compute.train.seg --steps 3000 --threads 1        # or: gandissect train segmenter ...
    python -m compute.train.seg --evaluate-only                  # re-measure the model card numbers
    python -m compute.train.seg --steps 1800 --pool 8000 --threads 1 --paste 0.5 \
        --out ingest/zoo/village-seg-parts.safetensors              # the part head sees parts anywhere

Training scenes have seeds 0 .. pool-1 (all < EVAL_SEED_START); held-out evaluation scenes have
seeds EVAL_SEED_START .. EVAL_SEED_START + eval - 1, never used in training. Augmentations mimic
generator output: flips, colour jitter, blur, down-up resampling, noise, JPEG artifacts (Pillow).

`--paste P` (village-seg-parts): before those augmentations, a share P of the training images get
1-3 door or window components cut from other images of the batch, pasted at uniformly random places
(sky, grass, trees, walls); the checkpoint is then marked `parts_anywhere`, so that its part labels
are not masked to building pixels at inference. The model card adds IoU on held-out scenes with
parts pasted anywhere (`--evaluate-only --no-card --out <other model>` prints the same for another).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from compute.train.common import REPO, add_device_arguments, device_from
from ingest.models.village_seg import (HEAD_CONCEPTS, HEAD_SIZES, VillageSegmenter, labels_from_logits,
                                       load_village_seg, save_village_seg)
from ingest.real import to_input
from ingest.village.concepts import CONCEPTS, INDEX

DEFAULT_OUT = REPO / "ingest" / "zoo" / "village-seg.safetensors"
EVAL_SEED_START = 20_000_000  # disjoint from training seeds (< pool size) and from the GAN's pool
PASTE_EVAL_SEED = 777  # where held-out scenes get their pasted doors / windows (model card column)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gandissect train segmenter", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=1, help="seed for weights, batches and augmentations")
    add_device_arguments(p)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--evaluate-only", action="store_true", help="measure --out and write its model card")
    p.add_argument("--pool", type=int, default=20000, help="pre-rendered training scenes (seeds 0..pool-1)")
    p.add_argument("--pool-dir", default=str(REPO / ".cache" / "village-seg"))
    p.add_argument("--eval", type=int, default=500, help="held-out evaluation scenes")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--widths", default="16,32,64,128")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--paste", type=float, default=0.0,
                   help="share of training images with doors/windows pasted anywhere (> 0: parts_anywhere model)")
    p.add_argument("--no-card", action="store_true", help="with --evaluate-only: print, do not write the card")
    return p.parse_args(argv)


# ---------------------------------------------------------------- data

def renderer_hash() -> str:
    """Short hash of the renderer's source: a changed world invalidates cached pools."""
    h = hashlib.sha256()
    for f in sorted((REPO / "ingest" / "village").glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def load_pool(start: int, n: int, pool_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Scenes start..start+n-1: (images uint8 [n,64,64,3], labels uint8 [n,3,64,64]), cached as .npz."""
    from ingest.village import render_batch

    path = Path(pool_dir) / f"pool-{start}-{n}-{renderer_hash()}.npz" if pool_dir else None
    if path is not None and path.exists():
        with np.load(path) as z:
            return z["images"], z["labels"]
    t0 = time.time()
    images, labels = render_batch(range(start, start + n))
    print(f"rendered {n} scenes (seeds {start}..{start + n - 1}) in {time.time() - t0:.1f}s", flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        tmp.replace(path)
    return images, labels


def head_targets(labels: torch.Tensor) -> list[torch.Tensor]:
    """uint8/long concept-index labels [N,3,H,W] -> per-head class indices (long [N,H,W] each)."""
    out = []
    for h, concepts in enumerate(HEAD_CONCEPTS):
        lut = torch.zeros(len(CONCEPTS), dtype=torch.long)
        lut[list(concepts)] = torch.arange(len(concepts))
        out.append(lut[labels[:, h].long()])
    return out


# ---------------------------------------------------------------- augmentations (generator-like)

def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur: x [N,3,H,W], sigma [N] (pixels)."""
    n, c, h, w = x.shape
    r = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    k = torch.exp(-(r[None, :] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [N*3, 5]
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), k[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """One image [3,H,W] in [-1,1] through Pillow's JPEG at `quality`."""
    a = ((x.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    b = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return torch.from_numpy(b.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x float [N,3,H,W] in [-1,1], y labels [N,3,H,W] -> augmented copies (labels move only on flips)."""
    n = x.shape[0]

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return torch.rand(n, *shape, generator=g) * (hi - lo) + lo

    flip = torch.rand(n, generator=g) < 0.5
    x, y = x.clone(), y.clone()
    x[flip] = x[flip].flip(-1)
    y[flip] = y[flip].flip(-1)
    # colour: gain per channel, saturation, contrast, brightness
    x = x * u(0.9, 1.1, 3, 1, 1)
    gray = x.mean(1, keepdim=True)
    x = gray + (x - gray) * u(0.7, 1.3, 1, 1, 1)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + (x - mean) * u(0.75, 1.25, 1, 1, 1) + u(-0.15, 0.15, 1, 1, 1)
    # blur (half the images) and down-up resampling (some)
    blur = torch.rand(n, generator=g) < 0.5
    if blur.any():
        x[blur] = _gaussian_blur(x[blur], u(0.3, 1.0)[blur])
    du = torch.rand(n, generator=g) < 0.15
    if du.any():
        small = F.interpolate(x[du], scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True)
        x[du] = F.interpolate(small, size=x.shape[2:], mode="bilinear", align_corners=False)
    # noise
    noisy = (torch.rand(n, generator=g) < 0.5).float()[:, None, None, None]
    x = x + noisy * u(0.0, 0.08, 1, 1, 1) * torch.randn(x.shape, generator=g)
    x = x.clamp(-1, 1)
    # JPEG artifacts
    for i in torch.nonzero(torch.rand(n, generator=g) < 0.25).flatten().tolist():
        x[i] = _jpeg(x[i], int(torch.randint(25, 90, (1,), generator=g)))
    return x, y


# ---------------------------------------------------------------- parts pasted anywhere

PASTE_PARTS: tuple[int, ...] = (INDEX["door"], INDEX["window"])


def _components(part: np.ndarray) -> list[tuple[int, int, tuple[slice, slice], np.ndarray]]:
    """Door / window connected components of part labels [N,H,W]: (image, concept, bbox, mask in bbox)."""
    from scipy import ndimage

    out = []
    for i in range(part.shape[0]):
        for c in PASTE_PARTS:
            comps, count = ndimage.label(part[i] == c)
            for lab, sl in enumerate(ndimage.find_objects(comps), start=1):
                if sl is not None:
                    out.append((i, c, sl, comps[sl] == lab))
    return out


def paste_parts(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, p: float,
                max_parts: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste doors and windows anywhere: x float [N,3,H,W], y labels [N,3,H,W] -> copies in which each
    image, with probability p, gets 1..max_parts door or window components cut (pixels under the
    component's mask only) from other images of the batch and put at a uniformly random place.

    Pasted pixels take the component's part label and material none; the object label is left as it
    was (a door pasted in the sky is part door on object sky): the part head learns to see parts
    anywhere, the object head keeps describing the scene."""
    x, y = x.clone(), y.clone()
    n, _, h, w = x.shape
    chosen = torch.rand(n, generator=g) < p
    if not chosen.any():
        return x, y
    comps = _components(y[:, 1].numpy())
    for i in torch.nonzero(chosen).flatten().tolist():
        pool = [cp for cp in comps if cp[0] != i] or comps
        if not pool:
            continue
        for _ in range(int(torch.randint(1, max_parts + 1, (1,), generator=g))):
            j, c, (ys, xs), m = pool[int(torch.randint(len(pool), (1,), generator=g))]
            ch, cw = m.shape
            ty = int(torch.randint(h - ch + 1, (1,), generator=g))
            tx = int(torch.randint(w - cw + 1, (1,), generator=g))
            mask = torch.from_numpy(m)
            dst = (slice(ty, ty + ch), slice(tx, tx + cw))
            x[i, :, dst[0], dst[1]] = torch.where(mask, x[j, :, ys, xs], x[i, :, dst[0], dst[1]])
            y[i, 1, dst[0], dst[1]] = torch.where(mask, torch.tensor(c, dtype=y.dtype), y[i, 1, dst[0], dst[1]])
            y[i, 2, dst[0], dst[1]] = torch.where(mask, torch.zeros((), dtype=y.dtype), y[i, 2, dst[0], dst[1]])
    return x, y


# ---------------------------------------------------------------- training

def class_weights(labels: np.ndarray) -> list[torch.Tensor]:
    """Per-head class weights ~ frequency^-0.5 (normalised to mean 1 over present classes)."""
    out = []
    for h, t in enumerate(head_targets(torch.from_numpy(labels[:2000]))):
        freq = torch.bincount(t.flatten(), minlength=HEAD_SIZES[h]).double()
        w = torch.where(freq > 0, (freq / freq.sum()).clamp_min(1e-6) ** -0.5, torch.zeros_like(freq))
        out.append((w / w[freq > 0].mean()).float().clamp(max=10.0))
    return out


def train(a: argparse.Namespace, device: torch.device) -> tuple[VillageSegmenter, float]:
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    images, labels = load_pool(0, a.pool, a.pool_dir)
    assert a.pool <= EVAL_SEED_START
    weights = [w.to(device) for w in class_weights(labels)]
    model = VillageSegmenter(tuple(int(w) for w in a.widths.split(",")), parts_anywhere=a.paste > 0).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    warm = min(100, a.steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * min(s, a.steps) / a.steps))))
    print(f"village-seg: training {a.steps} steps, batch {a.batch}, seed {a.seed}, pool seeds 0..{a.pool - 1}, "
          f"paste {a.paste}, device {device}, threads {torch.get_num_threads()}, "
          f"{sum(p.numel() for p in model.parameters())} parameters", flush=True)
    t0 = time.time()
    run = 0.0
    for step in range(1, a.steps + 1):
        idx = rng.integers(0, len(images), a.batch)
        x, y = to_input(images[idx]), torch.from_numpy(labels[idx])
        if a.paste > 0:  # (no draw from g otherwise: the paste-free run is unchanged)
            x, y = paste_parts(x, y, g, a.paste)
        x, y = augment(x, y, g)
        logits = model(x.to(device))
        loss = sum(F.cross_entropy(lg, t.to(device), weight=w)
                   for lg, t, w in zip(torch.split(logits, list(HEAD_SIZES), 1), head_targets(y), weights))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run = 0.98 * run + 0.02 * loss.item() if step > 1 else loss.item()
        if step % a.log_every == 0 or step == a.steps:
            el = time.time() - t0
            print(f"step {step}/{a.steps}  loss {run:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                  f"{el:.0f}s ({el / step:.2f}s/step)", flush=True)
    return model.eval(), time.time() - t0


# ---------------------------------------------------------------- evaluation and model card

@torch.no_grad()
def evaluate(model: VillageSegmenter, images: np.ndarray, labels: np.ndarray, device: torch.device,
             aug_seed: int | None = None, batch: int = 100,
             paste_seed: int | None = None) -> dict[str, tuple[float, float]]:
    """Per-concept (IoU, pixel coverage) over the whole set (sums of intersections and unions).

    aug_seed: evaluate on generator-like augmented images (flips included) instead of clean ones.
    paste_seed: every image gets doors / windows pasted anywhere (`paste_parts`, p = 1) first."""
    k = len(CONCEPTS)
    inter, union, gt_px = np.zeros(k), np.zeros(k), np.zeros(k)
    g = torch.Generator().manual_seed(aug_seed) if aug_seed is not None else None
    gp = torch.Generator().manual_seed(paste_seed) if paste_seed is not None else None
    for s in range(0, len(images), batch):
        x, y = to_input(images[s:s + batch]), torch.from_numpy(labels[s:s + batch]).long()
        if gp is not None:
            x, y = paste_parts(x, y, gp, 1.0)
        if g is not None:
            x, y = augment(x, y, g)
        pred = labels_from_logits(model(x.to(device)), getattr(model, "parts_anywhere", False)).cpu()
        for c, concept in enumerate(CONCEPTS):
            if c == 0:
                continue
            ch = ("object", "part", "material").index(concept.category)
            p, t = pred[:, ch] == c, y[:, ch] == c
            inter[c] += (p & t).sum().item()
            union[c] += (p | t).sum().item()
            gt_px[c] += t.sum().item()
    total = labels.shape[0] * labels.shape[2] * labels.shape[3]
    return {c.name: (inter[i] / union[i] if union[i] else float("nan"), gt_px[i] / total)
            for i, c in enumerate(CONCEPTS) if i > 0}


def quality(res: dict[str, tuple[float, float]]) -> tuple[float, list[str], bool]:
    """(mean IoU over concepts present, concepts >= 1 % of pixels, whether the issue's bar is met)."""
    ious = [iou for iou, cov in res.values() if cov > 0]
    mean = float(np.mean(ious))
    big = [n for n, (iou, cov) in res.items() if cov >= 0.01]
    cats = {c.name: c.category for c in CONCEPTS}
    ok = mean >= 0.85 and all(res[n][0] >= 0.80 for n in big if cats[n] in ("object", "part"))
    return mean, big, ok


def model_card(meta: dict[str, str], clean: dict, aug: dict, eval_seeds: tuple[int, int], speed_ms: float,
               pasted: dict | None = None, name: str = "village-seg") -> str:
    """The model card (markdown). pasted: per-concept IoU on the held-out scenes with parts pasted anywhere."""
    mean, big, ok = quality(clean)
    mean_aug, _, _ = quality(aug)
    cats = {c.name: c.category for c in CONCEPTS}
    anywhere = meta.get("parts_anywhere") == "1"
    rows = "\n".join(f"| {n} | {cats[n]} | {cov * 100:.2f} % | {'yes' if cov >= 0.01 else 'no'} | {iou:.3f} | "
                     f"{aug[n][0]:.3f} |" + (f" {pasted[n][0]:.3f} |" if pasted else "")
                     for n, (iou, cov) in clean.items())
    paste_col = (" IoU (parts pasted) |", "---|") if pasted else ("", "")
    parts_rule = ("parts are kept wherever the part head sees one (trained with doors and windows pasted "
                  "anywhere), materials only on wall pixels" if anywhere else
                  "parts are kept only on building pixels and materials only on wall pixels")
    paste_train = (f";\n- doors and windows pasted anywhere (`--paste {meta.get('paste')}`): that share of training images gets\n"
                   "  1-3 door / window components of other images at random places (part label only; the object\n"
                   "  label stays that of the scene)") if anywhere else ""
    paste_eval = ("\"parts pasted\" = the same scenes, each with 1-3 doors / windows of other scenes pasted at random\n"
                  "places (`paste_parts`, seed 777): can the part head see a door in the sky?\n") if pasted else ""
    return f"""# {name}

A bundled segmenter of the village world: a small UNet-like convolutional net with three heads
(object / part / material), trained on rendered village scenes with augmentations that mimic
generator output. It implements the segmenter interface of DESIGN.md
(`ingest/models/village_seg.py`, loaded by `ingest.zoo.load_segmenter("{name}")`).

## Architecture

- input 3x64x64 in [-1, 1]; encoder widths {meta.get('widths')}: one 3x3 conv at 64x64, then per level a
  stride-2 3x3 conv and a 3x3 conv (32x32, 16x16, 8x8), BatchNorm + ReLU (BatchNorm folded into the
  convs at load time);
- decoder: 1x1 lateral conv, nearest upsampling, additive skip, one 3x3 conv per level, up to 64x64;
- heads: one 1x1 conv giving object (8 classes incl. none), part (6) and material (3) logits;
  {parts_rule};
- `features`: global average of the 8x8 bottleneck ({meta.get('widths', '').split(',')[-1].strip(' ]')} dimensions);
- {meta.get('parameters')} parameters, stored as float16 safetensors.

## Training

- command: `{meta.get('command')}`
- seed {meta.get('seed')}, {meta.get('steps')} steps of batch {meta.get('batch')}, AdamW lr {meta.get('lr')}
  (warm-up, cosine decay), cross-entropy per head with class weights ~ frequency^-1/2;
- training scenes: seeds 0..{int(meta.get('pool', 0)) - 1} (pre-rendered pool), augmented with flips,
  colour jitter, Gaussian blur, down-up resampling, noise and JPEG artifacts{paste_train};
- training time: {float(meta.get('seconds', 'nan')):.0f} s on {meta.get('device')} ({meta.get('threads')} threads).

## Evaluation

{eval_seeds[1] - eval_seeds[0]} held-out scenes, seeds {eval_seeds[0]}..{eval_seeds[1] - 1} (never used in
training). IoU = total intersection / total union over the set. "aug" = the same scenes through the
training augmentations (generator-like degradations). {paste_eval}Re-run: `python -m compute.train.seg --evaluate-only --out {meta.get('out', 'ingest/zoo/village-seg.safetensors')}`.

| concept | category | pixels | >= 1 % | IoU (clean) | IoU (aug) |{paste_col[0]}
|---|---|---|---|---|---|{paste_col[1]}
{rows}

Mean IoU (clean): **{mean:.3f}**; mean IoU (aug): {mean_aug:.3f}.
Concepts covering >= 1 % of pixels: {', '.join(big)}.
Quality bar (IoU >= 0.80 for every object and part concept covering >= 1 % of pixels, mean IoU >= 0.85):
**{'met' if ok else 'NOT met'}**.

Speed: `segment` of 32 images at 64x64 took {speed_ms:.0f} ms (median of 5, wall clock) when this card was
written, with {torch.get_num_threads()} torch thread(s) and a 1-minute load average of {os.getloadavg()[0]:.1f}
on {os.cpu_count()} CPUs (a shared machine: `gandissect bench` measures it properly).
"""


def measure_speed(model: VillageSegmenter, device: torch.device) -> float:
    x = torch.rand(32, 3, 64, 64, device=device) * 2 - 1
    model.segment(x)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        model.segment(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    device = device_from(a)
    out = Path(a.out)
    if not a.evaluate_only:
        model, seconds = train(a, device)
        cmd = "python -m compute.train.seg " + shlex.join(sys.argv[1:] if argv is None else argv)
        meta = {"steps": a.steps, "batch": a.batch, "seed": a.seed, "lr": a.lr, "pool": a.pool, "paste": a.paste,
                "seconds": f"{seconds:.1f}", "device": str(device), "threads": torch.get_num_threads(),
                "command": cmd,
                "parameters": sum(p.numel() for p in model.parameters())}
        out.parent.mkdir(parents=True, exist_ok=True)
        save_village_seg(model, str(out), meta)
        print(f"trained {a.steps} steps in {seconds:.0f}s -> {out}", flush=True)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = dict(f.metadata() or {})
    model = load_village_seg(str(out), device)  # the float16 weights as shipped
    images, labels = load_pool(EVAL_SEED_START, a.eval, a.pool_dir)
    clean = evaluate(model, images, labels, device)
    aug = evaluate(model, images, labels, device, aug_seed=12345)
    pasted = evaluate(model, images, labels, device, paste_seed=PASTE_EVAL_SEED)
    mean, big, ok = quality(clean)
    for n, (iou, cov) in clean.items():
        print(f"  {n:10s} pixels {cov * 100:6.2f} %  IoU {iou:.3f}  (aug {aug[n][0]:.3f}, "
              f"parts pasted {pasted[n][0]:.3f})")
    print(f"{out.name}: mean IoU {mean:.3f}; bar {'met' if ok else 'NOT met'}", flush=True)
    if a.no_card:
        return 0
    meta["out"] = os.path.relpath(out, REPO) if out.resolve().is_relative_to(REPO) else str(out)
    name = out.stem if out.stem.startswith("village-seg") else "village-seg"
    card = model_card(meta, clean, aug, (EVAL_SEED_START, EVAL_SEED_START + a.eval), measure_speed(model, device),
                      pasted=pasted if meta.get("parts_anywhere") == "1" else None, name=name)
    out.with_suffix(".md").write_text(card)
    print(f"model card -> {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
