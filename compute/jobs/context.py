"""What an analysis gets to work with: its job (resolved declaration) and a run context.

Reads and writes the run's checkpoint directory `.cache/<run_key>/` beside the store file (streaming
state saved every few batches so a killed run resumes, whatever the working directory); reads
dependency results through short read-only store connections.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from compute.jobs.tally import Checkpoint, Engine, LocalEngine, flat_state, unflat_state  # noqa: F401 (re-exported)
from compute.analyses import Config
from compute.spec import AnalysisSpec
from ingest.spec import ModelSpec, SegmenterSpec


@dataclass(frozen=True)
class Job:
    """One run: an analysis of one model (all its declared layers in one pass)."""

    analysis: AnalysisSpec
    model: ModelSpec
    segmenter: SegmenterSpec | None
    layers: tuple[str, ...]
    run_key: str
    deps: tuple[tuple[str, str], ...]  # (kind, run_key) of the runs this one reads
    params: str  # canonical JSON recorded in runs.params
    code_version: str
    config: Config  # the resolved parameters, frozen (attribute access); canonical(config.recorded()) == params

    @property
    def layer_label(self) -> str:
        return self.layers[0] if len(self.layers) == 1 else "*"

    def dep(self, kind: str) -> str:
        for k, key in self.deps:
            if k == kind:
                return key
        raise KeyError(f"job {self.analysis.name} has no {kind} dependency")


def cache_root_for(store: str | os.PathLike) -> Path:
    """The checkpoint root of a store: `.cache/` in the store file's directory."""
    return Path(os.path.abspath(os.fspath(store))).parent / ".cache"


@dataclass
class RunContext:
    device: torch.device
    store: str
    cache_root: Path | None = None  # default: cache_root_for(store), i.e. .cache/ beside the store
    quiet: bool = False
    checkpoint_every: int = int(os.environ.get("GANDISSECT_CHECKPOINT_EVERY", "8"))
    engine: Engine = field(default_factory=LocalEngine)  # runs streaming passes (compute.jobs.tally)
    _models: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cache_root is None:
            self.cache_root = cache_root_for(self.store)

    def cache_dir(self, job: Job) -> Path:
        d = self.cache_root / job.run_key
        d.mkdir(parents=True, exist_ok=True)
        return d

    def progress(self, it: Iterable | None = None, **kw: Any) -> Iterator | tqdm:
        disable = self.quiet or not sys.stderr.isatty()
        return tqdm(it, disable=disable, dynamic_ncols=True, leave=False, **kw)

    def generator(self, job: Job) -> torch.nn.Module:
        from ingest.zoo import load_model_spec

        key = f"g:{job.model.name}"
        if key not in self._models:
            self._models[key] = load_model_spec(job.model, self.device)
        return self._models[key]

    def segmenter(self, job: Job) -> torch.nn.Module:
        from ingest.zoo import load_segmenter_spec

        assert job.segmenter is not None, f"{job.analysis.name} has no segmenter"
        key = f"s:{job.segmenter.name}"
        if key not in self._models:
            self._models[key] = load_segmenter_spec(job.segmenter, self.device)
        return self._models[key]

    def read(self, sql: str, params: list | tuple | None = None) -> Any:
        from db.store import read

        return read(sql, params, path=self.store)
