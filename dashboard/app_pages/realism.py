"""Realism: diagnose and repair a generator (paper section 4.2, S-6.1, S-6.3). For one layer: the histogram of
per-unit realism scores (Fréchet distance of each unit's top images to real images); the least realistic
units with their top images and a one-click artifact flag; the repair table (Fréchet distance before and
after ablating the hand-flagged units, the worst realism units, their union, random units) with a
concept's change; the precision / recall of the score against the flags; what the generator under- or
over-produces; and the label counts with the least realistic units left out.

Reads the latest done realism / repair / coverage runs through `dashboard.queries` (views
unit_realism_latest, repair_latest, repair_concepts_latest, realism_flag_pr_latest,
concept_coverage_latest, macro realism_label_counts); writes only `unit_flags` (one short transaction per
click). Images come last and only for the WORST_SHOWN worst units."""
from __future__ import annotations

from typing import Any

import polars as pl
import streamlit as st

from dashboard import charts, images, queries, ui

WORST_SHOWN = 8  # units drawn with their top images
STRIP_K = 5  # images per strip
PR_K = 20  # the cut-off: the 20 worst units
REALISM_KIND, REPAIR_KIND, COVERAGE_KIND = "realism", "repair", "realism"  # analysis kinds in gandissect.toml
UNIT_SETS = {"manual": "units flagged artifact / watermark",  # manual = "flags"; another rule is named instead "realism": "worst realism scores", "union": "manual ∪ realism",
             "random": "random units"}
FLAG_NOTE = ("Flags take effect in the repair table at the next `gandissect run` "
             "(the repair run key includes the flags).")


def hint(kind: str, extra: str = "") -> str:
    return f'declare an analysis with `kind = "{kind}"`{extra} in gandissect.toml and run `gandissect run`'


def units_text(units: list[int] | None, n_units: int, draws: int, most: int = 12) -> str:
    if units is None:
        return f"{n_units} random units × {draws} draws" if draws > 1 else f"{n_units} units"
    shown = ", ".join(str(u) for u in units[:most]) + (", …" if len(units) > most else "")
    return f"{n_units}: {shown}" if units else "none"


def _after(r: dict[str, Any], key: str) -> str:
    out = ui.fmt(r[key], ".4g")
    return out + (f" ± {ui.fmt(r[key + '_std'], '.2g')}" if r[key + "_std"] is not None else "")


def _change(r: dict[str, Any], before: str, after: str) -> str:
    if r[after] is None or r[before] is None:
        return "–"
    d = r[after] - r[before]
    return f"{ui.fmt(d, '+.3g')} ({d / r[before]:+.1%})" if r[before] else ui.fmt(d, "+.3g")


def has_full(rep: pl.DataFrame) -> bool:
    """Whether the run left real images out (real_exclude) and scored the full real distribution too."""
    return bool(rep.height and (rep["real_exclude"].list.len()[0] or 0) > 0
                and rep["fd_before_full"].null_count() < rep.height)


def repair_table(rep: pl.DataFrame) -> pl.DataFrame:
    """The paper's Table 1 shape: unit set | units | Fréchet before | after | change (random: mean ± std);
    when the run left real images out (real_exclude), the same against the full real distribution."""
    rows = []
    full = has_full(rep)
    for r in rep.iter_rows(named=True):
        after = _after(r, "fd_after")
        what = UNIT_SETS.get(r["unit_set"], r["unit_set"])
        if r["unit_set"] == "manual" and r["manual_rule"] != "flags":  # e.g. "concept:watermark": not flags
            what = f"rule {r['manual_rule']}, not the flags"
        rows.append({"unit set": f"{r['unit_set']} ({what})",
                     "units": units_text(r["units"], r["n_units"], r["draws"]),
                     "Fréchet before": ui.fmt(r["fd_before"], ".4g"), "after": after,
                     "change": f"{ui.fmt(r['fd_change'], '+.3g')} ({r['fd_change'] / r['fd_before']:+.1%})"
                     if r["fd_change"] is not None and r["fd_before"] else ui.fmt(r["fd_change"], "+.3g")})
        if full:
            rows[-1].update({"before (all real)": ui.fmt(r["fd_before_full"], ".4g"),
                             "after (all real)": _after(r, "fd_after_full") if r["fd_after_full"] is not None else "–",
                             "change (all real)": _change(r, "fd_before_full", "fd_after_full")})
    return pl.DataFrame(rows)


