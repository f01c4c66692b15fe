"""Intervention helpers on tiny random models: edits against hand computation, batched insertion equals the
unbatched loop, constants, contexts, tracing and every bad-input error."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compute.bench.ace import bench_ace, bench_insert
from compute.core import intervene as iv
from compute.core.stats import ConditionalMean
from compute.core.tap import Tap
from ingest.models.progan import load_progan
from ingest.models.village_seg import load_village_seg
from ingest.samples import latents

LAYER = "layer4"  # 8x8, 8 units in the tiny generator


@pytest.fixture(scope="module")
def models(tiny_gan: Path, tiny_seg: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    return load_progan(str(tiny_gan)).eval(), load_village_seg(str(tiny_seg)).eval()


def test_edit_featuremap_matches_hand_computation() -> None:
    torch.manual_seed(0)
    r = torch.randn(2, 3, 4, 4)
    alpha = torch.tensor([1.0, 0.0, 0.5])
    value = torch.tensor([2.0, -1.0, 4.0])
    pixels = torch.zeros(4, 4)
    pixels[1, 2] = 1.0
    pixels[3, 0] = 0.25
    got = iv.edit_featuremap(r, alpha, value, pixels)
    want = r.clone()
    for n in range(2):
        for u in range(3):
            for y in range(4):
                for x in range(4):
                    a = float(alpha[u] * pixels[y, x])
                    want[n, u, y, x] = r[n, u, y, x] * (1 - a) + float(value[u]) * a
    assert torch.allclose(got, want)
    # ablation everywhere of units {0, 2}: those channels become 0, unit 1 untouched
    abl = iv.edit_featuremap(r, iv.unit_alpha([0, 2], 3), 0.0)
    assert torch.equal(abl[:, [0, 2]], torch.zeros(2, 2, 4, 4)) and torch.equal(abl[:, 1], r[:, 1])
    # per-sample masks [N, h, w]
    per = torch.zeros(2, 4, 4)
    per[1, 0, 0] = 1
    out = iv.edit_featuremap(r, torch.ones(3), 0.0, per)
    assert torch.equal(out[0], r[0]) and torch.all(out[1, :, 0, 0] == 0) and torch.equal(out[1, :, 1:], r[1, :, 1:])


def test_apply_units_equals_tap_edit_of_the_full_forward(models) -> None:
    gen, _ = models
    z = latents(5, 3, gen.z_dim)
    mask = torch.zeros(8, 8)
    mask[2:4, 5] = 1
    k = torch.linspace(0.5, 2.0, 8)
    got = iv.apply_units(gen, LAYER, z, [1, 4, 6], k, mask, batch_size=2)
    from compute.core.tap import Edit

    a = iv.unit_alpha([1, 4, 6], 8).view(1, 8, 1, 1) * mask.view(1, 1, 8, 8)
    with torch.no_grad(), Tap(gen, [LAYER], edit={LAYER: Edit(a, k.view(1, 8, 1, 1))}):
        want = gen(z)
    assert (got - want).abs().max() < 1e-4  # float noise of different batch sizes only
    # a float alpha [C] is taken as alpha; zero alpha leaves the image unchanged
    with torch.no_grad():
        plain = gen(z)
    assert (got - plain).abs().max() > 1e-2, "the edit must change the images"
    assert (iv.apply_units(gen, LAYER, z, torch.zeros(8), k) - plain).abs().max() < 1e-4


def test_insertion_constants_are_coverage_weighted_means(models) -> None:
    gen, seg = models
    z = latents(6, 10, gen.z_dim)
    k = iv.insertion_constants(gen, seg, LAYER, z, batch_size=4)  # [K, C]
    with torch.no_grad(), Tap(gen, [LAYER]) as tap:
        images = gen(z)
        r = tap[LAYER].double()
    masks = seg.concept_masks(images).double()  # [N, K, 64, 64]
    w = F.avg_pool2d(masks, 8)  # share of each 8x8 block
    want = torch.einsum("nchw,nkhw->kc", r, w) / w.sum((0, 2, 3))[:, None]
    present = w.sum((0, 2, 3)) > 0
    assert torch.allclose(k[present].double(), want[present], atol=1e-5)
    assert bool(torch.isnan(k[~present]).all())
    with pytest.raises(iv.ConceptAbsentError, match="absent from every one"):
        iv.constant_for(k, seg, next(c.name for i, c in enumerate(seg.concepts) if i and not present[i]))


def _loop_effects(gen, seg, z, units, value, concept, hood, locations) -> torch.Tensor:
    """The unbatched reference: one sample and one location at a time through apply_units -> [N, L]."""
    out = torch.zeros(z.shape[0], len(locations))
    with torch.no_grad():
        before = seg.concept_masks(gen(z))[:, concept]
    for n in range(z.shape[0]):
        for j, (y, x) in enumerate(locations):
            m = torch.zeros(8, 8)
            m[y, x] = 1
            img = iv.apply_units(gen, LAYER, z[n:n + 1], units, value, m)
            after = seg.concept_masks(img)[0, concept]
            added = (after & ~before[n]).float()
            y0, y1 = max(0, y - hood) * 8, min(8, y + hood + 1) * 8
            x0, x1 = max(0, x - hood) * 8, min(8, x + hood + 1) * 8
            out[n, j] = added[y0:y1, x0:x1].sum()
    return out


def test_batched_location_insertion_equals_unbatched_loop(models) -> None:
    gen, seg = models
    z = latents(7, 2, gen.z_dim)
    c = iv.concept_index(seg, "tree")
    k = iv.insertion_constants(gen, seg, LAYER, latents(8, 8, gen.z_dim))
    kc = iv.constant_for(k, seg, "tree") * 3  # strong enough to change labels
    units = [0, 2, 3, 5]
    r = iv.featuremap(gen, LAYER, z)
    with torch.no_grad():
        before = seg.concept_masks(iv.finish(gen, LAYER, r, z))[:, c]
    got = iv.insertion_effects(gen, seg, LAYER, r, z, before, iv.unit_alpha(units, 8), kc, c,
                               neighbourhood=1, chunk=37).view(2, 8, 8)  # every location, odd chunks
    locs = [(0, 0), (0, 7), (3, 4), (4, 1), (6, 6), (7, 3), (7, 7), (2, 2)]
    want = _loop_effects(gen, seg, z, units, kc, c, 1, locs)
    ys, xs = torch.tensor(locs).T
    assert torch.allclose(got[:, ys, xs], want), (got[:, ys, xs] - want).abs().max()
    assert float(want.sum()) > 0, "the test needs insertions that change something"
    sub = iv.insertion_effects(gen, seg, LAYER, r, z, before, iv.unit_alpha(units, 8), kc, c,
                               locations=torch.tensor(locs), neighbourhood=1)
    assert torch.allclose(sub, want)


def test_location_masks_and_window_sum() -> None:
    m = iv.location_masks(4, 5, torch.tensor([[0, 0], [2, 3]]), radius=1)
    assert m.shape == (2, 1, 4, 5)
    assert m[0, 0].sum() == 4 and m[1, 0].sum() == 9 and m[1, 0, 1:4, 2:5].sum() == 9
    assert iv.location_masks(3, 3).shape == (9, 1, 3, 3)
    cells = torch.arange(12.0).view(1, 3, 4)
    ws = iv.window_sum(cells, 1)
    assert float(ws[0, 0, 0]) == float(cells[0, :2, :2].sum())
    assert float(ws[0, 1, 1]) == float(cells[0, :3, :3].sum())
    with pytest.raises(iv.MaskShapeError, match="outside"):
        iv.location_masks(4, 4, torch.tensor([[4, 0]]))


def test_cell_contexts_take_the_majority_per_category(models) -> None:
    _, seg = models
    names = [c.name for c in seg.concepts]
    masks = torch.zeros(1, len(names), 16, 16, dtype=torch.bool)  # 2x2 cells of 8x8 pixels
    masks[0, names.index("sky"), :8] = True
    masks[0, names.index("building"), 8:] = True
    masks[0, names.index("wall"), 8:, :8] = True
    masks[0, names.index("door"), 8:, 8:13] = True  # 40 of 64 pixels of cell (1, 1)
    masks[0, names.index("wall"), 8:, 13:] = True
    masks[0, names.index("brick"), 8:, :3] = True  # 24 of 64: material none wins in cell (1, 0)
    ctx = iv.cell_contexts(seg, masks, 2, 2)
    assert ctx["object"][0].tolist() == [[names.index("sky")] * 2, [names.index("building")] * 2]
    assert ctx["part"][0].tolist() == [[0, 0], [names.index("wall"), names.index("door")]]
    assert ctx["material"][0].tolist() == [[0, 0], [0, 0]]
    assert iv.map_context(ctx)[0].tolist() == [[names.index("sky")] * 2, [names.index("wall"), names.index("door")]]


def test_trace_insertion_is_zero_without_change_and_local_at_first(models) -> None:
    gen, _ = models
    z = latents(9, 3, gen.z_dim)
    r = iv.featuremap(gen, LAYER, z)
    targets = iv.later_layers(gen, LAYER)
    assert targets == ["layer5", "layer6", "layer7", "layer8", "layer9", "layer10"]
    zero = iv.trace_insertion(gen, LAYER, r, z, torch.zeros(8), 5.0, (2, 3), targets)
    assert all(float(v.abs().max()) == 0 for v in zero.values())
    out = iv.trace_insertion(gen, LAYER, r, z, torch.ones(8), 5.0, (2, 3), targets)
    first = out["layer5"]  # 16x16; a 3x3 conv after a 2x upsampling: the change stays within rows 3..6
    assert first.shape == (3, 16, 16) and float(first[:, 5, 7].min()) > 0
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[3:7, 5:9] = False
    assert float(first[:, outside].abs().max()) == 0
    scales = iv.channel_scales(gen, LAYER, r, z, targets)
    assert set(scales) == set(targets) and all(v.shape[0] == 8 or v.shape[0] == 4 for v in scales.values())
    again = iv.trace_insertion(gen, LAYER, r, z, torch.ones(8), 5.0, (2, 3), targets, scales)
    assert all(torch.allclose(again[t], out[t]) for t in targets)


def test_bad_input_errors_are_clear(models) -> None:
    gen, seg = models
    z = latents(1, 2, gen.z_dim)
    with pytest.raises(iv.UnitRangeError, match=r"unit index 8 is out of range for layer 'layer4' \(it has 8 units"):
        iv.apply_units(gen, LAYER, z, [1, 8], 0.0)
    with pytest.raises(iv.UnitRangeError, match="out of range"):
        iv.unit_alpha([-1], 8)
    with pytest.raises(iv.EmptyUnitSetError, match="empty unit set"):
        iv.apply_units(gen, LAYER, z, [], 0.0)
    with pytest.raises(iv.MaskShapeError, match=r"pixel mask of shape \(4, 4\) does not fit the 8x8 featuremap"):
        iv.apply_units(gen, LAYER, z, [1], 0.0, torch.ones(4, 4))
    with pytest.raises(iv.MaskShapeError, match="does not fit"):
        iv.apply_units(gen, LAYER, z, [1], 0.0, torch.ones(3, 8, 8))  # 3 masks for 2 samples
    with pytest.raises(iv.MaskShapeError, match=r"alpha has shape \(5,\)"):
        iv.apply_units(gen, LAYER, z, torch.ones(5), 0.0)
    with pytest.raises(iv.InterventionError, match=r"must lie in \[0, 1\]"):
        iv.apply_units(gen, LAYER, z, torch.full((8,), 2.0), 0.0)
    with pytest.raises(iv.MaskShapeError, match="value of shape"):
        iv.edit_featuremap(torch.zeros(1, 8, 2, 2), torch.ones(8), torch.ones(3))
    with pytest.raises(iv.InterventionError, match="unknown concept 'unicorn'"):
        iv.concept_index(seg, "unicorn")
    for err in (iv.UnitRangeError, iv.EmptyUnitSetError, iv.MaskShapeError, iv.ConceptAbsentError):
        assert issubclass(err, ValueError)


def test_conditional_mean_is_reused_streaming(models) -> None:
    gen, seg = models
    z = latents(4, 6, gen.z_dim)
    whole = iv.insertion_constants(gen, seg, LAYER, z)
    stat = ConditionalMean()
    iv.insertion_constants(gen, seg, LAYER, z[:3], stat=stat)
    parts = iv.insertion_constants(gen, seg, LAYER, z[3:], stat=stat)
    assert torch.allclose(whole.nan_to_num(-1), parts.nan_to_num(-1), atol=1e-6)


def test_bench_functions_return_benchmark_rows(models) -> None:
    gen, seg = models
    rows = bench_insert("cpu", gen, seg, concept="tree", samples=1, n_units=3) + \
        bench_ace("cpu", gen, seg, concept="tree", samples=4, epochs=1, steps_per_epoch=1, batch=2,
                     eval_items=2)
    assert [(r["bench"], r["metric"]) for r in rows] == [("insert", "seconds"), ("insert", "ms_per_location"),
                                                        ("ace", "seconds"), ("ace", "pool_seconds"),
                                                        ("ace", "seconds_per_step")]
    assert all(r["value"] > 0 and r["unit"] in ("s", "ms") for r in rows)
    import json

    assert json.loads(rows[0]["params"])["locations"] == 64
