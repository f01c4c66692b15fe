"""Paint (GANPaint): draw or remove concepts on a generated image with unit brushes, live.

Reads the store (models, layers, layer_summary through `dashboard.queries`; brushes, i.e. unit sets from
`ace_alpha` / `unit_iou` / `unit_flags`, and activation quantiles through `compute.paint.engine`); writes nothing.
The generator and segmenter are loaded once per process (`st.cache_resource`); `compute` (and torch) are
imported only when the page runs, inside functions. Each stroke on the canvas (streamlit-drawable-canvas:
freehand or rectangle) becomes one edit on the session's stack: the brush's units are forced to their
draw value (or to 0 to remove) where the stroke touches the edited layer's featuremap, the generator runs
on from that layer and the segmenter labels the result; undo / redo / reset walk the stack.

URL query parameters model, layer[, unit] (the Unit page's "paint with this unit" link) open the page on
that model and layer, with a one-unit brush `unit N` chosen (it stays among the brushes of that layer).
"""
from __future__ import annotations

import html
import io
from typing import Any

import numpy as np
import polars as pl
import streamlit as st

from dashboard import images, queries, ui
from dashboard.canvas import canvas_region

CANVAS = 320  # canvas side in screen pixels (the image is scaled to it, nearest neighbour)
GALLERY = 6   # samples in the gallery
MAX_SAMPLE = 99_999

db = ui.db()
st.title("Paint")
ui.require_store(db)
st.caption("GANPaint: a brush is a set of units of one layer. **draw** forces them to a high activation "
           "where you paint, **remove** switches them off there; the generator does the rest. Nothing "
           "constrains where you draw: the concept tends to appear where it fits the scene (a door on a "
           "wall), and drawing it where it does not (a tree in the sky) may give something else or a "
           "misplaced object — the segmentation of the edited image shows what appeared.")

summary = queries.layer_summary(db)
generators = queries.models(db).filter(pl.col("role") == "generator")["model"]
summary = summary.filter(pl.col("model").is_in(generators.implode()))  # a classifier cannot be painted
if summary.height == 0:
    st.info("Painting needs brushes, and brushes need a dissection: add a `dissect` analysis to the spec and "
            "run `gandissect run`.")
    st.stop()

# the URL imposes model / layer / unit when it changed since this page last read it (a link from a unit)
url = {k: v for k in ("model", "layer", "unit") if (v := st.query_params.get(k)) is not None}
from_url = bool(url) and url != st.session_state.get("paint_url")
st.session_state["paint_url"] = url
top = st.columns([2, 2, 1, 1, 1])
model = ui.pick_model(db, "paint", top[0], summary["model"].unique(maintain_order=True).to_list(),
                      force=url.get("model") if from_url else None)
if from_url and url.get("model") not in (None, model):
    st.warning(ui.not_found("generator", url["model"], summary["model"].unique().to_list()), icon=":material/link_off:")
msum = summary.filter(pl.col("model") == model).sort(pl.col("threshold_mode") != "quantile",
                                                      pl.col("interpretable_units"), descending=[False, True])
# default layer: one with ACE brushes (the causal units) when a run has them, else the most interpretable one
causal = queries.causal_index(db).filter((pl.col("model") == model) & (pl.col("tbl") == "ace_alpha"))
default_layer = causal["layer"][0] if causal.height else (msum["layer"][0] if msum.height else None)
layer = ui.pick_layer(db, model, "paint", top[1], default=default_layer,
                      force=url.get("layer") if from_url and url.get("model") == model else None)
if from_url and url.get("model") == model and url.get("layer") not in (None, layer):
    st.warning(ui.not_found("layer", url["layer"], ui.layer_names(db, model), f" in model {model}"),
               icon=":material/link_off:")
mrows = queries.models(db).filter(pl.col("model") == model)
if layer is None or mrows.height == 0:
    st.info(f"{model} has no registered layers yet: run `gandissect run`.")
    st.stop()
mrow = mrows.row(0, named=True)
sha = mrow["checkpoint_sha256"]

st.session_state.setdefault("paint_seed", 1)
st.session_state.setdefault("paint_index", 0)
st.session_state.setdefault("paint_version", 0)


def _set_index(i: int) -> None:
    st.session_state["paint_index"] = int(i)


def _random() -> None:
    _set_index(int(np.random.default_rng().integers(0, MAX_SAMPLE + 1)))


