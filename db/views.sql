-- gandissect views: results shaped for display, in SQL only (no Python post-processing).
--
-- Applied by db/store.py `ensure_schema` after schema.sql (CREATE OR REPLACE, idempotent), as
-- `views_sql()` expands the `<table>_latest` template below over db/tables.py. Each view
-- is preceded by `-- view: name` and `-- grain: one row per ...`. "Latest" is defined once, by
-- `runs_done.recency` (1 = the latest finished done run); `run_layers_done` adds the run -> layer
-- relation (table run_layers), and every `<table>_latest` view keeps the rows of the latest done run per
-- the table's natural key (the key the dashboard, paint and the reports select by). Dissection views read
-- the runs row's threshold columns (threshold_mode 'quantile' | 'iqr', interpretable_iou,
-- interpretable_iqr), which db.threshold.Threshold writes when the run starts: no JSON is parsed here.

-- view: runs_done
-- grain: one row per done run, with recency: 1 = the latest finished (finished_at, then run_key, descending; a NULL finished_at is oldest)
CREATE OR REPLACE VIEW runs_done AS
SELECT *, row_number() OVER (ORDER BY finished_at DESC NULLS LAST, run_key DESC) AS recency
FROM runs
WHERE status = 'done';

-- view: run_layers_done
-- grain: one row per done run and layer (run_layers), with the run's columns and recency
CREATE OR REPLACE VIEW run_layers_done AS
SELECT l.run_key, l.model, l.layer, r.* EXCLUDE (run_key, model, layer)
FROM run_layers l
JOIN runs_done r USING (run_key);

-- view: latest_runs
-- grain: one row per analysis, spec entry name, model, layer and segmenter: the latest done run
CREATE OR REPLACE VIEW latest_runs AS
SELECT * EXCLUDE (recency)
FROM runs_done
QUALIFY recency = min(recency) OVER (PARTITION BY analysis, name, model, layer, segmenter);

-- view: dissections
-- grain: one row per done dissect run and layer, with its threshold mode and is_latest (latest per model, layer, segmenter and mode)
CREATE OR REPLACE VIEW dissections AS
SELECT run_key, model, layer, segmenter, threshold_mode, threshold_spec, interpretable_iou, interpretable_iqr,
       name, analysis, n_samples, seed, finished_at,
       recency = min(recency) OVER (PARTITION BY model, layer, segmenter, threshold_mode) AS is_latest
FROM run_layers_done
WHERE analysis = 'dissect';

-- view: unit_iou_latest
-- grain: one row per model, layer, segmenter, threshold mode, unit and concept: unit_iou of the latest dissection
CREATE OR REPLACE VIEW unit_iou_latest AS
SELECT i.*, d.segmenter, d.threshold_mode, d.interpretable_iou
FROM unit_iou i
JOIN dissections d USING (run_key, model, layer)
WHERE d.is_latest;

-- view: layer_null_iou_latest
-- grain: one row per model, layer, segmenter and threshold mode: layer_null_iou of the latest dissection
CREATE OR REPLACE VIEW layer_null_iou_latest AS
SELECT n.*, d.segmenter, d.threshold_mode
FROM layer_null_iou n
JOIN dissections d USING (run_key, model, layer)
WHERE d.is_latest;

-- template: <table>_latest, once per table that db/tables.py declares a `latest` key for (in declaration
-- order; db/store.py `views_sql()` expands it, table and column names from TABLES only): the rows of the
-- latest done run per that key. {runs} is run_layers_done joined on (run_key, model, layer) when the key
-- holds the layer, else runs_done joined on run_key.
-- view: {table}_latest
-- grain: one row per {grain}: {table} of the latest done run per {latest}
CREATE OR REPLACE VIEW {table}_latest AS
SELECT t.* FROM {table} t JOIN {runs} r USING ({join})
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY {partition});
-- end template

