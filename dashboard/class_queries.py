"""Queries of the Classes page (issue 20): a classifier's units per class, their labels, the sparsity curves.

Reads `class_ablation_curves_latest`, `class_unit_effects`, `class_ablation_curves`, `runs` and the `unit_labels` view through
`dashboard.queries` (short read-only connections, cached a few seconds); writes nothing. Every query
reads the latest done unit_roles run of a (model, layer); choices are bound parameters.

    GANDISSECT_DB=gandissect.duckdb python -c "from dashboard import class_queries as q; print(q.role_runs(q.db_path()))"
"""
from __future__ import annotations

import polars as pl

from dashboard.queries import _cached, _read, db_path  # noqa: F401  (db_path re-exported for the docstring)

ROLE_RUNS_SQL = """
SELECT c.model, c.layer, c.run_key, r.finished_at, r.n_samples
FROM (SELECT DISTINCT run_key, model, layer FROM class_ablation_curves_latest) c
JOIN runs r USING (run_key)
ORDER BY c.model, c.layer
"""

CLASS_SUMMARY_SQL = """
SELECT class,
       max(accuracy) FILTER (WHERE ranking = 'top' AND k = 0) AS accuracy,
       max(accuracy) FILTER (WHERE ranking = 'top' AND k = $k) AS top_k_accuracy,
       max(accuracy) FILTER (WHERE ranking = 'random' AND k = $k) AS random_k_accuracy,
       max(accuracy) FILTER (WHERE ranking = 'top' AND k = 0)
         - max(accuracy) FILTER (WHERE ranking = 'top' AND k = $k) AS top_k_drop,
       max(accuracy) FILTER (WHERE ranking = 'top' AND k = 0)
         - max(accuracy) FILTER (WHERE ranking = 'random' AND k = $k) AS random_k_drop,
       max(other_accuracy) FILTER (WHERE ranking = 'top' AND k = 0)
         - max(other_accuracy) FILTER (WHERE ranking = 'top' AND k = $k) AS top_k_other_drop,
       max(units) FILTER (WHERE ranking = 'top' AND k = $k) AS top_units
FROM class_ablation_curves
WHERE run_key = $run_key AND model = $model AND layer = $layer
GROUP BY class
ORDER BY class
"""

CURVES_SQL = """
SELECT ranking, k, 'this class' AS images, accuracy, accuracy_std AS std, draws
FROM class_ablation_curves WHERE run_key = $run_key AND model = $model AND layer = $layer AND class = $class
UNION ALL
SELECT ranking, k, 'other classes' AS images, other_accuracy AS accuracy, other_accuracy_std AS std, draws
FROM class_ablation_curves WHERE run_key = $run_key AND model = $model AND layer = $layer AND class = $class
ORDER BY images DESC, ranking, k
"""

_LABELS = """
labels AS (
    SELECT unit, concept, category, iou, interpretable, threshold, segmenter
    FROM unit_labels WHERE model = $model AND layer = $layer
    QUALIFY row_number() OVER (PARTITION BY unit ORDER BY (segmenter = 'village-truth') DESC, iou DESC NULLS LAST) = 1
)"""

CLASS_UNITS_SQL = f"""
WITH {_LABELS}
SELECT e.unit, e.rank, e.accuracy_drop, e.logit_drop, e.prob_drop, e.accuracy,
       l.concept AS label, l.category, l.iou, l.interpretable, l.threshold, l.segmenter
FROM class_unit_effects e LEFT JOIN labels l USING (unit)
WHERE e.run_key = $run_key AND e.model = $model AND e.layer = $layer AND e.class = $class
ORDER BY e.rank
LIMIT $n
"""

UNIT_CLASSES_SQL = """
SELECT class, rank, accuracy, accuracy_drop, logit_drop, prob_drop
FROM class_unit_effects
WHERE run_key = $run_key AND model = $model AND layer = $layer AND unit = $unit
ORDER BY accuracy_drop DESC, logit_drop DESC
"""


@_cached()
def role_runs(db: str) -> pl.DataFrame:
    """Latest done unit_roles run of each (model, layer): model, layer, run_key, finished_at, n_samples."""
    return _read(db, ROLE_RUNS_SQL)


@_cached()
def class_summary(db: str, run_key: str, model: str, layer: str, k: int) -> pl.DataFrame:
    """Per class: baseline accuracy, with its top-k / k random units ablated, and the drops."""
    return _read(db, CLASS_SUMMARY_SQL, {"run_key": run_key, "model": model, "layer": layer, "k": int(k)})


@_cached()
def curves(db: str, run_key: str, model: str, layer: str, cls: str) -> pl.DataFrame:
    """The class's ablation curves in long form: ranking, k, images (this class | other classes), accuracy."""
    return _read(db, CURVES_SQL, {"run_key": run_key, "model": model, "layer": layer, "class": cls})


@_cached()
def class_units(db: str, run_key: str, model: str, layer: str, cls: str, n: int) -> pl.DataFrame:
    """The n units the class depends on most, with their dissection labels (when the layer was dissected)."""
    return _read(db, CLASS_UNITS_SQL, {"run_key": run_key, "model": model, "layer": layer, "class": cls, "n": int(n)})


@_cached()
def unit_classes(db: str, run_key: str, model: str, layer: str, unit: int) -> pl.DataFrame:
    """Every class with the accuracy drop that ablating this one unit causes."""
    return _read(db, UNIT_CLASSES_SQL, {"run_key": run_key, "model": model, "layer": layer, "unit": int(unit)})
