"""The README's dissection results, regenerated from the store: a table, checks and a bar chart.

Reads `layer_summary`, `unit_labels`, `unit_iou` and `layer_null_iou_latest` (latest done q0.99 dissection
of a model, and of its training checkpoints); the headline compares the median best IoU over *all* units
with the permutation null's (units are never selected on the outcome first; the interpretable-only ratio
is printed beside it, labelled as selected). Writes `docs/figures/<model>-interpretable-units.png`
(stacked bars per layer and category, Altair rendered with vl-convert), `docs/figures/<model>-emergence.png`
when checkpoints exist, and the README section between `<!-- report:dissect -->` markers.

    python -m compute.reports.dissection [--db gandissect.duckdb] [--model village-gan] [--readme README.md]
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import polars as pl

from db.store import read

SUMMARY = """
select layer, layer_index, units, interpretable_units, object_units, part_units, material_units,
       distinct_concepts, beats_chance_units, median_interpretable_iou, null_median, null_q99
from layer_summary where model = ? and threshold_mode = ? order by layer_index
"""
TOP_CONCEPTS = """
select concept, max(iou) as best_iou from unit_labels
where model = ? and layer = ? and threshold_mode = ? and iou >= ? group by concept order by best_iou desc
"""
NULL_VS_UNITS = """
select median(l.iou) as median_best_iou,
       median(l.iou) filter (where l.interpretable) as median_interpretable_best_iou,
       (select median(n.median) from layer_null_iou_latest n where n.model = ? and n.threshold_mode = ?) as null_median
from unit_labels l where l.model = ? and l.threshold_mode = ?
"""
EMERGENCE = """
select m.model, m.training_step, s.layer, s.layer_index, s.interpretable_units
from layer_summary s join models m using (model)
where m.model_group = ? and s.threshold_mode = ? and m.training_step is not null
order by m.training_step, s.layer_index
"""


def layer_table(db: str, model: str, mode: str = "quantile") -> pl.DataFrame:
    return read(SUMMARY, [model, mode], path=db)


def checks(db: str, model: str, mode: str = "quantile") -> dict[str, object]:
    """The issue's bars, measured: best layer, concepts with IoU >= 0.10 there, unit vs null medians."""
    t = layer_table(db, model, mode)
    best = t.sort(["distinct_concepts", "interpretable_units"], descending=True).row(0, named=True)
    top = read(TOP_CONCEPTS, [model, best["layer"], mode, 0.10], path=db)
    nv = read(NULL_VS_UNITS, [model, mode, model, mode], path=db).row(0, named=True)
    all_med, unit_med, null_med = nv["median_best_iou"], nv["median_interpretable_best_iou"], nv["null_median"]
    # the headline is over every unit: interpretable units are chosen on their IoU, so their ratio to the
    # null is bounded below by the selection threshold and says little on its own
    return {"best_layer": best["layer"], "concepts_iou_ge_0.10": top["concept"].to_list(),
            "median_best_iou": all_med, "median_interpretable_best_iou": unit_med, "null_median": null_med,
            "ratio_all": (all_med / null_med) if all_med and null_med else None,
            "ratio_interpretable": (unit_med / null_med) if unit_med and null_med else None}


def bar_chart(t: pl.DataFrame, title: str, out: Path) -> None:
    import altair as alt
    import vl_convert as vlc

    long = t.select("layer", "layer_index", "object_units", "part_units", "material_units").unpivot(
        index=["layer", "layer_index"], variable_name="category", value_name="units")
    long = long.with_columns(pl.col("category").str.replace("_units", ""))
    order = t.sort("layer_index")["layer"].to_list()
    chart = alt.Chart(long.to_pandas()).mark_bar().encode(
        x=alt.X("layer:N", sort=order, title="layer"), y=alt.Y("units:Q", title="interpretable units"),
        color=alt.Color("category:N", scale=alt.Scale(domain=["object", "part", "material"])),
    ).properties(title=title, width=420, height=220)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(vlc.vegalite_to_png(chart.to_json(), scale=2))


