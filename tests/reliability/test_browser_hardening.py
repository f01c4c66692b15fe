"""A real browser against a real server (slow): Debian's chromium via Playwright, the dashboard served by
`streamlit run` over the dashboard fixture store.

- DNS rebinding: chromium resolves evil.example to 127.0.0.1 (`--host-resolver-rules`), as a page of
  another site would after rebinding its name; the dashboard answers it with the refusal only (no page,
  no navigation, no query), while 127.0.0.1 gets the app: served as `gandissect dashboard` serves it
  (`dashboard/serve.py`, refused at the HTTP level: 403 and a closed websocket handshake) and by a plain
  `streamlit run dashboard/app.py` (refused inside the script run).
- Markdown injection: permalinks whose unit / model / layer carry markdown images and links fetch
  nothing (a trap server on another port counts requests) and render no link to it; the page names what
  was not found, with the nearest match.
"""
from __future__ import annotations

import contextlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import pytest

from tests.dashboard.conftest import TINY, TINY_LAYERS, dash_store, dash_store_master  # noqa: F401 (fixtures)
from tests.dashboard.test_browser import ARGS, CHROMIUM, free_port, wait_idle

ROOT = Path(__file__).resolve().parents[2]
REFUSED = "Refused: this dashboard answers only requests addressed to localhost"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium")]


@contextlib.contextmanager
def serving(script: str, db: Path, log_path: Path) -> Iterator[str]:
    """`streamlit run <script>` on 127.0.0.1 and a free port over the store `db`; yields its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "GANDISSECT_ALLOWED_HOSTS"}
    env["GANDISSECT_DB"] = str(db)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / script), "--server.address",
                                 "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
                                 "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "streamlit did not start within 90 s"
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _status(url: str, host: str) -> int:
    req = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _ws_handshake(port: str, host: str) -> str:
    """The status line a websocket upgrade of /_stcore/stream gets with this Host (and a matching Origin)."""
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as s:
        s.sendall((f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: streamlit\r\n\r\n").encode())
        return s.recv(4096).decode("latin-1").splitlines()[0]


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


def test_plain_app_refuses_a_rebound_host_inside_the_script(dash_store: Path, tmp_path: Path) -> None:  # noqa: F811
    from playwright.sync_api import sync_playwright

    with serving("dashboard/app.py", dash_store, tmp_path / "app.log") as url, sync_playwright() as p:
        port = url.rsplit(":", 1)[1]
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=[*ARGS, "--host-resolver-rules=MAP evil.example 127.0.0.1"])
        try:
            page = browser.new_page()
            page.goto(f"http://evil.example:{port}/sql")
            page.get_by_text(REFUSED).wait_for(timeout=60_000)
            wait_idle(page)
            body = page.locator("body").inner_text()
            assert "Overview" not in body and "Interpretable units" not in body, body
            assert page.locator("textarea").count() == 0  # no SQL page
        finally:
            browser.close()


def test_rebinding_and_injection(dash_store: Path, tmp_path: Path, trap) -> None:  # noqa: F811
    from playwright.sync_api import sync_playwright

    trap_url, hits = trap
    with serving("dashboard/serve.py", dash_store, tmp_path / "serve.log") as url, sync_playwright() as p:
        port = url.rsplit(":", 1)[1]
        evil = f"evil.example:{port}"
        assert _status(f"{url}/", evil) == 403 and _status(f"{url}/_stcore/health", evil) == 403
        assert _status(f"{url}/", f"127.0.0.1:{port}") == 200 and _status(f"{url}/", f"localhost:{port}") == 200
        assert " 101 " not in _ws_handshake(port, evil) and " 101 " in _ws_handshake(port, f"127.0.0.1:{port}")
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=[*ARGS, "--host-resolver-rules=MAP evil.example 127.0.0.1"])
        try:
            seen: list[str] = []
            page = browser.new_page()
            page.on("request", lambda r: seen.append(r.url))

            # DNS rebinding: another site's name pointing at 127.0.0.1 gets the refusal and nothing else
            page.goto(f"http://evil.example:{port}/")
            page.get_by_text(REFUSED).wait_for(timeout=60_000)
            body = page.locator("body").inner_text()
            assert body.strip().startswith(REFUSED) and "Overview" not in body, body

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
