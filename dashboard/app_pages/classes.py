"""Classes: what a classifier's classes depend on (issue 20; the PNAS paper's Fig. 3-4 for a classifier).

Per class of a unit_roles run: the accuracy of every class with its top-k units ablated vs k random
units (the sparsity table), the units the chosen class depends on most (accuracy drop when ablated alone)
with their dissection labels, top images and links to the unit page, and the class's ablation curves
(its own accuracy and the other classes' mean, top vs random). Given a unit (`?unit=` in the URL, or
the picker), the classes it matters for. Reads the store through `dashboard.class_queries`.
"""
from __future__ import annotations

import altair as alt
import polars as pl
import streamlit as st

from dashboard import class_queries as cq
from dashboard import images, queries, ui

db = ui.db()
st.title("Classes")
ui.require_store(db)

runs = cq.role_runs(db)
if runs.height == 0:
    st.info("No unit roles yet: declare a classifier model (`role = \"classifier\"`) and a `unit_roles` analysis "
            "in the spec (see examples/classifier.toml) and run `gandissect run`.")
    st.stop()

params = st.query_params
top = st.columns(4)
model = ui.pick_model(db, "classes", top[0], runs["model"].unique(maintain_order=True).to_list(),
                      force=params.get("model"))
at_model = runs.filter(pl.col("model") == model)
layer = ui.pick_layer(db, model, "classes", top[1], at_model["layer"].to_list(), force=params.get("layer"))
run = at_model.filter(pl.col("layer") == layer).row(0, named=True)
k = int(top[3].number_input("k (units ablated together)", 1, 64, 4, key="classes_k"))
summary = cq.class_summary(db, run["run_key"], model, layer, k)
cls = ui.pick("class", "class", summary["class"].to_list(), "classes_class", top[2], force=params.get("class"))
st.caption(f"{model} · {layer} · unit_roles run {run['run_key'][:12]} · {run['n_samples']} held-out images per class")

st.subheader(f"Sparsity: each class with its top-{k} units vs {k} random units ablated")
st.dataframe(summary, hide_index=True, column_config={
    "accuracy": st.column_config.NumberColumn("accuracy", format="%.3f", help="no unit ablated"),
    "top_k_accuracy": st.column_config.NumberColumn(f"top-{k} ablated", format="%.3f"),
    "random_k_accuracy": st.column_config.NumberColumn(f"{k} random ablated", format="%.3f",
                                                       help="mean over the run's random draws"),
    "top_k_drop": st.column_config.NumberColumn("drop (top)", format="%.3f"),
    "random_k_drop": st.column_config.NumberColumn("drop (random)", format="%.3f"),
    "top_k_other_drop": st.column_config.NumberColumn("other classes' drop (top)", format="%.3f",
                                                      help="drop of the mean accuracy of the other classes"),
    "top_units": st.column_config.TextColumn(f"top-{k} units"),
})
row = summary.filter(pl.col("class") == cls).row(0, named=True) if cls else None
if row and row["top_k_drop"] is not None and row["random_k_drop"] is not None:
    ratio = row["top_k_drop"] / row["random_k_drop"] if row["random_k_drop"] > 0 else float("inf")
    st.caption(f"{cls}: ablating its top-{k} units drops its accuracy by {row['top_k_drop']:.3f} "
               f"({'∞' if ratio == float('inf') else f'{ratio:.1f}'}x the drop of {k} random units, "
               f"{row['random_k_drop']:.3f}); the other classes' mean accuracy drops by {row['top_k_other_drop']:.3f}.")

left, right = st.columns([3, 2])
with left:
    st.subheader(f"Units {cls} depends on")
    units = cq.class_units(db, run["run_key"], model, layer, cls, 8)
    st.dataframe(units.drop("threshold"), hide_index=True, column_config={
        "accuracy_drop": st.column_config.NumberColumn("accuracy drop", format="%.3f",
                                                       help="the class's accuracy drop with this unit alone ablated"),
        "logit_drop": st.column_config.NumberColumn("logit drop", format="%.3f"),
        "prob_drop": st.column_config.NumberColumn("probability drop", format="%.3f"),
        "accuracy": st.column_config.NumberColumn("accuracy", format="%.3f"),
        "iou": st.column_config.NumberColumn("IoU", format="%.3f"),
    })
    st.markdown("open: " + ", ".join(
        f"[unit {u}]({ui.permalink(ui.unit_link_params(model, layer, u))})" for u in units["unit"].to_list()))
with right:
    st.subheader("Ablation curves")
    data = cq.curves(db, run["run_key"], model, layer, cls)
    chart = alt.Chart(data.to_pandas()).mark_line(point=True).encode(
        x=alt.X("k:Q", title="units ablated together", axis=alt.Axis(format="d", tickMinStep=1)),
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("ranking:N", scale=alt.Scale(domain=["top", "random"], range=["#d62728", "#7f7f7f"])),
        strokeDash=alt.StrokeDash("images:N", title="images of"),
        tooltip=["ranking:N", "images:N", "k:Q", alt.Tooltip("accuracy:Q", format=".3f"),
                 alt.Tooltip("std:Q", format=".3f"), "draws:Q"]).properties(height=280)
    st.altair_chart(chart, width="stretch")
    st.caption(f"top: {cls}'s most important units (ranked by the accuracy drop each causes alone); "
               "random: mean over the run's draws")

labelled = units.filter(pl.col("threshold").is_not_null())
if labelled.height and images.enabled():
    st.subheader("Their top images")
    topk = queries.topk(db, model, layer, 5)
    drawn, reqs = images.requests_for(labelled["unit"].to_list(), labelled, topk)
    if reqs:
        sha = queries.models(db).filter(pl.col("model") == model)["checkpoint_sha256"]
        queries.release()
        try:
            strips = images.strips(db, model, sha[0] if sha.len() else None, layer, reqs, 96)
            for u, strip in zip(drawn, strips):
                lab = labelled.filter(pl.col("unit") == u).row(0, named=True)
                st.image(strip, caption=f"unit {u} · {lab['label'] or 'unlabelled'} (IoU {ui.fmt(lab['iou'])})")
        except Exception as e:  # images are optional: the tables above stand alone
            st.caption(f"images unavailable: {ui.md_escape(images.error_text(e))}")
elif units.height:
    st.caption("No dissection of this layer yet: add a `dissect` analysis of the classifier to label its units.")

st.subheader("The classes a unit matters for")
n_units = ui.layer_units(db, model, layer)
default_unit = int(params.get("unit", units["unit"][0] if units.height else 0))
unit = int(st.number_input("unit", 0, max(n_units - 1, 0), min(default_unit, max(n_units - 1, 0)), key="classes_unit"))
st.dataframe(cq.unit_classes(db, run["run_key"], model, layer, unit), hide_index=True, column_config={
    "rank": st.column_config.NumberColumn("rank", help="the unit's importance rank for the class (1 = most)"),
    "accuracy": st.column_config.NumberColumn("accuracy", format="%.3f"),
    "accuracy_drop": st.column_config.NumberColumn("accuracy drop", format="%.3f"),
    "logit_drop": st.column_config.NumberColumn("logit drop", format="%.3f"),
    "prob_drop": st.column_config.NumberColumn("probability drop", format="%.3f"),
})
