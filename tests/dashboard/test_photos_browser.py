"""A real browser (Debian's chromium via Playwright) uploads a PNG on the Photos page, presses Invert and sees
the reconstruction (issue 19). Saves test-output/dashboard/photos.png."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = [pytest.mark.slow,  # the inversion runs in the server: a minute or more on a shared 2-core CPU
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium")]


def test_upload_a_png_and_see_the_reconstruction(tmp_path, output_dir):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from db import store
    from ingest.village.render import render
    from tests.dashboard.test_browser import no_exception, streamlit_server, wait_idle

    db = tmp_path / "photos.duckdb"
    store.connect(db).close()
    png = tmp_path / "my photo.png"
    Image.fromarray(np.kron(render(30_000_001, size=64).image, np.ones((2, 3, 1), np.uint8))).save(png)  # 128 x 192
    with streamlit_server(db, output_dir / "streamlit-photos.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.goto(f"{url}/photos")
            page.locator("h1", has_text="Photos").wait_for(timeout=60_000)
            page.get_by_text("upload", exact=True).click()
            page.locator("input[type='file']").first.set_input_files(str(png))
            page.locator("[data-testid='stImage']").filter(has_text="squared to 64 x 64").wait_for(timeout=60_000)
            assert page.get_by_text("centre square").count() >= 1  # the stated conversion
            page.get_by_role("button", name="Invert").click()
            page.locator("[data-testid='stImage']").filter(has_text="reconstruction").first.wait_for(timeout=600_000)
            wait_idle(page)
            no_exception(page)
            assert page.get_by_text("omitted:").count() >= 1
            page.screenshot(path=str(output_dir / "photos.png"), full_page=True)
        finally:
            browser.close()
