"""Print a classifier's measured numbers from the store: dissection counts per layer, the
sparsity bar (top-k vs k random units per class) and the units a class depends on, with their labels.

Reads the store (`layer_summary`, `unit_labels`, `class_ablation_curves_latest`, `class_unit_effects_latest`); writes
nothing. After `gandissect run examples/classifier.toml`:

    python -m compute.reports.classes --db gandissect.duckdb [--model village-cls] [--layer conv5] [--k 4]
"""
from __future__ import annotations

import argparse
import sys

from db import store

COUNTS_SQL = """
SELECT layer, segmenter, units, interpretable_units, object_units, part_units, material_units, distinct_concepts,
       beats_chance_units, round(median_interpretable_iou, 3) AS median_interpretable_iou
FROM layer_summary WHERE model = ? AND threshold_mode = 'quantile' ORDER BY segmenter, layer_index
"""
CONCEPTS_SQL = """
SELECT layer, concept, count(*) AS units, round(max(iou), 3) AS best_iou
FROM unit_labels WHERE model = ? AND interpretable AND threshold_mode = 'quantile'
GROUP BY layer, concept ORDER BY layer, units DESC, concept
"""
SPARSITY_SQL = """
SELECT class,
       max(accuracy) FILTER (WHERE ranking = 'top' AND k = 0) AS accuracy,
       max(accuracy) FILTER (WHERE ranking = 'top' AND k = 0) - max(accuracy) FILTER (WHERE ranking = 'top' AND k = ?) AS top_drop,
       max(accuracy) FILTER (WHERE ranking = 'top' AND k = 0) - max(accuracy) FILTER (WHERE ranking = 'random' AND k = ?) AS random_drop,
       max(other_accuracy) FILTER (WHERE ranking = 'top' AND k = 0) - max(other_accuracy) FILTER (WHERE ranking = 'top' AND k = ?) AS other_drop,
       max(draws) FILTER (WHERE ranking = 'random') AS draws,
       max(units) FILTER (WHERE ranking = 'top' AND k = ?) AS top_units
FROM class_ablation_curves_latest WHERE model = ? AND layer = ?
GROUP BY class ORDER BY class
"""
UNITS_SQL = """
WITH labels AS (
    SELECT unit, concept, iou FROM unit_labels WHERE model = ? AND layer = ? AND threshold_mode = 'quantile'
    QUALIFY row_number() OVER (PARTITION BY unit ORDER BY (segmenter = 'village-truth') DESC, iou DESC NULLS LAST) = 1
)
SELECT e.class, e.rank, e.unit, round(e.accuracy_drop, 3) AS accuracy_drop, round(e.logit_drop, 2) AS logit_drop,
       l.concept AS label, round(l.iou, 3) AS iou
FROM class_unit_effects_latest e LEFT JOIN labels l USING (unit)
WHERE e.model = ? AND e.layer = ? AND e.rank <= ?
ORDER BY e.class, e.rank
"""


def md(frame) -> str:
    cols = frame.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.iter_rows():
        lines.append("| " + " | ".join("–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
                                       for v in row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", default="gandissect.duckdb")
    p.add_argument("--model", default="village-cls")
    p.add_argument("--layer", default="conv5")
    p.add_argument("--k", type=int, default=4)
    a = p.parse_args(argv)
    print(f"Dissection of {a.model} (quantile thresholds):\n")
    print(md(store.read(COUNTS_SQL, [a.model], path=a.db)))
    print("\nInterpretable units per concept:\n")
    print(md(store.read(CONCEPTS_SQL, [a.model], path=a.db)))
    k = a.k
    sp = store.read(SPARSITY_SQL, [k, k, k, k, a.model, a.layer], path=a.db)
    print(f"\nUnit roles in {a.layer}: accuracy drops with the class's top-{k} units vs {k} random units ablated:\n")
    print(md(sp))
    for r in sp.iter_rows(named=True):
        if r["top_drop"] is None:
            continue
        ratio = r["top_drop"] / r["random_drop"] if r["random_drop"] and r["random_drop"] > 0 else float("inf")
        met = ratio >= 4 and r["other_drop"] < r["top_drop"] / 3
        print(f"- {r['class']}: top-{k} drop {r['top_drop']:.3f} = {ratio:.1f}x the random drop "
              f"{r['random_drop']:.3f}; other classes drop {r['other_drop']:.3f} "
              f"({'<' if r['other_drop'] < r['top_drop'] / 3 else '>='} a third of the top drop): "
              f"{'met' if met else 'not met'}")
    print(f"\nThe units each class depends on most ({a.layer}), with their labels:\n")
    print(md(store.read(UNITS_SQL, [a.model, a.layer, a.model, a.layer, k], path=a.db)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
