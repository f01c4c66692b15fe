"""Helpers to drive the dashboard with Streamlit's AppTest (no browser, same process)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
PAGES = ("overview", "units", "unit", "compare", "causal", "realism", "sql", "flags", "model_cards")


def open_page(page: str, query_params: dict[str, Any] | None = None, timeout: float = 60) -> AppTest:
    """A fresh app session showing `page` (first run lands on the default page, then switches)."""
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    at.run()
    if page != "overview" or query_params:
        if query_params:
            at.query_params.update(query_params)
        at.switch_page(f"app_pages/{page}.py")
        at.run()
    return at


def texts(at: AppTest) -> str:
    """Every text the page shows (titles, markdown, captions, info / warning / error boxes), joined."""
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


def assert_ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
