"""Paint on a real photo (GANPaint Studio): invert it, adapt a copy of the generator to it, paint with unit brushes.

Reads nothing from disk itself (the CLI loads the photo with `ingest.photos`, the models with
`compute.invert.cli.load_models` / `compute.paint.engine.open_painter`, brushes from the store); writes
only the edited PNG (`gandissect edit --photo`) and, for `--evaluate`, a JSON report.

The method of "Semantic Photo Manipulation with a Generative Image Prior" (Bau et al., SIGGRAPH 2019):

1. invert the photo x (`compute.invert.optimise.invert`: encoder, z, then the features h of layer L_inv);
2. **image-specific adaptation** (`adapt`): a copy G' of the generator whose layer L_inv adds the fixed
   per-image residual d = h - G_<=L_inv(z) (so G'(z) is the layer-optimised reconstruction, and every
   layer, above or below L_inv, can be painted), and whose children after L_inv are fine-tuned for this
   one image: minimise MSE(G'(z), x) + `perceptual` x (segmenter feature MSE) + `reg` x the mean squared
   weight change (the weights stay near the generator's, so the units keep their meaning);
3. paint (`PhotoPainter`, a `compute.paint.engine.Painter` on G'): a stroke edits the featuremap of the
   brush's layer and runs the rest of G' — the same work as a stroke on a generated image. The shown
   image is **composed**: photo + w x (G'(edited) - G'(unedited)), w = 1 on the painted region (the
   union of the session's strokes) and falling linearly to 0 over `feather` px beyond it, so pixels
   more than `feather` px from the strokes stay the photo's own (compose=False shows G'(edited) itself).

    from compute.paint.photo import adapt, PhotoPainter
    ad = adapt(gen, x, inversion)                       # x [1, 3, R, R] in [-1, 1]; inversion of x
    painter = PhotoPainter.on(base_painter, ad, photo)  # photo uint8 [R, R, 3]; base: open_painter(...)
    res = painter.session().apply(painter.stroke("tree", "remove", (10, 20, 40, 60)))

    gandissect edit --photo scene.png --model village-gan --brush tree --action remove --region 10,20,40,60
    python -m compute.paint.photo --evaluate --db STORE --n 20     # remove-tree on rendered scenes (issue 19)
    gandissect bench --only adapt                                    # adaptation seconds, stroke ms (bench_adapt)
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compute.core.intervene import featuremap, finish
from compute.paint.engine import EditError, Frame, Painter, PaintSession, _masks, label_map, to_uint8

__all__ = ["Residual", "Adapted", "adapt", "PhotoPainter", "PhotoSession", "PhotoCanvas", "compose_weight",
           "open_photo", "check_photo", "cmd_edit_photo", "evaluate_remove_tree", "bench_adapt", "main"]

ADAPT_STEPS = 150     # fine-tuning steps of the image-specific adaptation
ADAPT_LR = 0.002      # Adam learning rate of the adapted weights (equalised-lr weights are ~N(0, 1))
ADAPT_REG = 1.0       # weight of the mean squared weight change
FEATHER = 4           # px over which a stroke's edit fades into the photo beyond the edited cells


class Residual(nn.Module):
    """A generator child whose output gets a fixed per-image residual: child(x) + delta [1, C, h, w]."""

    def __init__(self, child: nn.Module, delta: torch.Tensor) -> None:
        super().__init__()
        self.child = child
        self.register_buffer("delta", delta.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.child(x) + self.delta


@dataclass
class Adapted:
    """A generator adapted to one photo: G'(z) reproduces it. `gen` keeps the generator's interface."""

    gen: nn.Module           # the adapted copy (eval, no grad)
    z: torch.Tensor          # [1, z_dim] the inverted latent
    layer: str               # the inversion layer carrying the residual ('' when z-only)
    psnr_inverted: float     # dB of the inversion's reconstruction
    psnr_adapted: float      # dB of G'(z)
    seconds: float           # adaptation only (the inversion not included)
    steps: int


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    from compute.invert.optimise import psnr

    return float(psnr(a, b)[0])


def adapt(gen: nn.Module, image: torch.Tensor, z: torch.Tensor, features: torch.Tensor | None = None,
          layer: str = "", *, segmenter: Any = None, steps: int = ADAPT_STEPS, lr: float = ADAPT_LR,
          reg: float = ADAPT_REG, perceptual: float = 0.1, tune_after: str | None = None,
          progress: Callable[[int, int], None] | None = None) -> Adapted:
    """Adapt a copy of `gen` to one image [1, 3, R, R] in [-1, 1] from its inversion: latent z [1, z_dim]
    and (optionally) the optimised features [1, C, h, w] of `layer`. The children after `tune_after`
    (default: `layer`, else the middle layer) are fine-tuned; see the module docstring."""
    from compute.invert.optimise import perceptual_fn, split_generator

    t0 = time.perf_counter()
    g = copy.deepcopy(gen).eval()
    dev = image.device
    z = z.to(dev).float()
    names = [n for n, _ in g.named_children()]
    with torch.no_grad():
        if features is not None and layer:
            head, _ = split_generator(g, layer)
            setattr(g, layer, Residual(getattr(g, layer), features.to(dev) - head(z)))
        p_inv = _psnr(g(z), image)
    after = tune_after or layer or names[len(names) // 2 - 1]
    if after not in names[:-1]:
        raise EditError(f"adapt: {after!r} is not an inner layer of the generator ({', '.join(names[:-1])})")
    g.requires_grad_(False)
    tuned = [p for n, c in list(g.named_children())[names.index(after) + 1:] for p in c.parameters()]
    for p in tuned:
        p.requires_grad_(True)
    start = [p.detach().clone() for p in tuned]
    count = sum(p.numel() for p in tuned)
    feat = perceptual_fn(segmenter) if perceptual > 0 else None
    with torch.no_grad():
        target_f = feat(image) if feat is not None else None
        f_scale = target_f.var().clamp_min(1e-6) if target_f is not None else None
    opt = torch.optim.Adam(tuned, lr=lr)
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        x = g(z)
        loss = (x - image).pow(2).mean()
        if feat is not None:
            loss = loss + perceptual * (feat(x) - target_f).pow(2).mean() / f_scale
        loss = loss + reg * sum((p - p0).pow(2).sum() for p, p0 in zip(tuned, start)) / count
        loss.backward()
        opt.step()
        if progress and i % 10 == 0:
            progress(i, steps)
    g.requires_grad_(False)
    with torch.no_grad():
        p_ad = _psnr(g(z), image)
    if progress:
        progress(steps, steps)
    return Adapted(g, z.detach(), layer if features is not None else "", p_inv, p_ad,
                   time.perf_counter() - t0, steps)


def compose_weight(changed: np.ndarray, feather: int) -> np.ndarray:
    """Blend weight [R, R] in [0, 1] of the edit: 1 on `changed` (bool [R, R]), falling linearly to 0 at
    `feather` px (Euclidean) beyond it."""
    from scipy import ndimage

    if not changed.any():
        return np.zeros(changed.shape, np.float32)
    if feather <= 0:
        return changed.astype(np.float32)
    d = ndimage.distance_transform_edt(~changed)
    return np.clip(1.0 - d / (feather + 1), 0.0, 1.0).astype(np.float32)


class PhotoPainter(Painter):
    """A Painter on a generator adapted to one photo: its sessions start from the photo (seed and
    sample are ignored) and, with `compose`, its frames are the photo plus the edit near the stroke."""

    def __init__(self, adapted: Adapted, photo: np.ndarray, seg: Any, layer: str, catalog: Any = None,
                 device: torch.device | str = "cpu", value: str = "q99", threads: int | None = 1,
                 compose: bool = True, feather: int = FEATHER) -> None:
        super().__init__(adapted.gen, seg, layer, catalog, device, value, threads)
        from ingest.real import to_input

        self.adapted, self.compose, self.feather = adapted, compose, feather
        self.photo = np.ascontiguousarray(photo)
        self._photo_t = to_input(self.photo[None]).to(self.device)
        self._region: np.ndarray | None = None  # bool [R, R]: the strokes of the frame being rendered
        with torch.no_grad():
            self.r0 = featuremap(self.gen, layer, adapted.z.to(self.device))
            self._base = finish(self.gen, layer, self.r0, adapted.z.to(self.device))

    @classmethod
    def on(cls, base: Painter, adapted: Adapted, photo: np.ndarray, compose: bool = True,
           feather: int = FEATHER) -> "PhotoPainter":
        """The PhotoPainter with `base`'s segmenter, layer, brushes, draw values and threads."""
        return cls(adapted, photo, base.seg, base.layer, base.catalog, base.device, base.value_mode, base.threads,
                   compose, feather)

    def session(self, seed: int | None = None, sample: int | None = None, z: torch.Tensor | None = None
                ) -> PaintSession:
        """A paint session on the photo (seed, sample and z are ignored)."""
        return PhotoSession(self, self.adapted.z.to(self.device))

    def frame(self, r: torch.Tensor, z: torch.Tensor) -> Frame:
        """The composed (or raw) image of a featuremap [1, C, h, w] of the edited layer, and its segmentation.
        Composed: blended on the painted region (`_region`, set by PhotoSession.apply: the union of the
        session's strokes), else on the featuremap cells that differ from the photo's."""
        with torch.no_grad():
            images = finish(self.gen, self.layer, r, z)
            if self.compose:
                region = self._region
                if region is None:
                    changed = (r != self.r0).any(1, keepdim=True).float()  # [1, 1, h, w]
                    region = F.interpolate(changed, size=images.shape[-2:], mode="nearest")[0, 0].cpu().numpy() > 0
                w = torch.from_numpy(compose_weight(region, self.feather)).to(images.device)
                images = self._photo_t + w * (images - self._base)
            labels = self.seg.segment(images)
            masks = _masks(labels, len(self.names))
        return Frame(to_uint8(images)[0], label_map(labels)[0].cpu().numpy(), masks[0].cpu().numpy(), self.names)


