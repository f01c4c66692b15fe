"""Compare: two to four layers of any models (datasets, training checkpoints) side by side —
interpretable units by category and by concept, unit label distributions — and the emergence of
interpretable units across training checkpoints of one model group (S-6.6)."""
from __future__ import annotations

import polars as pl
import streamlit as st

from dashboard import charts, queries, ui

db = ui.db()
st.title("Compare")
ui.require_store(db)

summary = queries.layer_summary(db)
if summary.height == 0:
    st.info("No dissection yet: add a `dissect` analysis to the spec and run `gandissect run`.")
    st.stop()

modes = list(dict.fromkeys(zip(summary["segmenter"].to_list(), summary["threshold_mode"].to_list())))
top = st.columns([1, 3])
seg, mode = (ui.pick("dissection", "dissection", modes, "cmp_dissection", top[0], format_func=ui.dissection_label)
             if len(modes) > 1 else modes[0])
rows = summary.filter((pl.col("segmenter") == seg) & (pl.col("threshold_mode") == mode)).with_columns(
    selection=pl.col("model") + " · " + pl.col("layer"))
options = rows["selection"].to_list()
# default: the same layer across models (or checkpoints) when there are several, else the first layers
common = (rows.group_by("layer").agg(pl.len(), pl.col("layer_index").first()).filter(pl.col("len") > 1)
          .sort("layer_index"))
if common.height:
    layer0 = common["layer"][common.height // 2]
    default = rows.filter(pl.col("layer") == layer0)["selection"].head(4).to_list()
else:
    default = options[:2]
chosen = top[1].multiselect("layers to compare (2 to 4)", options, default=default, max_selections=4,
                            key="cmp_selection")
if len(chosen) < 1:
    st.info("Pick two to four layers.")
    st.stop()
picked = rows.filter(pl.col("selection").is_in(chosen))

st.subheader("Interpretable units by category")
st.altair_chart(charts.layer_categories(picked, x="selection", x_title="model · layer", order=chosen),
                width="stretch")
st.dataframe(picked.select("selection", "units", "interpretable_units", "object_units", "part_units",
                           "material_units", "distinct_concepts", "beats_chance_units", "median_best_iou",
                           "training_step"), hide_index=True)

concepts = queries.label_concepts(db, seg, mode).with_columns(
    selection=pl.col("model") + " · " + pl.col("layer")).filter(pl.col("selection").is_in(chosen))
left, right = st.columns(2)
with left:
    st.subheader("Interpretable units by concept")
    if concepts.filter(pl.col("interpretable_units") > 0).height:
        st.altair_chart(charts.concept_heatmap(concepts.filter(pl.col("interpretable_units") > 0)),
                        width="stretch")
    else:
        st.caption("No interpretable units in these layers.")
with right:
    st.subheader("Unit label distribution")
    st.caption("every unit's best concept, interpretable or not")
    if concepts.height:
        st.altair_chart(charts.concept_heatmap(concepts, value="labelled_units"), width="stretch")
    else:
        st.caption("No labelled units in these layers.")

st.subheader("Units matched by concept")
matched = queries.matched_units(db, seg, mode).with_columns(
    selection=pl.col("model") + " · " + pl.col("layer")).filter(pl.col("selection").is_in(chosen))
if matched.height:
    cells = (matched.group_by("concept", "category", "selection", maintain_order=True)
             .agg(pl.format("{} ({})", pl.col("unit"), pl.col("iou").round(3)).str.join(", ").alias("units"))
             .pivot(on="selection", index=["concept", "category"], values="units"))
    shared = cells.select(pl.sum_horizontal(pl.col(c).is_not_null() for c in chosen if c in cells.columns)
                          .alias("layers"))
    cells = cells.with_columns(shared).sort(["layers", "concept"], descending=[True, False])
    st.dataframe(cells.select("concept", "category", "layers", *[c for c in chosen if c in cells.columns]),
                 hide_index=True)
    st.caption("each cell: the layer's interpretable units labelled with the concept, as unit (IoU); concepts "
               "that several of the compared layers detect come first; open one from Units or the unit page")
else:
    st.caption("No interpretable units in these layers.")

st.subheader("Emergence across training checkpoints")
emergence = queries.emergence(db).filter((pl.col("segmenter") == seg) & (pl.col("threshold_mode") == mode))
if emergence.height == 0:
    st.info("Emergence needs several dissected checkpoints of one model: declare a checkpoint glob in the "
            "spec (`checkpoint = \"runs/*.safetensors\"`) and run `gandissect run`.")
else:
    groups = emergence["model_group"].unique(maintain_order=True).to_list()
    cols = st.columns([1, 1, 2])
    group = ui.pick("model group", "model_group", groups, "cmp_group", cols[0])
    value = cols[1].radio("count", ["interpretable_units", "distinct_concepts"], key="cmp_emerge_value",
                          format_func=lambda v: v.replace("_", " "), horizontal=True)
    g = emergence.filter(pl.col("model_group") == group)
    st.altair_chart(charts.emergence(g, value), width="stretch")
    st.altair_chart(charts.emergence_categories(g), width="stretch")
    st.caption(f"{g['model'].n_unique()} checkpoints of {group}, training steps "
               f"{g['training_step'].min()}–{g['training_step'].max()}")
