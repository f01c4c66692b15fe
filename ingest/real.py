"""Real images: the reference distribution for Fréchet distances and concept coverage.

Reads rendered village scenes (`source = "village"`) or a folder of image files (png, jpg, jpeg, webp,
bmp) / a `.npy` array uint8 [N, H, W, 3]; writes nothing. Images come back as uint8 [N, size, size, 3],
with ground-truth label maps uint8 [N, 3, size, size] when the source has them (the village renderer).

`exclude` leaves out the images that hold a concept (e.g. `["watermark"]`: the watermark-free real
scenes). For the village it reads the renderer's ground truth; for a folder the caller segments the
images and filters them (no ground truth there).

    python -m ingest.real village 8       # render 8 real scenes and print their shape
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from db.errors import BadInput

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VILLAGE_REAL_SEED = 40_000_000  # real village scenes: seeds VILLAGE_REAL_SEED + seed * 1_000_000 + i


class RealImagesError(BadInput):
    """Bad real-image source (one line, bad input: exit 2)."""


# The smallest scene the village renderer is promised for: its layout needs room (sizes below 39 px fail
# inside numpy with "low >= high"). Checked here, not in ingest/village/render.py, whose text is hashed into
# the world hash that keys pools, checkpoints and village-truth runs.
VILLAGE_MIN_SIZE = 48


def village_images(n: int, seed: int = 0, *, size: int = 64, exclude: Sequence[str] = ()
                   ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """n rendered scenes (held out from training: seeds from VILLAGE_REAL_SEED on), leaving out scenes
    whose ground truth holds a concept of `exclude`. -> (images uint8 [n,H,W,3], labels uint8 [n,3,H,W],
    scene seeds)."""
    from ingest.village import CONCEPTS
    from ingest.village.render import render

    if size < VILLAGE_MIN_SIZE:
        raise RealImagesError(f"dataset = \"village\" renders scenes of at least {VILLAGE_MIN_SIZE} px, but this generator "
                              f"makes {size} px images: use a folder of images (dataset = \"path/\") instead")
    known = {c.name for c in CONCEPTS}
    bad = [c for c in exclude if c not in known]
    if bad:
        raise RealImagesError(f"real_exclude: unknown village concept(s) {bad}; known: {', '.join(sorted(known))}")
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty((n, 3, size, size), np.uint8)
    seeds: list[int] = []
    s = VILLAGE_REAL_SEED + seed * 1_000_000
    tries = 0
    while len(seeds) < n:
        tries += 1
        if tries > 20 * n + 100:
            raise RealImagesError(f"real_exclude {list(exclude)}: fewer than {n} scenes without them in {tries} renders")
        scene = render(s, size=size)
        s += 1
        if any(scene.labels[c].any() for c in exclude):
            continue
        images[len(seeds)] = scene.image
        labels[len(seeds)] = scene.label_maps
        seeds.append(s - 1)
    return images, labels, seeds


def folder_images(path: str | Path, n: int, seed: int = 0, *, size: int) -> np.ndarray:
    """n images of a folder (a seeded choice when it holds more), or of a .npy array, resized to
    size x size RGB. -> uint8 [n, size, size, 3]."""
    from PIL import Image

    p = Path(path).expanduser()
    if not p.exists():
        raise RealImagesError(f"real image source not found: {p} (a folder of images or a .npy uint8 [N,H,W,3])")
    if p.suffix == ".npy":
        arr = np.load(p, mmap_mode="r")
        if arr.ndim != 4 or arr.shape[3] != 3 or arr.dtype != np.uint8:
            raise RealImagesError(f"{p}: need uint8 [N, H, W, 3], got {arr.dtype} {list(arr.shape)}")
        items: list = list(range(arr.shape[0]))
    else:
        items = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if len(items) < n:
        raise RealImagesError(f"{p}: {len(items)} real images, {n} needed (lower real_samples or add images)")
    pick = np.random.default_rng(seed).permutation(len(items))[:n] if len(items) > n else np.arange(n)
    out = np.empty((n, size, size, 3), np.uint8)
    for i, j in enumerate(sorted(pick.tolist())):
        im = Image.fromarray(np.asarray(arr[j])) if p.suffix == ".npy" else Image.open(items[j])
        out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
    return out


def real_images(source: str, n: int, seed: int = 0, *, size: int, exclude: Sequence[str] = (),
                base: str | Path = ".") -> tuple[np.ndarray, np.ndarray | None]:
    """Real images of a source -> (uint8 [n, size, size, 3], ground-truth labels [n, 3, size, size] or None).

    `source`: "village" or a path (relative to `base`) of a folder / .npy. `exclude` is applied here for
    the village only (ground truth); folder callers filter by segmentation."""
    if n <= 0:
        raise RealImagesError(f"real_samples must be positive, got {n}")
    if source == "village":
        images, labels, _ = village_images(n, seed, size=size, exclude=exclude)
        return images, labels
    path = Path(source).expanduser()
    return folder_images(path if path.is_absolute() else Path(base) / path, n, seed, size=size), None


def to_input(images: np.ndarray) -> "torch.Tensor":  # noqa: F821
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1] (the generators' output range)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


if __name__ == "__main__":
    imgs, labs = real_images(sys.argv[1] if len(sys.argv) > 1 else "village",
                             int(sys.argv[2]) if len(sys.argv) > 2 else 8, size=64)
    print(imgs.shape, None if labs is None else labs.shape)
