"""The model declarations of a spec file: [[models]] and [[segmenters]] entries, parsed and checked.

Reads a TOML spec file (the sections the zoo needs: which families, checkpoints and options each
declared model has); writes nothing; imports no torch. Every problem is a `SpecError` whose one-line
message names the file, the entry, the key and what is allowed (exit status 2). `compute.spec` parses
the whole file (store, analyses) with the same pieces; `ingest.zoo` loads the models declared here.
A model that cannot be loaded is a `ZooError`.

    python -m ingest.spec gandissect.toml      # the declared models and segmenters
"""
from __future__ import annotations

import glob
import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from db.errors import BadInput, did_you_mean
from ingest.checks import Choice, Float, Int, IntList, Param, Str, StrList

MODEL_ROLES = ("generator", "classifier")  # role = "classifier": ingest.zoo.load_classifier_entry
CLASSIFIER_FAMILIES = ("village-cls", "module", "transformers")
GENERATOR_FAMILIES = ("progan", "module", "stylegan2")
DEFAULT_SPEC = "gandissect.toml"


class ZooError(BadInput):
    """A model cannot be loaded: one clear line (the CLI exits with status 2)."""


class SpecError(BadInput):
    """A problem with the spec: one line naming file, entry, key and what is allowed."""

    def __init__(self, file: str, entry: str, key: str | None, message: str) -> None:
        where = f"{file}: {entry}" + (f": key '{key}'" if key else "")
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class ModelSpec:
    """One declared model (a generator, or a classifier with role = "classifier"); `options` are the
    entry's other keys, frozen (sorted tuples), read with `option(key)`."""

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
    """One declared segmenter; `options` as a ModelSpec's."""

    name: str
    family: str
    checkpoint: str
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


class Declarations(Protocol):
    """What the zoo reads of a spec: its declared models and segmenters (`compute.spec.Spec` is one)."""

    @property
    def models(self) -> tuple[ModelSpec, ...]: ...

    @property
    def segmenters(self) -> tuple[SegmenterSpec, ...]: ...


@dataclass(frozen=True)
class Catalog:
    """The [[models]] and [[segmenters]] of one spec file."""

    path: str
    models: tuple[ModelSpec, ...]
    segmenters: tuple[SegmenterSpec, ...]


