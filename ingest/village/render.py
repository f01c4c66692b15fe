"""The village world's renderer: procedural outdoor scenes with exact per-pixel labels.

Reads nothing, writes nothing. `render(seed)` draws one scene (deterministic per seed) at an
internal resolution `SCALE` times larger than the output, then box-filters the colours and takes
labels by majority, so edges are anti-aliased and labels stay exact. `render_batch(seeds)` stacks
scenes into arrays for training. Run `python -m ingest.village.render OUT.png` for a sample grid.

World rules (issue 9, DESIGN.md "The village world"):
- sky above a random horizon (vertical gradient, colour variation); clouds only in the sky;
- textured grass below the horizon; optionally a road on the ground leading to a door;
- 1-3 buildings standing on the ground, side by side; a wall of brick or plaster, a roof
  (triangle) or dome (half disc) on top, a grid of windows above door height and exactly one door
  at the bottom edge of the wall; walls, windows and doors are aligned to the output pixel grid;
- 0-4 trees (trunk + irregular canopy) standing on the ground, drawn in front of buildings;
  `render(seed, trees=False)` is the same scene without them;
- about 15 % of images carry a semi-transparent watermark (text or banner).

Label precedence for objects: watermark > tree > cloud/building/road > sky/grass. Parts exist only
on building pixels (wall/roof/dome/window/door), materials (brick/plaster) only on wall pixels.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ingest.village.concepts import CONCEPTS, INDEX, names_in

SCALE = 3  # internal supersampling factor
WATERMARK_RATE = 0.15

OBJ = {n: INDEX[n] for n in names_in("object")}
PART = {n: INDEX[n] for n in names_in("part")}
MAT = {n: INDEX[n] for n in names_in("material")}
# majority ties are broken in favour of the higher rank (precedence)
_OBJ_RANK = {0: 0, OBJ["sky"]: 1, OBJ["grass"]: 2, OBJ["road"]: 3, OBJ["cloud"]: 4,
             OBJ["building"]: 5, OBJ["tree"]: 6, OBJ["watermark"]: 7}

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in output pixels, half-open


@dataclass
class Building:
    box: Box          # whole building (wall + roof/dome), output pixels
    wall: Box
    door: Box
    windows: list[Box]
    top: str          # "roof" | "dome"
    material: str     # "brick" | "plaster"


@dataclass
class Scene:
    """One rendered scene. `label_maps` is uint8 [3, H, W] (object, part, material indices)."""
    seed: int
    image: np.ndarray            # uint8 [H, W, 3]
    label_maps: np.ndarray       # uint8 [3, H, W]
    horizon: int                 # first ground row (output pixels)
    buildings: list[Building]
    trees: list[Box]             # whole trees (trunk + canopy; may reach past the image), output px
    road: bool
    has_watermark: bool
    tree_cover: np.ndarray       # float32 [H, W]: fraction of each pixel covered by trees
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # name -> bool [H, W]


# ---------------------------------------------------------------- scene layout (output pixels)

def _layout(rng: np.random.Generator, size: int) -> dict:
    """Sample every random choice of a scene, in a fixed order (independent of `trees`)."""
    u = size / 64.0
    lay: dict = {}
    lay["horizon"] = int(rng.integers(int(20 * u), int(40 * u) + 1))
    lay["light"] = float(rng.uniform(0.78, 1.12))
    lay["tint"] = rng.uniform(-0.04, 0.04, 3)
    lay["sky_top"] = np.array([rng.uniform(0.15, 0.45), rng.uniform(0.40, 0.65), rng.uniform(0.80, 1.0)])
    lay["sky_hz"] = np.clip(lay["sky_top"] + np.array([rng.uniform(0.25, 0.6), rng.uniform(0.2, 0.35),
                                                      rng.uniform(-0.05, 0.05)]), 0, 1)
    lay["grass"] = np.array([rng.uniform(0.30, 0.55), rng.uniform(0.58, 0.78), rng.uniform(0.12, 0.30)])
    hz = lay["horizon"]

    clouds = []
    for _ in range(int(rng.integers(0, 4))):
        w = rng.uniform(10, 22) * u
        h = rng.uniform(4, 8) * u
        cy = rng.uniform(h / 2 + 1, max(h / 2 + 1.5, hz - 3 - h / 2))
        cx = rng.uniform(0, size)
        blobs = [(cx + rng.uniform(-0.35, 0.35) * w, cy + rng.uniform(-0.2, 0.15) * h,
                  rng.uniform(0.25, 0.45) * w, rng.uniform(0.35, 0.55) * h)
                 for _ in range(int(rng.integers(3, 6)))]
        shade = float(rng.uniform(0.88, 1.0))
        clouds.append((blobs, shade, hz - 2))
    lay["clouds"] = clouds

    # buildings: side by side, non-overlapping columns, on the ground
    n_b = int(rng.integers(1, 4))
    widths = [int(rng.integers(int(13 * u), int(26 * u) + 1)) for _ in range(n_b)]
    while sum(widths) + 2 * (n_b - 1) > size - 2:
        widths = [max(int(12 * u), w - 2) for w in widths]
    slack = size - sum(widths) - 2 * (n_b - 1)  # at least 2 px between buildings
    cuts = np.sort(rng.integers(0, slack + 1, n_b))
    buildings = []
    for i in range(n_b):
        x0 = sum(widths[:i]) + 2 * i + int(cuts[i])
        w = widths[i]
        base = int(rng.integers(hz + 2, min(size - 1, hz + int(18 * u)) + 1))
        door_w = int(rng.integers(max(3, int(4 * u)), int(6 * u) + 1))
        door_h = int(rng.integers(int(6 * u), int(9 * u) + 1))
        win_w = int(rng.integers(max(3, int(3 * u)), int(5 * u) + 1))
        win_h = int(rng.integers(max(3, int(3 * u)), int(5 * u) + 1))
        rows = int(rng.integers(1, 3))
        wall_h = door_h + 2 + rows * (win_h + 2) + int(rng.integers(0, int(4 * u) + 1))
        top = "roof" if rng.random() < 0.55 else "dome"
        top_h = int(rng.uniform(0.3, 0.6) * w) if top == "roof" else 0
        radius = rng.uniform(0.35, 0.5) * w
        over = int(rng.integers(0, 3))
        wall_top = base - wall_h
        need = (top_h if top == "roof" else int(np.ceil(radius))) + 1
        if wall_top - need < 0:  # keep the building inside the image
            shift = need - wall_top
            wall_h = max(door_h + 2 + win_h + 2, wall_h - shift)
            rows = max(1, min(rows, (wall_h - door_h - 2) // (win_h + 2)))
            wall_top = base - wall_h
            if top == "roof":
                top_h = max(int(3 * u), min(top_h, wall_top - 1))
            else:
                radius = max(3.0 * u, min(radius, wall_top - 1.0))
        door_x = x0 + int(rng.integers(1, w - door_w))
        n_cols = max(1, (w - 2) // (win_w + 2))
        cols = int(rng.integers(1, n_cols + 1))
        material = "brick" if rng.random() < 0.5 else "plaster"
        buildings.append(dict(
            x0=x0, x1=x0 + w, base=base, wall_top=wall_top, top=top, top_h=top_h, radius=radius,
            over=over, door=(door_x, base - door_h, door_x + door_w, base), win=(win_w, win_h),
            rows=rows, cols=cols, material=material,
            wall_rgb=_wall_colour(rng, material), top_rgb=_top_colour(rng, top),
            door_rgb=np.array([rng.uniform(0.18, 0.4), rng.uniform(0.08, 0.2), rng.uniform(0.03, 0.12)]),
            win_rgb=np.array([rng.uniform(0.05, 0.15), rng.uniform(0.1, 0.2), rng.uniform(0.25, 0.45)]),
            brick_row=int(rng.integers(0, 2)), noise_seed=int(rng.integers(0, 2**31)),
        ))
    lay["buildings"] = buildings

    lay["road"] = None
    if rng.random() < 0.5:
        b = buildings[int(rng.integers(0, n_b))]
        lay["road"] = dict(door=b["door"], spread=rng.uniform(1.2, 3.0), skew=rng.uniform(-8, 8) * u,
                           rgb=np.array([rng.uniform(0.55, 0.72), rng.uniform(0.5, 0.62), rng.uniform(0.38, 0.5)]))

    trees = []
    for _ in range(int(rng.integers(0, 5))):
        r = rng.uniform(5, 10) * u
        base = rng.uniform(hz + 3, size + 1)
        trunk_h = rng.uniform(0.6, 1.2) * r
        cx = rng.uniform(2 * u, size - 2 * u)  # the trunk is always in the image
        cy = base - trunk_h - r * 0.7
        blobs = [(cx + rng.uniform(-0.5, 0.5) * r, cy + rng.uniform(-0.45, 0.35) * r,
                  rng.uniform(0.45, 0.7) * r, rng.uniform(0.45, 0.7) * r)
                 for _ in range(int(rng.integers(4, 8)))]
        autumn = rng.random() < 0.2
        leaf = (np.array([rng.uniform(0.6, 0.85), rng.uniform(0.3, 0.5), rng.uniform(0.05, 0.15)]) if autumn
                else np.array([rng.uniform(0.05, 0.18), rng.uniform(0.22, 0.38), rng.uniform(0.05, 0.15)]))
        trees.append(dict(cx=cx, base=base, trunk_w=rng.uniform(1.6, 3.0) * u, trunk_top=cy,
                          blobs=blobs, leaf=leaf, bark=np.array([rng.uniform(0.25, 0.4), rng.uniform(0.15, 0.25), 0.08]),
                          noise_seed=int(rng.integers(0, 2**31))))
    lay["trees"] = trees

    lay["watermark"] = None
    if rng.random() < WATERMARK_RATE:
        kind = "banner" if rng.random() < 0.5 else "text"
        lay["watermark"] = dict(kind=kind, y=rng.uniform(0.3, 0.75) * size, alpha=rng.uniform(0.45, 0.65),
                                word=["STOCK", "PHOTO", "SAMPLE", "iStock", "PREVIEW"][int(rng.integers(0, 5))])
    lay["noise_seed"] = int(rng.integers(0, 2**31))
    return lay


def _wall_colour(rng: np.random.Generator, material: str) -> np.ndarray:
    if material == "brick":
        return np.array([rng.uniform(0.55, 0.75), rng.uniform(0.22, 0.35), rng.uniform(0.12, 0.22)])
    return np.array([rng.uniform(0.85, 0.97), rng.uniform(0.8, 0.92), rng.uniform(0.62, 0.82)])


def _top_colour(rng: np.random.Generator, top: str) -> np.ndarray:
    if top == "roof":
        return np.array([rng.uniform(0.35, 0.55), rng.uniform(0.08, 0.18), rng.uniform(0.08, 0.2)])
    return np.array([rng.uniform(0.25, 0.45), rng.uniform(0.55, 0.72), rng.uniform(0.55, 0.7)])


# ---------------------------------------------------------------- drawing at SCALE x resolution

class _Canvas:
    """High-resolution colour image and label maps, drawn in painter's order."""

    def __init__(self, size: int) -> None:
        n = size * SCALE
        self.n = n
        self.rgb = np.zeros((n, n, 3), np.float32)
        self.obj = np.zeros((n, n), np.uint8)
        self.part = np.zeros((n, n), np.uint8)
        self.mat = np.zeros((n, n), np.uint8)
        self.tree = np.zeros((n, n), bool)

    def clip(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int] | None:
        a, b = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        c, d = min(self.n, int(np.ceil(x1))), min(self.n, int(np.ceil(y1)))
        return (a, b, c, d) if a < c and b < d else None


