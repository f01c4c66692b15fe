"""Dimension rows for the store: models, layers, segmenters, concepts.

Reads a model/segmenter declaration and its loaded instance; writes nothing itself (the runner
upserts the rows through `db.store`). Layer shapes come from the caller (one forward pass).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from ingest.roles import Generator, Segmenter
from ingest.spec import ModelSpec, SegmenterSpec
from ingest.zoo import file_sha256


def _training_step(spec_model: ModelSpec, net: Generator) -> int | None:
    step = getattr(net, "training_step", None)
    if step is not None:
        return int(step)
    m = re.search(r"step(\d+)", spec_model.checkpoint.rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def model_row(spec_model: ModelSpec, net: Generator) -> dict[str, Any]:
    return {
        "model": spec_model.name, "family": spec_model.family, "dataset": spec_model.dataset,
        "checkpoint": spec_model.checkpoint, "checkpoint_sha256": file_sha256(spec_model.checkpoint),
        "resolution": int(net.resolution), "z_dim": int(net.z_dim),
        "training_step": _training_step(spec_model, net), "model_group": spec_model.group,
        "role": spec_model.option("role", "generator"),
    }


def layer_rows(model: str, layers: Sequence[str], shapes: dict[str, tuple[int, ...]]) -> list[dict[str, Any]]:
    """shapes: layer -> (C, H, W) of its output featuremap."""
    return [{"model": model, "layer": name, "layer_index": i, "units": shapes[name][0],
             "height": shapes[name][1], "width": shapes[name][2]} for i, name in enumerate(layers)]


def segmenter_row(spec_seg: SegmenterSpec, seg: Segmenter) -> dict[str, Any]:
    return {"segmenter": spec_seg.name, "family": spec_seg.family, "checkpoint": spec_seg.checkpoint,
            "checkpoint_sha256": file_sha256(spec_seg.checkpoint), "resolution": int(seg.resolution)}


def concept_rows(segmenter: str, seg: Segmenter) -> list[dict[str, Any]]:
    return [{"segmenter": segmenter, "concept": c.name, "category": c.category, "concept_index": k}
            for k, c in enumerate(seg.concepts) if k > 0]
