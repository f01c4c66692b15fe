"""Every analysis kind's parameters: type, bounds or allowed values, and default — checked at parse time.

Reads nothing, writes nothing (no torch import: `compute.spec` uses it while parsing a spec). A spec
key that no table here names is an unknown key ("did you mean ..."); a value of the wrong type or out
of bounds is a one-line message. The CLI turns both into exit status 2 before anything is computed or
written. The kinds are declared in the registry (`compute/analyses/__init__.py`; KINDS must list the
same kinds in the same order: tests/compute/test_registry.py). A run records its kind's defaults from
these tables in runs.params, except the registry's `unrecorded` keys (recorded only when the spec gives
them), and each run's frozen `job.config` has one field per key here, typed with the `Param`'s `type`.

    python -m compute.analyses.params            # print every kind's parameter table
    python -m compute.analyses.params dissect    # one kind
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Mapping

from ingest.checks import Choice, Float, Int, IntList, Param, Str, StrList, ThresholdParam

MAX_SAMPLES = 10_000_000  # upper bound of `samples` (and every other sample count); the README states it
MAX_SEED = 2**63 - 1  # runs.seed is a BIGINT


def _manual(v: Any) -> str | None:
    if v == "flags" or (isinstance(v, str) and v.startswith("concept:") and len(v) > len("concept:")):
        return None
    return f"got {v!r}"


THRESHOLD = ThresholdParam("q0.99", "activation threshold of each unit")  # parsed by db.threshold.Threshold

# keys every analysis has (compute.spec checks them, with the same bounds)
COMMON: dict[str, Param] = {
    "samples": Int(1000, 1, MAX_SAMPLES, "size of the sample set"),
    "seed": Int(1, 0, MAX_SEED, "seed of the sample set"),
    "threshold": THRESHOLD,
    "batch_size": Int(32, 1, 4096, "generator batch"),
}
STRUCTURE = ("kind", "name", "models", "layers", "segmenter", "concepts")  # checked by compute.spec
UPSAMPLE_MODES = ("pnas", "iclr", "align_corners")  # compute.analyses.quantiles.upsample's grids
DISSECT_METHODS = ("one-pass", "two-pass")  # compute.analyses.dissect

_QUANTILES: dict[str, Param] = {
    "batch_size": Int(32, 1, 4096, "generator batch"),
    "topk": Int(20, 1, 1000, "top-activating samples kept per unit"),
    "upsample": Choice("pnas", UPSAMPLE_MODES, "how featuremaps are upsampled to the masks"),
    "parts": Choice("none", ("none", "quad"), "quadrant part concepts"),
    "iqr_threshold": Choice("unit", ("unit", "unit_concept"), "one IQR threshold per unit or per (unit, concept)"),
    "null_block": Int(8, 2, 64, "permutation null: maps re-paired with other images' masks inside blocks"),
}
_REAL: dict[str, Param] = {
    "real": Str(None, "real images: a directory / file of images, or \"village\" (rendered scenes)"),
    "real_samples": Int(2000, 1, MAX_SAMPLES, "real images compared"),
    "real_seed": Int(0, 0, MAX_SEED, "seed of the real images drawn"),
    "real_exclude": StrList((), "concepts whose real images are left out"),
    "features": Choice("segmenter", ("segmenter", "inception"), "feature extractor of the Frechet distance"),
    "inception_weights": Str(None, "path of the Inception-v3 FID weights"),
    "batch_size": Int(64, 1, 4096, "generator batch"),
}

KINDS: dict[str, dict[str, Param]] = {
    "quantiles": dict(_QUANTILES),
    "dissect": {
        **_QUANTILES,
        "holdout_samples": Int(None, 1, MAX_SAMPLES, "IQR held-out set size (default max(64, samples // 2))"),
        "method": Choice(None, DISSECT_METHODS,
                         "one-pass: one generator + segmenter pass, thresholds = the candidate edge nearest rank q "
                         "(q<level> thresholds only); two-pass: a quantile pass, then the counting pass at the exact "
                         "quantile (default two-pass: faster on CPU as measured; one-pass is opt-in)"),
    },
    "ace": {
        "epochs": Int(10, 1, 100_000),
        "steps_per_epoch": Int(10, 1, 100_000),
        "batch": Int(32, 2, 65_536, "locations per optimisation step"),
        "lr": Float(0.03, 0, 10, lo_open=True, help="Adam learning rate"),
        "l2": Float(0.1, 0, 1e6, help="lambda of the penalty on alpha"),
        "presence": Float(0.1, 0, 1, lo_open=True, help="share of a location's block the concept must cover"),
        "probe": Int(4, 1, 4096, "absent locations per sample tried as insertion candidates"),
        "eval_items": Int(64, 1, 1_000_000, "fixed locations on which delta is evaluated"),
        "batch_size": Int(32, 1, 4096, "generator batch of the pool pass"),
        "penalty": Choice("l2", ("l2", "l2sq"), "penalty on alpha: l2 norm or its square"),
    },
    "ablate": {
        "n_max": Int(30, 0, 100_000, "largest ablated set"),
        "draws": Int(5, 1, 10_000, "random rankings drawn"),
        "effect_units": Int(20, 1, 100_000),
        "insert_locations": Int(2, 1, 10_000),
        "chunk": Int(64, 1, 65_536),
        "batch_size": Int(32, 1, 4096, "generator batch"),
        "n_units": IntList(0, 100_000, help="explicit set sizes (default 0..n_max)"),
    },
    "insert": {
        "units": Int(20, 1, 100_000, "inserted units"),
        "radius": Int(0, 0, 64),
        "neighbourhood": Int(1, 0, 64),
        "chunk": Int(256, 1, 65_536),
        "batch_size": Int(32, 1, 4096, "generator batch"),
    },
    "trace": {
        "units": Int(20, 1, 100_000, "inserted units"),
        "radius": Int(0, 0, 64),
        "batch_size": Int(32, 1, 4096, "generator batch"),
        "location": IntList(0, None, 2, "featuremap location [y, x] of the insertion"),
    },
    "realism": {
        **_REAL,
        "top_fraction": Float(0.05, 0, 1, lo_open=True, help="share of samples that are a unit's top images"),
        "presence_share": Float(0.005, 0, 1, help="pixel share for a concept to count as present"),
        "strip": Int(8, 0, 64, "top images kept per unit for the dashboard strip"),
    },
    "repair": {
        **_REAL,
        "n_units": Int(20, 1, 100_000, "units per ablated set"),
        "draws": Int(5, 0, 10_000, "random sets drawn"),
        "manual": Param('"flags" or "concept:<name>"', _manual, "flags", "the hand-picked set", type=str),
        "manual_min_iou": Float(0.04, 0, 1, help="IoU cut of manual = \"concept:<name>\""),
    },
    "invert": {
        "images": Str("village", "\"village\" (rendered scenes) or a folder of PNG / JPEG photos"),
        "layer": Str("layer4", "layer whose featuremap is optimised after z"),
        "z_steps": Int(150, 0, 100_000, "Adam steps on z"),
        "layer_steps": Int(250, 0, 100_000, "Adam steps on the layer's featuremap"),
        "perceptual": Float(0.1, 0, 1000, help="weight of the segmenter-feature term"),
        "reg": Float(0.01, 0, 1000, help="weight keeping the layer's features near the z step's"),
        "presence_share": Float(0.005, 0, 1, help="pixel share for a concept to count as present"),
        "omit_recall": Float(0.5, 0, 1, help="a present concept is omitted below this recall"),
        "batch_size": Int(16, 1, 4096, "images inverted together"),
        "encoder": Str(None, "layer-wise encoder .safetensors (default: the model's bundled one)"),
    },
    "unit_roles": {
        "k_max": Int(8, 1, 4096, "largest set of units ablated together in the curves"),
        "draws": Int(20, 1, 10_000, "random unit sets averaged per k"),
        "labelled": Str(None, "held-out images with labels: a folder of class-named subfolders "
                              "(default for a village classifier: the balanced held-out village split)"),
        "batch_size": Int(250, 1, 4096, "classifier batch"),
    },
}


def table(kind: str) -> dict[str, Param]:
    """Every value-checked key of an analysis kind: the common ones, then the kind's own."""
    return {**COMMON, **KINDS[kind]}


