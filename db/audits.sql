-- gandissect audits: each query returns zero rows when all is well, and the offending rows otherwise.
--
-- Read by db/store.py: `run_audits(con)` runs them all; `publish` / `publish_many` run the ones that
-- read the tables being published inside the publish transaction (a failure rolls it back, so bad rows
-- never become visible). Each query is preceded by `-- audit: name`. Ranges are written
-- `NOT (x BETWEEN a AND b)` so that NaN (greater than every number in DuckDB) fails them too;
-- one-sided bounds test isnan() explicitly. A line `-- each result table with COLUMNS:` stands for the
-- next line written once per result table that has those columns (db/tables.py RESULT_TABLES, in
-- declaration order; `{table}` is its name), joined by UNION ALL: db/store.py `audits()` expands it.

-- ===== grain uniqueness: one per table, grouped by the table's key =====

-- audit: unique_store_meta
SELECT key, count(*) AS n FROM store_meta GROUP BY key HAVING count(*) > 1;

-- audit: unique_models
SELECT model, count(*) AS n FROM models GROUP BY model HAVING count(*) > 1;

-- audit: unique_layers
SELECT model, layer, count(*) AS n FROM layers GROUP BY model, layer HAVING count(*) > 1;

-- audit: unique_segmenters
SELECT segmenter, count(*) AS n FROM segmenters GROUP BY segmenter HAVING count(*) > 1;

-- audit: unique_concepts
SELECT segmenter, concept, count(*) AS n FROM concepts GROUP BY segmenter, concept HAVING count(*) > 1;

-- audit: unique_runs
SELECT run_key, count(*) AS n FROM runs GROUP BY run_key HAVING count(*) > 1;

-- audit: unique_unit_quantiles
SELECT run_key, model, layer, unit, q, count(*) AS n
FROM unit_quantiles GROUP BY run_key, model, layer, unit, q HAVING count(*) > 1;

-- audit: unique_unit_topk
SELECT run_key, model, layer, unit, rank, count(*) AS n
FROM unit_topk GROUP BY run_key, model, layer, unit, rank HAVING count(*) > 1;

-- audit: unique_unit_iou
SELECT run_key, model, layer, unit, concept, count(*) AS n
FROM unit_iou GROUP BY run_key, model, layer, unit, concept HAVING count(*) > 1;

-- audit: unique_layer_null_iou
SELECT run_key, model, layer, count(*) AS n
FROM layer_null_iou GROUP BY run_key, model, layer HAVING count(*) > 1;

-- audit: unique_ace_alpha
SELECT run_key, model, layer, concept, unit, count(*) AS n
FROM ace_alpha GROUP BY run_key, model, layer, concept, unit HAVING count(*) > 1;

-- audit: unique_ace_epochs
SELECT run_key, model, layer, concept, epoch, count(*) AS n
FROM ace_epochs GROUP BY run_key, model, layer, concept, epoch HAVING count(*) > 1;

-- audit: unique_ace_trajectory
SELECT run_key, model, layer, concept, epoch, unit, count(*) AS n
FROM ace_trajectory GROUP BY run_key, model, layer, concept, epoch, unit HAVING count(*) > 1;

-- audit: unique_ablation_curves
SELECT run_key, model, layer, concept, ranking, n_units, count(*) AS n
FROM ablation_curves GROUP BY run_key, model, layer, concept, ranking, n_units HAVING count(*) > 1;

-- audit: unique_insertion_contexts
SELECT run_key, model, layer, concept, context, count(*) AS n
FROM insertion_contexts GROUP BY run_key, model, layer, concept, context HAVING count(*) > 1;

-- audit: unique_insertion_maps
SELECT run_key, model, layer, concept, seed, sample, y, x, count(*) AS n
FROM insertion_maps GROUP BY run_key, model, layer, concept, seed, sample, y, x HAVING count(*) > 1;

-- audit: unique_trace_effects
SELECT run_key, model, layer, concept, target_layer, y, x, count(*) AS n
FROM trace_effects GROUP BY run_key, model, layer, concept, target_layer, y, x HAVING count(*) > 1;

-- audit: unique_causal_effects
SELECT run_key, model, layer, concept, unit_set, count(*) AS n
FROM causal_effects GROUP BY run_key, model, layer, concept, unit_set HAVING count(*) > 1;

