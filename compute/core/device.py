"""The one place a device name becomes a torch device: "auto" is CUDA when available, else the CPU.

Reads nothing, writes nothing. Every command that takes `--device auto|cpu|cuda` (the runner, `watch`,
the training scripts) calls `resolve_device`; asking for CUDA without a CUDA device is bad input (a
`SpecError`, exit status 2), never a silent fall-back to the CPU.

    python -c "from compute.core.device import resolve_device; print(resolve_device('auto'))"
"""
from __future__ import annotations

import torch

from ingest.spec import SpecError


def resolve_device(name: str) -> torch.device:
    """The torch device of `name` ("auto", "cpu", "cuda" or any torch device string)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("--device", "argument", None, "cuda requested but no CUDA device is available")
    return torch.device(name)
