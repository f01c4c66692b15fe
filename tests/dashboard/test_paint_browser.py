"""A real browser paints: Debian's chromium (driven by Playwright, never a downloaded browser) opens the Paint
page served by `streamlit run` over a store with a real dissection of the tiny random generator, draws a
freehand stroke on the canvas with the mouse, and sees the edited image change while the original stays.
Saves test-output/dashboard/paint.png and adds the stroke's response time (mouse-up to the page showing the
new stack, measured inside the page; it includes the canvas component's fixed 200 ms send debounce) to
timings.json."""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest

from tests.compute.test_paint import build_paint_store

CHROMIUM = Path("/usr/bin/chromium")
STROKES = 4
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = [pytest.mark.slow,  # about 25 s on a shared 2-core CPU
              pytest.mark.skipif(not CHROMIUM.exists(),
                                 reason="Debian's chromium is not installed at /usr/bin/chromium "
                                        "(apt-get install chromium; .ci/run does it)")]


@pytest.fixture
def paint_server(tmp_path_factory, tiny_gan, tiny_seg, output_dir):
    """`streamlit run dashboard/app.py` on 127.0.0.1 over the paint store; yields its URL."""
    from tests.dashboard.test_browser import streamlit_server

    db = build_paint_store(tmp_path_factory.mktemp("paintbrowser"), tiny_gan, tiny_seg)
    with streamlit_server(db, output_dir / "streamlit-paint.log") as url:
        yield url


# In the page: when the mouse button goes up, and when the page first shows a text (both performance.now()).
OBSERVE = """(want) => {
  window.__up = null; window.__seen = null;
  window.addEventListener('mouseup', () => { window.__up = performance.now(); }, {capture: true, once: true});
  const obs = new MutationObserver(() => {
    if (window.__up !== null && document.body.innerText.includes(want)) { window.__seen = performance.now(); obs.disconnect(); }
  });
  obs.observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def _stroke(page, k: int) -> float:
    """Draw the k-th freehand stroke (a diagonal, lower each time); seconds until the page shows k strokes."""
    page.evaluate(OBSERVE, f"{k} stroke(s) on the stack")
    box = page.locator("canvas.upper-canvas").first.bounding_box()
    x, y = box["x"] + 30, box["y"] + 20 + 70 * (k - 1)
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x + 22 * i, y + 4 * i, steps=2)
    page.mouse.up()
    page.wait_for_function("window.__seen !== null", timeout=30_000)
    return page.evaluate("window.__seen - window.__up") / 1000


def _image_bytes(page, caption_start: str) -> bytes:
    """The bytes of the st.image whose caption starts with `caption_start`."""
    box = page.locator("[data-testid='stImage']").filter(has_text=caption_start).first
    src = box.locator("img").get_attribute("src")
    return page.request.get(src).body()


def test_a_stroke_on_the_canvas_changes_the_edited_image(paint_server, output_dir):
    from playwright.sync_api import sync_playwright

    from tests.dashboard.test_browser import no_exception, wait_idle

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.goto(f"{paint_server}/paint")
            page.locator("h1", has_text="Paint").wait_for(timeout=60_000)
            canvas = page.locator("canvas.upper-canvas").first
            canvas.wait_for(timeout=60_000)
            page.get_by_text("edited (0 strokes)").wait_for(timeout=60_000)
            wait_idle(page)
            no_exception(page)
            original = _image_bytes(page, "original")
            assert _image_bytes(page, "edited (0 strokes)") == original

            responses = []
            for k in range(1, STROKES + 1):  # strokes accumulate on the stack
                responses.append(_stroke(page, k))
                page.get_by_text(f"edited ({k} strokes)").wait_for(timeout=30_000)
                wait_idle(page)  # the fresh canvas is in place before the next stroke
                if k == 1:
                    first = _image_bytes(page, "edited (1 strokes)")
            no_exception(page)
            assert first != original, "the stroke did not change the edited image"
            assert _image_bytes(page, f"edited ({STROKES} strokes)") not in (original, first)
            assert _image_bytes(page, "original") == original
            assert page.locator("canvas.upper-canvas").count() == 1  # a fresh canvas over the edited image
            page.screenshot(path=str(output_dir / "paint.png"), full_page=True)
        finally:
            browser.close()
    path = output_dir / "timings.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data["paint_stroke_response_s"] = {"each": [round(r, 3) for r in responses],
                                       "median": round(statistics.median(responses), 3)}
    path.write_text(json.dumps(data, indent=1))
    print("paint: mouse-up to the new stack shown (s):", data["paint_stroke_response_s"])