def pr_mark(pr: pl.DataFrame) -> dict[str, Any]:
    """The P/R row to mark: k = PR_K, else the largest k below it, else the smallest k."""
    below = pr.filter(pl.col("k") <= PR_K)
    return (below.row(-1, named=True) if below.height else pr.row(0, named=True))


db = ui.db()
st.title("Realism")
ui.require_store(db)

index = queries.realism_layers(db)
scored_models = index["model"].unique(maintain_order=True).to_list()
models = queries.models(db)["model"].to_list()
top = st.columns([2, 2, 3])
model = ui.pick("model", "model", models, "realism_model", top[0], default=scored_models[0] if scored_models else None,
                format_func=lambda m: f"{m} (scored)" if m in scored_models else m)
mine = index.filter(pl.col("model") == model)
repaired = mine.filter(pl.col("repair_sets") > 0)  # default: a repaired layer, else the first scored one
layer = ui.pick_layer(db, model, "realism", top[1],
                      default=(repaired if repaired.height else mine)["layer"][0] if mine.height else None)
if layer is None:
    st.info(f"Model {model} has no registered layers yet: run `gandissect run`.")
    st.stop()
seg, mode = ui.pick_dissection(db, model, layer, "realism", top[2])
if mine.height and layer not in mine["layer"].to_list():
    top[2].caption(f"layers of {model} with realism or repair runs: {', '.join(mine['layer'].to_list())}")

# ---------------------------------------------------------------- per-unit realism scores
st.subheader("Per-unit realism scores")
summary = queries.realism_summary(db, model, layer)
units = queries.realism_units(db, model, layer, seg, mode) if summary["units"] else None
slots: dict[int, Any] = {}
if units is None:
    st.info(f"No realism scores for {model} {layer} yet: {hint(REALISM_KIND)}.", icon=":material/insights:")
else:
    cols = st.columns(5)
    cols[0].metric("units scored", summary["units"])
    cols[1].metric("median Fréchet", ui.fmt(summary["median"], ".3g"))
    cols[2].metric("90th percentile", ui.fmt(summary["p90"], ".3g"))
    cols[3].metric("worst", ui.fmt(summary["worst"], ".3g"))
    cols[4].metric("flagged", units.filter(pl.col("flag_state") == "flagged").height,
                   help="units flagged artifact or watermark")
    st.altair_chart(charts.realism_histogram(units), width="stretch")
    st.caption(f"Fréchet distance between the features of each unit's top {summary['n_top']} generated images "
               f"(sample seed {summary['seed']}) and of {summary['n_real']} real images; lower is more realistic. "
               "Red: units flagged artifact or watermark.")

    st.subheader(f"Least realistic units (the {min(WORST_SHOWN, units.height)} worst)")
    rows = list(units.head(WORST_SHOWN).iter_rows(named=True))
    per_row = 4
    for start in range(0, len(rows), per_row):
        for col, r in zip(st.columns(per_row), rows[start:start + per_row]):
            u = int(r["unit"])
            with col.container(border=True):
                st.markdown(f"**unit {u}** · #{r['worst_rank']} · Fréchet {ui.fmt(r['frechet'], '.3g')}")
                label = (f"{ui.md_escape(r['label'])} (IoU {ui.fmt(r['iou'])})" if r["label"] else "unlabelled")
                st.caption(label)
                badges = ui.flag_badges(r["flags"], r["custom_label"])
                if badges:
                    st.markdown(badges)
                slots[u] = st.empty()
                flags = (r["flags"] or "").split(", ")
                if "artifact" in flags:
                    if st.button("remove artifact flag", key=f"realism_unflag_{model}_{layer}_{u}",
                                 icon=":material/undo:"):
                        if ui.remove_flag(db, model, layer, u, "artifact"):
                            st.rerun()
                elif st.button("flag as artifact", key=f"realism_flag_{model}_{layer}_{u}",
                               icon=":material/warning:"):
                    note = f"realism rank {r['worst_rank']}, Fréchet {ui.fmt(r['frechet'], '.3g')}"
                    if ui.save_flag(db, model, layer, u, "artifact", note):
                        st.rerun()
                st.page_link(ui.UNIT_PAGE, label=f"open unit {u}", icon=":material/open_in_new:",
                             query_params=ui.unit_link_params(model, layer, u, seg, mode))
    st.caption(FLAG_NOTE)
    with st.expander(f"table of every scored unit ({units.height})"):
        table = units.drop("top_samples", "flag_state")
        st.dataframe(table, hide_index=True)
        st.download_button("CSV", lambda: table.write_csv().encode(), f"{model}-{layer}-realism.csv", "text/csv",
                           key="realism_csv")

