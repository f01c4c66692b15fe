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
then the resolved ones.

    python -c "import compute.analyses as a; print(a.describe())"      # print the registry
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Mapping

from compute.analyses import params as _params

# the keys of every run's parameters that come from the analysis entry's structure, not a parameter table
STRUCTURE_RECORDED = ("kind", "name", "layers", "segmenter", "samples", "seed", "threshold", "concepts")


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


@functools.cache
def config_type(name: str) -> type[Config]:
    """The frozen dataclass of a kind's configuration: one field per structure key, parameter-table key
    (common keys, then the kind's own) and resolved key; generated from the tables, not written by hand."""
    k = kind(name)
    keys = list(dict.fromkeys([*STRUCTURE_RECORDED, *_params.table(name), *k.resolved]))
    fields: list[Any] = [(key, Any) for key in keys]
    fields.append(("_recorded", frozenset, dataclasses.field(default=frozenset(), repr=False, compare=False)))
    cls = dataclasses.make_dataclass(f"{''.join(p.title() for p in name.split('_'))}Config", fields,
                                     bases=(Config,), frozen=True)
    cls.__module__ = __name__
    return cls


def config(name: str, values: Mapping[str, Any]) -> Config:
    """A kind's configuration from the run's recorded parameters (`values`: defaults, then the spec's,
    then the resolved ones, as the runner builds them). Keys not in `values` take their table default
    (None where the analysis computes it) and are not recorded."""
    cls = config_type(name)
    table = _params.table(name)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "_recorded"]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise KeyError(f"a {name} configuration has no key(s) {', '.join(unknown)}: add them to "
                       f"compute/analyses/params.py or the kind's `resolved` keys")
    filled = {n: values[n] if n in values else (table[n].default if n in table else None) for n in names}
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

