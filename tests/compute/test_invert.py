"""The layer-wise encoder and the optimiser on a tiny random generator (issue 19).

The optimiser must recover z exactly when x = G(z) (the papers' "inversion converges precisely when
x = G(z)"); the encoder's inverses must compose to the generator's shapes, round-trip through
safetensors, and their layer-wise loss must fall with training.
"""
from __future__ import annotations

import pytest
import torch

from compute.invert.encoder import (LayerwiseEncoder, generator_shapes, load_encoder, matches, normalise_z,
                                    save_encoder)
from compute.invert.omissions import concept_stats, dropped
from compute.invert.optimise import invert, psnr, split_generator
from compute.invert.train import children_outputs, layerwise_loss, train_encoder
from ingest.models.progan import Generator


@pytest.fixture(scope="module")
def gen() -> Generator:
    torch.manual_seed(0)
    return Generator(z_dim=8, widths=(8,) * 8 + (4, 4)).eval().requires_grad_(False)


def truth(n: int = 2, seed: int = 5) -> torch.Tensor:
    return normalise_z(torch.randn(n, 8, generator=torch.Generator().manual_seed(seed)))


def test_shapes_compose(gen: Generator) -> None:
    enc = LayerwiseEncoder.for_generator(gen, hidden=8)
    shapes = generator_shapes(gen)
    x = gen(truth())
    for name in ["layer1", "layer4", "layer9"]:
        assert tuple(enc.encode(x, to=name).shape[1:]) == shapes[name]
    z = enc(x)
    assert z.shape == (2, 8)
    assert torch.allclose(z.pow(2).mean(1), torch.ones(2), atol=1e-4)  # normalised: pixel norm sees |z| = sqrt(d)
    with pytest.raises(ValueError):
        enc.encode(x, to="output")


def test_pixel_norm_makes_z_scale_free(gen: Generator) -> None:
    z = truth()
    assert torch.allclose(gen(z), gen(3.0 * z), atol=1e-3)  # why the encoder predicts normalised z


def test_save_load_roundtrip(gen: Generator, tmp_path) -> None:
    enc = LayerwiseEncoder.for_generator(gen, hidden=8)
    path = save_encoder(enc, tmp_path / "e.safetensors", {"model": "tiny"})
    back = load_encoder(path)
    x = gen(truth())
    assert matches(back, gen)
    assert torch.allclose(back(x), enc(x).detach(), atol=2e-2)  # float16 storage
    other = Generator(z_dim=8, widths=(16,) * 10)
    assert not matches(back, other)


def test_layerwise_loss_falls_with_training(gen: Generator) -> None:
    torch.manual_seed(1)
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        outs = children_outputs(gen, z)
    torch.manual_seed(2)
    enc0 = LayerwiseEncoder.for_generator(gen, hidden=8)
    with torch.no_grad():
        before = {k: float(v) for k, v in layerwise_loss(enc0, gen, outs).items()}
    torch.manual_seed(2)
    enc = train_encoder(gen, steps=30, finetune=0, batch=8, hidden=8, lr=3e-3, log=None)
    with torch.no_grad():
        after = {k: float(v) for k, v in layerwise_loss(enc, gen, outs).items()}
    assert sum(after.values()) < 0.7 * sum(before.values())
    assert sum(after[k] < before[k] for k in before) >= len(before) - 1


def test_optimiser_recovers_z_exactly(gen: Generator) -> None:
    z = truth()
    x = gen(z)
    start = z + 0.3 * torch.randn(2, 8, generator=torch.Generator().manual_seed(6))
    inv = invert(gen, x, z_init=start, layer_steps=0, z_steps=120, perceptual=0.0)
    assert (inv.z - z).abs().max() < 1e-3
    assert (inv.psnr_z > 50).all() and (inv.psnr_z > inv.psnr_encoder + 10).all()
    assert torch.equal(inv.psnr, inv.psnr_z)  # no layer step


def test_layer_step_only_improves(gen: Generator) -> None:
    z = truth(2, seed=8)
    x = gen(truth(2, seed=9)) * 0.5  # not in the range: the layer step must help
    inv = invert(gen, x, z_init=z, layer="layer6", z_steps=20, layer_steps=40, perceptual=0.0)
    assert inv.features is not None and inv.features.shape[1:] == (8, 16, 16)
    assert (inv.psnr > inv.psnr_z).all()
    head, tail = split_generator(gen, "layer6")
    assert torch.allclose(tail(head(z)), gen(z), atol=1e-6)


def test_psnr_is_the_8bit_formula() -> None:
    a = torch.zeros(1, 3, 4, 4)
    b = a.clone()
    b[0, 0, 0, 0] = 2 * 51 / 255  # one channel value off by 51 levels (of 255)
    mse = (51 / 255) ** 2 / 48
    assert abs(float(psnr(a, b)[0]) - 10 * torch.log10(torch.tensor(1 / mse)).item()) < 1e-3


