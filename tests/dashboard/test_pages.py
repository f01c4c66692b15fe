"""AppTest smoke tests: every dashboard page on the fixture store, on an empty store and on a missing one;
the unit page's permalink; the SQL page's guard and examples; flags written from the dashboard."""
from __future__ import annotations

import pytest

from dashboard import queries
from dashboard.ui import EMPTY_MSG
from db import store
from db.guard import run_guarded
from tests.dashboard.apptest import PAGES, assert_ok, open_page, texts
from tests.dashboard.conftest import TINY, TINY_K, TINY_LAYERS

# page -> texts it must show on the fixture store
EXPECTED = {
    "overview": ["Overview", "Interpretable units per layer", "Concept distribution of a layer", "Jobs",
                 "NaN activations in layer1 unit 2"],
    "units": ["Units", "units of", "open unit"],
    "unit": ["Activation quantiles", "IoU with every concept", "permalink"],
    "compare": ["Compare", "Interpretable units by category", "Emergence across training checkpoints",
                "2 checkpoints of tiny-gan, training steps 50–100"],
    "causal": ["Causal", "α per unit", "δ per epoch", "0.050 → 0.150 → 0.250 — rose by +0.200", "Ablation curves", "Insertion by context", "Where can it be inserted?",
               "Tracing into later layers"],
    "realism": ["Realism", "Per-unit realism scores", "Least realistic units", "Repair",
                "of the 8 worst units, 2 are flagged", "What the generator under- or over-produces",
                "Labels without the least realistic units"],
    "sql": ["SQL", "rows ×"],
    "flags": ["Flags", "Flagged units (3)"],
    "model_cards": ["Model cards"],
}


@pytest.mark.parametrize("page", PAGES)
def test_page_on_fixture_store(dash_store, page):
    at = open_page(page)
    assert_ok(at)
    shown = texts(at) + "\n".join(pl.label or "" for pl in at.get("page_link"))
    for text in EXPECTED[page]:
        assert text in shown, f"{page}: {text!r} missing"
    assert EMPTY_MSG not in shown
    if page == "flags":
        assert "doorway" in at.dataframe[1].value["note"].to_list()


@pytest.mark.parametrize("which", ["empty_store", "missing_store"])
def test_pages_on_empty_store(which, request):
    """Every page, one after the other in one session, says there is nothing yet (and never raises)."""
    request.getfixturevalue(which)
    at = open_page("overview")
    for page in PAGES:
        if page != "overview":
            at.switch_page(f"app_pages/{page}.py").run()
        assert_ok(at)
        shown = texts(at)
        if page == "sql":  # the default example runs on the empty schema
            assert "0 rows" in shown
        elif page == "model_cards":
            assert "Model cards" in shown
        else:
            assert "Nothing computed yet: run `gandissect run`" in shown, page


def test_units_page_draws_strips(dash_store):
    """The default model (tiny-gan) has a real checkpoint: every card gets its top-k strip."""
    at = open_page("units")
    assert_ok(at)
    assert at.selectbox(key="units_model").value == TINY
    assert at.selectbox(key="units_layer").value in TINY_LAYERS
    cards = [link for link in at.get("page_link") if (link.label or "").startswith("open unit")]
    assert len(cards) == 8
    strips = at.image
    assert len(strips) == 8, "one image strip per card"


def test_units_ranking_by_alpha_and_concept(dash_store):
    at = open_page("units")
    at.selectbox(key="units_model").set_value("toy-gan").run()
    at.selectbox(key="units_layer").set_value("layer1").run()
    assert "alpha" in at.selectbox(key="units_ranking").options or "α for a concept (ACE)" in \
        at.selectbox(key="units_ranking").options
    at.selectbox(key="units_ranking").set_value("alpha").run()
    assert_ok(at)
    links = [link.label for link in at.get("page_link") if (link.label or "").startswith("open unit")]
    assert links[:2] == ["open unit 3", "open unit 2"]  # alpha 1.0, 0.7 for door
    assert "images unavailable" in texts(at)  # toy-gan's checkpoint does not exist: said, not raised
    at.selectbox(key="units_ranking").set_value("concept_iou").run()
    at.selectbox(key="units_concept").set_value("sky").run()
    assert_ok(at)
    links = [link.label for link in at.get("page_link") if (link.label or "").startswith("open unit")]
    assert links[0] == "open unit 0"


