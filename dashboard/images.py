"""Images for the dashboard: cached unit strips and sample images, drawn lazily by `compute.images`.

Reads the store's `models` row and the model's checkpoint (through `compute.images`, imported only when
an image is requested, so browsing pages never import torch); writes nothing. Results are cached with
`st.cache_data` per (store, model, checkpoint hash, layer, requests, size); every image of one call is
generated in batches; `strip_pngs` keeps each unit's strip as PNG bytes (per process), so a rerun sends
bytes without re-encoding and a new ranking draws only the units not drawn before. The device comes from $GANDISSECT_DEVICE (default "cpu"); set
$GANDISSECT_DASHBOARD_IMAGES=0 to turn images off.
"""
from __future__ import annotations

import io
import os
import sys
import threading
import time
from collections import OrderedDict
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


_PNG_ENTRIES = 1024  # strips kept as PNG bytes per process (a 5-image strip at 128 px is ~60 kB)
_png_lock = threading.Lock()


@st.cache_resource(show_spinner=False)
def _png_cache() -> "OrderedDict[tuple, bytes]":
    """Per-unit PNG bytes shared by every session of the process (least recently used dropped first)."""
    return OrderedDict()


def wrap(strip: np.ndarray, k: int, per_row: int) -> np.ndarray:
    """A strip of k square images with white gaps (uint8 [h, k*h + gaps, 3]) re-laid as rows of `per_row`
    images, so each image is drawn larger in a narrow column: uint8 [rows*h + gaps, per_row*h + gaps, 3]."""
    h, w = strip.shape[:2]
    if k <= per_row or k < 2:
        return strip
    gap = (w - k * h) // (k - 1)
    tiles = [strip[:, i * (h + gap): i * (h + gap) + h] for i in range(k)]
    blank = np.full((h, h, 3), 255, np.uint8)
    rows = []
    for start in range(0, k, per_row):
        row = tiles[start:start + per_row]
        row += [blank] * (per_row - len(row))
        parts = []
        for j, t in enumerate(row):
            if j:
                parts.append(np.full((h, gap, 3), 255, np.uint8))
            parts.append(t)
        rows.append(np.concatenate(parts, axis=1))
    sep = np.full((gap, rows[0].shape[1], 3), 255, np.uint8)
    out = [rows[0]]
    for r in rows[1:]:
        out += [sep, r]
    return np.concatenate(out, axis=0)


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def strip_pngs(db: str, model: str, checkpoint_sha256: str | None, layer: str, requests: tuple[Request, ...],
               size: int | None = None, per_row: int | None = None) -> list[bytes]:
    """PNG bytes of each request's strip (optionally wrapped into rows of `per_row`), cached per unit: a
    rerun, another ranking or another page size reuses every strip already drawn and generates only the
    missing ones (in one batch). st.image sends bytes as they are, with no re-encoding per run."""
    cache = _png_cache()
    keys = [(db, model, checkpoint_sha256, layer, r, size, per_row) for r in requests]
    with _png_lock:
        missing = tuple(r for k, r in zip(keys, requests) if k not in cache)
    if missing:
        drawn = strips(db, model, checkpoint_sha256, layer, missing, size)
        with _png_lock:
            for r, strip in zip(missing, drawn):
                cache[(db, model, checkpoint_sha256, layer, r, size, per_row)] = png(
                    wrap(strip, len(r[3]), per_row) if per_row else strip)
            while len(cache) > _PNG_ENTRIES:
                cache.popitem(last=False)
    with _png_lock:
        out = []
        for k in keys:
            cache.move_to_end(k)
            out.append(cache[k])
    return out


@st.cache_data(ttl=3600, max_entries=8, show_spinner=False)
def generated_vs_rendered(db: str, model: str, checkpoint_sha256: str | None, resolution: int, n: int = 8,
                          seed: int = 0) -> bytes:
    """PNG bytes of a two-row grid: n generated images of `model` (seed, samples 0..n-1) above n rendered
    village scenes (`ingest.village.render`, seeds 0..n-1) at the model's resolution, drawn at least
    128 px each: how close the GAN's world is to the one it learned from."""
    from ingest.village.render import render

    size = display_size(resolution) or resolution
    fake = samples(db, model, checkpoint_sha256, seed, tuple(range(n)), size)
    real = [render(i, size=resolution).image for i in range(n)]
    if size != resolution:
        from PIL import Image

        real = [np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in real]
    gap = 4
    white = np.full((size, gap, 3), 255, np.uint8)

    def row(images: Sequence[np.ndarray]) -> np.ndarray:
        parts: list[np.ndarray] = []
        for i, im in enumerate(images):
            parts += ([white] if i else []) + [np.asarray(im, np.uint8)]
        return np.concatenate(parts, axis=1)

    top, bottom = row(list(fake)), row(real)
    return png(np.concatenate([top, np.full((gap * 2, top.shape[1], 3), 255, np.uint8), bottom], axis=0))


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
