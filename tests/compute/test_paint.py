"""GANPaint engine (compute/paint/engine.py) and `gandissect edit`: featuremap edits against hand computation on the
tiny generator, the edit stack (undo / redo / reset, intact on bad strokes), brushes from the store (ACE
over IoU over flags), canvas regions, the CLI's output and its exit status 2 on bad input, bench_edit rows.

`build_paint_store` (also used by the dashboard's paint tests) runs a real dissection of the tiny random
generator with the tiny random segmenter and adds an ACE result for "tree" at layer5 and flagged units."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from compute.paint import engine as paint
from compute.paint import evaluate as paint_eval
from compute.core.intervene import featuremap, finish
from ingest.samples import latents

PAINT_MODEL = "tiny"
ACE_LAYER, IOU_LAYER = "layer5", "layer3"
ACE_UNITS = (6, 2, 4)  # tree's units by decreasing alpha in the hand-made ACE run


def build_paint_store(root: Path, tiny_gan: Path, tiny_seg: Path) -> Path:
    """A store with a real q0.99 dissection of tiny (layers 3 and 5, 32 samples of seed 2), an ACE result
    for tree at layer5 and units 1 and 5 of layer3 flagged as artifacts."""
    from compute import runner, spec as specmod
    from db import store

    root.mkdir(parents=True, exist_ok=True)
    db = root / "paint.duckdb"
    spec = root / "spec.toml"
    spec.write_text(f"""
[store]
path = "{db}"

[[models]]
name = "{PAINT_MODEL}"
family = "progan"
checkpoint = "{tiny_gan}"

[[segmenters]]
name = "tiny-seg"
family = "village"
checkpoint = "{tiny_seg}"