def known_keys(kind: str) -> list[str]:
    """Every key an analysis of this kind may carry."""
    return [*STRUCTURE, *table(kind)]


def defaults(kind: str) -> dict[str, Any]:
    """The kind's own parameters' defaults (None: computed by the analysis, e.g. holdout_samples)."""
    return {k: p.default for k, p in KINDS[kind].items()}


def check(kind: str, entry: Mapping[str, Any], err: Callable[[str | None, str], Exception]) -> None:
    """Raise err(key, message) for the first unknown key or bad value of an analysis entry."""
    from db.errors import did_you_mean

    allowed = table(kind)
    known = known_keys(kind)
    for key, value in entry.items():
        if key not in allowed and key not in STRUCTURE:
            other = [k for k, t in KINDS.items() if key in t and k != kind]
            hint = did_you_mean(key, known)
            if not hint and other:
                hint = f"; {key!r} is a parameter of {', '.join(other)} analyses"
            raise err(key, f"unknown key for a {kind} analysis{hint}")
        if key in allowed and key not in COMMON:  # compute.spec checks the common keys itself
            problem = allowed[key].validate(value)
            if problem is not None:
                raise err(key, problem)


def describe(kind: str) -> str:
    """The kind's parameter table as text (one line per key)."""
    lines = [f"[{kind}]"]
    for k, p in table(kind).items():
        lines.append(f"  {k:<18} default {p.default!r:<12} {p.accepts}" + (f"  ({p.help})" if p.help else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    for k in (sys.argv[1:] or list(KINDS)):
        if k not in KINDS:
            print(f"error: unknown kind {k!r}; kinds: {', '.join(KINDS)}", file=sys.stderr)
            sys.exit(2)
        print(describe(k))
