"""Flags: mark units by hand (artifact, watermark, interesting, custom label) with a note; each flag is
one short write transaction into `unit_flags` (db.store.set_flag). Flags show on unit cards and make
unit sets (the Units page filters by them)."""
from __future__ import annotations

import polars as pl
import streamlit as st

from dashboard import queries, ui

db = ui.db()
st.title("Flags")
ui.require_store(db)

st.subheader("Flag a unit")
cols = st.columns(2)
model = ui.pick_model(db, "flags", cols[0])
layer = ui.pick_layer(db, model, "flags", cols[1]) if model else None
if layer is None:
    st.info("No layers registered yet: run `gandissect run`.")
else:
    ui.flag_form(db, model, layer, None, "flags")
    st.caption("artifact · watermark · interesting · label (the note is the custom label shown on the unit's card)")

flags = queries.flags(db)
st.subheader(f"Flagged units ({flags.height})")
if flags.height == 0:
    st.caption("No flags yet.")
    st.stop()

sets = flags.group_by("model", "layer", "flag").agg(pl.col("unit").sort().alias("units")).sort("model", "layer", "flag")
st.dataframe(sets.with_columns(pl.col("units").list.eval(pl.element().cast(pl.String)).list.join(", ")),
             hide_index=True)
linked, config = ui.with_unit_links(flags)
st.dataframe(linked, hide_index=True, column_config={**config, **ui.number_columns(flags)})

@st.fragment
def remove_section(flags) -> None:  # choosing a flag reruns only this section
    st.subheader("Remove a flag")
    keys = [(r["model"], r["layer"], r["unit"], r["flag"]) for r in flags.iter_rows(named=True)]
    choice = st.selectbox("flag", keys, key="flags_remove",
                          format_func=lambda k: f"{k[0]} · {k[1]} · unit {k[2]} · {k[3]}")
    if st.button("Remove", key="flags_remove_button") and choice:
        if ui.remove_flag(db, *choice):
            st.rerun()  # the whole page: its tables changed


remove_section(flags)