class PhotoSession(PaintSession):
    """A PaintSession on a PhotoPainter: each frame is composed on the union of the strokes up to it."""

    painter: PhotoPainter

    def apply(self, stroke: Any) -> Any:
        region = np.array(stroke.region, bool)
        for s in self.strokes:
            if s.region.shape == region.shape:
                region |= s.region
        self.painter._region = region
        try:
            return super().apply(stroke)
        finally:
            self.painter._region = None


# ------------------------------------------------------------------------------------------ photo in

@dataclass
class PhotoCanvas:
    """A photo ready to paint (the dashboard's state between the Photos and Paint pages): the model it
    was inverted into, a key naming the photo and its inversion, and the adapted generator."""

    model: str
    key: str
    photo: np.ndarray      # uint8 [R, R, 3]
    adapted: Adapted
    _painters: dict[tuple[int, str], PhotoPainter] = field(default_factory=dict, repr=False)

    def painter(self, base: Painter) -> PhotoPainter:
        """The PhotoPainter of this photo with `base`'s layer and brushes (one per base painter and layer)."""
        k = (id(base), base.layer)
        if k not in self._painters:
            self._painters = {k: PhotoPainter.on(base, self.adapted, self.photo)}  # keep only the latest
        return self._painters[k]


def open_photo(base: Painter, photo: np.ndarray, *, encoder: Any = None, z_steps: int = 150, layer_steps: int = 250,
               inversion_layer: str = "layer4", adapt_steps: int = ADAPT_STEPS, compose: bool = True,
               progress: Callable[[str, int, int], None] | None = None) -> PhotoPainter:
    """Invert a photo uint8 [R, R, 3] into base's generator, adapt a copy to it, and return its painter.
    `progress(stage, done, total)` with stage 'invert' or 'adapt'."""
    from compute.invert.optimise import invert
    from ingest.real import to_input

    if photo.shape != (base.resolution, base.resolution, 3):
        raise EditError(f"photo of shape {photo.shape} does not fit the {base.resolution}x{base.resolution} generator")
    x = to_input(photo[None]).to(base.device)
    inv = invert(base.gen, x, encoder=encoder, segmenter=base.seg, layer=inversion_layer, z_steps=z_steps,
                 layer_steps=layer_steps, progress=(lambda d, t: progress("invert", d, t)) if progress else None)
    ad = adapt(base.gen, x, inv.z, inv.features, inv.layer, segmenter=base.seg, steps=adapt_steps,
               progress=(lambda d, t: progress("adapt", d, t)) if progress else None)
    ad.psnr_inverted = float(inv.psnr[0])
    return PhotoPainter.on(base, ad, photo, compose)


