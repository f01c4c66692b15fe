"""The declarative job file `gandissect.toml`, parsed into frozen, validated objects.

Reads a TOML spec (and, to validate layers and concepts, the checkpoints' metadata through
`ingest.zoo.describe_*`); writes nothing. Every problem is a `SpecError` whose one-line message names
the file, the entry, the key and what is allowed; the CLI turns it into exit status 2.

    python -m compute.spec gandissect.toml      # validate and print the parsed spec
"""
from __future__ import annotations

import glob
import json
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compute.analyses import params as params_table
from compute.analyses.params import MAX_SAMPLES, MAX_SEED
from db.errors import BadInput, did_you_mean

ANALYSIS_KINDS: dict[str, str] = {
    "quantiles": "per-unit activation quantiles and top-k samples (no segmenter)",
    "dissect": "quantiles + IoU of every unit with every concept, null baseline",
    "ace": "alpha optimisation of the causal unit set of a concept",
    "ablate": "ablation curves (ace / iou / random rankings)",
    "insert": "insertion effect by context, and where-to-insert maps",
    "trace": "effect of one insertion on every later layer",
    "realism": "per-unit realism (Frechet distance of top images) and concept coverage vs real images",
    "repair": "ablate artifact unit sets (manual, worst realism, union, random) and measure the Frechet distance",
    "invert": "invert photos or rendered scenes into the generator; PSNR and omitted concepts per image",
    "unit_roles": "per-class accuracy of a classifier with each unit ablated; top-k vs random ablation curves",
}
NO_SEGMENTER_KINDS = ("quantiles", "unit_roles")  # kinds that read no segmentation
MODEL_FAMILIES = ("progan", "module", "stylegan2", "village-cls", "transformers")  # loaders: ingest.zoo (docs/own-models.md)
MODEL_ROLES = ("generator", "classifier")  # role = "classifier": ingest.zoo.load_classifier_entry
CLASSIFIER_FAMILIES = ("village-cls", "module", "transformers")
GENERATOR_FAMILIES = ("progan", "module", "stylegan2")
SEGMENTER_FAMILIES = ("village", "module", "transformers", "village-truth")  # loaders: ingest.zoo.SEGMENTER_LOADERS
THRESHOLD_MODES = ("q<level> (e.g. q0.99)", "iqr", "iclr")
DEFAULT_SPEC = "gandissect.toml"


class SpecError(BadInput):
    """A problem with the spec: one line naming file, entry, key and what is allowed."""

    def __init__(self, file: str, entry: str, key: str | None, message: str) -> None:
        where = f"{file}: {entry}" + (f": key '{key}'" if key else "")
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    checkpoint: str  # resolved path of one file
    dataset: str
    group: str  # the spec entry's name (a glob entry expands into several models of one group)
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


@dataclass(frozen=True)
class SegmenterSpec:
    name: str
    family: str
    checkpoint: str
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


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