-- audit: unique_unit_flags
SELECT model, layer, unit, flag, count(*) AS n
FROM unit_flags GROUP BY model, layer, unit, flag HAVING count(*) > 1;

-- audit: unique_benchmarks
SELECT bench, metric, count(*) AS n FROM benchmarks GROUP BY bench, metric HAVING count(*) > 1;

-- audit: unique_unit_realism
SELECT run_key, model, layer, unit, count(*) AS n
FROM unit_realism GROUP BY run_key, model, layer, unit HAVING count(*) > 1;

-- audit: unique_repair_effects
SELECT run_key, model, layer, unit_set, draw, count(*) AS n
FROM repair_effects GROUP BY run_key, model, layer, unit_set, draw HAVING count(*) > 1;

-- audit: unique_repair_concepts
SELECT run_key, model, layer, unit_set, draw, concept, count(*) AS n
FROM repair_concepts GROUP BY run_key, model, layer, unit_set, draw, concept HAVING count(*) > 1;

-- audit: unique_realism_flag_pr
SELECT run_key, model, layer, k, count(*) AS n
FROM realism_flag_pr GROUP BY run_key, model, layer, k HAVING count(*) > 1;

-- audit: unique_concept_coverage
SELECT run_key, concept, source, count(*) AS n
FROM concept_coverage GROUP BY run_key, concept, source HAVING count(*) > 1;

-- audit: unique_run_layers
SELECT run_key, layer, count(*) AS n FROM run_layers GROUP BY run_key, layer HAVING count(*) > 1;

-- ===== dimensions =====

-- audit: layers_shape
SELECT model, layer, layer_index, units, height, width
FROM layers
WHERE units < 1 OR layer_index < 0 OR height < 1 OR width < 1;

-- audit: layers_unique_index
SELECT model, layer_index, count(*) AS n FROM layers GROUP BY model, layer_index HAVING count(*) > 1;

-- audit: concepts_unique_index
SELECT segmenter, concept_index, count(*) AS n
FROM concepts WHERE concept_index IS NOT NULL
GROUP BY segmenter, concept_index HAVING count(*) > 1;

-- ===== runs =====

-- audit: runs_status
SELECT run_key, status FROM runs WHERE status NOT IN ('running', 'done', 'failed');

-- audit: runs_done_finished
SELECT run_key, finished_at, error FROM runs
WHERE status = 'done' AND (finished_at IS NULL OR error IS NOT NULL);

-- audit: runs_failed_error
SELECT run_key, finished_at, error FROM runs
WHERE status = 'failed' AND (finished_at IS NULL OR error IS NULL);

-- audit: runs_running_unfinished
SELECT run_key, finished_at FROM runs WHERE status = 'running' AND finished_at IS NOT NULL;

-- audit: runs_time_order
SELECT run_key, started_at, finished_at, seconds FROM runs
WHERE finished_at < started_at OR seconds < 0 OR isnan(seconds);

-- audit: runs_params_json
SELECT run_key, params FROM runs WHERE params IS NOT NULL AND NOT json_valid(params);

-- audit: runs_sample_count
SELECT run_key, n_samples FROM runs WHERE n_samples < 1;

