"""GANPaint's bars, measured: remove-tree and draw-door over many generated samples.

Reads a store with a dissection (and ACE, for alpha-ranked brushes) of the bundled village-gan, or
builds one (`build_eval_store`: dissection + ACE for tree and door at layer6, minutes of CPU); writes
nothing but that store. `evaluate` opens two painters (`compute.paint.engine.open_painter`) and reports, per
bar, the share of samples where removing a tree's box removes at least half of it, and where drawing
a door on a wall (vs the sky) adds a door.

    python -m compute.paint.evaluate --evaluate --store-dir runs/paint-eval   # builds the store, then measures
    python -m compute.paint.evaluate --evaluate --db gandissect.duckdb        # on an existing store
    python -m compute.paint.evaluate --bench       # median / p95 ms of one edit (engine.bench_edit)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from compute.paint.engine import VALUE_MODES, Painter, _bundled_paths, bench_edit, open_painter

MIN_TREE_PX = 30      # a tree: a connected tree component of at least this many pixels
DOOR_BOX = 8          # side of the square painted with the door brush (px)
FULL = 0.9            # share of the square the context (wall / sky) must cover
MIN_DOOR_PX = 8       # new door pixels that count as "a door was added"


def _largest_component(mask: np.ndarray) -> np.ndarray | None:
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    k = int(np.argmax(sizes)) + 1
    return lab == k if sizes[k - 1] >= MIN_TREE_PX else None


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _full_box(mask: np.ndarray, side: int, rng: np.random.Generator, base: bool = False
              ) -> tuple[int, int, int, int] | None:
    """A random side x side box covered at least FULL by mask (None if there is none); with `base`, one
    that stands on the mask's lower edge (the row below it is mostly outside the mask, or the image ends)."""
    c = np.pad(mask.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    cover = (c[side:, side:] - c[:-side, side:] - c[side:, :-side] + c[:-side, :-side]) / (side * side)
    ok = cover >= FULL
    if base:
        row = np.pad(mask.astype(np.int32).cumsum(1), ((0, 1), (1, 0)))  # row sums; an extra empty row below
        below = (row[side:, side:] - row[side:, :-side]) / side  # share of mask in the row under each box
        ok &= below < 0.5
    ys, xs = np.nonzero(ok)
    if ys.size == 0:
        return None
    i = int(rng.integers(ys.size))
    return int(xs[i]), int(ys[i]), int(xs[i]) + side, int(ys[i]) + side


def evaluate_remove_tree(painter: Painter, seed: int, n: int, strength: str, max_samples: int) -> dict[str, Any]:
    """Remove-tree strokes over the bounding box of each sample's largest tree: share of its pixels removed."""
    t = painter.names.index("tree")
    removed, samples = [], []
    for i in range(max_samples):
        if len(removed) == n:
            break
        s = painter.session(seed, i)
        tree = _largest_component(s.original.masks[t])
        if tree is None:
            continue
        after = s.apply(painter.stroke("tree", "remove", _bbox(tree), strength)).after.masks[t]
        removed.append(1.0 - float((after & tree).sum()) / float(tree.sum()))
        samples.append(i)
    r = np.array(removed)
    return {"layer": painter.layer, "brush": painter.brush("tree").source, "strength": strength,
            "samples_with_tree": len(r), "samples_looked_at": i + 1 if removed else 0,
            "rate_half_removed": float((r >= 0.5).mean()) if r.size else None,
            "median_removed": float(np.median(r)) if r.size else None, "bar": 0.7,
            "passes": bool(r.size >= n and (r >= 0.5).mean() >= 0.7)}


def evaluate_draw_door(painter: Painter, seed: int, n: int, strength: str, max_samples: int) -> dict[str, Any]:
    """The same draw-door stroke (a DOOR_BOX square) on a wall and on the sky of each sample with both; also
    on the base of a wall (a box standing on the wall's lower edge, where the village world puts doors)."""
    d, wall, sky = (painter.names.index(c) for c in ("door", "wall", "sky"))
    added: dict[str, list[int]] = {"wall": [], "sky": [], "wall_base": []}
    rngs = {where: np.random.default_rng([seed, j]) for j, where in enumerate(added)}  # one stream per place
    i = 0
    for i in range(max_samples):
        if len(added["wall"]) == n:
            break
        s = painter.session(seed, i)
        boxes = {"wall": _full_box(s.original.masks[wall], DOOR_BOX, rngs["wall"]),
                 "sky": _full_box(s.original.masks[sky], DOOR_BOX, rngs["sky"]),
                 "wall_base": _full_box(s.original.masks[wall], DOOR_BOX, rngs["wall_base"], base=True)}
        if boxes["wall"] is None or boxes["sky"] is None:
            continue
        for where, box in boxes.items():
            if box is None:
                continue
            s.reset()
            res = s.apply(painter.stroke("door", "draw", box, strength))
            added[where].append(int((res.after.masks[d] & ~res.before.masks[d]).sum()))
    out: dict[str, Any] = {"layer": painter.layer, "brush": painter.brush("door").source, "strength": strength,
                           "value": painter.value_mode, "box": DOOR_BOX, "min_new_door_px": MIN_DOOR_PX,
                           "samples_with_wall_and_sky": len(added["wall"]), "samples_looked_at": i + 1,
                           "samples_with_wall_base": len(added["wall_base"])}
    for where, a in added.items():
        arr = np.array(a)
        out[f"{where}_rate"] = float((arr >= MIN_DOOR_PX).mean()) if arr.size else None
        out[f"{where}_mean_new_px"] = float(arr.mean()) if arr.size else None
    return out


def evaluate(model: str, db: str | os.PathLike | None = None, spec: str | os.PathLike | None = None,
             device: torch.device | str = "cpu", seed: int = 7, n: int = 50, strength: str = "high",
             value: str = "q99", tree_layer: str | None = None, door_layer: str | None = None,
             max_samples: int = 1000) -> dict[str, Any]:
    """The issue's bars on `model`: remove tree (>= half of the tree's pixels in >= 70 % of n samples) and
    draw door on a wall vs on the sky. Samples come from seed `seed` (not the dissection's)."""
    t0 = time.perf_counter()
    tree = open_painter(model, db, tree_layer, "tree", spec, device, value)
    door = open_painter(model, db, door_layer, "door", spec, device, value)
    out = {"model": model, "seed": seed,
           "remove_tree": evaluate_remove_tree(tree, seed, n, strength, max_samples),
           "draw_door": evaluate_draw_door(door, seed, n, strength, max_samples)}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


EVAL_LAYER = "layer6"  # the bundled village-gan's layer with the most interpretable units


def eval_spec_text(store_path: Path, ace: bool = True) -> str:
    """The spec of the evaluation store: a q0.99 dissection of every layer of the bundled village-gan
    (300 samples of seed 1) and, with `ace`, an ACE run for tree and door at EVAL_LAYER (200 samples)."""
    gen, seg, _ = _bundled_paths()
    text = f"""# written by `python -m compute.paint.evaluate --evaluate --store-dir ...`
[store]
path = "{store_path}"

[[models]]
name = "village-gan"
family = "progan"
checkpoint = "{gen}"
dataset = "village"

[[segmenters]]
name = "village-seg"
family = "village"
checkpoint = "{seg}"

[[analyses]]
name = "paint-dissect"
kind = "dissect"
models = ["village-gan"]
layers = "all"
segmenter = "village-seg"
samples = 300
seed = 1
threshold = "q0.99"
"""
    if ace:
        text += f"""
[[analyses]]
name = "paint-ace"
kind = "ace"
models = ["village-gan"]
segmenter = "village-seg"
layers = ["{EVAL_LAYER}"]
samples = 200
seed = 1
concepts = ["tree", "door"]
epochs = 8
steps_per_epoch = 8
batch = 24
lr = 0.03
l2 = 0.1
presence = 0.1
probe = 4
eval_items = 64
batch_size = 32
"""
    return text


def build_eval_store(directory: str | os.PathLike, ace: bool = True) -> Path:
    """Write the evaluation spec into `directory` and materialise it (`gandissect run`: nothing is
    recomputed when its runs are done); returns the store path."""
    from compute import runner, spec as specmod

    d = Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    path = d / "paint-eval.toml"
    path.write_text(eval_spec_text(d / "paint-eval.duckdb", ace))
    with contextlib.chdir(d):  # the runs' .cache/ goes beside the spec
        out = runner.run(specmod.load(path), device="cpu")
    failed = [o.error for o in out if o.state == "failed"]
    if failed:
        raise RuntimeError(f"building the evaluation store failed: {failed[0]}")
    return d / "paint-eval.duckdb"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compute.paint.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--evaluate", action="store_true", help="measure the remove-tree and draw-door bars")
    p.add_argument("--bench", action="store_true", help="bench_edit: median / p95 ms of one edit")
    p.add_argument("--model", default="village-gan")
    p.add_argument("--db", help="store path (default $GANDISSECT_DB, else gandissect.duckdb)")
    p.add_argument("--spec", default=None)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--strength", default="high")
    p.add_argument("--value", default="q99", choices=VALUE_MODES)
    p.add_argument("--tree-layer")
    p.add_argument("--door-layer")
    p.add_argument("--layer", help="bench: the edited layer")
    p.add_argument("--out", help="also write the JSON report here")
    p.add_argument("--store-dir", help="build the evaluation store here first (dissection + ACE for tree and "
                                       "door on the bundled village-gan; minutes of CPU) and use it")
    p.add_argument("--no-ace", action="store_true", help="with --store-dir: dissection only (IoU-ranked brushes)")
    a = p.parse_args(argv)
    if not (a.evaluate or a.bench):
        p.error("give --evaluate or --bench")
    report: dict[str, Any] = {}
    if a.bench:
        report["bench_edit"] = bench_edit("cpu", a.layer)
    if a.evaluate:
        if a.store_dir:
            a.db = str(build_eval_store(a.store_dir, ace=not a.no_ace))
        report["evaluate"] = evaluate(a.model, a.db, a.spec, "cpu", a.seed, a.n, a.strength, a.value,
                                      a.tree_layer, a.door_layer)
    text = json.dumps(report, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