def _freeze(value: Any) -> Any:
    """TOML values to hashable, JSON-able values (lists -> tuples, tables -> sorted tuples)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _check_threshold(value: Any, err: Any) -> str:
    if value in ("iqr", "iclr"):
        return value
    if isinstance(value, str) and value.startswith("q"):
        try:
            q = float(value[1:])
        except ValueError:
            q = -1.0
        if 0.0 < q < 1.0:
            return value
    raise err("threshold", f"{value!r} is not a threshold mode; allowed: {', '.join(THRESHOLD_MODES)}")


# keys of [[models]] / [[segmenters]] entries per family (the loaders in ingest.zoo read them)
MODEL_KEYS_COMMON = ("name", "family", "checkpoint", "dataset", "layers", "z_dim", "resolution")
MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "progan": MODEL_KEYS_COMMON,
    "stylegan2": (*MODEL_KEYS_COMMON, "key", "input", "truncation", "noise", "lr_mlp"),
    "module": (*MODEL_KEYS_COMMON, "factory", "kwargs", "state_key", "output", "output_index", "latent_shape",
               "role", "images", "classes"),
    "village-cls": (*MODEL_KEYS_COMMON, "role", "images"),
    "transformers": (*MODEL_KEYS_COMMON, "role", "images", "input_range", "mean", "std"),
}
_LABEL_SEG_KEYS = ("resolution", "input_size", "input_range", "mean", "std", "background", "category", "categories")
SEGMENTER_KEYS: dict[str, tuple[str, ...]] = {
    "village": ("name", "family", "checkpoint"),
    "module": ("name", "family", "checkpoint", "factory", "kwargs", "state_key", "labels", "labels_file",
               *_LABEL_SEG_KEYS),
    "transformers": ("name", "family", "checkpoint", *_LABEL_SEG_KEYS),
    "village-truth": ("name", "family", "checkpoint"),
}
STORE_KEYS = ("path",)
TOP_KEYS = ("store", "models", "segmenters", "analyses")
_SECTION_OF = {"models": "[[models]]", "segmenters": "[[segmenters]]", "analyses": "[[analyses]]", "store": "[store]"}


def _check_keys(entry: dict, allowed: tuple[str, ...], what: str, err: Any,
                others: dict[str, tuple[str, ...]] | None = None) -> None:
    """err(key, ...) for the first key of `entry` not in `allowed`, with a did-you-mean or a hint."""
    for key in entry:
        if key in allowed:
            continue
        owners = [o for o, keys in (others or {}).items() if key in keys]
        hint = f"; {key!r} belongs to family {', '.join(owners)}" if owners else did_you_mean(key, allowed)
        if not hint and key in _SECTION_OF:
            hint = f"; a {_SECTION_OF[key]} section cannot sit inside this entry (TOML nests keys under the last header)"
        raise err(key, f"unknown key for {what}{hint}")


def _model_option_checks() -> dict[str, Any]:
    from compute.analyses.params import Choice, Float, Int, IntList, Param, Str, StrList

    return {
        "layers": StrList(()), "z_dim": Int(None, 1, 1 << 20), "resolution": Int(None, 1, 8192),
        "key": Str(), "input": Choice("z", ("z", "w")), "truncation": Float(1.0, 0, 10),
        "noise": Choice("fixed", ("fixed", "zero")), "lr_mlp": Float(0.01, 0, 10, lo_open=True),
        "factory": Param('"module:function"', lambda v: None if isinstance(v, str) and ":" in v else f"got {v!r}"),
        "kwargs": Param("a table", lambda v: None if isinstance(v, dict) else f"got {v!r}"),
        "state_key": Str(),  # output: checked by the module loader (one of clamp, tanh, unit, byte)
        "output_index": Int(0, 0, 64), "latent_shape": IntList(1),
    }


def _check_model_options(entry: dict, err: Any) -> None:
    checks = _model_option_checks()
    for key, value in entry.items():
        if key in checks:
            problem = checks[key].validate(value)
            if problem is not None:
                raise err(key, problem)


def _table(value: Any, file: str, entry: str) -> dict:
    if not isinstance(value, dict):
        raise SpecError(file, entry, None, f"must be a table (key = value lines under a [{entry}] header), "
                                           f"got {type(value).__name__} {value!r}"[:300])
    return value


def _tables(raw: dict, key: str, file: str) -> list[dict]:
    """`raw[key]` as a list of tables (an array of [[key]] entries); SpecError otherwise."""
    value = raw.get(key, [])
    if isinstance(value, dict):
        value = [value]  # a single [key] table
    if not isinstance(value, list):
        raise SpecError(file, key, None, f"must be [[{key}]] tables, got {type(value).__name__} {value!r}"[:300])
    for i, v in enumerate(value):
        if not isinstance(v, dict):
            raise SpecError(file, f"{key}[{i}]", None,
                            f"must be a table ([[{key}]] with key = value lines), got {type(v).__name__} {v!r}"[:300])
    return value


def _need(entry: dict, key: str, kind: type | tuple[type, ...], err: Any) -> Any:
    if key not in entry:
        raise err(key, "missing")
    if not isinstance(entry[key], kind) or isinstance(entry[key], bool) and kind is int:
        raise err(key, f"must be {getattr(kind, '__name__', kind)}, got {entry[key]!r}")
    return entry[key]


def _resolve(base: Path, p: str) -> Path:
    path = Path(os.path.expanduser(p))
    return path if path.is_absolute() else base / path


def load(path: str | os.PathLike | None = None, *, check_files: bool = True) -> Spec:
    """Parse and validate a spec file. Raises SpecError (one line) on any problem."""
    path = Path(path or DEFAULT_SPEC)
    file = str(path)
    if not path.exists():
        raise SpecError(file, "file", None, "not found")
    if path.is_dir():
        raise SpecError(file, "file", None, "is a directory, not a spec file (give the path of a .toml file)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(file, "file", None, f"not UTF-8 text (byte {e.start}): a spec is a UTF-8 TOML file") from None
    except OSError as e:
        raise SpecError(file, "file", None, f"cannot read: {e.strerror or e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # message carries "(at line N, column M)"
        raise SpecError(file, "file", None, f"malformed TOML: {' '.join(str(e).split())}") from None
    base = path.resolve().parent
    for key in raw:
        if key not in TOP_KEYS:
            raise SpecError(file, "top level", key, f"unknown section{did_you_mean(key, TOP_KEYS)}; "
                                                    f"allowed: {', '.join(TOP_KEYS)}")

    store = _table(raw.get("store", {}), file, "store")
    _check_keys(store, STORE_KEYS, "[store]", lambda k, m: SpecError(file, "store", k, m))
    sp = store.get("path", "gandissect.duckdb")
    if not isinstance(sp, str) or not sp.strip():
        raise SpecError(file, "store", "path", f"must be a non-empty string (a file path), got {sp!r}")
    store_path = os.environ.get("GANDISSECT_DB") or str(_resolve(base, sp))

    models = _parse_models(file, base, _tables(raw, "models", file), check_files)
    segmenters = _parse_segmenters(file, base, _tables(raw, "segmenters", file), check_files)
    analyses = _parse_analyses(file, _tables(raw, "analyses", file), models, segmenters, str(base))
    spec = Spec(file, store_path, tuple(models), tuple(segmenters), tuple(analyses))
    if check_files:
        _check_layers_and_concepts(spec)
    return spec


def _parse_models(file: str, base: Path, entries: list, check_files: bool) -> list[ModelSpec]:
    out: list[ModelSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        label = f"models[{i}]" + (f" ({entry.get('name')})" if isinstance(entry, dict) and "name" in entry else "")

        def err(key: str | None, msg: str, label: str = label) -> SpecError:
            return SpecError(file, label, key, msg)

        _check_keys(entry, tuple(dict.fromkeys(k for keys in MODEL_KEYS.values() for k in keys)), "a model", err)
        name = _need(entry, "name", str, err)
        if name in seen:
            raise err("name", f"duplicate model name {name!r}")
        seen.add(name)
        family = _need(entry, "family", str, err)
        if family not in MODEL_FAMILIES:
            raise err("family", f"unknown family {family!r}{did_you_mean(family, MODEL_FAMILIES)}; "
                                f"allowed: {', '.join(MODEL_FAMILIES)}")
        _check_keys(entry, MODEL_KEYS[family], f"a {family} model", err, MODEL_KEYS)
        role = entry.get("role", "generator")
        if role not in MODEL_ROLES:
            raise err("role", f"unknown role {role!r}; allowed: {', '.join(MODEL_ROLES)}")
        if family not in (CLASSIFIER_FAMILIES if role == "classifier" else GENERATOR_FAMILIES):
            raise err("family", f"family {family!r} cannot be a {role}; {role} families: "
                                f"{', '.join(CLASSIFIER_FAMILIES if role == 'classifier' else GENERATOR_FAMILIES)}")
        ckpt = _need(entry, "checkpoint", str, err)
        if not ckpt.strip():
            raise err("checkpoint", "is empty")
        if not isinstance(entry.get("dataset", ""), str):
            raise err("dataset", f"must be a string, got {entry['dataset']!r}")
        _check_model_options(entry, err)
        options = _freeze({k: v for k, v in entry.items() if k not in {"name", "family", "checkpoint", "dataset"}})
        pattern = str(_resolve(base, ckpt))
        if any(ch in ckpt for ch in "*?["):
            files = sorted(glob.glob(pattern))
            if not files and check_files:
                raise err("checkpoint", f"no file matches {ckpt!r}")
            for f in files:
                sub = f"{name}@{Path(f).name.split('.')[0]}"
                if sub in seen:
                    raise err("checkpoint", f"duplicate model name {sub!r}")
                seen.add(sub)
                out.append(ModelSpec(sub, family, f, entry.get("dataset", ""), name, options))
        else:
            if check_files and not Path(pattern).exists():
                raise err("checkpoint", f"file not found: {ckpt}")
            out.append(ModelSpec(name, family, pattern, entry.get("dataset", ""), name, options))
    return out


def _parse_segmenters(file: str, base: Path, entries: list, check_files: bool) -> list[SegmenterSpec]:
    out: list[SegmenterSpec] = []
    for i, entry in enumerate(entries):
        label = f"segmenters[{i}]" + (f" ({entry.get('name')})" if isinstance(entry, dict) and "name" in entry else "")

        def err(key: str | None, msg: str, label: str = label) -> SpecError:
            return SpecError(file, label, key, msg)

        _check_keys(entry, tuple(dict.fromkeys(k for keys in SEGMENTER_KEYS.values() for k in keys)), "a segmenter", err)
        name = _need(entry, "name", str, err)
        if any(s.name == name for s in out):
            raise err("name", f"duplicate segmenter name {name!r}")
        family = _need(entry, "family", str, err)
        if family not in SEGMENTER_FAMILIES:
            raise err("family", f"unknown family {family!r}{did_you_mean(family, SEGMENTER_FAMILIES)}; "
                                f"allowed: {', '.join(SEGMENTER_FAMILIES)}")
        _check_keys(entry, SEGMENTER_KEYS[family], f"a {family} segmenter", err, SEGMENTER_KEYS)
        ckpt = _need(entry, "checkpoint", str, err)
        if not ckpt.strip():
            raise err("checkpoint", "is empty")
        res = entry.get("resolution")
        if res is not None and (not isinstance(res, int) or isinstance(res, bool) or not 1 <= res <= 8192):
            raise err("resolution", f"must be an integer in [1, 8192], got {res!r}")
        path = _resolve(base, ckpt)
        if check_files and not path.exists():
            raise err("checkpoint", f"file not found: {ckpt}")
        options = _freeze({k: v for k, v in entry.items() if k not in {"name", "family", "checkpoint"}})
        out.append(SegmenterSpec(name, family, str(path), options))
    return out


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
            _check_keys(entry, tuple(all_keys), "an analysis", err)
        kind = _need(entry, "kind", str, err)
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
        params = _freeze({k: v for k, v in entry.items() if k not in known})
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
