"""The village world: procedural outdoor scenes with exact labels (see `render.py`, `concepts.py`).

Reads nothing, writes nothing. `render(seed)` -> `Scene`; `render_batch(seeds)` -> arrays.
"""
from ingest.village.concepts import CATEGORIES, CONCEPTS, INDEX, NAMES, Concept, names_in
from ingest.village.render import Building, Scene, labels_from_maps, render, render_batch

__all__ = ["CATEGORIES", "CONCEPTS", "INDEX", "NAMES", "Concept", "names_in", "Building", "Scene",
           "labels_from_maps", "render", "render_batch"]
