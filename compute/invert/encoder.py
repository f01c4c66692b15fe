"""The layer-wise encoder: one small inverse network per layer of a ProGAN-family generator.

Reads nothing, writes nothing (training: `compute/invert/train.py`; weights load with `load_encoder`).

For a generator whose children are `layer1 ... layerL` then `output` (ingest.models.progan), the
encoder holds one inverse per child, composed top-down (the ganseeing "layer-wise" encoder, Bau et al.
ICCV 2019, trained bottom-up on generated samples where every layer's input is known):

    inv_output  image [N, 3, R, R]           -> layerL's output  [N, w_L, R, R]
    inv_layerK  layerK's output [N, w_K, H, W] -> layer(K-1)'s output [N, w_{K-1}, H', W']
                (H' = H / 2 when layerK upsamples, a stride-2 convolution undoes it)
    inv_layer1  layer1's output [N, w_1, 4, 4] -> z [N, z_dim]

`encode(x, to="layer4")` stops at a layer's featuremap; `encode(x)` goes to z. Every ProGAN layer
starts with a pixel norm, so G(z) = G(c z) for c > 0: z is identifiable only up to its length, and the
encoder predicts the *normalised* z (length sqrt(z_dim), `normalise_z`).

    from compute.invert.encoder import LayerwiseEncoder
    enc = LayerwiseEncoder.for_generator(g)      # g: ingest.models.progan.Generator
    z = enc(images)                               # images [N, 3, 64, 64] in [-1, 1] -> [N, z_dim]
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ingest.models.safetensors_io import save_safetensors

FORMAT = "gandissect-layerwise-encoder"


def normalise_z(z: torch.Tensor) -> torch.Tensor:
    """z [N, D] -> z scaled to length sqrt(D) (what the generator's first pixel norm sees)."""
    if z.dim() != 2:
        raise ValueError(f"normalise_z expects z of shape [N, D], got {tuple(z.shape)}")
    return z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)


def generator_shapes(gen: nn.Module, device: torch.device | str = "cpu") -> "OrderedDict[str, tuple[int, ...]]":
    """Output shape (C, H, W) of every child of the generator (z first, as (z_dim,)), from one forward pass."""
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict(z=(int(gen.z_dim),))
    x = torch.zeros(1, int(gen.z_dim), 1, 1, device=device)
    with torch.no_grad():
        for name, child in gen.named_children():
            x = child(x)
            shapes[name] = tuple(int(s) for s in x.shape[1:])
    return shapes


