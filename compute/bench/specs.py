"""The spec files the benchmarks run: one progan model entry (a file or a glob of checkpoints), one village
segmenter and one dissection of every layer, as TOML text built from Python values.

Reads nothing, writes nothing (the benches write the text where they run it). Used by
compute/bench/main.py (`--only dissect`'s child runs) and compute/bench/scale.py (the checkpoint sweep).

    python -c "from compute.bench.specs import dissect_spec; print(dissect_spec('s.duckdb', 'g.safetensors', 's.safetensors', 64))"
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

BATCH = 32  # the benches' generator batch


def toml_value(value: Any) -> str:
    """A TOML value: strings and paths as basic strings (JSON's escapes are TOML's), numbers, booleans, arrays,
    inline tables (tests/helpers.py builds its spec files with it too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value), ensure_ascii=False)  # JSON's \uD83D\uDE00 surrogate pairs are not TOML
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _table(header: str, entry: Mapping[str, Any]) -> str:
    return f"[{header}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in entry.items() if v is not None)


def dissect_spec(store: str | Path, checkpoint: str | Path, segmenter: str | Path, samples: int, *,
                 names: tuple[str, str, str] = ("bench-gan", "bench-seg", "bench-dissect"), dataset: str | None = None,
                 method: str | None = None, batch_size: int = BATCH) -> str:
    """A spec: store `store`; a progan model `names[0]` at `checkpoint` (a glob declares one model per file);
    a village segmenter `names[1]`; a dissection `names[2]` of every layer at q0.99 of `samples` samples,
    seed 1 (`method`: the spec's method key, or the default method when None; None values are left out)."""
    model, seg, analysis = names
    return "\n".join([
        _table("store", {"path": store}),
        _table("[models]", {"name": model, "family": "progan", "checkpoint": checkpoint, "dataset": dataset}),
        _table("[segmenters]", {"name": seg, "family": "village", "checkpoint": segmenter}),
        _table("[analyses]", {"name": analysis, "kind": "dissect", "models": [model], "segmenter": seg,
                              "samples": samples, "seed": 1, "batch_size": batch_size, "method": method}),
    ])
