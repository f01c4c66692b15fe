"""The village world's concept list: the one place that names every concept and its category.

Reads nothing, writes nothing. The renderer's labels, the segmenter's output channels, the
`concepts` table and the tests all read `CONCEPTS` from here. Channel/label index k of the
segmenter is `CONCEPTS[k]`; index 0 is "none" (no label).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Concept:
    name: str
    category: str  # "object" | "part" | "material" | "none"


CONCEPTS: tuple[Concept, ...] = (
    Concept("none", "none"),
    # objects
    Concept("sky", "object"),
    Concept("cloud", "object"),
    Concept("grass", "object"),
    Concept("road", "object"),
    Concept("building", "object"),
    Concept("tree", "object"),
    Concept("watermark", "object"),
    # parts (of buildings)
    Concept("wall", "part"),
    Concept("roof", "part"),
    Concept("dome", "part"),
    Concept("window", "part"),
    Concept("door", "part"),
    # materials (of walls)
    Concept("brick", "material"),
    Concept("plaster", "material"),
)

CATEGORIES: tuple[str, ...] = ("object", "part", "material")
NAMES: tuple[str, ...] = tuple(c.name for c in CONCEPTS)
INDEX: dict[str, int] = {c.name: i for i, c in enumerate(CONCEPTS)}


def names_in(category: str) -> tuple[str, ...]:
    """Concept names of one category, in channel order."""
    return tuple(c.name for c in CONCEPTS if c.category == category)
