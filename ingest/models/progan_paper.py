"""The GAN Dissection paper's own ProGAN checkpoints (netdissect / gandissect `.pth` files).

Reads a state dict (`torch.load(..., weights_only=True)`, or safetensors) with `load_progan_paper(path,
device)`; writes nothing. These are the LSUN church-outdoor, bedroom, kitchen, living-room, ... generators
the paper dissects: a `torch.nn.Sequential` of `layer1 ... layerN` and `output_RxR` (R = the resolution):

    layer1        z [N, z_dim] viewed as [N, z_dim, 1, 1] -> 4x4: the "dense" layer written as a conv
                  with kernel 4 and padding 3
    layer2..N     pixel norm -> (nearest 2x upsample on odd layers from layer3) -> 3x3 conv without
                  bias -> weight scale (x * gain / sqrt(fan_in) + b) -> LeakyReLU(0.2)
    output_RxR    pixel norm -> 1x1 conv -> weight scale (gain 1); no tanh (clamped to [-1, 1] here)

State-dict keys are `layer{i}.conv.weight`, `layer{i}.wscale.b`, `output_RxR.conv.weight`,
`output_RxR.wscale.b`, optionally inside a `{"state_dict": ...}` wrapper; the older naming
`features.{i}.*` / `output.*` (whose `wscale.scale` entries are recomputed, not stored) is converted.
The channel widths and the resolution come from the state dict itself: a 256x256 model has 14 layers
(512 channels up to 16x16, then 256, 128, 64, 32), a 128x128 model 12, a 1024x1024 model 18.

    python -c "from ingest.models.progan_paper import load_progan_paper; \
g = load_progan_paper('churchoutdoor_lsun.pth'); print(g.resolution, g.layers)"
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ingest.models.checkpoints import CheckpointError, key_mismatch, read_state_dict


class PixelNormLayer(nn.Module):
    """x / sqrt(mean over channels of x^2 + 1e-8): [N, C, H, W] -> [N, C, H, W]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class DoubleResolution(nn.Module):
    """Nearest-neighbour 2x upsampling: [N, C, H, W] -> [N, C, 2H, 2W]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")


class WScale(nn.Module):
    """Equalised learning rate after a bias-free conv: x * gain / sqrt(fan_in) + b (b is the learned bias)."""

    def __init__(self, channels: int, fan_in: int, gain: float) -> None:
        super().__init__()
        self.scale = gain / math.sqrt(fan_in)
        self.b = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.b.view(1, -1, 1, 1)


class NormConvBlock(nn.Module):
    """Pixel norm, (nearest 2x upsample), conv without bias, weight scale, LeakyReLU(0.2)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, padding: int, upsample: bool = False) -> None:
        super().__init__()
        self.norm = PixelNormLayer()
        self.up = DoubleResolution() if upsample else None
        self.conv = nn.Conv2d(cin, cout, kernel_size, 1, padding, bias=False)
        # the paper's gain sqrt(2) / kernel_size with fan_in = cin is gain sqrt(2) over sqrt(cin * k * k)
        self.wscale = WScale(cout, cin * kernel_size * kernel_size, math.sqrt(2.0))
        self.relu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, cin, H, W] -> [N, cout, H or 2H, W or 2W]
        x = self.norm(x)
        if self.up is not None:
            x = self.up(x)
        return self.relu(self.wscale(self.conv(x)))


