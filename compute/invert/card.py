"""Measure a layer-wise encoder + optimiser on a generator, and write the encoder's model card.

Reads the generator, the encoder, the segmenter `village-seg` and rendered village scenes; writes a
JSON of the measurements (`--json-out`) and, from `gandissect train encoder --card`, the model card
`<encoder stem>.md` next to the weights.

Measured (issue 19's acceptance):
- generated images x = G(z), z held out (sample set `--seed`, default `GEN_SEED`; the encoder trains
  on z from a torch stream, never on a sample set): PSNR of the encoder's guess, after the z step and
  after the layer step, and the mIoU of the segmentations of x and its reconstruction (per image: mean
  IoU over the concepts labelled in either, then the mean over images), each with its spread (standard
  deviation, quartiles, minimum, share of images at the bar, and a bootstrap 95 % interval of the mean);
- rendered scenes (`ingest.real.village_images`, held out): the same PSNRs and, over the set, the
  concepts most dropped (`compute.invert.omissions.dropped`);
- the distribution-level under-production, computed as the realism analysis does (concept pixel
  fractions of generated vs rendered images under the same segmenter, `compute.analyses.realism.Coverage`),
  and the Spearman rank correlation between a concept's `dropped` and its under-production
  1 - generated / rendered fraction, over concepts present in at least 5 % of the scenes.

    python -m compute.invert.card --encoder ingest/zoo/village-gan-encoder.safetensors --generated 16 \
        --rendered 48 --json-out /tmp/card.json
    # issue 19's acceptance set: 64 held-out z of sample set 921 (never used to choose a setting)
    python -m compute.invert.card --encoder ingest/zoo/village-gan-encoder.safetensors --seed 921 \
        --generated 64 --rendered 0 --batch 32 --threads 1 --json-out /tmp/gen64.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

GEN_SEED = 919  # default sample set of the held-out generated images (16 of them chose LAYER_LR)
BOOTSTRAP = 2000  # resamples of the bootstrap interval of a mean


def spread(values: list[float], bar: float) -> dict[str, float]:
    """Mean, standard deviation, minimum, quartiles, share >= `bar` and a bootstrap 95 % interval of the
    mean (percentiles of `BOOTSTRAP` resampled means, numpy stream seeded 0) of per-image values (NaNs,
    images with no concept in either segmentation, are left out as in the mean)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:  # no image with a concept: nothing to summarise (rather than failing after a long evaluation)
        return dict.fromkeys(("mean", "std", "min", "q1", "median", "q3", "share_ge_bar", "ci95_low", "ci95_high"),
                             float("nan"))
    means = np.random.default_rng(0).choice(v, size=(BOOTSTRAP, v.size), replace=True).mean(1)
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "min": float(v.min()),
            "q1": float(q1), "median": float(med), "q3": float(q3), "share_ge_bar": float((v >= bar).mean()),
            "ci95_low": float(np.quantile(means, 0.025)), "ci95_high": float(np.quantile(means, 0.975))}