seed = int(top[2].number_input("seed", min_value=0, max_value=2**31 - 1, step=1, key="paint_seed"))
index = int(top[3].number_input("sample", min_value=0, max_value=MAX_SAMPLE, step=1, key="paint_index"))
top[4].button("random", icon=":material/casino:", on_click=_random, key="paint_random",
              help="a random sample of this seed")


# ---------------------------------------------------------------- model (once per process) and session

@st.cache_resource(show_spinner=False, max_entries=4)
def _models(db: str, model: str, sha: str | None) -> tuple[Any, Any]:
    from compute.paint import engine as paint

    return paint.load_models(model, db, None, images.device())


@st.cache_resource(show_spinner=False, ttl=30, max_entries=16)
def _painter(db: str, model: str, sha: str | None, layer: str) -> Any:
    """A Painter of one layer; its brushes are re-read from the store every 30 s (new flags, ACE runs)."""
    from compute.paint import engine as paint

    gen, seg = _models(db, model, sha)
    return paint.Painter(gen, seg, layer, paint.load_catalog(db, model, layer), images.device())


def _bump() -> None:
    st.session_state["paint_version"] += 1


queries.release()  # no read connection held while models load and the generator runs
try:
    with st.spinner(f"loading {model}…"):
        painter = _painter(db, model, sha, layer)
except Exception as e:  # EditError, a missing checkpoint, ...: one line, never a traceback
    st.error(f"cannot paint with {model}: {images.error_text(e)}")
    st.stop()
from compute.paint import engine as paint  # noqa: E402  (the painter is loaded: torch is already imported)

photo = st.session_state.get("paint_photo")  # the Photos page's "Open in Paint": compute.paint.photo.PhotoCanvas
if photo is not None and photo.model == model:
    painter = photo.painter(painter)  # the generator adapted to the photo; seed and sample are not used
    st.info(f"Painting on your photo (generator adapted to it: {photo.adapted.psnr_adapted:.1f} dB).")
    st.button("back to generated samples", on_click=st.session_state.pop, args=("paint_photo", None), key="paint_unphoto")
session_key = (db, model, sha, layer, seed, index, photo.key if photo is not None and photo.model == model else None)
if st.session_state.get("paint_session_key") != session_key:
    st.session_state["paint_session"] = painter.session(seed, index)
    st.session_state["paint_session_key"] = session_key
    _bump()
session = st.session_state["paint_session"]

if from_url and "unit" in url and url.get("model") == model and url.get("layer") == layer:
    n_layer_units = ui.layer_units(db, model, layer)
    if url["unit"].isdigit() and int(url["unit"]) < n_layer_units:
        st.session_state["paint_unit_brush"] = (model, layer, int(url["unit"]))
    else:
        st.warning(f"{layer} of {ui.md_escape(model)} has units 0–{n_layer_units - 1}: there is no unit "
                   f"**{ui.md_escape(url['unit'])}** to paint with.", icon=":material/link_off:")
brushes = dict(painter.catalog.brushes)  # the cached painter's catalog stays as the store has it
unit_brush = st.session_state.get("paint_unit_brush")
if unit_brush is not None and unit_brush[:2] == (model, layer):
    u = unit_brush[2]
    brushes[f"unit {u}"] = paint.Brush(f"unit {u}", layer, (u,), "unit", None)
if not brushes:
    st.info(f"No brushes for {model} {layer}: this layer has no dissection (or no unit IoU above 0) and no flagged "
            "units. Pick another layer.")
    st.stop()


def _brush_label(name: str) -> str:
    b = brushes[name]
    return {"ace": f"{name} · α", "iou": f"{name} · IoU", "flag": f"{name}", "unit": f"{name}"}[b.source]


# ---------------------------------------------------------------- brush controls

row = st.columns([2, 2, 3, 3, 2])
names = list(brushes)
brush_name = ui.pick("brush", "paint_brush", names, "paint_brush", row[0], format_func=_brush_label,
                     default="tree" if "tree" in names else None,
                     force=f"unit {unit_brush[2]}" if from_url and unit_brush is not None and "unit" in url else None,
                     help="α: the concept's causal units (ACE); IoU: the units that best match it (no ACE run); "
                          "unit N: one unit, opened from its Unit page")
brush = brushes[brush_name]
action = row[1].segmented_control("action", ["draw", "remove"], default="draw", key="paint_action") or "draw"
strength = row[2].segmented_control("strength", ["low", "medium", "high"], default="high",
                                    key="paint_strength") or "high"
