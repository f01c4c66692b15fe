"""A real browser: Debian's chromium (driven by Playwright, never a downloaded browser) opens the app
served by `streamlit run` on a free localhost port over the fixture store (with tiny-gan, a tiny
random-weight generator, so images render), clicks through Units to a unit page, checks the permalink
reopens it, and saves screenshots under test-output/dashboard/. Timings are appended to
test-output/dashboard/timings.json."""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.dashboard.conftest import TINY

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "dashboard" / "app.py"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(),
                                 reason="Debian's chromium is not installed at /usr/bin/chromium "
                                        "(apt-get install chromium; .ci/run does it)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(db: Path, log_path: Path) -> Iterator[str]:
    """`streamlit run dashboard/app.py` on 127.0.0.1 and a free port over the store `db`; yields its URL."""
    port = free_port()
    env = dict(os.environ, GANDISSECT_DB=str(db))
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", "127.0.0.1",
                             "--server.port", str(port), "--server.headless", "true",
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "streamlit did not start within 60 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def server(dash_store, output_dir):
    """The dashboard over the fixture store; yields its URL."""
    with streamlit_server(dash_store, output_dir / "streamlit.log") as url:
        yield url


def wait_idle(page, quiet_s: float = 0.75, timeout_s: float = 60) -> None:
    """Until the app's "running" indicator has been absent for `quiet_s`."""
    deadline, quiet_since = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        if page.locator("[data-testid='stStatusWidget']").count():
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.1)
    raise AssertionError("the app kept running")


def no_exception(page) -> None:
    errors = page.locator("[data-testid='stException']").all_inner_texts()
    assert not errors, errors


def test_click_through_units_to_a_unit_page(server, output_dir):
    from playwright.sync_api import sync_playwright

    timings: dict[str, float] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            t0 = time.perf_counter()
            page.goto(server)
            page.locator("h1", has_text="Overview").wait_for(timeout=60_000)
            timings["overview_first_content_s"] = time.perf_counter() - t0
            page.get_by_text("Interpretable units per layer").wait_for()
            no_exception(page)

            t0 = time.perf_counter()
            page.get_by_role("link", name="Units", exact=True).click()
            page.get_by_text("open unit").first.wait_for(timeout=30_000)
            timings["units_first_card_s"] = time.perf_counter() - t0
            page.locator("[data-testid='stImage'] img").first.wait_for(timeout=60_000)
            timings["units_first_image_s"] = time.perf_counter() - t0
            wait_idle(page)
            no_exception(page)
            assert page.locator("[data-testid='stImage'] img").count() == 8  # a strip on every card
            page.screenshot(path=str(output_dir / "units.png"), full_page=True)

            link = page.get_by_role("link", name=re.compile(r"^open unit \d+$")).first
            unit = int(link.inner_text().split()[-1])
            t0 = time.perf_counter()
            link.click()
            page.locator("h1", has_text=f"{TINY} · ").filter(has_text=f"unit {unit}").wait_for(timeout=30_000)
            timings["unit_first_content_s"] = time.perf_counter() - t0
            page.get_by_text("IoU with every concept").wait_for()
            page.locator("[data-testid='stImage'] img").first.wait_for(timeout=60_000)
            wait_idle(page)
            no_exception(page)
            assert f"unit={unit}" in page.url and f"model={TINY}" in page.url
            assert page.get_by_text("Activation quantiles").is_visible()
            page.screenshot(path=str(output_dir / "unit.png"), full_page=True)

            again = browser.new_page(viewport={"width": 1400, "height": 1000})  # the permalink, fresh
            again.goto(page.url)
            again.locator("h1", has_text=f"unit {unit}").wait_for(timeout=60_000)
            wait_idle(again)
            no_exception(again)
            assert again.locator("h1").first.inner_text().strip() == page.locator("h1").first.inner_text().strip()
        finally:
            browser.close()
    path = output_dir / "timings.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data["browser_s"] = {k: round(v, 3) for k, v in timings.items()}
    path.write_text(json.dumps(data, indent=1))
    print("browser timings:", data["browser_s"])


def test_sql_downloads_are_written_on_click(server, dash_store, tmp_path):
    """The SQL page's CSV and Parquet are generated when their button is clicked (deferred data, not
    written on every rerun): each download holds exactly the first example's rows."""
    import polars as pl
    from playwright.sync_api import sync_playwright

    from dashboard import queries
    from db.guard import run_guarded

    expected = run_guarded(next(iter(queries.examples().values())), dash_store, 1_000, 10.0).frame
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{server}/sql")
            page.locator(".st-key-sql_csv button").wait_for(timeout=60_000)
            no_exception(page)
            got = {}
            for key, read in (("sql_csv", pl.read_csv), ("sql_parquet", pl.read_parquet)):
                with page.expect_download(timeout=30_000) as info:
                    page.locator(f".st-key-{key} button").click()
                path = tmp_path / info.value.suggested_filename
                info.value.save_as(path)
                got[key] = read(path)
        finally:
            browser.close()
    assert got["sql_parquet"].equals(expected), (got["sql_parquet"], expected)
    assert got["sql_csv"].columns == expected.columns and got["sql_csv"].height == expected.height > 0
