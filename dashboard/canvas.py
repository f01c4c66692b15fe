"""Canvas strokes for the dashboard's Paint page: the Fabric.js objects that streamlit-drawable-canvas
sends (freehand paths and rectangles, in canvas pixels) as a boolean region of the generated image.

Reads and writes nothing; numpy and PIL only (no torch), so it is tested without a model. Moved here from
compute/paint/engine.py (issue 18): only the dashboard draws on a canvas; the engine takes regions.

    from dashboard.canvas import canvas_region
    region = canvas_region(canvas_json["objects"], canvas=320, size=64)  # bool [64, 64]
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def canvas_region(objects: Sequence[dict[str, Any]], canvas: int, size: int) -> np.ndarray:
    """Fabric.js objects of a drawable canvas (`json_data["objects"]`: freehand "path" strokes and "rect"
    boxes, in canvas pixels of a `canvas` x `canvas` canvas) -> bool [size, size] in image pixels.

    Strokes are drawn at their width; a pixel belongs to the region when the strokes cover at least half
    of it (any of it, for strokes thinner than that). Unknown object types are ignored."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    for o in objects:
        kind = str(o.get("type", "")).lower()
        if kind == "path" and o.get("path"):
            pts = [tuple(float(v) for v in c[-2:]) for c in o["path"] if len(c) >= 3]
            width = max(1, int(round(float(o.get("strokeWidth", 1)))))
            if len(pts) == 1:
                pts = pts * 2
            draw.line(pts, fill=255, width=width, joint="curve")
            for x, y in (pts[0], pts[-1]):  # round caps
                draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=255)
        elif kind == "rect":
            w = float(o.get("width", 0)) * float(o.get("scaleX", 1))
            h = float(o.get("height", 0)) * float(o.get("scaleY", 1))
            x0 = float(o.get("left", 0)) - {"center": 0.5, "right": 1.0}.get(o.get("originX", "left"), 0.0) * w
            y0 = float(o.get("top", 0)) - {"center": 0.5, "bottom": 1.0}.get(o.get("originY", "top"), 0.0) * h
            if w > 0 and h > 0:
                draw.rectangle((x0, y0, x0 + w, y0 + h), fill=255)
    cover = np.asarray(img.resize((size, size), Image.BOX), np.float32) / 255.0
    mask = cover >= 0.5
    return mask if mask.any() else cover > 0
