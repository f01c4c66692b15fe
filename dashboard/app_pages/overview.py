"""Overview: what the store holds (models, layers, segmenters, runs), interpretable units per layer by
category (paper Fig. 6 / 19), the concept distribution of one layer (Fig. 5) and job status."""
from __future__ import annotations

import polars as pl
import streamlit as st

from dashboard import charts, queries, ui

db = ui.db()
st.title("Overview")
c = ui.require_store(db)

cols = st.columns(7)
for col, (label, value) in zip(cols, [("models", c["models"]), ("layers", c["layers"]),
                                      ("segmenters", c["segmenters"]), ("runs done", c["done"]),
                                      ("running", c["running"]), ("failed", c["failed"]),
                                      ("flags", c["flags"])]):
    col.metric(label, value)

models = queries.models(db)
with st.expander(f"Models ({models.height}) and segmenters", expanded=False):
    st.dataframe(models.drop("checkpoint_sha256", "registered_at"), hide_index=True)
    st.dataframe(queries.segmenters(db), hide_index=True)

ui.generated_vs_rendered(db, "ov")

st.subheader("Interpretable units per layer")
summary = queries.layer_summary(db)
if summary.height == 0:
    st.info("No dissection yet: add a `dissect` analysis to the spec and run `gandissect run`.")
else:
    left, mid = st.columns([1, 2])
    model = ui.pick_model(db, "ov", left, summary["model"].unique(maintain_order=True).to_list())
    msum = summary.filter(pl.col("model") == model)
    modes = list(dict.fromkeys(zip(msum["segmenter"].to_list(), msum["threshold_mode"].to_list())))
    seg, mode = ui.pick("dissection", "dissection", modes, "ov_dissection", mid,
                        format_func=ui.dissection_label) if len(modes) > 1 else modes[0]
    rows = msum.filter((pl.col("segmenter") == seg) & (pl.col("threshold_mode") == mode))
    total = int(rows["interpretable_units"].sum())
    st.caption(f"{model}: {total} interpretable units of {int(rows['units'].sum())} over {rows.height} layers "
               f"(segmenter {seg}, {mode} threshold); a unit is interpretable when its best IoU passes the "
               "dissection's cut-off.")
    if len(modes) > 1:  # the same model dissected under both rules: say how far apart they are
        per = msum.group_by("segmenter", "threshold_mode").agg(pl.col("interpretable_units").sum(),
                                                               pl.col("units").sum()).sort("threshold_mode")
        parts = [f"{ui.dissection_label((r['segmenter'], r['threshold_mode']))}: {r['interpretable_units']} of "
                 f"{r['units']}" for r in per.iter_rows(named=True)]
        st.info("The dissections of this model disagree on what is interpretable — " + " · ".join(parts)
                + " units. The quantile rule (PNAS) thresholds each unit at a fixed activation quantile; the "
                "IQR rule (ICLR) picks each unit's threshold by the information quality ratio and also needs "
                "an IQR above its floor; each has its own IoU cut-off (docs/statistics.md).",
                icon=":material/compare_arrows:")
    st.altair_chart(charts.layer_categories(rows), width="stretch")
    st.subheader("Interpretable units per concept and layer")
    lc = queries.label_concepts(db, seg, mode).filter((pl.col("model") == model) & (pl.col("interpretable_units") > 0))
    if lc.height:
        st.altair_chart(charts.concept_heatmap(lc, x="layer", order=rows.sort("layer_index")["layer"].to_list()),
                        width="stretch")
        st.caption("each cell: units of the layer whose label is the concept and that pass the cut-off "
                   "(paper Fig. 5 / 6 at a glance)")
    with st.expander("layer_summary rows"):
        st.dataframe(rows.drop("model_group", "training_step", "run_key"), hide_index=True)

    st.subheader("Concept distribution of a layer")
    lcol, vcol = st.columns([1, 2])
    layer = ui.pick_layer(db, model, "ov", lcol, rows.sort("layer_index")["layer"].to_list(),
                          default=rows.sort("interpretable_units", descending=True)["layer"][0])
    value = vcol.radio("count", ["interpretable_units", "labelled_units"], horizontal=True, key="ov_value",
                       format_func=lambda v: v.replace("_", " "))
    concepts = queries.layer_concepts(db, model, layer, seg, mode)
    if concepts.filter(pl.col(value) > 0).height:
        st.altair_chart(charts.concept_distribution(concepts, value), width="stretch")
    else:
        st.caption(f"No {value.replace('_', ' ')} in {layer}.")


def _runs_refresh() -> float | None:
    return 5.0 if queries.counts(db)["running"] else None


@st.fragment(run_every=_runs_refresh())
def jobs() -> None:
    st.subheader("Jobs")
    runs = queries.runs(db)
    if runs.height == 0:
        st.caption("No runs yet.")
        return
    status = runs.group_by("status").len().sort("status")
    st.caption(" · ".join(f"{r['status']}: {r['len']}" for r in status.iter_rows(named=True))
               + (" — refreshing every 5 s while a job runs" if "running" in status["status"].to_list() else ""))
    for r in runs.filter(pl.col("status") == "failed").head(5).iter_rows(named=True):
        st.error(f"**{r['analysis']}** `{r['name'] or ''}` on {r['model'] or '?'} {r['layer'] or ''} failed: "
                 f"{ui.md_escape(r['error'] or 'no error text')}", icon=":material/error:")
    st.dataframe(runs.drop("params"), hide_index=True, height=min(38 + 35 * runs.height, 400))


jobs()

bench = queries.benchmarks(db)
if bench.height:
    with st.expander(f"Benchmarks ({bench.height})"):
        st.dataframe(bench, hide_index=True)
