"""One cached query function per dashboard view: SQL constants with bound parameters, polars frames out.

Reads the store (path from env GANDISSECT_DB, else "gandissect.duckdb") through short read-only
connections that retry while a job holds the lock (`db.store`); a missing store reads as an empty one.
Writes nothing. Inside `page_scope()` (app.py wraps each page run in it) the queries of one page run
share one read-only connection, opened at the first query that misses the cache and closed when the run
ends or `release()` is called (before image generation and before any write), so a page costs one
connect instead of one per query; outside a scope each query uses `db.store.read`. Every function takes the store path first (so caches are per store) and is
wrapped in `st.cache_data` keyed by the store's stamp (`store_stamp`: mtime and size of the file and its
WAL), so a rerun, a widget change or another session costs no SQL until the store changes, and a new row
shows at the next run after its commit.
Nothing a user types reaches SQL text here: choices are bound as parameters, and the one choice that
changes the SQL (the unit ranking) selects among fixed ORDER BY constants.

    GANDISSECT_DB=gandissect.duckdb python -c "from dashboard import queries as q; print(q.layer_summary(q.db_path()))"
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import polars as pl
import streamlit as st

from db import store

TTL_S = 600  # memory bound only: every cached read is keyed by the store's stamp (a write shows at once)
RUNS_TTL_S = 600
READ_TIMEOUT_S = float(os.environ.get("GANDISSECT_DASHBOARD_TIMEOUT", "20"))  # lock retry window


def db_path() -> str:
    """The store the dashboard reads: $GANDISSECT_DB, else "gandissect.duckdb" (as an absolute path)."""
    return os.path.abspath(store.store_path())


_local = threading.local()  # Streamlit runs each session's script in its own thread


@contextlib.contextmanager
def page_scope() -> Iterator[None]:
    """Share one short read-only connection among the queries of one page run (see the module doc)."""
    _local.scope = {"con": None, "db": None}
    try:
        yield
    finally:
        release()
        _local.scope = None


def release() -> None:
    """Close the page run's shared connection now (it reopens at the next uncached query)."""
    scope = getattr(_local, "scope", None)
    if scope and scope["con"] is not None:
        con, scope["con"] = scope["con"], None
        con.close()