class OutputConvBlock(nn.Module):
    """Pixel norm, 1x1 conv to RGB, weight scale with gain 1; clamped to [-1, 1] unless `clamp` is False."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.norm = PixelNormLayer()
        self.conv = nn.Conv2d(cin, 3, 1, 1, 0, bias=False)
        self.wscale = WScale(3, cin, 1.0)
        self.clamp = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, R, R] -> [N, 3, R, R]
        y = self.wscale(self.conv(self.norm(x)))
        return y.clamp(-1.0, 1.0) if self.clamp else y


class PaperProGAN(nn.Sequential):
    """z [N, z_dim] -> images [N, 3, R, R]; children layer1..layerN, output_RxR (the paper's names).

    `sizes` = [z_dim, width at 4x4, width at 8x8, ...]: the netdissect `sizes` list; N = 2 * (len - 1)
    layers and R = 2 ** len(sizes). Every `layerK` returns its post-activation featuremap.
    """

    def __init__(self, sizes: Sequence[int]) -> None:
        s = [int(v) for v in sizes]
        if len(s) < 2:
            raise ValueError(f"PaperProGAN: sizes needs [z_dim, width at 4x4, ...], got {s}")
        blocks: list[tuple[str, nn.Module]] = [("layer1", NormConvBlock(s[0], s[1], 4, 3)),
                                               ("layer2", NormConvBlock(s[1], s[1], 3, 1))]
        for cin, cout in zip(s[1:-1], s[2:]):
            n = len(blocks)
            blocks.append((f"layer{n + 1}", NormConvBlock(cin, cout, 3, 1, upsample=True)))
            blocks.append((f"layer{n + 2}", NormConvBlock(cout, cout, 3, 1)))
        res = 4 * 2 ** (len(blocks) // 2 - 1)
        blocks.append((f"output_{res}x{res}", OutputConvBlock(s[-1])))
        super().__init__(OrderedDict(blocks))
        self.sizes = tuple(s)
        self.z_dim = s[0]
        self.resolution = res
        self.layers: list[str] = [name for name, _ in blocks[:-1]]

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [N, z_dim] (or [N, z_dim, 1, 1]) -> [N, 3, R, R]
        return super().forward(z.reshape(z.shape[0], z.shape[1], 1, 1))


def convert_old_naming(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`features.{i}.*` and `output.*` (the older netdissect naming) -> `layer{i+1}.*` and `output_RxR.*`.

    The old files stored the weight scale as a parameter (`wscale.scale`); it is a constant of the
    architecture (gain / sqrt(fan_in)) and is recomputed, so those entries are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    n = 0
    while f"features.{n}.conv.weight" in state:
        out[f"layer{n + 1}.conv.weight"] = state[f"features.{n}.conv.weight"]
        if f"features.{n}.wscale.b" in state:
            out[f"layer{n + 1}.wscale.b"] = state[f"features.{n}.wscale.b"]
        n += 1
    res = 4 * 2 ** (n // 2 - 1)
    rest = {k: v for k, v in state.items() if not k.startswith("features.") and not k.startswith("output.")}
    for part in ("conv.weight", "wscale.b"):
        if f"output.{part}" in state:
            out[f"output_{res}x{res}.{part}"] = state[f"output.{part}"]
    out.update({k: v for k, v in rest.items() if not k.endswith("wscale.scale")})
    return out


def sizes_from_state(state: Mapping[str, torch.Tensor], where: str = "checkpoint") -> list[int]:
    """The netdissect `sizes` list [z_dim, width at 4x4, width at 8x8, ...] read from the conv weights."""
    if "layer1.conv.weight" not in state:
        first = ", ".join(list(state)[:5]) or "none"
        raise CheckpointError(f"{where}: not a ProGAN generator state dict (no 'layer1.conv.weight'; "
                              f"first keys: {first})")
    w1 = state["layer1.conv.weight"]
    if w1.dim() != 4 or tuple(w1.shape[2:]) != (4, 4):
        raise CheckpointError(f"{where}: layer1.conv.weight has shape {tuple(w1.shape)}, expected "
                              f"[width, z_dim, 4, 4] (the 4x4 dense layer)")
    sizes = [int(w1.shape[1]), int(w1.shape[0])]
    k = 3
    while f"layer{k}.conv.weight" in state:
        sizes.append(int(state[f"layer{k}.conv.weight"].shape[0]))
        k += 2
    return sizes


def build_from_state(state: Mapping[str, torch.Tensor], where: str = "checkpoint") -> PaperProGAN:
    """A `PaperProGAN` shaped like `state` with its weights loaded; every key must be consumed."""
    if "features.0.conv.weight" in state:
        state = convert_old_naming(state)
    with torch.device("meta"):  # no initialisation: every tensor comes from the state dict (assign=True)
        net = PaperProGAN(sizes_from_state(state, where))
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(key_mismatch(where, "the paper's ProGAN", missing, unexpected))
    bad = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(f"{where}: {k} has shape {tuple(state[k].shape)}, the inferred ProGAN "
                              f"(sizes {list(net.sizes)}) needs {tuple(expected[k].shape)}")
    net.load_state_dict({k: v.float().contiguous() for k, v in state.items()}, strict=True, assign=True)
    return net


def load_progan_paper(path: str | Path, device: str | torch.device = "cpu") -> PaperProGAN:
    """Load a paper ProGAN checkpoint (.pth/.pt via weights_only, or .safetensors) in eval mode."""
    state = read_state_dict(str(path))
    net = build_from_state(state, str(path))
    return net.eval().requires_grad_(False).to(device)
