"""Photos: invert a photo (or a rendered village scene) into a generator and see what it cannot draw.

Upload a PNG / JPEG or pick a rendered scene, press Invert (progress shown): photo / reconstruction /
difference / omission map, both segmentations, and the concepts of the photo with their recall (the
omitted ones first). "Open in Paint" adapts a copy of the generator to the photo
(`compute.paint.photo.adapt`) and opens the Paint page on it (`st.session_state["paint_photo"]`). Below, the omissions of a set of photos (the latest done `invert` runs, view
`inversion_dropped`) next to the distribution-level coverage of the Realism page
(`concept_coverage_latest`).

Reads the store (read-only, through `dashboard.queries`); the inversion itself runs `compute.invert`
lazily (torch is imported only when Invert is pressed). Writes nothing.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
import polars as pl
import streamlit as st

from dashboard import queries, ui

DROPPED_SQL = """
SELECT d.run_key, d.analysis, d.model, d.concept, d.images, d.omitted_images, d.dropped, d.rank,
       c.fraction_change AS coverage_change
FROM inversion_dropped d
LEFT JOIN concept_coverage_latest c ON c.model = d.model AND c.segmenter = d.segmenter AND c.concept = d.concept
ORDER BY d.analysis, d.rank, d.concept
"""
MODELS_SQL = "SELECT model FROM models WHERE family = 'progan' ORDER BY model"
FAST = {"z_steps": 60, "layer_steps": 100}
FULL = {"z_steps": 150, "layer_steps": 250}


@st.cache_resource(show_spinner=False, max_entries=2)
def _models(model: str) -> tuple[Any, Any, Any]:
    from compute.invert.cli import load_models

    return load_models(model, None, "village-seg", None, "cpu", warn=lambda s: None)


def _read(sql: str) -> pl.DataFrame:
    try:
        return queries._read(queries.db_path(), sql)
    except Exception:  # no store yet, or a store from before these tables
        return pl.DataFrame()


def _scene(seed: int) -> np.ndarray:
    from ingest.village.render import render

    return render(int(seed), size=64).image


def _invert(image: np.ndarray, model: str, steps: dict[str, int]) -> dict[str, Any]:
    from compute.invert.cli import invert_photos
    from compute.paint.engine import colorize, label_map
    from ingest.real import to_input

    gen, enc, seg = _models(model)
    bar = st.progress(0.0, text="inverting…")
    r = invert_photos(gen, enc, seg, image[None], layer="layer4", batch=1, device="cpu",
                      progress=lambda d, t: bar.progress(min(1.0, d / max(t, 1)), text=f"inverting… step {d} of {t}"),
                      **steps)[0]
    bar.empty()
    import torch

    names = [c.name for c in seg.concepts]
    with torch.no_grad():
        labs = label_map(seg.segment(torch.cat([to_input(image[None]), to_input(r["reconstruction"][None])])))
    r["seg_photo"], r["seg_recon"] = colorize(labs[0].numpy(), names), colorize(labs[1].numpy(), names)
    diff = np.abs(image.astype(np.int16) - r["reconstruction"].astype(np.int16)).max(2)
    r["difference"] = np.repeat(np.clip(diff * 3, 0, 255).astype(np.uint8)[..., None], 3, 2)
    return r


def _adapt(image: np.ndarray, model: str, r: dict[str, Any], key: str) -> Any:
    """The generator adapted to this photo from its inversion (compute.paint.photo.adapt), as the
    PhotoCanvas the Paint page paints on."""
    from compute.paint.photo import PhotoCanvas, adapt
    from ingest.real import to_input

    gen, _, seg = _models(model)
    bar = st.progress(0.0, text="adapting the generator to the photo…")
    ad = adapt(gen, to_input(image[None]), r["z"], r["features"], r["layer"], segmenter=seg,
               progress=lambda d, t: bar.progress(min(1.0, d / max(t, 1)), text=f"adapting… step {d} of {t}"))
    bar.empty()
    return PhotoCanvas(model, key, image, ad)


def _open_in_paint(image: np.ndarray, model: str, r: dict[str, Any], key: str) -> None:
    st.session_state["paint_photo"] = _adapt(image, model, r, key)
    st.switch_page("app_pages/paint.py")


def _big(img: np.ndarray, scale: int = 3) -> np.ndarray:
    return np.kron(img, np.ones((scale, scale, 1), np.uint8)) if img.shape[0] < 128 else img


st.title("Photos")
st.caption("Invert a photo into the generator (layer-wise encoder, then z, then layer4's features): what is "
           "missing from the reconstruction is what the generator cannot draw.")
known = _read(MODELS_SQL)
options = known["model"].to_list() if known.height else ["village-gan"]
c1, c2, c3 = st.columns([2, 2, 1])
model = c1.selectbox("generator", options, key="photos_model")
source = c2.radio("image", ["rendered scene", "upload"], horizontal=True, key="photos_source")
quality = c3.radio("steps", ["fast", "full"], horizontal=True, key="photos_steps",
                   help=f"fast: {FAST['z_steps']} z + {FAST['layer_steps']} layer steps; full: "
                        f"{FULL['z_steps']} + {FULL['layer_steps']} (what `gandissect invert` uses)")
image: np.ndarray | None = None
notes: list[str] = []
if source == "rendered scene":
    seed = st.number_input("scene seed", min_value=0, max_value=2**31 - 1, value=30_000_000, step=1, key="photos_seed")
    image = _scene(int(seed))
else:
    up = st.file_uploader("PNG or JPEG", type=["png", "jpg", "jpeg"], key="photos_upload")
    if up is not None:
        import tempfile
        from pathlib import Path

        from ingest.photos import PhotoError, load_photo

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / Path(up.name).name
            p.write_bytes(up.getvalue())
            try:
                photo = load_photo(p, 64)
                image, notes = photo.image, photo.notes
            except PhotoError as e:
                st.error(str(e).replace(str(p), up.name))
if image is not None:
    st.image(_big(image), caption="the image (squared to 64 x 64)" + (f" — {'; '.join(notes)}" if notes else ""))
    key = (model, quality, image.tobytes())
    if st.button("Invert", type="primary", key="photos_invert"):
        st.session_state["photos_result"] = (key, _invert(image, model, FAST if quality == "fast" else FULL))
    res = st.session_state.get("photos_result")
    if res is not None and res[0] == key:
        r = res[1]
        cols = st.columns(4)
        for col, (img, cap) in zip(cols, [(image, "photo"), (r["reconstruction"], "reconstruction"),
                                          (r["difference"], "difference (x3)"),
                                          (r["omission_map"], "omitted concepts (red)")]):
            if img is not None:
                col.image(_big(img), caption=cap)
        cols = st.columns(4)
        cols[0].image(_big(r["seg_photo"]), caption="segmentation of the photo")
        cols[1].image(_big(r["seg_recon"]), caption="segmentation of the reconstruction")
        cols[2].metric("PSNR", f"{r['psnr']:.1f} dB", help=f"after z: {r['psnr_z']:.1f} dB; start (encoder or best random latent): "
                                                          f"{r['psnr_encoder']:.1f} dB")
        cols[3].metric("seconds", f"{r['seconds']:.1f}")
        om = r["omitted"]
        st.markdown("**omitted:** " + (", ".join(ui.md_escape(c) for c in om) if om else "nothing"))
        if r["concepts"]:
            rows = pl.DataFrame(r["concepts"]).select("concept", "photo_share", "recon_share", "recall", "omitted")
            st.dataframe(rows.sort(["omitted", "recall"], descending=[True, False], nulls_last=True),
                         hide_index=True)
        import hashlib

        pkey = f"{hashlib.sha256(image.tobytes()).hexdigest()[:16]}-{quality}"
        if st.button("Open in Paint", icon=":material/brush:", key="photos_paint",
                     help="adapt a copy of the generator to this photo (its layers above layer4 fine-tuned, "
                          "seconds), then paint on it with the unit brushes; the edits are composed into the photo"):
            _open_in_paint(image, model, r, pkey)

st.subheader("What a set of photos loses")
dropped = _read(DROPPED_SQL)
if not dropped.height:
    st.info('No inversion runs yet: declare an analysis with `kind = "invert"` in gandissect.toml '
            '(images = "village" or a folder of photos) and run `gandissect run`.')
else:
    runs = dropped["analysis"].unique(maintain_order=True).to_list()
    run = st.selectbox("invert run", runs, key="photos_run")
    d = dropped.filter(pl.col("analysis") == run)
    import altair as alt

    long = pl.concat([
        d.select("concept", pl.lit("dropped by inversion").alias("measure"), pl.col("dropped").alias("value")),
        d.select("concept", pl.lit("under-production (realism)").alias("measure"),
                 (-pl.col("coverage_change")).alias("value")),
    ]).drop_nulls()
    chart = alt.Chart(long.to_pandas()).mark_bar().encode(
        x=alt.X("value:Q", title="share"), y=alt.Y("concept:N", sort="-x"), color="measure:N",
        yOffset="measure:N", tooltip=["concept", "measure", alt.Tooltip("value:Q", format=".1%")])
    st.altair_chart(chart, use_container_width=True)
    st.dataframe(d.drop("run_key", "analysis"), hide_index=True)
