"""Measure the intervention bars on the village GAN: runs `examples/intervene.toml`, then reads the store.

Reads the spec (default `examples/intervene.toml`), the generator checkpoint (default: the final
`ingest/zoo/village-gan.safetensors`, else the newest `village-gan-step*.safetensors`) and the bundled
segmenter; writes the runs and result rows of the spec's analyses to the store (default
`intervene.duckdb`, or --store) and prints one line per bar with the measured value; `--json PATH`
also writes the numbers. Nothing is tuned here: every number comes from the store or from the
re-computation described next to it.

    python -m compute.reports.village [--checkpoint PATH] [--store PATH] [--json OUT]
        [--set ANALYSIS.KEY=JSON ...]
    python -m compute.reports.village --door-contexts insert-door.duckdb   # after examples/insert-door.toml

`--door-contexts STORE` measures nothing: it prints the door insertion-by-context table of every
segmenter in a store (the latest done insert run per segmenter; `examples/insert-door.toml` runs
the door insertion with village-seg and with village-seg-parts) and each one's wall / sky ratio.

Bars:
- tree: ablating the 20 highest-alpha units leaves <= 50 % of the tree pixels;
- tree, door, window, dome: alpha-ranked ablation removes at least as much as IoU-ranked at n = 20,
  and 20 random units remove < 10 % (mean over the random draws);
- trees removed reveal building: on the held-out generated images, the share of the former tree
  pixels (baseline segmentation) that the segmenter labels building after the ablation, compared with
  the share of tree pixels that the tree-free render of the same scene shows as building in the
  rendered village world (`render(seed, trees=False)`, 500 scenes); the bar is >= one third of it;
- door insertion: mean effect at wall locations >= 5x that at sky locations; the context ranking;
- watermark: ablating the 20 highest-alpha units removes >= 80 % of watermark pixels while every
  other concept's pixel fraction (those covering >= 0.1 % of the pixels) changes by < 5 % relative.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
ZOO = REPO / "ingest" / "zoo"
SPEC = REPO / "examples" / "intervene.toml"
TOP = 20


def newest_checkpoint() -> Path:
    final = ZOO / "village-gan.safetensors"
    if final.exists():
        return final
    steps = sorted(ZOO.glob("village-gan-step*.safetensors"),
                   key=lambda p: int(re.search(r"step(\d+)", p.name).group(1)))
    if not steps:
        raise FileNotFoundError(f"no village-gan checkpoint in {ZOO}")
    return steps[-1]


def _toml_value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")


def write_spec(src: Path, checkpoint: Path, store: Path, overrides: dict[tuple[str, str], Any], out: Path) -> Path:
    """A copy of the spec with absolute paths, the chosen checkpoint and store, and overrides applied."""
    raw = tomllib.loads(src.read_text())
    base = src.resolve().parent
    lines = [f"[store]\npath = {_toml_value(str(store))}\n"]
    for m in raw.get("models", []):
        m = {**m, "checkpoint": str(checkpoint)}
        lines.append("[[models]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in m.items()))
    for s in raw.get("segmenters", []):
        s = {**s, "checkpoint": str((base / s["checkpoint"]).resolve())}
        lines.append("[[segmenters]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in s.items()))
    for a in raw.get("analyses", []):
        a = dict(a)
        for (name, key), v in overrides.items():
            if name == a.get("name"):
                a[key] = v
        lines.append("[[analyses]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in a.items()))
    out.write_text("\n".join(lines))
    return out


def _curve(read, key: str, concept: str, ranking: str, n: int) -> float | None:
    df = read("select remaining from ablation_curves where run_key = ? and concept = ? and ranking = ? "
              "and n_units = ?", [key, concept, ranking, n])
    return float(df["remaining"][0]) if len(df) else None


def _top_units(read, ace_key: str, layer: str, concept: str) -> list[int]:
    return read("select unit from ace_alpha where run_key = ? and layer = ? and concept = ? "
                "order by alpha desc, unit limit ?", [ace_key, layer, concept, TOP])["unit"].to_list()


def heldout_counts(gen, seg, layer: str, seed: int, n: int, units: list[int] | None) -> torch.Tensor:
    """Pixels per concept [K] over held-out samples 0..n-1 of `seed`, with `units` ablated (None: none)."""
    from compute.core.intervene import apply_units
    from ingest.samples import latents

    total = torch.zeros(len(seg.concepts), dtype=torch.float64)
    for s in range(0, n, 32):
        z = latents(seed, min(32, n - s), int(gen.z_dim), start=s)
        with torch.no_grad():
            images = gen(z) if units is None else apply_units(gen, layer, z, units, 0.0)
            total += seg.concept_masks(images).sum((0, 2, 3)).double()
    return total


def tree_reveal(gen, seg, layer: str, seed: int, n: int, units: list[int]) -> dict[str, float]:
    """Share of the former tree pixels labelled building (and others) after ablating `units`."""
    from compute.core.intervene import apply_units
    from ingest.samples import latents

    names = [c.name for c in seg.concepts]
    tree, hits = 0.0, {k: 0.0 for k in ("building", "wall", "sky", "grass", "tree")}
    for s in range(0, n, 32):
        z = latents(seed, min(32, n - s), int(gen.z_dim), start=s)
        with torch.no_grad():
            before = seg.concept_masks(gen(z))
            after = seg.concept_masks(apply_units(gen, layer, z, units, 0.0))
        was = before[:, names.index("tree")]
        tree += float(was.sum())
        for k in hits:
            hits[k] += float((was & after[:, names.index(k)]).sum())
    return {f"former_tree_now_{k}": v / max(tree, 1.0) for k, v in hits.items()} | {"former_tree_pixels": tree}


def world_tree_building(n: int = 500) -> float:
    """In the rendered world: share of tree pixels that the tree-free render shows as building."""
    from ingest.village import render

    tree = building = 0
    for seed in range(n):
        with_trees, without = render(seed), render(seed, trees=False)
        t = with_trees.labels["tree"]
        tree += int(t.sum())
        building += int((t & without.labels["building"]).sum())
    return building / max(tree, 1)


def measure(spec_path: Path) -> dict[str, Any]:
    from compute import runner, spec as specmod
    from db import store
    from ingest.zoo import load_model_spec, load_segmenter_spec

    s = specmod.load(spec_path)
    t0 = time.time()
    outcomes = runner.run(s, echo=lambda m: print(m, flush=True))
    failed = [o for o in outcomes if o.state == "failed"]
    if failed:
        raise SystemExit(f"failed: {failed[0].job.analysis.name}: {failed[0].error}")
    jobs = {j.analysis.kind: j for j in runner.plan(s)}

    def read(sql: str, params: list) -> Any:
        return store.read(sql, params, path=s.store)

    res: dict[str, Any] = {"checkpoint": s.models[0].checkpoint, "store": s.store,
                           "wall_seconds_this_call": time.time() - t0}
    res["seconds"] = {k: float(read("select seconds from runs where run_key = ?", [j.run_key])["seconds"][0])
                      for k, j in jobs.items()}
    ab, ace, ins = jobs["ablate"], jobs["ace"], jobs["insert"]
    layer = ab.layers[0]
    # ablation curves at n = 20
    curves = {}
    for c in ab.analysis.concepts:
        curves[c] = {r: _curve(read, ab.run_key, c, r, TOP) for r in ("ace", "iou", "random")}
        std = read("select remaining_std from ablation_curves where run_key = ? and concept = ? and ranking = 'random' "
                   "and n_units = ?", [ab.run_key, c, TOP])
        curves[c]["random_std"] = float(std["remaining_std"][0]) if len(std) else None
    res["remaining_at_20"] = curves
    res["causal_effects"] = read("select concept, unit_set, ace, ablation, insertion from causal_effects "
                                 "where run_key = ? order by concept, unit_set", [ab.run_key]).to_dicts()
    # insertion contexts of the inserted concept(s)
    ctx = read("select concept, context, locations, effect, effect_std from insertion_contexts where run_key = ? "
               "order by concept, effect desc", [ins.run_key])
    res["insertion_contexts"] = ctx.to_dicts()
    # re-computations on the held-out set
    gen = load_model_spec(s.model(ab.model.name)).eval()
    seg = load_segmenter_spec(s.segmenter(ab.analysis.segmenter)).eval()
    names = [c.name for c in seg.concepts]
    seed, n = ab.analysis.seed, ab.analysis.samples
    if "watermark" in ab.analysis.concepts:
        wm = _top_units(read, ace.run_key, layer, "watermark")
        before = heldout_counts(gen, seg, layer, seed, n, None)
        after = heldout_counts(gen, seg, layer, seed, n, wm)
        pixels = float(n * 64 * 64)
        others = {names[k]: {"before_fraction": float(before[k]) / pixels,
                             "relative_change": float((after[k] - before[k]) / before[k]) if before[k] else None}
                  for k in range(1, len(names)) if names[k] != "watermark"}
        res["watermark"] = {"units": wm, "remaining": float(after[names.index("watermark")] /
                                                            max(float(before[names.index("watermark")]), 1.0)),
                            "others": others}
    if "tree" in ab.analysis.concepts:
        res["tree_reveal"] = tree_reveal(gen, seg, layer, seed, n, _top_units(read, ace.run_key, layer, "tree"))
        res["tree_reveal"]["world_tree_over_building"] = world_tree_building()
    return res


def verdicts(res: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(bar, measured, met) for each bar of the issue."""
    out: list[tuple[str, str, bool | None]] = []
    rem = res["remaining_at_20"]
    if "tree" in rem and rem["tree"]["ace"] is not None:
        v = rem["tree"]["ace"]
        out.append(("tree: top-20 alpha ablation leaves <= 50 % of tree pixels", f"{100 * v:.1f} % left", v <= 0.5))
    for c in ("tree", "door", "window", "dome"):
        if c in rem and rem[c]["ace"] is not None:
            a, i = rem[c]["ace"], rem[c]["iou"]
            out.append((f"{c}: alpha ranking removes >= IoU ranking at n=20",
                        f"alpha leaves {100 * a:.1f} %, IoU leaves {100 * i:.1f} %", a <= i))
            r = rem[c]["random"]
            out.append((f"{c}: 20 random units remove < 10 %",
                        f"random removes {100 * (1 - r):.1f} % (std {100 * (rem[c]['random_std'] or 0):.1f})",
                        1 - r < 0.10))
    if "tree_reveal" in res:
        t = res["tree_reveal"]
        b, w = t["former_tree_now_building"], t["world_tree_over_building"]
        out.append(("trees removed reveal building: share >= 1/3 of the world's tree-over-building share",
                    f"{100 * b:.1f} % of former tree pixels now building; world {100 * w:.1f} % "
                    f"(ratio {b / w if w else float('nan'):.2f})", b >= w / 3))
    door = [r for r in res["insertion_contexts"] if r["concept"] == "door"]
    if door:
        by = {r["context"]: r["effect"] for r in door}
        wall, sky = by.get("wall"), by.get("sky")
        if wall is not None and sky is not None:
            ratio = wall / sky if sky > 0 else float("inf")
            out.append(("door: effect at wall >= 5x effect at sky",
                        f"wall {wall:.2f} px, sky {sky:.2f} px, ratio {ratio:.1f}", ratio >= 5))
        order = [r["context"] for r in door]
        above = all(order.index(x) < order.index(y) for x in ("wall", "building") for y in ("grass", "tree", "sky")
                    if x in order and y in order)
        out.append(("door: contexts rank wall/building above grass, tree, sky", " > ".join(order), above))
    if "watermark" in res:
        w = res["watermark"]
        big = {k: v for k, v in w["others"].items() if v["before_fraction"] >= 0.001 and v["relative_change"] is not None}
        worst = max(big.items(), key=lambda kv: abs(kv[1]["relative_change"])) if big else ("-", {"relative_change": 0})
        out.append(("watermark: top-20 alpha ablation removes >= 80 %", f"removes {100 * (1 - w['remaining']):.1f} %",
                    1 - w["remaining"] >= 0.8))
        out.append(("watermark: other concepts change < 5 % relative",
                    f"largest: {worst[0]} {100 * worst[1]['relative_change']:+.1f} %",
                    abs(worst[1]["relative_change"]) < 0.05))
    return out