-- view: unit_labels
-- grain: one row per model, layer, segmenter, threshold mode and unit: the unit's best concept in the latest done dissection
-- beats_chance: the best concept's Benjamini-Hochberg q < 0.05 (permutation null; older runs without
-- q_value: p < 0.01 or IoU above the layer's null q99). precision = inter / above, recall = inter /
-- concept_pixels, iou_ceiling = min(above, concept_pixels) / max(above, concept_pixels): the highest IoU a
-- unit firing on that many pixels can reach with a concept of that size (about 0.01 / f in q0.99 mode for
-- a concept covering a share f > 0.01 of pixels), iou_of_ceiling = iou / iou_ceiling.
CREATE OR REPLACE VIEW unit_labels AS
WITH latest AS (
    SELECT * FROM dissections WHERE is_latest
), ranked AS (
    SELECT i.run_key, i.model, i.layer, i.unit, i.concept, c.category, i.threshold, i.iou, i.iqr,
           i.z, i.p_value, i.q_value, i.log10_p, i.inter, i.above, i.concept_pixels,
           row_number() OVER (
               PARTITION BY i.run_key, i.model, i.layer, i.unit
               ORDER BY i.iou DESC NULLS LAST, i.concept) AS rn
    FROM unit_iou i
    JOIN latest d USING (run_key, model, layer)
    LEFT JOIN concepts c ON c.segmenter = d.segmenter AND c.concept = i.concept
    WHERE i.concept <> 'none' AND c.concept_index IS DISTINCT FROM 0
)
SELECT d.model, d.layer, d.segmenter, d.threshold_mode, r.unit,
       CASE WHEN r.iou IS NOT NULL THEN r.concept END AS concept,
       CASE WHEN r.iou IS NOT NULL THEN r.category END AS category,
       r.iou, r.iqr, r.threshold, r.z, r.p_value,
       coalesce(CASE WHEN d.threshold_mode = 'iqr'
                     THEN r.iou > d.interpretable_iou AND r.iqr > d.interpretable_iqr
                     ELSE r.iou > d.interpretable_iou END, false) AS interpretable,
       coalesce(r.q_value < 0.05, r.p_value < 0.01, r.iou > n.q99, false) AS beats_chance,
       d.run_key,
       r.q_value, r.log10_p,
       CASE WHEN r.iou IS NOT NULL AND r.above > 0 THEN r.inter / r.above END AS precision,
       CASE WHEN r.iou IS NOT NULL AND r.concept_pixels > 0 THEN r.inter / r.concept_pixels END AS recall,
       CASE WHEN r.iou IS NOT NULL AND greatest(r.above, r.concept_pixels) > 0
            THEN least(r.above, r.concept_pixels) / greatest(r.above, r.concept_pixels) END AS iou_ceiling,
       CASE WHEN r.iou IS NOT NULL AND least(r.above, r.concept_pixels) > 0
            THEN r.iou * greatest(r.above, r.concept_pixels) / least(r.above, r.concept_pixels) END AS iou_of_ceiling
FROM ranked r
JOIN latest d USING (run_key, model, layer)
LEFT JOIN layer_null_iou n USING (run_key, model, layer)
WHERE r.rn = 1;

-- view: layer_summary
-- grain: one row per model, layer, segmenter and threshold mode (latest done dissection)
CREATE OR REPLACE VIEW layer_summary AS
WITH agg AS (
    SELECT model, layer, segmenter, threshold_mode, run_key,
           count(*) AS labelled_units,
           count(*) FILTER (WHERE interpretable) AS interpretable_units,
           count(*) FILTER (WHERE interpretable AND category = 'object') AS object_units,
           count(*) FILTER (WHERE interpretable AND category = 'part') AS part_units,
           count(*) FILTER (WHERE interpretable AND category = 'material') AS material_units,
           count(*) FILTER (WHERE interpretable
                            AND coalesce(category, '') NOT IN ('object', 'part', 'material')) AS other_units,
           count(DISTINCT concept) FILTER (WHERE interpretable) AS distinct_concepts,
           count(*) FILTER (WHERE beats_chance) AS beats_chance_units,
           median(iou) AS median_best_iou,
           median(iou) FILTER (WHERE interpretable) AS median_interpretable_iou
    FROM unit_labels
    GROUP BY model, layer, segmenter, threshold_mode, run_key
), absent AS (
    SELECT i.run_key, i.model, i.layer,
           count(*) AS absent_concepts,
           string_agg(i.concept, ', ' ORDER BY i.concept) AS absent_concept_names
    FROM (SELECT run_key, model, layer, concept
          FROM unit_iou
          WHERE run_key IN (SELECT run_key FROM agg)
          GROUP BY run_key, model, layer, concept
          HAVING count(iou) = 0) i
    GROUP BY i.run_key, i.model, i.layer
)
SELECT a.model, a.layer, l.layer_index, a.segmenter, a.threshold_mode,
       coalesce(l.units, a.labelled_units) AS units,
       a.labelled_units, a.interpretable_units, a.object_units, a.part_units, a.material_units,
       a.other_units, a.distinct_concepts, a.beats_chance_units,
       a.median_best_iou, a.median_interpretable_iou,
       n.median AS null_median, n.q99 AS null_q99,
       coalesce(b.absent_concepts, 0) AS absent_concepts, b.absent_concept_names,
       a.run_key
