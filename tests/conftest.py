"""Shared fixtures: tiny random-weight models saved in the real formats, and spec files using them."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config, items):  # gpu tests skip themselves where no CUDA exists
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_gan(tmp_path_factory) -> Path:
    """A tiny random ProGAN (z_dim 8, 8 channels per layer) saved as safetensors."""
    from ingest.models.progan import Generator, save_progan

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("zoo") / "tiny-gan.safetensors"
    save_progan(Generator(z_dim=8, widths=(8,) * 10), path, step=100)
    return path


def write_spec(tmp_path: Path, body: str, name: str = "spec.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


@pytest.fixture
def quantile_spec(tmp_path, tiny_gan) -> Path:
    """A spec with one real (tiny) analysis: activation quantiles of a tiny random generator."""
    return write_spec(tmp_path, f"""
        [store]
        path = "{tmp_path / 'store.duckdb'}"

        [[models]]
        name = "tiny"
        family = "progan"
        checkpoint = "{tiny_gan}"

        [[analyses]]
        name = "tiny-quantiles"
        kind = "quantiles"
        models = ["tiny"]
        layers = ["layer2", "layer4"]
        samples = 64
        seed = 3
        batch_size = 16
        """)
