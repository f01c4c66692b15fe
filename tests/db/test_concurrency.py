"""A dashboard-style reader process and a publishing writer process run at once: the reader never sees
an error, and always sees either the old or the new complete set of rows (never a mix, never empty)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.db import race_worker

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 5.0


def test_reader_and_writer_processes(tmp_path) -> None:
    path = str(tmp_path / "race.duckdb")
    race_worker.setup(path)
    procs = {}
    for role in ("writer", "reader"):
        out = tmp_path / f"{role}.json"
        procs[role] = (subprocess.Popen([sys.executable, "-m", "tests.db.race_worker", role, path, str(SECONDS),
                                         str(out)], cwd=ROOT), out)
    for role, (p, _) in procs.items():
        assert p.wait(timeout=120) == 0, role
    w = json.loads(procs["writer"][1].read_text())
    r = json.loads(procs["reader"][1].read_text())
    print(f"writer: {w['publishes']} publishes (slowest {w['max_publish_s']:.3f} s); reader: {r['reads']} reads "
          f"{r['seen']} (slowest {r['max_read_s']:.3f} s)")
    assert w["errors"] == []
    assert r["n_errors"] == 0, r["errors"]
    assert r["n_bad"] == 0, r["bad"]
    assert w["publishes"] >= 4 and r["reads"] >= 10
    assert r["seen"]["A"] > 0 and r["seen"]["B"] > 0  # the two really interleaved