FROM agg a
LEFT JOIN layers l USING (model, layer)
LEFT JOIN layer_null_iou n USING (run_key, model, layer)
LEFT JOIN absent b USING (run_key, model, layer);

-- view: layer_concepts
-- grain: one row per model, layer, segmenter, threshold mode and concept that labels at least one unit
CREATE OR REPLACE VIEW layer_concepts AS
SELECT model, layer, segmenter, threshold_mode, concept,
       any_value(category) AS category,
       count(*) AS labelled_units,
       count(*) FILTER (WHERE interpretable) AS interpretable_units,
       max(iou) AS max_iou,
       avg(iou) FILTER (WHERE interpretable) AS mean_interpretable_iou,
       any_value(run_key) AS run_key
FROM unit_labels
WHERE concept IS NOT NULL
GROUP BY model, layer, segmenter, threshold_mode, concept;

-- view: unit_realism_latest
-- grain: one row per model, layer and unit: its Frechet realism score in the latest done realism run of the layer
CREATE OR REPLACE VIEW unit_realism_latest AS
SELECT u.model, u.layer, u.unit, u.frechet, u.n_top, u.n_real,
       rank() OVER (PARTITION BY u.model, u.layer ORDER BY u.frechet DESC) AS worst_rank,
       u.top_samples, r.seed, u.run_key
FROM unit_realism u
JOIN run_layers_done r USING (run_key, model, layer)
QUALIFY r.recency = min(r.recency) OVER (PARTITION BY u.model, u.layer);

-- view: unit_labels_realistic (a table macro: call it as `FROM unit_labels_realistic(200.0)`)
-- grain: one row per unit of unit_labels whose latest realism score is at most max_frechet (or unscored)
CREATE OR REPLACE MACRO unit_labels_realistic(max_frechet) AS TABLE
SELECT l.*
FROM unit_labels l
LEFT JOIN unit_realism_latest r USING (model, layer, unit)
WHERE r.frechet IS NULL OR r.frechet <= max_frechet;

-- view: realism_label_counts (a table macro: `FROM realism_label_counts(200.0)`)
-- grain: one row per model, layer, segmenter and threshold mode: interpretable units and concepts with and without the realism filter
CREATE OR REPLACE MACRO realism_label_counts(max_frechet) AS TABLE
SELECT l.model, l.layer, l.segmenter, l.threshold_mode,
       count(*) FILTER (WHERE l.interpretable) AS interpretable_units,
       count(*) FILTER (WHERE l.interpretable AND (r.frechet IS NULL OR r.frechet <= max_frechet)) AS realistic_units,
       count(DISTINCT l.concept) FILTER (WHERE l.interpretable) AS concepts,
       count(DISTINCT l.concept) FILTER (WHERE l.interpretable AND (r.frechet IS NULL OR r.frechet <= max_frechet))
           AS realistic_concepts,
       count(r.frechet) AS scored_units
FROM unit_labels l
LEFT JOIN unit_realism_latest r USING (model, layer, unit)
GROUP BY l.model, l.layer, l.segmenter, l.threshold_mode;

-- view: repair_latest
-- grain: one row per model, layer and unit set: the latest done repair run's Frechet distances (random: mean and spread over draws)
CREATE OR REPLACE VIEW repair_latest AS
SELECT e.model, e.layer, e.unit_set,
       any_value(e.n_units) AS n_units,
       count(*) AS draws,
       any_value(e.fd_before) AS fd_before,
       avg(e.fd_after) AS fd_after,
       CASE WHEN count(*) > 1 THEN stddev_pop(e.fd_after) END AS fd_after_std,
       avg(e.fd_after) - any_value(e.fd_before) AS fd_change,
       CASE WHEN count(*) = 1 THEN any_value(e.units) END AS units,
       e.run_key,
       any_value(e.fd_before_full) AS fd_before_full,
       avg(e.fd_after_full) AS fd_after_full,
       CASE WHEN count(*) > 1 THEN stddev_pop(e.fd_after_full) END AS fd_after_full_std