def test_unit_permalink_reopens_the_unit(dash_store):
    params = {"model": TINY, "layer": TINY_LAYERS[1], "unit": "5", "segmenter": "toy-seg", "mode": "quantile"}
    at = open_page("unit", params)
    assert_ok(at)
    assert at.title[0].value == f"{TINY} · {TINY_LAYERS[1]} · unit 5"
    assert at.query_params == params
    assert at.code[0].value == "unit?model=tiny-gan&layer=layer5&unit=5&segmenter=toy-seg&mode=quantile"
    assert len(at.image) == 1  # the unit's strip
    # the sidebar picks another unit: the URL follows
    at.number_input(key="unit_num").set_value(6).run()
    assert_ok(at)
    assert at.title[0].value == f"{TINY} · {TINY_LAYERS[1]} · unit 6"
    assert at.query_params["unit"] == "6"


def test_unit_arrows_move_the_unit_and_the_url(dash_store):
    at = open_page("unit", {"model": TINY, "layer": TINY_LAYERS[1], "unit": "5"})
    at.button(key="unit_next").click().run()
    assert_ok(at)
    assert at.title[0].value.endswith("unit 6") and at.query_params["unit"] == "6"
    assert "unit=6" in at.code[0].value
    at.button(key="unit_prev").click().run()
    at.button(key="unit_prev").click().run()
    assert at.title[0].value.endswith("unit 4") and at.query_params["unit"] == "4"
    at = open_page("unit", {"model": TINY, "layer": TINY_LAYERS[1], "unit": "0"})
    assert at.button(key="unit_prev").disabled


@pytest.mark.parametrize("params, says", [
    ({"model": "nope", "layer": "layer99"}, "There is no model **nope**"),
    ({"model": TINY, "layer": "layer99"}, "There is no layer **layer99**"),
])
def test_unit_page_warns_about_unknown_names(dash_store, params, says):
    at = open_page("unit", params)
    assert_ok(at)
    assert any(says in w.value for w in at.warning), [w.value for w in at.warning]
    assert not at.title  # nothing else in its place


def test_unit_page_rejects_unknown_unit(dash_store):
    at = open_page("unit", {"model": TINY, "layer": TINY_LAYERS[0], "unit": "99"})
    assert_ok(at)
    assert "there is no unit '99'" in texts(at)
    assert at.title[0].value.endswith("unit 0")


def test_sql_examples_all_run(dash_store):
    for title, sql in queries.examples().items():
        result = run_guarded(sql, dash_store, 100, 10)
        assert result.frame.width > 0, title
    assert len(queries.examples()) >= 6


def test_sql_page_refuses_writes_and_runs_selects(dash_store):
    at = open_page("sql")
    at.text_area(key="sql_text").set_value("DELETE FROM models")
    at.button[0].click().run()
    assert_ok(at)
    assert any("refused" in w.value for w in at.warning)
    assert store.read("select count(*) AS n from models", path=dash_store)["n"][0] == 3
    at.text_area(key="sql_text").set_value("select model, unit, concept from unit_labels where model = 'tiny-gan'")
    at.button[0].click().run()
    assert_ok(at)
    assert at.dataframe[0].value.shape[0] == 16
    assert [b.label for b in at.get("download_button")] == ["CSV", "Parquet"]


