"""The Classes page (issue 20) on a store computed by the runner: a small dissection (village-truth) and unit
roles of the bundled village-cls; the sparsity table, the class's units with labels and images, the curves,
the classes a unit matters for, and the empty state."""
from __future__ import annotations

import pytest

from db import store
from ingest.zoo import BUNDLED_CLASSIFIERS
from tests.dashboard.apptest import assert_ok, open_page, texts
from tests.helpers import VILLAGE_CLS, VILLAGE_TRUTH, analysis, run_spec_in, write_spec_of

pytestmark = pytest.mark.skipif(not BUNDLED_CLASSIFIERS["village-cls"].exists(), reason="village-cls not trained")


@pytest.fixture(scope="module")
def cls_store(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("cls")
    spec = write_spec_of(d, store=d / "store.duckdb", models=[VILLAGE_CLS], segmenters=[VILLAGE_TRUTH], analyses=[
        analysis("d", "dissect", "village-cls", layers=["conv5"], segmenter="village-truth", samples=24, seed=1),
        analysis("roles", "unit_roles", "village-cls", layers=["conv5"], samples=6, k_max=4, draws=3)])
    outcomes = run_spec_in(d, spec)
    assert [o.state for o in outcomes] == ["done", "done"], [o.error for o in outcomes]
    return str(d / "store.duckdb")


def test_classes_page_shows_sparsity_units_curves_and_unit_classes(cls_store, monkeypatch) -> None:
    monkeypatch.setenv("GANDISSECT_DB", cls_store)
    at = open_page("classes", {"class": "church_square"})
    assert_ok(at)
    assert at.selectbox(key="classes_model").value == "village-cls"
    assert at.selectbox(key="classes_class").value == "church_square"
    frames = [d.value for d in at.dataframe]
    summary = next(f for f in frames if "top_k_drop" in f.columns)
    assert sorted(summary["class"]) == ["church_square", "farm", "hamlet", "town_street"]
    expect = store.read("select class, accuracy from class_ablation_curves where ranking = 'top' and k = 0 "
                        "order by class", path=cls_store)
    assert summary.sort_values("class")["accuracy"].tolist() == expect["accuracy"].to_list()
    units = next(f for f in frames if "label" in f.columns)
    ranked = store.read("select unit from class_unit_effects where class = 'church_square' order by rank limit 8",
                        path=cls_store)
    assert units["unit"].tolist() == ranked["unit"].to_list()
    assert units["label"].notna().any()  # conv5 was dissected against the village truth
    assert len(at.image) >= 1  # top images of the labelled units (rendered scenes)
    assert "vega_lite_chart" in [e.type for e in at.main] or at.get("vega_lite_chart")
    shown = texts(at)
    assert "church_square: ablating its top-4 units" in shown
    per_unit = next(f for f in frames if "rank" in f.columns and "class" in f.columns)
    assert len(per_unit) == 4


def test_classes_page_empty_state(tmp_path, monkeypatch) -> None:
    path = tmp_path / "empty.duckdb"
    with store.session(str(path)) as con:
        store.ensure_schema(con)
    store.upsert_dimension("models", [{"model": "g", "family": "progan"}], str(path))  # a store, no unit roles
    monkeypatch.setenv("GANDISSECT_DB", str(path))
    at = open_page("classes")
    assert_ok(at)
    assert "No unit roles yet" in texts(at)


def test_other_pages_show_a_classifier(cls_store, monkeypatch) -> None:
    """The existing pages work on a classifier's dissection (its top images are rendered scenes)."""
    monkeypatch.setenv("GANDISSECT_DB", cls_store)
    at = open_page("units")
    assert_ok(at)
    assert at.selectbox(key="units_model").value == "village-cls"
    assert len(at.image) >= 1
    at.switch_page("app_pages/unit.py").run()  # the unit page links to the classes the unit matters for
    assert not at.exception
    assert any("matters for" in p.proto.label for p in at.get("page_link"))
    for page in ("overview", "compare", "unit", "paint"):
        at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
    assert "Painting needs brushes" in texts(at)  # a classifier is no generator: nothing to paint
    assert store.read("select role from models", path=cls_store)["role"].to_list() == ["classifier"]


def test_class_report_prints_the_bar(cls_store, capsys) -> None:
    from compute.reports.classes import main

    assert main(["--db", cls_store, "--layer", "conv5", "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "| conv5 | village-truth | 64 |" in out
    assert "- church_square: top-2 drop" in out and ("met" in out)