def emergence_chart(e: pl.DataFrame, title: str, out: Path) -> None:
    import altair as alt
    import vl_convert as vlc

    chart = alt.Chart(e.to_pandas()).mark_line(point=True).encode(
        x=alt.X("training_step:Q", title="training step"), y=alt.Y("interpretable_units:Q"),
        color=alt.Color("layer:N", sort=e.sort("layer_index")["layer"].unique(maintain_order=True).to_list()),
    ).properties(title=title, width=420, height=220)
    out.write_bytes(vlc.vegalite_to_png(chart.to_json(), scale=2))


def markdown(t: pl.DataFrame, c: dict[str, object], model: str, figures: list[str]) -> str:
    cols = ["layer", "units", "interpretable_units", "object_units", "part_units", "material_units",
            "distinct_concepts", "beats_chance_units", "median_interpretable_iou", "null_median"]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = ""
    for r in t.select(cols).iter_rows():
        body += "| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else ("–" if v is None else str(v))
                                  for v in r) + " |\n"
    ratio, ratio_sel = c["ratio_all"], c["ratio_interpretable"]
    first = t.sort("layer_index").row(0, named=True)
    lines = [
        f"Dissection of `{model}` (fixed quantile q0.99, the PNAS code's upsampling grid; `gandissect run`, "
        "then `python -m compute.reports.dissection`):",
        "", head + body,
        "- `beats_chance_units`: units whose best concept has Benjamini-Hochberg q < 0.05 over the layer's "
        "unit x concept tests, against a permutation null (each unit's maps paired with the masks of other "
        "images inside blocks of 8, masks left in place; see docs/statistics.md). It measures association "
        "with a concept, not interpretability; `null_median` is the median over units of the null's "
        f"expected best IoU. {first['layer']}: {first['beats_chance_units']} of {first['units']} units.",
        f"- best layer (most distinct concepts): **{c['best_layer']}**; concepts matched by a unit with "
        f"IoU >= 0.10 there: {len(c['concepts_iou_ge_0.10'])} ({', '.join(c['concepts_iou_ge_0.10']) or 'none'})",
        f"- median best IoU over all units (no selection) {c['median_best_iou']:.4f} vs the permutation null's "
        f"median {c['null_median']:.4f}: **{ratio:.2f}x**" if ratio else "- no units: the null comparison is undefined",
        f"- over the interpretable units only (selected on the outcome): {c['median_interpretable_best_iou']:.4f}, "
        f"{ratio_sel:.1f}x the null (selected on IoU > 0.04, so this ratio is at least 0.04 / null by "
        "construction)" if ratio_sel else
        "- no interpretable units",
        "",
    ] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, text: str, tag: str = "report:dissect") -> None:
    src = readme.read_text()
    start, end = f"<!-- {tag} -->", f"<!-- /{tag} -->"
    block = f"{start}\n{text}{end}"
    if start in src:
        src = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda m: block, src, flags=re.S)
    else:
        src += "\n" + block + "\n"
    readme.write_text(src)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="gandissect.duckdb")
    p.add_argument("--model", default="village-gan")
    p.add_argument("--group", default="village-gan-training", help="model_group of the training checkpoints")
    p.add_argument("--readme", default="README.md")
    p.add_argument("--figures", default="docs/figures")
    a = p.parse_args(argv)
    t = layer_table(a.db, a.model)
    if t.is_empty():
        raise SystemExit(f"no q0.99 dissection of {a.model} in {a.db}: run `gandissect run` first")
    c = checks(a.db, a.model)
    figs = [f"{a.figures}/{a.model}-interpretable-units.png"]
    bar_chart(t, f"{a.model}: interpretable units per layer (q0.99)", Path(figs[0]))
    e = read(EMERGENCE, [a.group, "quantile"], path=a.db)
    if not e.is_empty():
        figs.append(f"{a.figures}/{a.model}-emergence.png")
        emergence_chart(e, "interpretable units across training checkpoints", Path(figs[1]))
    text = markdown(t, c, a.model, figs)
    update_readme(Path(a.readme), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
