"""GANPaint: draw or remove a concept on a region of a generated image with a unit brush, live.

Reads the store (`models`, `layers`, `runs`, `ace_alpha_latest`, `unit_iou` via the `dissections` view,
`unit_quantiles`, `unit_flags`, `layer_summary`) and the model checkpoints; writes nothing to the store
(the CLI writes the edited PNG; `--evaluate` prints and optionally writes a JSON report).

A **brush** is a unit set of one layer: the top-n units of a concept by the α of its latest ACE run
(`ace_alpha`), else — and the brush says so — by IoU in the layer's latest dissection (`unit_iou`), or a
set of flagged units (`unit_flags`: brush `flag:artifact`, `flag:watermark`, `flag:interesting`,
`label:<note>`). **draw** inserts the units (value: the units' 0.99 activation quantile from
`unit_quantiles`, or with `value="k"` the per-concept insertion constant k_c of `compute.core.intervene`),
**remove** ablates them (value 0), only inside the painted region: an image-resolution mask pooled onto
the edited layer's featuremap grid (a featuremap cell is edited when the region touches it). The
**strength** low / medium / high sets how many of the brush's units are used.

A `PaintSession` holds one sample: the generator runs once up to the edited layer; every stroke edits
the current featuremap (`compute.core.intervene.edit_featuremap`), runs the rest of the generator
(`compute.core.intervene.finish`: only the layers above on a sequential generator, the whole forward on
the session's latent with the layer's output replaced on StyleGAN2 and module generators) and the segmenter; strokes form a stack with undo / redo / reset. A bad stroke raises
`EditError` (one line; the CLI exits 2) and leaves the stack as it was.

    from compute.paint.engine import open_painter
    painter = open_painter("village-gan", db="gandissect.duckdb")          # layer: most interpretable units
    s = painter.session(seed=1, sample=3)
    res = s.apply(painter.stroke("tree", "remove", (10, 20, 40, 60), "high"))   # box x0, y0, x1, y1
    res.after.fractions["tree"], s.undo()

    gandissect edit --model village-gan --seed 1 --sample 3 --brush door --action draw --region 20,30,30,40
    python -m compute.paint.evaluate --bench       # bench_edit (also in `gandissect bench`); the bars: evaluate.py
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from compute.core.intervene import edit_featuremap, featuremap, finish, insertion_constants, unit_alpha
from db import store
from db.errors import BadInput
from ingest.samples import latents

__all__ = ["EditError", "Strength", "STRENGTHS", "Brush", "Catalog", "Stroke", "Frame", "EditResult",
           "Painter", "PaintSession", "resolve_strength", "parse_region", "box_mask", "cell_mask",
           "edit_layer", "label_map", "colorize", "PALETTE", "load_catalog", "default_layer", "load_models",
           "open_painter", "edit_once", "bench_edit"]

ACTIONS = ("draw", "remove")
VALUE_MODES = ("q99", "k")
FLAG_BRUSHES = ("artifact", "watermark", "interesting")


class EditError(BadInput):
    """A bad edit (region, brush, layer, strength, model): one clear line; the CLI exits with status 2."""


# ------------------------------------------------------------------------------------- strength

@dataclass(frozen=True)
class Strength:
    """How hard a brush paints: the number of its top units used, and a scale on the draw value."""

    name: str
    units: int
    scale: float = 1.0


STRENGTHS: dict[str, Strength] = {
    "low": Strength("low", 4),
    "medium": Strength("medium", 10),
    "high": Strength("high", 20),
}


def resolve_strength(value: str | float | int | Strength) -> Strength:
    """A Strength from a name (low / medium / high) or a number in (0, 1] (a share of `high`'s units)."""
    if isinstance(value, Strength):
        return value
    text = str(value).strip().lower()
    if text in STRENGTHS:
        return STRENGTHS[text]
    try:
        share = float(text)
    except ValueError:
        raise EditError(f"unknown strength {value!r}: use low, medium, high or a number in (0, 1]") from None
    if not (0 < share <= 1) or math.isnan(share):
        raise EditError(f"strength {value!r} is out of range: use low, medium, high or a number in (0, 1]")
    high = STRENGTHS["high"]
    return Strength(f"{share:g}", max(1, round(share * high.units)), high.scale)


# ---------------------------------------------------------------------------------------- regions

def parse_region(text: str | Sequence[int]) -> tuple[int, int, int, int]:
    """"x0,y0,x1,y1" (or a 4-sequence) -> a box of ints; the layout is checked, not the bounds."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        box = tuple(int(str(p).strip()) for p in parts)
    except ValueError:
        raise EditError(f"region {text!r}: expected four integers x0,y0,x1,y1") from None
    if len(box) != 4:
        raise EditError(f"region {text!r}: expected four integers x0,y0,x1,y1")
    return box  # type: ignore[return-value]


def box_mask(box: Sequence[int], size: int) -> np.ndarray:
    """The bool [size, size] mask of a box x0, y0, x1, y1 in image pixels (x1, y1 exclusive)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise EditError(f"region {x0},{y0},{x1},{y1} is empty: need x0 < x1 and y0 < y1 (x1, y1 exclusive)")
    if x0 < 0 or y0 < 0 or x1 > size or y1 > size:
        raise EditError(f"region {x0},{y0},{x1},{y1} lies outside the {size}x{size} image "
                        f"(0 <= x0 < x1 <= {size}, 0 <= y0 < y1 <= {size})")
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def _region_array(region: np.ndarray | Sequence[int] | str, size: int) -> np.ndarray:
    """A region (box, "x0,y0,x1,y1" or a bool mask [size, size]) -> bool [size, size]; raises EditError."""
    m = np.asarray(region)
    if isinstance(region, str) or m.shape == (4,):  # a box
        return box_mask(parse_region(region if isinstance(region, str) else m.tolist()), size)
    if m.shape != (size, size):
        raise EditError(f"region mask of shape {m.shape} does not fit the {size}x{size} image")
    m = m.astype(bool)
    if not m.any():
        raise EditError("the painted region is empty")
    return m


def cell_mask(region: np.ndarray | torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A region (bool [H, W], image pixels) pooled onto an h x w featuremap grid: float [h, w] in {0, 1},
    1 where the region touches the cell (adaptive max pooling)."""
    t = torch.as_tensor(np.asarray(region, dtype=np.float32))[None, None]
    return F.adaptive_max_pool2d(t, (h, w))[0, 0]


# ----------------------------------------------------------------------------------------- brushes

@dataclass(frozen=True)
class Brush:
    """A ranked unit set of one layer (best first) and where it came from."""

    name: str                 # concept name, or flag:<flag> / label:<note>
    layer: str
    units: tuple[int, ...]
    source: str               # ace | iou | flag
    concept: str | None       # the concept drawn (None for flagged sets)
    score: tuple[float, ...] = ()  # alpha or IoU per unit (empty for flags)
    note: str = ""            # e.g. why IoU-ranked units are used

    def top(self, strength: Strength) -> tuple[int, ...]:
        return self.units[:max(1, min(strength.units, len(self.units)))]


_ACE_SQL = """
SELECT concept, unit, alpha
FROM ace_alpha_latest
WHERE model = $model AND layer = $layer AND alpha > 0
ORDER BY concept, alpha DESC, unit
"""

_DISSECTION_SQL = """
SELECT run_key, segmenter FROM dissections
WHERE model = $model AND layer = $layer AND is_latest
ORDER BY threshold_mode = 'quantile' DESC, finished_at DESC NULLS LAST
LIMIT 1
"""

_IOU_SQL = """
SELECT concept, unit, iou FROM unit_iou
WHERE run_key = $run_key AND model = $model AND layer = $layer AND iou > 0 AND concept <> 'none'
ORDER BY concept, iou DESC, unit
"""

# the paint level of a unit: its 0.99 activation quantile in the dissection the brushes come from, whatever that
# dissection's threshold mode (an iqr run has no level of its own; unit_quantiles holds the fixed GRID levels)
_Q99_SQL = """
SELECT unit, value FROM unit_quantiles
WHERE run_key = $run_key AND model = $model AND layer = $layer AND abs(q - 0.99) < 1e-9
ORDER BY unit
"""

_FLAGS_SQL = """
SELECT CASE WHEN flag = 'label' THEN 'label:' || coalesce(note, '') ELSE 'flag:' || flag END AS brush, unit
FROM unit_flags WHERE model = $model AND layer = $layer
ORDER BY brush, unit
"""

_MOST_INTERPRETABLE_SQL = """
SELECT layer FROM layer_summary WHERE model = $model
ORDER BY threshold_mode = 'quantile' DESC, interpretable_units DESC, layer_index
LIMIT 1
"""

_ACE_LAYER_SQL = """
SELECT a.layer FROM ace_alpha_latest a JOIN runs r USING (run_key)
WHERE a.model = $model AND a.concept = $concept
ORDER BY r.finished_at DESC NULLS LAST, a.layer
LIMIT 1
"""

_FLAG_LAYER_SQL = """
SELECT layer FROM unit_flags
WHERE model = $model AND (CASE WHEN flag = 'label' THEN 'label:' || coalesce(note, '') ELSE 'flag:' || flag END) = $brush
GROUP BY layer ORDER BY count(*) DESC, layer LIMIT 1
"""

_DISSECT_SEGMENTER_SQL = """
SELECT s.segmenter, s.family, s.checkpoint
FROM dissections d LEFT JOIN segmenters s USING (segmenter)
WHERE d.model = $model AND d.is_latest
ORDER BY d.finished_at DESC NULLS LAST
LIMIT 1
"""


def _read(db: str | os.PathLike | None, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        return store.read(sql, params, path=db, missing_ok=True).to_dicts()
    except store.StoreError as e:
        raise EditError(str(e)) from e


@dataclass(frozen=True)
class Catalog:
    """Every brush of one layer of one model, read from the store."""

    model: str
    layer: str
    brushes: dict[str, Brush]
    q99: dict[int, float]          # unit -> 0.99 activation quantile (latest dissection)
    segmenter: str | None          # the dissection's segmenter

    def brush(self, name: str) -> Brush:
        if name in self.brushes:
            return self.brushes[name]
        known = ", ".join(sorted(self.brushes)) or "none (run a dissection of this layer first)"
        raise EditError(f"unknown brush {name!r} for {self.model} {self.layer}; brushes: {known}")


def load_catalog(db: str | os.PathLike | None, model: str, layer: str) -> Catalog:
    """Brushes of `layer`: concepts with ACE units (by α), else with IoU units (by IoU), and flagged sets."""
    p = {"model": model, "layer": layer}
    ace: dict[str, list[tuple[int, float]]] = {}
    for r in _read(db, _ACE_SQL, p):
        ace.setdefault(r["concept"], []).append((int(r["unit"]), float(r["alpha"])))
    d = _read(db, _DISSECTION_SQL, p)
    iou: dict[str, list[tuple[int, float]]] = {}
    q99: dict[int, float] = {}
    segmenter = None
    if d:
        key, segmenter = d[0]["run_key"], d[0]["segmenter"]
        for r in _read(db, _IOU_SQL, {**p, "run_key": key}):
            iou.setdefault(r["concept"], []).append((int(r["unit"]), float(r["iou"])))
        q99 = {int(r["unit"]): float(r["value"]) for r in _read(db, _Q99_SQL, {**p, "run_key": key})}
    brushes: dict[str, Brush] = {}
    for concept in sorted(set(ace) | set(iou)):
        if concept in ace:
            units, score = zip(*ace[concept])
            brushes[concept] = Brush(concept, layer, units, "ace", concept, score)
        else:
            units, score = zip(*iou[concept])
            brushes[concept] = Brush(concept, layer, units, "iou", concept, score,
                                     f"no causal (ACE) units for {concept} in {layer}: using IoU-ranked units")
    flags: dict[str, list[int]] = {}
    for r in _read(db, _FLAGS_SQL, p):
        flags.setdefault(r["brush"], []).append(int(r["unit"]))
    for name, units in flags.items():
        brushes[name] = Brush(name, layer, tuple(units), "flag", None)
    return Catalog(model, layer, brushes, q99, segmenter)


def default_layer(db: str | os.PathLike | None, model: str, brush: str | None = None) -> str:
    """The layer a brush paints at: the layer of the latest ACE run of its concept (the layer with the
    most flagged units, for a flagged set), else the layer with the most interpretable units."""
    if brush and brush.startswith(("flag:", "label:")):
        rows = _read(db, _FLAG_LAYER_SQL, {"model": model, "brush": brush})
    elif brush:
        rows = _read(db, _ACE_LAYER_SQL, {"model": model, "concept": brush})
    else:
        rows = []
    if not rows:
        rows = _read(db, _MOST_INTERPRETABLE_SQL, {"model": model})
    if not rows:
        raise EditError(f"no dissection of {model!r} in the store {store.store_path(db)}: brushes need one "
                        "(run `gandissect run` with a dissect analysis), or name the layer with --layer")
    return rows[0]["layer"]


# ------------------------------------------------------------------------------------ segmentation

PALETTE: dict[str, str] = {
    "none": "#000000", "sky": "#8fc8ff", "cloud": "#f0f0f0", "grass": "#5cb85c", "road": "#9a8f80",
    "building": "#c9a27e", "tree": "#1e6b2e", "watermark": "#ff00ff", "wall": "#e0c080", "roof": "#b03a2e",
    "dome": "#f39c12", "window": "#2e86c1", "door": "#6e2c00", "brick": "#c0504d", "plaster": "#f5e6c8",
}
_FALLBACK = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
             "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3")


def concept_colour(name: str, index: int) -> str:
    return PALETTE.get(name, _FALLBACK[index % len(_FALLBACK)])


def label_map(labels: torch.Tensor) -> torch.Tensor:
    """Label channels [N, L, H, W] (0 = none) -> one label per pixel [N, H, W]: the last non-zero
    channel wins (village: material over part over object)."""
    out = labels[:, 0].clone()
    for c in range(1, labels.shape[1]):
        out = torch.where(labels[:, c] > 0, labels[:, c], out)
    return out


def colorize(labels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """A label map [H, W] (concept indices) -> uint8 [H, W, 3] with the palette."""
    lut = np.array([[int(concept_colour(n, i)[k:k + 2], 16) for k in (1, 3, 5)] for i, n in enumerate(names)],
                   np.uint8)
    return lut[np.asarray(labels)]


# ------------------------------------------------------------------------------------------ engine

def edit_layer(r: torch.Tensor, units: Sequence[int], value: torch.Tensor | float, cells: torch.Tensor,
               layer: str = "?") -> torch.Tensor:
    """r [N, C, h, w] with `units` set to `value` (0.0 or a per-unit [C] tensor) where cells [h, w] is 1."""
    alpha = unit_alpha(list(units), r.shape[1], layer=layer, device=r.device)
    return edit_featuremap(r, alpha, value, cells.to(r.device), layer)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@dataclass(frozen=True)
class Stroke:
    """One edit: a brush, draw or remove, a region (bool [H, W] in image pixels) and a strength."""

    brush: Brush
    action: str
    region: np.ndarray
    strength: Strength

    def describe(self) -> str:
        ys, xs = np.nonzero(self.region)
        box = f"{xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1}" if xs.size else "-"
        return f"{self.action} {self.brush.name} ({self.strength.name}, {len(self.brush.top(self.strength))} " \
               f"units, {self.brush.source}) in {box}"


@dataclass(frozen=True)
class Frame:
    """An image and its segmentation."""

    image: np.ndarray            # uint8 [H, W, 3]
    labels: np.ndarray           # int [H, W]: one concept index per pixel (label_map)
    masks: np.ndarray            # bool [K, H, W]: every concept's mask
    names: tuple[str, ...]       # concept names, index 0 = none

    @property
    def fractions(self) -> dict[str, float]:
        """Share of the image's pixels labelled with each concept (none excluded)."""
        share = self.masks.reshape(self.masks.shape[0], -1).mean(1)
        return {n: float(share[i]) for i, n in enumerate(self.names) if i > 0}

    @property
    def pixels(self) -> dict[str, int]:
        count = self.masks.reshape(self.masks.shape[0], -1).sum(1)
        return {n: int(count[i]) for i, n in enumerate(self.names) if i > 0}

    def segmentation(self) -> np.ndarray:
        return colorize(self.labels, self.names)


@dataclass(frozen=True)
class EditResult:
    """The frames before and after one stroke and the time it took (edited layer to image + segmentation)."""

    before: Frame
    after: Frame
    ms: float
    stroke: Stroke | None = None

    def change(self) -> dict[str, int]:
        """Concept pixel count after minus before (only concepts that changed)."""
        b, a = self.before.pixels, self.after.pixels
        return {n: a[n] - b[n] for n in b if a[n] != b[n]}

    def summary(self) -> dict[str, Any]:
        return {"before": self.before.fractions, "after": self.after.fractions, "ms": round(self.ms, 3)}


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch intra-op threads set to n for the block (a single 64 px image gains nothing from more)."""
    if not n or n == torch.get_num_threads():
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Painter:
    """A generator, a segmenter, one edited layer and its brushes: makes sessions and strokes."""

    def __init__(self, gen: torch.nn.Module, seg: Any, layer: str, catalog: Catalog | None = None,
                 device: torch.device | str = "cpu", value: str = "q99", threads: int | None = 1,
                 constants_samples: int = 128, constants_seed: int = 1) -> None:
        if value not in VALUE_MODES:
            raise EditError(f"unknown draw value {value!r}: use {' or '.join(VALUE_MODES)}")
        names = dict(gen.named_modules())
        if layer not in names or layer == "":
            raise EditError(f"unknown layer {layer!r}; layers: {', '.join(getattr(gen, 'layers', []))}")
        torch.broadcast_shapes((1,), (1,))  # its first call imports torch._refs (seconds): not in the first edit
        self.gen, self.seg, self.layer = gen.eval(), seg.eval(), layer
        self.device = torch.device(device)
        self.catalog = catalog or Catalog("?", layer, {}, {}, None)
        self.value_mode, self.threads = value, threads
        self.names: tuple[str, ...] = tuple(c.name for c in seg.concepts)
        self.resolution = int(gen.resolution)
        self.z_dim = int(gen.z_dim)
        self._constants_n, self._constants_seed = constants_samples, constants_seed
        self._k: torch.Tensor | None = None
        self.lock = threading.Lock()  # one forward pass at a time: sessions of several users share the modules

    # -- brushes and strokes
    def brush(self, name: str) -> Brush:
        return self.catalog.brush(name)

    def stroke(self, brush: str | Brush, action: str, region: np.ndarray | Sequence[int] | str,
               strength: str | float | Strength = "high") -> Stroke:
        """A validated stroke (raises EditError on a bad action, brush, region or strength)."""
        if action not in ACTIONS:
            raise EditError(f"unknown action {action!r}: use draw or remove")
        b = brush if isinstance(brush, Brush) else self.brush(brush)
        if b.layer != self.layer:
            raise EditError(f"brush {b.name!r} paints at {b.layer}, this painter edits {self.layer}")
        if not b.units:
            raise EditError(f"brush {b.name!r} has no units")
        s = resolve_strength(strength)
        if action == "draw" and b.concept is None and not self.catalog.q99:
            raise EditError(f"brush {b.name!r} is a flagged unit set without activation quantiles: it can only remove")
        return Stroke(b, action, _region_array(region, self.resolution), s)

    # -- values
    def constants(self) -> torch.Tensor:
        """Insertion constants k [K, C] of this layer (computed once, from `constants_samples` samples)."""
        if self._k is None:
            z = latents(self._constants_seed, self._constants_n, self.z_dim).to(self.device)
            self._k = insertion_constants(self.gen, self.seg, self.layer, z)
        return self._k

    def value(self, stroke: Stroke, units: int) -> torch.Tensor | float:
        """The per-unit value [C] the stroke forces its units to (0.0 to remove)."""
        if stroke.action == "remove":
            return 0.0
        b = stroke.brush
        if self.value_mode == "k" and b.concept is not None:
            k = self.constants()[self.names.index(b.concept)]
            if bool(torch.isnan(k).any()):
                raise EditError(f"{b.concept} never appears in the {self._constants_n} samples used for its "
                                "insertion constant: draw it with the q99 value")
            return k.to(self.device) * stroke.strength.scale
        if not self.catalog.q99:
            raise EditError(f"no activation quantiles for {self.layer} in the store: draw needs a dissection")
        v = torch.zeros(units, device=self.device)
        for u, q in self.catalog.q99.items():
            if 0 <= u < units:
                v[u] = q
        return v * stroke.strength.scale

    # -- sessions
    def session(self, seed: int | None = None, sample: int | None = None, z: torch.Tensor | None = None
                ) -> "PaintSession":
        """A paint session on sample `sample` of seed `seed` (or on the latent z [1, z_dim])."""
        if z is None:
            if seed is None or sample is None or int(sample) < 0:
                raise EditError("a session needs a seed and a sample index >= 0 (or a latent)")
            z = latents(int(seed), 1, self.z_dim, start=int(sample))
        return PaintSession(self, z.to(self.device))

    def frame(self, r: torch.Tensor, z: torch.Tensor) -> Frame:
        """Render a featuremap [1, C, h, w] of the edited layer of the latent z [1, z_dim]: image and segmentation."""
        with torch.no_grad():
            images = finish(self.gen, self.layer, r, z)
            labels = self.seg.segment(images)
            masks = _masks(labels, len(self.names))
        return Frame(to_uint8(images)[0], label_map(labels)[0].cpu().numpy(), masks[0].cpu().numpy(), self.names)


def _masks(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Label channels [N, L, H, W] -> bool [N, K, H, W] (mask 0: no label in the first channel)."""
    masks = torch.zeros(labels.shape[0], k, *labels.shape[2:], dtype=torch.bool, device=labels.device)
    for c in range(labels.shape[1]):
        onehot = torch.zeros_like(masks).scatter_(1, labels[:, c:c + 1].clamp(0, k - 1), True)
        if c > 0:
            onehot[:, 0] = False
        masks |= onehot
    return masks


@dataclass
class _Level:
    stroke: Stroke
    r: torch.Tensor   # featuremap after the stroke [1, C, h, w]
    frame: Frame


class PaintSession:
    """One sample being painted: the edit stack with undo / redo / reset."""

    def __init__(self, painter: Painter, z: torch.Tensor) -> None:
        self.painter = painter
        self.z = z
        with painter.lock, _threads(painter.threads):
            self.r0 = featuremap(painter.gen, painter.layer, z)  # the generator below the layer runs once
            self.original = painter.frame(self.r0, z)
        self._stack: list[_Level] = []
        self._redo: list[_Level] = []
        self.last: EditResult | None = None

    @property
    def strokes(self) -> list[Stroke]:
        return [lv.stroke for lv in self._stack]

    @property
    def current(self) -> Frame:
        return self._stack[-1].frame if self._stack else self.original

    @property
    def featuremap(self) -> torch.Tensor:
        return self._stack[-1].r if self._stack else self.r0

    @property
    def can_undo(self) -> bool:
        return bool(self._stack)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def undone(self) -> int:
        """Strokes that redo can bring back."""
        return len(self._redo)

    def apply(self, stroke: Stroke) -> EditResult:
        """Edit the current featuremap with the stroke; push it (clearing redo). Stack intact on error."""
        p = self.painter
        if stroke.brush.layer != p.layer:
            raise EditError(f"brush {stroke.brush.name!r} paints at {stroke.brush.layer}, not {p.layer}")
        if stroke.region.shape != (p.resolution, p.resolution):
            raise EditError(f"region mask of shape {stroke.region.shape} does not fit the "
                            f"{p.resolution}x{p.resolution} image")
        before = self.current
        r = self.featuremap
        units = stroke.brush.top(stroke.strength)
        if max(units) >= r.shape[1]:
            raise EditError(f"brush {stroke.brush.name!r} names unit {max(units)}, but {p.layer} has {r.shape[1]} units")
        t0 = time.perf_counter()
        with p.lock, _threads(p.threads):
            value = p.value(stroke, r.shape[1])
            cells = cell_mask(stroke.region, r.shape[2], r.shape[3])
            edited = edit_layer(r, units, value, cells, p.layer)
            frame = p.frame(edited, self.z)
        ms = (time.perf_counter() - t0) * 1000
        self._stack.append(_Level(stroke, edited, frame))
        self._redo.clear()
        self.last = EditResult(before, frame, ms, stroke)
        return self.last

    def undo(self) -> bool:
        """Take back the last stroke; False when there is none."""
        if not self._stack:
            return False
        self._redo.append(self._stack.pop())
        self.last = None
        return True

    def redo(self) -> bool:
        """Re-apply the last undone stroke; False when there is none."""
        if not self._redo:
            return False
        self._stack.append(self._redo.pop())
        self.last = None
        return True

    def reset(self) -> None:
        """Back to the original image; nothing to redo."""
        self._stack.clear()
        self._redo.clear()
        self.last = None


# ------------------------------------------------------------------------------------------- loading

def _spec_or_none(spec: str | os.PathLike | None) -> str | None:
    """The spec that declares the models: `spec`, else $GANDISSECT_SPEC (`gandissect dashboard --spec`
    sets it), else the default spec; None when that file does not exist."""
    if spec is None:
        from compute.spec import DEFAULT_SPEC

        spec = os.environ.get("GANDISSECT_SPEC") or DEFAULT_SPEC
    return str(spec) if Path(spec).exists() else None


@functools.lru_cache(maxsize=8)
def _segmenter_cached(name: str, family: str | None, checkpoint: str | None, spec: str | None,
                      device: str) -> Any:
    from compute.spec import SegmenterSpec
    from ingest import zoo

    try:
        return zoo.load_segmenter(name, spec, device)
    except zoo.ZooError:
        if not (family and checkpoint):
            raise
    return zoo.load_segmenter_spec(SegmenterSpec(name, family, checkpoint), device)


def load_models(model: str, db: str | os.PathLike | None = None, spec: str | os.PathLike | None = None,
                device: torch.device | str = "cpu") -> tuple[torch.nn.Module, Any]:
    """The generator (the store's `models` row, its loader options from the spec when the family needs
    them; else the spec's entry or the bundled zoo) and the segmenter of the model's latest dissection
    (spec, bundled zoo or the store's `segmenters` row; else village-seg). The spec is `spec`, else
    $GANDISSECT_SPEC, else the default spec: `gandissect edit --spec S` and the Paint page of
    `gandissect dashboard --spec S` load every model S declares (any family).

    The generator is this caller's own copy: the hooks painting puts on it never reach other users of
    the process-wide cached one (the dashboard's image pages)."""
    from compute import images
    from ingest import zoo

    spec_path = _spec_or_none(spec)
    known = _read(db, "SELECT model FROM models WHERE model = $model", {"model": model})
    try:
        if known:
            gen = copy.deepcopy(images.load_generator(model, db, device, spec_path))  # our hooks never meet other pages'
        else:
            gen = zoo.load_generator(model, spec_path, device).eval().requires_grad_(False)
    except (images.ImageError, zoo.ZooError) as e:
        raise EditError(f"cannot load model {model!r}: {e}") from e
    rows = _read(db, _DISSECT_SEGMENTER_SQL, {"model": model})
    name, family, ckpt = (rows[0]["segmenter"], rows[0]["family"], rows[0]["checkpoint"]) if rows and \
        rows[0]["segmenter"] else ("village-seg", None, None)
    try:
        seg = _segmenter_cached(name, family, ckpt, spec_path, str(device))
    except zoo.ZooError as e:
        raise EditError(f"cannot load segmenter {name!r}: {e}") from e
    return gen, seg.requires_grad_(False)


def open_painter(model: str, db: str | os.PathLike | None = None, layer: str | None = None,
                 brush: str | None = None, spec: str | os.PathLike | None = None,
                 device: torch.device | str = "cpu", value: str = "q99", threads: int | None = 1) -> Painter:
    """A Painter for `model` at `layer` (default: the brush's layer, see `default_layer`) with the store's brushes."""
    layer = layer or default_layer(db, model, brush)
    gen, seg = load_models(model, db, spec, device)
    if layer not in getattr(gen, "layers", [layer]):
        raise EditError(f"{model} has no layer {layer!r}; layers: {', '.join(gen.layers)}")
    return Painter(gen, seg, layer, load_catalog(db, model, layer), device, value, threads)


def edit_once(model: str, seed: int, sample: int, brush: str, action: str, region: str | Sequence[int],
              strength: str | float = "high", layer: str | None = None, db: str | os.PathLike | None = None,
              spec: str | os.PathLike | None = None, device: torch.device | str = "cpu",
              value: str = "q99", notes: list[str] | None = None) -> EditResult:
    """One stroke on one sample (the CLI's `edit`): the result holds the frames before and after.

    Notes for the user (e.g. that IoU-ranked units stand in for causal ones) are appended to `notes`.
    """
    painter = open_painter(model, db, layer, brush, spec, device, value)
    stroke = painter.stroke(brush, action, region, strength)
    if stroke.brush.note and notes is not None:
        notes.append(stroke.brush.note)
    return painter.session(seed, sample).apply(stroke)


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _check_out(out: str) -> None:
    """--out must be a new or existing .png file in an existing, writable directory."""
    p = Path(out)
    if p.is_dir():
        raise EditError(f"--out {out} is a directory: give a .png file path")
    if p.suffix.lower() != ".png":
        raise EditError(f"--out {out}: the edited image is written as PNG, give a path ending in .png")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise EditError(f"--out {out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise EditError(f"--out {out}: not writable")


def cmd_edit(a: argparse.Namespace, db: str) -> int:
    """`gandissect edit`: one stroke, the PNG written to --out, a summary (or --json) on stdout."""
    from compute.analyses.params import MAX_SAMPLES, MAX_SEED

    # every argument checked before anything loads or computes (bad input: exit 2, nothing written)
    if not (0 <= a.seed <= MAX_SEED and 0 <= a.sample < MAX_SAMPLES):
        raise EditError(f"--seed must be in [0, 2**63 - 1] and --sample in [0, {MAX_SAMPLES:,}) "
                        f"(got {a.seed}, {a.sample})")
    x0, y0, x1, y1 = parse_region(a.region)
    if x1 <= x0 or y1 <= y0:
        raise EditError(f"region {x0},{y0},{x1},{y1} is empty: need x0 < x1 and y0 < y1 (x1, y1 exclusive)")
    if x0 < 0 or y0 < 0:
        raise EditError(f"region {x0},{y0},{x1},{y1} lies outside the image: x0 and y0 must be >= 0")
    resolve_strength(a.strength)
    _check_out(a.out)
    notes: list[str] = []
    res = edit_once(a.model, a.seed, a.sample, a.brush, a.action, a.region, a.strength, a.layer, db, a.spec,
                    a.device, notes=notes)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    save_png(res.after.image, a.out)
    if a.json:
        print(json.dumps(res.summary()))
    else:
        changes = ", ".join(f"{c} {res.before.fractions[c]:.1%} -> {res.after.fractions[c]:.1%}"
                            for c in res.change()) or "no concept changed"
        print(f"{res.stroke.describe() if res.stroke else ''} at {res.stroke.brush.layer if res.stroke else ''}: "
              f"{changes} ({res.ms:.1f} ms); wrote {a.out}")
    return 0


# --------------------------------------------------------------------------------------------- bench

def _bundled_paths() -> tuple[Path, Path, str]:
    from ingest.zoo import BUNDLED_GENERATORS, BUNDLED_SEGMENTERS, ZOO_DIR

    gen = BUNDLED_GENERATORS["village-gan"]
    name = "village-gan"
    if not gen.exists():  # still training: the newest checkpoint
        steps = sorted(ZOO_DIR.glob("village-gan-step*.safetensors"),
                       key=lambda p: int(p.stem.rsplit("step", 1)[1]))
        if not steps:
            raise FileNotFoundError(f"no village-gan weights in {ZOO_DIR}")
        gen, name = steps[-1], steps[-1].stem
    return gen, BUNDLED_SEGMENTERS["village-seg"], name


def bench_edit(device: torch.device | str = "cpu", layer: str | None = None, repeats: int = 40,
               warmup: int = 5, threads: int | None = 1) -> list[dict[str, Any]]:
    """Milliseconds of one paint edit (edited layer to image + segmentation) on the bundled village-gan:
    rows {metric: median_ms | p95_ms, value, unit: "ms", params} for the `benchmarks` table.

    The edit removes the layer's first 20 units over a 24 x 24 px box of sample 0 of seed 1 (the cost
    does not depend on which units); `layer` defaults to the middle dissectable layer."""
    from ingest.models.progan import load_progan
    from ingest.models.village_seg import load_village_seg

    device = torch.device(device)
    gpath, spath, gname = _bundled_paths()
    gen = load_progan(str(gpath), device).eval().requires_grad_(False)
    seg = load_village_seg(str(spath), device).eval().requires_grad_(False)
    layer = layer or gen.layers[len(gen.layers) // 2]
    with _threads(threads):
        r = featuremap(gen, layer, latents(1, 1, int(gen.z_dim)).to(device))
    units = tuple(range(min(20, r.shape[1])))
    brush = Brush("bench", layer, units, "flag", None)
    painter = Painter(gen, seg, layer, Catalog("bench", layer, {"bench": brush}, {}, "village-seg"), device,
                      threads=threads)
    session = painter.session(seed=1, sample=0)
    stroke = painter.stroke("bench", "remove", (20, 20, 44, 44), "high")
    times = []
    for i in range(warmup + repeats):
        session.reset()
        res = session.apply(stroke)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(res.ms)
    params = json.dumps({"device": str(device), "threads": threads or torch.get_num_threads(),
                         "generator": gname, "segmenter": "village-seg", "layer": layer, "units": len(units),
                         "repeats": repeats, "resolution": int(gen.resolution)})
    return [{"bench": "edit", "metric": "median_ms", "value": float(np.median(times)), "unit": "ms", "params": params},
            {"bench": "edit", "metric": "p95_ms", "value": float(np.percentile(times, 95)), "unit": "ms",
             "params": params}]

