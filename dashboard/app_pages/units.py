"""Units: rank the units of one layer (best IoU, IoU for a concept, α for a concept, label, permutation-null
z-score, precision of the label, IoU relative to its size ceiling) and show them as cards with their top
images, the region above threshold outlined (paper Fig. 3).

Large concepts (sky, grass) cannot reach a high IoU in q-mode: a unit above threshold on 1 % of pixels has
IoU at most 0.01 / f with a concept covering a share f; rank by precision or by IoU / ceiling to see them."""
from __future__ import annotations

import polars as pl
import streamlit as st

from dashboard import images, queries, ui

CARD_PER_ROW = 3  # images per row of a card's strip (a 5-image strip in one row was ~55 px per image)

db = ui.db()
st.title("Units")
ui.require_store(db)

models = queries.models(db)["model"].to_list()
top = st.columns([2, 2, 3])
model = ui.pick_model(db, "units", top[0], models)
dissected = queries.layer_summary(db).filter(pl.col("model") == model).sort("interpretable_units", descending=True)
layer = ui.pick_layer(db, model, "units", top[1], default=dissected["layer"][0] if dissected.height else None)
if layer is None:
    st.info(f"Model {model} has no registered layers yet: run `gandissect run`.")
    st.stop()
seg, mode = ui.pick_dissection(db, model, layer, "units", top[2])
if seg is None:
    top[2].caption("no dissection of this layer yet: units show without labels")

alpha_concepts = queries.alpha_concepts(db, model, layer)
rankings = [r for r in queries.RANKINGS if r != "alpha" or alpha_concepts]
if seg is None:
    rankings = [r for r in rankings if r in ("alpha", "unit")]
row2 = st.columns([2, 2, 1, 1, 2])
ranking = ui.pick("ranking", "ranking", rankings, "units_ranking", row2[0],
                  format_func=lambda r: queries.RANKINGS[r][0])
concept = None
if ranking == "concept_iou":
    names = queries.concepts(db).filter(pl.col("segmenter") == seg)["concept"].to_list()
    concept = ui.pick("concept", "concept", names, "units_concept", row2[1])
elif ranking == "alpha":
    concept = ui.pick("concept", "concept", alpha_concepts, "units_alpha_concept", row2[1])
n_cards = row2[2].selectbox("cards", [6, 12, 24, 48], index=1, key="units_cards")
k = row2[3].selectbox("top-k", [3, 5, 8], index=1, key="units_k")
filters = row2[4].multiselect("show only", ["interpretable", *ui.FLAG_ICONS], key="units_filter",
                              format_func=lambda f: f if f == "interpretable" else f"flag: {f}",
                              help="interpretable units, or a unit set marked on the Flags page")

table = queries.unit_table(db, model, layer, seg, mode, concept, ranking)
if "interpretable" in filters:
    table = table.filter(pl.col("interpretable"))
for f in [f for f in filters if f in ui.FLAG_ICONS]:
    table = table.filter(pl.col("flags").fill_null("").str.contains(f, literal=True))
n_pages = max(1, -(-table.height // n_cards))
page = st.number_input(f"page (of {n_pages})", 1, n_pages, 1, key="units_page") if n_pages > 1 else 1
shown = table.slice((page - 1) * n_cards, n_cards)
st.caption(f"{table.height} units of {model} {layer}; ranked by {queries.RANKINGS[ranking][0]}"
           + (f" ({concept})" if concept else "") + (f"; dissection {ui.dissection_label((seg, mode))}" if seg else ""))
if ranking in ("precision", "ceiling"):
    st.caption("precision = share of the unit's above-threshold pixels on its label; ceiling = "
               "min(above, concept) / max(above, concept), the best IoU possible at these sizes")
if seg and "beats_chance" in table.columns and table["beats_chance"].drop_nulls().len():
    beats = int(table["beats_chance"].fill_null(False).sum())
    st.caption(f"{beats} of {table.height} units beat chance (Benjamini-Hochberg q < 0.05 against the "
               "permutation null: maps re-paired with other images' masks); association is not interpretability")
if shown.height == 0:
    st.info("No unit matches.")
    st.stop()

per_row = 3
slots: dict[int, object] = {}
rows = list(shown.iter_rows(named=True))
for start in range(0, len(rows), per_row):
    cols = st.columns(per_row)
    for col, row in zip(cols, rows[start:start + per_row]):
        with col:
            slots[row["unit"]] = ui.unit_card(row, model, layer, ranking, seg, mode)

with st.expander("table of every unit"):
    linked, links = ui.with_unit_links(table, model, layer)
    st.dataframe(linked, hide_index=True, column_config={**links, **ui.number_columns(table)})
    # deferred: the CSV is written when the button is clicked, not on every rerun (issue 18)
    st.download_button("CSV", lambda: table.write_csv().encode(), f"{model}-{layer}-units.csv", "text/csv",
                       key="units_csv")

# images last: every card's text is on screen before the generator runs
if images.enabled():
    topk = queries.topk(db, model, layer, int(k))
    threshold_col = "concept_threshold" if ranking == "concept_iou" and mode == "iqr" else "threshold"
    drawn, requests = images.requests_for(list(slots), shown, topk, threshold_col)
    for u in set(slots) - set(drawn):
        slots[u].caption("no top images for this unit yet (no dissection or quantiles run)")
    if requests:
        mrow = queries.models(db).filter(pl.col("model") == model).row(0, named=True)
        queries.release()  # no read connection held while the generator runs
        try:
            with st.spinner("drawing top images…"):
                pngs = images.strip_pngs(db, model, mrow["checkpoint_sha256"], layer, requests,
                                         images.display_size(mrow["resolution"]), per_row=CARD_PER_ROW)
            for u, png in zip(drawn, pngs):
                with slots[u].container():
                    st.image(png, width="stretch")
                    if st.button("enlarge", key=f"units_enlarge_{u}", icon=":material/zoom_in:", type="tertiary"):
                        ui.enlarge(f"{model} · {layer} · unit {u}: top {k} images, region above threshold outlined", png)
        except Exception as e:  # missing checkpoint, unloadable model: say why, keep the page
            for u in drawn:
                slots[u].caption(f"images unavailable: {images.error_text(e)}")
