"""audits.sql: zero rows on a correct store; each audit names what a deliberately broken store breaks."""
from __future__ import annotations

import pytest

from db import store


def test_audits_pass_on_a_correct_store(small_store) -> None:
    results = store.run_audits(small_store, only_failures=False)
    assert len(results) == len(store.audits()) and results
    assert [r for r in results if r[1]] == []
    with store.session(small_store, read_only=True) as con:
        store.run_audits(con, raise_on_failure=True)


BREAKAGES = {  # audit -> SQL that breaks the small store in exactly that way
    "unique_unit_iou": "INSERT INTO unit_iou SELECT * FROM unit_iou WHERE run_key = 'k-dissect' LIMIT 1",
    "unique_unit_quantiles": "INSERT INTO unit_quantiles SELECT * FROM unit_quantiles LIMIT 1",
    "unique_insertion_maps": "INSERT INTO insertion_maps SELECT * FROM insertion_maps LIMIT 1",
    "iou_range": "UPDATE unit_iou SET iou = 1.5 WHERE unit = 0 AND concept = 'sky' AND run_key = 'k-dissect'",
    "iou_null_when_concept_absent": "UPDATE unit_iou SET iou = 0 WHERE concept = 'brick'",
    "iou_counts_consistent": "UPDATE unit_iou SET inter = above + 1 WHERE unit = 1 AND concept = 'tree'",
    "iou_statistics_range": "UPDATE unit_iou SET p_value = 'nan'::DOUBLE WHERE unit = 1",
    "quantiles_monotone": "UPDATE unit_quantiles SET value = -1 WHERE unit = 2 AND q = 0.99",
    "quantiles_range": "UPDATE unit_quantiles SET q = 1.5 WHERE unit = 2 AND q = 0.999",
    "topk_order": "UPDATE unit_topk SET value = 100 WHERE rank = 3 AND unit = 0",
    "alpha_range": "UPDATE ace_alpha SET alpha = 1.2 WHERE unit = 3",
    "ablation_range": "UPDATE ablation_curves SET remaining = -0.1 WHERE ranking = 'ace' AND n_units = 3",
    "runs_status": "UPDATE runs SET status = 'weird' WHERE run_key = 'k-ace'",
    "runs_done_finished": "UPDATE runs SET finished_at = NULL WHERE run_key = 'k-trace'",
    "runs_failed_error": "UPDATE runs SET error = NULL WHERE run_key = 'k-dissect-failed'",
    "rows_of_runs_not_done": "UPDATE runs SET status = 'running', finished_at = NULL WHERE run_key = 'k-ablate'",
    "rows_model_differs_from_run": "UPDATE runs SET model = 'other-gan' WHERE run_key = 'k-trace'",
    "rows_on_unregistered_layers": "DELETE FROM layers WHERE layer = 'layer2'",
    # '' (no layer) is allowed only in inversions (an inversion of z only), not in any other result table
    "rows_on_unregistered_layers/empty": "UPDATE unit_iou SET layer = '' WHERE unit = 0 AND run_key = 'k-dissect'",
    "units_out_of_range": "UPDATE layers SET units = 2 WHERE layer = 'layer1'",
    "concepts_unregistered": "DELETE FROM concepts WHERE concept = 'door'",
    "null_iou_range": "UPDATE layer_null_iou SET q99 = 0.5",
    "trace_effects_in_grid": "UPDATE trace_effects SET x = 8 WHERE y = 0 AND x = 7",
    "causal_effects_units": "UPDATE causal_effects SET n_units = 3",
    "unit_flags_kind": "UPDATE unit_flags SET flag = 'meh' WHERE unit = 1",
    "realism_range": "UPDATE unit_realism SET frechet = -1 WHERE unit = 0",
    "repair_range": "UPDATE repair_effects SET unit_set = 'other' WHERE unit_set = 'union'",
    "coverage_range": "UPDATE concept_coverage SET pixel_fraction = 1.5 WHERE concept = 'door' AND source = 'real'",
    "runs_params_json": "UPDATE runs SET params = '{broken' WHERE run_key = 'k-coverage'",
    "repair_concepts_range": "UPDATE repair_concepts SET fraction_after = 1.5 WHERE unit_set = 'manual'",
    "repair_concepts_have_effects": "DELETE FROM repair_effects WHERE unit_set = 'union'",
    "realism_flag_pr_range": "UPDATE realism_flag_pr SET precision = 2 WHERE k = 1",
    "unit_realism_top_samples_json": "UPDATE unit_realism SET top_samples = '[1, 2' WHERE unit = 0",
}


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_each_audit_fails_on_a_broken_store(small_store, case) -> None:
    audit = case.split("/")[0]  # 'audit/variant': a second breakage the same audit must catch
    assert audit in store.audits()
    with store.session(small_store) as con:
        con.execute(BREAKAGES[case])
    failing = dict(store.run_audits(small_store))
    assert failing.get(audit, 0) >= 1, failing
    with pytest.raises(store.AuditError, match=audit):
        store.run_audits(small_store, names=[audit], raise_on_failure=True)


def test_views_ignore_unfinished_runs(small_store) -> None:
    """A running dissection's rows (which audits flag) never reach unit_labels."""
    with store.session(small_store) as con:
        con.execute("UPDATE runs SET status = 'running', finished_at = NULL WHERE run_key = 'k-dissect'")
    labels = store.read("SELECT DISTINCT run_key FROM unit_labels WHERE threshold_mode = 'quantile'",
                        path=small_store)
    assert labels["run_key"].to_list() == ["k-dissect-old"]
