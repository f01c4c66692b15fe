"""Invert images into a generator: encoder guess, then optimise z, then optimise one layer's features.

Reads nothing from disk (the CLI and the analysis load the models); writes nothing.

The two-step method of "Seeing What a GAN Cannot Generate" (Bau et al., ICCV 2019):

1. z0 = E(x) from the layer-wise encoder, or, when it reconstructs x better, one of `candidates`
   fixed random latents (`start_z`);
2. optimise z: minimise pixel MSE + `perceptual` x (segmenter feature MSE, normalised by the
   target's feature variance) of G(z) against x; with `restarts` = R > 1, from each image's R best
   starts at once (R times the z step's work), keeping per image the z of least final loss (a start
   in a bad basin is what leaves an image tens of dB short);
3. optimise the featuremap h of `layer` ("optimise latents by layer"): start at h = G_<=layer(z*),
   minimise the same loss of G_>layer(h) plus `reg` x mean((h - h0)^2), which keeps h near the
   generator's range (h0 = the features of z*).

Losses are per-image sums, so a batch inverts its images independently (Adam is element-wise): a
batch of 50 is 50 separate inversions at once. Learning rates decay by a cosine to zero.

    from compute.invert.optimise import invert
    inv = invert(gen, images, encoder=enc, segmenter=seg, layer="layer4")   # images [N,3,R,R] in [-1,1]
    inv.reconstruction, inv.psnr
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from compute.invert.encoder import LayerwiseEncoder, normalise_z

__all__ = ["Inversion", "invert", "split_generator", "psnr", "to_uint8", "perceptual_fn"]

# Adam learning rate of the layer step (cosine-decayed). 0.05, was 0.03 (analysis kind invert code version 2):
# on 16 held-out generated images (`python -m compute.invert.card --generated 16 --rendered 0`) PSNR
# 38.3 -> 39.0 dB and segmentation mIoU 0.898 -> 0.909; on a second held-out set (sample set 920, not
# used to choose it) 37.6 -> 38.4 dB and 0.878 -> 0.892. Same number of steps, so the same time.
# On 64 held-out z of sample set 921 (never used to choose a setting) the defaults give 36.2 dB and mIoU
# 0.855 (README); `restarts = 2` gives 40.0 dB and 0.917 on the same 64 (about 1.2x the time).
LAYER_LR = 0.05


@dataclass
class Inversion:
    """Result of `invert` for N images (tensors on the CPU)."""

    z: torch.Tensor                # [N, z_dim] (normalised)
    layer: str                     # the layer whose features were optimised ('' when layer_steps = 0)
    features: torch.Tensor | None  # [N, C, H, W] optimised features of `layer`
    reconstruction: torch.Tensor   # [N, 3, R, R] in [-1, 1]
    psnr: torch.Tensor             # [N] dB of the reconstruction vs the image (8-bit quantised, [0, 1] range)
    psnr_z: torch.Tensor           # [N] dB after the z step only
    psnr_encoder: torch.Tensor     # [N] dB of G(z0), the z step's start (E(x) or a better fixed random latent)
    seconds: float
    history: list[float] = field(default_factory=list)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> uint8 [N, 3, H, W] (round half up of (x + 1) * 127.5)."""
    return ((images.clamp(-1, 1) + 1) * 127.5 + 0.5).floor().to(torch.uint8)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of two batches [N, 3, H, W] in [-1, 1], both quantised to 8 bits first."""
    qa, qb = to_uint8(a).double() / 255, to_uint8(b).double() / 255
    mse = (qa - qb).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(1.0 / mse)).float()


def split_generator(gen: nn.Module, layer: str) -> tuple[Callable[[torch.Tensor], torch.Tensor],
                                                         Callable[[torch.Tensor], torch.Tensor]]:
    """(head, tail) of a generator made of named children: head(z [N, z_dim]) -> `layer`'s output,
    tail(features) -> images. The output child keeps its clamp."""
    names = [n for n, _ in gen.named_children()]
    if layer not in names or layer == names[-1]:
        raise ValueError(f"split_generator: {layer!r} is not an inner child of the generator ({', '.join(names[:-1])})")
    k = names.index(layer) + 1
    children = [c for _, c in gen.named_children()]

    def head(z: torch.Tensor) -> torch.Tensor:
        x = z.view(z.shape[0], -1, 1, 1)
        for c in children[:k]:
            x = c(x)
        return x

    def tail(h: torch.Tensor) -> torch.Tensor:
        for c in children[k:]:
            h = c(h)
        return h

    return head, tail


def perceptual_fn(segmenter: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """images [N, 3, H, W] -> the segmenter's feature map used by the perceptual term (its bottleneck
    when it exposes `logits` (village-seg), else its concept probabilities), or None without one."""
    if segmenter is None:
        return None
    if hasattr(segmenter, "logits"):
        return lambda x: segmenter.logits(x)[1]
    if hasattr(segmenter, "probs"):
        return segmenter.probs
    return None


def _loss(x: torch.Tensor, target: torch.Tensor, feat: Callable | None, target_f: torch.Tensor | None,
          f_scale: torch.Tensor | None, perceptual: float) -> torch.Tensor:
    """Per-image loss [N]: pixel MSE + perceptual x normalised feature MSE."""
    loss = (x - target).pow(2).flatten(1).mean(1)
    if feat is not None and perceptual > 0:
        loss = loss + perceptual * (feat(x) - target_f).pow(2).flatten(1).mean(1) / f_scale
    return loss


def _cosine(opt: torch.optim.Optimizer, lr: float, step: int, steps: int) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))


def start_z(gen: nn.Module, images: torch.Tensor, encoder: LayerwiseEncoder | None, candidates: int,
            k: int = 1) -> torch.Tensor:
    """The z step's start [N, z_dim]: per image, whichever of E(x) and `candidates` fixed random latents
    (a torch stream seeded 0, shared by all images) reconstructs it with the least pixel MSE; with k > 1
    the k best, best first [N, k, z_dim]."""
    dev = images.device
    pool = [encoder(images).unsqueeze(1)] if encoder is not None else []  # [N, 1, D]
    if candidates > 0 or not pool:
        c = normalise_z(torch.randn(max(candidates, 1), int(gen.z_dim), generator=torch.Generator().manual_seed(0))).to(dev)
        pool.append(c.unsqueeze(0).expand(images.shape[0], -1, -1))
    zs = torch.cat(pool, 1)  # [N, K, D]
    n, k_all, d = zs.shape
    err = torch.empty(n, k_all, device=dev)
    for j in range(0, k_all, 32):
        x = gen(zs[:, j:j + 32].reshape(-1, d)).view(n, -1, *images.shape[1:])
        err[:, j:j + 32] = (x - images[:, None]).pow(2).flatten(2).mean(2)
    if k == 1:
        return zs[torch.arange(n), err.argmin(1)]
    if k > k_all:
        raise ValueError(f"start_z: {k} starts asked of {k_all} (E(x) and {candidates} candidates)")
    best = err.topk(k, 1, largest=False).indices  # [N, k], ascending error
    return zs[torch.arange(n)[:, None], best]


def invert(gen: nn.Module, images: torch.Tensor, *, encoder: LayerwiseEncoder | None = None,
           segmenter: Any = None, layer: str = "layer4", z_steps: int = 150, layer_steps: int = 250,
           z_lr: float = 0.05, layer_lr: float = LAYER_LR, perceptual: float = 0.1, reg: float = 0.01,
           z_init: torch.Tensor | None = None, candidates: int = 64, restarts: int = 1,
           progress: Callable[[int, int], None] | None = None) -> Inversion:
    """Invert images [N, 3, R, R] in [-1, 1] (on the generator's device) into `gen`; see the module
    docstring. `z_init` [N, z_dim] or [N, restarts, z_dim] replaces the starts. `progress(done, total)`
    is called every 10 steps."""
    if restarts < 1:
        raise ValueError(f"invert: restarts must be >= 1 (got {restarts})")
    t0 = time.perf_counter()
    gen = copy.deepcopy(gen).to(memory_format=torch.channels_last)  # 2x faster convolutions on CPU
    images = images.contiguous(memory_format=torch.channels_last)
    dev = images.device
    n = images.shape[0]
    feat = perceptual_fn(segmenter) if perceptual > 0 else None
    with torch.no_grad():
        target_f = feat(images) if feat is not None else None
        f_scale = target_f.flatten(1).var(1).clamp_min(1e-6) if target_f is not None else None
        if z_init is not None:
            if z_init.dim() != (3 if restarts > 1 else 2):
                raise ValueError(f"invert: z_init of shape {tuple(z_init.shape)} must be [N, z_dim]"
                                 + (f" or, with restarts={restarts}, [N, {restarts}, z_dim]" if restarts > 1 else ""))
            z0 = z_init.to(dev).float()
            z0 = normalise_z(z0.reshape(-1, z0.shape[-1])).view_as(z0)  # each latent, also of [N, R, z_dim]
            if restarts > 1 and z0.shape[:2] != (n, restarts):
                raise ValueError(f"invert: z_init of shape {tuple(z_init.shape)} with restarts={restarts} "
                                 f"must be [{n}, {restarts}, z_dim]")
        else:
            z0 = start_z(gen, images, encoder, candidates, restarts)
        p_enc = psnr(gen(z0 if restarts == 1 else z0[:, 0]), images)
    # with restarts, the z step inverts each image from R starts as N * R independent rows
    z_images, z_target_f, z_scale = images, target_f, f_scale
    if restarts > 1:
        z0 = z0.reshape(n * restarts, -1)
        z_images = images.repeat_interleave(restarts, 0)
        if target_f is not None:
            z_target_f, z_scale = target_f.repeat_interleave(restarts, 0), f_scale.repeat_interleave(restarts, 0)
    total = z_steps + layer_steps
    history: list[float] = []
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=z_lr)
    for i in range(z_steps):
        _cosine(opt, z_lr, i, z_steps)
        opt.zero_grad(set_to_none=True)
        loss = _loss(gen(z), z_images, feat, z_target_f, z_scale, perceptual).sum()
        loss.backward()
        opt.step()
        if i % 10 == 0:
            history.append(float(loss.detach()) / (n * restarts))
            if progress:
                progress(i, total)
    z = normalise_z(z.detach())
    if restarts > 1:  # per image, the restart of least final loss
        with torch.no_grad():
            final = _loss(gen(z), z_images, feat, z_target_f, z_scale, perceptual).view(n, restarts)
        z = z.view(n, restarts, -1)[torch.arange(n, device=dev), final.argmin(1)]
    with torch.no_grad():
        rec = gen(z)
    p_z = psnr(rec, images)
    h_out: torch.Tensor | None = None
    if layer_steps > 0 and layer:
        head, tail = split_generator(gen, layer)
        with torch.no_grad():
            h0 = head(z)
        h = h0.clone().requires_grad_(True)
        opt = torch.optim.Adam([h], lr=layer_lr)
        for i in range(layer_steps):
            _cosine(opt, layer_lr, i, layer_steps)
            opt.zero_grad(set_to_none=True)
            loss = _loss(tail(h), images, feat, target_f, f_scale, perceptual)
            loss = (loss + reg * (h - h0).pow(2).flatten(1).mean(1)).sum()
            loss.backward()
            opt.step()
            if i % 10 == 0:
                history.append(float(loss.detach()) / n)
                if progress:
                    progress(z_steps + i, total)
        h_out = h.detach()
        with torch.no_grad():
            rec = tail(h_out)
    if progress:
        progress(total, total)
    return Inversion(z=z.cpu(), layer=layer if h_out is not None else "", features=None if h_out is None else h_out.cpu(),
                     reconstruction=rec.detach().cpu(), psnr=psnr(rec, images).cpu(), psnr_z=p_z.cpu(),
                     psnr_encoder=p_enc.cpu(), seconds=time.perf_counter() - t0, history=history)
