"""Timing: on the fixture store each page's first content (every query and chart, images excluded: they
come last) renders within 1 s with cold query caches in a warm process (a running dashboard has its
modules imported): the better of up to two cold runs per page. Times go to test-output/dashboard/timings.json."""
from __future__ import annotations

import json
import time

import streamlit as st

from tests.dashboard.apptest import PAGES, assert_ok, open_page

LIMIT_S = 1.0
TIMED = [p for p in PAGES if p != "model_cards"]


def test_first_content_within_a_second(dash_store, monkeypatch, output_dir):
    monkeypatch.setenv("GANDISSECT_DASHBOARD_IMAGES", "0")
    at = open_page("overview")  # warm-up: imports, and the AppTest machinery itself
    for page in TIMED:
        at.switch_page(f"app_pages/{page}.py").run()
        assert_ok(at)
    trials: dict[str, list[float]] = {p: [] for p in TIMED}
    for trial in range(2):  # a second cold-cache run for pages over the limit (the CPU is shared)
        for page in [p for p in TIMED if trial == 0 or min(trials[p]) > LIMIT_S]:
            st.cache_data.clear()
            at.switch_page(f"app_pages/{page}.py")
            t0 = time.perf_counter()
            at.run()
            trials[page].append(round(time.perf_counter() - t0, 3))
            assert_ok(at)
    times = {p: min(t) for p, t in trials.items()}
    path = output_dir / "timings.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data["apptest_cold_cache_s"] = times
    data["apptest_cold_cache_trials_s"] = trials
    path.write_text(json.dumps(data, indent=1))
    print("first content (cold caches):", times)
    slow = {p: t for p, t in times.items() if t > LIMIT_S}
    assert not slow, f"pages slower than {LIMIT_S} s: {slow}"
