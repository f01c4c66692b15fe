"""The village segmenter `village-seg`: a small UNet-like convolutional net with three heads.

Reads a float16 safetensors checkpoint (`load_village_seg`); writes nothing (training lives in
`compute/train/seg.py`). Implements DESIGN.md's segmenter interface:

- `concepts` (= `ingest.village.CONCEPTS`; entry k has `.name`, `.category`), `resolution` (64);
- `segment(images [N,3,H,W] in [-1,1]) -> LongTensor [N,3,H,W]`: label channels object / part /
  material, value = concept index, 0 = none; materials only on walls; parts only on buildings, unless
  the checkpoint was trained with parts pasted anywhere (`parts_anywhere`, the bundled
  `village-seg-parts`): then its part head's labels are kept wherever it sees a part (a door in the sky);
- `probs(images) -> Tensor [N,K,H,W]`: differentiable per-concept probabilities (concept k's
  probability is the softmax of its category's head; channel 0 is the object head's none);
- `features(images) -> Tensor [N,D]`: global average of the bottleneck (for Fréchet distances);
- `concept_masks(images) -> BoolTensor [N,K,H,W]`: one mask per concept, from `segment`.

`quad_expand(masks, names)` adds the paper's concept-t/-b/-l/-r halves of each connected component.

    python -c "from ingest.models.village_seg import load_village_seg; \
print(load_village_seg('ingest/zoo/village-seg.safetensors', 'cpu'))"
"""
from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from ingest.village.concepts import CATEGORIES, CONCEPTS, INDEX, Concept, names_in

# head h's class j -> global concept index (class 0 of every head is "none")
HEAD_CONCEPTS: tuple[tuple[int, ...], ...] = tuple(
    (0,) + tuple(INDEX[n] for n in names_in(cat)) for cat in CATEGORIES)
