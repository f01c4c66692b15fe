"""views.sql: latest_runs, dissections, unit_labels, layer_summary, layer_concepts, realism views."""
from __future__ import annotations

from db import store
from tests.db.fixture_store import EXPECTED_LABELS, MODEL, RUNS, SEG, iou_row


def test_unit_labels_come_from_the_latest_done_dissection(small_store) -> None:
    df = store.read("SELECT * FROM unit_labels ORDER BY threshold_mode, layer, unit", path=small_store)
    got = {(r["threshold_mode"], r["layer"], r["unit"]): (r["concept"], r["category"], r["interpretable"])
           for r in df.iter_rows(named=True)}
    assert got == EXPECTED_LABELS
    assert set(df["run_key"]) == {RUNS["dissect"], RUNS["dissect_iqr"]}
    q = df.filter(threshold_mode="quantile")
    assert q.filter(layer="layer1", unit=0)["beats_chance"].item() is True  # p = 0.001
    assert q.filter(layer="layer1", unit=1)["beats_chance"].item() is False  # p = 0.02
    assert q.filter(layer="layer2", unit=0)["z"].item() == (0.20 - 0.01) / 0.005


def test_interpretable_threshold_is_read_from_the_run_params(small_store) -> None:
    key = "k-dissect-lenient"
    store.start_run(key, "dissect", model=MODEL, segmenter=SEG, params={"threshold": "q0.99",
                                                                         "interpretable_iou": 0.03},
                    path=small_store)
    rows = [iou_row(key, "layer1", u, c, iou if c == "door" else None if c == "brick" else 0.001)
            for u, iou in enumerate([0.035, 0.029, 0.2, 0.031]) for c in ("sky", "tree", "door", "brick")]
    store.publish_many(key, {"unit_iou": rows}, {"status": "done", "seconds": 1.0}, small_store)
    df = store.read("SELECT unit, concept, interpretable, run_key FROM unit_labels "
                    "WHERE threshold_mode = 'quantile' AND layer = 'layer1' ORDER BY unit", path=small_store)
    assert df["run_key"].unique().to_list() == [key]
    assert df["interpretable"].to_list() == [True, False, True, True]
    # layer2 still comes from the latest dissection that covers it
    l2 = store.read("SELECT DISTINCT run_key FROM unit_labels WHERE layer = 'layer2'", path=small_store)
    assert l2["run_key"].to_list() == [RUNS["dissect"]]


def test_a_unit_whose_concepts_never_appear_has_no_label(small_store) -> None:
    key = "k-dissect-empty"
    store.start_run(key, "dissect", model=MODEL, segmenter=SEG, params={"threshold": "q0.99"}, path=small_store)
    store.publish_many(key, {"unit_iou": [iou_row(key, "layer2", 0, c, None) for c in ("sky", "door")]},
                       {"status": "done", "seconds": 1.0}, small_store)
    row = store.read("SELECT concept, category, iou, interpretable FROM unit_labels "
                     "WHERE layer = 'layer2' AND threshold_mode = 'quantile'", path=small_store)
    assert row.rows() == [(None, None, None, False)]
    s = store.read("SELECT absent_concepts, absent_concept_names FROM layer_summary "
                   "WHERE layer = 'layer2' AND threshold_mode = 'quantile'", path=small_store)
    assert s.rows() == [(2, "door, sky")]


def test_layer_summary(small_store) -> None:
    df = store.read("SELECT * FROM layer_summary ORDER BY layer, threshold_mode", path=small_store)
    rows = {(r["layer"], r["threshold_mode"]): r for r in df.iter_rows(named=True)}
    l1 = rows[("layer1", "quantile")]
    assert (l1["units"], l1["interpretable_units"], l1["object_units"], l1["part_units"], l1["material_units"],
            l1["distinct_concepts"], l1["beats_chance_units"]) == (4, 3, 2, 1, 0, 3, 2)
    assert l1["absent_concepts"] == 1 and l1["absent_concept_names"] == "brick"
    assert l1["null_q99"] == 0.025 and l1["layer_index"] == 0
    l2 = rows[("layer2", "quantile")]
    assert (l2["units"], l2["interpretable_units"], l2["distinct_concepts"], l2["beats_chance_units"]) == (3, 2, 2, 1)
    iqr = rows[("layer1", "iqr")]
    assert (iqr["interpretable_units"], iqr["null_q99"]) == (2, None)


def test_layer_concepts(small_store) -> None:
    df = store.read("SELECT concept, category, labelled_units, interpretable_units FROM layer_concepts "
                    "WHERE layer = 'layer1' AND threshold_mode = 'quantile' ORDER BY concept", path=small_store)
    assert df.rows() == [("door", "part", 2, 1), ("sky", "object", 1, 1), ("tree", "object", 1, 1)]


def test_latest_runs(small_store) -> None:
    df = store.read("SELECT name, status FROM latest_runs WHERE analysis = 'dissect' ORDER BY name",
                    path=small_store)
    assert df.rows() == [("dissect", "done"), ("dissect_iqr", "done"), ("dissect_old", "done")]
    assert "dissect_failed" not in df["name"].to_list()
    store.start_run("k-newer", "ace", name="ace", model=MODEL, layer="layer1", segmenter=SEG, path=small_store)
    store.finish_run("k-newer", "done", 1.0, path=small_store)
    ace = store.read("SELECT run_key FROM latest_runs WHERE analysis = 'ace'", path=small_store)
    assert ace["run_key"].to_list() == ["k-newer"]


def test_realism_views(small_store) -> None:
    r = store.read("SELECT unit, worst_rank FROM unit_realism_latest ORDER BY unit", path=small_store)
    assert r.rows() == [(0, 3), (1, 1), (2, 2)]
    kept = store.read("SELECT layer, unit FROM unit_labels_realistic(100.0) WHERE layer = 'layer2' ORDER BY unit",
                      path=small_store)
    assert kept.rows() == [("layer2", 0), ("layer2", 2)]  # unit 1 (Frechet 300) is left out
