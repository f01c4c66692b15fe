"""The analysis registry: every kind declared once, as a frozen `Kind` (what it needs, writes and records).

Reads nothing, writes nothing, imports no torch (`compute.spec` reads it while parsing a spec; the
analysis modules, where the torch work lives, are imported lazily by `module(kind)`). Everything else
that lists kinds derives from `KINDS` or is checked against it by tests/compute/test_registry.py:
`compute.spec` (allowed kinds, which need a segmenter), `params.KINDS` (each kind's parameter table),
the runner (plan order, dependencies, run keys, the tables a run may publish).

A kind's module exposes `compute(job, ctx) -> dict[table, rows]`, and `resolve(store, analysis, model,
layers) -> dict` when `Kind.resolves` (plan-time parameters read from the store or the file system,
recorded in runs.params and the run key). The runner builds each run's configuration once, as a frozen
dataclass (`job.config`, from `config(...)` here): the kind's recorded defaults, then the spec's values,
then the resolved ones. Its fields carry real types (`typing.get_type_hints`): the parameter tables'
`Param.type`, `STRUCTURE_TYPES` and `RESOLVED_TYPES` here; `config()` refuses a value of another type.

    python -c "import compute.analyses as a; print(a.describe())"      # print the registry
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import types
import typing
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, Mapping, Optional, Union

from compute.analyses import params as _params

# the keys of every run's parameters that come from the analysis entry's structure, not a parameter table
STRUCTURE_RECORDED = ("kind", "name", "layers", "segmenter", "samples", "seed", "threshold", "concepts")
# their types in a run's configuration (samples, seed and threshold are typed by params.COMMON)
STRUCTURE_TYPES: dict[str, Any] = {"kind": str, "name": str, "layers": tuple[str, ...], "segmenter": Optional[str],
                                   "concepts": tuple[str, ...]}
# the types of the keys a kind's `resolve()` adds that are not in its parameter table (None: not resolved)
RESOLVED_TYPES: dict[str, Any] = {
    "flagged": Optional[dict[str, list[int]]],  # repair: hand-flagged units per layer
    "encoder_sha256": Optional[str],  # invert: the encoder file's hash (None: no encoder file)
}


@dataclass(frozen=True)
class Kind:
    """One analysis kind. `code_version` is part of every run key: bump it when results would change."""

    name: str
    module: str  # the implementing module, imported lazily
    code_version: str
    summary: str  # one line (the spec's list of allowed kinds)
    tables: tuple[str, ...]  # result tables it publishes (checked by the runner before publishing)
    needs: tuple[str, ...] = ()  # kinds whose runs it reads (its runs are planned after theirs)
    optional_needs: tuple[str, ...] = ()  # read when the spec declares one (e.g. repair's dissect)
    unrecorded: tuple[str, ...] = ()  # table keys recorded in runs.params only when the spec gives them
    resolved: tuple[str, ...] = ()  # keys `resolve()` adds at plan time (empty: the module has no resolve)
    segmenter: bool = True  # reads segmentations: the spec must name a segmenter

    @property
    def resolves(self) -> bool:
        return bool(self.resolved)

    @property
    def defaults(self) -> dict[str, Any]:
        """The kind's own parameters recorded in runs.params when the spec does not give them."""
        return {k: p.default for k, p in _params.KINDS[self.name].items() if k not in self.unrecorded}

    @property
    def version(self) -> str:
        """The code version recorded in runs.code_version and hashed into the run key."""
        return f"{PACKAGE_VERSION}+{self.name}.{self.code_version}"


PACKAGE_VERSION = "0.1.0"
_Q = "compute.analyses."
_DISSECT_KEYS = ("parts", "iqr_threshold", "null_block")  # dissect's keys a quantiles entry accepts unrecorded
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("quantiles", _Q + "quantiles", "2", "per-unit activation quantiles and top-k samples (no segmenter)",
         ("unit_quantiles", "unit_topk"), unrecorded=_DISSECT_KEYS, segmenter=False),
    Kind("dissect", _Q + "dissect", "2", "quantiles + IoU of every unit with every concept, null baseline",
         ("unit_quantiles", "unit_topk", "unit_iou", "layer_null_iou"),
         unrecorded=("holdout_samples", "method"), resolved=("method",)),
    Kind("ace", _Q + "ace", "1", "alpha optimisation of the causal unit set of a concept",
         ("ace_alpha", "ace_epochs", "ace_trajectory"), needs=("dissect",)),
    Kind("ablate", _Q + "ablate", "1", "ablation curves (ace / iou / random rankings)",
         ("ablation_curves", "causal_effects"), needs=("dissect", "ace"), unrecorded=("n_units",)),
    Kind("insert", _Q + "insert", "1", "insertion effect by context, and where-to-insert maps",
         ("insertion_contexts", "insertion_maps"), needs=("ace",)),
    Kind("trace", _Q + "trace", "1", "effect of one insertion on every later layer",
         ("trace_effects",), needs=("ace",), unrecorded=("location",)),
    Kind("realism", _Q + "realism", "1",
         "per-unit realism (Frechet distance of top images) and concept coverage vs real images",
         ("unit_realism", "concept_coverage"), unrecorded=("real",)),
    Kind("repair", _Q + "repair", "2",
         "ablate artifact unit sets (manual, worst realism, union, random) and measure the Frechet distance",
         ("repair_effects", "repair_concepts", "realism_flag_pr"), needs=("realism",),
         optional_needs=("dissect",), unrecorded=("real",), resolved=("flagged",)),
    Kind("invert", _Q + "invert", "2",  # 2: the optimiser's layer-step learning rate 0.03 -> 0.05
         "invert photos or rendered scenes into the generator; PSNR and omitted concepts per image",
         ("inversions", "inversion_concepts"), resolved=("encoder_sha256",)),
    Kind("unit_roles", _Q + "unit_roles", "1",
         "per-class accuracy of a classifier with each unit ablated; top-k vs random ablation curves",
         ("class_unit_effects", "class_ablation_curves"), segmenter=False),
)}


