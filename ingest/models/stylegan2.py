"""StyleGAN2 generator in pure PyTorch (no custom CUDA ops) that loads rosinality-format checkpoints.

Reads a checkpoint with `load_stylegan2(path, device, ...)`; writes nothing. The widely used
rosinality `stylegan2-pytorch` files (training checkpoints `{"g", "d", "g_ema", "g_optim", "d_optim",
"args", ...}` and converted official weights `{"g_ema", "latent_avg"}`) are read with
`torch.load(weights_only=True)`; the `g_ema` state dict is loaded with every key consumed. The
architecture (Karras et al. 2020, config F) is rebuilt from the state dict itself: resolution from the
number of `to_rgbs`, widths from the conv weights, the mapping depth from `style.*`.

Module names are the state-dict names, so the dissectable layers are module paths:

    conv1              4x4   (the constant input's first modulated conv)
    convs.0, convs.1   8x8   (convs.0 upsamples)          convs.2, convs.3   16x16
    convs.4, convs.5   32x32 ...                          convs.{2k}, convs.{2k+1}   (8 * 2**k)^2

Each returns its post-activation featuremap (modulated conv -> noise -> bias + LeakyReLU(0.2) * sqrt 2).
The forward pass maps z [N, style_dim] through the mapping network (`input_space="z"`) or takes w
directly (`input_space="w"`), applies truncation `w_avg + psi * (w - w_avg)` (`latent_avg` from the
file when present, else the mean of 4096 mapped z drawn with a fixed seed), uses the checkpoint's
fixed noise buffers (`noise="fixed"`, so one z always gives one image) or none (`noise="zero"`), and
clamps the image to [-1, 1].

    python -c "from ingest.models.stylegan2 import load_stylegan2; \
g = load_stylegan2('stylegan2-church-config-f.pt', truncation=0.7); print(g.resolution, g.layers)"
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ingest.models.checkpoints import key_mismatch, read_checkpoint
from ingest.spec import ZooError

BLUR_KERNEL: tuple[int, ...] = (1, 3, 3, 1)
INPUT_SPACES = ("z", "w")
NOISE_MODES = ("fixed", "zero")
W_AVG_SAMPLES = 4096


def published_channels(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    """Widths per resolution of the published StyleGAN2 configs (config F: channel_multiplier 2)."""
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
             256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {r: c for r, c in table.items() if r <= size}


def make_kernel(k: Sequence[float]) -> torch.Tensor:
    """Separable FIR kernel: outer product of k with itself, normalised to sum 1: [len, len]."""
    t = torch.tensor(k, dtype=torch.float32)
    t = t[None, :] * t[:, None]
    return t / t.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Zero-insertion upsampling by `up`, zero padding (pad0, pad1) on both axes, then FIR filtering
    (true convolution with `kernel`, per channel): [N, C, H, W] -> [N, C, H*up + p0 + p1 - k + 1, ...]."""
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    weight = kernel.flip(0, 1).to(x.dtype)[None, None].expand(c, 1, *kernel.shape).contiguous()
    return F.conv2d(x, weight, groups=c)


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, D] -> [N, D]
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


