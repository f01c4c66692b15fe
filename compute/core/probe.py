"""Cheap facts about a generator found by one forward pass: the shape of each layer's featuremap and
the order in which its layers run (which need not be the order they are declared or registered in).

Reads a loaded generator; writes nothing.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from compute.core.tap import Tap
from ingest.samples import latents


@torch.no_grad()
def layer_shapes(model: nn.Module, layers: Sequence[str], device: torch.device) -> dict[str, tuple[int, ...]]:
    """layer -> (C, H, W) of its output for one latent (z #0 of seed 0)."""
    z = latents(0, 1, int(model.z_dim)).to(device)
    with Tap(model, layers, stop_after=layers) as tap:  # cut once every layer ran, in whatever order
        tap.run(z)
        return {name: tuple(tap[name].shape[1:]) for name in layers}


@torch.no_grad()
def run_order(model: nn.Module, layers: Sequence[str], device: torch.device) -> list[str]:
    """The layers among `layers` that run in a forward pass (z #0 of seed 0), in the order they first run."""
    z = latents(0, 1, int(model.z_dim)).to(device)
    with Tap(model, layers) as tap:
        tap.run(z)
        return list(tap.outputs)  # filled as each layer's hook fires
