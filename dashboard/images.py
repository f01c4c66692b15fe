"""Images for the dashboard: cached unit strips and sample images, drawn lazily by `compute.images`.

Reads the store's `models` row and the model's checkpoint (through `compute.images`, imported only when
an image is requested, so browsing pages never import torch); writes nothing. Results are cached with
`st.cache_data` per (store, model, checkpoint hash, layer, requests, size); every image of one call is
generated in batches. The device comes from $GANDISSECT_DEVICE (default "cpu"); set
$GANDISSECT_DASHBOARD_IMAGES=0 to turn images off.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Sequence

import numpy as np
import polars as pl
import streamlit as st

Request = tuple[int, float, int, tuple[int, ...]]  # (unit, threshold, seed, samples)


def enabled() -> bool:
    return os.environ.get("GANDISSECT_DASHBOARD_IMAGES", "1") not in ("0", "false", "no", "off")


def device() -> str:
    return os.environ.get("GANDISSECT_DEVICE") or "cpu"


def display_size(resolution: int | None) -> int | None:
    """Images smaller than 128 px are drawn at 128 px (their outline stays readable)."""
    return 128 if resolution and resolution < 128 else None


def _let_the_page_out() -> None:
    """Before the first torch import of the process (seconds of CPU, mostly holding the GIL): pause once
    so the server sends the page's text and the browser draws it first (0.2 s was not enough on a
    loaded 2-core machine; 1 s was)."""
    if "torch" not in sys.modules:
        time.sleep(1.0)


@st.cache_data(ttl=3600, max_entries=32, show_spinner=False)
def strips(db: str, model: str, checkpoint_sha256: str | None, layer: str, requests: tuple[Request, ...],
           size: int | None = None) -> list[np.ndarray]:
    """One uint8 [h, w, 3] strip per request (units' top images with their region outlined)."""
    _let_the_page_out()
    from compute.images import StripRequest, unit_strips

    reqs = [StripRequest(int(u), float(t), int(s), tuple(int(i) for i in samples)) for u, t, s, samples in requests]
    return unit_strips(model, layer, reqs, db, device(), size)


@st.cache_data(ttl=3600, max_entries=32, show_spinner=False)
def samples(db: str, model: str, checkpoint_sha256: str | None, seed: int, indices: tuple[int, ...],
            size: int | None = None) -> np.ndarray:
    """Generated images (model, seed, sample) for each index: uint8 [N, H, W, 3]."""
    _let_the_page_out()
    from compute.images import generate

    images = generate(model, int(seed), list(indices), db, device())
    if size and images.shape[1] != size:
        from PIL import Image

        images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])
    return images


@st.cache_data(ttl=3600, max_entries=32, show_spinner=False)
def heat_overlays(db: str, model: str, checkpoint_sha256: str | None, seed: int, indices: tuple[int, ...],
                  heats: tuple[tuple[tuple[float, ...], ...], ...], size: int | None = None) -> list[np.ndarray]:
    """Each sample image with a heat map (rows of floats, featuremap grid) blended over it."""
    from compute.images import overlay_heat

    images = samples(db, model, checkpoint_sha256, seed, indices, size)
    return [overlay_heat(im, np.asarray(h, np.float32)) for im, h in zip(images, heats)]


def requests_for(units: Sequence[int], table: pl.DataFrame, topk: pl.DataFrame,
                 threshold_col: str = "threshold") -> tuple[list[int], tuple[Request, ...]]:
    """(units that can be drawn, their requests) from unit_table rows (thresholds) and topk rows."""
    thresholds = {r["unit"]: r[threshold_col] for r in table.select("unit", threshold_col).iter_rows(named=True)}
    by_unit: dict[int, list[tuple[int, int]]] = {}
    for r in topk.iter_rows(named=True):
        by_unit.setdefault(int(r["unit"]), []).append((int(r["seed"]), int(r["sample"])))
    drawn, reqs = [], []
    for u in units:
        pairs, t = by_unit.get(int(u)), thresholds.get(int(u))
        if not pairs or t is None:
            continue
        seed = pairs[0][0]
        drawn.append(int(u))
        reqs.append((int(u), float(t), seed, tuple(s for sd, s in pairs if sd == seed)))
    return drawn, tuple(reqs)


def error_text(e: Exception) -> str:
    """A one-line reason images are unavailable."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
