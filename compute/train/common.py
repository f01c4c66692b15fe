"""What the training scripts (gan, seg, cls) share: the --device / --threads arguments and the device
they name (`compute.core.device.resolve_device`, the one the runs use: --device cuda without CUDA is
bad input, exit status 2).

Reads nothing, writes nothing. Each script's `parse_args` calls `add_device_arguments(p)` and its
`main` calls `device_from(a)`.

    python -c "from compute.train.common import resolve_device; print(resolve_device('auto'))"
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from compute.core.device import resolve_device

REPO = Path(__file__).resolve().parents[2]  # the repository: default outputs go under ingest/zoo and .cache


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """--device auto|cpu|cuda and --threads N (0: torch's default)."""
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def device_from(a: argparse.Namespace) -> torch.device:
    """Apply --threads (when > 0) and return the --device."""
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    return resolve_device(a.device)
