"""The diagnosis tables of the README, in the paper's Table 1/2 shape, from a store.

Reads `repair_latest`, `repair_concepts_latest`, `realism_flag_pr_latest`, `unit_realism_latest`,
`concept_coverage_latest` and `realism_label_counts(...)` of a store (after `gandissect run` of a spec
with realism and repair analyses, e.g. the demo spec); writes markdown to stdout.

    python -m compute.reports.diagnosis --db gandissect.duckdb [--model village-gan] [--concept watermark]
"""
from __future__ import annotations

import argparse
import json
import sys

from db.store import read

REPAIR_SQL = """
SELECT r.layer, r.unit_set, r.n_units, r.draws, r.fd_before, r.fd_after, r.fd_after_std, r.units,
       r.fd_before_full, r.fd_after_full, r.fd_after_full_std,
       c.fraction_before, c.fraction_after,
       (SELECT max(abs(o.relative_change)) FROM repair_concepts_latest o
        WHERE o.model = r.model AND o.layer = r.layer AND o.unit_set = r.unit_set AND o.concept <> ?
          AND o.fraction_before >= 0.005) AS side_effect,
       (SELECT arg_max(o.concept, abs(o.relative_change)) FROM repair_concepts_latest o
        WHERE o.model = r.model AND o.layer = r.layer AND o.unit_set = r.unit_set AND o.concept <> ?
          AND o.fraction_before >= 0.005) AS side_concept,
       p.params
FROM repair_latest r
LEFT JOIN repair_concepts_latest c ON c.model = r.model AND c.layer = r.layer AND c.unit_set = r.unit_set
     AND c.concept = ?
JOIN runs p ON p.run_key = r.run_key
WHERE r.model = ?
ORDER BY r.layer, list_position(['manual', 'realism', 'union', 'random'], r.unit_set)
"""
PR_SQL = """
SELECT layer, n_flagged,
       max(precision) FILTER (WHERE k = n_flagged) AS p_at_flagged,
       max(recall) FILTER (WHERE k = 20) AS r_at_20,
       max(precision) FILTER (WHERE k = 20) AS p_at_20
FROM realism_flag_pr_latest WHERE model = ? GROUP BY layer, n_flagged ORDER BY layer
"""
WORST_SQL = """
SELECT layer, count(*) AS units, min(frechet) AS best, median(frechet) AS median, max(frechet) AS worst,
       arg_max(unit, frechet) AS worst_unit, any_value(n_top) AS n_top, any_value(n_real) AS n_real
FROM unit_realism_latest JOIN layers USING (model, layer)
WHERE model = ? GROUP BY layer, layer_index ORDER BY layer_index
"""
LABEL_SQL = "SELECT concept, iou FROM unit_labels WHERE model = ? AND layer = ? AND unit = ? AND threshold_mode = 'quantile'"
COVERAGE_SQL = """
SELECT concept, generated_fraction, real_fraction, fraction_change, generated_presence, real_presence,
       n_generated, n_real
FROM concept_coverage_latest WHERE model = ? ORDER BY fraction_change
"""
FILTER_SQL = """
SELECT layer, interpretable_units, realistic_units, concepts, realistic_concepts
FROM realism_label_counts(?) JOIN layers USING (model, layer)
WHERE model = ? AND threshold_mode = 'quantile' ORDER BY layer_index
"""
THRESHOLD_SQL = "SELECT quantile_cont(frechet, ?) AS t FROM unit_realism_latest WHERE model = ?"


def _num(row: dict | None, key: str) -> str:
    return "–" if row is None or row[key] is None else f"{row[key]:.2f}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f} %"


def _fd(r: dict, key: str) -> str:
    """'0.7677' or '0.8624 ± 0.0501' (random sets: mean ± std over draws); '–' when not measured."""
    if r[key] is None:
        return "–"
    return f"{r[key]:.4f}" + (f" ± {r[key + '_std']:.4f}" if r[key + "_std"] is not None else "")


def _change(r: dict, after: str, before: str) -> str:
    return "–" if r[after] is None or not r[before] else _pct(r[after] / r[before] - 1)