DOOR_CONTEXTS_SQL = """
SELECT r.segmenter, c.context, c.locations, c.effect, c.effect_std, c.run_key
FROM insertion_contexts c JOIN runs_done r USING (run_key)
WHERE c.concept = ?
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY r.segmenter)  -- the latest done insert run per segmenter
ORDER BY r.segmenter, c.effect DESC NULLS LAST, c.context
"""


def door_contexts(store: str, concept: str = "door") -> dict[str, dict[str, Any]]:
    """Per segmenter: the concept's insertion effect per context (px) and the wall / sky ratio."""
    from db.store import read

    df = read(DOOR_CONTEXTS_SQL, [concept], path=store)
    out: dict[str, dict[str, Any]] = {}
    for seg in df["segmenter"].unique(maintain_order=True).to_list():
        part = df.filter(df["segmenter"] == seg)
        eff = dict(zip(part["context"].to_list(), part["effect"].to_list()))
        wall, sky = eff.get("wall"), eff.get("sky")
        out[seg] = {"contexts": part.drop("segmenter").to_dicts(), "wall": wall, "sky": sky,
                    "ratio": (wall / sky if sky else float("inf")) if wall is not None and sky is not None else None}
    return out


def print_door_contexts(store: str) -> None:
    for seg, r in door_contexts(store).items():
        print(f"{seg}: " + ", ".join(f"{c['context']} {c['effect']:.2f}" for c in r["contexts"]
                                     if c["effect"] is not None))
        if r["ratio"] is not None:
            print(f"{seg}: door inserted at wall {r['wall']:.2f} px vs sky {r['sky']:.2f} px ({r['ratio']:.1f}x)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spec", default=str(SPEC))
    p.add_argument("--checkpoint", default=None, help="generator checkpoint (default: final, else newest step)")
    p.add_argument("--store", default=str(REPO / "intervene.duckdb"))
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.add_argument("--set", action="append", default=[], metavar="ANALYSIS.KEY=JSON",
                   help="override an analysis parameter, e.g. intervene-ace.epochs=2")
    p.add_argument("--door-contexts", default=None, metavar="STORE",
                   help="only print the door insertion contexts of every segmenter in STORE")
    a = p.parse_args(argv)
    if a.door_contexts:
        print_door_contexts(a.door_contexts)
        return 0
    ckpt = Path(a.checkpoint).resolve() if a.checkpoint else newest_checkpoint()
    overrides = {}
    for item in a.set:
        lhs, _, value = item.partition("=")
        name, _, key = lhs.rpartition(".")
        overrides[(name, key)] = json.loads(value)
    with tempfile.TemporaryDirectory() as d:
        spec = write_spec(Path(a.spec), ckpt, Path(a.store).resolve(), overrides, Path(d) / "spec.toml")
        res = measure(spec)
    res["overrides"] = {f"{k[0]}.{k[1]}": v for k, v in overrides.items()}
    print(f"\ncheckpoint {res['checkpoint']}")
    print("seconds per analysis: " + ", ".join(f"{k} {v:.0f}" for k, v in res["seconds"].items()))
    for c, r in res["remaining_at_20"].items():
        print(f"remaining at n=20  {c:<10} alpha {r['ace']:.3f}  iou {r['iou']:.3f}  random {r['random']:.3f}")
    for row in res["insertion_contexts"]:
        print(f"insert {row['concept']} at {row['context']:<10} {row['locations']:>5} locations, "
              f"effect {row['effect']:.2f} +- {row['effect_std']:.2f} px")
    if "watermark" in res:
        for k, v in res["watermark"]["others"].items():
            rc = v["relative_change"]
            print(f"watermark ablation: {k:<10} fraction {v['before_fraction']:.4f} "
                  f"change {'-' if rc is None else f'{100 * rc:+.1f} %'}")
    if "tree_reveal" in res:
        print("tree reveal: " + ", ".join(f"{k} {v:.3f}" for k, v in res["tree_reveal"].items()))
    print()
    res["bars"] = []
    for bar, measured, ok in verdicts(res):
        print(f"[{'met ' if ok else 'MISS'}] {bar}: {measured}")
        res["bars"].append({"bar": bar, "measured": measured, "met": ok})
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