def freeze(value: Any) -> Any:
    """TOML values to hashable, JSON-able values (lists -> tuples, tables -> sorted tuples)."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


# keys of [[models]] / [[segmenters]] entries per family (the loaders in ingest.zoo read them): the families
MODEL_KEYS_COMMON = ("name", "family", "checkpoint", "dataset", "layers", "z_dim", "resolution")
MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "progan": MODEL_KEYS_COMMON,
    "module": (*MODEL_KEYS_COMMON, "factory", "kwargs", "state_key", "output", "output_index", "latent_shape",
               "role", "images", "classes"),
    "stylegan2": (*MODEL_KEYS_COMMON, "key", "input", "truncation", "noise", "lr_mlp"),
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
MODEL_FAMILIES = tuple(MODEL_KEYS)  # loaders: ingest.zoo (docs/own-models.md); tests/ingest/test_roles.py
SEGMENTER_FAMILIES = tuple(SEGMENTER_KEYS)  # checks each has a loader
TOP_KEYS = ("store", "models", "segmenters", "analyses")
_SECTION_OF = {"models": "[[models]]", "segmenters": "[[segmenters]]", "analyses": "[[analyses]]", "store": "[store]"}


def check_keys(entry: dict, allowed: tuple[str, ...], what: str, err: Any,
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


# the values a [[models]] option accepts (the keys each family allows: MODEL_KEYS)
MODEL_OPTION_CHECKS: dict[str, Param] = {
    "layers": StrList(()), "z_dim": Int(None, 1, 1 << 20), "resolution": Int(None, 1, 8192),
    "key": Str(), "input": Choice("z", ("z", "w")), "truncation": Float(1.0, 0, 10),
    "noise": Choice("fixed", ("fixed", "zero")), "lr_mlp": Float(0.01, 0, 10, lo_open=True),
    "factory": Param('"module:function"', lambda v: None if isinstance(v, str) and ":" in v else f"got {v!r}"),
    "kwargs": Param("a table", lambda v: None if isinstance(v, dict) else f"got {v!r}"),
    "state_key": Str(),  # output: checked by the module loader (one of clamp, tanh, unit, byte)
    "output_index": Int(0, 0, 64), "latent_shape": IntList(1),
}


def _check_model_options(entry: dict, err: Any) -> None:
    for key, value in entry.items():
        if key in MODEL_OPTION_CHECKS:
            problem = MODEL_OPTION_CHECKS[key].validate(value)
            if problem is not None:
                raise err(key, problem)


def table(value: Any, file: str, entry: str) -> dict:
    if not isinstance(value, dict):
        raise SpecError(file, entry, None, f"must be a table (key = value lines under a [{entry}] header), "
                                           f"got {type(value).__name__} {value!r}"[:300])
    return value


def tables(raw: dict, key: str, file: str) -> list[dict]:
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


def need(entry: dict, key: str, kind: type | tuple[type, ...], err: Any) -> Any:
    if key not in entry:
        raise err(key, "missing")
    if not isinstance(entry[key], kind) or isinstance(entry[key], bool) and kind is int:
        raise err(key, f"must be {getattr(kind, '__name__', kind)}, got {entry[key]!r}")
    return entry[key]


def resolve_path(base: Path, p: str) -> Path:
    path = Path(os.path.expanduser(p))
    return path if path.is_absolute() else base / path


def read(path: str | os.PathLike | None) -> tuple[str, dict[str, Any], Path]:
    """(file name, TOML table, the file's directory) of a spec file; SpecError when it cannot be read
    or has a section other than {store, models, segmenters, analyses}."""
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
    return file, raw, base


def parse_models(file: str, base: Path, entries: list, check_files: bool) -> list[ModelSpec]:
    out: list[ModelSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        label = f"models[{i}]" + (f" ({entry.get('name')})" if isinstance(entry, dict) and "name" in entry else "")

        def err(key: str | None, msg: str, label: str = label) -> SpecError:
            return SpecError(file, label, key, msg)

        check_keys(entry, tuple(dict.fromkeys(k for keys in MODEL_KEYS.values() for k in keys)), "a model", err)
        name = need(entry, "name", str, err)
        if name in seen:
            raise err("name", f"duplicate model name {name!r}")
        seen.add(name)
        family = need(entry, "family", str, err)
        if family not in MODEL_FAMILIES:
            raise err("family", f"unknown family {family!r}{did_you_mean(family, MODEL_FAMILIES)}; "
                                f"allowed: {', '.join(MODEL_FAMILIES)}")
        check_keys(entry, MODEL_KEYS[family], f"a {family} model", err, MODEL_KEYS)
        role = entry.get("role", "generator")
        if role not in MODEL_ROLES:
            raise err("role", f"unknown role {role!r}; allowed: {', '.join(MODEL_ROLES)}")
        if family not in (CLASSIFIER_FAMILIES if role == "classifier" else GENERATOR_FAMILIES):
            raise err("family", f"family {family!r} cannot be a {role}; {role} families: "
                                f"{', '.join(CLASSIFIER_FAMILIES if role == 'classifier' else GENERATOR_FAMILIES)}")
        ckpt = need(entry, "checkpoint", str, err)
        if not ckpt.strip():
            raise err("checkpoint", "is empty")
        if not isinstance(entry.get("dataset", ""), str):
            raise err("dataset", f"must be a string, got {entry['dataset']!r}")
        _check_model_options(entry, err)
        options = freeze({k: v for k, v in entry.items() if k not in {"name", "family", "checkpoint", "dataset"}})
        pattern = str(resolve_path(base, ckpt))
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


def parse_segmenters(file: str, base: Path, entries: list, check_files: bool) -> list[SegmenterSpec]:
    out: list[SegmenterSpec] = []
    for i, entry in enumerate(entries):
        label = f"segmenters[{i}]" + (f" ({entry.get('name')})" if isinstance(entry, dict) and "name" in entry else "")

        def err(key: str | None, msg: str, label: str = label) -> SpecError:
            return SpecError(file, label, key, msg)

        check_keys(entry, tuple(dict.fromkeys(k for keys in SEGMENTER_KEYS.values() for k in keys)), "a segmenter", err)
        name = need(entry, "name", str, err)
        if any(s.name == name for s in out):
            raise err("name", f"duplicate segmenter name {name!r}")
        family = need(entry, "family", str, err)
        if family not in SEGMENTER_FAMILIES:
            raise err("family", f"unknown family {family!r}{did_you_mean(family, SEGMENTER_FAMILIES)}; "
                                f"allowed: {', '.join(SEGMENTER_FAMILIES)}")
        check_keys(entry, SEGMENTER_KEYS[family], f"a {family} segmenter", err, SEGMENTER_KEYS)
        ckpt = need(entry, "checkpoint", str, err)
        if not ckpt.strip():
            raise err("checkpoint", "is empty")
        res = entry.get("resolution")
        if res is not None and (not isinstance(res, int) or isinstance(res, bool) or not 1 <= res <= 8192):
            raise err("resolution", f"must be an integer in [1, 8192], got {res!r}")
        path = resolve_path(base, ckpt)
        if check_files and not path.exists():
            raise err("checkpoint", f"file not found: {ckpt}")
        options = freeze({k: v for k, v in entry.items() if k not in {"name", "family", "checkpoint"}})
        out.append(SegmenterSpec(name, family, str(path), options))
    return out


def load_catalog(path: str | os.PathLike | None = None, *, check_files: bool = False) -> Catalog:
    """The models and segmenters a spec file declares (its other sections are `compute.spec`'s)."""
    file, raw, base = read(path)
    return Catalog(file, tuple(parse_models(file, base, tables(raw, "models", file), check_files)),
                   tuple(parse_segmenters(file, base, tables(raw, "segmenters", file), check_files)))


if __name__ == "__main__":
    try:
        catalog = load_catalog(sys.argv[1] if len(sys.argv) > 1 else None, check_files=True)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for entry in (*catalog.models, *catalog.segmenters):
        print(entry)
