"""Seeded latent sample sets: `(model, seed, sample)` names one image forever.

Reads nothing, writes nothing. `latents(seed, n, z_dim)` draws z #0..n-1 from one numpy PCG64 stream
per seed, filled in order, so z #i is the same whatever n is (a prefix property the tests check).

    python -c "from ingest.samples import latents; print(latents(1, 4, 8))"
"""
from __future__ import annotations

import numpy as np
import torch


def latents(seed: int, n: int, z_dim: int, start: int = 0) -> torch.Tensor:
    """Latents z #start..start+n-1 of the sample set `seed`: Tensor[n, z_dim] float32 on CPU."""
    if n < 0 or start < 0 or z_dim <= 0:
        raise ValueError(f"latents: need n >= 0, start >= 0, z_dim > 0 (got n={n}, start={start}, z_dim={z_dim})")
    rng = np.random.Generator(np.random.PCG64(seed))
    if start:
        rng.standard_normal(start * z_dim)  # advance the stream; draws are sequential
    z = rng.standard_normal((n, z_dim), dtype=np.float64).astype(np.float32)
    return torch.from_numpy(z)
