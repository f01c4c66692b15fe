"""ProGAN generator: shapes, layer names, equalised learning rate, pixel norm, float16 round trip."""
from __future__ import annotations

import math
import time

import pytest
import torch

from ingest.models.progan import (Discriminator, EqConv2d, Generator, PixelNorm, WIDTH_PRESETS, load_progan,
                                  read_metadata, save_progan)

TINY = WIDTH_PRESETS["tiny"]


def test_generator_shapes_and_layer_names():
    torch.manual_seed(0)
    g = Generator(z_dim=16, widths=TINY).eval()
    assert [name for name, _ in g.named_children()] == [f"layer{k}" for k in range(1, 11)] + ["output"]
    assert g.layers == [f"layer{k}" for k in range(1, 11)]
    assert g.z_dim == 16 and g.resolution == 64
    feats = {}
    hooks = [getattr(g, n).register_forward_hook(lambda m, i, o, n=n: feats.__setitem__(n, o)) for n in g.layers]
    try:
        x = g(torch.randn(5, 16))
    finally:
        for h in hooks:
            h.remove()
    assert x.shape == (5, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    sizes = [4, 4, 8, 8, 16, 16, 32, 32, 64, 64]
    for k, (name, size) in enumerate(zip(g.layers, sizes)):
        assert feats[name].shape == (5, TINY[k], size, size), name
    pre = {}
    with_hook = g.layer3.conv.register_forward_hook(lambda m, i, o: pre.__setitem__("conv", o))
    try:
        out = g.layer3(feats["layer2"])
    finally:
        with_hook.remove()
    assert torch.allclose(out, torch.nn.functional.leaky_relu(pre["conv"], 0.2))  # layerK = post-activation
    z = torch.randn(2, 16)
    assert torch.equal(g(z.view(2, 16, 1, 1)), g(z))  # [N, z_dim] and [N, z_dim, 1, 1] are the same input


def test_dense_first_layer_is_a_4x4_conv_with_padding_3():
    conv = Generator(z_dim=8, widths=TINY).layer1.conv
    assert conv.weight.shape == (TINY[0], 8, 4, 4) and conv.padding == 3


def test_equalised_learning_rate_scales_weights_at_runtime():
    conv = EqConv2d(32, 16, 3, 1)
    assert conv.scale == pytest.approx(math.sqrt(2) / math.sqrt(32 * 9))
    assert abs(float(conv.weight.std()) - 1.0) < 0.1  # stored ~N(0, 1)
    x = torch.randn(4, 32, 8, 8)
    ref = torch.nn.functional.conv2d(x, conv.weight * conv.scale, conv.bias, padding=1)
    assert torch.allclose(conv(x), ref, atol=1e-6)
    y = conv(x)  # unit-variance input keeps roughly sqrt(2) x unit variance out (He init, gain sqrt 2)
    assert 1.0 < float(y.std()) < 2.0


def test_pixel_norm_gives_unit_rms_per_pixel():
    x = torch.randn(3, 10, 5, 5) * 7 + 2
    y = PixelNorm()(x)
    assert torch.allclose(y.pow(2).mean(dim=1), torch.ones(3, 5, 5), atol=1e-4)
    assert torch.allclose(PixelNorm()(x * 5), y, atol=1e-5)  # scale invariant


def test_discriminator_shapes():
    d = Discriminator(TINY)
    assert d(torch.randn(8, 3, 64, 64)).shape == (8,)
    assert d(torch.randn(6, 3, 64, 64)).shape == (6,)  # group size adapts to the batch


def test_save_load_round_trip_float16_with_metadata(tmp_path):
    torch.manual_seed(1)
    g = Generator(z_dim=16, widths=TINY).eval()
    path = save_progan(g, tmp_path / "g.safetensors", step=123, extra={"seed": "5"})
    meta = read_metadata(path)
    assert meta["step"] == "123" and meta["z_dim"] == "16" and meta["resolution"] == "64" and meta["seed"] == "5"
    t0 = time.time()
    h = load_progan(path, "cpu")
    assert time.time() - t0 < 2.0
    assert h.widths == TINY and h.z_dim == 16 and h.training_step == 123 and not h.training
    for (k, a), (k2, b) in zip(g.state_dict().items(), h.state_dict().items()):
        assert k == k2 and b.dtype == torch.float32
        assert torch.equal(a.half().float(), b)
    z = torch.randn(4, 16)
    assert (g(z) - h(z)).abs().mean() < 0.01  # float16 rounding only


def test_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError):
        load_progan(tmp_path / "missing.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a gandissect-progan"):
        load_progan(tmp_path / "x.safetensors")