HEAD_SIZES: tuple[int, ...] = tuple(len(h) for h in HEAD_CONCEPTS)
assert all(list(h[1:]) == list(range(h[1], h[1] + len(h) - 1)) for h in HEAD_CONCEPTS), "heads need consecutive concepts"
DEFAULT_WIDTHS: tuple[int, ...] = (16, 32, 64, 128)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class VillageSegNet(nn.Module):
    """Encoder 64->32->16->8 (one conv at full resolution, then a stride-2 conv and a conv per
    level), FPN-like decoder (1x1 lateral, nearest upsampling, additive skips, one conv per level),
    then a 1x1 conv for the three heads.

    forward(x [N,3,64,64]) -> (logits [N, sum(HEAD_SIZES), 64, 64], bottleneck [N, widths[-1], 8, 8])."""

    def __init__(self, widths: Sequence[int] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        w = list(widths)
        self.widths = tuple(w)
        self.enc = nn.ModuleList([nn.Sequential(_conv(3, w[0]))])
        for i in range(1, len(w)):
            self.enc.append(nn.Sequential(_conv(w[i - 1], w[i], 2), _conv(w[i], w[i])))
        self.lat = nn.ModuleList([nn.Conv2d(w[i + 1], w[i], 1) for i in range(len(w) - 1)])
        self.dec = nn.ModuleList([_conv(w[i], w[i]) for i in range(len(w) - 1)])
        self.head = nn.Conv2d(w[0], sum(HEAD_SIZES), 1)

    def encode(self, x: Tensor) -> Tensor:
        """x [N,3,64,64] -> bottleneck [N, widths[-1], 8, 8] (the encoder only)."""
        for enc in self.enc:
            x = enc(x)
        return x

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        skips = []
        for enc in self.enc:
            x = enc(x)
            skips.append(x)
        bottleneck = x
        for i in range(len(self.lat) - 1, -1, -1):
            x = F.interpolate(self.lat[i](x), scale_factor=2.0, mode="nearest") + skips[i]
            x = self.dec[i](x)
        return self.head(x), bottleneck


class VillageSegmenter(nn.Module):
    """The segmenter interface around `VillageSegNet` (see the module docstring)."""

    concepts: tuple[Concept, ...] = CONCEPTS
    resolution: int = 64

    def __init__(self, widths: Sequence[int] = DEFAULT_WIDTHS, parts_anywhere: bool = False) -> None:
        super().__init__()
        self.net = VillageSegNet(widths)
        self.parts_anywhere = bool(parts_anywhere)  # False: part labels kept only on building pixels
        order = list(HEAD_CONCEPTS[0]) + [k for h in HEAD_CONCEPTS[1:] for k in h[1:]]
        self.register_buffer("_probs_order", torch.tensor(np.argsort(order)), persistent=False)

    # -- core
    def logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [N,3,H,W] in [-1,1] -> (logits [N,sum(HEAD_SIZES),H,W], bottleneck [N,D,h,w])."""
        n, _, h, w = images.shape
        x = images
        if (h, w) != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False, antialias=True)
        logits, bottleneck = self.net(x)
        if (h, w) != (self.resolution, self.resolution):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return logits, bottleneck

    def forward(self, images: Tensor) -> Tensor:
        """images [N,3,H,W] -> per-head logits [N, sum(HEAD_SIZES), H, W]."""
        return self.logits(images)[0]

    # -- interface
    def probs(self, images: Tensor) -> Tensor:
        """Differentiable per-concept probabilities [N,K,H,W] (K = len(concepts))."""
        heads = self._split(self.forward(images))
        pieces = [heads[0].softmax(1)] + [p.softmax(1)[:, 1:] for p in heads[1:]]
        return torch.cat(pieces, 1)[:, self._probs_order]

    @torch.no_grad()
    def segment(self, images: Tensor) -> Tensor:
        """Label channels LongTensor [N,3,H,W]: object, part, material; value = concept index."""
        return labels_from_logits(self.forward(images), self.parts_anywhere)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Pooled encoder features [N, D] (global average of the bottleneck, D = widths[-1])."""
        x = images
        if x.shape[2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return self.net.encode(x).mean((2, 3))

    @torch.no_grad()
    def features_and_masks(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """`features(images)` [N, D] and `concept_masks(images)` [N, K, H, W] from one forward pass."""
        logits, bottleneck = self.logits(images)
        return bottleneck.mean((2, 3)), masks_from_labels(labels_from_logits(logits, self.parts_anywhere),
                                                           len(self.concepts))

    @torch.no_grad()
    def concept_masks(self, images: Tensor) -> Tensor:
        """BoolTensor [N,K,H,W]: mask k = pixels labelled concept k (k = 0: object none)."""
        return masks_from_labels(self.segment(images), len(self.concepts))

    def _split(self, logits: Tensor) -> tuple[Tensor, ...]:
        return torch.split(logits, list(HEAD_SIZES), dim=1)


def labels_from_logits(logits: Tensor, parts_anywhere: bool = False) -> Tensor:
    """Per-head logits [N,sum(HEAD_SIZES),H,W] -> labels LongTensor [N,3,H,W] (concept indices),
    with materials kept only on wall pixels and parts only on building pixels (everywhere the part
    head sees one when `parts_anywhere`)."""
    out = []
    for h, p in enumerate(torch.split(logits, list(HEAD_SIZES), dim=1)):
        cls = p.argmax(1)  # head class; classes 1.. of a head are consecutive concept indices
        offset = HEAD_CONCEPTS[h][1] - 1
        out.append(cls if offset == 0 else torch.where(cls > 0, cls + offset, cls))
    obj, part, mat = out
    if not parts_anywhere:
        part = torch.where(obj == INDEX["building"], part, torch.zeros_like(part))
    mat = torch.where(part == INDEX["wall"], mat, torch.zeros_like(mat))
    return torch.stack([obj, part, mat], 1)


def masks_from_labels(labels: Tensor, k: int) -> Tensor:
    """labels LongTensor [N,3,H,W] -> BoolTensor [N,K,H,W]; mask 0 is the object channel's none."""
    masks = torch.zeros(labels.shape[0], k, *labels.shape[2:], dtype=torch.bool, device=labels.device)
    for c in range(labels.shape[1]):
        onehot = torch.zeros_like(masks).scatter_(1, labels[:, c:c + 1], True)
        if c > 0:
            onehot[:, 0] = False
        masks |= onehot
    return masks


def quad_expand(masks: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """The paper's quadrant concepts: for every connected component (8-connected, as the reference's
    skimage.morphology.label) of every mask, its pixels in the top / bottom / left / right half of the component's bounding box.
    The halves cover the component: an odd-sized box's middle row goes to the bottom half and its middle
    column to the right half, as in the reference.

    masks bool [N,K,H,W], names K -> (bool [N,4K,H,W], names "c-t", "c-b", "c-l", "c-r" per concept)."""
    masks = np.asarray(masks, bool)
    n, k, h, w = masks.shape
    out = np.zeros((n, 4 * k, h, w), bool)
    for i in range(n):
        for j in range(k):
            comps, count = ndimage.label(masks[i, j], structure=np.ones((3, 3), dtype=int))
            if count == 0:
                continue
            for lab, sl in enumerate(ndimage.find_objects(comps), start=1):
                ys, xs = sl
                comp = comps[sl] == lab
                hh, ww = comp.shape
                ymid, xmid = hh / 2.0, ww / 2.0
                r = np.arange(hh)[:, None] + 0.5
                c = np.arange(ww)[None, :] + 0.5
                for q, region in enumerate((r < ymid, r >= ymid, c < xmid, c >= xmid)):
                    out[i, 4 * j + q][sl] |= comp & np.broadcast_to(region, comp.shape)
    qnames = [f"{nm}-{s}" for nm in names for s in ("t", "b", "l", "r")]
    return out, qnames


def save_village_seg(model: VillageSegmenter, path: str, meta: dict | None = None) -> None:
    """Write the weights as float16 safetensors, with the architecture in the metadata."""
    from ingest.models.safetensors_io import save_safetensors

    state = {k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    info = {"widths": json.dumps(list(model.net.widths)), "concepts": json.dumps([c.name for c in CONCEPTS]),
            "parts_anywhere": "1" if model.parts_anywhere else "0"}
    info.update({k: str(v) for k, v in (meta or {}).items()})
    save_safetensors(state, path, info)


def load_village_seg(path: str, device: torch.device | str = "cpu") -> VillageSegmenter:
    """Load `village-seg` (or `village-seg-parts`) from float16 safetensors; returns the float32 model in
    eval mode. The metadata's `parts_anywhere` ("1"; absent = "0") says whether part labels are kept off
    buildings."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    names = json.loads(meta.get("concepts", "null") or "null")
    if names is not None and names != [c.name for c in CONCEPTS]:
        raise ValueError(f"{path}: trained for concepts {names}, this code has {[c.name for c in CONCEPTS]}")
    model = VillageSegmenter(json.loads(meta.get("widths", json.dumps(list(DEFAULT_WIDTHS)))),
                             parts_anywhere=meta.get("parts_anywhere", "0") == "1")
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(path).items()}
    model.load_state_dict(state)
    fuse_batchnorm(model)
    return model.to(device).to(memory_format=torch.channels_last).eval()


@torch.no_grad()
def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that follows a Conv2d (in `_conv` blocks) into the conv, for inference."""
    for mod in model.modules():
        if isinstance(mod, nn.Sequential) and len(mod) == 3 and isinstance(mod[0], nn.Conv2d) \
                and isinstance(mod[1], nn.BatchNorm2d):
            conv, bn = mod[0], mod[1]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              bias=True).to(conv.weight.device)
            fused.weight.copy_(conv.weight * scale[:, None, None, None])
            base = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            fused.bias.copy_(bn.bias + (base - bn.running_mean) * scale)
            mod[0], mod[1] = fused, nn.Identity()
    return model
