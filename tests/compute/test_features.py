"""Feature extractors for Fréchet distances: segmenter features, Inception through a stand-in, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from compute.core import features
from compute.core.features import Extractor, FeatureError, check_count, extractor, min_images
from compute.core.frechet import frechet_distance
from ingest.models.village_seg import load_village_seg


def test_segmenter_features_shape_and_dim(tiny_seg) -> None:
    seg = load_village_seg(str(tiny_seg))
    ex = extractor("segmenter", seg, torch.device("cpu"))
    x = torch.rand(5, 3, 64, 64) * 2 - 1
    f = ex(x, batch_size=2)
    assert f.shape == (5, ex.dim) and ex.dim == 8 and f.dtype == np.float64
    np.testing.assert_allclose(f, seg.features(x).double().numpy(), rtol=1e-5, atol=1e-6)


def test_nan_features_are_refused() -> None:
    ex = Extractor("stub", 2, lambda x: torch.where(x[:, :2, 0, 0] > 0, float("nan"), 1.0))
    x = -torch.ones(4, 3, 8, 8)
    x[2] = 1.0
    with pytest.raises(FeatureError, match=r"NaN/inf for 1 of 4 images \(first: image 2\)"):
        ex(x)


def test_minimum_image_count_is_twice_the_dimension() -> None:
    assert min_images(128) == 256
    check_count(256, 128, "ok")
    with pytest.raises(FeatureError, match=r"255 images are too few .* minimum is 2 x 128 = 256"):
        check_count(255, 128, "top images")


def test_missing_inception_weights_say_where_to_put_them(tmp_path) -> None:
    missing = tmp_path / "nowhere" / features.INCEPTION_FILE
    with pytest.raises(FeatureError) as e:
        extractor("inception", None, torch.device("cpu"), str(missing))
    msg = str(e.value)
    assert "\n" not in msg and str(missing) in msg and "inception_weights" in msg and features.INCEPTION_FILE in msg


def test_unknown_extractor() -> None:
    with pytest.raises(FeatureError, match="allowed: segmenter, inception"):
        extractor("clip", None, torch.device("cpu"))


class StandIn(torch.nn.Module):
    """Stands in for torch-fidelity's Inception: takes uint8 [N,3,H,W], returns a 1-tuple of [N, 8]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(12, 8)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        self.seen.append(x)
        assert x.dtype == torch.uint8
        return (self.proj(torch.nn.functional.adaptive_avg_pool2d(x.float() / 255.0, 2).flatten(1)),)


def test_inception_path_with_a_stand_in_network(tmp_path, monkeypatch) -> None:
    weights = tmp_path / features.INCEPTION_FILE
    weights.write_bytes(b"stand-in")  # the file must exist; the stand-in factory does not read it
    net = StandIn()
    got_path = []
    monkeypatch.setattr(features, "INCEPTION_FACTORY", lambda p: got_path.append(p) or net)
    ex = extractor("inception", None, torch.device("cpu"), str(weights))
    assert ex.dim == 8 and got_path == [weights]
    x = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    f = ex(x)
    u8 = net.seen[-1]
    assert int(u8.min()) == 0 and int(u8.max()) == 255  # [-1, 1] mapped onto torch-fidelity's 0..255
    assert f.shape == (2, 8)
    a, b = ex(torch.rand(64, 3, 8, 8) * 2 - 1), ex(torch.rand(64, 3, 8, 8) - 1)
    assert frechet_distance(a, b) > frechet_distance(a, ex(torch.rand(64, 3, 8, 8) * 2 - 1))


def test_one_pass_features_and_masks_equal_the_two_calls(tiny_seg) -> None:
    from compute.core.features import features_and_masks

    seg = load_village_seg(str(tiny_seg))
    x = torch.rand(6, 3, 64, 64) * 2 - 1
    f, m = features_and_masks(extractor("segmenter", seg, torch.device("cpu")), seg, x)
    np.testing.assert_allclose(f, seg.features(x).double().numpy(), rtol=1e-5, atol=1e-6)
    assert torch.equal(m, seg.concept_masks(x))
