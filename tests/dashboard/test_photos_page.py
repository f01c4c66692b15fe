"""The Photos page (issue 19): invert a rendered scene with the bundled village-gan and see the reconstruction,
the omissions and the segmentations; the set-level chart of an invert run next to the coverage."""
from __future__ import annotations

import datetime as dt

from db import store
from tests.dashboard.apptest import assert_ok, open_page, texts


def test_photos_page_inverts_a_rendered_scene(empty_store) -> None:
    at = open_page("photos", timeout=600)
    assert_ok(at)
    assert at.selectbox(key="photos_model").value == "village-gan"  # no models in the store: the bundled one
    assert "No inversion runs yet" in texts(at)
    assert len(at.image) == 1  # the scene before inverting
    at.button(key="photos_invert").click().run(timeout=600)
    assert_ok(at)
    shown = texts(at)
    assert "**omitted:**" in shown
    captions = [c for im in at.image for c in [getattr(im, "caption", "")]]
    assert len(at.image) >= 7, captions  # photo, reconstruction, difference, omission map, 2 segmentations
    psnr = [m for m in at.metric if m.label == "PSNR"][0]
    assert float(psnr.value.split()[0]) > 10


def test_photos_page_chart_of_an_invert_run(empty_store) -> None:
    with store.connect(empty_store) as con:
        con.execute("INSERT INTO runs (run_key, analysis, name, model, status, started_at) VALUES "
                    "('k1', 'invert', 'scenes', 'village-gan', 'done', ?)", [dt.datetime(2026, 1, 1)])
        for img, (share, recall) in enumerate([(0.10, 0.2), (0.30, 0.6)]):
            con.execute("INSERT INTO inversion_concepts VALUES ('k1', 'village-gan', 'village-seg', ?, 'dome', "
                        "?, 0.01, ?, true, ?)", [f"village:{img}", share, recall, recall < 0.5])
    at = open_page("photos", timeout=600)
    assert_ok(at)
    frames = [d.value for d in at.dataframe if "dropped" in d.value.columns]
    assert frames and frames[0]["concept"].to_list() == ["dome"]
    expected = 1 - (0.10 * 0.2 + 0.30 * 0.6) / 0.40
    assert abs(frames[0]["dropped"][0] - expected) < 1e-9
    assert frames[0]["omitted_images"][0] == 1
