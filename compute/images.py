"""Images on demand: regenerate samples from `(model, seed, sample)` and draw unit strips (paper Fig. 3).

Reads the `models` row of the store (family, checkpoint, dataset, model_group) through `db.store.read`
and the model's checkpoint; writes nothing. The store keeps sample indices, never pixels: z #i of the
sample set `seed` is `ingest.samples.latents(seed, 1, z_dim, start=i)`, so an image is the same every
time it is drawn. Loaded generators are cached per process (keyed by checkpoint path, size and mtime).

    from compute.images import generate, unit_strip
    imgs = generate("village-gan", 1, [0, 5, 9], "gandissect.duckdb")          # uint8 [3, 64, 64, 3]
    strip = unit_strip("village-gan", "layer4", 17, 2.3, [5, 9], 1, "gandissect.duckdb")  # uint8 [h, w, 3]

A unit strip shows the unit's top images with the region where its featuremap (upsampled bilinearly,
align_corners=True, to the display size) exceeds the unit's threshold outlined and the outside darkened.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from compute.core.tap import Tap
from db import store
from ingest.samples import latents_at

OUTLINE_RGB = (255, 214, 0)  # the contour colour (yellow)
DIM = 0.35  # brightness kept outside the unit's region
GAP = 2  # pixels of white between images of a strip

_MODEL_SQL = """
SELECT model, family, dataset, checkpoint, checkpoint_sha256, resolution, z_dim, model_group
FROM models WHERE model = ?
"""


class ImageError(RuntimeError):
    """Images cannot be drawn for a model (unknown model, missing or changed checkpoint): one line."""


@dataclass(frozen=True)
class StripRequest:
    """One unit strip: the unit, its activation threshold, and the images (seed, sample indices)."""

    unit: int
    threshold: float
    seed: int
    samples: tuple[int, ...]


# ---------------------------------------------------------------- loading

_LOCK = threading.Lock()
_GENERATORS: dict[tuple, torch.nn.Module] = {}


def _model_row(model: str, store_path: str | os.PathLike | None) -> dict:
    frame = store.read(_MODEL_SQL, [model], path=store_path, missing_ok=True)
    if frame.height == 0:
        raise ImageError(f"model {model!r} is not in the store {store.store_path(store_path)}")
    return frame.row(0, named=True)


def _checkpoint_path(checkpoint: str | None, store_path: str | os.PathLike | None) -> Path:
    if not checkpoint:
        raise ImageError("the store records no checkpoint for this model")
    p = Path(checkpoint).expanduser()
    if p.is_absolute() or p.exists():
        return p
    beside = Path(store.store_path(store_path)).resolve().parent / p  # relative to the store's folder
    return beside if beside.exists() else p


def load_generator(model: str, store_path: str | os.PathLike | None = None,
                   device: torch.device | str = "cpu", spec_path: str | os.PathLike | None = None) -> torch.nn.Module:
    """The generator of a stored model, loaded once per process (per checkpoint file and device).

    Family `progan` is rebuilt from the `models` row alone; other families (whose loader options live
    in the spec) are looked up by name in the spec at `spec_path`, else the spec at $GANDISSECT_SPEC (default `gandissect.toml`).
    """
    from ingest import zoo
    from ingest.spec import ModelSpec

    row = _model_row(model, store_path)
    path = _checkpoint_path(row["checkpoint"], store_path)
    if not path.exists():
        raise ImageError(f"checkpoint of {model!r} not found: {path}")
    st = path.stat()
    key = (model, str(path.resolve()), st.st_size, st.st_mtime_ns, str(device))
    with _LOCK:
        if key in _GENERATORS:
            return _GENERATORS[key]
        sha = row["checkpoint_sha256"]
        if sha and zoo.file_sha256(path) != sha:
            raise ImageError(f"checkpoint of {model!r} changed since it was analysed ({path}): "
                             "images would not match the stored statistics")
        try:
            if row["family"] == "progan":
                spec = ModelSpec(row["model"], row["family"], str(path), row["dataset"] or "",
                                 row["model_group"] or row["model"])
                net = zoo.load_model_spec(spec, device)
            else:
                net = zoo.load_generator(model, spec_path or os.environ.get("GANDISSECT_SPEC"), device)
        except Exception as e:
            raise ImageError(f"cannot load {model!r} ({row['family']}): {str(e).splitlines()[0]}") from e
        net = net.eval().requires_grad_(False)
        _GENERATORS[key] = net
        return net


# ---------------------------------------------------------------- generation

def _z(seed: int, samples: Sequence[int], z_dim: int) -> torch.Tensor:
    """Latents of the given sample indices of one seed: Tensor[N, z_dim]."""
    if not samples:
        return torch.zeros(0, z_dim)
    return latents_at(int(seed), [int(i) for i in samples], z_dim)  # one pass over the stream


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def _forward(net: torch.nn.Module, z: torch.Tensor, layer: str | None, device: torch.device | str,
             batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images [N, 3, H, W] and (when `layer` is given) its featuremaps [N, C, h, w], on CPU."""
    images, feats = [], []
    for s in range(0, z.shape[0], batch_size):
        zb = z[s:s + batch_size].to(device)
        if layer is None:
            images.append(net(zb).cpu())
            continue
        with Tap(net, [layer]) as tap:
            images.append(net(zb).cpu())
            feats.append(tap[layer].float().cpu())
    if not images:
        raise ImageError("no samples requested")
    return torch.cat(images), (torch.cat(feats) if feats else None)


