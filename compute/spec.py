"""The declarative job file `gandissect.toml`, parsed into frozen, validated objects.

Reads a TOML spec (and, to validate layers and concepts, the checkpoints' metadata through
`ingest.zoo.describe_*`); writes nothing. Every problem is a `SpecError` whose one-line message names
the file, the entry, the key and what is allowed; the CLI turns it into exit status 2. The [[models]]
and [[segmenters]] entries are parsed by `ingest.spec` (the zoo reads them too); this module adds the
[store] and the [[analyses]].

    python -m compute.spec gandissect.toml      # validate and print the parsed spec
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compute import analyses as registry
from compute.analyses import params as params_table
from compute.analyses.params import MAX_SAMPLES, MAX_SEED
from db.errors import did_you_mean
from ingest.spec import (DEFAULT_SPEC, ModelSpec, SegmenterSpec, SpecError, check_keys, freeze, need, parse_models,
                         parse_segmenters, read, resolve_path, table, tables)

ANALYSIS_KINDS: dict[str, str] = {k.name: k.summary for k in registry.KINDS.values()}  # kind -> one line
NO_SEGMENTER_KINDS = tuple(k.name for k in registry.KINDS.values() if not k.segmenter)  # read no segmentation
THRESHOLD_MODES = ("q<level> (e.g. q0.99)", "iqr", "iclr")
STORE_KEYS = ("path",)


@dataclass(frozen=True)
class AnalysisSpec:
    name: str
    kind: str
    models: tuple[str, ...]  # expanded model names
    layers: tuple[str, ...] | str  # "all" or explicit names
    segmenter: str | None
    samples: int
    seed: int
    threshold: str
    concepts: tuple[str, ...] = ()
    params: tuple[tuple[str, Any], ...] = ()  # every other key, canonical JSON-able values
    base: str = ""  # the spec file's directory: relative paths in params (e.g. real = "data/") resolve here

    def path_param(self, key: str, default: Any = None) -> str | None:
        """A path-valued parameter resolved against the spec file's directory (~ expanded)."""
        v = self.param(key, default)
        if v is None:
            return None
        p = Path(os.path.expanduser(str(v)))
        return str(p if p.is_absolute() or not self.base else Path(self.base) / p)

    def param(self, key: str, default: Any = None) -> Any:
        return dict(self.params).get(key, default)


@dataclass(frozen=True)
class Spec:
    path: str
    store: str
    models: tuple[ModelSpec, ...]
    segmenters: tuple[SegmenterSpec, ...]
    analyses: tuple[AnalysisSpec, ...] = field(default_factory=tuple)

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)

    def segmenter(self, name: str) -> SegmenterSpec:
        return next(s for s in self.segmenters if s.name == name)

    def analysis(self, name: str) -> AnalysisSpec:
        return next(a for a in self.analyses if a.name == name)


def _check_threshold(value: Any, err: Any) -> str:
    if params_table.THRESHOLD.check(value) is None:  # the one parser of threshold modes
        return value
    raise err("threshold", f"{value!r} is not a threshold mode; allowed: {', '.join(THRESHOLD_MODES)}")


def load(path: str | os.PathLike | None = None, *, check_files: bool = True) -> Spec:
    """Parse and validate a spec file. Raises SpecError (one line) on any problem."""
    file, raw, base = read(path)

    store = table(raw.get("store", {}), file, "store")
    check_keys(store, STORE_KEYS, "[store]", lambda k, m: SpecError(file, "store", k, m))
    sp = store.get("path", "gandissect.duckdb")
    if not isinstance(sp, str) or not sp.strip():
        raise SpecError(file, "store", "path", f"must be a non-empty string (a file path), got {sp!r}")
    store_file = os.environ.get("GANDISSECT_DB") or str(resolve_path(base, sp))

    models = parse_models(file, base, tables(raw, "models", file), check_files)
    segmenters = parse_segmenters(file, base, tables(raw, "segmenters", file), check_files)
    analyses = _parse_analyses(file, tables(raw, "analyses", file), models, segmenters, str(base))
    spec = Spec(file, store_file, tuple(models), tuple(segmenters), tuple(analyses))
    if check_files:
        _check_layers_and_concepts(spec)
    return spec