-- audit: run_layers_match_results
-- run_layers holds exactly the (run, model, layer) of the run's result rows: none missing for a done run
-- (the *_latest views find a run's rows through it), none left over
WITH result_layers AS (
    SELECT DISTINCT run_key, model, layer FROM (
        -- each result table with model, layer:
        SELECT run_key, model, layer FROM {table}
    )
)
SELECT 'missing' AS problem, t.run_key, t.model, t.layer
FROM result_layers t JOIN runs r USING (run_key)
WHERE r.status = 'done' AND NOT EXISTS (
    SELECT 1 FROM run_layers l WHERE l.run_key = t.run_key AND l.model = t.model AND l.layer = t.layer)
UNION ALL
SELECT 'left over', l.run_key, l.model, l.layer
FROM run_layers l
WHERE NOT EXISTS (
    SELECT 1 FROM result_layers t WHERE t.run_key = l.run_key AND t.model = l.model AND t.layer = l.layer);

-- ===== result rows belong to done runs, of their model, on registered layers and units =====

-- audit: rows_of_runs_not_done
WITH result_runs AS (
    -- each result table with run_key:
    SELECT DISTINCT '{table}' AS tbl, run_key FROM {table}
)
SELECT t.tbl, t.run_key, r.status
FROM result_runs t LEFT JOIN runs r USING (run_key)
WHERE r.status IS DISTINCT FROM 'done';

-- audit: rows_model_differs_from_run
WITH result_models AS (
    -- each result table with run_key, model:
    SELECT DISTINCT '{table}' AS tbl, run_key, model FROM {table}
)
SELECT t.tbl, t.run_key, t.model, r.model AS run_model
FROM result_models t JOIN runs r USING (run_key)
WHERE r.model IS NOT NULL AND r.model <> t.model;

-- audit: rows_on_unregistered_layers
WITH result_layers AS (
    -- each result table with model, layer:
    SELECT DISTINCT '{table}' AS tbl, model, layer FROM {table} WHERE layer <> '' OR '{table}' <> 'inversions'
    UNION ALL SELECT DISTINCT 'trace_effects.target_layer', model, target_layer FROM trace_effects
    UNION ALL SELECT DISTINCT 'unit_flags', model, layer FROM unit_flags
)
SELECT t.tbl, t.model, t.layer
FROM result_layers t ANTI JOIN layers l USING (model, layer);

-- audit: units_out_of_range
WITH result_units AS (
    -- each result table with model, layer, unit:
    SELECT DISTINCT '{table}' AS tbl, model, layer, unit FROM {table}
    UNION ALL SELECT DISTINCT 'unit_flags', model, layer, unit FROM unit_flags
)
SELECT t.tbl, t.model, t.layer, t.unit, l.units
FROM result_units t JOIN layers l USING (model, layer)
WHERE t.unit < 0 OR t.unit >= l.units;

-- audit: concepts_unregistered
WITH result_concepts AS (
    -- each result table with run_key, concept:
    SELECT DISTINCT '{table}' AS tbl, run_key, concept FROM {table}
    UNION ALL SELECT DISTINCT 'insertion_contexts.context', run_key, context FROM insertion_contexts
)
SELECT t.tbl, t.run_key, r.segmenter, t.concept
FROM result_concepts t
JOIN runs r USING (run_key)
WHERE r.segmenter IS NOT NULL AND t.concept <> 'none'
  AND NOT EXISTS (SELECT 1 FROM concepts c WHERE c.segmenter = r.segmenter AND c.concept = t.concept);

-- ===== value ranges =====

-- audit: iou_range
SELECT run_key, model, layer, unit, concept, iou FROM unit_iou
WHERE iou IS NOT NULL AND NOT (iou BETWEEN 0 AND 1);

-- audit: iou_counts_consistent
SELECT run_key, model, layer, unit, concept, inter, above, concept_pixels FROM unit_iou
WHERE inter < 0 OR above < 0 OR concept_pixels < 0
   OR isnan(inter) OR isnan(above) OR isnan(concept_pixels)
   OR inter > above * (1 + 1e-9) + 1e-9 OR inter > concept_pixels * (1 + 1e-9) + 1e-9;

-- audit: iou_null_when_concept_absent
SELECT run_key, model, layer, unit, concept, iou, concept_pixels FROM unit_iou
WHERE (iou IS NULL AND concept_pixels > 0) OR (iou IS NOT NULL AND concept_pixels = 0);

-- audit: iou_statistics_range
SELECT run_key, model, layer, unit, concept, iqr, null_mean, null_std, z, p_value, q_value, log10_p FROM unit_iou
WHERE NOT (iqr BETWEEN 0 AND 1) OR NOT (p_value BETWEEN 0 AND 1) OR NOT (null_mean BETWEEN 0 AND 1)
   OR null_std < 0 OR isnan(null_std) OR isnan(z) OR isnan(threshold)
   OR NOT (q_value BETWEEN 0 AND 1) OR q_value < p_value * (1 - 1e-9) OR log10_p > 1e-12;

-- audit: quantiles_range
SELECT run_key, model, layer, unit, q, value FROM unit_quantiles
WHERE NOT (q BETWEEN 0 AND 1) OR isnan(value);

-- audit: quantiles_monotone
SELECT run_key, model, layer, unit, q, value, previous FROM (
    SELECT *, lag(value) OVER (PARTITION BY run_key, model, layer, unit ORDER BY q) AS previous
    FROM unit_quantiles)
WHERE value < previous;

-- audit: topk_order
SELECT run_key, model, layer, unit, rank, sample, value, previous FROM (
    SELECT *, lag(value) OVER (PARTITION BY run_key, model, layer, unit ORDER BY rank) AS previous
    FROM unit_topk)
WHERE rank < 1 OR sample < 0 OR isnan(value) OR value > previous;

-- audit: null_iou_range
SELECT run_key, model, layer, n_values, mean, std, median, q90, q95, q99, max FROM layer_null_iou
WHERE n_values < 1 OR NOT (mean BETWEEN 0 AND 1) OR std < 0 OR isnan(std)
   OR NOT (median BETWEEN 0 AND 1) OR NOT (max BETWEEN 0 AND 1)
   OR median > q90 OR q90 > q95 OR q95 > q99 OR q99 > max;

-- audit: alpha_range
SELECT 'ace_alpha' AS tbl, run_key, model, layer, concept, unit, alpha, alpha_init, NULL AS epoch
FROM ace_alpha
WHERE NOT (alpha BETWEEN 0 AND 1) OR NOT (alpha_init BETWEEN 0 AND 1)
UNION ALL
SELECT 'ace_trajectory', run_key, model, layer, concept, unit, alpha, NULL, epoch
FROM ace_trajectory
WHERE NOT (alpha BETWEEN 0 AND 1) OR epoch < 0;

-- audit: ace_epochs_range
SELECT run_key, model, layer, concept, epoch, loss, effect, alpha_l1, alpha_l2 FROM ace_epochs
WHERE epoch < 0 OR isnan(loss) OR isnan(effect) OR alpha_l1 < 0 OR isnan(alpha_l1)
   OR alpha_l2 < 0 OR isnan(alpha_l2);

-- audit: ablation_range
SELECT run_key, model, layer, concept, ranking, n_units, remaining, remaining_std, draws FROM ablation_curves
WHERE ranking NOT IN ('ace', 'iou', 'random') OR n_units < 0 OR draws < 1
   OR remaining < 0 OR isnan(remaining) OR remaining_std < 0 OR isnan(remaining_std)
   OR baseline_pixels < 0 OR isnan(baseline_pixels);

-- audit: insertion_range
SELECT run_key, model, layer, concept, context, locations, effect, effect_std FROM insertion_contexts
WHERE locations < 0 OR isnan(effect) OR effect_std < 0 OR isnan(effect_std);

-- audit: insertion_maps_in_grid
SELECT m.run_key, m.model, m.layer, m.concept, m.sample, m.y, m.x, l.height, l.width
FROM insertion_maps m LEFT JOIN layers l USING (model, layer)
WHERE m.sample < 0 OR m.y < 0 OR m.x < 0 OR m.y >= l.height OR m.x >= l.width OR isnan(m.effect);

-- audit: trace_effects_in_grid
SELECT t.run_key, t.model, t.layer, t.concept, t.target_layer, t.y, t.x, t.effect, l.height, l.width
FROM trace_effects t LEFT JOIN layers l ON l.model = t.model AND l.layer = t.target_layer
WHERE t.y < 0 OR t.x < 0 OR t.y >= l.height OR t.x >= l.width OR t.effect < 0 OR isnan(t.effect) OR isinf(t.effect);

-- audit: causal_effects_units
SELECT run_key, model, layer, concept, unit_set, n_units, units FROM causal_effects
WHERE n_units < 0 OR (units IS NOT NULL AND NOT json_valid(units))
   OR (units IS NOT NULL AND json_valid(units) AND json_array_length(units) <> n_units)
   OR isnan(ace) OR isnan(ablation) OR isnan(insertion);

-- audit: unit_flags_kind
SELECT model, layer, unit, flag FROM unit_flags
WHERE flag NOT IN ('artifact', 'watermark', 'interesting', 'label');

-- audit: benchmarks_finite
SELECT bench, metric, value FROM benchmarks WHERE isnan(value) OR isinf(value);

-- audit: realism_range
SELECT run_key, model, layer, unit, frechet, n_top, n_real FROM unit_realism
WHERE frechet < 0 OR isnan(frechet) OR isinf(frechet) OR n_top < 1 OR n_real < 1;

-- audit: repair_range
SELECT run_key, model, layer, unit_set, draw, n_units, units, fd_before, fd_after FROM repair_effects
WHERE unit_set NOT IN ('manual', 'realism', 'union', 'random') OR draw < 0 OR n_units < 0
   OR fd_before < 0 OR fd_after < 0 OR isnan(fd_before) OR isnan(fd_after) OR isinf(fd_before) OR isinf(fd_after)
   OR fd_before_full < 0 OR fd_after_full < 0 OR isnan(fd_before_full) OR isnan(fd_after_full)
   OR isinf(fd_before_full) OR isinf(fd_after_full) OR ((fd_before_full IS NULL) <> (fd_after_full IS NULL))
   OR (units IS NOT NULL AND NOT json_valid(units))
   OR (units IS NOT NULL AND json_valid(units) AND json_array_length(units) <> n_units);

-- audit: coverage_range
SELECT run_key, concept, source, pixel_fraction, presence, n_images FROM concept_coverage
WHERE source NOT IN ('generated', 'real') OR n_images < 1
   OR NOT (pixel_fraction BETWEEN 0 AND 1) OR NOT (presence BETWEEN 0 AND 1);

-- audit: repair_concepts_range
SELECT run_key, model, layer, unit_set, draw, concept, fraction_before, fraction_after FROM repair_concepts
WHERE NOT (fraction_before BETWEEN 0 AND 1) OR NOT (fraction_after BETWEEN 0 AND 1);

-- audit: repair_concepts_have_effects
SELECT c.run_key, c.model, c.layer, c.unit_set, c.draw FROM repair_concepts c
ANTI JOIN repair_effects e USING (run_key, model, layer, unit_set, draw);

-- audit: realism_flag_pr_range
SELECT run_key, model, layer, k, precision, recall, n_flagged FROM realism_flag_pr
WHERE k < 1 OR n_flagged < 1 OR NOT (precision BETWEEN 0 AND 1) OR NOT (recall BETWEEN 0 AND 1)
   OR isnan(frechet) OR isinf(frechet);

-- audit: unit_realism_top_samples_json
SELECT run_key, model, layer, unit, top_samples FROM unit_realism
WHERE top_samples IS NOT NULL AND NOT json_valid(top_samples);

-- audit: unique_class_unit_effects
SELECT run_key, model, layer, unit, class, count(*) AS n
FROM class_unit_effects GROUP BY run_key, model, layer, unit, class HAVING count(*) > 1;

-- audit: unique_class_ablation_curves
SELECT run_key, model, layer, class, ranking, k, count(*) AS n
FROM class_ablation_curves GROUP BY run_key, model, layer, class, ranking, k HAVING count(*) > 1;

-- audit: class_unit_effects_range
SELECT run_key, model, layer, unit, class, accuracy, accuracy_drop, rank FROM class_unit_effects
WHERE NOT (accuracy BETWEEN 0 AND 1) OR NOT (accuracy_drop BETWEEN -1 AND 1) OR NOT (true_prob BETWEEN 0 AND 1)
   OR rank < 1 OR images < 1;

-- audit: class_ablation_curves_range
SELECT run_key, model, layer, class, ranking, k, accuracy, other_accuracy FROM class_ablation_curves
WHERE ranking NOT IN ('top', 'random') OR k < 0 OR draws < 1
   OR NOT (accuracy BETWEEN 0 AND 1) OR NOT (other_accuracy BETWEEN 0 AND 1);

-- audit: unique_inversions
SELECT run_key, model, image, count(*) AS n
FROM inversions GROUP BY run_key, model, image HAVING count(*) > 1;

-- audit: unique_inversion_concepts
SELECT run_key, model, image, concept, count(*) AS n
FROM inversion_concepts GROUP BY run_key, model, image, concept HAVING count(*) > 1;

-- audit: inversion_concepts_without_inversion
SELECT c.run_key, c.model, c.image FROM inversion_concepts c
ANTI JOIN inversions i USING (run_key, model, image);

-- audit: inversion_ranges
SELECT run_key, model, image, concept, photo_share, recon_share, recall FROM inversion_concepts
WHERE NOT (photo_share BETWEEN 0 AND 1) OR NOT (recon_share BETWEEN 0 AND 1)
   OR (recall IS NOT NULL AND NOT (recall BETWEEN 0 AND 1)) OR (omitted AND NOT present);