tool = row[3].segmented_control("tool", ["freehand", "rectangle"], default="freehand", key="paint_tool") or "freehand"
width = int(row[4].slider("brush size", 4, 60, 24, step=2, key="paint_width", disabled=tool != "freehand"))

n_units = len(brush.top(paint.resolve_strength(strength)))
st.caption(f"brush **{ui.md_escape(brush.name)}** at {layer}: {n_units} units "
           f"({ {'ace': 'ranked by α', 'iou': 'ranked by IoU', 'flag': 'flagged units', 'unit': 'from its Unit page'}[brush.source] }) · "
           f"{'draw value: each unit’s 0.99 activation quantile' if action == 'draw' else 'remove: units set to 0'}")
if brush.note:
    st.caption(f":material/info: {ui.md_escape(brush.note)}")


from streamlit_drawable_canvas import st_canvas  # noqa: E402


def _undo() -> None:
    st.session_state["paint_session"].undo()
    _bump()


def _redo() -> None:
    st.session_state["paint_session"].redo()
    _bump()


def _reset() -> None:
    st.session_state["paint_session"].reset()
    _bump()


def _box_stroke() -> None:
    st.session_state["paint_pending"] = st.session_state.get("paint_box", "")


def _png(image: np.ndarray, side: int | None = None) -> Any:
    from PIL import Image

    im = Image.fromarray(image)
    return im.resize((side, side), Image.NEAREST) if side else im


def _hex_rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[k:k + 2], 16) for k in (1, 3, 5)], np.float32)


def _with_strokes(image: np.ndarray, strokes: list[Any]) -> np.ndarray:
    """The edited image with every applied stroke's region tinted in its brush colour and outlined
    (removals hatched grey), so the canvas shows where you painted."""
    out = image.astype(np.float32)
    for s in strokes:
        region = np.asarray(s.region, bool)
        if region.shape != image.shape[:2] or not region.any():
            continue
        colour = (_hex_rgb(paint.concept_colour(s.brush.concept, 0)) if s.brush.concept and s.action == "draw"
                  else np.array([128, 128, 128], np.float32))
        out[region] = 0.65 * out[region] + 0.35 * colour
        inner = region.copy()
        inner[1:, :] &= region[:-1, :]
        inner[:-1, :] &= region[1:, :]
        inner[:, 1:] &= region[:, :-1]
        inner[:, :-1] &= region[:, 1:]
        out[region & ~inner] = colour
    return out.clip(0, 255).astype(np.uint8)


def _swatches(painter: Any, labels: set[int]) -> str:
    return " ".join(
        f'<span style="white-space:nowrap"><span style="display:inline-block;width:0.9em;height:0.9em;'
        f'background:{paint.concept_colour(painter.names[k], k)};border:1px solid #888;vertical-align:middle">'
        f'</span> {html.escape(painter.names[k])}</span>' for k in sorted(labels))


def _last_stroke(session: Any) -> None:
    st.subheader("Last stroke")
    last = session.last
    if last is None:
        st.caption("no stroke yet" if not session.strokes else "the stack changed (undo / redo): paint to see a change")
        return
    change = last.change()
    concept = last.stroke.brush.concept if last.stroke else None
    mcols = st.columns([1, 3])
    if concept:
        before, after = last.before.pixels[concept], last.after.pixels[concept]
        mcols[0].metric(f"{concept} pixels", after, delta=after - before)
    mcols[0].caption(f"{last.stroke.describe() if last.stroke else ''} · {last.ms:.0f} ms")
    if change:
        frame = pl.DataFrame({"concept": list(change), "before": [last.before.pixels[c] for c in change],
                              "after": [last.after.pixels[c] for c in change],
                              "change": list(change.values())}).sort(pl.col("change").abs(), descending=True)
        mcols[1].dataframe(frame, hide_index=True)
    else:
        mcols[1].caption("no pixel changed its label")


