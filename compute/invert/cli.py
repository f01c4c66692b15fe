"""`gandissect invert PHOTO... --model M`: invert photos into a generator, report what it cannot draw.

Reads the photos (`ingest.photos`: PNG / JPEG files or folders, checked and squared by its stated
rule), the generator, its layer-wise encoder (`--encoder`, default `ingest/zoo/<model>-encoder.safetensors`
when that exists and fits the generator) and the segmenter; writes, in `--out` (default `inversions/`):

- `<stem>-reconstruction.png` (the generator's resolution), `<stem>-omissions.png` (the photo dimmed,
  the pixels of omitted concepts that the reconstruction lost in red), `<stem>-photo.png` (the squared
  photo that was inverted);
- `inversions.json`: one object per photo (path, sha256, psnr, psnr_z, psnr_encoder, seconds, omitted,
  concepts, notes). `--json` prints the same objects, one per line.

Every photo is checked before any work and before anything is written: a bad one is one line, exit 2.

    gandissect invert photo.jpg more-photos/ --model village-gan --out inv --json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from db.errors import BadInput  # torch and numpy load inside the commands: `gandissect --help` stays light

ZOO = Path(__file__).resolve().parents[2] / "ingest" / "zoo"
DEFAULT_LAYER = "layer4"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("photos", nargs="+", help="PNG / JPEG files or folders of them")
    p.add_argument("--model", required=True, help="generator (bundled name, spec entry)")
    p.add_argument("--layer", default=DEFAULT_LAYER, help="layer whose features are optimised after z (or 'none')")
    p.add_argument("--out", default="inversions", help="output folder")
    p.add_argument("--json", action="store_true", help="print one JSON object per photo")
    p.add_argument("--encoder", help="layer-wise encoder .safetensors (default: the model's bundled one)")
    p.add_argument("--segmenter", default="village-seg", help="segmenter for omissions and the perceptual term "
                                                              "('none': pixels only, no omissions)")
    p.add_argument("--z-steps", type=int, default=150)
    p.add_argument("--layer-steps", type=int, default=250)
    p.add_argument("--restarts", type=int, default=1, help="z-step starts per photo (the best of E(x) and 64 "
                   "fixed latents; R times the z step's time)")
    p.add_argument("--batch", type=int, default=16, help="photos inverted together")
    p.add_argument("--spec", default="gandissect.toml")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the small convolutions gain nothing from more, and on a "
                        "shared machine two threads measured 8x slower)")


def default_encoder(model: str) -> Path | None:
    p = ZOO / f"{model}-encoder.safetensors"
    return p if p.is_file() else None


def load_models(model: str, spec: str | None, segmenter: str | None, encoder: str | None, device: str,
                warn: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> tuple[Any, Any, Any]:
    """(generator, encoder or None, segmenter or None). An encoder built for other shapes (a retrained,
    wider generator) is left out with a warning: retrain it with `gandissect train encoder`."""
    from compute.invert.encoder import load_encoder, matches
    from ingest.zoo import load_generator, load_segmenter

    spec_arg = spec if spec and Path(spec).exists() else None
    gen = load_generator(model, spec_arg, device=device)
    if not hasattr(gen, "named_children") or "output" not in dict(gen.named_children()):
        raise BadInput(f"invert: model {model!r} is not a progan-family generator (children layer1..layerL, output)")
    enc = None
    path = Path(encoder) if encoder else default_encoder(model)
    if encoder and not Path(encoder).is_file():
        raise BadInput(f"invert: no encoder at {encoder}")
    if path is not None:
        enc = load_encoder(path, device)
        if not matches(enc, gen):
            warn(f"warning: {path.name} was trained for another generator shape; inverting without it "
                 f"(retrain: gandissect train encoder --model {model})")
            enc = None
    elif not encoder:
        warn(f"warning: no encoder for {model}; z starts from a fixed random draw (train one: "
             f"gandissect train encoder --model {model})")
    seg = None if not segmenter or segmenter == "none" else load_segmenter(segmenter, spec_arg, device=device)
    return gen, enc, seg


def invert_photos(gen: Any, enc: Any, seg: Any, images: Any, *, layer: str, z_steps: int, layer_steps: int,
                  batch: int, device: str, progress: Callable[[int, int], None] | None = None,
                  restarts: int = 1) -> list[dict[str, Any]]:
    """uint8 [N, R, R, 3] photos -> per photo a dict: reconstruction (uint8 [R, R, 3]), omission map,
    psnr, psnr_z, psnr_encoder, seconds (its share of its batch's time), concepts, omitted, and the
    inversion itself: z [1, z_dim], layer and its features [1, C, h, w] (None without a layer step)."""
    import numpy as np  # noqa: F401

    from compute.invert.omissions import concept_rows, omission_map, omitted
    from compute.invert.optimise import invert, to_uint8
    from ingest.real import to_input

    out: list[dict[str, Any]] = []
    n = images.shape[0]
    for s in range(0, n, batch):
        x = to_input(images[s:s + batch]).to(device)
        inv = invert(gen, x, encoder=enc, segmenter=seg, layer="" if layer == "none" else layer,
                     z_steps=z_steps, layer_steps=0 if layer == "none" else layer_steps, restarts=restarts,
                     progress=(lambda d, t, s=s: progress(s * (z_steps + layer_steps) + d * x.shape[0],
                                                          n * (z_steps + layer_steps))) if progress else None)
        rec_u8 = to_uint8(inv.reconstruction).permute(0, 2, 3, 1).numpy()
        if seg is not None:
            rows, mp, mr = concept_rows(seg, x, inv.reconstruction.to(device))
        for i in range(x.shape[0]):
            d: dict[str, Any] = {"reconstruction": rec_u8[i], "psnr": float(inv.psnr[i]), "psnr_z": float(inv.psnr_z[i]),
                                 "psnr_encoder": float(inv.psnr_encoder[i]), "seconds": inv.seconds / x.shape[0],
                                 "layer": inv.layer, "concepts": [], "omitted": [], "omission_map": None,
                                 "z": inv.z[i:i + 1], "features": None if inv.features is None else inv.features[i:i + 1]}
            if seg is not None:
                names = [c.name for c in seg.concepts]
                d["concepts"], d["omitted"] = rows[i], omitted(rows[i])
                d["omission_map"] = omission_map(images[s + i], mp[i], mr[i], [names.index(c) for c in d["omitted"]])
            out.append(d)
    return out


def _stems(photos: list[Any]) -> list[str]:
    """Output names: the photo's stem, with the hash's first 8 digits when two photos share a stem."""
    seen: dict[str, int] = {}
    for p in photos:
        seen[p.stem] = seen.get(p.stem, 0) + 1
    return [p.stem if seen[p.stem] == 1 else f"{p.stem}-{p.sha256[:8]}" for p in photos]


def run(a: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from ingest.photos import load_photos

    if a.z_steps < 0 or a.layer_steps < 0 or a.batch < 1 or a.threads < 1 or a.restarts < 1:
        raise BadInput("invert: --z-steps and --layer-steps must be >= 0, --batch, --threads and --restarts >= 1")
    import torch

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"invert: --out {out} is a file, not a folder")
    gen, enc, seg = load_models(a.model, a.spec, a.segmenter, a.encoder, a.device)
    if a.layer != "none" and a.layer not in [n for n, _ in gen.named_children()][:-1]:
        raise BadInput(f"invert: --layer {a.layer!r} is not a layer of {a.model} "
                       f"({', '.join(n for n, _ in gen.named_children())})")
    photos = load_photos(a.photos, int(gen.resolution))  # every check before anything is written
    t0 = time.perf_counter()
    results = invert_photos(gen, enc, seg, np.stack([p.image for p in photos]), layer=a.layer, z_steps=a.z_steps,
                            layer_steps=a.layer_steps, batch=a.batch, device=a.device, restarts=a.restarts)
    out.mkdir(parents=True, exist_ok=True)
    objs = []
    for p, stem, r in zip(photos, _stems(photos), results):
        Image.fromarray(r["reconstruction"]).save(out / f"{stem}-reconstruction.png")
        Image.fromarray(p.image).save(out / f"{stem}-photo.png")
        if r["omission_map"] is not None:
            Image.fromarray(r["omission_map"]).save(out / f"{stem}-omissions.png")
        obj = {"photo": p.path, "sha256": p.sha256, "model": a.model, "layer": r["layer"],
               "psnr": round(r["psnr"], 3), "psnr_z": round(r["psnr_z"], 3), "psnr_encoder": round(r["psnr_encoder"], 3),
               "seconds": round(r["seconds"], 3), "omitted": r["omitted"],
               "concepts": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in c.items()} for c in r["concepts"]],
               "notes": p.notes, "reconstruction": str(out / f"{stem}-reconstruction.png")}
        objs.append(obj)
        if a.json:
            print(json.dumps(obj))
        else:
            om = ", ".join(r["omitted"]) or "nothing"
            print(f"{p.path}: PSNR {r['psnr']:.1f} dB, omitted: {om}" + (f"  ({'; '.join(p.notes)})" if p.notes else ""))
    (out / "inversions.json").write_text(json.dumps(objs, indent=1))
    if not a.json:
        print(f"wrote {len(objs)} reconstructions to {out}/ in {time.perf_counter() - t0:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gandissect invert")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


def bench_invert(device: Any) -> list[dict[str, Any]]:
    """`gandissect bench` row invert/seconds: one rendered 64x64 scene inverted with the CLI's defaults
    (encoder, 150 z + 250 layer4 steps, perceptual term), wall seconds with the machine's torch threads."""
    import torch

    from ingest.village.render import render

    gen, enc, seg = load_models("village-gan", None, "village-seg", None, str(device), warn=lambda s: None)
    image = render(30_000_000, size=int(gen.resolution)).image[None]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI
    try:
        t0 = time.perf_counter()
        r = invert_photos(gen, enc, seg, image, layer=DEFAULT_LAYER, z_steps=150, layer_steps=250, batch=1,
                          device=str(device))[0]
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    params = json.dumps({"model": "village-gan", "z_steps": 150, "layer_steps": 250, "layer": DEFAULT_LAYER,
                         "encoder": enc is not None, "threads": 1, "psnr": round(r["psnr"], 2)})
    return [{"metric": "seconds", "value": seconds, "unit": "s", "params": params}]
