"""compute.images: images regenerated from (model, seed, sample) through the store, and unit strips."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compute import images
from compute.core.tap import Tap
from db import store
from ingest.models.progan import load_progan
from ingest.samples import latents
from ingest.zoo import file_sha256


@pytest.fixture
def tiny_store(tmp_path, tiny_gan):
    path = tmp_path / "s.duckdb"
    net = load_progan(tiny_gan, "cpu")
    store.upsert_dimension("models", [{"model": "tiny", "family": "progan", "dataset": "village",
                                       "checkpoint": str(tiny_gan), "checkpoint_sha256": file_sha256(tiny_gan),
                                       "resolution": net.resolution, "z_dim": net.z_dim}], path)
    return path


def test_generate_matches_the_generator_and_the_prefix_property(tiny_store, tiny_gan):
    net = load_progan(tiny_gan, "cpu")
    with torch.no_grad():
        expected = images.to_uint8(net(latents(3, 6, net.z_dim)))
    got = images.generate("tiny", 3, [0, 1, 2, 3, 4, 5], tiny_store, batch_size=4)
    assert got.dtype == np.uint8 and got.shape == (6, net.resolution, net.resolution, 3)
    np.testing.assert_allclose(got.astype(int), expected.astype(int), atol=1)
    alone = images.generate("tiny", 3, [4, 1], tiny_store)  # z #i does not depend on what else is drawn
    np.testing.assert_allclose(alone.astype(int), expected[[4, 1]].astype(int), atol=1)


def test_unit_strip_outlines_the_region_above_threshold(tiny_store, tiny_gan):
    net = load_progan(tiny_gan, "cpu")
    layer, unit, samples = "layer4", 2, [0, 3, 5]
    with torch.no_grad(), Tap(net, [layer]) as tap:
        x = net(torch.cat([latents(9, 1, net.z_dim, start=s) for s in samples]))
        act = tap[layer][:, unit:unit + 1]
    up = F.interpolate(act, size=x.shape[-2:], mode="bilinear", align_corners=True)[:, 0].numpy()
    threshold = float(np.quantile(up, 0.8))
    strip = images.unit_strip("tiny", layer, unit, threshold, samples, 9, tiny_store)
    side = net.resolution
    assert strip.shape == (side, 3 * side + 2 * images.GAP, 3)
    plain = images.to_uint8(x)
    for j in range(3):
        part = strip[:, j * (side + images.GAP): j * (side + images.GAP) + side].astype(int)
        inside = up[j] > threshold
        interior = inside & ~np.pad(~inside, 1, constant_values=True)[:-2, 1:-1] & \
            ~np.pad(~inside, 1, constant_values=True)[2:, 1:-1] & ~np.pad(~inside, 1, constant_values=True)[1:-1, :-2] \
            & ~np.pad(~inside, 1, constant_values=True)[1:-1, 2:]
        np.testing.assert_allclose(part[interior], plain[j][interior].astype(int), atol=1)  # kept as is
        np.testing.assert_allclose(part[~inside], np.round(plain[j][~inside] * images.DIM), atol=1)  # darkened
        edge = inside & ~interior
        assert (part[edge] == images.OUTLINE_RGB).all()  # the contour
    assert (strip[:, side:side + images.GAP] == 255).all()


def test_strips_share_one_generation(tiny_store):
    reqs = [images.StripRequest(0, 0.0, 1, (0, 1)), images.StripRequest(1, 1e9, 1, (1, 2)),
            images.StripRequest(2, -1e9, 2, ())]
    out = images.unit_strips("tiny", "layer2", reqs, tiny_store, size=32)
    assert out[0].shape == (32, 2 * 32 + images.GAP, 3)
    darkened = np.concatenate([out[1][:, :32], out[1][:, 32 + images.GAP:]], axis=1)
    assert darkened.max() <= 255 * images.DIM + 1  # nothing above an enormous threshold: all darkened
    assert out[2].shape == (1, 1, 3)  # no samples: an empty strip


def test_errors_are_one_line(tiny_store, tmp_path, tiny_gan):
    with pytest.raises(images.ImageError, match="not in the store"):
        images.generate("nope", 1, [0], tiny_store)
    store.upsert_dimension("models", [{"model": "gone", "family": "progan", "checkpoint": str(tmp_path / "x.st")}],
                           tiny_store)
    with pytest.raises(images.ImageError, match="not found"):
        images.generate("gone", 1, [0], tiny_store)
    store.upsert_dimension("models", [{"model": "changed", "family": "progan", "checkpoint": str(tiny_gan),
                                       "checkpoint_sha256": "0" * 64}], tiny_store)
    with pytest.raises(images.ImageError, match="changed since it was analysed"):
        images.generate("changed", 1, [0], tiny_store)
    with pytest.raises(images.ImageError, match="out of range"):
        images.unit_strip("tiny", "layer2", 999, 0.0, [0], 1, tiny_store)


def test_overlay_heat_keeps_shape():
    img = np.full((16, 16, 3), 100, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    out = images.overlay_heat(img, heat)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out[0, 0, 0] > 100 and (out[-1, -1] == 100).all()
