"""Train (or evaluate) the bundled village scene classifier `village-cls`.

Reads: the village renderer and its scene classes (`ingest.village.scenes`: rules, balanced splits);
class-balanced pools of rendered scenes cached under `.cache/village-cls/` (re-rendered when missing
or when the world's source changes); with --evaluate-only, the weights at --out.
Writes: float32 safetensors weights at --out (default `ingest/zoo/village-cls.safetensors`, < 1 MB)
and the model card beside them (`village-cls.md`: architecture, command, seeds, epochs, training time,
per-class accuracy on held-out scenes, confusion matrix).

    python -m compute.train.cls --threads 1                 # or: gandissect train classifier --threads 1
    python -m compute.train.cls --evaluate-only             # re-measure the model card's numbers

Training scenes: the first --train scenes of each class among seeds 0, 1, ...; held-out scenes: the
first --eval of each class among seeds HELDOUT_SEED_START, ... (never used in training). Augmentation:
horizontal flips and a small brightness jitter (neither changes what a scene contains).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from compute.train.common import REPO, add_device_arguments, device_from
from ingest.models.classifier import VillageClassifier, load_village_cls, read_meta, save_village_cls
from ingest.real import to_input
from ingest.village.scenes import CLASSES, HELDOUT_SEED_START, POOL_DIR, TRAIN_SEED_START, load_split

DEFAULT_OUT = REPO / "ingest" / "zoo" / "village-cls.safetensors"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gandissect train classifier", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=1, help="seed for weights, batches and augmentations")
    p.add_argument("--train", type=int, default=1200, help="training scenes per class")
    p.add_argument("--eval", type=int, default=250, help="held-out scenes per class")
    p.add_argument("--widths", default="16,32,64,64,64")
    add_device_arguments(p)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--pool-dir", default=str(POOL_DIR))
    p.add_argument("--evaluate-only", action="store_true", help="measure --out and write its model card")
    p.add_argument("--no-card", action="store_true", help="do not write the model card")
    return p.parse_args(argv)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and brightness jitter of a batch [N, 3, H, W] in [-1, 1]."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    gain = 1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.2
    return ((x + 1) * gain - 1).clamp(-1, 1)


def train(a: argparse.Namespace, device: torch.device) -> tuple[VillageClassifier, float]:
    images, labels, _ = load_split(TRAIN_SEED_START, a.train, a.pool_dir)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    net = VillageClassifier(CLASSES, [int(w) for w in a.widths.split(",")]).to(device)
    x_all, y_all = to_input(images), torch.as_tensor(labels)
    steps_per_epoch = -(-len(y_all) // a.batch)
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.epochs * steps_per_epoch,
                                                pct_start=0.15)
    t0 = time.time()
    for epoch in range(a.epochs):
        net.train()
        order = torch.randperm(len(y_all), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for s in range(0, len(order), a.batch):
            idx = order[s:s + a.batch]
            x = augment(x_all[idx], gen).to(device)
            y = y_all[idx].to(device)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(idx)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}/{a.epochs}: loss {loss_sum / total:.3f}, train accuracy {correct / total:.3f} "
              f"({time.time() - t0:.0f}s)", flush=True)
    return net.eval(), time.time() - t0


@torch.no_grad()
def predict(net: torch.nn.Module, images: np.ndarray, device: torch.device, batch: int = 256) -> np.ndarray:
    """Predicted class indices int64 [N] of uint8 images [N, H, W, 3]."""
    out = [net(to_input(images[s:s + batch]).to(device)).argmax(1).cpu() for s in range(0, len(images), batch)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def confusion(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """int64 [k, k]: row = true class, column = predicted class."""
    return np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)


def model_card(meta: dict[str, str], conf: np.ndarray, eval_seeds: tuple[int, int], per_class: int,
               params: int) -> str:
    acc = np.trace(conf) / conf.sum()
    per = conf.diagonal() / conf.sum(1)
    rows = "\n".join(f"| {c} | {int(conf[k].sum())} | {per[k]:.3f} |" for k, c in enumerate(CLASSES))
    header = "| true \\ predicted | " + " | ".join(CLASSES) + " |"
    sep = "|---" * (len(CLASSES) + 1) + "|"
    matrix = "\n".join(f"| {c} | " + " | ".join(str(int(v)) for v in conf[k]) + " |" for k, c in enumerate(CLASSES))
    return f"""# village-cls

