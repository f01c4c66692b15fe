"""Two-process race for test_concurrency: a writer publishing alternating row sets, a reader polling.

    python -m tests.db.race_worker writer STORE SECONDS OUT.json
    python -m tests.db.race_worker reader STORE SECONDS OUT.json

The writer republishes run RUN_KEY with set A, then B, then A, ... (each `publish_many` one short
transaction that also marks the run done). The reader opens a short read-only connection per read
(`db.store.read`, retrying on the lock) and records which complete set it saw, or what was wrong.
"""
from __future__ import annotations

import json
import random
import sys
import time
from typing import Any

from db import store

RUN_KEY, MODEL, LAYER, UNITS = "race", "race-gan", "layer1", 64
QS = (0.1, 0.5, 0.9, 0.99)


def row_sets() -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Two complete results of the run that differ in every table and in row counts."""
    out = {}
    for name, units, offset in (("A", UNITS, 0.0), ("B", UNITS // 2, 100.0)):
        out[name] = {
            "unit_quantiles": [{"model": MODEL, "layer": LAYER, "unit": u, "q": q, "value": offset + u + q}
                               for u in range(units) for q in QS],
            "unit_topk": [{"model": MODEL, "layer": LAYER, "unit": u, "rank": r, "seed": 1, "sample": r,
                           "value": offset + 10 - r} for u in range(units) for r in (1, 2, 3)],
        }
    return out


SNAPSHOT = """
SELECT (SELECT count(*) FROM unit_quantiles WHERE run_key = $k) AS nq,
       (SELECT round(sum(value), 6) FROM unit_quantiles WHERE run_key = $k) AS sq,
       (SELECT count(*) FROM unit_topk WHERE run_key = $k) AS nt,
       (SELECT round(sum(value), 6) FROM unit_topk WHERE run_key = $k) AS st,
       (SELECT status FROM runs WHERE run_key = $k) AS status
"""


def expected() -> dict[str, list[Any]]:
    out = {}
    for name, tables in row_sets().items():
        q, t = tables["unit_quantiles"], tables["unit_topk"]
        out[name] = [len(q), round(sum(r["value"] for r in q), 6), len(t), round(sum(r["value"] for r in t), 6),
                     "done"]
    return out


def setup(path: str) -> None:
    store.upsert_dimension("models", [{"model": MODEL, "family": "progan"}], path)
    store.upsert_dimension("layers", [{"model": MODEL, "layer": LAYER, "layer_index": 0, "units": UNITS}], path)
    store.start_run(RUN_KEY, "quantiles", model=MODEL, layer=LAYER, path=path)
    store.publish_many(RUN_KEY, row_sets()["A"], {"status": "done", "seconds": 0.0}, path)


def writer(path: str, seconds: float) -> dict[str, Any]:
    sets = row_sets()
    deadline, i, durations, errors = time.monotonic() + seconds, 0, [], []
    while time.monotonic() < deadline:
        i += 1
        t0 = time.monotonic()
        try:
            store.publish_many(RUN_KEY, sets["B" if i % 2 else "A"], {"status": "done", "seconds": float(i)}, path)
        except Exception as e:  # recorded, the test fails on any
            errors.append(f"{type(e).__name__}: {e}")
        durations.append(time.monotonic() - t0)
    return {"publishes": i, "errors": errors, "max_publish_s": max(durations)}


def reader(path: str, seconds: float) -> dict[str, Any]:
    exp = expected()
    seen = {"A": 0, "B": 0}
    bad, errors, durations = [], [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        try:
            got = list(store.read(SNAPSHOT, {"k": RUN_KEY}, path=path).row(0))
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
            continue
        durations.append(time.monotonic() - t0)
        match = [name for name, want in exp.items() if got == want]
        if match:
            seen[match[0]] += 1
        else:
            bad.append(got)
        time.sleep(random.uniform(0, 0.005))
    return {"reads": sum(seen.values()) + len(bad), "seen": seen, "bad": bad[:5], "n_bad": len(bad),
            "errors": errors[:5], "n_errors": len(errors), "max_read_s": max(durations, default=0.0)}


if __name__ == "__main__":
    role, path, seconds, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    result = (writer if role == "writer" else reader)(path, seconds)
    with open(out, "w") as f:
        json.dump(result, f)
