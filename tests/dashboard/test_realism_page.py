"""The Realism page (issue 8) on the fixture store: the realism histogram, the worst units' strips and their
one-click artifact flag (a `unit_flags` row), the repair table in the paper's Table-1 shape, a concept's
change, the precision / recall chart, the generated-vs-real concept chart, the realism-filtered label counts,
and the empty states that name the analysis kind to declare."""
from __future__ import annotations

import json

import pyarrow as pa

from db import store
from tests.dashboard.apptest import assert_ok, open_page, texts
from tests.dashboard.conftest import TINY, TINY_EARLY, TINY_FRECHET, TINY_REALISM_LAYER


def charts(at) -> list[dict]:
    """The Vega-Lite specs of the page's Altair charts, each with its rows (Streamlit sends them as Arrow)."""
    out = []
    for chart in at.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        spec["rows"] = [row for d in chart.proto.datasets
                        for row in pa.ipc.open_stream(d.data.data).read_all().to_pylist()]
        out.append(spec)
    return out


def fields(spec: dict) -> set[str]:
    """Every encoded field of a (layered) chart spec."""
    out: set[str] = set()
    for part in [spec, *spec.get("layer", [])]:
        for enc in part.get("encoding", {}).values():
            if isinstance(enc, dict) and "field" in enc:
                out.add(enc["field"])
    return out


def frame_with(at, column: str):
    frames = [d.value for d in at.dataframe if column in d.value.columns]
    assert frames, f"no table with a {column!r} column"
    return frames[0]


def test_realism_page_shows_scores_repair_pr_and_coverage(dash_store):
    at = open_page("realism")
    assert_ok(at)
    assert at.selectbox(key="realism_model").value == TINY
    assert at.selectbox(key="realism_layer").value == TINY_REALISM_LAYER
    shown = texts(at)

    specs = charts(at)
    hist = [s for s in specs if "frechet" in fields(s) and any(
        (p.get("encoding", {}).get("x") or {}).get("bin") for p in [s, *s.get("layer", [])])]
    assert hist, "the realism histogram"
    assert sorted(r["frechet"] for r in hist[0]["rows"] if "flag_state" in r) == sorted(TINY_FRECHET)
    assert "units scored" in [m.label for m in at.metric] and at.metric[0].value == "8"

    # the worst units first, each with its strip (tiny-gan has a real checkpoint) and a flag button
    assert "**unit 3** · #1 · Fréchet 311" in shown and "**unit 4** · #8 · Fréchet 60.1" in shown
    assert len(at.image) == 8
    assert [b.label for b in at.button].count("flag as artifact") == 8
    assert "the repair run key includes the flags" in shown

    table = frame_with(at, "unit set")
    rows = {r["unit set"].split()[0]: r for r in table.to_dict("records")}
    assert list(rows) == ["manual", "realism", "union", "random"]
    assert rows["manual"]["units"] == "2: 3, 6" and rows["manual"]["after"] == "125.4"
    assert rows["realism"]["after"] == "118.2" and rows["realism"]["change"] == "-21.8 (-15.6%)"
    assert rows["union"]["Fréchet before"] == "140" and rows["union"]["after"] == "116.9"
    assert rows["random"]["after"] == "140.6 ± 0.73" and rows["random"]["units"] == "3 random units × 3 draws"
    # the same sets scored against the full real distribution (the run left watermarked real images out)
    assert rows["realism"]["before (all real)"] == "150" and rows["realism"]["after (all real)"] == "138.2"
    assert rows["realism"]["change (all real)"] == "-11.8 (-7.9%)"
    assert rows["random"]["after (all real)"] == "160.6 ± 0.73"
    assert "real images without watermark (the run's real_exclude)" in shown and "full real distribution" in shown

    assert at.selectbox(key="realism_concept").value == "door"  # the concept ablation changes most
    door = frame_with(at, "relative change")
    assert door["after"].round(6).tolist() == [0.01, 0.02, 0.008, 0.049]  # random: mean over 3 draws
    assert "changes the door pixels by -80%" in shown

    pr = [s for s in specs if {"recall", "precision"} <= fields(s)]
    assert pr and any(p.get("mark", {}).get("shape") == "diamond" for p in pr[0]["layer"])
    assert {r["k"] for r in pr[0]["rows"] if "text" in r} == {8}  # k = 20 marked, else the largest k below
    assert "of the 8 worst units, 2 are flagged (2 flagged in all): precision 0.25, recall 1.00" in shown

    cov = [s for s in specs if "fraction_change" in fields(s)]
    assert cov, "the generated-vs-real concept chart"
    assert {r["concept"]: r["direction"] for r in cov[0]["rows"] if "direction" in r} == {
        "brick": "under-produced", "door": "under-produced", "tree": "under-produced", "sky": "over-produced"}

    labels = {m.label: (m.value, m.delta) for m in at.metric}
    assert labels["interpretable units"][0].isdigit() and labels["concepts"][0].isdigit()
    assert at.number_input(key=f"realism_cut_{TINY}_{TINY_REALISM_LAYER}").value == 261.84  # the 90th percentile


