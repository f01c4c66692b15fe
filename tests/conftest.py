"""Shared fixtures: tiny random-weight models saved in the real formats, and spec files using them."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import analysis, model, segmenter, write_spec_of
from tests.helpers import run_spec_in, write_spec  # noqa: F401  (many tests import these two from here)


def pytest_collection_modifyitems(config, items):  # gpu tests skip themselves where no CUDA exists
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def checkpoint_names(monkeypatch) -> list[str]:
    """The name of every `Checkpoint` opened while the test runs, in order (passes and their resume files)."""
    from compute.jobs.tally import Checkpoint

    names: list[str] = []
    init = Checkpoint.__init__

    def recording(self, directory, name):
        names.append(name)
        init(self, directory, name)

    monkeypatch.setattr(Checkpoint, "__init__", recording)
    return names


@pytest.fixture(scope="session")
def tiny_gan(tmp_path_factory) -> Path:
    """A tiny random ProGAN (z_dim 8, 8 channels per layer) saved as safetensors."""
    from ingest.models.progan import Generator, save_progan

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("zoo") / "tiny-gan.safetensors"
    save_progan(Generator(z_dim=8, widths=(8,) * 10), path, step=100)
    return path


@pytest.fixture
def quantile_spec(tmp_path, tiny_gan) -> Path:
    """A spec with one real (tiny) analysis: activation quantiles of a tiny random generator."""
    return write_spec_of(tmp_path, store=tmp_path / "store.duckdb", models=[model("tiny", tiny_gan)],
                         analyses=[analysis("tiny-quantiles", "quantiles", "tiny", layers=["layer2", "layer4"],
                                            samples=64, seed=3, batch_size=16)])


@pytest.fixture(scope="session")
def tiny_seg(tmp_path_factory) -> Path:
    """A tiny random-weight village segmenter (4 widths of 8 channels) saved as safetensors."""
    from ingest.models.village_seg import VillageSegmenter, save_village_seg

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("zoo") / "tiny-seg.safetensors"
    save_village_seg(VillageSegmenter(widths=(8, 8, 8, 8)).eval(), str(path))
    return path


@pytest.fixture(scope="module")
def dissect_spec(tmp_path_factory, tiny_gan, tiny_seg) -> Path:
    """Tiny generator + tiny segmenter, two dissections (q0.99 and iqr) of two layers."""
    tmp_path = tmp_path_factory.mktemp("dissect")
    dissect = dict(segmenter="tiny-seg", samples=40, seed=2, batch_size=16)
    return write_spec_of(tmp_path, store=tmp_path / "store.duckdb", models=[model("tiny", tiny_gan)],
                         segmenters=[segmenter("tiny-seg", tiny_seg)],
                         analyses=[analysis("dq", "dissect", "tiny", layers=["layer3", "layer8"], **dissect),
                                   analysis("diqr", "dissect", "tiny", layers=["layer8"], **dissect,
                                            threshold="iqr", holdout_samples=24)])
