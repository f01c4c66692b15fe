"""ProGAN-style generator and discriminator for 64x64 images, and the safetensors loader.

Reads a checkpoint with `load_progan(path, device)`; writes one with `save_progan(generator, path,
step=..., extra=...)`. Nothing else touches disk.

    python -c "from ingest.models.progan import load_progan; g = load_progan('ingest/zoo/village-gan.safetensors', 'cpu'); print(g.layers)"

The generator follows the paper's ProGAN (Karras et al. 2018) as dissected in GAN Dissection:
pixel norm before every convolution, equalised learning rate (weights stored ~N(0, 1) and scaled at
runtime by gain / sqrt(fan_in)), nearest 2x upsampling, 3x3 convolutions, LeakyReLU(0.2). It is a
`torch.nn.Sequential` whose children are `layer1 ... layer10` then `output` (the paper's naming):

    layer1   z [N, z_dim, 1, 1] -> 4x4 (conv kernel 4, padding 3: the dense layer)
    layer2   3x3 conv at 4x4
    layer3/4 8x8 (layer3 upsamples first)      layer5/6   16x16
    layer7/8 32x32                              layer9/10  64x64
    output   1x1 conv to RGB, clamped to [-1, 1] (clamping can be switched off for training)

Each `layerK` returns its post-activation featuremap: that is what dissection reads.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from ingest.models.safetensors_io import save_safetensors

WIDTH_PRESETS: dict[str, tuple[int, ...]] = {
    "default": (128, 128, 128, 128, 128, 128, 64, 64, 32, 32),
    "small": (64, 64, 64, 64, 64, 64, 32, 32, 16, 16),
    "tiny": (8, 8, 8, 8, 8, 8, 8, 8, 4, 4),
}
FORMAT = "gandissect-progan"
LRELU_GAIN = math.sqrt(2.0)


class PixelNorm(nn.Module):
    """x / sqrt(mean over channels of x^2 + eps): every pixel's feature vector gets unit RMS."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, C, H, W]
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)


class EqConv2d(nn.Module):
    """Conv2d with equalised learning rate: weight ~ N(0, 1), used as weight * gain / sqrt(fan_in)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, padding: int = 0,
                 gain: float = LRELU_GAIN, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale = gain / math.sqrt(cin * kernel_size * kernel_size)
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        cout, cin, k, _ = self.weight.shape
        return f"{cin}, {cout}, kernel_size={k}, padding={self.padding}, scale={self.scale:.4g}"


class EqLinear(nn.Module):
    """Linear layer with equalised learning rate."""

    def __init__(self, cin: int, cout: int, gain: float = LRELU_GAIN) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = gain / math.sqrt(cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class Upsample2x(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")


class NormConvBlock(nn.Sequential):
    """Pixel norm, (optional nearest 2x upsample), equalised conv, LeakyReLU(0.2)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding: int = 1, upsample: bool = False) -> None:
        parts: list[tuple[str, nn.Module]] = [("norm", PixelNorm())]
        if upsample:
            parts.append(("upsample", Upsample2x()))
        parts += [("conv", EqConv2d(cin, cout, kernel_size, padding)), ("relu", nn.LeakyReLU(0.2))]
        super().__init__(OrderedDict(parts))


class OutputBlock(nn.Module):
    """Pixel norm, 1x1 equalised conv to RGB (gain 1), clamp to [-1, 1] unless `clamp` is False."""

    def __init__(self, cin: int, channels: int = 3) -> None:
        super().__init__()
        self.norm = PixelNorm()
        self.conv = EqConv2d(cin, channels, 1, 0, gain=1.0)
        self.clamp = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.norm(x))
        return y.clamp(-1.0, 1.0) if self.clamp else y


