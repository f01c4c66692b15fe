"""Image classifiers: the `Classifier` interface and the bundled village scene classifier `village-cls`.

Reads a safetensors checkpoint (`load_village_cls`); writes one (`save_village_cls`). A classifier is a
`torch.nn.Module` with

- `classes`: tuple of class names (logit k is `classes[k]`);
- `layers`: its dissectable layer names (dotted paths usable with `named_modules()`, the `layer` column);
- `resolution`: the image side it was trained at (other sizes are resized bilinearly inside `forward`);
- `forward(images [N, 3, H, W] in [-1, 1]) -> logits [N, len(classes)]`.

`VillageClassifier` is a small VGG-like CNN: blocks `conv1` .. `conv5` (3x3 conv, BatchNorm, ReLU; a
block's output is what dissection reads), 2x2 max pools after conv1, conv2 and conv4, then a global
average pool and one linear layer `fc`. With a global average before a linear layer, the logit of
class k is a weighted sum of conv5's per-unit mean activations — which is why ablating a few units can
change one class and leave the others (the PNAS paper's sparsity).

    python -c "from ingest.zoo import load_classifier; c = load_classifier('village-cls'); print(c.classes, c.layers)"
"""
from __future__ import annotations

import json
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FORMAT = "gandissect-village-cls-1"
DEFAULT_WIDTHS: tuple[int, ...] = (16, 32, 64, 64, 64)
POOL_AFTER = ("conv1", "conv2", "conv4")


@runtime_checkable
class Classifier(Protocol):
    classes: tuple[str, ...]
    layers: list[str]
    resolution: int

    def __call__(self, images: Tensor) -> Tensor: ...


class ConvBlock(nn.Sequential):
    """3x3 conv (padding 1) -> BatchNorm -> ReLU: [N, c_in, H, W] -> [N, c_out, H, W]."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class VillageClassifier(nn.Module):
    """VGG-like scene classifier: images [N, 3, H, W] in [-1, 1] -> logits [N, classes]."""

    def __init__(self, classes: Sequence[str], widths: Sequence[int] = DEFAULT_WIDTHS, resolution: int = 64) -> None:
        super().__init__()
        self.classes = tuple(classes)
        self.widths = tuple(int(w) for w in widths)
        self.resolution = int(resolution)
        c_in = 3
        for i, w in enumerate(self.widths, start=1):
            self.add_module(f"conv{i}", ConvBlock(c_in, w))
            if f"conv{i}" in POOL_AFTER:
                self.add_module(f"pool{i}", nn.MaxPool2d(2))
            c_in = w
        self.fc = nn.Linear(c_in, len(self.classes))
        self.layers = [f"conv{i}" for i in range(1, len(self.widths) + 1)]

    def features(self, images: Tensor) -> Tensor:
        """The last conv block's featuremap: [N, 3, H, W] -> [N, C, h, w]."""
        x = images
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.resolution)
        for name, module in self.named_children():
            if name == "fc":
                break
            x = module(x)
        return x

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(self.features(images).mean(dim=(2, 3)))

    def forward_from(self, layer: str, x: Tensor) -> Tensor:
        """Logits [N, classes] from the output x [N, C, h, w] of block `layer` (the rest of the network)."""
        names = [n for n, _ in self.named_children()]
        if layer not in names or layer == "fc":
            raise ValueError(f"forward_from: unknown layer {layer!r}; layers: {', '.join(self.layers)}")
        for name, module in list(self.named_children())[names.index(layer) + 1:]:
            if name == "fc":
                break
            x = module(x)
        return self.fc(x.mean(dim=(2, 3)))


def save_village_cls(net: VillageClassifier, path: str, extra: dict[str, str] | None = None) -> None:
    """Weights as float32 safetensors with the architecture in the metadata."""
    from ingest.models.safetensors_io import save_safetensors

    meta = {"format": FORMAT, "classes": json.dumps(list(net.classes)), "widths": json.dumps(list(net.widths)),
            "resolution": str(net.resolution), **(extra or {})}
    state = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    save_safetensors(state, path, meta)


def read_meta(path: str) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


def load_village_cls(path: str, device: torch.device | str = "cpu") -> VillageClassifier:
    """A `VillageClassifier` from `save_village_cls`'s file, in eval mode."""
    from safetensors.torch import load_file

    meta = read_meta(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a village-cls checkpoint (format {meta.get('format')!r}, want {FORMAT!r})")
    net = VillageClassifier(json.loads(meta["classes"]), json.loads(meta["widths"]), int(meta["resolution"]))
    missing, unexpected = net.load_state_dict(load_file(path), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net.to(device).eval()
