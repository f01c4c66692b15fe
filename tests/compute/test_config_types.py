"""Every run's frozen configuration (`job.config`) has real field types, from the parameter tables'
`Param.type` (ingest/checks.py) and the registry's STRUCTURE_TYPES / RESOLVED_TYPES: no field is `Any`,
every value built from the defaults (here) or from a shipped spec (tests/compute/test_registry.py) is an
instance of its declared type, and a value of another type is refused when the configuration is built."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, Optional

import pytest

from compute import analyses
from compute.analyses import conforms, params


def typed_fields(cfg: analyses.Config) -> dict[str, tuple[Any, Any]]:
    """Every field's (value, declared type); tests/compute/test_registry.py checks every shipped spec's with it."""
    hints = typing.get_type_hints(type(cfg))
    return {f.name: (getattr(cfg, f.name), hints[f.name])  # type: ignore[arg-type]
            for f in dataclasses.fields(cfg) if f.name != "_recorded"}  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", list(analyses.KINDS))
def test_every_field_has_a_real_type(kind: str) -> None:
    cls = analyses.config_type(kind)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        assert f.type is not Any and hints[f.name] is not Any, (kind, f.name)
    for key, p in params.table(kind).items():  # the table's type, Optional where the analysis computes the default
        assert hints[key] == (Optional[p.type] if p.default is None else p.type), (kind, key)
    assert hints["samples"] is int and hints["layers"] == tuple[str, ...]


@pytest.mark.parametrize("kind", list(analyses.KINDS))
def test_defaults_are_instances_of_their_declared_types(kind: str) -> None:
    k = analyses.kind(kind)
    cfg = analyses.config(kind, {**k.defaults, "kind": kind, "name": "a", "layers": ["layer4"], "concepts": ["tree"],
                                 "segmenter": None, "samples": 8, "seed": 1, "threshold": "q0.99"})
    for name, (value, tp) in typed_fields(cfg).items():
        assert conforms(value, tp), (kind, name, value, tp)
    assert cfg.layers == ("layer4",) and cfg.concepts == ("tree",)  # lists held as tuples


@pytest.mark.parametrize("kind, key, value", [
    ("quantiles", "topk", "5"), ("quantiles", "topk", True), ("ace", "lr", "0.1"), ("ace", "penalty", "l1"),
    ("realism", "real_exclude", [1]), ("trace", "location", [0.5, 1]), ("dissect", "method", 2),
    ("repair", "flagged", {"layer4": ["1"]}), ("quantiles", "layers", "layer4"),
])
def test_a_value_of_another_type_is_refused(kind: str, key: str, value: Any) -> None:
    with pytest.raises(TypeError, match=key):
        analyses.config(kind, {key: value})


@pytest.mark.parametrize("value, tp, ok", [
    (1, int, True), (True, int, False), (1, float, True), (1.5, float, True), (False, float, False),
    (1.5, int, False), (None, Optional[int], True), (None, int, False), ((1, 2), tuple[int, ...], True),
    ([1, 2], tuple[int, ...], False), ((1, "a"), tuple[int, ...], False), ("a", str | tuple[str, ...], True),
    (("a",), str | tuple[str, ...], True), ("l2", Literal["l2", "l2sq"], True), ("l1", Literal["l2", "l2sq"], False),
    ({"a": [1]}, dict[str, list[int]], True), ({"a": (1,)}, dict[str, list[int]], False), (object(), Any, True),
])
def test_conforms(value: Any, tp: Any, ok: bool) -> None:
    assert conforms(value, tp) is ok
