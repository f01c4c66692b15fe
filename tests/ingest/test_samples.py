import torch

from ingest.samples import latents


def test_prefix_property_and_offsets() -> None:
    big = latents(7, 50, 16)
    assert torch.equal(latents(7, 10, 16), big[:10])
    assert torch.equal(latents(7, 5, 16, start=20), big[20:25])
    assert not torch.equal(latents(8, 10, 16), big[:10])
    assert big.dtype == torch.float32 and big.shape == (50, 16)