def _encoder(model: str, device: str) -> Any:
    from compute.invert.cli import default_encoder
    from compute.invert.encoder import load_encoder, matches

    path = default_encoder(model)
    return None if path is None else load_encoder(path, device)


def check_photo(path: str | Path) -> None:
    """PhotoError (one line, exit 2) unless `path` is one photo the Photos page would take.

    The rules are `ingest.photos`' (a file, PNG or JPEG, not empty, at most MAX_PIXELS, decodes); the
    photo is decoded once here, at its own size, before the generator's resolution is known.
    """
    from ingest.photos import PhotoError, load_photo

    p = Path(path).expanduser()
    if p.is_dir():
        raise PhotoError(f"{p}: a folder; --photo takes one PNG or JPEG file")
    if not p.is_file():
        raise PhotoError(f"{p}: no such file")
    load_photo(p, 1)  # every check of load_photo; the 1 x 1 square is thrown away


def cmd_edit_photo(a: argparse.Namespace, db: str) -> int:
    """`gandissect edit --photo PHOTO`: invert, adapt, one stroke; the composed PNG to --out."""
    from compute.invert.encoder import matches
    from compute.paint.engine import _check_out, open_painter, parse_region, resolve_strength, save_png
    from ingest.photos import load_photo

    parse_region(a.region)
    resolve_strength(a.strength)
    _check_out(a.out)
    if a.adapt_steps < 0:
        raise EditError(f"--adapt-steps must be >= 0 (got {a.adapt_steps})")
    check_photo(a.photo)  # before the model loads: a bad photo costs nothing
    base = open_painter(a.model, db, a.layer, a.brush, a.spec, a.device)
    photo = load_photo(a.photo, base.resolution)
    stroke = base.stroke(a.brush, a.action, a.region, a.strength)
    if stroke.brush.note:
        print(f"note: {stroke.brush.note}", file=sys.stderr)
    for n in photo.notes:
        print(f"note: {n}", file=sys.stderr)
    enc = _encoder(a.model, a.device)
    if enc is not None and not matches(enc, base.gen):
        enc = None
    t0 = time.perf_counter()
    painter = open_photo(base, photo.image, encoder=enc, adapt_steps=a.adapt_steps)
    prep = time.perf_counter() - t0
    res = painter.session().apply(stroke)
    save_png(res.after.image, a.out)
    ad = painter.adapted
    summary = {**res.summary(), "photo": photo.path, "psnr_inverted": round(ad.psnr_inverted, 2),
               "psnr_adapted": round(ad.psnr_adapted, 2), "adapt_seconds": round(ad.seconds, 2),
               "prepare_seconds": round(prep, 2)}
    if a.json:
        print(json.dumps(summary))
    else:
        changes = ", ".join(f"{c} {res.before.fractions[c]:.1%} -> {res.after.fractions[c]:.1%}"
                            for c in res.change()) or "no concept changed"
        print(f"{photo.path}: inverted {ad.psnr_inverted:.1f} dB, adapted {ad.psnr_adapted:.1f} dB in "
              f"{ad.seconds:.1f}s; {stroke.describe()} at {stroke.brush.layer}: {changes} ({res.ms:.1f} ms); "
              f"wrote {a.out}")
    return 0