def test_flag_saved_from_the_dashboard(dash_store):
    at = open_page("flags")
    at.selectbox(key="flags_model").set_value(TINY).run()
    at.selectbox(key="flags_layer").set_value(TINY_LAYERS[1]).run()
    at.number_input(key="flags_flag_unit").set_value(4)
    at.selectbox(key="flags_flag_kind").set_value("watermark")
    at.text_input(key="flags_flag_note").set_value("corner logo")
    at.button[0].click().run()
    assert_ok(at)
    rows = store.read("select unit, flag, note from unit_flags where model = ? and layer = ?",
                      [TINY, TINY_LAYERS[1]], path=dash_store)
    assert rows.rows() == [(4, "watermark", "corner logo")]
    assert "Flagged units (4)" in texts(at)
    # and it shows on the unit's card, and filters the Units page
    units = open_page("units")
    units.selectbox(key="units_layer").set_value(TINY_LAYERS[1]).run()
    units.multiselect(key="units_filter").set_value(["watermark"]).run()
    assert [link.label for link in units.get("page_link") if (link.label or "").startswith("open")] == ["open unit 4"]
    assert "corner logo" not in texts(units) and "watermark" in texts(units)


def test_topk_query_matches_fixture(dash_store):
    topk = queries.topk(str(dash_store), TINY, TINY_LAYERS[0], TINY_K)
    assert topk.height == 8 * TINY_K
    assert topk.group_by("unit").len()["len"].to_list() == [TINY_K] * 8


def test_model_card_renders_markdown_and_figures(dash_store, tmp_path, monkeypatch):
    from PIL import Image

    cards = tmp_path / "zoo"
    cards.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(cards / "demo-samples.png")
    (cards / "demo.md").write_text("# demo-gan\n\nTrained on the village.\n\n![samples](demo-samples.png)\n\n"
                                   "![missing](nope.png)\n\nFréchet distance 12.3\n")
    monkeypatch.setenv("GANDISSECT_MODEL_CARDS", str(cards))
    at = open_page("model_cards")
    assert_ok(at)
    shown = texts(at)
    assert "# demo-gan" in shown and "Fréchet distance 12.3" in shown and "not found" in shown
    assert len(at.image) == 1


def test_causal_overlay_without_a_checkpoint_says_why(dash_store):
    at = open_page("causal")
    at.toggle(key="causal_overlay").set_value(True).run()
    assert_ok(at)
    assert "images unavailable: checkpoint of 'toy-gan' not found" in texts(at)


def test_q_values_are_shown_with_their_scale_and_underflow_as_a_bound():
    from dashboard.ui import card_text, fmt_q

    assert fmt_q(0.0123) == "0.012" and fmt_q(3.2e-7) == "3.2e-07"
    assert fmt_q(0.0, -923.4) == "≈ 0 (p = 1e-923)"  # never a bare "0"
    assert fmt_q(None) == fmt_q(float("nan")) == "not tested"  # a word, not a dash, where no test ran
    assert fmt_q(0.0) == "< 1e-308" and fmt_q(0.001) == "0.001" and fmt_q(0.000999) == "1.0e-03"
    _, caption = card_text({"unit": 3, "label": "tree", "category": "object", "iou": 0.05, "q_value": 2e-5,
                            "log10_p": -7.0, "interpretable": True}, "iou")
    assert "q 2.0e-05" in caption


def test_values_near_a_cut_off_are_never_rounded_onto_it():
    from dashboard.ui import card_text, fmt_vs, verdict

    assert fmt_vs(0.0395, 0.04) == ("0.0395", "0.0400")  # was "0.040" beside the 0.040 cut-off
    assert fmt_vs(0.1234, 0.04) == ("0.123", "0.040")      # far apart: three decimals are enough
    assert fmt_vs(0.04, 0.04) == ("0.040", "0.040")
    assert fmt_vs(None, 0.04) == ("–", "0.040")
    row = {"unit": 1, "label": "door", "category": "part", "iou": 0.0395, "interpretable": False,
           "interpretable_iou": 0.04, "q_value": 0.0, "log10_p": -215.2, "beats_chance": True}
    assert verdict(row) == "not interpretable (IoU 0.0395 below the cut-off 0.0400); beats chance (q < 0.05)"
    assert "IoU 0.0395" in card_text(row, "iou")[1]
    assert verdict({**row, "beats_chance": None}).endswith("not tested against the permutation null")
    assert verdict({**row, "interpretable": True, "beats_chance": False}) == \
        "interpretable; does not beat chance (q ≥ 0.05)"
