"""run_layers (written at publish, back-filled by the migration) and the *_latest views built on runs_done.

Each *_latest view is checked against an independent computation in Python: per the table's natural key,
the rows of the done run with the greatest (finished_at, run_key) among the runs that have rows for it.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest

from db import store
from db.tables import LATEST_TABLES, RESULT_TABLES, TABLES
from tests.db.fixture_store import MODEL, SEG

# table -> the natural key its *_latest view picks the latest run by (the readers' keys)
LATEST_KEYS: dict[str, tuple[str, ...]] = {
    "unit_quantiles": ("model", "layer"), "unit_topk": ("model", "layer"),
    "ace_alpha": ("model", "layer", "concept"), "ace_epochs": ("model", "layer", "concept"),
    "ace_trajectory": ("model", "layer", "concept"), "ablation_curves": ("model", "layer", "concept"),
    "causal_effects": ("model", "layer", "concept"), "insertion_contexts": ("model", "layer", "concept"),
    "insertion_maps": ("model", "layer", "concept"), "trace_effects": ("model", "layer", "concept"),
    "class_unit_effects": ("model", "layer"), "class_ablation_curves": ("model", "layer"),
    "repair_effects": ("model", "layer"), "inversions": ("model", "image"),
    "inversion_concepts": ("model", "segmenter", "image"),
}


def _derived(path: Path) -> set[tuple]:
    return set(store.read(store.run_layers_sql(), path=path).rows())


def _stored(path: Path) -> set[tuple]:
    return set(store.read("SELECT run_key, model, layer FROM run_layers", path=path).rows())


def test_publish_writes_run_layers(small_store) -> None:
    done = set(store.read("SELECT run_key FROM runs WHERE status = 'done'", path=small_store)["run_key"])
    stored = _stored(small_store)
    assert stored == {r for r in _derived(small_store) if r[0] in done}
    # a multi-layer run ('*') gets one row per layer; a failed run none
    dissect = store.read("SELECT run_key FROM runs WHERE name = 'dissect'", path=small_store)["run_key"][0]
    assert {r[2] for r in stored if r[0] == dissect} == {"layer1", "layer2"}
    failed = store.read("SELECT run_key FROM runs WHERE status = 'failed'", path=small_store)["run_key"][0]
    assert not [r for r in stored if r[0] == failed]
    assert store.run_audits(small_store, names=["unique_run_layers", "run_layers_match_results"]) == []


def test_restart_and_failure_remove_run_layers(small_store) -> None:
    key = store.read("SELECT run_key FROM runs WHERE name = 'ace'", path=small_store)["run_key"][0]
    store.start_run(key, "ace", name="ace", model=MODEL, layer="layer1", path=small_store)
    assert not [r for r in _stored(small_store) if r[0] == key]
    store.publish_many(key, {"ace_alpha": [{"model": MODEL, "layer": "layer1", "concept": "door", "unit": 0,
                                            "alpha": 0.5}]}, {"status": "done", "seconds": 1.0}, small_store)
    assert (key, MODEL, "layer1") in _stored(small_store)
    store.fail_run(key, "RuntimeError: boom", path=small_store)
    assert not [r for r in _stored(small_store) if r[0] == key]


def test_audit_finds_missing_and_left_over_run_layers(small_store) -> None:
    with store.session(small_store) as con:
        con.execute("DELETE FROM run_layers WHERE layer = 'layer2'")
        con.execute("INSERT INTO run_layers VALUES ('no-such-run', 'toy-gan', 'layer9')")
    failing = dict(store.run_audits(small_store))
    missing = store.read(f"SELECT problem, count(*) AS n FROM ({store.audits()['run_layers_match_results']}) "
                         "GROUP BY problem ORDER BY problem", path=small_store)
    assert failing["run_layers_match_results"] >= 2
    assert missing.rows()[0] == ("left over", 1) and missing.rows()[1][0] == "missing"


def test_migration_back_fills_run_layers_and_threshold_columns(small_store) -> None:
    before_layers = _stored(small_store)
    cols = "run_key, threshold_spec, threshold_mode, threshold_level, interpretable_iou, interpretable_iqr"
    before_runs = store.read(f"SELECT {cols} FROM runs ORDER BY run_key", path=small_store)
    assert set(before_runs["threshold_mode"].drop_nulls()) == {"quantile", "iqr"}
    con = duckdb.connect(str(small_store))  # make it a store of the previous schema
    con.execute("DROP VIEW IF EXISTS run_layers_done CASCADE")
    con.execute("DROP TABLE run_layers CASCADE")
    con.execute("UPDATE runs SET threshold_spec = NULL, threshold_mode = NULL, threshold_level = NULL, "
                "interpretable_iou = NULL, interpretable_iqr = NULL")
    con.execute("UPDATE store_meta SET value = 'old' WHERE key = 'schema_sha256'")
    con.close()
    with store.session(small_store):  # a write connection migrates
        pass
    assert _stored(small_store) == before_layers
    assert store.read(f"SELECT {cols} FROM runs ORDER BY run_key", path=small_store).equals(before_runs)
    assert store.run_audits(small_store) == []


def test_dissections_read_the_threshold_columns(small_store) -> None:
    d = store.read("SELECT name, threshold_mode, threshold_spec, interpretable_iou, interpretable_iqr, is_latest "
                   "FROM dissections WHERE layer = 'layer1' ORDER BY name", path=small_store)
    assert d.rows() == [("dissect", "quantile", "q0.99", 0.04, 0.01, True),
                        ("dissect_iqr", "iqr", "iqr", 0.05, 0.01, True),
                        ("dissect_old", "quantile", "q0.99", 0.04, 0.01, False)]
    with store.session(small_store) as con:  # the view reads the column, not runs.params
        con.execute("UPDATE runs SET interpretable_iou = 0.5 WHERE name = 'dissect_iqr'")
    assert store.read("SELECT interpretable_iou FROM dissections WHERE name = 'dissect_iqr'",
                      path=small_store)["interpretable_iou"].to_list() == [0.5]


def _add_newer_runs(path: Path) -> None:
    """A newer ACE run of door (layer1) and a newer one of a second concept, so that 'latest' differs per
    concept, and a newer realism run of layer2."""
    done = {"status": "done", "seconds": 1.0}
    later = dt.datetime(2027, 1, 1)
    for i, (key, concept, alpha) in enumerate([("k-ace-door-2", "door", 0.9), ("k-ace-sky", "sky", 0.3)]):
        store.start_run(key, "ace", name=f"ace-{concept}", model=MODEL, layer="layer1", segmenter=SEG,
                        params={"threshold": "q0.99", "concepts": [concept]}, path=path)
        store.publish_many(key, {"ace_alpha": [{"model": MODEL, "layer": "layer1", "concept": concept, "unit": u,
                                                "alpha": alpha} for u in range(4)],
                                 "ace_epochs": [{"model": MODEL, "layer": "layer1", "concept": concept, "epoch": 0,
                                                 "loss": -alpha}]}, done, path)
        with store.session(path) as con:
            con.execute("UPDATE runs SET finished_at = ? WHERE run_key = ?", [later + dt.timedelta(hours=i), key])
    store.start_run("k-real-2", "realism", name="realism-2", model=MODEL, layer="layer2", path=path)
    store.publish_many("k-real-2", {"unit_realism": [{"model": MODEL, "layer": "layer2", "unit": u,
                                                      "frechet": 10.0 * (u + 1), "n_top": 5, "n_real": 5}
                                                     for u in range(3)]}, done, path)


@pytest.mark.parametrize("table", sorted(LATEST_KEYS))
def test_latest_views_keep_the_latest_done_run_per_key(small_store, table: str) -> None:
    _add_newer_runs(small_store)
    rows = store.read(f"SELECT t.*, r.finished_at AS _fin FROM {table} t JOIN runs r USING (run_key) "
                      "WHERE r.status = 'done'", path=small_store)
    key = list(LATEST_KEYS[table])
    expected: set[tuple] = set()
    if rows.height:
        best = {k: max(g[["_fin", "run_key"]].rows()) for k, g in rows.group_by(key)}
        for r in rows.iter_rows(named=True):
            if best[tuple(r[c] for c in key)] == (r["_fin"], r["run_key"]):
                expected.add(tuple(r[c] for c in TABLES[table].names))
    got = store.read(f"SELECT {', '.join(TABLES[table].names)} FROM {table}_latest", path=small_store)
    assert set(got.rows()) == expected and got.height == len(expected)


def test_latest_views_exist_for_every_result_table() -> None:
    views = {r[0] for r in store.empty_store().execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    # unit_iou and layer_null_iou: per dissection mode (dissections.is_latest); concept_coverage_latest,
    # repair_concepts_latest, unit_realism_latest and realism_flag_pr_latest: display shapes of the latest run
    assert {f"{t}_latest" for t in RESULT_TABLES} <= views
    assert set(LATEST_KEYS) | {"unit_iou", "layer_null_iou", "unit_realism", "repair_concepts", "realism_flag_pr",
                               "concept_coverage"} == set(RESULT_TABLES)


def test_ace_latest_is_per_concept(small_store) -> None:
    _add_newer_runs(small_store)
    df = store.read("SELECT concept, run_key, max(alpha) AS a FROM ace_alpha_latest GROUP BY ALL ORDER BY concept",
                    path=small_store)
    assert df.rows() == [("door", "k-ace-door-2", 0.9), ("sky", "k-ace-sky", 0.3)]
    r = store.read("SELECT DISTINCT run_key FROM unit_realism_latest", path=small_store)
    assert r["run_key"].to_list() == ["k-real-2"]


def test_run_layers_audit_covers_the_tables_run_layers_is_derived_from() -> None:
    """audits.sql spells out run_layers_match_results' tables (an audit is plain SQL); they must be the
    tables `run_layers_sql()` derives run_layers from, or a new result table would fail every publish."""
    import re

    from db import store

    audit = store.audits()["run_layers_match_results"]
    in_audit = set(re.findall(r"FROM (\w+)\s*(?:\n|\)|UNION)", audit.split(")\nSELECT")[0])) - {"runs", "run_layers"}
    derived = set(re.findall(r"FROM (\w+)", store.run_layers_sql())) - {"("}
    assert in_audit == derived, (sorted(in_audit ^ derived))


# The hand-written *_latest views as they stood before views.sql's template (commit 9e07188): the expanded
# views must give exactly these rows, with these columns in this order.
BEFORE_TEMPLATE: dict[str, str] = {
    "unit_quantiles": """SELECT t.* FROM unit_quantiles t JOIN run_layers_done r USING (run_key, model, layer)
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY t.model, t.layer)""",
    "unit_topk": """SELECT t.* FROM unit_topk t JOIN run_layers_done r USING (run_key, model, layer)
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY t.model, t.layer)""",
    "ace_alpha": """SELECT t.* FROM ace_alpha t JOIN run_layers_done r USING (run_key, model, layer)
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY t.model, t.layer, t.concept)""",
    "ace_epochs": """SELECT t.* FROM ace_epochs t JOIN run_layers_done r USING (run_key, model, layer)
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY t.model, t.layer, t.concept)""",
    "ace_trajectory": """SELECT t.* FROM ace_trajectory t JOIN run_layers_done r USING (run_key, model, layer)
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY t.model, t.layer, t.concept)""",
    "ablation_curves": """SELECT t.* FROM ablation_curves t JOIN run_layers_done r USING (run_key, model, layer)
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY t.model, t.layer, t.concept)""",
    "causal_effects": """SELECT t.* FROM causal_effects t JOIN run_layers_done r USING (run_key, model, layer)
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY t.model, t.layer, t.concept)""",
    "insertion_contexts": """SELECT t.* FROM insertion_contexts t JOIN run_layers_done r USING (run_key, model, layer)
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY t.model, t.layer, t.concept)""",
    "insertion_maps": """SELECT t.* FROM insertion_maps t JOIN run_layers_done r USING (run_key, model, layer)
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY t.model, t.layer, t.concept)""",
    "trace_effects": """SELECT t.* FROM trace_effects t JOIN run_layers_done r USING (run_key, model, layer)
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY t.model, t.layer, t.concept)""",
    "class_unit_effects": """SELECT t.* FROM class_unit_effects t JOIN run_layers_done r USING (run_key, model, layer)
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY t.model, t.layer)""",
    "class_ablation_curves": """SELECT t.* FROM class_ablation_curves t JOIN run_layers_done r USING (run_key, model, layer)
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY t.model, t.layer)""",
    "repair_effects": """SELECT t.* FROM repair_effects t JOIN run_layers_done r USING (run_key, model, layer)
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY t.model, t.layer)""",
    "inversions": """SELECT t.* FROM inversions t JOIN runs_done r USING (run_key)
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY t.model, t.image)""",
    "inversion_concepts": """SELECT t.* FROM inversion_concepts t JOIN runs_done r USING (run_key)
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY t.model, t.segmenter, t.image)""",
}


def _add_class_and_invert_runs(path: Path) -> None:
    """Two unit_roles runs and two invert runs (the older one covering a second layer / image), so that each
    of their *_latest views has rows to keep and rows to drop."""
    done = {"status": "done", "seconds": 1.0}
    for i, key in enumerate(["k-roles-1", "k-roles-2"]):
        store.start_run(key, "unit_roles", name=key, model=MODEL, path=path)
        layers = ["layer1", "layer2"] if i == 0 else ["layer1"]
        effects = [{"model": MODEL, "layer": layer, "unit": u, "class": c, "class_index": j, "images": 10,
                    "rank": u + 1, "accuracy": 0.5 + 0.1 * i, "accuracy_drop": 0.1, "true_logit": 1.0,
                    "logit_drop": 0.2, "true_prob": 0.6, "prob_drop": 0.1}
                   for layer in layers for u in range(3) for j, c in enumerate(["house", "field"])]
        curves = [{"model": MODEL, "layer": layer, "class": "house", "ranking": "top", "k": k, "draws": 1,
                   "accuracy": 0.9 - 0.1 * k - 0.05 * i, "other_accuracy": 0.8} for layer in layers for k in range(3)]
        store.publish_many(key, {"class_unit_effects": effects, "class_ablation_curves": curves}, done, path)
    for i, key in enumerate(["k-invert-1", "k-invert-2"]):
        store.start_run(key, "invert", name=key, model=MODEL, segmenter=SEG, path=path)
        images = ["a.png", "b.png"] if i == 0 else ["a.png"]
        inv = [{"model": MODEL, "layer": "", "image": im, "image_sha256": "0" * 64, "width": 8, "height": 8,
                "psnr": 20.0 + i, "psnr_z": 18.0, "psnr_encoder": 15.0, "seconds": 1.0, "n_omitted": 0}
               for im in images]
        concepts = [{"model": MODEL, "segmenter": SEG, "image": im, "concept": "sky", "photo_share": 0.5,
                     "recon_share": 0.4 + 0.1 * i, "recall": 0.8, "present": True, "omitted": False} for im in images]
        store.publish_many(key, {"inversions": inv, "inversion_concepts": concepts}, done, path)
        with store.session(path) as con:
            con.execute("UPDATE runs SET finished_at = ? WHERE run_key IN (?, ?)",
                        [dt.datetime(2027, 3, 1) + dt.timedelta(hours=i), key, f"k-roles-{i + 1}"])


def test_template_views_equal_the_hand_written_views_before(small_store) -> None:
    _add_newer_runs(small_store)
    _add_class_and_invert_runs(small_store)
    assert store.run_audits(small_store) == []
    assert set(BEFORE_TEMPLATE) == set(LATEST_TABLES)
    dropping: set[str] = set()  # views that keep fewer rows than their table holds (an older run dropped)
    with store.session(small_store, read_only=True) as con:
        for table, old_sql in BEFORE_TEMPLATE.items():
            old = con.execute(old_sql)
            old_cols, old_rows = [d[0] for d in old.description], old.fetchall()
            new = con.execute(f"SELECT * FROM {table}_latest")
            new_cols, new_rows = [d[0] for d in new.description], new.fetchall()
            assert new_cols == old_cols == list(TABLES[table].names), table
            assert sorted(map(repr, new_rows)) == sorted(map(repr, old_rows)), table
            assert old_rows, f"{table}: the fixture store has no rows to compare"
            if len(old_rows) < con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]:
                dropping.add(table)
    assert {"ace_alpha", "class_unit_effects", "class_ablation_curves", "inversions", "inversion_concepts"} <= dropping


def test_declared_latest_keys_are_the_readers_keys() -> None:
    assert {n: TABLES[n].latest for n in LATEST_TABLES} == LATEST_KEYS


def _publish_as_an_older_version(path: Path, run_key: str, layer: str, unit: int) -> None:
    """What a process of the code before run_layers (b0a5da6) does on a migrated store: it re-applies its own
    DDL (recording its own schema fingerprint), then start_run deletes the result rows but not run_layers,
    inserts the runs row without threshold columns, and publish_many writes rows and status without run_layers."""
    con = duckdb.connect(str(path))
    try:
        con.execute("UPDATE store_meta SET value = 'fingerprint of an older version' WHERE key = 'schema_sha256'")
        for name in RESULT_TABLES:
            con.execute(f"DELETE FROM {name} WHERE run_key = ?", [run_key])
        con.execute("DELETE FROM runs WHERE run_key = ?", [run_key])
        con.execute("INSERT INTO runs (run_key, analysis, name, model, layer, status, started_at, params) "
                    "VALUES (?, 'ace', ?, ?, ?, 'running', ?, ?)",
                    [run_key, run_key, MODEL, layer, dt.datetime(2027, 2, 1), '{"threshold":"q0.99"}'])
        con.execute("INSERT INTO ace_alpha (run_key, model, layer, concept, unit, alpha) VALUES (?, ?, ?, 'door', ?, 0.5)",
                    [run_key, MODEL, layer, unit])
        con.execute("UPDATE runs SET status = 'done', finished_at = ? WHERE run_key = ?",
                    [dt.datetime(2027, 2, 1, 1), run_key])
    finally:
        con.close()


@pytest.mark.parametrize("run_key", ["k-ace", "k-ace-new"])
def test_an_older_version_publisher_gets_run_layers_at_the_next_write(small_store, run_key: str) -> None:
    """k-ace: a run key that had run_layers (layer1) re-published by an older version on layer2 (before the
    fix the back-fill skipped any run key with run_layers rows: layer1 stayed, layer2 was missing, the run
    vanished from ace_alpha_latest and run_layers_match_results failed). k-ace-new: a new run key."""
    _publish_as_an_older_version(small_store, run_key, "layer2", 1)
    with store.session(small_store):  # this version's next write connection migrates
        pass
    assert {r for r in _stored(small_store) if r[0] == run_key} == {(run_key, MODEL, "layer2")}
    assert store.run_audits(small_store) == []
    latest = store.read("SELECT DISTINCT run_key FROM ace_alpha_latest WHERE layer = 'layer2' AND concept = 'door'",
                        path=small_store)
    assert latest["run_key"].to_list() == [run_key]
    mode = store.read("SELECT threshold_mode FROM runs WHERE run_key = ?", [run_key], path=small_store)
    assert mode["threshold_mode"].to_list() == ["quantile"]
