"""While a job writes (another process holds the store's write lock) pages wait and render; if the lock
outlasts the retry window the page says so in words, never with a lock error."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dashboard import queries
from tests.dashboard.apptest import assert_ok, open_page, texts

ROOT = Path(__file__).resolve().parents[2]


def hold_write_lock(path: Path, seconds: float) -> subprocess.Popen:
    """Another process that opens the store for writing and keeps it `seconds` (returns once it holds it)."""
    code = textwrap.dedent(f"""
        import time
        from db import store
        con = store.connect({str(path)!r})
        con.execute("UPDATE store_meta SET value = value WHERE key = 'schema_sha256'")
        print("locked", flush=True)
        time.sleep({seconds})
        con.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.parametrize("page", ["overview"])
def test_page_waits_for_a_short_write(dash_store, page):
    writer = hold_write_lock(dash_store, 1.0)
    try:
        at = open_page(page)
        assert_ok(at)
        assert page.capitalize() in texts(at)
        assert "lock" not in texts(at).lower()
    finally:
        writer.wait(timeout=30)


def test_long_write_shows_a_message_not_an_error(dash_store, monkeypatch):
    monkeypatch.setattr(queries, "READ_TIMEOUT_S", 0.3)
    writer = hold_write_lock(dash_store, 2.5)
    try:
        at = open_page("overview")
        assert_ok(at)
        assert "A job is writing to the store right now" in texts(at)
        assert not at.error
    finally:
        writer.wait(timeout=30)
    at.button[0].click().run()  # "Try again" once the job is done
    assert_ok(at)
    assert "Interpretable units per layer" in texts(at)
