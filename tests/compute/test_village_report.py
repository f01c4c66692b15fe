"""The village report's spec rewriting and bar verdicts (no compute)."""
from __future__ import annotations

from pathlib import Path

from compute import spec as specmod
from compute.reports import village as vr


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


def test_door_contexts_per_segmenter(tmp_path: Path) -> None:
    from db import store

    db = str(tmp_path / "d.duckdb")
    store.upsert_dimension("models", [{"model": "g", "family": "progan", "dataset": "village", "checkpoint": "g.st",
                                       "checkpoint_sha256": "0" * 64, "resolution": 64, "z_dim": 8,
                                       "model_group": "g"}], db)
    store.upsert_dimension("layers", [{"model": "g", "layer": "layer4", "layer_index": 3, "units": 8, "height": 8,
                                       "width": 8}], db)
    for seg in ("village-seg", "village-seg-parts"):
        store.upsert_dimension("segmenters", [{"segmenter": seg, "family": "village", "resolution": 64}], db)
        store.upsert_dimension("concepts", [{"segmenter": seg, "concept": c, "category": cat, "concept_index": k}
                                            for c, cat, k in (("sky", "object", 1), ("grass", "object", 3),
                                                              ("wall", "part", 8), ("door", "part", 12))], db)
    for seg, wall, sky in (("village-seg", 2.0, 0.25), ("village-seg-parts", 6.0, 7.5)):
        key = f"k-{seg}"
        store.start_run(key, "insert", name=f"insert-{seg}", model="g", layer="layer4", segmenter=seg, path=db)
        rows = [{"model": "g", "layer": "layer4", "concept": "door", "context": c, "locations": 10, "effect": e,
                 "effect_std": 0.1} for c, e in (("wall", wall), ("sky", sky), ("grass", 1.0))]
        store.publish_many(key, {"insertion_contexts": rows}, {"status": "done", "seconds": 0.1}, db)
    got = vr.door_contexts(db)
    assert set(got) == {"village-seg", "village-seg-parts"}
    assert got["village-seg"]["ratio"] == 8.0 and got["village-seg-parts"]["ratio"] == 0.8
    assert [c["context"] for c in got["village-seg-parts"]["contexts"]] == ["sky", "wall", "grass"]