def repair_table(db: str, model: str, concept: str) -> str:
    """Per layer: each unit set's Fréchet distance before / after ablation against the real images the run
    kept (after real_exclude) and, when it left some out, against the full real distribution too."""
    df = read(REPAIR_SQL, [concept, concept, concept, model], path=db)
    if df.height == 0:
        return "(no repair run in this store)\n"
    names = {"manual": "manual", "realism": "worst realism", "union": "union", "random": "random"}
    lines = []
    for layer in df["layer"].unique(maintain_order=True).to_list():
        part = df.filter(df["layer"] == layer)
        p = json.loads(part["params"][0])
        first = part.row(0, named=True)
        excluded = list(p.get("real_exclude") or [])
        full = bool(excluded)  # without real_exclude the full distribution is the one scored already
        kept = f"{p['real_samples']} real scenes" + (f" without {', '.join(excluded)}" if excluded else "")
        head = (f"| unit set | units ablated | Fréchet distance ({'without ' + ', '.join(excluded) if full else 'real'}) "
                f"| change |" + (" Fréchet distance (all real scenes) | change |" if full else "")
                + f" {concept} pixels | largest other change |")
        lines += [f"**{model} {layer}** — {p['samples']} samples (seed {p['seed']}), Fréchet distance in "
                  f"{p['features']} features against {kept}"
                  + (f" and against the full real distribution ({p['real_samples']} scenes, nothing left out)"
                     if full else "") + f"; manual = `{p['manual']}`\n",
                  head, "|---" * (8 if full else 6) + "|",
                  f"| none (original) | 0 | {first['fd_before']:.4f} | |"
                  + (f" {'–' if first['fd_before_full'] is None else format(first['fd_before_full'], '.4f')} | |"
                     if full else "")
                  + f" {100 * (first['fraction_before'] or 0):.2f} % | |"]
        for r in part.iter_rows(named=True):
            n = f"{r['n_units']}" + (f" × {r['draws']} draws" if r["draws"] > 1 else "")
            wm = (f"{100 * r['fraction_after']:.2f} % ({_pct(r['fraction_after'] / r['fraction_before'] - 1)})"
                  if r["fraction_before"] else "–")
            side = f"{r['side_concept']} {_pct(r['side_effect'])}" if r["side_concept"] else "–"
            lines.append(f"| {names.get(r['unit_set'], r['unit_set'])} | {n} | {_fd(r, 'fd_after')} | "
                         f"{_change(r, 'fd_after', 'fd_before')} |"
                         + (f" {_fd(r, 'fd_after_full')} | {_change(r, 'fd_after_full', 'fd_before_full')} |"
                            if full else "") + f" {wm} | {side} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def realism_table(db: str, model: str) -> str:
    w = read(WORST_SQL, [model], path=db)
    pr = {r["layer"]: r for r in read(PR_SQL, [model], path=db).iter_rows(named=True)}
    lines = ["| layer | units | Fréchet best / median / worst | worst unit (its label) | manual units | "
             "precision at k = manual | recall at k = 20 |", "|---|---|---|---|---|---|---|"]
    for r in w.iter_rows(named=True):
        lab = read(LABEL_SQL, [model, r["layer"], r["worst_unit"]], path=db)
        label = f"{lab['concept'][0]} {lab['iou'][0]:.3f}" if lab.height and lab["concept"][0] else "–"
        p = pr.get(r["layer"])
        lines.append(f"| {r['layer']} | {r['units']} | {r['best']:.3f} / {r['median']:.3f} / {r['worst']:.3f} | "
                     f"{r['worst_unit']} ({label}) | {p['n_flagged'] if p else '–'} | "
                     f"{_num(p, 'p_at_flagged')} | {_num(p, 'r_at_20')} |")
    if w.height:
        lines.append(f"\n{w['n_top'][0]} top images per unit, {w['n_real'][0]} real images.")
    return "\n".join(lines) + "\n"


def coverage_table(db: str, model: str) -> str:
    df = read(COVERAGE_SQL, [model], path=db)
    lines = ["| concept | generated pixels | real pixels | change | generated presence | real presence |",
             "|---|---|---|---|---|---|"]
    for r in df.iter_rows(named=True):
        lines.append(f"| {r['concept']} | {100 * r['generated_fraction']:.2f} % | {100 * r['real_fraction']:.2f} % | "
                     f"{_pct(r['fraction_change'])} | {100 * r['generated_presence']:.1f} % | "
                     f"{100 * r['real_presence']:.1f} % |")
    if df.height:
        lines.append(f"\n{df['n_generated'][0]} generated vs {df['n_real'][0]} real images.")
    return "\n".join(lines) + "\n"


def filter_table(db: str, model: str, level: float = 0.9) -> str:
    t = read(THRESHOLD_SQL, [level, model], path=db)["t"][0]
    if t is None:
        return "(no realism scores)\n"
    df = read(FILTER_SQL, [float(t), model], path=db)
    lines = [f"Units with a realism score above {t:.3f} (the {int(level * 100)}th percentile of all units) "
             "left out of the labels:\n", "| layer | interpretable units | after the filter | concepts | after |",
             "|---|---|---|---|---|"]
    for r in df.iter_rows(named=True):
        lines.append(f"| {r['layer']} | {r['interpretable_units']} | {r['realistic_units']} | {r['concepts']} | "
                     f"{r['realistic_concepts']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="gandissect.duckdb")
    ap.add_argument("--model", default="village-gan")
    ap.add_argument("--concept", default="watermark", help="the artifact concept whose pixels the repair table shows")
    a = ap.parse_args(argv)
    print("### Per-unit realism\n\n" + realism_table(a.db, a.model))
    print("### Repair\n\n" + repair_table(a.db, a.model, a.concept))
    print("### What the GAN over- and under-produces\n\n" + coverage_table(a.db, a.model))
    print("### Realism-filtered labels\n\n" + filter_table(a.db, a.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
