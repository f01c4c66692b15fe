"""Unit: one unit of one layer — its top images with the region outlined, IoU against every concept,
activation quantiles, α per concept, realism, flags — and a permalink (URL query parameters
model, layer, unit[, segmenter, mode]) that reopens exactly this unit."""
from __future__ import annotations

import polars as pl
import streamlit as st

from dashboard import charts, images, queries, ui

db = ui.db()
ui.require_store(db)
qp = st.query_params

# the unit: the URL imposes it when it changed since this page last wrote it (a link, a bookmark);
# otherwise the sidebar pickers rule and the URL follows them
url = {k: qp.get(k) for k in ("model", "layer", "unit", "segmenter", "mode") if qp.get(k) is not None}
from_url = url != st.session_state.get("unit_url") or "unit_num" not in st.session_state
models = queries.models(db)["model"].to_list()


def refuse(what: str, value: str, options: list[str], where: str = "") -> None:
    """A permalink naming something the store lacks: say so (with the nearest match) and show nothing
    else, never another unit in its place. Every user-supplied string is markdown-escaped."""
    st.warning(ui.not_found(what, value, options, where), icon=":material/link_off:")
    st.stop()


if from_url and "model" in url and url["model"] not in models:
    refuse("model", url["model"], models)
with st.sidebar:
    st.markdown("**Unit**")
    model = ui.pick_model(db, "unit", st.sidebar, models, force=url.get("model") if from_url else None)
    if from_url and "layer" in url and url["layer"] not in (names := ui.layer_names(db, model)):
        refuse("layer", url["layer"], names, f" in model {model}")
    layer = ui.pick_layer(db, model, "unit", st.sidebar, force=url.get("layer") if from_url else None)
if layer is None:
    st.info(f"Model {ui.md_escape(model)} has no registered layers yet.")
    st.stop()
n_units = ui.layer_units(db, model, layer)
if from_url and "unit" in url:
    try:
        wanted = int(url["unit"])
    except ValueError:
        wanted = -1
    if not 0 <= wanted < n_units:
        st.warning(f"{ui.md_escape(model)} {ui.md_escape(layer)} has units 0..{n_units - 1}; "
                   f"there is no unit '{ui.md_escape(url['unit'])}'.")
        wanted = 0
    st.session_state["unit_num"] = wanted
elif st.session_state.get("unit_num", 0) >= n_units:
    st.session_state["unit_num"] = 0
unit = int(st.sidebar.number_input("unit", 0, max(n_units - 1, 0), key="unit_num"))
wanted_mode = (url.get("segmenter"), url.get("mode")) if from_url and ("mode" in url or "segmenter" in url) else None
if wanted_mode is not None:
    modes = queries.dissection_modes(db, model, layer)
    pairs = list(dict.fromkeys(zip(modes["segmenter"].to_list(), modes["threshold_mode"].to_list())))
    if wanted_mode not in pairs:
        refuse("dissection (segmenter · mode)", f"{wanted_mode[0]} · {wanted_mode[1]}",
               [f"{s} · {m}" for s, m in pairs], f" of {model} {layer}")
seg, mode = ui.pick_dissection(db, model, layer, "unit", st.sidebar, force=wanted_mode)
params = ui.unit_link_params(model, layer, unit, seg, mode)
if url != params:  # keep the URL a permalink of what is shown
    qp.from_dict(params)
st.session_state["unit_url"] = params

row = queries.unit_table(db, model, layer, seg, mode, None, "unit").filter(pl.col("unit") == unit)
info = row.row(0, named=True) if row.height else {"unit": unit}
st.title(f"{model} · {layer} · unit {unit}")
if info.get("label"):
    st.markdown(f"label **{ui.md_escape(info['label'])}** *({ui.md_escape(info.get('category') or '?')})* — "
                + ui.verdict(info))
else:
    st.markdown("no label yet (no dissection of this layer)")
badges = ui.flag_badges(info.get("flags"), info.get("custom_label"))
if badges:
    st.markdown(f"flags: {badges}")
cols = st.columns(4)
cols[0].metric("best IoU", ui.fmt_vs(info.get("iou"), info.get("interpretable_iou"))[0],
               help="digits enough to tell it from the interpretability cut-off")
cols[1].metric("q-value (FDR)", ui.fmt_q(info.get("q_value"), info.get("log10_p"),
                                         none=ui.NOT_TESTED if info.get("label") else "–"),
               help="Benjamini-Hochberg q of the permutation-null test over the layer's unit x concept tests; "
                    "the unit beats chance when q < 0.05")
cols[2].metric("null z", ui.fmt(info.get("z"), ".1f"))
cols[3].metric("threshold", ui.fmt(info.get("threshold"), ".3g"))

def _step(to: int) -> None:  # ← / →: the sidebar's unit changes, this run writes the URL to match
    st.session_state["unit_num"] = to


nav = st.columns([1, 1, 4])
nav[0].button(f"unit {unit - 1}", icon=":material/arrow_back:", key="unit_prev", on_click=_step, args=(unit - 1,),
              disabled=unit <= 0, help="the previous unit of this layer (the address bar follows)")