def miou(seg: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image [N]: mean IoU over concepts (not 'none') labelled in either of two batches of images."""
    with torch.no_grad():
        ma, mb = seg.concept_masks(a)[:, 1:], seg.concept_masks(b)[:, 1:]
    inter = (ma & mb).flatten(2).sum(2).double()
    union = (ma | mb).flatten(2).sum(2).double()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.nan)
    return torch.nanmean(iou, 1).float()


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def evaluate(gen: Any, enc: Any, seg: Any, *, n_generated: int = 16, n_rendered: int = 48, n_coverage: int = 500,
             layer: str = "layer4", z_steps: int = 150, layer_steps: int = 250, batch: int = 16,
             device: str = "cpu", seed: int = GEN_SEED, start: int = 0, log: Any = print, **invert_kw: Any) -> dict[str, Any]:
    from compute.analyses.realism import Coverage
    from compute.invert.omissions import concept_rows, dropped
    from compute.invert.optimise import invert
    from ingest.real import to_input, village_images
    from ingest.samples import latents

    out: dict[str, Any] = {"layer": layer, "z_steps": z_steps, "layer_steps": layer_steps,
                           "threads": torch.get_num_threads(), "invert": dict(invert_kw)}
    kw = dict(encoder=enc, segmenter=seg, layer=layer, z_steps=z_steps, layer_steps=layer_steps, **invert_kw)

    def run(x: torch.Tensor) -> dict[str, list[float]]:
        acc: dict[str, list[float]] = {"psnr": [], "psnr_z": [], "psnr_encoder": [], "miou": [], "seconds": []}
        recs = []
        for s in range(0, x.shape[0], batch):
            xb = x[s:s + batch].to(device)
            inv = invert(gen, xb, **kw)
            acc["psnr"] += inv.psnr.tolist()
            acc["psnr_z"] += inv.psnr_z.tolist()
            acc["psnr_encoder"] += inv.psnr_encoder.tolist()
            acc["miou"] += miou(seg, xb, inv.reconstruction.to(device)).tolist()
            acc["seconds"].append(inv.seconds / xb.shape[0])
            recs.append(inv.reconstruction)
            log(f"  {s + xb.shape[0]}/{x.shape[0]}: PSNR {np.mean(acc['psnr']):.2f} dB, mIoU {np.nanmean(acc['miou']):.4f} "
                f"(this batch: PSNR {[round(v, 2) for v in inv.psnr.tolist()]}, mIoU {[round(v, 4) for v in acc['miou'][-xb.shape[0]:]]}, "
                f"{inv.seconds:.0f} s)")
        acc["recs"] = torch.cat(recs)  # type: ignore[assignment]
        return acc

    def summary(acc: dict[str, Any]) -> dict[str, Any]:
        p = np.array(acc["psnr"])
        return {"n": int(p.size), "psnr_mean": float(p.mean()), "psnr_median": float(np.median(p)),
                "psnr_min": float(p.min()), "share_psnr_ge_30": float((p >= 30).mean()),
                "psnr_z_mean": float(np.mean(acc["psnr_z"])), "psnr_encoder_mean": float(np.mean(acc["psnr_encoder"])),
                "miou_mean": float(np.nanmean(acc["miou"])), "seconds_per_image": float(np.mean(acc["seconds"])),
                "psnr_spread": spread(acc["psnr"], 30.0), "miou_spread": spread(acc["miou"], 0.9),
                "per_image": {"psnr": [round(x, 3) for x in acc["psnr"]], "miou": [round(x, 4) for x in acc["miou"]]}}

    t0 = time.perf_counter()
    if n_generated:
        log(f"generated images (sample set {seed}, #{start}..{start + n_generated - 1})")
        with torch.no_grad():
            xg = gen(latents(seed, n_generated, int(gen.z_dim), start=start).to(device)).cpu()
        out["generated"] = summary(run(xg)) | {"seed": seed, "start": start}
    if n_rendered:
        log(f"rendered scenes ({n_rendered})")
        imgs, _, seeds = village_images(n_rendered, 0, size=int(gen.resolution))
        xr = to_input(imgs)
        acc = run(xr)
        out["rendered"] = summary(acc)
        rows, _, _ = concept_rows(seg, xr.to(device), acc["recs"].to(device))
        drop = dropped(rows)
        out["dropped"] = drop
        # the realism analysis's coverage: generated vs rendered pixel fractions under the same segmenter
        names = [c.name for c in seg.concepts]
        cov_g, cov_r = Coverage(len(names), 0.005), Coverage(len(names), 0.005)
        with torch.no_grad():
            for s in range(0, n_coverage, 100):
                k = min(100, n_coverage - s)
                cov_g.add(seg.concept_masks(gen(latents(1, k, int(gen.z_dim), start=s).to(device))))
            rimgs, _, _ = village_images(n_coverage, 1, size=int(gen.resolution))
            for s in range(0, n_coverage, 100):
                cov_r.add(seg.concept_masks(to_input(rimgs[s:s + 100]).to(device)))
        g = {r["concept"]: r["pixel_fraction"] for r in cov_g.rows(names, "generated")}
        r_ = {r["concept"]: r["pixel_fraction"] for r in cov_r.rows(names, "real")}
        under = {c: 1 - g[c] / r_[c] for c in r_ if r_[c] > 0}
        judged = [d for d in drop if d["images"] >= max(1, 0.05 * n_rendered) and d["concept"] in under]
        out["under_production"] = under
        out["rank_correlation"] = {
            "spearman": spearman([d["dropped"] for d in judged], [under[d["concept"]] for d in judged]),
            "concepts": [d["concept"] for d in judged], "n_coverage": n_coverage}
        out["most_dropped"] = [d["concept"] for d in judged[:3]]
        out["most_under_produced"] = sorted(under, key=lambda c: -under[c])[:3]
    out["seconds"] = time.perf_counter() - t0
    return out


def card_text(name: str, path: Path, meta: dict[str, Any], ev: dict[str, Any]) -> str:
    g, r = ev.get("generated", {}), ev.get("rendered", {})
    lines = [f"# {path.stem} — model card", "",
             f"The layer-wise encoder of `{name}` (issue 19): one small inverse network per generator layer "
             f"(`compute/invert/encoder.py`), composed image -> z. It starts the optimiser of "
             f"`gandissect invert` (z, then the featuremap of `{ev.get('layer')}`).", "",
             "## Training", "",
             f"- command: `gandissect train encoder --model {name} --steps {meta.get('steps')} --finetune "
             f"{meta.get('finetune')} --batch {meta.get('batch')} --threads {meta.get('threads')}`",
             f"- training time: {meta.get('train_seconds')} s on a shared 2-core CPU ({meta.get('threads')} torch thread)",
             f"- data: generated samples only (z from a torch stream seeded {meta.get('seed')}), every layer's input known", "",
             "## Evaluation", "",
             f"Optimiser: {ev.get('z_steps')} z steps then {ev.get('layer_steps')} steps on `{ev.get('layer')}`. "
             f"PSNR on 8-bit images in [0, 1]. Produced by `python -m compute.invert.card` in {ev.get('seconds', 0):.0f} s.", "",
             "| images | n | PSNR start (E(x) or best of 64 fixed z) | PSNR after z | PSNR final (mean / median / min) | share >= 30 dB | seg mIoU | s / image |",
             "|---|---|---|---|---|---|---|---|"]
    for label, d in (("generated, held-out z", g), ("rendered scenes", r)):
        if d:
            lines.append(f"| {label} | {d['n']} | {d['psnr_encoder_mean']:.1f} | {d['psnr_z_mean']:.1f} | "
                         f"{d['psnr_mean']:.1f} / {d['psnr_median']:.1f} / {d['psnr_min']:.1f} | "
                         f"{100 * d['share_psnr_ge_30']:.0f} % | {d['miou_mean']:.3f} | {d['seconds_per_image']:.1f} |")
    if "rank_correlation" in ev:
        rc = ev["rank_correlation"]
        lines += ["", "### Omissions over rendered scenes vs the realism analysis's under-production", "",
                  f"Spearman rank correlation of `dropped` and `1 - generated / rendered pixel fraction` over "
                  f"{len(rc['concepts'])} concepts: **{rc['spearman']:.2f}** (coverage from {rc['n_coverage']} "
                  f"images of each).", "", "| concept | images | dropped | under-production |", "|---|---|---|---|"]
        for d in ev["dropped"]:
            u = ev["under_production"].get(d["concept"])
            lines.append(f"| {d['concept']} | {d['images']} | {100 * d['dropped']:.1f} % | "
                         f"{'' if u is None else f'{100 * u:+.1f} %'} |")
    return "\n".join(lines) + "\n"


def write_card(gen: Any, enc: Any, name: str, path: Path, meta: dict[str, Any], device: str = "cpu",
               **kw: Any) -> Path:
    from ingest.zoo import load_segmenter

    seg = load_segmenter("village-seg", device=device)
    ev = evaluate(gen, enc, seg, device=device, **kw)
    card = Path(path).with_suffix(".md")
    card.write_text(card_text(name, Path(path), meta, ev))
    Path(path).with_suffix(".eval.json").write_text(json.dumps(ev, indent=1))
    print(f"wrote {card}")
    return card


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compute.invert.card")
    ap.add_argument("--model", default="village-gan")
    ap.add_argument("--encoder", default=None, help="encoder .safetensors ('none': no encoder)")
    ap.add_argument("--generated", type=int, default=16)
    ap.add_argument("--seed", type=int, default=GEN_SEED, help="sample set of the held-out generated z")
    ap.add_argument("--start", type=int, default=0, help="first sample of the set (to split a long evaluation)")
    ap.add_argument("--rendered", type=int, default=48)
    ap.add_argument("--coverage", type=int, default=500)
    ap.add_argument("--z-steps", type=int, default=150)
    ap.add_argument("--layer-steps", type=int, default=250)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--restarts", type=int, default=1, help="z-step starts per image (invert's `restarts`)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--card", default=None, help="write the model card for this encoder with --meta-from it")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from compute.invert.encoder import load_encoder
    from ingest.zoo import load_generator, load_segmenter

    gen = load_generator(a.model)
    enc = None if not a.encoder or a.encoder == "none" else load_encoder(a.encoder)
    seg = load_segmenter("village-seg")
    ev = evaluate(gen, enc, seg, n_generated=a.generated, n_rendered=a.rendered, n_coverage=a.coverage,
                  z_steps=a.z_steps, layer_steps=a.layer_steps, batch=a.batch, seed=a.seed, start=a.start,
                  **({"restarts": a.restarts} if a.restarts != 1 else {}))
    text = json.dumps({k: v for k, v in ev.items() if k != "dropped"} | {"dropped": ev.get("dropped")}, indent=1)
    if a.json_out:
        Path(a.json_out).write_text(text)
    if a.card and enc is not None:
        meta = json.loads(getattr(enc, "metadata", {}).get("train", "{}"))
        Path(a.card).write_text(card_text(a.model, Path(a.encoder), meta, ev))
        print(f"wrote {a.card}")
    print(text[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