The bundled scene classifier of the village world (issue 20): a small VGG-like CNN that tells the
village's scene classes apart. It implements the classifier interface (`ingest/models/classifier.py`,
loaded by `ingest.zoo.load_classifier("village-cls")`): `classes`, `layers`, `resolution`,
`forward(images [N,3,H,W] in [-1,1]) -> logits [N, {len(CLASSES)}]`.

## Classes

The rules live in one place, `ingest/village/scenes.py` (first match wins, on the scene's visible
pixels): `church_square` — a domed building; `town_street` — no dome, a road; `farm` — no dome, no
road, trees; `hamlet` — none of these.

## Architecture

- input 3x64x64 in [-1, 1]; blocks `conv1`..`conv5` (3x3 conv, BatchNorm, ReLU) of widths
  {meta.get('widths')}; 2x2 max pools after conv1, conv2 and conv4 (conv3/conv4 at 16x16, conv5 at 8x8);
- global average pool, one linear layer `fc` to {len(CLASSES)} logits;
- {params} parameters, stored as float32 safetensors.

## Training

- command: `{meta.get('command')}`
- seed {meta.get('seed')}, {meta.get('epochs')} epochs of batch {meta.get('batch')}, AdamW, one-cycle lr
  {meta.get('lr')}, cross-entropy; augmentation: horizontal flips, brightness jitter;
- training scenes: {meta.get('train')} per class (balanced), the first of each class among seeds
  {meta.get('train_seeds')};
- training time: {meta.get('seconds')} s on {meta.get('device')} ({meta.get('threads')} threads).

## Evaluation

{per_class} held-out scenes per class, the first of each class among seeds {eval_seeds[0]}..{eval_seeds[1]}
(never used in training). Re-run: `python -m compute.train.cls --evaluate-only`.

**Held-out accuracy: {acc:.3f}**

| class | scenes | accuracy |
|---|---|---|
{rows}

Confusion matrix (rows: true class, columns: predicted):

{header}
{sep}
{matrix}
"""


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    device = device_from(a)
    out = Path(a.out)
    if not a.evaluate_only:
        net, seconds = train(a, device)
        _, _, train_seeds = load_split(TRAIN_SEED_START, a.train, a.pool_dir)
        cmd = "python -m compute.train.cls " + shlex.join(sys.argv[1:] if argv is None else argv)
        meta = {"epochs": str(a.epochs), "batch": str(a.batch), "seed": str(a.seed), "lr": str(a.lr),
                "train": str(a.train), "train_seeds": f"{int(train_seeds.min())}..{int(train_seeds.max())}",
                "seconds": f"{seconds:.1f}", "device": str(device), "threads": str(torch.get_num_threads()),
                "command": cmd}
        out.parent.mkdir(parents=True, exist_ok=True)
        save_village_cls(net, str(out), meta)
        print(f"trained {a.epochs} epochs in {seconds:.0f}s -> {out}", flush=True)
    meta = read_meta(str(out))
    net = load_village_cls(str(out), device)
    images, labels, seeds = load_split(HELDOUT_SEED_START, a.eval, a.pool_dir)
    conf = confusion(labels, predict(net, images, device), len(CLASSES))
    for k, c in enumerate(CLASSES):
        print(f"  {c:14s} accuracy {conf[k, k] / conf[k].sum():.3f}")
    acc = np.trace(conf) / conf.sum()
    print(f"{out.name}: held-out accuracy {acc:.3f} ({conf.sum()} scenes); bar (>= 0.90) "
          f"{'met' if acc >= 0.9 else 'NOT met'}", flush=True)
    if a.no_card:
        return 0
    card = model_card(meta, conf, (int(seeds.min()), int(seeds.max())), a.eval,
                      sum(p.numel() for p in net.parameters()))
    out.with_suffix(".md").write_text(card)
    print(f"model card -> {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