def test_flag_button_writes_a_unit_flag(dash_store):
    at = open_page("realism")
    at.button(key=f"realism_flag_{TINY}_{TINY_REALISM_LAYER}_7").click().run()
    assert_ok(at)
    rows = store.read("SELECT unit, flag, note FROM unit_flags WHERE model = ? AND layer = ? AND flag = 'artifact'",
                      [TINY, TINY_REALISM_LAYER], path=dash_store)
    assert rows.rows() == [(7, "artifact", "realism rank 2, Fréchet 241")]
    # the card now says so, the histogram counts it, and one click takes it back
    assert [b.label for b in at.button].count("remove artifact flag") == 1
    assert {m.label: m.value for m in at.metric}["flagged"] == "1"
    at.button(key=f"realism_unflag_{TINY}_{TINY_REALISM_LAYER}_7").click().run()
    assert_ok(at)
    assert store.read("SELECT count(*) AS n FROM unit_flags WHERE flag = 'artifact' AND model = ?", [TINY],
                      path=dash_store)["n"][0] == 0


def test_other_model_without_checkpoint_says_why(dash_store):
    """toy-gan: scores on layer2 (its checkpoint does not exist: images say so), nothing on layer1."""
    at = open_page("realism")
    at.selectbox(key="realism_model").set_value("toy-gan").run()
    assert_ok(at)
    assert at.selectbox(key="realism_layer").value == "layer2"
    shown = texts(at)
    assert "images unavailable: checkpoint of 'toy-gan' not found" in shown
    assert "of the 3 worst units, 1 is flagged" in shown
    assert "remove artifact flag" in [b.label for b in at.button]  # unit 1 is flagged artifact in the fixture
    assert frame_with(at, "unit set")["after"].tolist()[-1] == "100 ± 1"
    at.selectbox(key="realism_layer").set_value("layer1").run()
    assert_ok(at)
    shown = texts(at)
    assert 'No realism scores for toy-gan layer1 yet: declare an analysis with `kind = "realism"`' in shown
    assert 'No repair run for toy-gan layer1 yet: declare an analysis with `kind = "repair"`' in shown
    assert "layers of toy-gan with realism or repair runs: layer2" in shown


def test_model_without_any_diagnosis_names_the_kinds(dash_store):
    at = open_page("realism")
    at.selectbox(key="realism_model").set_value(TINY_EARLY).run()
    assert_ok(at)
    shown = texts(at)
    assert '`kind = "realism"`' in shown and '`kind = "repair"`' in shown
    assert f"No generated-vs-real concept coverage for {TINY_EARLY} yet" in shown
    assert not at.get("vega_lite_chart") and not at.image
