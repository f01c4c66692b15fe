"""dashboard.canvas: canvas strokes (Fabric.js objects) to image-pixel regions (moved from compute.paint)."""
from __future__ import annotations

import numpy as np

from compute.paint.engine import box_mask
from dashboard.canvas import canvas_region


def test_canvas_region_rect_and_path() -> None:
    rect = {"type": "rect", "left": 40, "top": 80, "width": 80, "height": 40, "scaleX": 1, "scaleY": 1}
    m = canvas_region([rect], 256, 64)  # 4 canvas px per image px
    assert np.array_equal(m, box_mask((10, 20, 30, 30), 64))
    path = {"type": "path", "strokeWidth": 16, "path": [["M", 20, 100], ["Q", 20, 100, 60, 100], ["L", 100, 100]]}
    m = canvas_region([path], 256, 64)
    ys, xs = np.nonzero(m)
    assert m[25, 5] and m[25, 24] and ys.min() >= 22 and ys.max() <= 27 and xs.min() >= 1 and xs.max() <= 27
    thin = {"type": "path", "strokeWidth": 1, "path": [["M", 10, 10], ["L", 11, 10]]}
    assert canvas_region([thin], 256, 64).any()  # thinner than a pixel still paints
    assert not canvas_region([{"type": "circle", "left": 3}], 256, 64).any()
