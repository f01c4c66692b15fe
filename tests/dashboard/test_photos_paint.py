"""Painting on a photo in the dashboard (issue 19): the Photos page's "Open in Paint" adapts the generator to
the photo; the Paint page then paints on it (compute.paint.photo.PhotoCanvas in st.session_state)."""
from __future__ import annotations

import numpy as np
import torch

from compute.invert.encoder import normalise_z
from compute.paint.engine import to_uint8
from compute.paint.photo import PhotoCanvas, adapt
from tests.compute.test_paint import PAINT_MODEL
from tests.dashboard.apptest import assert_ok, open_page, texts
from tests.dashboard.test_paint_page import paint_db, paint_store_master  # noqa: F401 (fixtures)


def test_paint_page_paints_on_an_opened_photo(paint_db, tiny_gan) -> None:  # noqa: F811
    from ingest.models.progan import load_progan

    gen = load_progan(str(tiny_gan), "cpu").eval().requires_grad_(False)
    z = normalise_z(torch.randn(1, 8, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        x = (0.8 * gen(z) + 0.1).clamp(-1, 1)
    photo = to_uint8(x)[0]
    at = open_page("paint", timeout=120)
    generated = at.session_state["paint_session"].original.image.copy()
    at.session_state["paint_photo"] = PhotoCanvas(PAINT_MODEL, "p1", photo, adapt(gen, x, z, steps=3))
    at.run()
    assert_ok(at)
    assert "Painting on your photo" in texts(at)
    session = at.session_state["paint_session"]
    assert np.array_equal(session.original.image, photo)
    at.text_input(key="paint_box").input("0,0,16,16")
    at.button(key="paint_apply_box").click().run()
    assert_ok(at)
    session = at.session_state["paint_session"]
    assert len(session.strokes) == 1
    diff = np.abs(session.current.image.astype(int) - photo.astype(int)).max(2)
    assert diff[40:, :].max() == 0 and diff[:, 40:].max() == 0  # far from the stroke: the photo's own pixels
    at.button(key="paint_unphoto").click().run()
    assert_ok(at)
    assert "paint_photo" not in at.session_state
    assert np.array_equal(at.session_state["paint_session"].original.image, generated)


def test_photos_page_open_in_paint_adapts_the_generator(empty_store) -> None:
    at = open_page("photos", timeout=600)
    at.radio(key="photos_steps").set_value("fast").run()
    at.button(key="photos_invert").click().run(timeout=600)
    assert_ok(at)
    psnr = float([m for m in at.metric if m.label == "PSNR"][0].value.split()[0])
    at.button(key="photos_paint").click().run(timeout=600)
    assert_ok(at)
    canvas = at.session_state["paint_photo"]
    assert isinstance(canvas, PhotoCanvas) and canvas.model == "village-gan" and canvas.key.endswith("-fast")
    assert abs(canvas.adapted.psnr_inverted - psnr) < 0.1  # the residual makes G'(z) the inversion's reconstruction
    assert canvas.adapted.psnr_adapted > canvas.adapted.psnr_inverted
    assert "Paint" in [t.value for t in at.title]  # switched to the Paint page
