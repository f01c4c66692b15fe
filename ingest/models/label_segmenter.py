"""The segmenter interface over any network that maps images to per-label logits.

Reads nothing from disk, writes nothing: `LabelSegmenter` wraps a callable `images -> logits [N, L, h, w]`
(a user's module, a Hugging Face model) and exposes what dissection needs (see DESIGN.md):

- `concepts`: index 0 is "none", then one concept per output label (a label named as the
  `background` is folded into "none"); `resolution`: the side at which masks are compared;
- `segment(images [N,3,H,W] in [-1,1]) -> LongTensor [N,1,H,W]`: one label channel, value = concept index;
- `probs(images) -> [N,K,H,W]`: differentiable per-concept probabilities (softmax over labels);
- `concept_masks(images) -> BoolTensor [N,K,H,W]`; `features(images) -> [N,D]`.

Images are mapped from [-1, 1] to the network's input range (`input_range` "unit" [0,1], "signed"
[-1,1] or "byte" [0,255]), normalised with `mean`/`std` (given in that range's units after the
mapping to [0,1] for "unit"), resized to `input_size` (bilinear, antialiased when shrinking), and
the logits are resized back to the images' own size (bilinear): any generator resolution works in
both directions.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ingest.village.concepts import Concept
from ingest.spec import ZooError

INPUT_RANGES = ("unit", "signed", "byte")
NONE = Concept("none", "none")


def unique_names(names: Sequence[str]) -> list[str]:
    """Label names made unique (a repeated name gets its channel index appended)."""
    seen: dict[str, int] = {}
    out = []
    for i, n in enumerate(names):
        n = str(n).strip() or f"label{i}"
        out.append(n if n not in seen else f"{n}-{i}")
        seen[n] = i
    return out


def read_labels(source: Any, where: str) -> list[tuple[str, str | None]]:
    """Label list from a spec value or a JSON file's content: names, [name, category] pairs,
    {"name", "category"} objects, or an id -> name mapping ({"0": "wall", ...}, or {"id2label": {...}})."""
    if isinstance(source, Mapping):
        if "id2label" in source:
            source = source["id2label"]
        try:
            items = sorted(((int(k), v) for k, v in source.items()), key=lambda kv: kv[0])
        except (TypeError, ValueError):
            raise ZooError(f"{where}: labels mapping must have integer keys (id -> name)") from None
        if [k for k, _ in items] != list(range(len(items))):
            raise ZooError(f"{where}: label ids must be 0..{len(items) - 1} without gaps")
        source = [v for _, v in items]
    if not isinstance(source, (list, tuple)) or not source:
        raise ZooError(f"{where}: labels must be a non-empty list of names (or a JSON file with one)")
    out: list[tuple[str, str | None]] = []
    for item in source:
        if isinstance(item, str):
            out.append((item, None))
        elif isinstance(item, Mapping) and "name" in item:
            out.append((str(item["name"]), item.get("category")))
        elif isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(v, str) for v in item):
            out.append((item[0], item[1]))
        else:
            raise ZooError(f"{where}: cannot read label {item!r} (a name, [name, category] or {{name, category}})")
    return out


def read_labels_file(path: str, base: Path | None, where: str) -> list[tuple[str, str | None]]:
    """Labels from a JSON file; a relative path is read from the working directory, then beside `base`."""
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists() and base is not None:
        p = base / p
    if not p.is_file():
        raise ZooError(f"{where}: labels file not found: {path}")
    try:
        return read_labels(json.loads(p.read_text()), f"{where}: {p}")
    except json.JSONDecodeError as e:
        raise ZooError(f"{where}: labels file {p} is not valid JSON: {e}") from None


class LabelSegmenter(nn.Module):
    """Segmenter interface around `net` (called through `call(net, x) -> logits [N, L, h, w]`)."""

    def __init__(self, net: nn.Module, call: Callable[[nn.Module, Tensor], Tensor],
                 labels: Sequence[tuple[str, str | None]], *, resolution: int, input_size: tuple[int, int] | None,
                 input_range: str = "unit", mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 background: str | None = None, default_category: str = "object",
                 categories: Mapping[str, str] | None = None,
                 features: Callable[[nn.Module, Tensor], Tensor] | None = None) -> None:
        super().__init__()
        if input_range not in INPUT_RANGES:
            raise ZooError(f"input_range must be one of {', '.join(INPUT_RANGES)}, got {input_range!r}")
        self.net = net
        self._call, self._features = call, features
        names = unique_names([n for n, _ in labels])
        cats = {n: (c or (categories or {}).get(n) or default_category) for n, (_, c) in zip(names, labels)}
        if background is not None and background not in names:
            raise ZooError(f"background label {background!r} is not one of the labels: {', '.join(names[:20])}")
        self.label_names = names
        self.background = background
        kept = [n for n in names if n != background]
        self.concepts: tuple[Concept, ...] = (NONE,) + tuple(Concept(n, cats[n]) for n in kept)
        index = {n: k + 1 for k, n in enumerate(kept)}
        # output channel -> concept index (the background channel -> 0)
        self.register_buffer("channel_concept", torch.tensor([index.get(n, 0) for n in names]), persistent=False)
        order = ([names.index(background)] if background else []) + [names.index(n) for n in kept]
        self.register_buffer("concept_order", torch.tensor(order), persistent=False)
        self.resolution = int(resolution)
        self.input_size = tuple(input_size) if input_size else None
        self.input_range = input_range
        m = torch.tensor(mean if mean is not None else [0.0, 0.0, 0.0], dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std if std is not None else [1.0, 1.0, 1.0], dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", m, persistent=False)
        self.register_buffer("std", s, persistent=False)

    # -- core
    def prepare(self, images: Tensor) -> Tensor:
        """images [N,3,H,W] in [-1,1] -> the network's input [N,3,h,w] (range, normalisation, size)."""
        x = images
        if self.input_range == "unit":
            x = (x + 1.0) * 0.5
        elif self.input_range == "byte":
            x = (x + 1.0) * 127.5
        x = (x - self.mean) / self.std
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            shrink = self.input_size[0] < x.shape[-2] or self.input_size[1] < x.shape[-1]
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=shrink)
        return x

    def forward(self, images: Tensor) -> Tensor:
        """images [N,3,H,W] in [-1,1] -> label logits [N,L,H,W] at the images' own size."""
        logits = self._call(self.net, self.prepare(images))
        if logits.dim() != 4 or logits.shape[1] != len(self.label_names):
            raise ZooError(f"segmenter outputs logits of shape {tuple(logits.shape)}, expected "
                           f"[N, {len(self.label_names)}, h, w] (one channel per label)")
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    # -- interface
    def probs(self, images: Tensor) -> Tensor:
        """Differentiable per-concept probabilities [N,K,H,W] (softmax over labels; channel 0 = background)."""
        p = self.forward(images).softmax(1)
        out = p.index_select(1, self.concept_order)
        if self.background is None:
            out = torch.cat([torch.zeros_like(out[:, :1]), out], 1)
        return out

    @torch.no_grad()
    def segment(self, images: Tensor) -> Tensor:
        """One label channel LongTensor [N,1,H,W]: the argmax label's concept index (0 = none)."""
        return self.channel_concept[self.forward(images).argmax(1)].unsqueeze(1)

    @torch.no_grad()
    def concept_masks(self, images: Tensor) -> Tensor:
        """BoolTensor [N,K,H,W]: mask k = pixels labelled concept k."""
        labels = self.segment(images)
        masks = torch.zeros(labels.shape[0], len(self.concepts), *labels.shape[2:], dtype=torch.bool,
                            device=labels.device)
        return masks.scatter_(1, labels, True)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Pooled features [N, D]: the network's own (when given) or the spatially averaged logits."""
        if self._features is not None:
            return self._features(self.net, self.prepare(images))
        return self.forward(images).mean((2, 3))
