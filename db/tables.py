"""Table declarations: name, grain sentence, key and typed columns of every table in the store.

Reads nothing at import; `parse_schema()` reads `db/schema.sql` (the source of truth). The test
`tests/db/test_tables.py` checks that `TABLES` and `schema.sql` agree exactly (names, column order,
types, NOT NULL, grain sentence, key). `db.store.publish` validates rows against `TABLES`.

Column specs below are written `name TYPE` with a trailing `!` for NOT NULL. A result table's `latest`
names the natural key its `<table>_latest` view keeps the latest done run per (the key the dashboard,
paint and the reports select by); db/store.py `views_sql()` expands views.sql's template over those tables.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SCHEMA_SQL = Path(__file__).with_name("schema.sql")
VIEWS_SQL = Path(__file__).with_name("views.sql")
AUDITS_SQL = Path(__file__).with_name("audits.sql")

DIMENSIONS = ("models", "layers", "segmenters", "concepts")
RUN_BOOKKEEPING = ("runs", "run_layers")  # written by the store itself (start_run, publish), not by analyses


@dataclass(frozen=True)
class Table:
    name: str
    grain: str  # "one row per ..."
    key: tuple[str, ...]  # columns unique together (the grain)
    columns: tuple[tuple[str, str], ...]  # (name, DuckDB type), in schema order
    required: tuple[str, ...] = ()  # NOT NULL columns
    latest: tuple[str, ...] = ()  # a result table's `<name>_latest` view: the latest done run per these columns

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    @property
    def types(self) -> dict[str, str]:
        return dict(self.columns)

    @property
    def per_run(self) -> bool:
        """A result table: rows belong to one run and are replaced by `publish`."""
        return "run_key" in self.names and self.name not in RUN_BOOKKEEPING


def _t(name: str, grain: str, key: str, cols: str, latest: str = "") -> Table:
    columns, required = [], []
    for spec in cols.split(","):
        col, typ = spec.split()
        if typ.endswith("!"):
            typ = typ[:-1]
            required.append(col)
        columns.append((col, typ))
    return Table(name, grain, _names(key), tuple(columns), tuple(required), _names(latest))


def _names(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


_RUN = "run_key VARCHAR!, model VARCHAR!, layer VARCHAR!"

TABLES: dict[str, Table] = {t.name: t for t in (
    _t("store_meta", "one row per store setting (the schema fingerprint, ...)", "key",
       "key VARCHAR!, value VARCHAR"),
    _t("models", "one row per model, that is per generator checkpoint (each file of a checkpoint glob "
       "is its own model)", "model",
       "model VARCHAR!, family VARCHAR!, dataset VARCHAR, checkpoint VARCHAR, checkpoint_sha256 VARCHAR, "
       "resolution INTEGER, z_dim INTEGER, training_step BIGINT, model_group VARCHAR, registered_at TIMESTAMP, "
       "role VARCHAR"),
    _t("layers", "one row per dissectable layer of a model", "model, layer",
       "model VARCHAR!, layer VARCHAR!, layer_index INTEGER!, units INTEGER!, height INTEGER, width INTEGER"),
    _t("segmenters", "one row per segmenter", "segmenter",
       "segmenter VARCHAR!, family VARCHAR!, checkpoint VARCHAR, checkpoint_sha256 VARCHAR, "
       "resolution INTEGER, registered_at TIMESTAMP"),
    _t("concepts", "one row per concept a segmenter labels (its \"none\" channel excluded)", "segmenter, concept",
       "segmenter VARCHAR!, concept VARCHAR!, category VARCHAR!, concept_index INTEGER"),
    _t("runs", "one row per run, that is per analysis of one model with one set of canonical parameters",
       "run_key",
       "run_key VARCHAR!, analysis VARCHAR!, name VARCHAR, model VARCHAR, layer VARCHAR, segmenter VARCHAR, "
       "n_samples INTEGER, seed BIGINT, params VARCHAR, code_version VARCHAR, status VARCHAR!, "
       "started_at TIMESTAMP!, finished_at TIMESTAMP, seconds DOUBLE, error VARCHAR, device VARCHAR, "
       "threshold_spec VARCHAR, threshold_mode VARCHAR, threshold_level DOUBLE, interpretable_iou DOUBLE, "
       "interpretable_iqr DOUBLE"),
    _t("run_layers", "one row per layer of a run (the layers its result rows cover), written with the results "
       "when they are published", "run_key, layer", "run_key VARCHAR!, model VARCHAR!, layer VARCHAR!"),
    _t("unit_quantiles", "one row per unit and quantile level of a layer in a run",
       "run_key, model, layer, unit, q", f"{_RUN}, unit INTEGER!, q DOUBLE!, value DOUBLE!",
       latest="model, layer"),
    _t("unit_topk", "one row per unit and rank among the samples that activate it most, in a run",
       "run_key, model, layer, unit, rank",
       f"{_RUN}, unit INTEGER!, rank INTEGER!, seed BIGINT!, sample INTEGER!, value DOUBLE!",
       latest="model, layer"),
    _t("unit_iou", "one row per unit and concept of a layer in a dissection run",
       "run_key, model, layer, unit, concept",
       f"{_RUN}, unit INTEGER!, concept VARCHAR!, threshold DOUBLE, iou DOUBLE, inter DOUBLE, above DOUBLE, "
       "concept_pixels DOUBLE, iqr DOUBLE, null_mean DOUBLE, null_std DOUBLE, z DOUBLE, p_value DOUBLE, "
       "q_value DOUBLE, log10_p DOUBLE"),
    _t("layer_null_iou", "one row per layer of a dissection run: over the layer's units, the null's expected best "
       "IoU (max over concepts of null_mean)",
       "run_key, model, layer",
       f"{_RUN}, method VARCHAR!, n_values INTEGER!, mean DOUBLE, std DOUBLE, median DOUBLE, q90 DOUBLE, "
       "q95 DOUBLE, q99 DOUBLE, max DOUBLE"),
    _t("ace_alpha", "one row per concept and unit of an ACE optimisation run: the final alpha",
       "run_key, model, layer, concept, unit",
       f"{_RUN}, concept VARCHAR!, unit INTEGER!, alpha DOUBLE!, alpha_init DOUBLE",
       latest="model, layer, concept"),
    _t("ace_epochs", "one row per concept and epoch of an ACE optimisation run: the objective's trajectory",
       "run_key, model, layer, concept, epoch",
       f"{_RUN}, concept VARCHAR!, epoch INTEGER!, loss DOUBLE, effect DOUBLE, alpha_l1 DOUBLE, alpha_l2 DOUBLE",
       latest="model, layer, concept"),
    _t("ace_trajectory", "one row per concept, epoch and unit of an ACE optimisation run: alpha along the "
       "optimisation", "run_key, model, layer, concept, epoch, unit",
       f"{_RUN}, concept VARCHAR!, epoch INTEGER!, unit INTEGER!, alpha DOUBLE!",
       latest="model, layer, concept"),
    _t("ablation_curves", "one row per concept, ranking and number of ablated units of an ablation run",
       "run_key, model, layer, concept, ranking, n_units",
       f"{_RUN}, concept VARCHAR!, ranking VARCHAR!, n_units INTEGER!, remaining DOUBLE!, remaining_std DOUBLE, "
       "draws INTEGER!, baseline_pixels DOUBLE",
       latest="model, layer, concept"),
    _t("insertion_contexts", "one row per inserted concept and context concept of an insertion run",
       "run_key, model, layer, concept, context",
       f"{_RUN}, concept VARCHAR!, context VARCHAR!, locations BIGINT!, effect DOUBLE, effect_std DOUBLE",
       latest="model, layer, concept"),
    _t("insertion_maps", "one row per inserted concept, sample and featuremap location of an insertion run",
       "run_key, model, layer, concept, seed, sample, y, x",
       f"{_RUN}, concept VARCHAR!, seed BIGINT!, sample INTEGER!, y INTEGER!, x INTEGER!, context VARCHAR, "
       "effect DOUBLE!",
       latest="model, layer, concept"),
    _t("trace_effects", "one row per inserted concept, later layer and location of a tracing run",
       "run_key, model, layer, concept, target_layer, y, x",
       f"{_RUN}, concept VARCHAR!, target_layer VARCHAR!, y INTEGER!, x INTEGER!, effect DOUBLE!",
       latest="model, layer, concept"),
    _t("causal_effects", "one row per concept and named unit set of a causal-effect run",
       "run_key, model, layer, concept, unit_set",
       f"{_RUN}, concept VARCHAR!, unit_set VARCHAR!, n_units INTEGER!, units VARCHAR, ace DOUBLE, "
       "ablation DOUBLE, insertion DOUBLE",
       latest="model, layer, concept"),
    _t("unit_flags", "one row per unit and flag set by hand in the dashboard", "model, layer, unit, flag",
       "model VARCHAR!, layer VARCHAR!, unit INTEGER!, flag VARCHAR!, note VARCHAR, created_at TIMESTAMP!"),
    _t("benchmarks", "one row per benchmark and metric (the latest measurement)", "bench, metric",
       "bench VARCHAR!, metric VARCHAR!, value DOUBLE!, unit VARCHAR, params VARCHAR, created_at TIMESTAMP!"),
    _t("unit_realism", "one row per unit of a layer in a realism run: the Frechet distance of its top images "
       "to real images", "run_key, model, layer, unit",
       f"{_RUN}, unit INTEGER!, frechet DOUBLE!, n_top INTEGER!, n_real INTEGER!, top_samples VARCHAR"),
    _t("repair_effects", "one row per unit set and draw of a repair run: the Frechet distance before and after "
       "ablating the set", "run_key, model, layer, unit_set, draw",
       f"{_RUN}, unit_set VARCHAR!, draw INTEGER!, n_units INTEGER!, units VARCHAR, fd_before DOUBLE!, "
       "fd_after DOUBLE!, fd_before_full DOUBLE, fd_after_full DOUBLE",
       latest="model, layer"),
    _t("repair_concepts", "one row per unit set, draw and concept of a repair run: the concept's pixel fraction "
       "before and after ablating the set", "run_key, model, layer, unit_set, draw, concept",
       f"{_RUN}, unit_set VARCHAR!, draw INTEGER!, concept VARCHAR!, fraction_before DOUBLE!, "
       "fraction_after DOUBLE!"),
    _t("realism_flag_pr", "one row per layer and cut-off k of a repair run: the k worst realism scores as a "
       "predictor of the flagged units", "run_key, model, layer, k",
       f"{_RUN}, k INTEGER!, frechet DOUBLE!, precision DOUBLE!, recall DOUBLE!, n_flagged INTEGER!"),
    _t("concept_coverage", "one row per concept and image source of a coverage run: how much of it generated "
       "and real images hold", "run_key, concept, source",
       "run_key VARCHAR!, model VARCHAR!, segmenter VARCHAR!, concept VARCHAR!, source VARCHAR!, "
       "pixel_fraction DOUBLE!, presence DOUBLE!, n_images INTEGER!"),
    _t("class_unit_effects", "one row per unit and class of a classifier layer in a unit_roles run: the class's "
       "held-out accuracy with that one unit ablated", "run_key, model, layer, unit, class",
       f"{_RUN}, unit INTEGER!, class VARCHAR!, class_index INTEGER!, images INTEGER!, rank INTEGER!, "
       "accuracy DOUBLE!, accuracy_drop DOUBLE!, true_logit DOUBLE!, logit_drop DOUBLE!, true_prob DOUBLE!, "
       "prob_drop DOUBLE!",
       latest="model, layer"),
    _t("class_ablation_curves", "one row per class, ranking and set size k of a classifier layer in a unit_roles "
       "run: accuracies with k units ablated together", "run_key, model, layer, class, ranking, k",
       f"{_RUN}, class VARCHAR!, ranking VARCHAR!, k INTEGER!, draws INTEGER!, accuracy DOUBLE!, "
       "other_accuracy DOUBLE!, accuracy_std DOUBLE, other_accuracy_std DOUBLE, units VARCHAR",
       latest="model, layer"),
    _t("inversions", "one row per model and image of an invert run: how closely the generator reconstructs the "
       "image", "run_key, model, image",
       f"{_RUN}, image VARCHAR!, image_sha256 VARCHAR!, path VARCHAR, village_seed BIGINT, width INTEGER!, "
       "height INTEGER!, psnr DOUBLE!, psnr_z DOUBLE!, psnr_encoder DOUBLE!, seconds DOUBLE!, n_omitted INTEGER!, "
       "omitted VARCHAR",
       latest="model, image"),
    _t("inversion_concepts", "one row per model, image and concept of an invert run (concepts labelled in the "
       "image or its reconstruction): pixel shares in both and recall", "run_key, model, image, concept",
       "run_key VARCHAR!, model VARCHAR!, segmenter VARCHAR!, image VARCHAR!, concept VARCHAR!, "
       "photo_share DOUBLE!, recon_share DOUBLE!, recall DOUBLE, present BOOLEAN!, omitted BOOLEAN!",
       latest="model, segmenter, image"),
)}

RESULT_TABLES: tuple[str, ...] = tuple(n for n, t in TABLES.items() if t.per_run)
# result tables whose `<name>_latest` view views.sql's template writes (the others' are hand-written there)
LATEST_TABLES: tuple[str, ...] = tuple(n for n in RESULT_TABLES if TABLES[n].latest)


def result_tables_with(columns: tuple[str, ...]) -> tuple[str, ...]:
    """The result tables that have every one of `columns`, in declaration order (the audits' table lists)."""
    return tuple(n for n in RESULT_TABLES if set(columns) <= set(TABLES[n].names))


# --- schema.sql parsing (shared by the store, for column comments, and by the agreement test) ---

@dataclass(frozen=True)
class ParsedTable:
    name: str
    grain: str
    key: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]
    required: tuple[str, ...]
    comments: dict[str, str]  # column -> its `--` comment ("" when missing)
    primary_key: tuple[str, ...]