def generate(model: str, seed: int, samples: Sequence[int], store_path: str | os.PathLike | None = None,
             device: torch.device | str = "cpu", batch_size: int = 32) -> np.ndarray:
    """Images (model, seed, sample) for each sample index: uint8 [N, H, W, 3]."""
    net = load_generator(model, store_path, device)
    images, _ = _forward(net, _z(seed, list(samples), int(net.z_dim)), None, device, batch_size)
    return to_uint8(images)


# ---------------------------------------------------------------- drawing

def outline(image: np.ndarray, mask: np.ndarray, dim: float = DIM, color: tuple[int, int, int] = OUTLINE_RGB,
            width: int = 1) -> np.ndarray:
    """Darken `image` (uint8 [H, W, 3]) outside `mask` (bool [H, W]) and draw the mask's contour."""
    out = image.astype(np.float32)
    out[~mask] *= dim
    edge = mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)
    out[edge] = color
    return out.round().clip(0, 255).astype(np.uint8)


def hstack(images: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Images of one height side by side with `gap` white pixels between: uint8 [H, W_total, 3]."""
    if not images:
        return np.zeros((1, 1, 3), np.uint8)
    h = images[0].shape[0]
    parts: list[np.ndarray] = []
    for i, im in enumerate(images):
        if i:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
        parts.append(im)
    return np.concatenate(parts, axis=1)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def unit_strips(model: str, layer: str, requests: Sequence[StripRequest],
                store_path: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                size: int | None = None, batch_size: int = 32) -> list[np.ndarray]:
    """One strip per request (uint8 [size, k*size + gaps, 3]); every distinct image is generated once.

    Requests may mix seeds; images are drawn in batches of `batch_size`. `size` is the display side
    (default: the generator's resolution); the featuremap is upsampled to it bilinearly with
    align_corners=True, the recorded choice of dissection.
    """
    net = load_generator(model, store_path, device)
    pairs = list(dict.fromkeys((r.seed, s) for r in requests for s in r.samples))
    if not pairs:
        return [hstack([]) for _ in requests]
    z = torch.cat([_z(seed, [s], int(net.z_dim)) for seed, s in pairs])
    images, feats = _forward(net, z, layer, device, batch_size)
    side = int(size or images.shape[-1])
    pix = to_uint8(_resize(images, side))
    index = {p: i for i, p in enumerate(pairs)}
    strips = []
    for r in requests:
        if not 0 <= r.unit < feats.shape[1]:
            raise ImageError(f"unit {r.unit} out of range: {model} {layer} has {feats.shape[1]} units")
        rows = [index[(r.seed, s)] for s in r.samples]
        if not rows:
            strips.append(hstack([]))
            continue
        act = feats[rows, r.unit:r.unit + 1]  # [k, 1, h, w]
        up = F.interpolate(act, size=(side, side), mode="bilinear", align_corners=True)[:, 0].numpy()
        strips.append(hstack([outline(pix[i], up[j] > r.threshold) for j, i in enumerate(rows)]))
    return strips


def unit_strip(model: str, layer: str, unit: int, threshold: float, samples: Sequence[int], seed: int,
               store_path: str | os.PathLike | None = None, device: torch.device | str = "cpu",
               size: int | None = None) -> np.ndarray:
    """The top images of one unit side by side, region above `threshold` outlined: uint8 [h, w, 3]."""
    return unit_strips(model, layer, [StripRequest(int(unit), float(threshold), int(seed), tuple(samples))],
                       store_path, device, size)[0]


def overlay_heat(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a heat map (float [h, w], any scale; upsampled to the image) over an image uint8 [H, W, 3]."""
    t = torch.from_numpy(np.asarray(heat, np.float32))[None, None]
    up = F.interpolate(t, size=image.shape[:2], mode="bilinear", align_corners=True)[0, 0].numpy()
    lo, hi = float(np.nanmin(up)), float(np.nanmax(up))
    v = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
    red = np.stack([255 * v, 64 * v, 0 * v], axis=-1)
    out = image.astype(np.float32) * (1 - alpha * v[..., None]) + red * alpha
    return out.round().clip(0, 255).astype(np.uint8)
