"""Segmenter family `village-truth`: the village world's exact labels, as a segmenter of rendered scenes.

Reads nothing from disk (its spec `checkpoint` is the renderer's source, `ingest/village/render.py`,
so a changed world changes its hash and every run key); writes nothing. The truth cannot be computed
from pixels, so it is *looked up*: whoever renders a scene for analysis (the classifiers' village
image source, `ingest.models.image_source.VillageScenes`) calls `remember(image, label_maps)`, and
`segment(images)` finds each image by the sha1 of its uint8 pixels (a bounded in-process memory of
the last `CAPACITY` scenes). An image it never saw is an error, never a guess.

Interface (DESIGN.md, as `village-seg`): `concepts` (the world's `CONCEPTS`, index 0 "none"),
`resolution` 64, `segment(images [N,3,64,64] in [-1,1]) -> LongTensor [N,3,64,64]` (object, part,
material channels), `concept_masks(images) -> BoolTensor [N,K,64,64]`, `probs(images)` (one-hot).

    [[segmenters]]
    name = "village-truth"
    family = "village-truth"
    checkpoint = "ingest/village/render.py"
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor, nn

from ingest.models.village_seg import masks_from_labels
from ingest.village.concepts import CONCEPTS, Concept
from ingest.spec import ZooError

CAPACITY = 8192  # scenes remembered (12 KiB of labels each at 64 x 64: ~100 MB at most)
_MEMORY: "OrderedDict[str, np.ndarray]" = OrderedDict()
_LOCK = threading.Lock()


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image, np.uint8).tobytes()).hexdigest()


def remember(image: np.ndarray, label_maps: np.ndarray) -> None:
    """Record the exact labels (uint8 [3, H, W]) of a rendered image (uint8 [H, W, 3])."""
    with _LOCK:
        k = _key(image)
        _MEMORY[k] = np.asarray(label_maps, np.uint8)
        _MEMORY.move_to_end(k)
        while len(_MEMORY) > CAPACITY:
            _MEMORY.popitem(last=False)


def to_uint8(images: Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] (the exact inverse of u / 127.5 - 1)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


class VillageTruth(nn.Module):
    """The exact labels of remembered rendered scenes, behind the segmenter interface."""

    concepts: tuple[Concept, ...] = CONCEPTS
    resolution: int = 64

    @torch.no_grad()
    def segment(self, images: Tensor) -> Tensor:
        """LongTensor [N, 3, H, W]: object, part, material label channels (concept indices)."""
        out = []
        for im in to_uint8(images):
            with _LOCK:
                maps = _MEMORY.get(_key(im))
            if maps is None:
                raise ZooError("village-truth: an image that was not rendered by a village image source in "
                               "this process (it labels rendered scenes only; use village-seg for others)")
            out.append(torch.from_numpy(maps.astype(np.int64)))
        if not out:
            return torch.zeros(0, 3, *images.shape[2:], dtype=torch.long, device=images.device)
        return torch.stack(out).to(images.device)

    @torch.no_grad()
    def concept_masks(self, images: Tensor) -> Tensor:
        """BoolTensor [N, K, H, W]: mask k = pixels labelled concept k (k = 0: object none)."""
        return masks_from_labels(self.segment(images), len(self.concepts))

    def probs(self, images: Tensor) -> Tensor:
        """One-hot per-concept 'probabilities' [N, K, H, W] (the truth is certain; not differentiable)."""
        return self.concept_masks(images).float()

    def forward(self, images: Tensor) -> Tensor:
        return self.probs(images)


def load_village_truth(device: torch.device | str = "cpu") -> VillageTruth:
    return VillageTruth().to(device).eval()
