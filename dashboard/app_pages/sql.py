"""SQL: ad-hoc read-only SQL over the store (the same guard as `gandissect sql`: one SELECT, external
access off, a row limit and a time limit), results as a table with CSV and Parquet downloads, and
saved example queries."""
from __future__ import annotations

import io

import polars as pl
import streamlit as st

from dashboard import queries, ui
from db.guard import GuardError, run_guarded

db = ui.db()
st.title("SQL")
st.caption("Read-only: one SELECT (WITH, FROM-first, DESCRIBE, SUMMARIZE, EXPLAIN also work); no writes, "
           "no files, no extensions. Tables: models, layers, runs, unit_iou, unit_quantiles, unit_topk, "
           "ace_alpha, ablation_curves, …; views: unit_labels, layer_summary, layer_concepts, dissections.")

examples = queries.examples()
if "sql_text" not in st.session_state:
    st.session_state["sql_text"] = next(iter(examples.values()))


def load_example() -> None:
    st.session_state["sql_text"] = examples[st.session_state["sql_example"]]
    st.session_state.pop("sql_result", None)


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


@st.fragment
def sql_area() -> None:
    """Examples, the query form and its result: a rerun of this part only (the page around it is static)."""
    st.selectbox("saved examples", list(examples), key="sql_example", on_change=load_example)
    with st.form("sql_form"):
        st.text_area("query", key="sql_text", height=180)
        cols = st.columns([1, 1, 4])
        row_limit = cols[0].number_input("row limit", 1, 100_000, 1_000, step=100, key="sql_rows")
        time_limit = cols[1].number_input("time limit (s)", 1, 120, 10, key="sql_seconds")
        run = st.form_submit_button("Run", type="primary")

    if run or ("sql_result" not in st.session_state and "sql_error" not in st.session_state):
        try:
            st.session_state["sql_result"] = run_guarded(st.session_state["sql_text"], db, int(row_limit),
                                                         float(time_limit), missing_ok=True)
            st.session_state.pop("sql_error", None)
        except GuardError as e:
            st.session_state.pop("sql_result", None)
            st.session_state["sql_error"] = (str(e), e.refused)

    if "sql_error" in st.session_state and not st.session_state.get("sql_result"):
        message, refused = st.session_state["sql_error"]
        (st.warning if refused else st.error)(message)

    result = st.session_state.get("sql_result")
    if result is not None:
        frame = result.frame
        st.caption(f"{frame.height} rows × {frame.width} columns in {result.seconds:.3f} s"
                   + (f" — truncated at the row limit ({int(row_limit)})" if result.truncated else ""))
        st.dataframe(frame, hide_index=True, column_config=ui.number_columns(frame))
        dl = st.columns([1, 1, 6])  # deferred: each file is written when its button is clicked, not per rerun
        dl[0].download_button("CSV", lambda: frame.write_csv().encode(), "query.csv", "text/csv", key="sql_csv")
        dl[1].download_button("Parquet", lambda: parquet_bytes(frame), "query.parquet",
                              "application/vnd.apache.parquet",
                              key="sql_parquet")
    elif not st.session_state.get("sql_error"):
        st.caption("Run a query to see its rows.")


sql_area()