class NotImplementedAnalysis(RuntimeError):
    pass


def kind(name: str) -> Kind:
    """The registered kind `name` (KeyError names the registered ones)."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown analysis kind {name!r}; registered: {', '.join(KINDS)}") from None


def module(name: str) -> ModuleType:
    """The module implementing an analysis kind (imported lazily: torch work lives there)."""
    path = kind(name).module
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as e:
        if e.name == path:
            raise NotImplementedAnalysis(f"analysis kind {name!r} is declared but not implemented yet") from None
        raise


# ---------------------------------------------------------------- each run's frozen configuration

class Config:
    """Base of every kind's configuration dataclass: attribute access to each parameter, and the
    recorded subset (`recorded()`, canonical JSON in runs.params and the run key)."""

    _recorded: frozenset[str]

    def recorded(self) -> dict[str, Any]:
        """The parameters recorded in runs.params: every key the run was built from (defaults that are
        computed by the analysis, e.g. dissect's holdout_samples, only when the spec gave them)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if f.name in self._recorded}


def field_type(name: str, key: str) -> Any:
    """The declared type of configuration key `key` of kind `name`: its parameter table's (Optional when the
    default is None), else the structure's, else the resolved keys' (KeyError names where to declare it)."""
    table = _params.table(name)
    if key in table:
        return table[key].hint
    if key in STRUCTURE_TYPES:
        return STRUCTURE_TYPES[key]
    if key in RESOLVED_TYPES and key in kind(name).resolved:
        return RESOLVED_TYPES[key]
    raise KeyError(f"a {name} configuration key {key!r} has no declared type: add it to RESOLVED_TYPES or "
                   f"STRUCTURE_TYPES in compute/analyses/__init__.py, or to the parameter table")


def conforms(value: Any, tp: Any) -> bool:
    """Whether `value` is an instance of the type hint `tp` (unions, Optional, Literal, tuple[X, ...],
    list[X], dict[K, V], classes). As the type checkers read hints (PEP 484), an int is a float; as the
    parameter tables check values, a bool is neither an int nor a float."""
    if tp is Any:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args))
    if origin is list:
        return isinstance(value, list) and all(conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(conforms(k, args[0]) and conforms(v, args[1])
                                               for k, v in value.items())
    if tp is type(None):
        return value is None
    if tp in (int, float):
        return not isinstance(value, bool) and isinstance(value, (int, float) if tp is float else int)
    return isinstance(value, tp)


@functools.cache
def config_type(name: str) -> type[Config]:
    """The frozen dataclass of a kind's configuration: one field per structure key, parameter-table key
    (common keys, then the kind's own) and resolved key, each with its declared type (`field_type`);
    generated from the tables, not written by hand."""
    k = kind(name)
    keys = list(dict.fromkeys([*STRUCTURE_RECORDED, *_params.table(name), *k.resolved]))
    fields: list[Any] = [(key, field_type(name, key)) for key in keys]
    fields.append(("_recorded", frozenset, dataclasses.field(default=frozenset(), repr=False, compare=False)))
    cls = dataclasses.make_dataclass(f"{''.join(p.title() for p in name.split('_'))}Config", fields,
                                     bases=(Config,), frozen=True)
    cls.__module__ = __name__
    return cls


def config(name: str, values: Mapping[str, Any]) -> Config:
    """A kind's configuration from the run's recorded parameters (`values`: defaults, then the spec's,
    then the resolved ones, as the runner builds them). Keys not in `values` take their table default
    (None where the analysis computes it; structure keys: see `absent`) and are not recorded. Lists are held as tuples (frozen; their
    canonical JSON, so runs.params and the run key, is the same); a value of another type than its
    field's declared one is a TypeError."""
    cls = config_type(name)
    table = _params.table(name)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "_recorded"]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise KeyError(f"a {name} configuration has no key(s) {', '.join(unknown)}: add them to "
                       f"compute/analyses/params.py or the kind's `resolved` keys")
    # a configuration built from some keys only (tools, tests): the structure keys default to an unnamed
    # entry of the kind over no declared layers or concepts
    absent = {"kind": name, "name": name, "layers": (), "concepts": ()}
    filled = {n: values[n] if n in values else table[n].default if n in table else absent.get(n) for n in names}
    filled = {n: tuple(v) if isinstance(v, list) else v for n, v in filled.items()}
    hints = typing.get_type_hints(cls)
    wrong = [f"{n} = {v!r} (declared {hints[n]})" for n, v in filled.items() if not conforms(v, hints[n])]
    if wrong:
        raise TypeError(f"a {name} configuration's value(s) of the wrong type: {'; '.join(wrong)}")
    return cls(**filled, _recorded=frozenset(values))


def describe() -> str:
    """The registry as text (one block per kind)."""
    out = []
    for k in KINDS.values():
        out.append(f"{k.name}  ({k.version}, {k.module})\n  {k.summary}\n  tables: {', '.join(k.tables)}"
                   + (f"\n  needs: {', '.join(k.needs)}" if k.needs else "")
                   + (f"\n  optional needs: {', '.join(k.optional_needs)}" if k.optional_needs else "")
                   + (f"\n  resolved at plan time: {', '.join(k.resolved)}" if k.resolved else ""))
    return "\n".join(out)

