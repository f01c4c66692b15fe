"""The village report's spec rewriting and bar verdicts (no compute)."""
from __future__ import annotations

from pathlib import Path

from compute import spec as specmod
from compute.analyses import village_report as vr


def test_example_spec_rewritten_with_checkpoint_store_and_overrides(tmp_path: Path, tiny_gan: Path) -> None:
    out = vr.write_spec(vr.SPEC, tiny_gan, tmp_path / "s.duckdb",
                        {("intervene-ace", "epochs"): 2, ("intervene-ablate", "concepts"): ["tree"]}, tmp_path / "x.toml")
    s = specmod.load(out)
    assert s.models[0].checkpoint == str(tiny_gan) and s.store == str(tmp_path / "s.duckdb")
    assert s.analysis("intervene-ace").param("epochs") == 2
    assert s.analysis("intervene-ablate").concepts == ("tree",)
    assert {a.kind for a in s.analyses} == {"dissect", "ace", "ablate", "insert", "trace"}


def test_verdicts_compare_measured_values_with_the_bars() -> None:
    res = {"remaining_at_20": {"tree": {"ace": 0.4, "iou": 0.5, "random": 0.95, "random_std": 0.01},
                               "door": {"ace": 0.6, "iou": 0.5, "random": 0.8, "random_std": 0.1}},
           "insertion_contexts": [{"concept": "door", "context": c, "effect": e} for c, e in
                                  (("wall", 3.0), ("building", 2.0), ("grass", 1.0), ("sky", 0.5))]}
    got = {bar: ok for bar, _, ok in vr.verdicts(res)}
    assert got["tree: top-20 alpha ablation leaves <= 50 % of tree pixels"] is True
    assert got["door: alpha ranking removes >= IoU ranking at n=20"] is False
    assert got["door: 20 random units remove < 10 %"] is False
    assert got["door: effect at wall >= 5x effect at sky"] is True  # 3.0 / 0.5 = 6
    assert got["door: contexts rank wall/building above grass, tree, sky"] is True
