-- Saved example queries of the dashboard's SQL page (each runs on the store schema; tests run them all).
-- Each query is preceded by `-- example: title`. They run through db.guard: read-only, one SELECT.

-- example: Interpretable units per layer, by category
SELECT model, layer, threshold_mode, units, interpretable_units, object_units, part_units, material_units,
       distinct_concepts, round(median_best_iou, 3) AS median_best_iou
FROM layer_summary
ORDER BY model, layer_index, threshold_mode;

-- example: Top 20 units by IoU (best label)
SELECT model, layer, unit, concept, category, round(iou, 4) AS iou, p_value, round(z, 1) AS z
FROM unit_labels
WHERE threshold_mode = 'quantile' AND iou IS NOT NULL
ORDER BY iou DESC
LIMIT 20;

-- example: Units whose IoU for tree > 0.1 and whose ablation removes trees (alpha > 0.5)
SELECT i.model, i.layer, i.unit, round(i.iou, 4) AS tree_iou, round(a.alpha, 3) AS tree_alpha
FROM unit_iou i
JOIN dissections d USING (run_key, model, layer)
JOIN ace_alpha a ON a.model = i.model AND a.layer = i.layer AND a.unit = i.unit AND a.concept = 'tree'
WHERE d.is_latest AND d.threshold_mode = 'quantile' AND i.concept = 'tree' AND i.iou > 0.1 AND a.alpha > 0.5
ORDER BY a.alpha DESC, i.iou DESC;

-- example: Concepts that label interpretable units in layer4 but not in layer8
SELECT model, concept, category, interpretable_units AS units_in_layer4
FROM layer_concepts
WHERE layer = 'layer4' AND interpretable_units > 0 AND threshold_mode = 'quantile'
  AND concept NOT IN (SELECT concept FROM layer_concepts l8
                      WHERE l8.layer = 'layer8' AND l8.interpretable_units > 0 AND l8.model = layer_concepts.model
                        AND l8.threshold_mode = 'quantile')
ORDER BY model, interpretable_units DESC;

-- example: Flagged units with their labels
SELECT f.model, f.layer, f.unit, f.flag, f.note, l.concept AS label, round(l.iou, 4) AS iou, f.created_at
FROM unit_flags f
LEFT JOIN unit_labels l ON l.model = f.model AND l.layer = f.layer AND l.unit = f.unit
     AND l.threshold_mode = 'quantile'
ORDER BY f.created_at DESC;

-- example: Runs by analysis and status, with compute time
SELECT analysis, status, count(*) AS runs, round(sum(seconds), 1) AS seconds, max(finished_at) AS last_finished
FROM runs
GROUP BY analysis, status
ORDER BY analysis, status;

-- example: Failed runs and their errors
SELECT analysis, name, model, layer, started_at, error FROM runs WHERE status = 'failed' ORDER BY started_at DESC;

-- example: The store's tables and views, documented
SELECT table_name AS name, 'table' AS kind, estimated_size AS rows, comment
FROM duckdb_tables() WHERE schema_name = 'main'
UNION ALL
SELECT view_name, 'view', NULL, comment FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal
ORDER BY kind, name;
