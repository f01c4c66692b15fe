"""The analysis registry: each kind names its code version, what it needs and what it writes.

Reads nothing, writes nothing. An analysis module exposes `CODE_VERSION` (bump it when results would
change), `NEEDS` (kinds whose runs it reads, e.g. ace needs dissect), `TABLES` (result tables it
publishes) and `compute(job, ctx) -> dict[table, rows]`.
"""
from __future__ import annotations

import importlib
from types import ModuleType

_MODULES: dict[str, str] = {
    "quantiles": "compute.analyses.quantiles",
    "dissect": "compute.analyses.dissect",
    "ace": "compute.analyses.ace",
    "ablate": "compute.analyses.ablate",
    "insert": "compute.analyses.insert",
    "trace": "compute.analyses.trace",
    "realism": "compute.analyses.realism",
    "repair": "compute.analyses.repair",
    "unit_roles": "compute.analyses.unit_roles",
    "invert": "compute.analyses.invert",
}


class NotImplementedAnalysis(RuntimeError):
    pass


def module(kind: str) -> ModuleType:
    """The module implementing an analysis kind (imported lazily: torch work lives there)."""
    try:
        return importlib.import_module(_MODULES[kind])
    except ModuleNotFoundError as e:
        if e.name == _MODULES.get(kind):
            raise NotImplementedAnalysis(f"analysis kind {kind!r} is declared but not implemented yet") from None
        raise
