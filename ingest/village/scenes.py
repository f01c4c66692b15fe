"""Scene classes of the village world: the one place that states the rules.

Reads the village renderer; writes nothing. A scene's class follows from what it *visibly contains*
(its exact label maps), by the first rule that matches, in this order:

| class | rule (visible pixels of the rendered scene) |
|---|---|
| `church_square` | a domed building: at least `MIN_PIXELS` dome pixels |
| `town_street`   | no dome; a road: at least `MIN_PIXELS` road pixels |
| `farm`          | no dome, no road; trees: at least `MIN_PIXELS` tree pixels |
| `hamlet`        | none of the above: roofed buildings on open grass, no road, no tree |

Every scene has exactly one class (the rules partition the world), so a classifier is defined on
any rendered scene; to tell the classes apart a network must find domes, roads and trees — colour
alone is not enough (roofs and autumn trees share hues, roads and plaster walls too).
In the natural distribution of scenes about 66 % are church squares (each building is domed with
probability 0.45), 17 % town streets, 14 % farms and 3 % hamlets, so labelled splits are *balanced*
by rejection: seeds are scanned in order from a split's first seed and a scene is kept while its
class still needs examples (`balanced_split`). A cheap layout pass (`layout_class`, no drawing)
skips scenes of full classes before rendering; the kept scene's class is always the rendered one.

Splits: training scenes scan seeds from `TRAIN_SEED_START`; held-out scenes (the model card, unit
roles) from `HELDOUT_SEED_START`, far from every training pool of the project.

    python -m ingest.village.scenes          # class frequencies of 2000 natural scenes
"""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.village.render import Scene, _layout, render

CLASSES: tuple[str, ...] = ("church_square", "town_street", "farm", "hamlet")
RULES: tuple[tuple[str, str | None], ...] = (  # (class, the concept whose presence decides it), in order
    ("church_square", "dome"), ("town_street", "road"), ("farm", "tree"), ("hamlet", None))
MIN_PIXELS = 12  # visible pixels (of 64 x 64) for a concept to count as present
TRAIN_SEED_START = 0
HELDOUT_SEED_START = 30_000_000  # disjoint from training (< 10^6 scanned) and from village-seg's 20_000_000..
POOL_DIR = Path(__file__).resolve().parents[2] / ".cache" / "village-cls"  # rendered splits (load_split)
_RENDER_SALT = 0x7111A6E  # render()'s seeding (checked by a test against render's own contents)


def class_of_labels(labels: dict[str, np.ndarray], min_pixels: int = MIN_PIXELS) -> int:
    """Class index of a scene from its label masks (concept name -> bool [H, W])."""
    for k, (_, concept) in enumerate(RULES):
        if concept is None or int(labels[concept].sum()) >= min_pixels:
            return k
    raise AssertionError("unreachable: the last rule matches every scene")


def scene_class(scene: Scene) -> int:
    """Class index of a rendered scene."""
    return class_of_labels(scene.labels)


def layout_class(seed: int, size: int = 64) -> int:
    """The class a scene's layout implies (no drawing; ~20x faster than render). It differs from the
    rendered class only when a dome, road or tree is hidden (e.g. a dome behind a tree)."""
    lay = _layout(np.random.default_rng([int(seed), _RENDER_SALT]), size)
    present = {"dome": any(b["top"] == "dome" for b in lay["buildings"]), "road": lay["road"] is not None,
               "tree": len(lay["trees"]) > 0}
    for k, (_, concept) in enumerate(RULES):
        if concept is None or present[concept]:
            return k
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Split:
    """A labelled, class-balanced set of scenes: seeds [N] and class indices [N] (class-major order)."""

    seeds: np.ndarray  # int64 [N]
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return int(self.seeds.shape[0])


def balanced_split(start: int, per_class: int, size: int = 64) -> Split:
    """The first `per_class` scenes of each class among seeds start, start+1, ... (deterministic)."""
    chosen: list[list[int]] = [[] for _ in CLASSES]
    seed = start
    while min(len(c) for c in chosen) < per_class:
        if len(chosen[layout_class(seed, size)]) < per_class:
            k = scene_class(render(seed, size=size))
            if len(chosen[k]) < per_class:
                chosen[k].append(seed)
        seed += 1
    seeds = np.array([s for c in chosen for s in c], np.int64)
    labels = np.array([k for k, c in enumerate(chosen) for _ in c], np.int64)
    return Split(seeds, labels)


def render_images(seeds: np.ndarray | list[int], size: int = 64) -> np.ndarray:
    """uint8 [N, H, W, 3] images of the given scene seeds."""
    return np.stack([render(int(s), size=size).image for s in seeds]) if len(seeds) else \
        np.zeros((0, size, size, 3), np.uint8)


def world_hash() -> str:
    """Short hash of the village world's source (renderer + scene rules): a change invalidates pools."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def load_split(start: int, per_class: int, pool_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [N, 64, 64, 3], labels int64 [N], seeds int64 [N]) of a balanced split, cached as .npz."""
    path = Path(pool_dir) / f"split-{start}-{per_class}-{world_hash()}.npz" if pool_dir else None
    if path is not None and path.exists():
        with np.load(path) as z:
            return z["images"], z["labels"], z["seeds"]
    t0 = time.time()
    split = balanced_split(start, per_class)
    images = render_images(split.seeds)
    print(f"rendered {len(split)} scenes ({per_class} per class from seed {start}; last seed "
          f"{int(split.seeds.max())}) in {time.time() - t0:.1f}s", flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, labels=split.labels, seeds=split.seeds)
        tmp.replace(path)
    return images, split.labels, split.seeds


def frequencies(n: int, start: int = HELDOUT_SEED_START) -> dict[str, float]:
    """Share of each class among n natural scenes (seeds start..start+n-1)."""
    counts = np.bincount([scene_class(render(s)) for s in range(start, start + n)], minlength=len(CLASSES))
    return {c: float(counts[k]) / n for k, c in enumerate(CLASSES)}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    for name, share in frequencies(n).items():
        print(f"{name:14s} {100 * share:5.1f} %")