FROM repair_effects_latest e
GROUP BY e.model, e.layer, e.unit_set, e.run_key;

-- view: repair_concepts_latest
-- grain: one row per model, layer, unit set and concept: pixel fractions before and after ablation in the latest done repair run (random: mean over draws)
CREATE OR REPLACE VIEW repair_concepts_latest AS
SELECT c.model, c.layer, c.unit_set, c.concept,
       any_value(c.fraction_before) AS fraction_before,
       avg(c.fraction_after) AS fraction_after,
       CASE WHEN any_value(c.fraction_before) > 0
            THEN avg(c.fraction_after) / any_value(c.fraction_before) - 1 END AS relative_change,
       c.run_key
FROM repair_concepts c
JOIN (SELECT DISTINCT run_key, model, layer FROM repair_effects_latest) l USING (run_key, model, layer)
GROUP BY c.model, c.layer, c.unit_set, c.concept, c.run_key;

-- view: concept_coverage_latest
-- grain: one row per model, segmenter and concept: generated vs real pixel fraction and presence in the latest done coverage run
CREATE OR REPLACE VIEW concept_coverage_latest AS
WITH latest AS (
    SELECT c.* FROM concept_coverage c JOIN runs_done r USING (run_key)
    QUALIFY r.recency = min(r.recency) OVER (PARTITION BY c.model, c.segmenter)
)
SELECT c.model, c.segmenter, c.concept,
       max(c.pixel_fraction) FILTER (WHERE c.source = 'generated') AS generated_fraction,
       max(c.pixel_fraction) FILTER (WHERE c.source = 'real') AS real_fraction,
       max(c.presence) FILTER (WHERE c.source = 'generated') AS generated_presence,
       max(c.presence) FILTER (WHERE c.source = 'real') AS real_presence,
       CASE WHEN max(c.pixel_fraction) FILTER (WHERE c.source = 'real') > 0
            THEN max(c.pixel_fraction) FILTER (WHERE c.source = 'generated')
                 / max(c.pixel_fraction) FILTER (WHERE c.source = 'real') - 1 END AS fraction_change,
       max(c.n_images) FILTER (WHERE c.source = 'generated') AS n_generated,
       max(c.n_images) FILTER (WHERE c.source = 'real') AS n_real,
       c.run_key
FROM latest c
GROUP BY c.model, c.segmenter, c.concept, c.run_key;

-- view: realism_flag_pr_latest
-- grain: one row per model, layer and cut-off k: precision and recall of the worst realism scores against the flagged units, latest done repair run
CREATE OR REPLACE VIEW realism_flag_pr_latest AS
SELECT p.model, p.layer, p.k, p.frechet, p.precision, p.recall, p.n_flagged, p.run_key
FROM realism_flag_pr p
JOIN (SELECT DISTINCT run_key, model, layer FROM repair_effects_latest) l USING (run_key, model, layer);

-- view: inversion_dropped
-- grain: one row per done invert run and concept present in at least one of its images: how much of it the reconstructions drop, rank 1 = most dropped
CREATE OR REPLACE VIEW inversion_dropped AS
SELECT c.run_key, coalesce(r.name, c.run_key) AS analysis, c.model, c.segmenter, c.concept,
       count(*) AS images,
       count(*) FILTER (WHERE c.omitted) AS omitted_images,
       sum(c.photo_share * c.recall) / sum(c.photo_share) AS pixel_recall,
       1 - sum(c.photo_share * c.recall) / sum(c.photo_share) AS dropped,
       avg(c.photo_share) AS mean_photo_share,
       rank() OVER (PARTITION BY c.run_key ORDER BY 1 - sum(c.photo_share * c.recall) / sum(c.photo_share) DESC) AS rank
FROM inversion_concepts c
JOIN runs_done r USING (run_key)
WHERE c.present
GROUP BY c.run_key, coalesce(r.name, c.run_key), c.model, c.segmenter, c.concept;
