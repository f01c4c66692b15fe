"""Tap, run_from and forward_from on tiny models (an nn.Sequential and a module with two branches), against
hand-computed edits; the hook path equals the Sequential fast path on the bundled village-gan."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from compute.core.tap import (Edit, StopForward, Tap, apply_edit, forward_from, run_from, run_replaced,
                              sequential_path)


class Counter(nn.Module):
    """Identity that counts its calls (to see which layers ran)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([
        ("layer1", nn.Conv2d(2, 3, 3, padding=1)),
        ("layer2", nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 1))),
        ("layer3", Counter()),
        ("output", nn.Conv2d(4, 3, 1)),
    ]))


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class TwoBranch(nn.Module):
    """x -> out(main(x) + side(x)); `side` is registered after `main` but runs before it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.main = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 1))
        self.side = nn.Sequential(nn.Conv2d(2, 3, 1), nn.Tanh())
        self.out = Counter()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.side(x)
        return self.out(self.main(x) + s)


def test_retain_and_hand_computed_edits() -> None:
    model, x = tiny(), torch.randn(2, 2, 5, 5)
    f1 = model.layer1(x)
    alpha = torch.tensor([1.0, 0.0, 0.5])                       # per unit [C]
    value = torch.tensor([2.0, 9.0, -1.0]).view(1, 3, 1, 1)      # per unit [1, C, 1, 1]
    with Tap(model, ["layer1", "layer2"], edit={"layer1": Edit(alpha, value)}) as tap:
        out = model(x)
    expect1 = f1.clone()
    expect1[:, 0] = 2.0
    expect1[:, 2] = 0.5 * f1[:, 2] - 0.5
    assert torch.allclose(tap["layer1"], expect1, atol=1e-6)
    assert torch.allclose(tap["layer2"], model.layer2(expect1), atol=1e-6)
    assert torch.allclose(out, model.output(model.layer2(expect1)), atol=1e-6)
    assert not tap["layer1"].requires_grad


def test_per_pixel_and_full_edits_and_set_edit() -> None:
    model, x = tiny(), torch.randn(2, 2, 5, 5)
    f1 = model.layer1(x)
    mask = torch.zeros(1, 1, 5, 5)
    mask[..., 1:3, 2] = 1.0                                      # per pixel [1, 1, H, W]
    with Tap(model, ["layer1"], edit={"layer1": Edit(mask, 0.0)}) as tap:
        model(x)
        assert torch.allclose(tap["layer1"], f1 * (1 - mask), atol=1e-6)
        full_a, full_v = torch.rand_like(f1), torch.randn_like(f1)
        tap.set_edit("layer1", Edit(full_a, full_v))
        model(x)
        assert torch.allclose(tap["layer1"], f1 * (1 - full_a) + full_v * full_a, atol=1e-6)
        tap.set_edit("layer1", None)
        model(x)
        assert torch.allclose(tap["layer1"], f1, atol=1e-6)
        tap.set_edit("layer1", Edit(torch.ones(1, 1, 4, 4), 0.0))  # wrong spatial size
        with pytest.raises(ValueError, match="does not broadcast"):
            model(x)


def test_unknown_layer_lists_available() -> None:
    with pytest.raises(ValueError, match="layer2.1"):
        Tap(tiny(), ["nope"])
    with pytest.raises(ValueError):
        Tap(tiny(), ["layer1"]).set_edit("layer3", Edit(1.0))


def test_hooks_removed_on_exit_and_on_exception() -> None:
    model = tiny()
    with Tap(model, ["layer1", "layer2.1", "layer3"]):
        assert hook_count(model) == 3
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with Tap(model, ["layer1", "layer3"]):
            raise RuntimeError("boom")
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError):                            # failure inside the forward pass
        with Tap(model, ["layer1"]):
            model(torch.randn(1, 7, 5, 5))
    assert hook_count(model) == 0


def test_stop_after_truncates() -> None:
    model, x = tiny(), torch.randn(2, 2, 5, 5)
    with Tap(model, ["layer1"], stop_after="layer2") as tap:
        assert tap.run(x) is None
        assert "layer1" in tap and "layer2" not in tap
    assert model.layer3.calls == 0
    with Tap(model, ["layer2"], stop_after="layer2") as tap:
        model(x)                                                 # plain call: the with block swallows it
        raise AssertionError("not reached")
    assert tap["layer2"].shape == (2, 4, 5, 5) and model.layer3.calls == 0
    assert hook_count(model) == 0
    with Tap(model, ["layer1"]) as tap:                          # no stop: run returns the output
        assert tap.run(x).shape == (2, 3, 5, 5)
    assert issubclass(StopForward, Exception)


def test_gradient_flows_to_alpha() -> None:
    model, x = tiny(), torch.randn(2, 2, 5, 5)
    alpha = torch.full((3,), 0.3, requires_grad=True)
    value = torch.tensor([1.0, -2.0, 0.5])
    with Tap(model, ["layer1"], edit={"layer1": Edit(alpha, value)}, detach=False) as tap:
        loss = model(x).square().mean()
    loss.backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0
    assert tap["layer1"].requires_grad

    def loss_at(a0: float) -> float:
        a = torch.tensor([a0, 0.3, 0.3])
        with Tap(model, ["layer1"], edit={"layer1": Edit(a, value)}), torch.no_grad():
            return float(model(x).square().mean())
    fd = (loss_at(0.3 + 1e-3) - loss_at(0.3 - 1e-3)) / 2e-3     # finite difference on unit 0
    assert abs(fd - float(alpha.grad[0])) < 1e-3 * max(1.0, abs(fd))


def test_run_from_equals_full_forward() -> None:
    model, x = tiny(), torch.randn(2, 2, 5, 5)
    full = model(x)
    assert torch.allclose(run_from(model, "layer1", model.layer1(x)), full, atol=1e-6)
    f20 = model.layer2[0](model.layer1(x))
    assert torch.allclose(run_from(model, "layer2.0", f20), full, atol=1e-6)
    assert torch.equal(run_from(model, "output", full), full)
    with pytest.raises(ValueError):
        run_from(model, "layer9", full)


def test_stop_after_several_layers_waits_for_all_of_them_in_any_order() -> None:
    model, x = TwoBranch(), torch.randn(2, 2, 5, 5)
    for layers in (["side.1", "main.2"], ["main.2", "side.1"], ["main.0", "side.1"]):
        with Tap(model, layers, stop_after=layers) as tap:
            assert tap.run(x) is None
            assert sorted(tap.keys()) == sorted(layers)  # side.1 ran first; the pass went on to main.*
        assert model.out.calls == 0
    with Tap(model, ["side.1"], stop_after="side.1") as tap:  # one layer: cut right after it
        tap.run(x)
        assert "side.1" in tap
    with Tap(model, ["side.1", "main.2"], stop_after=["side.1", "main.2"]) as tap:  # passes do not add up
        for _ in range(2):
            tap.run(x)
            assert model.out.calls == 0
    assert hook_count(model) == 0


def test_forward_from_hook_path_equals_the_fast_path_and_the_full_forward() -> None:
    model, x = tiny(), torch.randn(2, 2, 5, 5)
    full = model(x)
    f20 = model.layer2[0](model.layer1(x))
    assert sequential_path(model, "layer2.0") and sequential_path(model, "layer1")
    assert torch.allclose(run_replaced(model, "layer2.0", f20, x), run_from(model, "layer2.0", f20), atol=1e-6)
    edited = f20 * 0.5
    assert torch.allclose(forward_from(model, "layer2.0", edited, x), model.output(model.layer2[1](edited)), atol=1e-6)
    assert hook_count(model) == 0

    branchy = TwoBranch()
    assert not sequential_path(branchy, "main.1")
    with Tap(branchy, ["main.1"]) as tap:
        out = branchy(x)
    r = tap["main.1"]
    assert torch.equal(forward_from(branchy, "main.1", r, x), out)
    edited = r.clone()
    edited[:, 0] = 0.0
    want = branchy.out(branchy.main[2](edited) + branchy.side(x))  # the side branch still sees x
    assert torch.allclose(forward_from(branchy, "main.1", edited, x), want, atol=1e-6)
    with pytest.raises(ValueError, match="2 featuremaps of 'main.1' but 1 latents"):
        forward_from(branchy, "main.1", r, x[:1])
    assert hook_count(branchy) == 0


def test_replacement_is_exact_keeps_autograd_and_removes_its_hook_after_an_exception() -> None:
    model, x = TwoBranch(), torch.randn(2, 2, 5, 5)
    value = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = forward_from(model, "main.1", value, x)
    out.sum().backward()
    assert value.grad is not None and value.grad.abs().sum() > 0
    inf = torch.full((1, 3, 2, 2), float("inf"))
    assert torch.equal(apply_edit(inf, Edit(1.0, torch.ones(1, 3, 2, 2))), torch.ones(1, 3, 2, 2))  # no 0 * inf
    with pytest.raises(ValueError, match="does not broadcast"):  # raised inside the forward pass
        run_replaced(model, "main.1", torch.randn(2, 3, 4, 4), x)
    assert hook_count(model) == 0


VILLAGE_GAN = Path(__file__).resolve().parents[2] / "ingest" / "zoo" / "village-gan.safetensors"


@pytest.mark.skipif(not VILLAGE_GAN.exists(), reason="bundled weights absent")
def test_hook_path_equals_the_fast_path_on_the_bundled_village_gan() -> None:
    from compute.core.intervene import edit_featuremap, featuremap, unit_alpha
    from ingest.models.progan import load_progan
    from ingest.samples import latents

    gen = load_progan(str(VILLAGE_GAN)).eval().requires_grad_(False)
    z = latents(1, 4, int(gen.z_dim))
    with torch.no_grad():
        for layer in ("layer4", "layer7"):
            r = featuremap(gen, layer, z)
            edited = edit_featuremap(r, unit_alpha([0, 3, 5], r.shape[1]), 0.0)
            assert sequential_path(gen, layer)
            fast, hooked = run_from(gen, layer, edited), run_replaced(gen, layer, edited, z)
            assert torch.allclose(fast, hooked, atol=1e-5), float((fast - hooked).abs().max())
            assert torch.equal(forward_from(gen, layer, edited, z), fast)
