"""A real browser against a real server (slow): Debian's chromium via Playwright, the dashboard served by
`streamlit run` over the dashboard fixture store.

- DNS rebinding: chromium resolves evil.example to 127.0.0.1 (`--host-resolver-rules`), as a page of
  another site would after rebinding its name; the dashboard answers it with the refusal only (no page,
  no navigation, no query), while 127.0.0.1 gets the app.
- Markdown injection: permalinks whose unit / model / layer carry markdown images and links fetch
  nothing (a trap server on another port counts requests) and render no link to it; the page names what
  was not found, with the nearest match.
"""
from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import pytest

from tests.dashboard.conftest import TINY, TINY_LAYERS, dash_store, dash_store_master  # noqa: F401 (fixtures)
from tests.dashboard.test_browser import ARGS, CHROMIUM, free_port, streamlit_server, wait_idle

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium")]


@pytest.fixture
def trap() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on another port that records every request path; yields (base URL, hits)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()

        def log_message(self, *a) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    finally:
        srv.shutdown()


def test_rebinding_and_injection(dash_store: Path, tmp_path: Path, trap) -> None:  # noqa: F811
    from playwright.sync_api import sync_playwright

    trap_url, hits = trap
    with streamlit_server(dash_store, tmp_path / "streamlit.log") as url, sync_playwright() as p:
        port = url.rsplit(":", 1)[1]
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=[*ARGS, "--host-resolver-rules=MAP evil.example 127.0.0.1"])
        try:
            seen: list[str] = []
            page = browser.new_page()
            page.on("request", lambda r: seen.append(r.url))

            # DNS rebinding: another site's name pointing at 127.0.0.1 gets the refusal and nothing else
            page.goto(f"http://evil.example:{port}/")
            page.get_by_text("Refused: this dashboard answers only requests addressed to localhost").wait_for(
                timeout=60_000)
            wait_idle(page)
            body = page.locator("body").inner_text()
            assert "Overview" not in body and "Interpretable units" not in body and "SQL" not in body, body
            page.goto(f"http://evil.example:{port}/sql")
            page.get_by_text("Refused: this dashboard answers only").wait_for(timeout=60_000)
            wait_idle(page)
            assert page.locator("textarea").count() == 0

            # the same server, addressed by its loopback address, serves the app
            page.goto(url)
            page.locator("h1", has_text="Overview").wait_for(timeout=60_000)
            wait_idle(page)

            # markdown injection through permalink parameters
            layer = TINY_LAYERS[1]
            img, link = f"![x]({trap_url}/injected.png)", f"[click]({trap_url}/clicked)"
            for params, shown in [
                (f"model={TINY}&layer={layer}&unit={quote(img)}", "there is no unit"),
                (f"model={TINY}&layer={layer}&unit={quote(link)}", "there is no unit"),
                (f"model={quote(img)}&layer={layer}&unit=1", "There is no model"),
                (f"model={TINY}&layer={quote(link)}&unit=1", "There is no layer"),
                (f"model={TINY}&layer={layer}&unit=1&segmenter={quote(img)}&mode=quantile", "There is no dissection"),
            ]:
                page.goto(f"{url}/unit?{params}")
                page.get_by_text(shown).first.wait_for(timeout=60_000)
                wait_idle(page)
                assert page.locator(f"a[href^='{trap_url}']").count() == 0, (params, [
                    a.evaluate("e => e.parentElement.parentElement.outerHTML") for a in page.locator(f"a[href^='{trap_url}']").all()])
                assert page.locator(f"img[src^='{trap_url}']").count() == 0, params
            page.goto(f"{url}/unit?model={TINY}x&layer={layer}&unit=1")  # a near miss names the nearest model
            page.get_by_text("the nearest is").first.wait_for(timeout=60_000)
            assert TINY in page.get_by_text("the nearest is").first.inner_text()
        finally:
            browser.close()
    assert hits == [] and not [u for u in seen if u.startswith(trap_url)], (hits, seen)