def _read(db: str, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pl.DataFrame:
    scope = getattr(_local, "scope", None)
    if scope is None:
        return store.read(sql, params, path=db, timeout=READ_TIMEOUT_S, missing_ok=True)
    if scope["con"] is None or scope["db"] != db:
        release()
        scope["con"] = (store.empty_store() if not Path(db).exists()
                        else store.connect(db, read_only=True, timeout=READ_TIMEOUT_S))
        scope["db"] = db
    return scope["con"].sql(sql, params=params).pl()


def store_stamp(db: str) -> tuple[int, int, int, int]:
    """(mtime_ns, size) of the store file and of its write-ahead log: changes with every committed write
    (a job's publish, a flag), costs two stat calls."""
    out: list[int] = []
    for p in (db, db + ".wal"):
        try:
            s = os.stat(p)
            out += [s.st_mtime_ns, s.st_size]
        except OSError:
            out += [0, 0]
    return tuple(out)  # type: ignore[return-value]


def _cached(ttl: float = TTL_S):
    """st.cache_data keyed by the arguments and the store's stamp: a rerun or another session reads from
    memory until the store changes (then the next call reads it afresh); `ttl` only bounds memory."""
    def deco(fn):
        @functools.wraps(fn)
        def stamped(db: str, stamp: tuple[int, ...], *args: Any, **kwargs: Any) -> Any:
            return fn(db, *args, **kwargs)

        cached = st.cache_data(ttl=ttl, show_spinner=False, max_entries=256)(stamped)

        @functools.wraps(fn)
        def call(db: str, *args: Any, **kwargs: Any) -> Any:
            return cached(db, store_stamp(db), *args, **kwargs)

        call.clear = cached.clear  # type: ignore[attr-defined]
        return call
    return deco


# ---------------------------------------------------------------- SQL: store contents

COUNTS_SQL = """
SELECT (SELECT count(*) FROM models) AS models,
       (SELECT count(*) FROM layers) AS layers,
       (SELECT count(*) FROM segmenters) AS segmenters,
       (SELECT count(*) FROM concepts) AS concepts,
       (SELECT count(*) FROM runs) AS runs,
       (SELECT count(*) FROM runs WHERE status = 'done') AS done,
       (SELECT count(*) FROM runs WHERE status = 'running') AS running,
       (SELECT count(*) FROM runs WHERE status = 'failed') AS failed,
       (SELECT count(*) FROM (SELECT DISTINCT model, layer FROM dissections)) AS dissected_layers,
       (SELECT count(*) FROM unit_flags) AS flags
"""

MODELS_SQL = """
SELECT m.model, m.family, m.dataset, m.model_group, m.training_step, m.resolution, m.z_dim,
       count(l.layer) AS layers, sum(l.units)::BIGINT AS units, m.checkpoint, m.checkpoint_sha256, m.registered_at,
       coalesce(m.role, 'generator') AS role
FROM models m LEFT JOIN layers l USING (model)
GROUP BY ALL
ORDER BY min(coalesce(m.role, 'generator')) <> 'generator', m.model_group NULLS LAST, m.training_step DESC NULLS LAST,
         m.model  -- generators first; checkpoints by step, newest first
"""

LAYERS_SQL = """
SELECT model, layer, layer_index, units, height, width
FROM layers
ORDER BY model, layer_index
"""

SEGMENTERS_SQL = """
SELECT s.segmenter, s.family, s.resolution, count(c.concept) AS concepts,
       count(c.concept) FILTER (WHERE c.category = 'object') AS objects,
       count(c.concept) FILTER (WHERE c.category = 'part') AS parts,
       count(c.concept) FILTER (WHERE c.category = 'material') AS materials,
       s.checkpoint_sha256
FROM segmenters s LEFT JOIN concepts c USING (segmenter)
GROUP BY ALL
ORDER BY s.segmenter
"""

CONCEPTS_SQL = """
SELECT segmenter, concept, category, concept_index
FROM concepts
ORDER BY segmenter, category, concept_index, concept
"""

RUNS_SQL = """
SELECT status, analysis, name, model, layer, segmenter, n_samples, seed, started_at, finished_at,
       round(seconds, 2) AS seconds, device, error, params, run_key
FROM runs
ORDER BY CASE status WHEN 'running' THEN 0 WHEN 'failed' THEN 1 ELSE 2 END, started_at DESC
LIMIT 500
"""

BENCHMARKS_SQL = """
SELECT bench, metric, value, unit, params, created_at FROM benchmarks ORDER BY bench, metric
"""

# ---------------------------------------------------------------- SQL: dissection

LAYER_SUMMARY_SQL = """
SELECT s.*, m.model_group, m.training_step
FROM layer_summary s LEFT JOIN models m USING (model)
ORDER BY coalesce(m.role, 'generator') <> 'generator', m.model_group NULLS LAST, m.training_step DESC NULLS LAST,
         s.model, s.layer_index, s.segmenter, s.threshold_mode DESC  -- as MODELS_SQL; quantile (PNAS) before iqr
"""

DISSECTION_MODES_SQL = """
SELECT DISTINCT segmenter, threshold_mode, threshold_spec, interpretable_iou, n_samples, seed, run_key
FROM dissections
WHERE is_latest AND model = ? AND layer = ?
ORDER BY threshold_mode DESC, segmenter
"""

LAYER_CONCEPTS_SQL = """
SELECT concept, category, labelled_units, interpretable_units, max_iou, mean_interpretable_iou
FROM layer_concepts
WHERE model = ? AND layer = ? AND segmenter = ? AND threshold_mode = ?
ORDER BY interpretable_units DESC, labelled_units DESC, concept
"""

LABEL_CONCEPTS_SQL = """
SELECT model, layer, concept, category, labelled_units, interpretable_units
FROM layer_concepts
WHERE segmenter = ? AND threshold_mode = ?
ORDER BY model, layer, interpretable_units DESC, concept
"""

ALPHA_CONCEPTS_SQL = """
SELECT DISTINCT concept FROM ace_alpha WHERE model = ? AND layer = ? ORDER BY concept
"""

# The quantile level whose value stands in for a unit's threshold where its dissection gives none (an
# unlabelled unit): the display level of the unit strips, PNAS's top 1 %, whatever the dissection's mode
# (an iqr or iclr run has no 0.99 threshold of its own, and unit_quantiles holds the fixed GRID levels).
DISPLAY_QUANTILE = 0.99

# every unit of a layer with its label, the chosen concept's IoU, alpha, threshold and flags
UNIT_TABLE_SQL = f"""
WITH units AS (
    SELECT unnest(range(units)) AS unit FROM layers WHERE model = $model AND layer = $layer
), lab AS (
    SELECT unit, concept, category, iou, iqr, z, p_value, q_value, log10_p, interpretable, beats_chance,
           threshold, precision, recall, iou_ceiling, iou_of_ceiling
    FROM unit_labels
    WHERE model = $model AND layer = $layer AND segmenter = $segmenter AND threshold_mode = $mode
), ci AS (
    SELECT unit, iou AS concept_iou, threshold AS concept_threshold, p_value AS concept_p_value
    FROM unit_iou_latest
    WHERE model = $model AND layer = $layer AND segmenter = $segmenter AND threshold_mode = $mode
      AND concept = $concept
), al AS (
    SELECT unit, alpha FROM ace_alpha_latest WHERE model = $model AND layer = $layer AND concept = $concept
), q AS (
    SELECT unit, value FROM unit_quantiles_latest
    WHERE model = $model AND layer = $layer AND abs(q - {DISPLAY_QUANTILE}) < 1e-9
), cut AS (
    SELECT max(interpretable_iou) AS interpretable_iou FROM dissections
    WHERE is_latest AND model = $model AND layer = $layer AND segmenter = $segmenter AND threshold_mode = $mode
), fl AS (
    SELECT unit, string_agg(flag, ', ' ORDER BY flag) AS flags,
           max(note) FILTER (WHERE flag = 'label') AS custom_label
    FROM unit_flags WHERE model = $model AND layer = $layer GROUP BY unit
)
SELECT u.unit, lab.concept AS label, lab.category, lab.iou, lab.p_value, lab.z, lab.iqr,
       coalesce(lab.interpretable, false) AS interpretable, lab.beats_chance, lab.q_value, lab.log10_p,
       lab.precision, lab.recall, lab.iou_ceiling, lab.iou_of_ceiling,
       ci.concept_iou, ci.concept_p_value, al.alpha,
       coalesce(lab.threshold, q.value) AS threshold, ci.concept_threshold,
       fl.flags, fl.custom_label, cut.interpretable_iou
FROM units u
LEFT JOIN lab USING (unit) LEFT JOIN ci USING (unit) LEFT JOIN al USING (unit)
LEFT JOIN q USING (unit) LEFT JOIN fl USING (unit) CROSS JOIN cut
"""

# ranking -> (label shown in the UI, ORDER BY); the ranking key selects a constant, never user text
RANKINGS: dict[str, tuple[str, str]] = {
    "iou": ("best IoU (label)", "iou DESC NULLS LAST, unit"),
    "concept_iou": ("IoU for a concept", "concept_iou DESC NULLS LAST, unit"),
    "alpha": ("α for a concept (ACE)", "alpha DESC NULLS LAST, unit"),
    "label": ("label (grouped)", "label NULLS LAST, iou DESC NULLS LAST, unit"),
    "z": ("permutation-null z-score", "z DESC NULLS LAST, unit"),
    "precision": ("precision of the label (inter / above)", "precision DESC NULLS LAST, unit"),
    "ceiling": ("IoU relative to its ceiling (size-limited concepts)", "iou_of_ceiling DESC NULLS LAST, unit"),
    "unit": ("unit number", "unit"),
}

TOPK_SQL = """
SELECT unit, rank, seed, sample, value
FROM unit_topk_latest
WHERE model = ? AND layer = ? AND rank <= ?
ORDER BY unit, rank
"""

UNIT_QUANTILES_SQL = """
SELECT q, value FROM unit_quantiles_latest
WHERE model = $model AND layer = $layer AND unit = $unit
ORDER BY q
"""

UNIT_IOU_SQL = """
SELECT i.concept, c.category, i.iou, i.threshold, i.p_value, i.q_value, i.z, i.iqr, i.null_mean,
       i.inter, i.above, i.concept_pixels, i.interpretable_iou
FROM unit_iou_latest i
LEFT JOIN concepts c USING (segmenter, concept)
WHERE i.model = ? AND i.layer = ? AND i.unit = ? AND i.segmenter = ? AND i.threshold_mode = ?
ORDER BY i.iou DESC NULLS LAST, i.concept
"""

# alpha of one unit in the latest done ACE run of each concept
UNIT_ALPHA_SQL = """
SELECT a.concept, a.alpha, a.alpha_init, a.run_key, r.finished_at
FROM ace_alpha_latest a JOIN runs r USING (run_key)
WHERE a.model = ? AND a.layer = ? AND a.unit = ?
ORDER BY a.alpha DESC, a.concept
"""

UNIT_REALISM_SQL = """
SELECT frechet, worst_rank, n_top, n_real FROM unit_realism_latest WHERE model = ? AND layer = ? AND unit = ?
"""

FLAGS_SQL = """
SELECT f.model, f.layer, f.unit, f.flag, f.note, f.created_at, l.concept AS label, l.iou
FROM unit_flags f
LEFT JOIN unit_labels l ON l.model = f.model AND l.layer = f.layer AND l.unit = f.unit
     AND l.threshold_mode = 'quantile'
QUALIFY row_number() OVER (PARTITION BY f.model, f.layer, f.unit, f.flag ORDER BY l.segmenter NULLS LAST) = 1
ORDER BY f.created_at DESC, f.model, f.layer, f.unit, f.flag
"""

UNIT_FLAGS_SQL = """
SELECT flag, note, created_at FROM unit_flags WHERE model = ? AND layer = ? AND unit = ? ORDER BY flag
"""

# grain: one row per interpretable unit (model, layer, unit) of the latest dissection of a segmenter and mode
MATCHED_UNITS_SQL = """
SELECT model, layer, unit, concept, category, iou
FROM unit_labels
WHERE segmenter = ? AND threshold_mode = ? AND interpretable
ORDER BY concept, model, layer, iou DESC, unit
"""

# ---------------------------------------------------------------- SQL: causal analyses

CAUSAL_INDEX_SQL = """
SELECT model, layer, concept, tbl, count(*) AS n_rows FROM (
    SELECT model, layer, concept, 'ace_alpha' AS tbl FROM ace_alpha
    UNION ALL SELECT model, layer, concept, 'ablation_curves' FROM ablation_curves
    UNION ALL SELECT model, layer, concept, 'insertion_contexts' FROM insertion_contexts
    UNION ALL SELECT model, layer, concept, 'insertion_maps' FROM insertion_maps
    UNION ALL SELECT model, layer, concept, 'trace_effects' FROM trace_effects
    UNION ALL SELECT model, layer, concept, 'causal_effects' FROM causal_effects
)
GROUP BY ALL
ORDER BY model, layer, concept, tbl
"""


def _latest_of(table: str, extra: str = "") -> str:
    """Rows of `table` for (model, layer, concept) from its latest done run: the view `{table}_latest`
    (table: a constant name)."""
    return f"""
SELECT t.* EXCLUDE (run_key, model, layer, concept) FROM {table}_latest t
WHERE t.model = $model AND t.layer = $layer AND t.concept = $concept
{extra}"""


ALPHA_SQL = _latest_of("ace_alpha", "ORDER BY t.alpha DESC, t.unit")
ACE_EPOCHS_SQL = _latest_of("ace_epochs", "ORDER BY t.epoch")
ABLATION_SQL = _latest_of("ablation_curves", "ORDER BY t.ranking, t.n_units")
INSERTION_CONTEXTS_SQL = _latest_of("insertion_contexts", "ORDER BY t.effect DESC NULLS LAST, t.context")
INSERTION_MAPS_SQL = _latest_of("insertion_maps", "ORDER BY t.seed, t.sample, t.y, t.x")
TRACE_SQL = _latest_of("trace_effects", "ORDER BY t.target_layer, t.y, t.x")
CAUSAL_EFFECTS_SQL = _latest_of("causal_effects", "ORDER BY t.ace DESC NULLS LAST, t.unit_set")

# ---------------------------------------------------------------- SQL: comparisons

EMERGENCE_SQL = """
WITH groups AS (
    SELECT model_group FROM models
    WHERE model_group IS NOT NULL AND training_step IS NOT NULL
    GROUP BY model_group HAVING count(*) > 1
)
SELECT m.model_group, m.model, m.training_step, s.layer, s.layer_index, s.segmenter, s.threshold_mode,
       s.units, s.interpretable_units, s.object_units, s.part_units, s.material_units, s.other_units,
       s.distinct_concepts
FROM layer_summary s JOIN models m USING (model) JOIN groups g USING (model_group)
ORDER BY m.model_group, s.layer_index, m.training_step
"""


# ---------------------------------------------------------------- SQL: realism, repair, coverage (diagnosis)

# layers with a realism score or a repair run (latest done runs), in layer order
REALISM_LAYERS_SQL = """
WITH r AS (SELECT model, layer, count(*) AS scored_units FROM unit_realism_latest GROUP BY model, layer),
     p AS (SELECT model, layer, count(*) AS repair_sets FROM repair_latest GROUP BY model, layer)
SELECT l.model, l.layer, l.layer_index, coalesce(r.scored_units, 0) AS scored_units,
       coalesce(p.repair_sets, 0) AS repair_sets
FROM layers l LEFT JOIN r USING (model, layer) LEFT JOIN p USING (model, layer)
WHERE r.scored_units IS NOT NULL OR p.repair_sets IS NOT NULL
ORDER BY l.model, l.layer_index
"""

REALISM_SUMMARY_SQL = """
SELECT count(*) AS units, min(frechet) AS best, median(frechet) AS median,
       quantile_cont(frechet, 0.9) AS p90, max(frechet) AS worst,
       any_value(n_top) AS n_top, any_value(n_real) AS n_real, any_value(seed) AS seed, any_value(run_key) AS run_key
FROM unit_realism_latest
WHERE model = ? AND layer = ?
"""

# every scored unit of a layer, worst first, with its label, threshold (for strips) and flags (UNIT_TABLE_SQL)
REALISM_UNITS_SQL = f"""
WITH t AS ({UNIT_TABLE_SQL})
SELECT r.unit, r.worst_rank, r.frechet, r.n_top, r.n_real, t.label, t.category, t.iou, t.interpretable,
       t.threshold, t.flags, t.custom_label,
       CASE WHEN regexp_matches(coalesce(t.flags, ''), 'artifact|watermark') THEN 'flagged' ELSE 'not flagged'
       END AS flag_state,
       r.seed, CAST(r.top_samples::JSON AS INTEGER[]) AS top_samples
FROM unit_realism_latest r LEFT JOIN t USING (unit)
WHERE r.model = $model AND r.layer = $layer
ORDER BY r.worst_rank, r.unit
"""

_UNIT_SET_ORDER = ("CASE unit_set WHEN 'manual' THEN 0 WHEN 'realism' THEN 1 WHEN 'union' THEN 2 "
                   "WHEN 'random' THEN 3 END")

REPAIR_SQL = f"""
SELECT p.unit_set, p.n_units, p.draws, CAST(p.units::JSON AS INTEGER[]) AS units, p.fd_before, p.fd_after,
       p.fd_after_std, p.fd_change, r.n_samples, r.seed,
       coalesce(json_extract_string(r.params, '$.manual'), 'flags') AS manual_rule, p.run_key,
       p.fd_before_full, p.fd_after_full, p.fd_after_full_std,
       coalesce(CAST(json_extract(r.params, '$.real_exclude') AS VARCHAR[]), []) AS real_exclude
FROM repair_latest p LEFT JOIN runs r USING (run_key)
WHERE p.model = ? AND p.layer = ?
ORDER BY {_UNIT_SET_ORDER} NULLS LAST, p.unit_set
"""

# concepts ordered by how much ablating a non-random set changes them (most affected first)
REPAIR_CONCEPTS_SQL = f"""
SELECT unit_set, concept, fraction_before, fraction_after, relative_change,
       max(abs(relative_change)) FILTER (WHERE unit_set <> 'random') OVER (PARTITION BY concept) AS concept_effect
FROM repair_concepts_latest
WHERE model = ? AND layer = ? AND concept <> 'none'
ORDER BY concept_effect DESC NULLS LAST, concept, {_UNIT_SET_ORDER} NULLS LAST, unit_set
"""

FLAG_PR_SQL = """
SELECT k, frechet, precision, recall, n_flagged, round(precision * k)::INTEGER AS flagged_in_k
FROM realism_flag_pr_latest
WHERE model = ? AND layer = ?
ORDER BY k
"""

COVERAGE_SQL = """
SELECT c.segmenter, c.concept, k.category, c.generated_fraction, c.real_fraction, c.fraction_change,
       CASE WHEN c.fraction_change < 0 THEN 'under-produced' WHEN c.fraction_change > 0 THEN 'over-produced'
            ELSE 'as often as real' END AS direction,
       c.generated_presence, c.real_presence, c.n_generated, c.n_real, c.run_key
FROM concept_coverage_latest c LEFT JOIN concepts k USING (segmenter, concept)
WHERE c.model = ? AND c.concept <> 'none'
ORDER BY c.segmenter, c.fraction_change NULLS LAST, c.concept
"""

REALISM_LABEL_COUNTS_SQL = """
SELECT segmenter, threshold_mode, interpretable_units, realistic_units, concepts, realistic_concepts, scored_units
FROM realism_label_counts($max_frechet)
WHERE model = $model AND layer = $layer
ORDER BY segmenter, threshold_mode DESC
"""

# ---------------------------------------------------------------- cached query functions

@_cached()
def counts(db: str) -> dict[str, int]:
    """How much the store holds: models, layers, segmenters, concepts, runs by status, dissected layers."""
    return _read(db, COUNTS_SQL).row(0, named=True)


@_cached()
def models(db: str) -> pl.DataFrame:
    return _read(db, MODELS_SQL)


@_cached()
def layers(db: str) -> pl.DataFrame:
    return _read(db, LAYERS_SQL)


@_cached()
def segmenters(db: str) -> pl.DataFrame:
    return _read(db, SEGMENTERS_SQL)


@_cached()
def concepts(db: str) -> pl.DataFrame:
    return _read(db, CONCEPTS_SQL)


@_cached(RUNS_TTL_S)
def runs(db: str) -> pl.DataFrame:
    return _read(db, RUNS_SQL)


@_cached()
def benchmarks(db: str) -> pl.DataFrame:
    return _read(db, BENCHMARKS_SQL)


@_cached()
def layer_summary(db: str) -> pl.DataFrame:
    """layer_summary (every model, layer, segmenter, threshold mode) with the model's group and step."""
    return _read(db, LAYER_SUMMARY_SQL)


@_cached()
def dissection_modes(db: str, model: str, layer: str) -> pl.DataFrame:
    """The latest dissections of a layer: one row per (segmenter, threshold mode)."""
    return _read(db, DISSECTION_MODES_SQL, [model, layer])


@_cached()
def layer_concepts(db: str, model: str, layer: str, segmenter: str, mode: str) -> pl.DataFrame:
    """Concept distribution of a layer's unit labels (paper Fig. 5)."""
    return _read(db, LAYER_CONCEPTS_SQL, [model, layer, segmenter, mode])


@_cached()
def matched_units(db: str, segmenter: str, mode: str) -> pl.DataFrame:
    """Interpretable units of every model and layer with their label (one row per unit) for one
    segmenter and threshold mode: Compare matches units across layers by concept."""
    return _read(db, MATCHED_UNITS_SQL, [segmenter, mode])


@_cached()
def label_concepts(db: str, segmenter: str, mode: str) -> pl.DataFrame:
    """layer_concepts of every model and layer for one segmenter and threshold mode."""
    return _read(db, LABEL_CONCEPTS_SQL, [segmenter, mode])


@_cached()
def alpha_concepts(db: str, model: str, layer: str) -> list[str]:
    return _read(db, ALPHA_CONCEPTS_SQL, [model, layer])["concept"].to_list()


@_cached()
def unit_table(db: str, model: str, layer: str, segmenter: str | None, mode: str | None,
               concept: str | None, ranking: str = "iou") -> pl.DataFrame:
    """Every unit of a layer, ranked: label, category, IoU, p-value, z, the concept's IoU, α, threshold, flags."""
    if ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {ranking!r}; rankings: {', '.join(RANKINGS)}")
    sql = f"{UNIT_TABLE_SQL}ORDER BY {RANKINGS[ranking][1]}"
    return _read(db, sql, {"model": model, "layer": layer, "segmenter": segmenter, "mode": mode,
                           "concept": concept})


@_cached()
def topk(db: str, model: str, layer: str, k: int = 5) -> pl.DataFrame:
    """Top-k samples of every unit of a layer from its latest run with top-k rows: unit, rank, seed, sample."""
    return _read(db, TOPK_SQL, [model, layer, int(k)])


@_cached()
def unit_quantiles(db: str, model: str, layer: str, unit: int) -> pl.DataFrame:
    return _read(db, UNIT_QUANTILES_SQL, {"model": model, "layer": layer, "unit": int(unit)})


@_cached()
def unit_iou(db: str, model: str, layer: str, unit: int, segmenter: str, mode: str) -> pl.DataFrame:
    """IoU of one unit against every concept in the latest dissection of (segmenter, mode)."""
    return _read(db, UNIT_IOU_SQL, [model, layer, int(unit), segmenter, mode])


@_cached()
def unit_alpha(db: str, model: str, layer: str, unit: int) -> pl.DataFrame:
    """α of one unit for each concept (latest ACE run per concept)."""
    return _read(db, UNIT_ALPHA_SQL, [model, layer, int(unit)])


@_cached()
def unit_realism(db: str, model: str, layer: str, unit: int) -> pl.DataFrame:
    return _read(db, UNIT_REALISM_SQL, [model, layer, int(unit)])


@_cached()
def flags(db: str) -> pl.DataFrame:
    return _read(db, FLAGS_SQL)


@_cached()
def unit_flags(db: str, model: str, layer: str, unit: int) -> pl.DataFrame:
    return _read(db, UNIT_FLAGS_SQL, [model, layer, int(unit)])


@_cached()
def causal_index(db: str) -> pl.DataFrame:
    """Which causal tables have rows for each (model, layer, concept)."""
    return _read(db, CAUSAL_INDEX_SQL)


def _mlc(model: str, layer: str, concept: str) -> dict[str, str]:
    return {"model": model, "layer": layer, "concept": concept}


@_cached()
def alpha(db: str, model: str, layer: str, concept: str) -> pl.DataFrame:
    return _read(db, ALPHA_SQL, _mlc(model, layer, concept))


@_cached()
def ace_epochs(db: str, model: str, layer: str, concept: str) -> pl.DataFrame:
    return _read(db, ACE_EPOCHS_SQL, _mlc(model, layer, concept))


@_cached()
def ablation_curves(db: str, model: str, layer: str, concept: str) -> pl.DataFrame:
    return _read(db, ABLATION_SQL, _mlc(model, layer, concept))


@_cached()
def insertion_contexts(db: str, model: str, layer: str, concept: str) -> pl.DataFrame:
    return _read(db, INSERTION_CONTEXTS_SQL, _mlc(model, layer, concept))


@_cached()
def insertion_maps(db: str, model: str, layer: str, concept: str) -> pl.DataFrame:
    return _read(db, INSERTION_MAPS_SQL, _mlc(model, layer, concept))


@_cached()
def trace_effects(db: str, model: str, layer: str, concept: str) -> pl.DataFrame:
    return _read(db, TRACE_SQL, _mlc(model, layer, concept))


@_cached()
def causal_effects(db: str, model: str, layer: str, concept: str) -> pl.DataFrame:
    return _read(db, CAUSAL_EFFECTS_SQL, _mlc(model, layer, concept))


@_cached()
def emergence(db: str) -> pl.DataFrame:
    """layer_summary of every model group with several checkpoints, with each checkpoint's training step."""
    return _read(db, EMERGENCE_SQL)


@_cached()
def realism_layers(db: str) -> pl.DataFrame:
    """Layers with realism scores or a repair run: model, layer, layer_index, scored_units, repair_sets."""
    return _read(db, REALISM_LAYERS_SQL)


@_cached()
def realism_summary(db: str, model: str, layer: str) -> dict[str, Any]:
    """The layer's latest realism scores in brief: units, best, median, p90, worst, n_top, n_real, seed."""
    return _read(db, REALISM_SUMMARY_SQL, [model, layer]).row(0, named=True)


@_cached()
def realism_units(db: str, model: str, layer: str, segmenter: str | None, mode: str | None) -> pl.DataFrame:
    """Every scored unit of a layer, worst realism first: Fréchet, rank, label, threshold, flags, top samples."""
    return _read(db, REALISM_UNITS_SQL, {"model": model, "layer": layer, "segmenter": segmenter, "mode": mode,
                                         "concept": None})


@_cached()
def repair(db: str, model: str, layer: str) -> pl.DataFrame:
    """The layer's latest repair run, one row per unit set (manual, realism, union, random)."""
    return _read(db, REPAIR_SQL, [model, layer])


@_cached()
def repair_concepts(db: str, model: str, layer: str) -> pl.DataFrame:
    """Concept pixel shares before and after ablating each unit set (latest repair run), most affected first."""
    return _read(db, REPAIR_CONCEPTS_SQL, [model, layer])


@_cached()
def flag_pr(db: str, model: str, layer: str) -> pl.DataFrame:
    """Precision and recall of the k worst realism scores against the flagged units, per k."""
    return _read(db, FLAG_PR_SQL, [model, layer])


@_cached()
def coverage(db: str, model: str) -> pl.DataFrame:
    """Generated vs real concept shares of a model (latest coverage run per segmenter), most under-produced first."""
    return _read(db, COVERAGE_SQL, [model])


@_cached()
def realism_label_counts(db: str, model: str, layer: str, max_frechet: float) -> pl.DataFrame:
    """Interpretable units and concepts of a layer with and without leaving out units above max_frechet."""
    return _read(db, REALISM_LABEL_COUNTS_SQL, {"model": model, "layer": layer, "max_frechet": float(max_frechet)})


def clear_flags_cache() -> None:
    """After a flag write: forget cached reads that show flags."""
    flags.clear()
    unit_flags.clear()
    unit_table.clear()
    realism_units.clear()
    counts.clear()


# ---------------------------------------------------------------- saved examples of the SQL page

EXAMPLES_SQL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples.sql")


def examples() -> dict[str, str]:
    """dashboard/examples.sql as {title: query}, in file order."""
    out: dict[str, str] = {}
    title, lines = None, []
    with open(EXAMPLES_SQL, encoding="utf-8") as f:
        for line in f:
            if line.startswith("-- example:"):
                if title:
                    out[title] = "".join(lines).strip()
                title, lines = line.removeprefix("-- example:").strip(), []
            elif title and not (line.startswith("--") and not lines):
                lines.append(line)
    if title:
        out[title] = "".join(lines).strip()
    return out