_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \($")
_COLUMN = re.compile(r"^\s*(\w+)\s+([A-Z]+)\b([^-]*?),?\s*(?:--\s*(.*))?$")
_PK = re.compile(r"^\s*PRIMARY KEY \(([^)]*)\)")


def parse_schema(text: str | None = None) -> dict[str, ParsedTable]:
    """Tables of schema.sql with their `-- grain:` / `-- key:` lines and column comments."""
    text = SCHEMA_SQL.read_text() if text is None else text
    out: dict[str, ParsedTable] = {}
    lines = text.splitlines()
    grain, key = "", ()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("-- grain:"):
            grain = line.removeprefix("-- grain:").strip()
        elif line.startswith("-- key:"):
            key = tuple(k.strip() for k in line.removeprefix("-- key:").split(","))
        elif m := _CREATE.match(line.strip()):
            name = m.group(1)
            columns, required, comments, pk = [], [], {}, []
            i += 1
            while not lines[i].strip().startswith(");"):
                body = lines[i]
                if p := _PK.match(body):
                    pk = [c.strip() for c in p.group(1).split(",")]
                elif c := _COLUMN.match(body):
                    col, typ, rest, comment = c.groups()
                    columns.append((col, typ))
                    comments[col] = (comment or "").strip()
                    if "NOT NULL" in rest or "PRIMARY KEY" in rest:
                        required.append(col)
                    if "PRIMARY KEY" in rest:
                        pk = [col]
                i += 1
            out[name] = ParsedTable(name, grain, key, tuple(columns), tuple(required), comments, tuple(pk))
            grain, key = "", ()
        i += 1
    return out