[[analyses]]
name = "dissect"
kind = "dissect"
models = ["{PAINT_MODEL}"]
segmenter = "tiny-seg"
layers = ["{IOU_LAYER}", "{ACE_LAYER}"]
samples = 32
seed = 2
batch_size = 16
""")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        out = runner.run(specmod.load(spec), quiet=True, echo=lambda m: None)
    finally:
        os.chdir(cwd)
    assert [o.state for o in out] == ["done"], [o.error for o in out]
    key = "k-paint-ace"
    store.start_run(key, "ace", name="ace", model=PAINT_MODEL, layer=ACE_LAYER, segmenter="tiny-seg", n_samples=8,
                    seed=1, params={"concepts": ["tree"]}, code_version="test", device="cpu", path=db)
    alpha = {u: 0.0 for u in range(8)} | {6: 0.9, 2: 0.7, 4: 0.3}
    store.publish_many(key, {"ace_alpha": [{"model": PAINT_MODEL, "layer": ACE_LAYER, "concept": "tree", "unit": u,
                                            "alpha": a, "alpha_init": 0.5} for u, a in alpha.items()]},
                       {"status": "done", "seconds": 0.1}, db)
    for u in (1, 5):
        store.set_flag(PAINT_MODEL, IOU_LAYER, u, "artifact", "test", path=db)
    return db


@pytest.fixture(scope="module")
def paint_store(tmp_path_factory, tiny_gan, tiny_seg) -> Path:
    return build_paint_store(tmp_path_factory.mktemp("paint"), tiny_gan, tiny_seg)


@pytest.fixture(scope="module")
def painter(paint_store) -> paint.Painter:
    return paint.open_painter(PAINT_MODEL, paint_store, ACE_LAYER)


# ------------------------------------------------------------------------- regions and featuremap edits

def test_box_mask_and_cell_mask_by_hand() -> None:
    m = paint.box_mask((2, 1, 5, 3), 8)  # x 2..4, y 1..2
    assert m.sum() == 6 and m[1, 2] and m[2, 4] and not m[0, 2] and not m[1, 5]
    cells = paint.cell_mask(m, 4, 4)  # 2x2 px per cell: x 2..4 -> cells 1, 2; y 1..2 -> cells 0, 1
    expected = torch.zeros(4, 4)
    expected[0:2, 1:3] = 1
    assert torch.equal(cells, expected)
    one = paint.cell_mask(paint.box_mask((7, 7, 8, 8), 8), 4, 4)
    assert one.sum() == 1 and one[3, 3] == 1


def test_edit_layer_against_hand_computed_values() -> None:
    g = torch.Generator().manual_seed(0)
    r = torch.randn(2, 6, 4, 4, generator=g)
    cells = torch.zeros(4, 4)
    cells[1, 2] = cells[3, 0] = 1
    value = torch.arange(6, dtype=torch.float32) + 10
    drawn = paint.edit_layer(r, [1, 4], value, cells)
    removed = paint.edit_layer(r, [1, 4], 0.0, cells)
    exp_d, exp_r = r.clone(), r.clone()
    for n in range(2):
        for u in (1, 4):
            for y, x in ((1, 2), (3, 0)):
                exp_d[n, u, y, x] = value[u]
                exp_r[n, u, y, x] = 0.0
    assert torch.equal(drawn, exp_d) and torch.equal(removed, exp_r)


def test_stroke_equals_the_hand_built_pipeline(painter) -> None:
    z = latents(3, 1, painter.z_dim, start=5)
    s = painter.session(3, 5)
    with torch.no_grad():
        full = painter.gen(z)
    assert np.array_equal(s.original.image, paint.to_uint8(full)[0])  # layer + run_from = the whole generator
    stroke = painter.stroke("tree", "draw", (16, 8, 40, 30), "medium")
    res = s.apply(stroke)
    r = featuremap(painter.gen, ACE_LAYER, z)  # [1, 8, 16, 16]: 4 px per cell
    q = torch.tensor([painter.catalog.q99[u] for u in range(r.shape[1])])
    exp = r.clone()
    for u in ACE_UNITS:  # medium = 10 units, the brush has 3
        exp[0, u, 2:8, 4:10] = q[u]  # y 8..29 -> cells 2..7, x 16..39 -> cells 4..9
    assert torch.allclose(s.featuremap, exp)
    with torch.no_grad():
        image = paint.to_uint8(finish(painter.gen, ACE_LAYER, exp, z))[0]
        labels = painter.seg.segment(finish(painter.gen, ACE_LAYER, exp, z))
    assert np.array_equal(res.after.image, image)
    assert np.array_equal(res.after.labels, paint.label_map(labels)[0].numpy())
    assert res.before is s.original and res.ms > 0
    assert set(res.summary()) == {"before", "after", "ms"}
    assert abs(sum(v for k, v in res.after.fractions.items()) - res.after.masks[1:].sum() / 64**2) < 1e-9


def test_strokes_compose_in_order(painter) -> None:
    s = painter.session(3, 1)
    a = painter.stroke("tree", "draw", (0, 0, 32, 32), "high")
    b = painter.stroke("tree", "remove", (16, 16, 48, 48), "low")  # low = 4 units: all 3 of the brush
    s.apply(a)
    s.apply(b)
    r = s.r0.clone()
    q = torch.tensor([painter.catalog.q99[u] for u in range(r.shape[1])])
    for u in ACE_UNITS:
        r[0, u, 0:8, 0:8] = q[u]
    for u in ACE_UNITS:
        r[0, u, 4:12, 4:12] = 0.0
    assert torch.allclose(s.featuremap, r)


# ------------------------------------------------------------------------------------- edit stack

def test_undo_redo_reset(painter) -> None:
    s = painter.session(3, 2)
    strokes = [painter.stroke("tree", "remove", box, "high") for box in ((0, 0, 20, 20), (30, 30, 60, 60),
                                                                          (10, 40, 30, 64))]
    assert not s.undo() and not s.redo() and s.current is s.original
    f1 = s.apply(strokes[0]).after
    f2 = s.apply(strokes[1]).after
    assert s.strokes == strokes[:2] and s.current is f2
    assert s.undo() and s.current is f1 and s.can_redo and s.undone == 1
    assert s.redo() and s.current is f2 and not s.can_redo
    assert s.undo() and s.undo() and s.current is s.original and s.undone == 2 and not s.undo()
    assert s.redo() and s.current is f1
    s.apply(strokes[2])  # a new stroke clears what could be redone
    assert not s.can_redo and s.strokes == [strokes[0], strokes[2]]
    assert torch.equal(s.featuremap, s._stack[-1].r)
    s.reset()
    assert s.strokes == [] and not s.can_redo and s.current is s.original and torch.equal(s.featuremap, s.r0)


@pytest.mark.parametrize("brush, action, region, strength, message", [
    ("tree", "draw", (60, 0, 70, 10), "high", "outside the 64x64 image"),
    ("tree", "draw", (-1, 0, 10, 10), "high", "outside"),
    ("tree", "draw", (10, 10, 10, 20), "high", "is empty"),
    ("tree", "draw", "1,2,3", "high", "four integers"),
    ("tree", "draw", np.zeros((64, 64), bool), "high", "region is empty"),
    ("tree", "draw", np.ones((32, 32), bool), "high", "does not fit"),
    ("doorx", "draw", (0, 0, 8, 8), "high", "unknown brush 'doorx'"),
    ("tree", "paint", (0, 0, 8, 8), "high", "unknown action"),
    ("tree", "draw", (0, 0, 8, 8), "extreme", "unknown strength"),
    ("tree", "draw", (0, 0, 8, 8), "1.5", "out of range"),
    ("tree", "draw", (0, 0, 8, 8), 0, "out of range"),
])
def test_bad_strokes_raise_and_leave_the_stack_intact(painter, brush, action, region, strength, message) -> None:
    s = painter.session(3, 0)
    good = s.apply(painter.stroke("tree", "remove", (0, 0, 16, 16), "high")).after
    with pytest.raises(paint.EditError, match=message):
        s.apply(painter.stroke(brush, action, region, strength))
    assert len(s.strokes) == 1 and s.current is good and not s.can_redo


def test_strength_levels() -> None:
    assert [paint.resolve_strength(n).units for n in ("low", "medium", "high")] == [4, 10, 20]
    assert paint.resolve_strength("HIGH").name == "high"
    assert paint.resolve_strength(0.5).units == 10 and paint.resolve_strength("0.01").units == 1


# --------------------------------------------------------------------------------- brushes from the store

def test_catalog_ranks_by_alpha_then_iou_and_offers_flags(paint_store) -> None:
    from db import store

    cat = paint.load_catalog(paint_store, PAINT_MODEL, ACE_LAYER)
    tree = cat.brush("tree")
    assert tree.source == "ace" and tree.units == ACE_UNITS and tree.score == (0.9, 0.7, 0.3) and not tree.note
    others = [b for b in cat.brushes.values() if b.name != "tree"]
    assert others and all(b.source == "iou" and "IoU-ranked" in b.note for b in others)
    for b in others:
        iou = store.read("select unit, iou from unit_iou where layer = ? and concept = ? and iou > 0 "
                         "order by iou desc, unit", [ACE_LAYER, b.name], path=paint_store)
        assert list(b.units) == iou["unit"].to_list()
    assert set(cat.q99) == set(range(8))
    flagged = paint.load_catalog(paint_store, PAINT_MODEL, IOU_LAYER)
    assert flagged.brush("flag:artifact").units == (1, 5) and flagged.brush("flag:artifact").source == "flag"
    assert "tree" in flagged.brushes and flagged.brush("tree").source == "iou"
    with pytest.raises(paint.EditError, match="unknown brush 'nope'.*brushes: "):
        cat.brush("nope")


def test_default_layer(paint_store) -> None:
    assert paint.default_layer(paint_store, PAINT_MODEL, "tree") == ACE_LAYER  # its ACE run's layer
    assert paint.default_layer(paint_store, PAINT_MODEL, "flag:artifact") == IOU_LAYER
    from db import store

    most = store.read("select layer from layer_summary order by interpretable_units desc, layer_index limit 1",
                      path=paint_store)["layer"][0]
    assert paint.default_layer(paint_store, PAINT_MODEL, "sky") == most
    assert paint.default_layer(paint_store, PAINT_MODEL) == most
    with pytest.raises(paint.EditError, match="no dissection of 'other'"):
        paint.default_layer(paint_store, "other")


def test_flagged_brush_removes_its_units(paint_store) -> None:
    p = paint.open_painter(PAINT_MODEL, paint_store, brush="flag:artifact")
    assert p.layer == IOU_LAYER
    s = p.session(1, 0)
    s.apply(p.stroke("flag:artifact", "remove", (0, 0, 64, 64), "high"))
    assert torch.equal(s.featuremap[0, [1, 5]], torch.zeros(2, 8, 8))
    assert torch.equal(s.featuremap[0, [0, 2, 3, 4, 6, 7]], s.r0[0, [0, 2, 3, 4, 6, 7]])


def test_draw_with_insertion_constants(paint_store) -> None:
    p = paint.open_painter(PAINT_MODEL, paint_store, ACE_LAYER, value="k")
    p._constants_n = 16
    s = p.session(1, 0)
    s.apply(p.stroke("tree", "draw", (0, 0, 64, 64), "high"))
    k = p.constants()[p.names.index("tree")]
    if bool(torch.isnan(k).any()):
        pytest.skip("the random tiny segmenter labels no tree in 16 samples")
    assert torch.allclose(s.featuremap[0, list(ACE_UNITS)], k[list(ACE_UNITS), None, None].expand(3, 16, 16))


def test_segmentation_colours() -> None:
    labels = torch.tensor([[[[1, 5], [5, 0]], [[0, 8], [0, 0]], [[0, 13], [0, 0]]]])  # object, part, material
    lm = paint.label_map(labels)
    assert lm.tolist() == [[[1, 13], [5, 0]]]
    names = ("none", "sky") + tuple(f"c{i}" for i in range(2, 14))
    rgb = paint.colorize(lm[0].numpy(), names)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8 and tuple(rgb[0, 0]) == (0x8f, 0xc8, 0xff)


# --------------------------------------------------------------------------------------------- CLI

def _edit(tmp_path, paint_store, *extra: str) -> list[str]:
    return ["edit", "--model", PAINT_MODEL, "--seed", "3", "--sample", "4", "--db", str(paint_store),
            "--spec", str(tmp_path / "none.toml"), "--out", str(tmp_path / "e.png"), *extra]


def test_cli_edit_writes_the_png_and_json(tmp_path, paint_store, capsys) -> None:
    from PIL import Image

    from compute.cli import main

    rc = main(_edit(tmp_path, paint_store, "--brush", "tree", "--action", "draw", "--region", "8,8,40,40", "--json"))
    out, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads(out)
    assert set(res) == {"before", "after", "ms"} and res["ms"] > 0 and "tree" in res["after"]
    assert "note" not in err  # tree has causal units at its default layer (layer5)
    im = Image.open(tmp_path / "e.png")
    assert im.size == (64, 64) and im.mode == "RGB"
    p = paint.open_painter(PAINT_MODEL, paint_store, ACE_LAYER)
    s = p.session(3, 4)
    expected = s.apply(p.stroke("tree", "draw", (8, 8, 40, 40), "high")).after
    assert np.array_equal(np.asarray(im), expected.image)
    assert res["after"] == pytest.approx(expected.fractions) and res["before"] == pytest.approx(s.original.fractions)


def test_cli_edit_without_causal_units_falls_back_to_iou(tmp_path, paint_store, capsys) -> None:
    from compute.cli import main

    rc = main(_edit(tmp_path, paint_store, "--brush", "tree", "--action", "remove", "--region", "0,0,32,32",
                    "--layer", IOU_LAYER, "--strength", "low"))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "note: no causal (ACE) units for tree in layer3: using IoU-ranked units" in err
    assert "remove tree (low" in out and (tmp_path / "e.png").exists()


@pytest.mark.parametrize("args, message", [
    (("--brush", "unicorn", "--action", "draw", "--region", "0,0,8,8"), "unknown brush 'unicorn'"),
    (("--brush", "tree", "--action", "draw", "--region", "0,0,65,8"), "outside the 64x64 image"),
    (("--brush", "tree", "--action", "draw", "--region", "5,5,5,9"), "is empty"),
    (("--brush", "tree", "--action", "draw", "--region", "0,0,8,8", "--strength", "11"), "out of range"),
    (("--brush", "tree", "--action", "draw", "--region", "0,0,8,8", "--layer", "layer99"), "no layer 'layer99'"),
    (("--brush", "tree", "--action", "paint", "--region", "0,0,8,8"), "invalid choice"),
])
def test_cli_edit_bad_input_exits_2(tmp_path, paint_store, capsys, args, message) -> None:
    from compute.cli import main

    rc = main(_edit(tmp_path, paint_store, *args))
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "e.png").exists()


def test_cli_edit_unknown_model_exits_2(tmp_path, paint_store, capsys) -> None:
    from compute.cli import main

    rc = main(["edit", "--model", "ghost", "--seed", "1", "--sample", "0", "--brush", "tree", "--action", "draw",
               "--region", "0,0,8,8", "--db", str(paint_store), "--layer", "layer3",
               "--spec", str(tmp_path / "none.toml"), "--out", str(tmp_path / "e.png")])
    assert rc == 2 and "cannot load model 'ghost'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- bench

def test_bench_edit_rows() -> None:
    try:
        paint._bundled_paths()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    rows = paint.bench_edit("cpu", repeats=5, warmup=1)
    assert [r["metric"] for r in rows] == ["median_ms", "p95_ms"]
    assert all(r["bench"] == "edit" and r["unit"] == "ms" and r["value"] > 0 for r in rows)
    assert rows[0]["value"] <= rows[1]["value"]
    params = json.loads(rows[0]["params"])
    assert params["device"] == "cpu" and params["layer"].startswith("layer") and params["repeats"] == 5


# ---------------------------------------------------------------------------------------- evaluation

def test_full_box_and_wall_base() -> None:
    m = np.zeros((20, 20), bool)
    m[2:12, 3:15] = True
    rng = np.random.default_rng(0)
    for _ in range(20):
        x0, y0, x1, y1 = paint_eval._full_box(m, 4, rng)
        assert m[y0:y1, x0:x1].mean() >= paint_eval.FULL and (x1 - x0, y1 - y0) == (4, 4)
        assert paint_eval._full_box(m, 4, rng, base=True)[3] == 12  # stands on the mask's lower edge
    assert paint_eval._full_box(np.zeros((20, 20), bool), 4, rng) is None


def test_eval_spec_is_a_valid_spec(tmp_path) -> None:
    from compute import spec as specmod

    try:
        text = paint_eval.eval_spec_text(tmp_path / "s.duckdb")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    (tmp_path / "eval.toml").write_text(text)
    s = specmod.load(tmp_path / "eval.toml")
    assert [a.kind for a in s.analyses] == ["dissect", "ace"]
    assert s.analyses[1].layers == (paint_eval.EVAL_LAYER,) and s.analyses[1].concepts == ("tree", "door")