# ------------------------------------------------------------------------------------------ evaluation

FAR_PX = 8  # pixels farther than this from the stroke must stay (nearly) as they were


def _far(region: np.ndarray, px: int) -> np.ndarray:
    """bool [R, R]: pixels more than `px` px (Euclidean) from the region."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(~region) > px


def evaluate_remove_tree(base: Painter, n: int = 20, seed: int = 0, strength: str = "high", max_scenes: int = 200,
                         adapt_steps: int = ADAPT_STEPS, z_steps: int = 150, layer_steps: int = 250,
                         encoder: Any = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Remove-tree over the box of the largest tree (segmenter's labels of the scene, >= paint.evaluate.MIN_TREE_PX px) on
    up to `n` rendered village scenes (held-out seeds, `ingest.real.village_images`'s numbering) painted
    through `open_photo`: share of the tree's pixels removed, and the change of the pixels more than FAR_PX
    px from the box, in 8-bit levels, composed (what is shown) and raw (G'(edited) vs G'(unedited))."""
    from compute.paint.evaluate import _bbox, _largest_component
    from ingest.real import VILLAGE_REAL_SEED, to_input
    from ingest.village.render import render

    t = base.names.index("tree")
    rows: list[dict[str, Any]] = []
    gen_ms: list[float] = []
    scene = VILLAGE_REAL_SEED + seed * 1_000_000
    looked = 0
    for looked in range(1, max_scenes + 1):
        if len(rows) == n:
            looked -= 1
            break
        s_seed = scene + looked - 1
        image = render(s_seed, size=base.resolution).image
        with torch.no_grad():  # the photo's own segmentation (= the session's original frame): skip treeless scenes
            labels = base.seg.segment(to_input(image[None]).to(base.device))
        tree = _largest_component(_masks(labels, len(base.names))[0, t].cpu().numpy())
        if tree is None:
            continue
        t0 = time.perf_counter()
        painter = open_photo(base, image, encoder=encoder, z_steps=z_steps, layer_steps=layer_steps,
                             adapt_steps=adapt_steps)
        prep = time.perf_counter() - t0
        s = painter.session()
        assert np.array_equal(s.original.masks[t], _masks(labels, len(base.names))[0, t].cpu().numpy())
        stroke = painter.stroke("tree", "remove", _bbox(tree), strength)
        res = s.apply(stroke)
        far = _far(stroke.region, FAR_PX)
        d = np.abs(res.after.image.astype(np.int16) - image.astype(np.int16)).max(2)[far]
        raw = PhotoPainter.on(base, painter.adapted, image, compose=False)
        rs = raw.session()
        rr = rs.apply(stroke)
        dr = np.abs(rr.after.image.astype(np.int16) - rr.before.image.astype(np.int16)).max(2)[far]
        g = base.session(seed=1, sample=len(rows)).apply(stroke)  # the same stroke on a generated sample
        gen_ms.append(g.ms)
        row = {"scene": s_seed, "tree_px": int(tree.sum()),
               "removed": 1.0 - float((res.after.masks[t] & tree).sum()) / float(tree.sum()),
               "removed_raw": 1.0 - float((rr.after.masks[t] & tree).sum()) / float(tree.sum()),
               "far_px": int(far.sum()), "far_max": int(d.max()) if d.size else 0,
               "far_mean": float(d.mean()) if d.size else 0.0,
               "far_raw_max": int(dr.max()) if dr.size else 0, "far_raw_mean": float(dr.mean()) if dr.size else 0.0,
               "psnr_inverted": painter.adapted.psnr_inverted, "psnr_adapted": painter.adapted.psnr_adapted,
               "adapt_seconds": painter.adapted.seconds, "prepare_seconds": prep, "stroke_ms": res.ms}
        rows.append(row)
        if log:
            log(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}))
    r = np.array([x["removed"] for x in rows])
    col = lambda k: np.array([x[k] for x in rows], float)  # noqa: E731
    return {"layer": base.layer, "brush": base.brush("tree").source, "strength": strength, "far_px": FAR_PX,
            "feather": FEATHER, "adapt_steps": adapt_steps, "z_steps": z_steps, "layer_steps": layer_steps,
            "scenes_with_tree": len(rows), "scenes_looked_at": looked,
            "rate_half_removed": float((r >= 0.5).mean()) if r.size else None,
            "median_removed": float(np.median(r)) if r.size else None,
            "rate_half_removed_raw": float((col("removed_raw") >= 0.5).mean()) if r.size else None,
            "far_max": int(col("far_max").max()) if r.size else None,
            "far_mean": float(col("far_mean").mean()) if r.size else None,
            "far_raw_max_median": float(np.median(col("far_raw_max"))) if r.size else None,
            "far_raw_mean": float(col("far_raw_mean").mean()) if r.size else None,
            "psnr_inverted_mean": float(col("psnr_inverted").mean()) if r.size else None,
            "psnr_adapted_mean": float(col("psnr_adapted").mean()) if r.size else None,
            "adapt_seconds_median": float(np.median(col("adapt_seconds"))) if r.size else None,
            "adapt_seconds_max": float(col("adapt_seconds").max()) if r.size else None,
            "prepare_seconds_median": float(np.median(col("prepare_seconds"))) if r.size else None,
            "stroke_ms_median": float(np.median(col("stroke_ms"))) if r.size else None,
            "generated_stroke_ms_median": float(np.median(gen_ms)) if gen_ms else None,
            "scenes": rows}