def scaled_leaky_relu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LeakyReLU(x + bias, 0.2) * sqrt(2), bias broadcast over dim 1 (rosinality's fused_leaky_relu)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return F.leaky_relu(x + bias.view(shape), 0.2) * math.sqrt(2.0)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weight * lr_mul / sqrt(in), bias * lr_mul)."""

    def __init__(self, cin: int, cout: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(cin)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, cin] -> [N, cout]
        if self.activation:
            return scaled_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class Blur(nn.Module):
    """FIR low-pass after a transposed conv (kernel scaled by factor^2 when it follows an upsampling)."""

    def __init__(self, kernel: Sequence[int], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * upsample_factor ** 2)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, 1, self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling of the RGB skip path: [N, C, H, W] -> [N, C, 2H, 2W]."""

    def __init__(self, kernel: Sequence[int], factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor ** 2)
        p = len(kernel) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, self.factor, self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated conv with optional demodulation and 2x upsampling (transposed conv + blur).

    Computed with the input modulated instead of the weights (the reference's non-fused path, the
    same function): one shared conv for the whole batch, then per-sample demodulation coefficients.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, blur_kernel: Sequence[int] = BLUR_KERNEL) -> None:
        super().__init__()
        self.cin, self.cout, self.kernel_size = cin, cout, kernel_size
        self.upsample, self.demodulate = upsample, demodulate
        if upsample:
            p = (len(blur_kernel) - 2) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)
        self.scale = 1.0 / math.sqrt(cin * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, cout, cin, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, cin, bias_init=1.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # [N, cin, H, W], [N, D] -> [N, cout, H', W']
        weight = self.scale * self.weight[0]  # [cout, cin, k, k]
        s = self.modulation(w)  # [N, cin]
        x = x * s[:, :, None, None]
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2, padding=0))
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:  # 1 / ||w_o * s||: sum over in-channels of s_i^2 * sum over taps of w_oi^2
            d = torch.rsqrt(s.square() @ weight.square().sum((2, 3)).T + 1e-8)  # [N, cout]
            out = out * d[:, :, None, None]
        return out


class NoiseInjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return x if noise is None else x + self.weight * noise


class ScaledLeakyReLU(nn.Module):
    """LeakyReLU(x + bias, 0.2) * sqrt(2) with a learned per-channel bias (state key `activate.bias`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_leaky_relu(x, self.bias)


class StyledConv(nn.Module):
    """Modulated 3x3 conv, noise, bias and activation: one dissectable layer."""

    def __init__(self, cin: int, cout: int, style_dim: int, upsample: bool = False,
                 blur_kernel: Sequence[int] = BLUR_KERNEL) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(cin, cout, 3, style_dim, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = ScaledLeakyReLU(cout)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation) plus bias, added to the upsampled skip image."""

    def __init__(self, cin: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[int] = BLUR_KERNEL) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(cin, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, w) + self.bias
        return out if skip is None else out + self.upsample(skip)


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:  # -> [batch, C, 4, 4]
        return self.input.expand(batch, -1, -1, -1)


class StyleGAN2Generator(nn.Module):
    """z (or w) [N, style_dim] -> images [N, 3, size, size] in [-1, 1]; rosinality module names.

    `channels` maps each resolution 4, 8, ..., size to its width (default: the published config).
    """

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 channels: Mapping[int, int] | None = None, lr_mlp: float = 0.01,
                 blur_kernel: Sequence[int] = BLUR_KERNEL) -> None:
        super().__init__()
        log_size = int(math.log2(size))
        if 2 ** log_size != size or size < 8:
            raise ValueError(f"StyleGAN2Generator: size must be a power of two >= 8, got {size}")
        ch = dict(channels) if channels is not None else published_channels(size, channel_multiplier)
        self.size, self.style_dim, self.log_size = size, style_dim, log_size
        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True)
                                                 for _ in range(n_mlp)])
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)
        self.num_layers = (log_size - 2) * 2 + 1
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty; kept for the reference's module layout
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        cin = ch[4]
        for i in range(3, log_size + 1):
            cout = ch[2 ** i]
            self.convs.append(StyledConv(cin, cout, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(cout, cout, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(cout, style_dim, blur_kernel=blur_kernel))
            cin = cout
        self.n_latent = log_size * 2 - 2
        self.register_buffer("w_avg", torch.zeros(style_dim), persistent=False)
        # the generator interface
        self.z_dim = style_dim
        self.resolution = size
        self.layers: list[str] = ["conv1"] + [f"convs.{i}" for i in range(len(self.convs))]
        self.input_space = "z"
        self.truncation = 1.0
        self.noise_mode = "fixed"

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, style_dim] -> w [N, style_dim] (pixel norm + the MLP), before truncation."""
        return self.style(z)

    def truncate(self, w: torch.Tensor, psi: float | None = None) -> torch.Tensor:
        psi = self.truncation if psi is None else psi
        return w if psi >= 1.0 else self.w_avg + psi * (w - self.w_avg)

    def synthesis(self, w: torch.Tensor) -> torch.Tensor:
        """w [N, style_dim] (one style for every layer) -> images [N, 3, size, size], unclamped."""
        noise = [getattr(self.noises, f"noise_{i}") if self.noise_mode == "fixed" else None
                 for i in range(self.num_layers)]
        out = self.conv1(self.input(w.shape[0]), w, noise[0])
        skip = self.to_rgb1(out, w)
        for k, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * k](out, w, noise[2 * k + 1])
            out = self.convs[2 * k + 1](out, w, noise[2 * k + 2])
            skip = to_rgb(out, w, skip)
        return skip

    def forward(self, latent: torch.Tensor) -> torch.Tensor:  # [N, style_dim] -> [N, 3, size, size]
        latent = latent.reshape(latent.shape[0], -1)
        w = self.mapping(latent) if self.input_space == "z" else latent
        return self.synthesis(self.truncate(w)).clamp(-1.0, 1.0)

    @torch.no_grad()
    def compute_w_avg(self, n: int = W_AVG_SAMPLES, seed: int = 0) -> torch.Tensor:
        """Mean of the mapped w of n z drawn with a fixed seed: [style_dim]."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.style_dim, generator=g).to(self.w_avg.device)
        return self.mapping(z).mean(0)


def config_from_state(state: Mapping[str, torch.Tensor], where: str = "checkpoint") -> dict[str, Any]:
    """size, style_dim, n_mlp and per-resolution channels of the generator a g_ema state dict describes."""
    need = ("input.input", "conv1.conv.weight", "conv1.conv.modulation.weight")
    absent = [k for k in need if k not in state]
    if absent:
        raise ZooError(f"{where}: not a rosinality StyleGAN2 generator state dict (no {', '.join(absent)}; "
                       f"first keys: {', '.join(list(state)[:5]) or 'none'})")
    n_rgb = len({m.group(1) for k in state if (m := re.match(r"to_rgbs\.(\d+)\.", k))})
    n_mlp = len({m.group(1) for k in state if (m := re.match(r"style\.(\d+)\.weight$", k))})
    size = 2 ** (n_rgb + 2)
    channels = {4: int(state["input.input"].shape[1])}
    for j in range(n_rgb):
        key = f"convs.{2 * j}.conv.weight"
        if key not in state:
            raise ZooError(f"{where}: has to_rgbs.{j} but no {key}: not a StyleGAN2 generator state dict")
        channels[2 ** (j + 3)] = int(state[key].shape[1])
    style_dim = int(state["conv1.conv.modulation.weight"].shape[1])
    return {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channels": channels}


def build_from_state(state: Mapping[str, torch.Tensor], where: str = "checkpoint",
                     lr_mlp: float = 0.01) -> StyleGAN2Generator:
    """A generator shaped like `state` with every key of `state` consumed (else a one-line ZooError)."""
    cfg = config_from_state(state, where)
    with torch.device("meta"):  # no initialisation: every tensor comes from the state dict (assign=True)
        probe = StyleGAN2Generator(cfg["size"], cfg["style_dim"], cfg["n_mlp"], channels=cfg["channels"],
                                   lr_mlp=lr_mlp)
    expected = probe.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ZooError(key_mismatch(where, f"a StyleGAN2 generator (size {cfg['size']}, style_dim "
                                           f"{cfg['style_dim']}, {cfg['n_mlp']} mapping layers)", missing, unexpected))
    bad = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise ZooError(f"{where}: {k} has shape {tuple(state[k].shape)}, the inferred StyleGAN2 needs "
                       f"{tuple(expected[k].shape)}")
    probe.load_state_dict({k: v.float().contiguous() for k, v in state.items()}, strict=True, assign=True)
    probe.w_avg = torch.zeros(cfg["style_dim"])  # the one non-persistent buffer, still on meta
    return probe


def load_stylegan2(path: str | Path, device: str | torch.device = "cpu", *, key: str = "g_ema",
                   input_space: str = "z", truncation: float = 1.0, noise: str = "fixed",
                   lr_mlp: float = 0.01) -> StyleGAN2Generator:
    """Load a rosinality-format StyleGAN2 checkpoint's generator (`key`, default g_ema) in eval mode."""
    where = str(path)
    if input_space not in INPUT_SPACES:
        raise ZooError(f"{where}: input must be one of {', '.join(INPUT_SPACES)}, got {input_space!r}")
    if noise not in NOISE_MODES:
        raise ZooError(f"{where}: noise must be one of {', '.join(NOISE_MODES)}, got {noise!r}")
    if not 0.0 <= float(truncation) <= 1.0:
        raise ZooError(f"{where}: truncation must be in [0, 1], got {truncation!r}")
    obj = read_checkpoint(where)
    if not isinstance(obj, Mapping):
        raise ZooError(f"{where}: holds a {type(obj).__name__}, expected a dict with a {key!r} state dict")
    if key in obj and isinstance(obj[key], Mapping):
        state = obj[key]
    elif "conv1.conv.weight" in obj:  # a bare generator state dict
        state = obj
    else:
        raise ZooError(f"{where}: has no {key!r} state dict; top-level entries: {', '.join(map(str, list(obj)[:8]))}")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ZooError(f"{where}: entries {', '.join(map(str, bad[:5]))} of the generator state dict are not tensors")
    net = build_from_state(state, where, lr_mlp)
    net.input_space, net.truncation, net.noise_mode = input_space, float(truncation), noise
    avg = obj.get("latent_avg") if state is not obj else None
    if isinstance(avg, torch.Tensor) and avg.numel() == net.style_dim:
        net.w_avg.copy_(avg.reshape(-1).float())
        net.w_avg_source = "checkpoint latent_avg"  # type: ignore[attr-defined]
    elif net.truncation < 1.0:
        net.w_avg.copy_(net.compute_w_avg())
        net.w_avg_source = f"mean of {W_AVG_SAMPLES} mapped z (seed 0)"  # type: ignore[attr-defined]
    else:
        net.w_avg_source = "unused (truncation 1)"  # type: ignore[attr-defined]
    return net.eval().requires_grad_(False).to(device)