# ---------------------------------------------------------------- repair
st.subheader("Repair: ablate units, measure the whole sample's Fréchet distance")
rep = queries.repair(db, model, layer)
if rep.height == 0:
    st.info(f"No repair run for {model} {layer} yet: {hint(REPAIR_KIND)}.", icon=":material/healing:")
else:
    st.dataframe(repair_table(rep), hide_index=True)
    first = rep.row(0, named=True)
    excluded = ", ".join(first["real_exclude"] or [])
    scored = (f"real images without {excluded} (the run's real_exclude) and, in the \"all real\" columns, to the "
              f"full real distribution (the same number of real images, nothing left out: removing an artifact "
              f"that real images also show is not rewarded by construction)" if has_full(rep) else
              ("real images without " + excluded if excluded else "real images"))
    st.caption(f"Fréchet distance of {first['n_samples'] or '?'} generated images (seed {first['seed']}) to "
               f"{scored}, before and after ablating each unit set (its units forced to 0); random: mean ± std "
               "over draws. " + FLAG_NOTE)
    rc = queries.repair_concepts(db, model, layer)
    if rc.height:
        names = rc["concept"].unique(maintain_order=True).to_list()
        concept = ui.pick("concept", "repair_concept", names, "realism_concept",
                          default="watermark" if "watermark" in names else names[0],
                          help="concepts ordered by how much ablation changes them")
        shown = rc.filter(pl.col("concept") == concept).select(
            pl.col("unit_set").alias("unit set"), pl.col("fraction_before").alias("pixel share before"),
            pl.col("fraction_after").alias("after"), pl.col("relative_change").alias("relative change"))
        st.dataframe(shown, hide_index=True, column_config={
            "pixel share before": st.column_config.NumberColumn(format="%.4f"),
            "after": st.column_config.NumberColumn(format="%.4f"),
            "relative change": st.column_config.NumberColumn(format="percent")})
        manual = shown.filter(pl.col("unit set") == "manual")
        if manual.height and manual["relative change"][0] is not None:
            rule = rep["manual_rule"][0] if rep.height and rep["manual_rule"][0] != "flags" else None
            who = f"the manual units ({rule})" if rule else "the hand-flagged units"
            st.caption(f"ablating {who} changes the {ui.md_escape(concept)} pixels by "
                       f"{manual['relative change'][0]:+.0%}")

# ---------------------------------------------------------------- precision / recall of the score against the flags
st.subheader("Does the realism score find the flagged units?")
pr = queries.flag_pr(db, model, layer)
if pr.height:
    mark = pr_mark(pr)
    st.altair_chart(charts.precision_recall(pr, int(mark["k"])), width="stretch")
    verb = "is" if mark["flagged_in_k"] == 1 else "are"
    st.caption(f"of the {mark['k']} worst units, {mark['flagged_in_k']} {verb} flagged "
               f"({mark['n_flagged']} flagged in all): precision {ui.fmt(mark['precision'], '.2f')}, "
               f"recall {ui.fmt(mark['recall'], '.2f')} (paper Fig. 12: 50 % / 50 % at the top 20)")
elif rep.height:
    st.caption("No precision / recall: no unit of this layer was flagged artifact or watermark when the repair ran. "
               + FLAG_NOTE)
else:
    st.caption(f"Precision and recall come with the repair run: {hint(REPAIR_KIND)}.")

# ---------------------------------------------------------------- what the generator cannot generate
st.subheader("What the generator under- or over-produces")
cov = queries.coverage(db, model)
if cov.height == 0:
    st.info(f"No generated-vs-real concept coverage for {model} yet: {hint(COVERAGE_KIND, ' and a segmenter')}.",
            icon=":material/compare:")
