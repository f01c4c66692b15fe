"""The dashboard's helpers without a page: strips re-laid in rows, store-stamped query caches, unit links,
flag validation against the layer's width."""
from __future__ import annotations

import numpy as np
import polars as pl

from dashboard import images, queries, ui
from db import store
from tests.dashboard.conftest import TINY, TINY_LAYERS


def test_wrap_lays_a_strip_out_in_rows_and_keeps_every_tile():
    h, gap, k = 4, 1, 5
    tiles = [np.full((h, h, 3), 10 * (i + 1), np.uint8) for i in range(k)]
    parts = []
    for i, t in enumerate(tiles):
        if i:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
        parts.append(t)
    strip = np.concatenate(parts, axis=1)
    grid = images.wrap(strip, k, 3)
    assert grid.shape == (2 * h + gap, 3 * h + 2 * gap, 3)
    for i in range(k):
        r, c = divmod(i, 3)
        y, x = r * (h + gap), c * (h + gap)
        assert (grid[y:y + h, x:x + h] == tiles[i]).all(), i
    assert (grid[h + gap:, 2 * (h + gap):] == 255).all()  # the empty sixth place is blank
    assert images.wrap(strip, k, 8) is strip  # fits in one row: unchanged


def test_cached_queries_follow_the_store_without_a_ttl(dash_store):
    db = str(dash_store)
    before = queries.flags(db).height
    stamp = queries.store_stamp(db)
    assert queries.flags(db).height == before  # a rerun: from the cache
    store.set_flag(TINY, TINY_LAYERS[0], 2, "artifact", "seen in a test", path=db)
    assert queries.store_stamp(db) != stamp
    assert queries.flags(db).height == before + 1  # the write shows at the next call, no clear needed


def test_unit_links_point_at_the_unit_page():
    frame = pl.DataFrame({"model": ["m"], "layer": ["layer4"], "unit": [7]})
    linked, config = ui.with_unit_links(frame)
    assert linked.columns[0] == "open" and linked["open"][0] == "unit?model=m&layer=layer4&unit=7"
    assert "open" in config


def test_a_flag_on_a_unit_the_layer_lacks_is_refused(dash_store):
    db = str(dash_store)
    width = ui.layer_units(db, TINY, TINY_LAYERS[0])
    before = queries.flags(db).height
    assert ui.save_flag(db, TINY, TINY_LAYERS[0], width, "artifact", None) is False
    assert ui.save_flag(db, TINY, TINY_LAYERS[0], -1, "artifact", None) is False
    assert queries.flags(db).height == before


def test_generated_next_to_rendered_scenes_on_the_overview(dash_store):
    from tests.dashboard.apptest import assert_ok, open_page

    at = open_page("overview")
    assert not at.image  # off by default: the page opens without the generator
    at.toggle(key="ov_gvr").set_value(True).run()
    assert_ok(at)
    at.selectbox(key="ov_gvr_model").set_value(TINY).run()
    assert_ok(at)
    assert len(at.image) == 1 and "images unavailable" not in "".join(c.value for c in at.caption)


def test_causal_page_follows_a_link_and_says_when_it_cannot(dash_store):
    from tests.dashboard.apptest import assert_ok, open_page

    at = open_page("causal", {"concept": "no-such-concept"})
    assert_ok(at)
    assert any("no causal results for it" in w.value for w in at.warning)
    index = queries.causal_index(str(dash_store)).row(0, named=True)
    at = open_page("causal", {"model": index["model"], "layer": index["layer"], "concept": index["concept"]})
    assert_ok(at)
    assert not at.warning
    assert at.caption[0].value.startswith(f"{index['model']} · {index['layer']} · {index['concept']}")


def test_compare_matches_units_by_concept(dash_store):
    from tests.dashboard.apptest import assert_ok, open_page

    at = open_page("compare")
    assert_ok(at)
    frames = [d.value for d in at.dataframe if "layers" in d.value.columns]
    assert frames, "no matched-units table"
    table = frames[0]
    assert list(table.columns[:3]) == ["concept", "category", "layers"] and len(table.columns) >= 4
    assert table["layers"].is_monotonic_decreasing  # concepts shared by more layers first
    cell = next(v for v in table.iloc[0, 3:] if isinstance(v, str))
    assert "(" in cell  # unit (IoU)
