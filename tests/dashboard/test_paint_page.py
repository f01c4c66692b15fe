"""The Paint page with Streamlit's AppTest over a store with a real dissection of the tiny random generator
(tests/compute/test_paint.py `build_paint_store`): brushes, a stroke from the canvas (its value injected
as the component would send it) and from the coordinates form, undo / redo / reset, a bad stroke that
leaves the stack intact, the download, and a store without dissections."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.compute.test_paint import ACE_LAYER, ACE_UNITS, IOU_LAYER, PAINT_MODEL, build_paint_store
from tests.dashboard.apptest import assert_ok, open_page, texts


@pytest.fixture(scope="module")
def paint_store_master(tmp_path_factory, tiny_gan, tiny_seg) -> Path:
    return build_paint_store(tmp_path_factory.mktemp("paintdash"), tiny_gan, tiny_seg)


@pytest.fixture
def paint_db(paint_store_master, tmp_path, monkeypatch) -> Path:
    dst = tmp_path / "paint.duckdb"
    shutil.copy(paint_store_master, dst)
    monkeypatch.setenv("GANDISSECT_DB", str(dst))
    return dst


def _canvas_key(at) -> str:
    return f"paint_canvas_{at.session_state['paint_version']}"


def _rect(left: float, top: float, width: float, height: float) -> dict:
    """The value the canvas component sends after one rectangle is drawn (canvas pixels)."""
    obj = {"type": "rect", "left": left, "top": top, "width": width, "height": height, "scaleX": 1, "scaleY": 1,
           "originX": "left", "originY": "top"}
    return {"drawing": {"raw": {"objects": [obj]}, "data": None}, "backgroundFit": None}


def test_paint_page_strokes_undo_redo_reset(paint_db) -> None:
    at = open_page("paint", timeout=120)
    assert_ok(at)
    shown = texts(at)
    assert "Paint" in shown and "no stroke yet" in shown
    from db import store

    most = store.read("select layer from layer_summary order by interpretable_units desc, layer_index limit 1",
                      path=paint_db)["layer"][0]
    assert at.selectbox(key="paint_layer").value == most
    brush = at.selectbox(key="paint_brush")
    assert brush.value == "tree" and "tree · IoU" in brush.options and "flag:artifact" in brush.options
    # the layer with the most interpretable units is the default; pick the one with tree's causal units
    at.selectbox(key="paint_layer").select(ACE_LAYER).run()
    assert_ok(at)
    assert "ranked by α" in texts(at)
    session = at.session_state["paint_session"]
    original = session.original.image.copy()

    at.session_state[_canvas_key(at)] = _rect(0, 0, 160, 160)  # the top-left quarter of the 320 px canvas
    at.run()
    assert_ok(at)
    session = at.session_state["paint_session"]
    assert len(session.strokes) == 1 and not np.array_equal(session.current.image, original)
    region = session.strokes[0].region
    assert region[:32, :32].all() and region.sum() == 32 * 32
    assert "1 stroke(s) on the stack" in texts(at) and "draw tree (high, 3 units, ace)" in texts(at)
    assert at.metric[0].label == "tree pixels"
    assert at.session_state[_canvas_key(at)]["drawing"]["raw"]["objects"] == []  # a fresh canvas, edited image

    at.segmented_control(key="paint_action").set_value("remove").run()
    at.text_input(key="paint_box").input("32,32,64,64")
    at.button(key="paint_apply_box").click().run()
    assert_ok(at)
    session = at.session_state["paint_session"]
    assert [s.action for s in session.strokes] == ["draw", "remove"]
    assert session.featuremap[0, list(ACE_UNITS), 8:, 8:].abs().sum() == 0

    at.button(key="paint_undo").click().run()
    assert_ok(at)
    assert len(at.session_state["paint_session"].strokes) == 1 and "1 to redo" in texts(at)
    at.button(key="paint_redo").click().run()
    assert len(at.session_state["paint_session"].strokes) == 2
    at.button(key="paint_reset").click().run()
    assert_ok(at)
    session = at.session_state["paint_session"]
    assert session.strokes == [] and np.array_equal(session.current.image, original)


def test_bad_stroke_warns_and_keeps_the_stack(paint_db) -> None:
    at = open_page("paint", timeout=120)
    at.text_input(key="paint_box").input("0,0,16,16")
    at.button(key="paint_apply_box").click().run()
    before = at.session_state["paint_session"].current
    at.text_input(key="paint_box").input("0,0,99,16")
    at.button(key="paint_apply_box").click().run()
    assert_ok(at)
    assert any("outside the 64x64 image" in w.value for w in at.warning)
    session = at.session_state["paint_session"]
    assert len(session.strokes) == 1 and session.current is before


def test_sample_choice_and_download(paint_db) -> None:
    at = open_page("paint", timeout=120)
    first = at.session_state["paint_session"]
    at.button(key="paint_pick_3").click().run()
    assert_ok(at)
    assert at.session_state["paint_index"] == 3 and at.session_state["paint_session"] is not first
    at.button(key="paint_random").click().run()
    assert_ok(at)
    assert 0 <= at.session_state["paint_index"] <= 99_999
    assert [b.label for b in at.get("download_button")] == ["download edited image"]
    assert len(at.image) == 4 + 6  # original, edited, both segmentations, and the gallery


def test_paint_page_without_dissection(empty_store) -> None:
    at = open_page("paint")
    assert_ok(at)
    assert "Nothing computed yet" in texts(at) or "needs a dissection" in texts(at)


def test_unit_page_links_to_paint_with_the_unit_as_the_brush(paint_db) -> None:
    """Unit page -> Paint: the link carries model, layer and unit; Paint opens there with a one-unit brush
    whose stroke edits that unit alone; an out-of-range unit is refused with a warning."""
    params = {"model": PAINT_MODEL, "layer": IOU_LAYER, "unit": "3"}
    at = open_page("unit", params, timeout=120)
    assert_ok(at)
    links = [p for p in at.page_link if "paint with unit 3" in p.proto.label]
    assert len(links) == 1 and links[0].proto.page == "paint", [p.proto for p in at.page_link]
    assert set(links[0].proto.query_string.split("&")) == {"model=tiny", "layer=layer3", "unit=3"}

    at = open_page("paint", params, timeout=120)
    assert_ok(at)
    assert at.selectbox(key="paint_model").value == PAINT_MODEL
    assert at.selectbox(key="paint_layer").value == IOU_LAYER  # not the default (most interpretable) layer
    assert at.selectbox(key="paint_brush").value == "unit 3" and "from its Unit page" in texts(at)
    at.segmented_control(key="paint_action").set_value("remove").run()
    at.text_input(key="paint_box").input("0,0,64,64")
    at.button(key="paint_apply_box").click().run()
    assert_ok(at)
    session = at.session_state["paint_session"]
    assert [s.brush.units for s in session.strokes] == [(3,)]
    r, r0 = session.featuremap[0], session.r0[0]
    assert r[3].abs().sum() == 0 and r0[3].abs().sum() > 0
    keep = [u for u in range(r.shape[0]) if u != 3]
    assert (r[keep] == r0[keep]).all()
    # another brush picked by hand stays picked on the next run (the URL is applied once)
    at.selectbox(key="paint_brush").select("flag:artifact").run()
    assert at.selectbox(key="paint_brush").value == "flag:artifact" and "unit 3" in at.selectbox(key="paint_brush").options

    at = open_page("paint", {**params, "unit": "999"}, timeout=120)
    assert_ok(at)
    assert any("no unit **999**" in w.value for w in at.warning)
    assert "unit 999" not in at.selectbox(key="paint_brush").options
