"""What an analysis gets to work with: its job (resolved declaration) and a run context.

Reads and writes the run's checkpoint directory `.cache/<run_key>/` beside the store file (streaming
state saved every few batches so a killed run resumes, whatever the working directory); reads
dependency results through short read-only store connections. Models (and anything built from them, e.g.
realism's feature extractor) are built once per context through `RunContext.cached`.

    python -c "from compute.jobs.context import pass_name; print(pass_name('trace', 'layer4', 'pool'))"
"""
from __future__ import annotations

import hashlib
import os
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import torch
from tqdm.auto import tqdm

from compute.jobs.tally import Checkpoint, Engine, LocalEngine, flat_state, unflat_state  # noqa: F401 (re-exported)
from compute.analyses import Config
from compute.spec import AnalysisSpec
from ingest.spec import ModelSpec, SegmenterSpec

T = TypeVar("T")


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


_PLAIN = frozenset((string.ascii_letters + string.digits + "_-").encode())
_MAX_NAME = 160  # longer pass names end in a hash: the checkpoint's file name stays under 255 bytes


def pass_name(*parts: str) -> str:
    """A pass's (checkpoint's) name from its parts, e.g. ("trace", layer, concept, "change"): each part with
    every byte outside [A-Za-z0-9_-] written %XX, joined by ".". Distinct tuples of parts give distinct names
    (a "." only ever separates parts), so a layer or concept named "pool", "a.b" or "x/y" never shares
    another pass's checkpoint, and a name is one file name. Plain parts are kept as they are
    ("trace.layer4.pool"); a name over _MAX_NAME characters keeps its start and ends in "~" and a hash of
    the whole ("~" appears in no escaped name)."""
    if not parts or not all(parts):
        raise ValueError(f"pass_name needs one or more non-empty parts, got {parts!r}")
    name = ".".join("".join(chr(b) if b in _PLAIN else f"%{b:02X}" for b in p.encode()) for p in parts)
    if len(name) <= _MAX_NAME:
        return name
    return name[:_MAX_NAME - 17] + "~" + hashlib.sha256(name.encode()).hexdigest()[:16]


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
    _models: dict[str, Any] = field(default_factory=dict)  # `cached`'s values; read only through `cached`

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

    def cached(self, key: str, build: Callable[[], T]) -> T:
        """The value cached under `key` in this context, built by `build()` the first time (a loaded model,
        or something built from models, on this context's device). Keys name what was built and from what
        ("g:<model>", "s:<segmenter>", "f:<features>:..."): one key, one value, for the context's life."""
        if key not in self._models:
            self._models[key] = build()
        return self._models[key]

    def generator(self, job: Job) -> torch.nn.Module:
        from ingest.zoo import load_model_spec

        return self.cached(f"g:{job.model.name}", lambda: load_model_spec(job.model, self.device))

    def segmenter(self, job: Job) -> torch.nn.Module:
        from ingest.zoo import load_segmenter_spec

        seg = job.segmenter
        assert seg is not None, f"{job.analysis.name} has no segmenter"
        return self.cached(f"s:{seg.name}", lambda: load_segmenter_spec(seg, self.device))

    def read(self, sql: str, params: list | tuple | None = None) -> Any:
        from db.store import read

        return read(sql, params, path=self.store)
