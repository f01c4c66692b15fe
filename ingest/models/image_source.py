"""Classifier dissection without touching the dissection code: a classifier and an image source,
presented as a "generator".

Reads rendered village scenes or a folder of image files; writes nothing (it tells `village-truth`
the labels of every scene it renders). Every analysis of the project reads images from
`(model, seed, sample)`: z #sample of `ingest.samples.latents(seed, n, z_dim)` goes through the model.
`ClassifierDissection` keeps that contract for classifiers: its input is such a latent row, which it
turns into a *dataset image identity* — an index `h = image_index(z)`, a fixed hash of the latent's
float32 bits in [0, 2^31) — and its output is that image [N, 3, H, W] in [-1, 1]. On the way it runs
the classifier on the image, so a `Tap` on the classifier's layers (registered under the same dotted
names as in the classifier) sees the classifier's featuremaps. Dissection, top-k images, unit strips
in the dashboard and the probe of layer shapes work unchanged; `(model, seed, sample)` still names
one image forever.

Image sources (a classifier model entry's `images` option; default `"village"`):

- `"village"`: the rendered village scene with seed `VILLAGE_DISSECT_SEED + h` (disjoint from every
  training and held-out pool of the project);
- a folder of images (png, jpg, jpeg, webp, bmp; a relative path is read from the working directory): file number
  `h mod N` of its sorted files, resized to the classifier's resolution (a draw with replacement).

    gen = ClassifierDissection(load_classifier("village-cls"), VillageScenes())
    with Tap(gen, ["conv5"]) as tap:
        images = gen(latents(1, 8, gen.z_dim))      # rendered scenes; tap["conv5"]: [8, 64, 8, 8]
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ingest.real import to_input
from ingest.spec import ModelSpec, ZooError

Z_DIM = 2  # latent columns hashed into the image index
INDEX_SPAN = 2 ** 31
VILLAGE_DISSECT_SEED = 2 ** 32  # scene seed of image h: VILLAGE_DISSECT_SEED + h
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_index(z: Tensor) -> list[int]:
    """Dataset image index of each latent row: float32 [N, Z_DIM] -> N ints in [0, INDEX_SPAN)."""
    bits = z.detach().to("cpu", torch.float32).contiguous().view(torch.int32).to(torch.int64) & 0x7FFFFFFF
    out = []
    for row in bits.tolist():
        h = 0
        for v in row:
            h = (h * 1_000_003 + v) % INDEX_SPAN
        out.append(h)
    return out


def dataset_index(seed: int, sample: int) -> int:
    """The dataset image index of sample `sample` of seed `seed` (a `unit_topk` row's (seed, sample));
    for the village source the scene is `render(VILLAGE_DISSECT_SEED + dataset_index(seed, sample))`."""
    from ingest.samples import latents

    return image_index(latents(int(seed), 1, Z_DIM, start=int(sample)))[0]


class VillageScenes:
    """Rendered village scenes by index; tells `village-truth` their labels."""

    name = "village"

    def __init__(self, size: int = 64) -> None:
        self.resolution = int(size)

    def scene_seed(self, index: int) -> int:
        return VILLAGE_DISSECT_SEED + int(index)

    def images(self, indices: Sequence[int]) -> Tensor:
        """[N, 3, size, size] in [-1, 1]."""
        from ingest.models.village_truth import remember
        from ingest.village.render import render

        out = np.empty((len(indices), self.resolution, self.resolution, 3), np.uint8)
        for i, h in enumerate(indices):
            scene = render(self.scene_seed(h), size=self.resolution)
            remember(scene.image, scene.label_maps)
            out[i] = scene.image
        return to_input(out)


class ImageFolder:
    """Image files of a folder (sorted by path) by index modulo their number, resized to `size`."""

    def __init__(self, path: str | Path, size: int) -> None:
        self.path = Path(path).expanduser()
        self.name = str(self.path)
        self.resolution = int(size)
        if not self.path.is_dir():
            raise ZooError(f"image folder not found: {self.path}")
        self.files = sorted(f for f in self.path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ZooError(f"{self.path}: no images ({', '.join(IMAGE_SUFFIXES)})")

    def file(self, index: int) -> Path:
        return self.files[int(index) % len(self.files)]

    def images(self, indices: Sequence[int]) -> Tensor:
        from PIL import Image

        out = np.empty((len(indices), self.resolution, self.resolution, 3), np.uint8)
        for i, h in enumerate(indices):
            with Image.open(self.file(h)) as im:
                out[i] = np.asarray(im.convert("RGB").resize((self.resolution,) * 2, Image.Resampling.BICUBIC))
        return to_input(out)


class ClassifierDissection(nn.Module):
    """latents [N, Z_DIM] -> dataset images [N, 3, H, W] in [-1, 1], the classifier run on them.

    Has what dissection reads from a generator (`z_dim`, `resolution`, `layers`) plus `classifier`,
    `classes` and `source`. The classifier's child modules are registered here under their own names,
    so its layer paths are this module's layer paths; the classifier object itself is not a child.
    """

    z_dim = Z_DIM

    def __init__(self, classifier: nn.Module, source: VillageScenes | ImageFolder) -> None:
        super().__init__()
        for name, child in classifier.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "classifier", classifier.eval())
        self.source = source
        self.layers = list(classifier.layers)
        self.classes = tuple(classifier.classes)
        self.resolution = int(source.resolution)
        self.last_logits: Tensor | None = None

    def images(self, z: Tensor) -> Tensor:
        """The dataset images of latents z [N, Z_DIM]: [N, 3, H, W] in [-1, 1] on z's device."""
        return self.source.images(image_index(z)).to(z.device)

    def forward(self, z: Tensor) -> Tensor:
        images = self.images(z)
        self.last_logits = self.classifier(images)
        return images


def classifier_model(m: ModelSpec, net: nn.Module, device: torch.device) -> ClassifierDissection:
    """The `ClassifierDissection` of a spec model entry with `role = "classifier"` and its loaded
    classifier `net` (`ingest.zoo.load_classifier_entry`); the entry's `images` option is the source."""
    source_opt = m.option("images", "village")
    if source_opt == "village":
        source: VillageScenes | ImageFolder = VillageScenes()  # the world's 64 px (the classifier resizes)
    else:
        source = ImageFolder(str(source_opt), int(net.resolution))
    return ClassifierDissection(net, source).to(device).eval()
