"""Upsampling modes against direct re-implementations of the references' grids (issue 15, item 5).

`reference_grid` re-implements `upsample_grid` of CSAILVision/gandissect (netdissect/dissection.py) and
davidbau/dissect (netdissect/upsample.py) with the default scale_offset (pixel centres); the PNAS code
reads it with grid_sample(align_corners=False, padding_mode="zeros"), the ICLR code (torch < 1.3) with
align_corners=True and padding_mode="border". compute.analyses.quantiles.upsample must equal them.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compute.analyses.quantiles import upsample


def reference_grid(data_shape: tuple[int, int], target_shape: tuple[int, int]) -> torch.Tensor:
    """The references' upsample_grid(data_shape, target_shape) with scale_offset=None: [1, H, W, 2]."""
    scale = tuple(float(ts) / ds for ts, ds in zip(target_shape, data_shape))
    offset = tuple(0.5 * s - 0.5 for s in scale)
    ty, tx = ((torch.arange(ts, dtype=torch.float64) - o) * (2 / (s * (ss - 1))) - 1
              for ts, ss, s, o in zip(target_shape, data_shape, scale, offset))
    return torch.stack((tx[None, :].expand(target_shape), ty[:, None].expand(target_shape)), 2)[None]


def reference_upsample(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """x [N, C, h, w] -> [N, C, size, size] the way each reference does it (float64 grid_sample)."""
    if mode == "align_corners":
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)
    grid = reference_grid(tuple(x.shape[-2:]), (size, size)).expand(x.shape[0], -1, -1, -1)
    if mode == "pnas":
        return F.grid_sample(x.double(), grid, mode="bilinear", padding_mode="zeros", align_corners=False).float()
    return F.grid_sample(x.double(), grid, mode="bilinear", padding_mode="border", align_corners=True).float()


@pytest.mark.parametrize("mode", ["pnas", "iclr", "align_corners"])
@pytest.mark.parametrize("h,size", [(4, 64), (8, 64), (16, 64), (32, 64), (64, 64), (3, 10), (5, 7)])
def test_upsample_equals_the_reference_grid(mode: str, h: int, size: int) -> None:
    x = torch.randn(2, 3, h, h, generator=torch.Generator().manual_seed(h))
    got = upsample(x, size, mode)
    assert got.shape == (2, 3, size, size)
    assert torch.allclose(got, reference_upsample(x, size, mode), atol=1e-5)


def test_iclr_grid_is_half_pixel_bilinear_and_pnas_differs_at_the_edges() -> None:
    x = torch.rand(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) + 1.0
    assert torch.allclose(upsample(x, 64, "iclr"),
                          F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False), atol=1e-5)
    pnas = upsample(x, 64, "pnas")
    assert float(pnas[..., 0, :].max()) < float(x.max())          # the first row reaches past the map: zeros blend in
    assert not torch.allclose(pnas, upsample(x, 64, "align_corners"), atol=1e-3)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="upsample mode"):
        upsample(torch.zeros(1, 1, 4, 4), 8, "nearest")