@st.fragment
def paint_area(painter: Any, brush: Any, action: str, strength: str, tool: str, width: int, name: str) -> None:
    """Canvas, stack buttons, images and the last stroke's change: a stroke reruns only this fragment."""
    session = st.session_state["paint_session"]

    def apply(region: Any) -> None:  # a bad stroke leaves the stack as it was and says why
        try:
            session.apply(painter.stroke(brush, action, region, strength))
        except paint.EditError as e:
            st.session_state["paint_error"] = str(e)
        _bump()  # the next canvas is a fresh one over the edited image

    # A stroke arrives as the canvas' value (sent on mouse-up) or from the coordinates form: apply it
    # before anything is drawn, so this very run shows its result.
    sent = st.session_state.get(f"paint_canvas_{st.session_state['paint_version']}") or {}
    objects = ((sent.get("drawing") or {}).get("raw") or {}).get("objects") or []
    if objects:
        apply(canvas_region(objects, CANVAS, painter.resolution))
    elif "paint_pending" in st.session_state:
        apply(st.session_state.pop("paint_pending"))

    ctl = st.columns([1, 1, 1, 3])
    ctl[0].button("undo", icon=":material/undo:", on_click=_undo, disabled=not session.can_undo, key="paint_undo")
    ctl[1].button("redo", icon=":material/redo:", on_click=_redo, disabled=not session.can_redo, key="paint_redo")
    ctl[2].button("reset", icon=":material/restart_alt:", on_click=_reset,
                  disabled=not (session.can_undo or session.can_redo), key="paint_reset")
    ctl[3].caption(f"{len(session.strokes)} stroke(s) on the stack"
                   + (f", {session.undone} to redo" if session.can_redo else ""))

    left, right = st.columns([3, 4])
    with left:
        st.markdown("**paint here** (edited image; applied strokes tinted and outlined)")
        st.caption("Take a stroke back with **undo** above: the canvas's own toolbar only edits the stroke "
                   "being drawn, before it is sent.")
        colour = paint.concept_colour(brush.concept, 0) if brush.concept else "#ff00ff"
        st_canvas(fill_color=colour + "66", stroke_width=width, stroke_color=colour + "aa",
                  background_image=_png(_with_strokes(session.current.image, session.strokes), CANVAS),
                  update_streamlit=True,
                  height=CANVAS, width=CANVAS, drawing_mode="freedraw" if tool == "freehand" else "rect",
                  key=f"paint_canvas_{st.session_state['paint_version']}")  # its strokes are read above, next run
        if "paint_error" in st.session_state:
            st.warning(st.session_state.pop("paint_error"), icon=":material/block:")
        with st.expander("stroke by coordinates"):
            st.text_input("region x0,y0,x1,y1 (image pixels, x1 and y1 exclusive)", key="paint_box",
                          placeholder=f"e.g. 8,24,24,40 on the {painter.resolution}x{painter.resolution} image")
            st.button("apply stroke", key="paint_apply_box", on_click=_box_stroke)
        buf = io.BytesIO()
        _png(session.current.image).save(buf, format="PNG")
        st.download_button("download edited image", buf.getvalue(), file_name=f"{name}-edited.png",
                           mime="image/png", icon=":material/download:", key="paint_download")
    with right:
        cols = st.columns(2)
        side = CANVAS * 3 // 4
        cols[0].image(_png(session.original.image, side), caption="original")
        cols[1].image(_png(session.current.image, side), caption=f"edited ({len(session.strokes)} strokes)")
        cols[0].image(_png(session.original.segmentation(), side), caption="segmentation of the original")
        cols[1].image(_png(session.current.segmentation(), side), caption="segmentation of the edited image")
        shown = set(np.unique(session.original.labels).tolist()) | set(np.unique(session.current.labels).tolist())
        st.markdown(_swatches(painter, shown), unsafe_allow_html=True)
    _last_stroke(session)


paint_area(painter, brush, action, strength, tool, width, f"{model}-s{seed}-{index}")

st.subheader("Gallery")
start = (index // GALLERY) * GALLERY
indices = tuple(range(start, start + GALLERY))
if images.enabled():
    try:
        shots = images.samples(db, model, sha, seed, indices, images.display_size(mrow["resolution"]))
        gcols = st.columns(GALLERY)
        for col, i, im in zip(gcols, indices, shots):
            col.image(im, caption=f"sample {i}")
            col.button("paint", key=f"paint_pick_{i}", on_click=_set_index, args=(i,), disabled=i == index)
    except Exception as e:
        st.caption(f"gallery unavailable: {images.error_text(e)}")
nav = st.columns([1, 1, 6])
nav[0].button("previous", key="paint_prev", on_click=_set_index, args=(max(0, start - GALLERY),), disabled=start == 0)
nav[1].button("next", key="paint_next", on_click=_set_index, args=(min(MAX_SAMPLE, start + GALLERY),))