nav[1].button(f"unit {unit + 1}", icon=":material/arrow_forward:", key="unit_next", on_click=_step,
              args=(unit + 1,), disabled=unit + 1 >= n_units, help="the next unit of this layer (the address bar follows)")
with nav[2]:
    st.code(ui.permalink(params, absolute=True), language=None)  # st.code has a copy button
    st.caption(":material/link: permalink of this unit (copy button on the right)")
if queries.models(db).filter((pl.col("model") == model) & (pl.col("role") == "generator")).height:
    st.page_link("app_pages/paint.py", label=f"paint with unit {unit} (Paint at {layer}, this unit as the brush)",
                 icon=":material/brush:", query_params={"model": model, "layer": layer, "unit": str(unit)})

strip_slot = st.empty()

left, right = st.columns(2)
with left:
    st.subheader("IoU with every concept")
    if seg is None:
        st.caption("No dissection of this layer yet.")
    else:
        iou = queries.unit_iou(db, model, layer, unit, seg, mode)
        if iou.filter(pl.col("iou").is_not_null()).height:
            cut = iou["interpretable_iou"][0] if iou.height else None
            st.altair_chart(charts.unit_iou_bars(iou, cut), width="stretch")
            st.caption(f"dashed line: the interpretability cut-off IoU {ui.fmt_vs(info.get('iou'), cut)[1]}; "
                       f"{ui.dissection_label((seg, mode))}")
        else:
            st.caption("No IoU rows for this unit.")
with right:
    st.subheader("Activation quantiles")
    quants = queries.unit_quantiles(db, model, layer, unit)
    if quants.height:
        st.altair_chart(charts.quantile_curve(quants, info.get("threshold")), width="stretch")
        st.caption("dashed line: the unit's threshold")
    else:
        st.caption("No quantiles for this unit yet.")

left, right = st.columns(2)
with left:
    st.subheader("α per concept (ACE)")
    alpha = queries.unit_alpha(db, model, layer, unit)
    if alpha.height:
        st.altair_chart(charts.alpha_per_concept(alpha), width="stretch")
        best = alpha.sort("alpha", descending=True)["concept"][0]
        st.page_link("app_pages/causal.py", label=f"causal effects in {layer}: {best} (ablation, insertion, trace)",
                     icon=":material/target:", query_params={"model": model, "layer": layer, "concept": best})
    else:
        st.caption("No α optimisation covers this layer yet (an `ace` analysis).")
    realism = queries.unit_realism(db, model, layer, unit)
    if realism.height:
        r = realism.row(0, named=True)
        st.caption(f"realism: Fréchet distance of its top {r['n_top']} images to {r['n_real']} real images "
                   f"{ui.fmt(r['frechet'], '.1f')} (rank {r['worst_rank']} from the least realistic)")
with right:
    st.subheader("Flags")
    flags = queries.unit_flags(db, model, layer, unit)
    if flags.height:
        st.dataframe(flags, hide_index=True)
    else:
        st.caption("No flags.")
    ui.flag_form(db, model, layer, unit, "unit")

if images.enabled():
    topk = queries.topk(db, model, layer, 8)
    drawn, requests = images.requests_for([unit], row if row.height else pl.DataFrame(
        {"unit": [unit], "threshold": [None]}, schema={"unit": pl.Int64, "threshold": pl.Float64}), topk)
    if not requests:
        strip_slot.caption("No top images for this unit yet (no dissection or quantiles run).")
    else:
        mrow = queries.models(db).filter(pl.col("model") == model).row(0, named=True)
        queries.release()  # no read connection held while the generator runs
        try:
            with st.spinner("drawing top images…"):
                strip = images.strip_pngs(db, model, mrow["checkpoint_sha256"], layer, requests,
                                          images.display_size(mrow["resolution"]), per_row=4)[0]
            caption = (f"top {len(requests[0][3])} images (seed {requests[0][2]}); "
                       f"region above threshold {ui.fmt(requests[0][1], '.3g')} outlined")
            with strip_slot.container():
                st.image(strip, caption=caption, width=720)
                if st.button("enlarge", key="unit_enlarge", icon=":material/zoom_in:", type="tertiary"):
                    ui.enlarge(f"{model} · {layer} · unit {unit}: {caption}", strip)
            # the strips of the units ← / → lead to, drawn now (the page is on screen) so the arrows
            # answer from the cache
            near = [u for u in (unit + 1, unit - 1) if 0 <= u < n_units]
            table = queries.unit_table(db, model, layer, seg, mode, None, "unit").filter(pl.col("unit").is_in(near))
            _, ahead = images.requests_for(near, table, topk)
            if ahead:
                images.strip_pngs(db, model, mrow["checkpoint_sha256"], layer, ahead,
                                  images.display_size(mrow["resolution"]), per_row=4)
            queries.release()
        except Exception as e:
            strip_slot.caption(f"images unavailable: {images.error_text(e)}")

from dashboard import class_queries  # noqa: E402  (issue 20: a classifier's unit roles)

if class_queries.role_runs(db).filter((pl.col("model") == model) & (pl.col("layer") == layer)).height:
    st.page_link("app_pages/classes.py", label=f"the classes unit {unit} matters for", icon=":material/category:",
                 query_params={"model": model, "layer": layer, "unit": str(unit)})
