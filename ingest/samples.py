"""Seeded latent sample sets: `(model, seed, sample)` names one image forever.

Reads nothing, writes nothing. `latents(seed, n, z_dim)` draws z #0..n-1 from one numpy PCG64 stream
per seed, filled in order, so z #i is the same whatever n is (a prefix property the tests check).

A far sample (`start` large, e.g. `gandissect edit --sample 2000000`) needs every earlier normal drawn
(the ziggurat sampler uses a variable number of raw draws per normal, so the stream cannot jump).
The skip is done in chunks of at most `SKIP_CHUNK` normals (bounded memory, the same values), and
the generator's state at every `SKIP_CHUNK` boundary passed is remembered (a few hundred bytes each),
so a second far request of the same seed resumes from the nearest remembered state: repeated
requests cost O(1) per sample. `latents_at(seed, samples, z_dim)` reads many scattered samples (e.g. a
unit's top images) in one pass. Sample indices are bounded by `MAX_SAMPLE_INDEX`.

    python -c "from ingest.samples import latents; print(latents(1, 4, 8))"
"""
from __future__ import annotations

import bisect
import threading
from typing import Sequence

import numpy as np
import torch

SKIP_CHUNK = 1 << 20  # normals drawn per skip step (8 MiB of float64)
MAX_SAMPLE_INDEX = 10_000_000  # the largest start + n accepted (the spec's samples bound)
_STATES: dict[int, tuple[list[int], list[dict]]] = {}  # seed -> (positions, bit generator states), sorted
_MAX_STATES_PER_SEED = 4096
_LOCK = threading.Lock()


def _generator_at(seed: int, position: int) -> np.random.Generator:
    """A generator of stream `seed` that has drawn exactly `position` standard normals."""
    with _LOCK:
        positions, states = _STATES.get(seed, ([], []))
        i = bisect.bisect_right(positions, position) - 1
        at, state = (positions[i], states[i]) if i >= 0 else (0, None)
    bitgen = np.random.PCG64(seed)
    if state is not None:
        bitgen.state = state
    rng = np.random.Generator(bitgen)
    _advance(rng, seed, at, position)
    return rng


def _advance(rng: np.random.Generator, seed: int, at: int, position: int) -> None:
    """Draw (and drop) normals `at`..`position` - 1 in chunks, remembering the state at chunk boundaries."""
    while at < position:
        step = min(SKIP_CHUNK - at % SKIP_CHUNK, position - at)
        rng.standard_normal(step)
        at += step
        if at % SKIP_CHUNK == 0:
            _remember(seed, at, rng.bit_generator.state)


def _remember(seed: int, position: int, state: dict) -> None:
    with _LOCK:
        positions, states = _STATES.setdefault(seed, ([], []))
        j = bisect.bisect_left(positions, position)
        if j < len(positions) and positions[j] == position or len(positions) >= _MAX_STATES_PER_SEED:
            return
        positions.insert(j, position)
        states.insert(j, state)


def latents(seed: int, n: int, z_dim: int, start: int = 0) -> torch.Tensor:
    """Latents z #start..start+n-1 of the sample set `seed`: Tensor[n, z_dim] float32 on CPU."""
    if n < 0 or start < 0 or z_dim <= 0:
        raise ValueError(f"latents: need n >= 0, start >= 0, z_dim > 0 (got n={n}, start={start}, z_dim={z_dim})")
    if start + n > MAX_SAMPLE_INDEX:
        raise ValueError(f"latents: samples up to index {MAX_SAMPLE_INDEX:,} exist (asked for {start:,} + {n:,})")
    rng = _generator_at(seed, start * z_dim) if start else np.random.Generator(np.random.PCG64(seed))
    z = rng.standard_normal((n, z_dim), dtype=np.float64).astype(np.float32)
    return torch.from_numpy(z)


def latents_at(seed: int, samples: Sequence[int], z_dim: int) -> torch.Tensor:
    """Latents of the given sample indices (any order, repeats allowed), in one pass over the stream:
    Tensor[len(samples), z_dim] float32, row j equal to `latents(seed, 1, z_dim, start=samples[j])`."""
    want = sorted({int(i) for i in samples})
    if not want:
        return torch.zeros(0, z_dim)
    if want[0] < 0 or want[-1] >= MAX_SAMPLE_INDEX or z_dim <= 0:
        raise ValueError(f"latents_at: sample indices must be in [0, {MAX_SAMPLE_INDEX:,}) and z_dim > 0 "
                         f"(got {want[0]}..{want[-1]}, z_dim={z_dim})")
    rng = _generator_at(seed, want[0] * z_dim)
    rows: dict[int, np.ndarray] = {}
    at = want[0]
    for i in want:
        _advance(rng, seed, at * z_dim, i * z_dim)
        rows[i] = rng.standard_normal(z_dim, dtype=np.float64).astype(np.float32)
        at = i + 1
    return torch.from_numpy(np.stack([rows[int(i)] for i in samples]))