def bench_adapt(device: Any) -> list[dict[str, Any]]:
    """`gandissect bench --only adapt`: the bundled model adapted to one rendered 64x64 scene (the `invert`
    row's scene, inverted with the CLI's defaults first, not timed), then one remove stroke of 4 units at
    the inversion layer on the adapted generator and on a generated sample. Rows adapt/seconds (the
    ADAPT_STEPS fine-tuning, bar < 60 s), adapt/stroke_ms_photo and adapt/stroke_ms_generated; 1 thread."""
    from compute.invert.cli import DEFAULT_LAYER, load_models
    from compute.invert.optimise import invert
    from compute.paint.engine import Brush, Catalog
    from ingest.real import to_input
    from ingest.village.render import render

    gen, enc, seg = load_models("village-gan", None, "village-seg", None, str(device), warn=lambda s: None)
    photo = render(30_000_000, size=int(gen.resolution)).image
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI
    try:
        x = to_input(photo[None]).to(device)
        inv = invert(gen, x, encoder=enc, segmenter=seg, layer=DEFAULT_LAYER, z_steps=150, layer_steps=250)
        ad = adapt(gen, x, inv.z, inv.features, inv.layer, segmenter=seg)
        brush = Brush("units 0-3", DEFAULT_LAYER, (0, 1, 2, 3), "flag", None)
        base = Painter(gen, seg, DEFAULT_LAYER, Catalog("village-gan", DEFAULT_LAYER, {brush.name: brush}, {}, None),
                       device)
        painter = PhotoPainter.on(base, ad, photo)
        stroke = painter.stroke(brush.name, "remove", (16, 16, 48, 48))
        photo_ms = [painter.session().apply(stroke).ms for _ in range(3)]
        gen_ms = [base.session(seed=1, sample=0).apply(stroke).ms for _ in range(3)]
    finally:
        torch.set_num_threads(threads)
    params = json.dumps({"model": "village-gan", "adapt_steps": ad.steps, "layer": DEFAULT_LAYER,
                         "encoder": enc is not None, "threads": 1, "psnr_inverted": round(float(inv.psnr[0]), 2),
                         "psnr_adapted": round(ad.psnr_adapted, 2), "stroke": "remove 4 units, 32x32 px, median of 3"})
    return [{"metric": "seconds", "value": ad.seconds, "unit": "s", "params": params},
            {"metric": "stroke_ms_photo", "value": float(np.median(photo_ms)), "unit": "ms", "params": params},
            {"metric": "stroke_ms_generated", "value": float(np.median(gen_ms)), "unit": "ms", "params": params}]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compute.paint.photo", description=__doc__.splitlines()[0])
    p.add_argument("--evaluate", action="store_true", help="remove-tree on rendered scenes painted as photos")
    p.add_argument("--model", default="village-gan")
    p.add_argument("--db", help="store with a dissection of the model (brushes)")
    p.add_argument("--spec", default=None)
    p.add_argument("--layer", help="painted layer (default: the tree brush's)")
    p.add_argument("--n", type=int, default=20, help="scenes with a tree")
    p.add_argument("--seed", type=int, default=0, help="scene set (ingest.real.village_images numbering)")
    p.add_argument("--strength", default="high")
    p.add_argument("--adapt-steps", type=int, default=ADAPT_STEPS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the JSON report here")
    a = p.parse_args(argv)
    if not a.evaluate:
        p.error("give --evaluate")
    from compute.paint.engine import open_painter

    torch.set_num_threads(a.threads)
    base = open_painter(a.model, a.db, a.layer, "tree", a.spec, "cpu", threads=a.threads)
    t0 = time.perf_counter()
    report = evaluate_remove_tree(base, a.n, a.seed, a.strength, adapt_steps=a.adapt_steps,
                                  encoder=_encoder(a.model, "cpu"), log=lambda s: print(s, file=sys.stderr))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
