"""Kind "invert": invert a folder of photos or a set of rendered village scenes into the generator.

Reads the job's generator, its layer-wise encoder (`encoder` parameter, default the bundled
`ingest/zoo/<model>-encoder.safetensors` when it fits the generator), the segmenter, and the images:
`images = "village"` (rendered scenes, `samples` of them from `ingest.real.village_images` with
`seed`, held out from every training pool) or a folder of PNG / JPEG photos (`ingest.photos` rules;
the first `samples` in name order; duplicate files, by content hash, are inverted once). Writes
`inversions` (one row per image: PSNR after the encoder, the z step and the layer step, seconds,
omitted concepts) and `inversion_concepts` (per image and concept: pixel shares in the image and its
reconstruction, recall, present, omitted; see `compute.invert.omissions`). The store keeps no pixels:
an image is `village:<seed>` or its file's sha256, plus its path.

Resumable: rows of finished batches are checkpointed under `.cache/<run_key>/`.

Parameters (spec keys, defaults): images "village", layer "layer4", z_steps 150, layer_steps 250,
perceptual 0.1, reg 0.01, presence_share 0.005, omit_recall 0.5, batch_size 16, encoder (a path); read
from `job.config` (defaults in compute/analyses/params.py; code version and tables in the registry,
compute/analyses/__init__.py).

    [[analyses]]
    kind = "invert"
    name = "village-invert"
    models = ["village-gan"]
    segmenter = "village-seg"
    samples = 500
    seed = 0
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compute import analyses
from compute.jobs.context import Checkpoint, Job, RunContext


def encoder_path(model: str, encoder: str | None) -> Path:
    """The encoder a run uses: the `encoder` parameter, else the bundled one for the model."""
    return Path(encoder) if encoder else Path(__file__).resolve().parents[2] / "ingest" / "zoo" / f"{model}-encoder.safetensors"


def resolve(store: str, a: Any, model: str, layers: tuple[str, ...]) -> dict[str, Any]:
    """Plan-time parameters: the encoder file's sha256 (None without one), so a retrained encoder
    gives a new run key."""
    from ingest.zoo import file_sha256

    p = encoder_path(model, a.path_param("encoder"))
    return {"encoder_sha256": file_sha256(p) if p.is_file() else None}


def image_set(job: Job, size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """uint8 [N, size, size, 3] images and per image its identity (image, image_sha256, path,
    village_seed, width, height)."""
    src = job.config.images
    n = int(job.config.samples)
    if src == "village":
        from ingest.real import village_images

        images, _, seeds = village_images(n, int(job.config.seed), size=size)
        ids = [{"image": f"village:{s}", "image_sha256": hashlib.sha256(images[i].tobytes()).hexdigest(),
                "path": None, "village_seed": int(s), "width": size, "height": size} for i, s in enumerate(seeds)]
        return images, ids
    from ingest.photos import load_photos

    photos, seen = [], set()
    for p in load_photos([str(job.analysis.path_param("images"))], size):
        if p.sha256 not in seen:
            seen.add(p.sha256)
            photos.append(p)
        if len(photos) == n:
            break
    ids = [{"image": p.sha256, "image_sha256": p.sha256, "path": p.path, "village_seed": None,
            "width": p.width, "height": p.height} for p in photos]
    return np.stack([p.image for p in photos]), ids


def compute(job: Job, ctx: RunContext) -> dict[str, list[dict[str, Any]]]:
    from compute.invert.encoder import load_encoder, matches
    from compute.invert.omissions import concept_rows, omitted
    from compute.invert.optimise import invert
    from ingest.real import to_input

    gen, seg = ctx.generator(job), ctx.segmenter(job)
    cfg = job.config
    layer = str(cfg.layer)
    names = [n for n, _ in gen.named_children()]
    if "output" not in names:
        raise ValueError(f"analysis {job.analysis.name!r}: invert needs a progan-family generator")
    if layer not in names[:-1]:
        raise ValueError(f"analysis {job.analysis.name!r}: layer {layer!r} is not a layer of {job.model.name}")
    enc_path = encoder_path(job.model.name, job.analysis.path_param("encoder"))
    enc = load_encoder(enc_path, ctx.device) if Path(enc_path).is_file() else None
    if enc is not None and not matches(enc, gen):
        enc = None
    images, ids = image_set(job, int(gen.resolution))
    bs = int(cfg.batch_size)
    ckpt = Checkpoint(ctx.cache_dir(job), "invert.rows")
    done, _, extra = ckpt.load()
    out: dict[str, list[dict[str, Any]]] = {t: list(extra.get(t, [])) for t in analyses.kind("invert").tables}
    base = {"run_key": job.run_key, "model": job.model.name}
    seg_name = job.segmenter.name if job.segmenter else "?"
    starts = list(range(0, len(ids), bs))
    for b, s in enumerate(ctx.progress(starts[done:], desc="invert", total=len(starts), initial=done), start=done):
        x = to_input(images[s:s + bs]).to(ctx.device)
        inv = invert(gen, x, encoder=enc, segmenter=seg, layer=layer, z_steps=int(cfg.z_steps),
                     layer_steps=int(cfg.layer_steps), perceptual=float(cfg.perceptual), reg=float(cfg.reg))
        rows, _, _ = concept_rows(seg, x, inv.reconstruction.to(ctx.device), float(cfg.presence_share),
                                  float(cfg.omit_recall))
        for i in range(x.shape[0]):
            om = omitted(rows[i])
            out["inversions"].append({**base, "layer": inv.layer, **ids[s + i], "psnr": float(inv.psnr[i]),
                                      "psnr_z": float(inv.psnr_z[i]), "psnr_encoder": float(inv.psnr_encoder[i]),
                                      "seconds": inv.seconds / x.shape[0], "n_omitted": len(om),
                                      "omitted": json.dumps(om)})
            out["inversion_concepts"] += [{**base, "segmenter": seg_name, "image": ids[s + i]["image"],
                                           **{k: r[k] for k in ("concept", "photo_share", "recon_share", "recall",
                                                                "present", "omitted")}} for r in rows[i]]
        if b + 1 < len(starts):
            ckpt.save(b + 1, {"done": torch.tensor([b + 1])}, out)
    return out
