"""Causal: for one concept of one layer — α per unit (sorted), the α optimisation, causal effects of unit
sets, ablation curves (ACE vs IoU vs random, paper Fig. 4), the insertion-context bars (Fig. 11), where
the concept can be inserted (heat maps over sample images) and tracing into later layers (Fig. 17)."""
from __future__ import annotations

import polars as pl
import streamlit as st

from dashboard import charts, images, queries, ui

db = ui.db()
st.title("Causal")
ui.require_store(db)

index = queries.causal_index(db)
if index.height == 0:
    st.info("No causal analysis yet: add `ace`, `ablate`, `insert` or `trace` analyses to the spec and run "
            "`gandissect run` — `examples/intervene.toml` declares all four for the bundled village GAN "
            "(`gandissect run examples/intervene.toml`; the demo spec has a smaller set).")
    st.stop()

# a link (from a unit page) names model, layer and concept; they are imposed once, then the pickers rule
qp = st.query_params
url = {k: qp.get(k) for k in ("model", "layer", "concept") if qp.get(k) is not None}
fresh = url != st.session_state.get("causal_url")
st.session_state["causal_url"] = url
top = st.columns(3)
model = ui.pick_model(db, "causal", top[0], index["model"].unique(maintain_order=True).to_list(),
                      force=url.get("model") if fresh else None)
at_model = index.filter(pl.col("model") == model)
layer = ui.pick_layer(db, model, "causal", top[1], at_model["layer"].unique(maintain_order=True).to_list(),
                      force=url.get("layer") if fresh else None)
at_layer = at_model.filter(pl.col("layer") == layer)
concept = ui.pick("concept", "concept", at_layer["concept"].unique(maintain_order=True).to_list(),
                  "causal_concept", top[2], force=url.get("concept") if fresh else None)
if fresh and url and (model, layer, concept) != (url.get("model", model), url.get("layer", layer),
                                                 url.get("concept", concept)):
    st.warning("The link names " + ", ".join(f"{k} **{ui.md_escape(v)}**" for k, v in url.items())
               + "; the store has no causal results for it, so the nearest available are shown.",
               icon=":material/link_off:")
have = set(at_layer.filter(pl.col("concept") == concept)["tbl"].to_list())
st.caption(f"{model} · {layer} · {concept}: " + ", ".join(sorted(have)))


def delta_caption(epochs: pl.DataFrame) -> str:
    """One line: δ (the chart's `effect`) after every epoch, from the IoU initialisation (epoch 0) on."""
    d = [float(v) for v in epochs.sort("epoch")["effect"].to_list() if v is not None]
    if not d:
        return "no δ recorded"
    steps = " → ".join(f"{v:.3f}" for v in d)
    verdict = "rose" if d[-1] > d[0] else ("fell" if d[-1] < d[0] else "stayed")
    return (f"δ per epoch (normalised causal effect on the fixed evaluation locations; epoch 0 = the IoU "
            f"initialisation): {steps} — {verdict} by {d[-1] - d[0]:+.3f} over {len(d) - 1} epochs. "
            f"loss = −δ + λ · penalty(α) (the run's `l2` and `penalty`)")


def missing(what: str, kind: str) -> None:
    st.caption(f"No {what} for {concept} in {layer} yet (a `{kind}` analysis).")


st.subheader("α per unit")
if "ace_alpha" in have:
    alpha = queries.alpha(db, model, layer, concept)
    left, right = st.columns([3, 2])
    with left:
        st.altair_chart(charts.alpha_bars(alpha), width="stretch")
        st.caption(f"{int((alpha['alpha'] > 0.5).sum())} of {alpha.height} units have α > 0.5")
    with right:
        epochs = queries.ace_epochs(db, model, layer, concept)
        if epochs.height:
            st.altair_chart(charts.ace_epochs(epochs), width="stretch")
            st.caption(delta_caption(epochs))
        top_units = alpha.head(8)
        links = [f"[{u}]({ui.permalink(ui.unit_link_params(model, layer, u))})" for u in top_units["unit"].to_list()]
        st.markdown("strongest units: " + ", ".join(links))
else:
    missing("α optimisation", "ace")

effects = queries.causal_effects(db, model, layer, concept) if "causal_effects" in have else pl.DataFrame()
if effects.height:
    st.subheader("Causal effects of unit sets")
    st.dataframe(effects, hide_index=True, column_config=ui.number_columns(effects))

st.subheader("Ablation curves")
if "ablation_curves" in have:
    st.altair_chart(charts.ablation_curves(queries.ablation_curves(db, model, layer, concept)), width="stretch")
    st.caption("fraction of the concept's pixels left after ablating the top units of each ranking; "
               "random: mean ± 1 std over draws")
else:
    missing("ablation curves", "ablate")

st.subheader("Insertion by context")
if "insertion_contexts" in have:
    st.altair_chart(charts.insertion_contexts(queries.insertion_contexts(db, model, layer, concept)),
                    width="stretch")
else:
    missing("insertion contexts", "insert")


@st.fragment
def where_inserted() -> None:
    """The insertion heat maps and their overlay toggle: the toggle reruns only this section."""
    st.subheader("Where can it be inserted?")
    if "insertion_maps" in have:
        maps = queries.insertion_maps(db, model, layer, concept)
        keys = maps.select("seed", "sample").unique(maintain_order=True).head(8)
        maps = maps.join(keys, on=["seed", "sample"]).with_columns(
            image=pl.format("seed {} · sample {}", "seed", "sample"))
        st.altair_chart(charts.heat_grid(maps, "image", "sample image"), width="stretch")
        st.caption("effect of inserting the concept at each featuremap location (brighter: more of it appears)")
        if images.enabled() and st.toggle("overlay on the sample images", key="causal_overlay"):
            mrow = queries.models(db).filter(pl.col("model") == model).row(0, named=True)
            queries.release()  # no read connection held while the generator runs
            seed = int(keys["seed"][0])
            one_seed = maps.filter(pl.col("seed") == seed)
            samples = one_seed["sample"].unique(maintain_order=True).to_list()
            h, w = int(one_seed["y"].max()) + 1, int(one_seed["x"].max()) + 1
            heats = []
            for s in samples:
                grid = [[0.0] * w for _ in range(h)]
                for r in one_seed.filter(pl.col("sample") == s).iter_rows(named=True):
                    grid[r["y"]][r["x"]] = float(r["effect"])
                heats.append(tuple(tuple(row) for row in grid))
            try:
                with st.spinner("drawing sample images…"):
                    shown = images.heat_overlays(db, model, mrow["checkpoint_sha256"], seed, tuple(samples),
                                                 tuple(heats), images.display_size(mrow["resolution"]))
                st.image(shown, caption=[f"sample {s}" for s in samples], width=160)
            except Exception as e:
                st.caption(f"images unavailable: {images.error_text(e)}")
    else:
        missing("insertion maps", "insert")


where_inserted()

st.subheader("Tracing into later layers")
if "trace_effects" in have:
    trace = queries.trace_effects(db, model, layer, concept)
    order = queries.layers(db).filter(pl.col("model") == model).select("layer", "layer_index")
    trace = trace.join(order, left_on="target_layer", right_on="layer", how="left").sort("layer_index")
    st.altair_chart(charts.heat_grid(trace, "target_layer", "later layer"), width="stretch")
    st.caption(f"relative change of each later layer after inserting {concept} at {layer}")
else:
    missing("tracing", "trace")
