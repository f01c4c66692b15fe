"""`gandissect train encoder`: train the layer-wise encoder of a ProGAN-family generator.

Reads the generator (a bundled name, a name declared in the spec, or a .safetensors path); writes the
encoder as float16 safetensors (`--out`, default `ingest/zoo/<model>-encoder.safetensors`) and, with
`--card`, its model card next to it (`<out stem>.md`) with the measured reconstruction quality.

Training (all on generated samples, where every layer's input is known; z drawn from a torch
generator seeded with `--seed`, disjoint from the project's sample sets by construction of the stream):

- layer-wise phase (`--steps`): every inverse learns its own layer at once from the same batch:
  MSE(inv_K(y_K), y_{K-1}) + MSE(layer_K(inv_K(y_K)), y_K) (prediction and cycle terms; y_0 = normalised z);
- composed phase (`--finetune` steps): the whole encoder end to end, MSE(E(x), z) + MSE(G(E(x)), x).

    gandissect train encoder --model village-gan --threads 1 --card
    python -m compute.invert.train --model tiny.safetensors --steps 200 --out /tmp/enc.safetensors
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compute.invert.encoder import LayerwiseEncoder, normalise_z, save_encoder

ZOO = Path(__file__).resolve().parents[2] / "ingest" / "zoo"


def children_outputs(gen: nn.Module, z: torch.Tensor) -> dict[str, torch.Tensor]:
    """{'z': normalised z [N, z_dim], child name: its output} for a batch of latents [N, z_dim]."""
    outs = {"z": normalise_z(z)}
    x = z.view(z.shape[0], -1, 1, 1).contiguous(memory_format=torch.channels_last)
    for name, child in gen.named_children():
        x = child(x)
        outs[name] = x
    return outs


def layerwise_loss(enc: LayerwiseEncoder, gen: nn.Module, outs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per inverse: prediction MSE of the layer below + cycle MSE of the layer's own output."""
    kids = dict(gen.named_children())
    losses = {}
    for name, inv in enc.inverses.items():
        below = enc.below(name)
        pred = inv(outs[name])
        loss = F.mse_loss(pred, outs[below])
        src = pred.view(pred.shape[0], -1, 1, 1) if below == "z" else pred
        loss = loss + F.mse_loss(kids[name](src), outs[name])
        losses[name] = loss
    return losses


def train_encoder(gen: nn.Module, *, steps: int = 1500, finetune: int = 300, batch: int = 32, seed: int = 7,
                  hidden: int = 32, lr: float = 1e-3, device: torch.device | str = "cpu",
                  log: Callable[[str], None] | None = print) -> LayerwiseEncoder:
    """Train a LayerwiseEncoder for `gen` (frozen) and return it in eval mode."""
    gen = copy.deepcopy(gen).eval().requires_grad_(False).to(memory_format=torch.channels_last)  # 2x on CPU
    enc = LayerwiseEncoder.for_generator(gen, hidden).to(device).train().to(memory_format=torch.channels_last)
    rng = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(enc.parameters(), lr=lr)
    t0 = time.perf_counter()
    total = steps + finetune
    for step in range(total):
        for g in opt.param_groups:  # linear warm-down over the last 30 % of each phase
            end, start = (steps, 0) if step < steps else (total, steps)
            frac = (step - start) / max(end - start, 1)
            g["lr"] = lr * min(1.0, (1 - frac) / 0.3)
        z = torch.randn(batch, int(gen.z_dim), generator=rng).to(device)
        with torch.no_grad():
            outs = children_outputs(gen, z)
        if step < steps:
            parts = layerwise_loss(enc, gen, outs)
            loss = sum(parts.values())
        else:
            zh = enc(outs["output"])
            loss = F.mse_loss(zh, outs["z"]) + F.mse_loss(gen(zh), outs["output"])
            parts = {}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log and (step % 100 == 0 or step == total - 1):
            phase = "layerwise" if step < steps else "composed"
            log(f"step {step}/{total} ({phase}) loss {float(loss.detach()):.4f}  {time.perf_counter() - t0:.0f}s")
    return enc.eval().requires_grad_(False).to(memory_format=torch.contiguous_format)


def resolve_generator(model: str, spec: str | None, device: str) -> tuple[nn.Module, str]:
    """A generator from a .safetensors path, a bundled name, or a spec entry; and a short name."""
    p = Path(model)
    if p.suffix == ".safetensors" and p.is_file():
        from ingest.models.progan import load_progan

        return load_progan(p, device), p.stem
    from ingest.zoo import load_generator

    return load_generator(model, spec, device=device), model


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gandissect train encoder", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="village-gan", help="generator name or .safetensors path (progan family)")
    ap.add_argument("--spec", default=None)
    ap.add_argument("--steps", type=int, default=1500, help="layer-wise steps")
    ap.add_argument("--finetune", type=int, default=300, help="composed (end-to-end) steps")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=32, help="minimum hidden width of an inverse")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    ap.add_argument("--card", action="store_true", help="measure the encoder and write its model card")
    a = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    if a.threads:
        torch.set_num_threads(a.threads)
    gen, name = resolve_generator(a.model, a.spec, a.device)
    if not all(hasattr(gen, k) for k in ("z_dim", "resolution")) or "output" not in dict(gen.named_children()):
        print(f"error: {a.model}: the encoder needs a progan-family generator (children layer1..layerL, output)",
              file=sys.stderr)
        return 2
    out = Path(a.out) if a.out else ZOO / f"{name}-encoder.safetensors"
    t0 = time.perf_counter()
    enc = train_encoder(gen, steps=a.steps, finetune=a.finetune, batch=a.batch, seed=a.seed, hidden=a.hidden,
                        lr=a.lr, device=a.device)
    seconds = time.perf_counter() - t0
    meta: dict[str, Any] = {"model": name, "steps": a.steps, "finetune": a.finetune, "batch": a.batch,
                            "seed": a.seed, "hidden": a.hidden, "train_seconds": round(seconds, 1),
                            "threads": torch.get_num_threads()}
    save_encoder(enc, out, {"train": json.dumps(meta)})
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) in {seconds:.0f}s")
    if a.card:
        from compute.invert.card import write_card

        write_card(gen, enc, name, out, meta, device=a.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