def _ellipses(cv: _Canvas, blobs: list[tuple[float, float, float, float]]) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Union of ellipses (cx, cy, rx, ry) in output pixels -> (hi-res bbox, bool mask in it)."""
    s = SCALE
    x0 = min(cx - rx for cx, cy, rx, ry in blobs) * s
    x1 = max(cx + rx for cx, cy, rx, ry in blobs) * s
    y0 = min(cy - ry for cx, cy, rx, ry in blobs) * s
    y1 = max(cy + ry for cx, cy, rx, ry in blobs) * s
    bb = cv.clip(x0, y0, x1, y1)
    if bb is None:
        return None
    a, b, c, d = bb
    ys = (np.arange(b, d, dtype=np.float32) + 0.5)[:, None] / s
    xs = (np.arange(a, c, dtype=np.float32) + 0.5)[None, :] / s
    m = np.zeros((d - b, c - a), bool)
    for cx, cy, rx, ry in blobs:
        m |= ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
    return bb, m


def _noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Value noise in [-1, 1], shape [h, w], features of `cell` hi-res pixels (smooth when large)."""
    g = rng.uniform(-1, 1, (h // cell + 2, w // cell + 2)).astype(np.float32)
    if cell <= SCALE:
        return np.repeat(np.repeat(g, cell, 0), cell, 1)[:h, :w]
    big = Image.fromarray(g, "F").resize((g.shape[1] * cell, g.shape[0] * cell), Image.BILINEAR)
    return np.array(big, np.float32)[:h, :w]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth value noise in [-1, 1], shape [h, w], features about `cell` pixels wide."""
    g = rng.uniform(-1, 1, (int(h // cell) + 2, int(w // cell) + 2)).astype(np.float32)
    return np.array(Image.fromarray(g, "F").resize((w, h), Image.BILINEAR), np.float32)


def _draw_background(cv: _Canvas, lay: dict, rng: np.random.Generator, size: int) -> None:
    """Sky (gradient + colour variation) above the horizon, textured grass below.

    Both are smooth or pixel-level textures, so they are computed at the output resolution and
    repeated over each SCALE x SCALE block (the box filter then returns them exactly)."""
    hz = lay["horizon"]
    low = np.empty((size, size, 3), np.float32)
    t = (np.arange(hz, dtype=np.float32) / max(hz - 1, 1))[:, None, None]
    low[:hz] = lay["sky_top"].astype(np.float32) * (1 - t) + lay["sky_hz"].astype(np.float32) * t
    low[:hz] += _smooth_noise(rng, hz, size, 8)[:, :, None] * np.float32(0.03)
    h = size - hz
    t = (np.arange(h, dtype=np.float32) / max(h - 1, 1))[:, None, None]
    tex = _smooth_noise(rng, h, size, 2) * np.float32(0.06)
    tex += rng.uniform(-0.05, 0.05, (h, size)).astype(np.float32)
    tex += rng.uniform(-0.04, 0.04, (h, 1)).astype(np.float32)  # horizontal streaks
    low[hz:] = lay["grass"].astype(np.float32) * (0.92 + 0.16 * t) * (1 + tex[:, :, None])
    cv.rgb.reshape(size, SCALE, size, SCALE, 3)[:] = low[:, None, :, None, :]
    cv.obj[:hz * SCALE] = OBJ["sky"]
    cv.obj[hz * SCALE:] = OBJ["grass"]


def _draw_clouds(cv: _Canvas, lay: dict) -> None:
    for blobs, shade, limit in lay["clouds"]:
        got = _ellipses(cv, blobs)
        if got is None:
            continue
        (a, b, c, d), m = got
        lim = limit * SCALE - b  # clouds never reach below `limit` (2 px above the horizon)
        if lim <= 0:
            continue
        m = m[:lim]
        d = b + m.shape[0]
        ys = np.linspace(1.0, 0.82, d - b, dtype=np.float32)[:, None, None]
        col = np.float32(shade) * ys * np.ones((1, c - a, 3), np.float32)
        np.copyto(cv.rgb[b:d, a:c], col, where=m[:, :, None])
        np.copyto(cv.obj[b:d, a:c], np.uint8(OBJ["cloud"]), where=m)


def _draw_road(cv: _Canvas, lay: dict, rng: np.random.Generator) -> None:
    road = lay["road"]
    if road is None:
        return
    s = SCALE
    dx0, _, dx1, base = road["door"]
    top = base * s
    h = cv.n - top
    if h <= 0:
        return
    t = (np.arange(h, dtype=np.float32) + 0.5) / h  # 0 at the door, 1 at the bottom edge
    half0 = (dx1 - dx0) * s / 2
    centre = (dx0 + dx1) * s / 2 + road["skew"] * s * t
    half = half0 * (1 + (road["spread"] - 1) * t)
    a = max(0, int(np.floor((centre - half).min())))
    c = min(cv.n, int(np.ceil((centre + half).max())) + 1)
    if a >= c:
        return
    xs = np.arange(a, c, dtype=np.float32)[None, :] + 0.5
    m = np.abs(xs - centre[:, None]) <= half[:, None]
    tex = 1 + _noise(rng, h, c - a, SCALE) * np.float32(0.05)
    col = road["rgb"].astype(np.float32)[None, None, :] * tex[:, :, None]
    np.copyto(cv.rgb[top:, a:c], col, where=m[:, :, None])
    np.copyto(cv.obj[top:, a:c], np.uint8(OBJ["road"]), where=m)


@lru_cache(maxsize=4)
def _brick_pattern(n: int, row0: int) -> tuple[np.ndarray, np.ndarray]:
    """Wall-local brick layout at hi-res: (mortar bool [n, n], brick id int [n, n])."""
    s = SCALE
    course = 2 * s  # two output pixels per course of bricks
    length = 4 * s
    ys = np.arange(n)[:, None]
    xs = np.arange(n)[None, :]
    row = (ys + row0 * s) // course
    shift = (row % 2) * (length // 2)
    mortar = ((ys + row0 * s) % course < s // 2) | ((xs + shift) % length < s // 2)
    return mortar, (row * (n // length + 2) + (xs + shift) // length).astype(np.int32)


def _brick(h: int, w: int, rgb: np.ndarray, row0: int, rng: np.random.Generator, n: int) -> np.ndarray:
    """Brick texture [h, w, 3] in wall-local hi-res coordinates."""
    mortar, ids = _brick_pattern(n, row0)
    mortar, ids = mortar[:h, :w], ids[:h, :w]
    var = rng.uniform(-0.08, 0.08, int(ids[-1, -1]) + 2).astype(np.float32)[ids]
    col = rgb.astype(np.float32)[None, None, :] * (1 + var)[:, :, None]
    return np.where(mortar[:, :, None], np.float32(0.78), col)


def _draw_building(cv: _Canvas, b: dict) -> None:
    s = SCALE
    rng = np.random.default_rng(b["noise_seed"])
    x0, x1, base, wt = b["x0"] * s, b["x1"] * s, b["base"] * s, b["wall_top"] * s
    bid, mat = OBJ["building"], MAT[b["material"]]
    # top: roof (triangle) or dome (half disc), sitting on the wall
    if b["top"] == "roof":
        ox = b["over"] * s / 2
        th = b["top_h"] * s
        bb = cv.clip(x0 - ox, wt - th, x1 + ox, wt)
        if bb is not None:
            a, bt, c, d = bb
            ys = np.arange(bt, d, dtype=np.float32)[:, None] + 0.5
            xs = np.arange(a, c, dtype=np.float32)[None, :] + 0.5
            half = (x1 - x0 + 2 * ox) / 2 * (ys - (wt - th)) / th
            m = np.abs(xs - (x0 + x1) / 2) <= half
            shade = 1 + 0.12 * np.sign(xs - (x0 + x1) / 2) * -1 + np.where((ys.astype(int) // s) % 2 == 0, 0.0, -0.05)
            col = b["top_rgb"].astype(np.float32)[None, None, :] * shade[:, :, None]
            _put(cv, bb, m, col, bid, PART["roof"], 0)
    else:
        r = b["radius"] * s
        cx = (x0 + x1) / 2
        bb = cv.clip(cx - r, wt - r, cx + r, wt)
        if bb is not None:
            a, bt, c, d = bb
            ys = np.arange(bt, d, dtype=np.float32)[:, None] + 0.5
            xs = np.arange(a, c, dtype=np.float32)[None, :] + 0.5
            m = (xs - cx) ** 2 + (ys - wt) ** 2 <= r * r
            light = 1.15 - 0.35 * np.clip((xs - cx + r) / (2 * r), 0, 1) + 0 * ys
            col = b["top_rgb"].astype(np.float32)[None, None, :] * light[:, :, None]
            _put(cv, bb, m, col, bid, PART["dome"], 0)
    # wall
    h, w = base - wt, x1 - x0
    if b["material"] == "brick":
        tex = _brick(h, w, b["wall_rgb"], b["brick_row"], rng, cv.n)
    else:
        n = _noise(rng, h, w, 3 * s) * 0.025 + _noise(rng, h, w, s) * 0.015
        tex = b["wall_rgb"].astype(np.float32)[None, None, :] * (1 + n)[:, :, None]
    cv.rgb[wt:base, x0:x1] = tex
    cv.obj[wt:base, x0:x1] = bid
    cv.part[wt:base, x0:x1] = PART["wall"]
    cv.mat[wt:base, x0:x1] = mat
    # windows: a grid on the wall, above the door's top
    for (wx0, wy0, wx1, wy1) in b["windows"]:
        sl = (slice(wy0 * s, wy1 * s), slice(wx0 * s, wx1 * s))
        cv.rgb[sl] = b["win_rgb"]
        cv.rgb[wy0 * s:wy0 * s + s, wx0 * s:wx1 * s] = b["win_rgb"] * 1.6  # light on the top edge
        cv.part[sl] = PART["window"]
        cv.mat[sl] = 0
    # door at the bottom edge of the wall
    dx0, dy0, dx1, dy1 = b["door"]
    sl = (slice(dy0 * s, dy1 * s), slice(dx0 * s, dx1 * s))
    cv.rgb[sl] = b["door_rgb"]
    cv.rgb[dy0 * s:dy1 * s, (dx0 + dx1) * s // 2: (dx0 + dx1) * s // 2 + 1] = b["door_rgb"] * 0.6
    cv.part[sl] = PART["door"]
    cv.mat[sl] = 0


def _put(cv: _Canvas, bb: tuple[int, int, int, int], m: np.ndarray, col: np.ndarray,
         obj: int, part: int, mat: int) -> None:
    a, b, c, d = bb
    np.copyto(cv.rgb[b:d, a:c], col, where=m[:, :, None])
    np.copyto(cv.obj[b:d, a:c], np.uint8(obj), where=m)
    np.copyto(cv.part[b:d, a:c], np.uint8(part), where=m)
    np.copyto(cv.mat[b:d, a:c], np.uint8(mat), where=m)


def _draw_tree(cv: _Canvas, t: dict) -> tuple[int, int, int, int] | None:
    s = SCALE
    rng = np.random.default_rng(t["noise_seed"])
    tw = t["trunk_w"]
    trunk = cv.clip((t["cx"] - tw / 2) * s, t["trunk_top"] * s, (t["cx"] + tw / 2) * s, t["base"] * s)
    boxes = []
    if trunk is not None:
        a, b, c, d = trunk
        m = np.ones((d - b, c - a), bool)
        col = t["bark"].astype(np.float32)[None, None, :] * (1 + _noise(rng, d - b, c - a, s) * 0.1)[:, :, None]
        _put(cv, trunk, m, col, OBJ["tree"], 0, 0)
        cv.tree[b:d, a:c] = True
        boxes.append(trunk)
    got = _ellipses(cv, t["blobs"])
    if got is not None:
        (a, b, c, d), m = got
        ys = np.linspace(1.15, 0.75, d - b, dtype=np.float32)[:, None]
        n = 1 + _noise(rng, d - b, c - a, s) * 0.18 + _noise(rng, d - b, c - a, 2 * s) * 0.1
        col = t["leaf"].astype(np.float32)[None, None, :] * (ys * n)[:, :, None]
        _put(cv, (a, b, c, d), m, col, OBJ["tree"], 0, 0)
        cv.tree[b:d, a:c] |= m
        boxes.append((a, b, c, d))
    if not boxes:
        return None
    # the whole tree (may reach past the image), output pixels
    x0 = min(min(cx - rx for cx, cy, rx, ry in t["blobs"]), t["cx"] - tw / 2)
    x1 = max(max(cx + rx for cx, cy, rx, ry in t["blobs"]), t["cx"] + tw / 2)
    y0 = min(cy - ry for cx, cy, rx, ry in t["blobs"])
    return int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(t["base"]))


@lru_cache(maxsize=8)
def _font(px: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=px)


def _draw_watermark(cv: _Canvas, wm: dict | None, size: int) -> None:
    if wm is None:
        return
    s = SCALE
    img = Image.new("L", (cv.n, cv.n), 0)
    dr = ImageDraw.Draw(img)
    y = wm["y"] * s
    if wm["kind"] == "banner":
        bh = 10 * s * size / 64
        dr.rectangle([0, int(y - bh / 2), cv.n, int(y + bh / 2)], fill=255)
        alpha = np.asarray(img, np.float32) / 255 * wm["alpha"]
        white = np.float32(1.0)
        cv.rgb[:] = cv.rgb * (1 - alpha[:, :, None]) + white * alpha[:, :, None]
        txt = Image.new("L", (cv.n, cv.n), 0)
        ImageDraw.Draw(txt).text((cv.n / 2, y), wm["word"], fill=255, anchor="mm",
                                 font=_font(int(8 * s * size / 64)))
        ta = np.asarray(txt, np.float32) / 255 * 0.5
        cv.rgb[:] = cv.rgb * (1 - ta[:, :, None]) + np.float32(0.3) * ta[:, :, None]
        lab = alpha > 0
    else:
        font = _font(int(16 * s * size / 64))
        dr.text((cv.n / 2, y), wm["word"], fill=255, anchor="mm", font=font,
                stroke_width=int(1.5 * s), stroke_fill=255)
        alpha = np.asarray(img, np.float32) / 255
        cv.rgb[:] = cv.rgb * (1 - alpha[:, :, None] * wm["alpha"]) + np.float32(wm["alpha"]) * alpha[:, :, None]
        lab = alpha > 0.5
    cv.obj[lab] = OBJ["watermark"]
    cv.part[lab] = 0
    cv.mat[lab] = 0


# ---------------------------------------------------------------- downsampling

def _block_sum(a: np.ndarray) -> np.ndarray:
    """Sum over SCALE x SCALE blocks of the last two axes (sliced adds: much faster than reduce)."""
    r = a[..., 0::SCALE, :]
    for i in range(1, SCALE):
        r = r + a[..., i::SCALE, :]
    c = r[..., 0::SCALE]
    for i in range(1, SCALE):
        c = c + r[..., i::SCALE]
    return c


def _block_counts(m: np.ndarray, values: list[int]) -> np.ndarray:
    """Count of each value per SCALE x SCALE block: uint8 [n, n] -> uint8 [len(values), size, size]."""
    oh = m[None] == np.array(values, np.uint8)[:, None, None]
    return _block_sum(oh.view(np.uint8))


_OBJ_VALUES = np.array(list(_OBJ_RANK), np.uint8)
_OBJ_TIEBREAK = np.array(list(_OBJ_RANK.values()), np.int16)[:, None, None]
_PART_VALUES = np.array(list(PART.values()), np.uint8)
_MAT_VALUES = np.array(list(MAT.values()), np.uint8)


def _downsample_labels(cv: _Canvas) -> np.ndarray:
    """Majority labels per output pixel, consistent across categories: uint8 [3, size, size].

    Objects: majority, ties to the higher precedence. Parts and materials: majority among their
    non-none sub-pixels, then kept only on building (parts) and wall (materials) pixels."""
    oc = _block_counts(cv.obj, list(_OBJ_VALUES)).astype(np.int16) * 16 + _OBJ_TIEBREAK
    obj = _OBJ_VALUES[oc.argmax(0)]
    part = _PART_VALUES[_block_counts(cv.part, list(_PART_VALUES)).argmax(0)]
    part[obj != OBJ["building"]] = 0
    mat = _MAT_VALUES[_block_counts(cv.mat, list(_MAT_VALUES)).argmax(0)]
    mat[part != PART["wall"]] = 0
    return np.stack([obj, part, mat])


# ---------------------------------------------------------------- public API

def _windows(b: dict) -> list[Box]:
    win_w, win_h = b["win"]
    dy0 = b["door"][1]
    w = b["x1"] - b["x0"]
    cols, rows = b["cols"], b["rows"]
    gap = (w - cols * win_w) / (cols + 1)
    out = []
    for r in range(rows):
        wy1 = dy0 - 2 - r * (win_h + 2)
        wy0 = wy1 - win_h
        if wy0 < b["wall_top"] + 1:
            break
        for c in range(cols):
            wx0 = b["x0"] + int(round(gap * (c + 1) + c * win_w))
            out.append((wx0, wy0, wx0 + win_w, wy1))
    return out


def render(seed: int, *, trees: bool = True, size: int = 64) -> Scene:
    """Render the scene of `seed` (trees=False: the same scene without its trees)."""
    rng = np.random.default_rng([int(seed), 0x7111A6E])
    lay = _layout(rng, size)
    tex = np.random.default_rng(lay["noise_seed"])
    cv = _Canvas(size)
    _draw_background(cv, lay, tex, size)
    _draw_clouds(cv, lay)
    _draw_road(cv, lay, tex)
    buildings = []
    for b in sorted(lay["buildings"], key=lambda q: q["base"]):
        b["windows"] = _windows(b)
        _draw_building(cv, b)
    for b in lay["buildings"]:
        top = b["wall_top"] - (b["top_h"] if b["top"] == "roof" else int(np.ceil(b["radius"])))
        over = b["over"] // 2 + b["over"] % 2 if b["top"] == "roof" else 0
        buildings.append(Building(box=(max(0, b["x0"] - over), max(0, top), min(size, b["x1"] + over), b["base"]),
                                  wall=(b["x0"], b["wall_top"], b["x1"], b["base"]), door=b["door"],
                                  windows=b["windows"], top=b["top"], material=b["material"]))
    boxes = []
    if trees:
        for t in lay["trees"]:
            bx = _draw_tree(cv, t)
            if bx is not None:
                boxes.append(bx)
    _draw_watermark(cv, lay["watermark"], size)
    # lighting, then anti-aliasing box filter
    small = _block_sum(cv.rgb.transpose(2, 0, 1)).transpose(1, 2, 0) / np.float32(SCALE * SCALE)
    small = small * np.float32(lay["light"]) + lay["tint"].astype(np.float32)  # linear: commutes
    image = np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8)
    maps = _downsample_labels(cv)
    cover = _block_sum(cv.tree.view(np.uint8)).astype(np.float32) / np.float32(SCALE * SCALE)
    scene = Scene(seed=int(seed), image=image, label_maps=maps, horizon=lay["horizon"], buildings=buildings,
                  trees=boxes, road=lay["road"] is not None, has_watermark=lay["watermark"] is not None,
                  tree_cover=cover)
    scene.labels = labels_from_maps(maps)
    return scene


def labels_from_maps(maps: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [3, H, W] label maps -> {concept name: bool [H, W]} for every concept but "none"."""
    ch = {"object": 0, "part": 1, "material": 2}
    return {c.name: maps[ch[c.category]] == k for k, c in enumerate(CONCEPTS) if c.category != "none"}


def render_batch(seeds, *, trees: bool = True, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Render many scenes: (images uint8 [N, H, W, 3], labels uint8 [N, 3, H, W])."""
    seeds = list(seeds)
    images = np.empty((len(seeds), size, size, 3), np.uint8)
    labels = np.empty((len(seeds), 3, size, size), np.uint8)
    for i, s in enumerate(seeds):
        sc = render(int(s), trees=trees, size=size)
        images[i] = sc.image
        labels[i] = sc.label_maps
    return images, labels


def _grid(seeds: list[int], cols: int = 8) -> Image.Image:
    imgs, _ = render_batch(seeds)
    n, h, w, _ = imgs.shape
    rows = -(-n // cols)
    out = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i in range(n):
        out[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = imgs[i]
    return Image.fromarray(out)


if __name__ == "__main__":
    _grid(list(range(64))).resize((8 * 64 * 2, 8 * 64 * 2), Image.NEAREST).save(
        sys.argv[1] if len(sys.argv) > 1 else "village.png")
