"""Repair a GAN by ablating artifact units (paper section 4.2, Table 1/2; supplement S-6.1, Fig. 12).

Reads the job's generator and segmenter, real images (`ingest.real`), the realism run it depends on
(`unit_realism`), the hand flags (`unit_flags`, resolved when the run is planned, so a new flag makes a
new run) or a dissection's IoU for a concept; writes `repair_effects` (Fréchet distance of the whole
generated sample to real images, before and after ablating each unit set — against the real images
left after `real_exclude` (fd_before, fd_after) and against the full real distribution, the same
`real_samples` scenes with nothing left out (fd_before_full, fd_after_full); with no `real_exclude`
the two are the same), `repair_concepts` (each
concept's pixel share before and after) and `realism_flag_pr` (precision and recall of the worst
realism scores as a predictor of the manual set, `sklearn.metrics.precision_recall_curve`).

Unit sets per layer (`n_units` = 20 as in the paper):
    manual  the flagged units (`manual = "flags"`: unit_flags with flag artifact or watermark), or
            `manual = "concept:<name>"`: up to n_units units with IoU >= manual_min_iou (0.04) for the
            concept in the dissection (needs a dissect analysis of the model in the spec)
    realism the n_units worst realism scores
    union   manual | realism
    random  n_units random units, `draws` (5) draws
Ablation sets the units to 0 over the whole image. Parameters as in realism (real, real_samples,
real_seed, real_exclude — e.g. ["watermark"] for the watermark-free real scenes — features,
inception_weights, batch_size). Scoring only against watermark-free scenes rewards removing
watermarks by construction, though real scenes carry them too (15 % of rendered village scenes): the
full-distribution columns say whether the repair still helps when the real watermarks count.
The generated sample's features and coverage, before and after each ablation, are one resumable pass of a
`compute.core.pool.LayerPool` (checkpointed under `.cache/<run_key>/`, named by
`compute.jobs.context.pass_name`). Parameters are `job.config`'s,
checked at parse time (defaults in compute/analyses/params.py; code version, needs and tables in the
registry, compute/analyses/__init__.py); `flagged` is resolved at plan time (`resolve`).

    gandissect run gandissect.toml --only repair
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compute import analyses
from compute.analyses.params import defaults
from compute.analyses.realism import Coverage, job_extractor, real_exclude, real_set
from compute.core.features import check_count, features_and_masks
from compute.core.frechet import feature_stats, frechet_from_stats
from compute.core.intervene import edit_featuremap, unit_alpha
from compute.core.pool import Gather, LayerPool, PoolBatch
from compute.jobs.context import Job, RunContext, pass_name
from db.errors import BadInput

FLAGS_SQL = ("select layer, list(distinct unit order by unit) as units from unit_flags "
             "where model = ? and flag in ('artifact', 'watermark') group by layer")
REALISM_SQL = "select unit, frechet from unit_realism where run_key = ? and layer = ? order by unit"
CONCEPT_SQL = ("select unit from unit_iou where run_key = ? and layer = ? and concept = ? and iou >= ? "
               "order by iou desc, unit limit ?")


class RepairError(BadInput):
    """Bad repair input (one line)."""


def resolve(store_path: str, analysis: Any, model: str, layers: tuple[str, ...]) -> dict[str, Any]:
    """Parameters read from the store when the run is planned: the hand-flagged units per layer."""
    if analysis.param("manual", defaults("repair")["manual"]) != "flags" or not Path(store_path).exists():
        return {"flagged": {}}
    from db.store import read

    try:
        df = read(FLAGS_SQL, [model], path=store_path)
    except Exception:  # a store without the table yet: nothing flagged
        return {"flagged": {}}
    return {"flagged": {r["layer"]: [int(u) for u in r["units"]] for r in df.iter_rows(named=True)
                        if r["layer"] in layers}}


def manual_units(job: Job, ctx: RunContext, layer: str, units: int) -> list[int]:
    cfg = job.config
    how = str(cfg.manual)
    if how == "flags":
        flagged = cfg.flagged or {}
        return sorted(int(u) for u in flagged.get(layer, []) if 0 <= int(u) < units)
    if how.startswith("concept:"):
        concept = how.split(":", 1)[1]
        try:
            dissect = job.dep("dissect")
        except KeyError:
            raise RepairError(f"analysis {cfg.name!r}: manual = {how!r} needs a dissect analysis of model "
                              f"{job.model.name!r} covering layer {layer!r} in the spec") from None
        df = ctx.read(CONCEPT_SQL, [dissect, layer, concept, float(cfg.manual_min_iou), int(cfg.n_units)])
        return sorted(int(u) for u in df["unit"])
    raise RepairError(f"analysis {cfg.name!r}: manual = {how!r}; allowed: \"flags\", \"concept:<name>\"")


def unit_sets(manual: list[int], scores: list[float], n_units: int, draws: int, seed: int, layer_index: int
              ) -> list[tuple[str, int, list[int]]]:
    """(unit_set, draw, units) for the manual, realism, union and random sets of one layer."""
    units = len(scores)
    worst = sorted(range(units), key=lambda u: (-scores[u], u))[:n_units]
    sets = []
    if manual:
        sets.append(("manual", 0, sorted(manual)))
    sets.append(("realism", 0, sorted(worst)))
    if manual:
        sets.append(("union", 0, sorted(set(manual) | set(worst))))
    g = torch.Generator().manual_seed(seed * 1_009 + layer_index)
    for d in range(draws):
        sets.append(("random", d, sorted(torch.randperm(units, generator=g)[:min(n_units, units)].tolist())))
    return sets


def flag_pr(scores: list[float], flagged: list[int]) -> list[dict[str, Any]]:
    """Precision/recall of 'frechet >= threshold' as a predictor of the flagged units, per threshold."""
    from sklearn.metrics import precision_recall_curve

    y = np.zeros(len(scores), dtype=int)
    y[list(flagged)] = 1
    s = np.asarray(scores, dtype=np.float64)
    precision, recall, thresholds = precision_recall_curve(y, s)
    rows = []
    for p, r, t in zip(precision[:-1], recall[:-1], thresholds):  # the last point (P=1, R=0) has no threshold
        rows.append({"k": int((s >= t).sum()), "frechet": float(t), "precision": float(p), "recall": float(r),
                     "n_flagged": int(y.sum())})
    return rows


def ablated_features(job: Job, ctx: RunContext, layer: str, seed: int, n: int, batch_size: int,
                     sets: list[list[int]]) -> tuple[np.ndarray, Coverage, list[np.ndarray], list[Coverage]]:
    """Features [n, D] and coverage of the sample before, and after ablating each unit set: one resumable
    pass of a `LayerPool` (the generator below the layer runs once per batch; each set's edit runs the rest)."""
    pool = LayerPool.of(job, ctx, layer, seed, segment=False, keep=False)  # each batch is used once
    k = len(ctx.segmenter(job).concepts)

    def make(_: Any) -> dict[str, Any]:
        return {"f": Gather(), "c": Coverage(k), **{f"f{i}": Gather() for i in range(len(sets))},
                **{f"c{i}": Coverage(k) for i in range(len(sets))}}

    def fold(p: LayerPool, st: dict[str, Any], b: PoolBatch) -> None:
        seg, f_x = p.seg, job_extractor(job, p.context)  # an engine's worker: its own context's extractor
        with torch.no_grad():
            f, m = features_and_masks(f_x, seg, p.finish(b.r, b.z))
            st["f"].add(torch.from_numpy(f))
            st["c"].add(m)
            for i, us in enumerate(sets):
                alpha = unit_alpha(us, b.r.shape[1], layer=layer, device=b.r.device)
                f, m = features_and_masks(f_x, seg, p.finish(edit_featuremap(b.r, alpha, 0.0, None, layer), b.z))
                st[f"f{i}"].add(torch.from_numpy(f))
                st[f"c{i}"].add(m)

    st = pool.stream(ctx, job, pass_name("repair", layer), make, fold, n, batch_size)
    return (st["f"].result().numpy(), st["c"], [st[f"f{i}"].result().numpy() for i in range(len(sets))],
            [st[f"c{i}"] for i in range(len(sets))])


def compute(job: Job, ctx: RunContext) -> dict[str, list[dict[str, Any]]]:
    cfg = job.config
    analysis, seed, samples = cfg.name, int(cfg.seed), int(cfg.samples)
    gen, seg = ctx.generator(job), ctx.segmenter(job)
    feat = job_extractor(job, ctx)
    check_count(samples, feat.dim, f"analysis {analysis!r}: samples")
    n_units, draws = int(cfg.n_units), int(cfg.draws)  # n_units >= 1: checked at parse time
    real_f, _ = real_set(job, seg, feat, int(gen.resolution), ctx.device)
    check_count(real_f.shape[0], feat.dim, f"analysis {analysis!r}: real images left after real_exclude")
    mu_r, s_r = feature_stats(real_f)
    if real_exclude(job):  # the full real distribution: the same sources, nothing left out
        full_f, _ = real_set(job, seg, feat, int(gen.resolution), ctx.device, exclude=[])
        check_count(full_f.shape[0], feat.dim, f"analysis {analysis!r}: real images")
        mu_full, s_full = feature_stats(full_f)
    else:
        mu_full, s_full = mu_r, s_r
    names = [c.name for c in seg.concepts]
    base = {"run_key": job.run_key, "model": job.model.name}
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in analyses.kind("repair").tables}
    for li, layer in enumerate(job.layers):
        df = ctx.read(REALISM_SQL, [job.dep("realism"), layer])
        if len(df) == 0:
            raise RepairError(f"analysis {analysis!r}: the realism run has no scores for layer {layer!r}; "
                              f"declare the layer in the realism analysis")
        scores = [float(v) for v in df["frechet"]]
        manual = manual_units(job, ctx, layer, len(scores))
        if not manual:
            print(f"note: {analysis} [{job.model.name}] {layer}: no manual units (manual = {cfg.manual!r}); "
                  f"only the realism and random sets are ablated")
        sets = unit_sets(manual, scores, n_units, draws, seed, li)
        f0, c0, fs, cs = ablated_features(job, ctx, layer, seed, samples, int(cfg.batch_size),
                                          [us for _, _, us in sets])
        st0 = feature_stats(f0)
        sts = [feature_stats(f) for f in fs]
        extra = {"fd_before": frechet_from_stats(*st0, mu_r, s_r),
                 "fd_before_full": frechet_from_stats(*st0, mu_full, s_full),
                 "before": c0.state_dict()["pixels"].tolist(), "total": c0.total,
                 "after": [(frechet_from_stats(*st, mu_r, s_r), c.pixels.tolist()) for st, c in zip(sts, cs)],
                 "after_full": [frechet_from_stats(*st, mu_full, s_full) for st in sts]}
        for (name, draw, us), (fd, pixels), fd_full in zip(sets, extra["after"], extra["after_full"]):
            row = {**base, "layer": layer, "unit_set": name, "draw": draw}
            out["repair_effects"].append({**row, "n_units": len(us), "units": json.dumps(us),
                                          "fd_before": extra["fd_before"], "fd_after": fd,
                                          "fd_before_full": extra["fd_before_full"], "fd_after_full": fd_full})
            out["repair_concepts"] += [{**row, "concept": c, "fraction_before": extra["before"][i] / extra["total"],
                                        "fraction_after": pixels[i] / extra["total"]}
                                       for i, c in enumerate(names) if c != "none"]
        if manual:
            out["realism_flag_pr"] += [{**base, "layer": layer, **r} for r in flag_pr(scores, manual)]
    return out