def test_concept_stats_and_dropped_against_counts() -> None:
    g = torch.Generator().manual_seed(3)
    mp = torch.rand(3, 4, 8, 8, generator=g) > 0.5
    mr = torch.rand(3, 4, 8, 8, generator=g) > 0.5
    st = concept_stats(mp, mr)
    for i in range(3):
        for k in range(4):
            assert int(st["both"][i, k]) == sum(bool(mp[i, k, y, x] and mr[i, k, y, x]) for y in range(8) for x in range(8))
    rows = [[{"concept": "a", "present": True, "omitted": False, "photo_share": 0.5, "recall": 0.8}],
            [{"concept": "a", "present": True, "omitted": True, "photo_share": 0.1, "recall": 0.0},
             {"concept": "b", "present": True, "omitted": True, "photo_share": 0.2, "recall": 0.25}]]
    d = {r["concept"]: r for r in dropped(rows)}
    assert d["a"]["images"] == 2 and d["a"]["omitted"] == 1
    assert abs(d["a"]["pixel_recall"] - 0.4 / 0.6) < 1e-9
    assert [r["concept"] for r in dropped(rows)] == ["b", "a"]  # b drops 75 %, a 33 %


def test_train_encoder_command_for_any_progan(tiny_gan, tmp_path) -> None:
    from compute.cli import main
    from ingest.models.progan import load_progan

    out = tmp_path / "tiny-encoder.safetensors"
    rc = main(["train", "encoder", "--model", str(tiny_gan), "--steps", "2", "--finetune", "1", "--batch", "2",
               "--hidden", "8", "--out", str(out)])
    assert rc == 0
    assert matches(load_encoder(out), load_progan(tiny_gan))


def test_restarts_keep_each_images_best_start(gen: Generator) -> None:
    z = truth(2, seed=12)
    x = gen(z)
    near = z + 0.3 * torch.randn(2, 8, generator=torch.Generator().manual_seed(13))
    far = -z  # the opposite latent: a start the optimiser does not bring back in 120 steps
    starts = torch.stack([torch.stack([far[0], near[0]]), torch.stack([near[1], far[1]])])  # [2, 2, 8]
    one = invert(gen, x, z_init=far, layer_steps=0, z_steps=120, perceptual=0.0)
    assert ((one.z - z).abs().amax(1) > 0.1).all()  # from the far start alone, z is not recovered
    both = invert(gen, x, z_init=starts, restarts=2, layer_steps=0, z_steps=120, perceptual=0.0)
    alone = invert(gen, x, z_init=near, layer_steps=0, z_steps=120, perceptual=0.0)
    assert torch.allclose(both.z, alone.z, atol=1e-6)  # each image keeps its near start, wherever it stands
    assert (both.z - z).abs().max() < 1e-2 and (both.psnr_z > 50).all()
    with pytest.raises(ValueError):
        invert(gen, x, z_init=far, restarts=2, layer_steps=0, z_steps=1)


def test_start_z_best_k_come_best_first(gen: Generator) -> None:
    from compute.invert.optimise import start_z

    x = gen(truth(3, seed=14))
    one = start_z(gen, x, None, candidates=16)
    three = start_z(gen, x, None, candidates=16, k=3)
    assert three.shape == (3, 3, 8) and torch.equal(three[:, 0], one)
    err = torch.stack([(gen(three[:, j]) - x).pow(2).flatten(1).mean(1) for j in range(3)], 1)
    assert (err[:, :-1] <= err[:, 1:]).all()


def test_invert_command_restarts(tmp_path, capsys) -> None:
    import json

    import numpy as np
    from PIL import Image

    from compute.cli import main
    from ingest.village.render import render

    Image.fromarray(render(20000000, size=64).image).save(tmp_path / "scene.png")
    out = tmp_path / "out"
    args = ["invert", str(tmp_path / "scene.png"), "--model", "village-gan", "--out", str(out), "--json",
            "--segmenter", "none", "--z-steps", "3", "--layer-steps", "0"]
    assert main(args + ["--restarts", "0"]) == 2 and not out.exists()
    assert main(args + ["--restarts", "2"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["psnr"] > 0 and np.isfinite(d["psnr"])


def test_normalise_z_refuses_a_shape_other_than_n_by_d():
    """A [N, R, D] tensor was once normalised over R by mistake; the shape check makes that an error."""
    z = torch.randn(4, 8)
    assert torch.allclose(normalise_z(z).pow(2).mean(1), torch.ones(4), atol=1e-5)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        normalise_z(torch.randn(2, 3, 8))


def test_z_init_of_the_wrong_rank_is_refused(gen: Generator) -> None:
    z = truth(2, seed=12)
    with pytest.raises(ValueError, match=r"\[N, z_dim\]"):
        invert(gen, gen(z), z_init=z[:, None], layer_steps=0, z_steps=1)  # [N, 1, D] without restarts


def test_card_spread_of_no_values_is_nan() -> None:
    import math

    from compute.invert.card import spread

    assert all(math.isnan(v) for v in spread([float("nan")] * 3, 0.9).values())
    s = spread([0.8, 1.0], 0.9)
    assert s["mean"] == pytest.approx(0.9) and s["share_ge_bar"] == 0.5
