"""Feature extractors for Fréchet distances: the segmenter's encoder, or Inception-v3 (FID) features.

Reads the job's segmenter, or Inception weights from a local file (never downloads); writes nothing.
An extractor maps images float [N, 3, H, W] in [-1, 1] to features float64 numpy [N, D]:

- `"segmenter"` (default): the segmenter's `features(images)` (village-seg: the pooled encoder
  bottleneck, D = 128). No download, works for the village world.
- `"inception"`: the standard FID features (pool3, D = 2048) of torch-fidelity's Inception-v3, from
  the weights file `inception_weights` (default `~/.cache/gandissect/weights-inception-2015-12-05-6726825d.pth`).
  Needs `pip install torch-fidelity` (and a torchvision that matches your torch — install it with
  `--no-deps` so pip does not replace torch).

A Fréchet distance needs well over D images per set: `check_count` refuses fewer than
`min_images(D) = 2 * D` (below that the D x D covariance is singular or dominated by estimation noise).

    python -c "from compute.core.features import min_images; print(min_images(128))"
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ingest.roles import Segmenter
from db.errors import BadInput

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
DEFAULT_INCEPTION_WEIGHTS = Path("~/.cache/gandissect") / INCEPTION_FILE
EXTRACTORS = ("segmenter", "inception")


class FeatureError(BadInput):
    """Bad input for a Fréchet distance: missing weights, too few images, NaN features (one line)."""


@dataclass
class Extractor:
    name: str
    dim: int
    fn: Callable[[torch.Tensor], torch.Tensor]  # images [N,3,H,W] in [-1,1] -> features [N, dim]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
        """images [N,3,H,W] in [-1,1] -> float64 [N, dim]; fails on NaN/inf features."""
        out = [self.fn(images[s:s + batch_size]) for s in range(0, images.shape[0], batch_size)]
        return finite(self.name, torch.cat(out) if out else torch.zeros(0, self.dim))


def finite(name: str, features: torch.Tensor) -> np.ndarray:
    """features [N, D] -> float64 numpy; fails (one line) when any image's features are NaN/inf."""
    f = features.detach().double().cpu().numpy()
    bad = ~np.isfinite(f).all(axis=1)
    if bad.any():
        raise FeatureError(f"{name} features are NaN/inf for {int(bad.sum())} of {len(f)} images "
                           f"(first: image {int(np.argmax(bad))}); check the generator's output")
    return f


def features_and_masks(feat: Extractor, seg: Segmenter, images: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Features float64 [N, D] and the segmenter's concept masks bool [N, K, H, W] of the same images;
    one segmenter pass when the features are the segmenter's own and it offers `features_and_masks`."""
    if feat.name == "segmenter" and hasattr(seg, "features_and_masks"):
        f, m = seg.features_and_masks(images)
        return finite(feat.name, f), m
    return feat(images), seg.concept_masks(images)


def min_images(dim: int) -> int:
    """The fewest images per set for a Fréchet distance in a dim-dimensional feature space."""
    return 2 * dim


def check_count(n: int, dim: int, what: str) -> None:
    if n < min_images(dim):
        raise FeatureError(f"{what}: {n} images are too few for a stable Frechet distance in {dim}-d features; "
                           f"the minimum is 2 x {dim} = {min_images(dim)} (a {dim}x{dim} covariance needs well over "
                           f"{dim} images): raise the sample count")


def segmenter_extractor(seg: Segmenter) -> Extractor:
    if not hasattr(seg, "features"):
        raise FeatureError(f"segmenter {type(seg).__name__} has no features(images) method; "
                           f"use features = \"inception\"")
    probe = seg.features(torch.zeros(1, 3, 64, 64, device=_device(seg)))
    return Extractor("segmenter", int(probe.shape[1]), lambda x: seg.features(x.to(_device(seg))))


def _device(m: Any) -> torch.device:
    try:
        return next(m.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _torch_fidelity_inception(weights: Path) -> torch.nn.Module:
    """torch-fidelity's FID Inception-v3 loaded from a local weights file (input uint8 [N,3,H,W])."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:
        raise FeatureError(f"features = \"inception\" needs torch-fidelity ({e}): pip install torch-fidelity "
                           f"(install a torchvision matching your torch with --no-deps)") from None
    return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))


# the network factory (a stand-in replaces it in tests, so no download ever happens there)
INCEPTION_FACTORY: Callable[[Path], torch.nn.Module] = _torch_fidelity_inception


def inception_extractor(weights: str | Path | None, device: torch.device) -> Extractor:
    path = Path(weights or DEFAULT_INCEPTION_WEIGHTS).expanduser()
    if not path.is_file():
        raise FeatureError(f"Inception weights not found at {path}: put {INCEPTION_FILE} (torch-fidelity's FID "
                           f"Inception-v3) there, or set inception_weights = \"/path/to/{INCEPTION_FILE}\" in the analysis")
    net = INCEPTION_FACTORY(path).to(device).eval()

    def fn(x: torch.Tensor) -> torch.Tensor:
        u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).to(device)  # torch-fidelity takes uint8 0..255
        out = net(u8)
        return (out[0] if isinstance(out, (tuple, list)) else out).reshape(u8.shape[0], -1)

    with torch.no_grad():
        dim = int(fn(torch.zeros(1, 3, 64, 64)).shape[1])
    return Extractor("inception", dim, fn)


def extractor(name: str, seg: Segmenter, device: torch.device, inception_weights: str | None = None) -> Extractor:
    """The named feature extractor ("segmenter" | "inception")."""
    if name == "segmenter":
        return segmenter_extractor(seg)
    if name == "inception":
        return inception_extractor(inception_weights, device)
    raise FeatureError(f"features = {name!r} is not an extractor; allowed: {', '.join(EXTRACTORS)}")