class InverseBlock(nn.Module):
    """featuremap [N, cin, H, W] -> [N, cout, H / stride, W / stride]: (strided) 3x3 conv, LeakyReLU,
    3x3 conv. The last conv is linear: the targets are post-activation featuremaps. Two convolutions
    keep training to minutes on one CPU thread."""

    def __init__(self, cin: int, cout: int, hidden: int, stride: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(cin, hidden, 3, stride, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(hidden, cout, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class InverseDense(nn.Module):
    """layer1's output [N, C, 4, 4] -> normalised z [N, z_dim]."""

    def __init__(self, cin: int, size: int, z_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(cin * size * size, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, z_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalise_z(self.net(x))


class LayerwiseEncoder(nn.Module):
    """Inverses of a generator's children, composed from the image down to z (see the module docstring)."""

    def __init__(self, shapes: "OrderedDict[str, tuple[int, ...]]", hidden: int = 64) -> None:
        super().__init__()
        self.shapes = OrderedDict((k, tuple(v)) for k, v in shapes.items())
        self.hidden = int(hidden)
        names = list(self.shapes)  # z, layer1, ..., layerL, output
        self.names = names
        self.inverses = nn.ModuleDict()
        for below, name in zip(names[:-1], names[1:]):
            cin, h = self.shapes[name][0], self.shapes[name][1]
            if below == "z":
                self.inverses[name] = InverseDense(cin, h, self.shapes["z"][0], max(hidden, 4 * self.shapes["z"][0]))
            else:
                cout, hb = self.shapes[below][0], self.shapes[below][1]
                stride = h // hb
                if stride not in (1, 2) or hb * stride != h:
                    raise ValueError(f"LayerwiseEncoder: {name} maps {hb}x{hb} to {h}x{h}; only 1x or 2x steps")
                self.inverses[name] = InverseBlock(cin, cout, max(hidden, cout), stride)

    @classmethod
    def for_generator(cls, gen: nn.Module, hidden: int = 64) -> "LayerwiseEncoder":
        return cls(generator_shapes(gen, next(gen.parameters()).device), hidden)

    def below(self, name: str) -> str:
        """The child whose output `name`'s inverse predicts ('z' under layer1)."""
        return self.names[self.names.index(name) - 1]

    def encode(self, images: torch.Tensor, to: str = "z") -> torch.Tensor:
        """images [N, 3, R, R] -> the featuremap of child `to` ([N, C, H, W]) or z ([N, z_dim])."""
        if to not in self.names[:-1]:
            raise ValueError(f"encode: unknown target {to!r} (one of {', '.join(self.names[:-1])})")
        x = images
        for name in reversed(self.names[self.names.index(to) + 1:]):
            x = self.inverses[name](x)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # [N, 3, R, R] -> [N, z_dim]
        return self.encode(images, "z")


QUANTISE_ABOVE = 65_536  # tensors with more elements are stored as int8 rows with a float16 scale each
SCALE_SUFFIX = ".__scale"


def _quantise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [R, ...] -> int8 [R, ...] and float16 per-row scales [R] (symmetric, max-abs / 127)."""
    flat = w.reshape(w.shape[0], -1).float()
    scale = (flat.abs().amax(1) / 127).clamp_min(1e-12)
    q = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(w.shape), scale.to(torch.float16)


def save_encoder(enc: LayerwiseEncoder, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write safetensors (float16; tensors over QUANTISE_ABOVE elements as int8 rows + float16 scales,
    which keeps the bundled village-gan encoder under 2 MB) with the shapes and hidden width in the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for k, v in enc.state_dict().items():
        v = v.detach().to("cpu")
        if v.numel() > QUANTISE_ABOVE and v.dim() >= 2:
            tensors[k], tensors[k + SCALE_SUFFIX] = _quantise(v)
        else:
            tensors[k] = v.to(torch.float16).contiguous()
    m = {"format": FORMAT, "shapes": json.dumps([[k, list(v)] for k, v in enc.shapes.items()]),
         "hidden": str(enc.hidden)}
    m.update({k: str(v) for k, v in (meta or {}).items()})
    return save_safetensors(tensors, path, m)  # canonical bytes: the same encoder, the same sha256


def read_encoder_meta(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_encoder(path: str | Path, device: torch.device | str = "cpu") -> LayerwiseEncoder:
    """A float32 encoder in eval mode; raises ValueError for a file of another format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_encoder: no encoder at {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        if meta.get("format") != FORMAT:
            raise ValueError(f"load_encoder: {path} is not a {FORMAT} file")
        raw = {k: f.get_tensor(k) for k in f.keys()}
    state = {k: (v.float() * raw[k + SCALE_SUFFIX].float().view(-1, *([1] * (v.dim() - 1))))
             if k + SCALE_SUFFIX in raw else v.float() for k, v in raw.items() if not k.endswith(SCALE_SUFFIX)}
    enc = LayerwiseEncoder(OrderedDict((k, tuple(v)) for k, v in json.loads(meta["shapes"])), int(meta["hidden"]))
    enc.load_state_dict(state)
    enc.metadata = meta  # type: ignore[attr-defined]
    return enc.eval().requires_grad_(False).to(device)


def matches(enc: LayerwiseEncoder, gen: nn.Module) -> bool:
    """Whether the encoder was built for a generator of these shapes."""
    return dict(enc.shapes) == dict(generator_shapes(gen, next(gen.parameters()).device))