class Generator(nn.Sequential):
    """z [N, z_dim] -> images [N, 3, 64, 64] in [-1, 1]; children layer1..layer10, output."""

    def __init__(self, z_dim: int = 128, widths: tuple[int, ...] = WIDTH_PRESETS["default"]) -> None:
        if len(widths) != 10:
            raise ValueError(f"Generator: widths needs 10 entries (layer1..layer10), got {len(widths)}")
        w = tuple(int(v) for v in widths)
        blocks: list[tuple[str, nn.Module]] = [("layer1", NormConvBlock(z_dim, w[0], kernel_size=4, padding=3))]
        for k in range(1, 10):  # layer2..layer10; odd layer numbers >= 3 upsample first
            blocks.append((f"layer{k + 1}", NormConvBlock(w[k - 1], w[k], upsample=(k + 1) % 2 == 1)))
        blocks.append(("output", OutputBlock(w[9])))
        super().__init__(OrderedDict(blocks))
        self.z_dim = z_dim
        self.widths = w
        self.resolution = 64
        self.layers: list[str] = [f"layer{k}" for k in range(1, 11)]

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [N, z_dim] (or [N, z_dim, 1, 1]) -> [N, 3, 64, 64]
        if z.dim() == 2:
            z = z.view(z.shape[0], z.shape[1], 1, 1)
        return super().forward(z)


def _downsample(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)


class DBlock(nn.Module):
    """Residual discriminator block: two 3x3 convs then 2x average-pool, plus a 1x1 skip, / sqrt(2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = EqConv2d(cin, cin, 3, 1)
        self.conv2 = EqConv2d(cin, cout, 3, 1)
        self.skip = EqConv2d(cin, cout, 1, 0, gain=1.0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, cin, H, W] -> [N, cout, H/2, W/2]
        y = F.leaky_relu(self.conv1(x), 0.2)
        y = _downsample(F.leaky_relu(self.conv2(y), 0.2))
        return (y + self.skip(_downsample(x))) * (1.0 / math.sqrt(2.0))


class MinibatchStddev(nn.Module):
    """Append the mean over features of the per-group standard deviation as one extra channel."""

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, C + 1, H, W]
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        while n % g:
            g -= 1
        y = x.reshape(g, n // g, c, h, w)
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [n // g]
        y = y.view(1, n // g, 1, 1, 1).expand(g, n // g, 1, h, w).reshape(n, 1, h, w)
        return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """Residual discriminator (StyleGAN2-like) with minibatch stddev; images [N, 3, 64, 64] -> logits [N]."""

    def __init__(self, widths: tuple[int, ...] = WIDTH_PRESETS["default"]) -> None:
        super().__init__()
        # channels at 64, 32, 16, 8, 4 mirror the generator's widths at those resolutions
        ch = [int(widths[i]) for i in (9, 7, 5, 3, 1)]
        self.from_rgb = EqConv2d(3, ch[0], 1, 0)
        self.blocks = nn.Sequential(*[DBlock(ch[i], ch[i + 1]) for i in range(4)])
        self.mbstd = MinibatchStddev()
        self.conv = EqConv2d(ch[4] + 1, ch[4], 3, 1)
        self.dense = EqLinear(ch[4] * 16, ch[4])
        self.out = EqLinear(ch[4], 1, gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.from_rgb(x), 0.2)
        x = self.blocks(x)
        x = F.leaky_relu(self.conv(self.mbstd(x)), 0.2)
        x = F.leaky_relu(self.dense(x.flatten(1)), 0.2)
        return self.out(x).squeeze(1)


def save_progan(generator: Generator, path: str | Path, step: int, extra: dict[str, str] | None = None) -> Path:
    """Write the generator's weights as float16 safetensors with metadata (widths, z_dim, resolution, step)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in generator.state_dict().items()}
    meta = {"format": FORMAT, "widths": json.dumps(list(generator.widths)), "z_dim": str(generator.z_dim),
            "resolution": str(generator.resolution), "step": str(int(step))}
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return save_safetensors(tensors, path, meta)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The checkpoint's metadata dict (strings), without loading the tensors."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_progan(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Load a float16 safetensors checkpoint into a float32 `Generator` in eval mode on `device`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_progan: no checkpoint at {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        if meta.get("format") != FORMAT:
            raise ValueError(f"load_progan: {path} is not a {FORMAT} checkpoint (format={meta.get('format')!r})")
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    g = Generator(z_dim=int(meta["z_dim"]), widths=tuple(json.loads(meta["widths"])))
    g.load_state_dict(state)
    g.training_step = int(meta.get("step", "0"))  # type: ignore[attr-defined]
    g.metadata = meta  # type: ignore[attr-defined]
    return g.eval().requires_grad_(False).to(device)
