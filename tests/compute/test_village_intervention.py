"""Issue 4's bars on the bundled village-gan: the ones the README reports as met hold on a fresh store.

Runs `examples/intervene.toml` (layer4 dissection, ACE, ablation curves, insertion by context, one
trace) through `compute.reports.village` with the concepts cut to tree and door (the bars the
README reports as met are tree's and door's; window, dome and watermark are measured by
`python -m compute.reports.village` and reported, not asserted, because they miss).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from compute.reports import village as vr

ZOO = Path(__file__).resolve().parents[2] / "ingest" / "zoo"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, bool | None]:
    d = tmp_path_factory.mktemp("intervene")
    overrides = {("intervene-ace", "concepts"): ["tree", "door"], ("intervene-ablate", "concepts"): ["tree", "door"]}
    spec = vr.write_spec(vr.SPEC, ZOO / "village-gan.safetensors", d / "i.duckdb", overrides, d / "spec.toml")
    res = vr.measure(spec)
    return {bar: ok for bar, _, ok in vr.verdicts(res)} | {"_res": res}


def test_tree_ablation_bars(measured) -> None:
    assert measured["tree: top-20 alpha ablation leaves <= 50 % of tree pixels"], measured["_res"]["remaining_at_20"]
    assert measured["tree: alpha ranking removes >= IoU ranking at n=20"], measured["_res"]["remaining_at_20"]
    assert measured["tree: 20 random units remove < 10 %"], measured["_res"]["remaining_at_20"]


def test_door_insertion_in_context(measured) -> None:
    ctx = measured["_res"]["insertion_contexts"]
    assert measured["door: effect at wall >= 5x effect at sky"], ctx
    assert measured["door: contexts rank wall/building above grass, tree, sky"], ctx