else:
    segs = cov["segmenter"].unique(maintain_order=True).to_list()
    cseg = ui.pick("segmenter", "coverage_segmenter", segs, "realism_cov_seg") if len(segs) > 1 else segs[0]
    cv = cov.filter(pl.col("segmenter") == cseg)
    st.altair_chart(charts.concept_coverage(cv), width="stretch")
    first = cv.row(0, named=True)
    st.caption(f"share of pixels the segmenter {cseg} labels with each concept in {first['n_generated']} generated "
               f"vs {first['n_real']} real images, as generated / real − 1 (−100 %: never generated)")
    only = cv.filter(pl.col("fraction_change").is_null() & (pl.col("generated_fraction") > 0))["concept"].to_list()
    if only:
        st.caption(f"in generated images only (never in the real ones): {', '.join(only)}")
    with st.expander("generated vs real, every concept"):
        st.dataframe(cv.drop("segmenter", "run_key"), hide_index=True)

# ---------------------------------------------------------------- realism-filtered labels
st.subheader("Labels without the least realistic units")
if units is None:
    st.caption(f"Needs realism scores: {hint(REALISM_KIND)}.")
elif seg is None:
    st.caption(f"No dissection of {model} {layer} yet: there are no labels to filter.")
else:
    default = float(round(summary["p90"], 2))
    cut = st.number_input("max Fréchet distance (units above it are left out)", min_value=0.0,
                          value=default, step=max(round(default / 20, 2), 0.01), format="%.2f",
                          key=f"realism_cut_{model}_{layer}", help="default: the layer's 90th-percentile score")
    counts = queries.realism_label_counts(db, model, layer, float(cut))
    row = counts.filter((pl.col("segmenter") == seg) & (pl.col("threshold_mode") == mode))
    if row.height:
        c = row.row(0, named=True)
        cols = st.columns(2)
        cols[0].metric("interpretable units", c["realistic_units"], c["realistic_units"] - c["interpretable_units"],
                       help=f"{c['interpretable_units']} without the filter")
        cols[1].metric("concepts", c["realistic_concepts"], c["realistic_concepts"] - c["concepts"],
                       help=f"{c['concepts']} without the filter")
        st.caption(f"with units whose Fréchet distance exceeds {cut:.2f} left out "
                   f"({ui.dissection_label((seg, mode))}); "
                   f"{c['interpretable_units']} interpretable units and {c['concepts']} concepts without the filter")
    st.dataframe(counts.rename({"interpretable_units": "interpretable", "realistic_units": "interpretable (filtered)",
                                "realistic_concepts": "concepts (filtered)"}), hide_index=True)

# ---------------------------------------------------------------- images last (the worst units' top images)
if slots and images.enabled():
    requests, plain = [], []
    for r in units.head(WORST_SHOWN).iter_rows(named=True):
        samples = tuple(int(s) for s in (r["top_samples"] or [])[:STRIP_K])
        if not samples:
            slots[int(r["unit"])].caption("no top images recorded for this unit")
        elif r["threshold"] is None:
            plain.append((int(r["unit"]), int(r["seed"]), samples))
        else:
            requests.append((int(r["unit"]), float(r["threshold"]), int(r["seed"]), samples))
    if requests or plain:
        mrow = queries.models(db).filter(pl.col("model") == model).row(0, named=True)
        size = images.display_size(mrow["resolution"])
        queries.release()  # no read connection held while the generator runs
        try:
            with st.spinner("drawing top images…"):
                if requests:
                    strips = images.strips(db, model, mrow["checkpoint_sha256"], layer, tuple(requests), size)
                    for (u, *_), strip in zip(requests, strips):
                        slots[u].image(strip, width="stretch")
                for u, seed, samples in plain:  # no activation threshold (no quantiles run): no outline
                    pics = images.samples(db, model, mrow["checkpoint_sha256"], seed, samples, size)
                    slots[u].image(list(pics), width=64)
        except Exception as e:  # missing checkpoint, unloadable model: say why, keep the page
            for u, *_ in requests + plain:
                slots[u].caption(f"images unavailable: {images.error_text(e)}")