def _parse_analyses(file: str, entries: list, models: list[ModelSpec],
                    segmenters: list[SegmenterSpec], base: str = "") -> list[AnalysisSpec]:
    out: list[AnalysisSpec] = []
    groups: dict[str, list[str]] = {}
    for m in models:
        groups.setdefault(m.group, []).append(m.name)
        groups.setdefault(m.name, [m.name])
    for i, entry in enumerate(entries):
        kind = entry.get("kind") if isinstance(entry, dict) else None
        name = entry.get("name") or (f"{kind}-{i}" if kind else f"analysis-{i}")
        label = f"analyses[{i}] ({name})"

        def err(key: str | None, msg: str, label: str = label) -> SpecError:
            return SpecError(file, label, key, msg)

        if "kind" not in entry:
            all_keys = list(dict.fromkeys(k for kd in ANALYSIS_KINDS for k in params_table.known_keys(kd)))
            check_keys(entry, tuple(all_keys), "an analysis", err)
        kind = need(entry, "kind", str, err)
        if kind not in ANALYSIS_KINDS:
            raise err("kind", f"unknown analysis kind {kind!r}{did_you_mean(kind, ANALYSIS_KINDS)}; "
                              f"allowed: {', '.join(ANALYSIS_KINDS)}")
        if not isinstance(name, str) or not name.strip():
            raise err("name", f"must be a non-empty string, got {name!r}")
        params_table.check(kind, entry, err)
        if any(a.name == name for a in out):
            raise err("name", f"duplicate analysis name {name!r}")
        model_names = entry.get("models", [])
        if isinstance(model_names, str):
            model_names = [model_names]
        if not isinstance(model_names, list) or not all(isinstance(x, str) for x in model_names):
            raise err("models", f"must be a model name or a list of names, got {model_names!r}")
        if not model_names:
            raise err("models", "at least one model name is needed")
        expanded: list[str] = []
        for mn in model_names:
            if mn not in groups:
                raise err("models", f"unknown model {mn!r}{did_you_mean(mn, groups)}; "
                                    f"declared: {', '.join(groups) or 'none'}")
            expanded.extend(x for x in groups[mn] if x not in expanded)
        layers = entry.get("layers", "all")
        if isinstance(layers, str) and layers != "all":
            layers = [layers]
        if not (layers == "all" or (isinstance(layers, list) and layers and all(isinstance(x, str) for x in layers))):
            raise err("layers", f"must be \"all\" or a list of layer names, got {layers!r}")
        segmenter = entry.get("segmenter")
        if segmenter is not None and not isinstance(segmenter, str):
            raise err("segmenter", f"must be a segmenter name, got {segmenter!r}")
        if kind not in NO_SEGMENTER_KINDS or segmenter is not None:
            if segmenter is None:
                raise err("segmenter", f"a {kind} analysis needs a segmenter")
            names = [s.name for s in segmenters]
            if segmenter not in names:
                raise err("segmenter", f"unknown segmenter {segmenter!r}{did_you_mean(segmenter, names)}; "
                                       f"declared: {', '.join(names) or 'none'}")
        samples = entry.get("samples", 1000)
        if not isinstance(samples, int) or isinstance(samples, bool) or not 0 < samples <= MAX_SAMPLES:
            raise err("samples", f"must be a positive integer <= {MAX_SAMPLES:,}, got {samples!r}")
        seed = entry.get("seed", 1)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
            raise err("seed", f"must be a non-negative integer, got {seed!r}")
        threshold = _check_threshold(entry.get("threshold", "q0.99"), err)
        concepts = entry.get("concepts", [])
        if isinstance(concepts, str):
            concepts = [concepts]
        if not isinstance(concepts, list) or not all(isinstance(c, str) and c for c in concepts):
            raise err("concepts", f"must be a concept name or a list of names, got {concepts!r}")
        batch = entry.get("batch_size", 32)
        if not isinstance(batch, int) or isinstance(batch, bool) or not 0 < batch <= 4096:
            raise err("batch_size", f"must be a positive integer <= 4096, got {batch!r}")
        known = {"kind", "name", "models", "layers", "segmenter", "samples", "seed", "threshold", "concepts"}
        params = freeze({k: v for k, v in entry.items() if k not in known})
        out.append(AnalysisSpec(name, kind, tuple(expanded), "all" if layers == "all" else tuple(layers),
                                segmenter, samples, seed, threshold, tuple(concepts), params, base))
    return out


def _check_layers_and_concepts(spec: Spec) -> None:
    """Layers must exist in each model and concepts in the segmenter (reads checkpoint metadata)."""
    from ingest import zoo  # lazy: torch-free description where possible

    layer_cache: dict[str, tuple[str, ...]] = {}
    for i, a in enumerate(spec.analyses):
        label = f"analyses[{i}] ({a.name})"
        for mn in a.models:
            if mn not in layer_cache:
                try:
                    layer_cache[mn] = tuple(zoo.describe_model(spec.model(mn)).layers)
                except zoo.ZooError as e:
                    raise SpecError(spec.path, f"models ({mn})", "checkpoint", str(e)) from None
            if a.layers != "all":
                for layer in a.layers:
                    if layer not in layer_cache[mn]:
                        raise SpecError(spec.path, label, "layers",
                                        f"model {mn!r} has no layer {layer!r}; available: {', '.join(layer_cache[mn])}")
        if a.segmenter:  # every used segmenter loads (a bad one is bad input, exit 2, before any run)
            try:
                known = [c.name for c in zoo.describe_segmenter(spec.segmenter(a.segmenter)).concepts]
            except zoo.ZooError as e:
                raise SpecError(spec.path, f"segmenters ({a.segmenter})", "checkpoint", str(e)) from None
            for c in a.concepts:
                if c not in known:
                    raise SpecError(spec.path, label, "concepts",
                                    f"segmenter {a.segmenter!r} has no concept {c!r}; known: {', '.join(known[1:])}")


def store_path(db: str | None, spec_path: str | os.PathLike = DEFAULT_SPEC) -> str:
    """The store a read command uses: --db, then $GANDISSECT_DB, then the spec's, then the default."""
    if db:
        return db
    if os.environ.get("GANDISSECT_DB"):
        return os.environ["GANDISSECT_DB"]
    if Path(spec_path).exists():
        return load(spec_path, check_files=False).store
    return "gandissect.duckdb"


def canonical(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) used for run keys and runs.params."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=list)


if __name__ == "__main__":
    try:
        s = load(sys.argv[1] if len(sys.argv) > 1 else None)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(s)
