"""Dissection: streaming IoU equals the exact full-batch IoU; IQR mode; null baseline; absent concepts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compute import runner, spec as specmod
from compute.tap import Tap
from db import store
from ingest.samples import latents
from ingest.zoo import load_model_spec, load_segmenter_spec


@pytest.fixture(scope="module")
def computed(dissect_spec: Path) -> tuple[specmod.Spec, str]:
    import os

    cwd = os.getcwd()
    os.chdir(dissect_spec.parent)  # the run's .cache/ goes beside the spec
    try:
        s = specmod.load(dissect_spec)
        out = runner.run(s, quiet=True, echo=lambda m: None)
    finally:
        os.chdir(cwd)
    assert [o.state for o in out] == ["done", "done"], [o.error for o in out]
    return s, s.store


def test_streaming_iou_equals_exact_full_batch(computed) -> None:
    s, db = computed
    g = load_model_spec(s.model("tiny"))
    seg = load_segmenter_spec(s.segmenter("tiny-seg"))
    z = latents(2, 40, g.z_dim)
    with torch.no_grad(), Tap(g, ["layer3", "layer8"]) as tap:
        images = g(z)
        acts = {l: tap[l] for l in ("layer3", "layer8")}
    masks = seg.concept_masks(images)[:, 1:].double()  # [N, K, H, W]
    names = [c.name for c in seg.concepts][1:]
    rows = store.read("select u.layer, u.unit, u.concept, u.threshold, u.iou from unit_iou u join runs r using (run_key) "
                      "where r.name = 'dq' order by u.layer, u.unit, u.concept", path=db)
    assert len(rows) == sum(a.shape[1] for a in acts.values()) * len(names)
    for layer, a in acts.items():
        up = F.interpolate(a, size=(64, 64), mode="bilinear", align_corners=True)
        sub = rows.filter(rows["layer"] == layer)
        t = torch.tensor(sub.group_by("unit", maintain_order=True).agg(
            __import__("polars").col("threshold").first())["threshold"].to_list())
        above = (up > t.float()[None, :, None, None]).double()  # [N, C, H, W]
        inter = torch.einsum("nchw,nkhw->ck", above, masks)
        union = above.sum((0, 2, 3))[:, None] + masks.sum((0, 2, 3))[None, :] - inter
        exact = torch.where(masks.sum((0, 2, 3))[None, :] > 0, inter / union.clamp_min(1), torch.nan)
        by = {(u, c): v for u, c, v in zip(sub["unit"], sub["concept"], sub["iou"])}
        got = torch.tensor([[np.nan if by[(u, c)] is None else by[(u, c)] for c in names]
                            for u in range(exact.shape[0])], dtype=torch.float64)
        both = torch.isnan(exact) == torch.isnan(got)
        assert bool(both.all()), "NULL IoU exactly where the concept never appears"
        ok = ~torch.isnan(exact)
        assert torch.allclose(got[ok], exact[ok], atol=1e-6, rtol=0)


def test_thresholds_are_the_q99_quantiles(computed) -> None:
    s, db = computed
    df = store.read("""select distinct i.layer, i.unit, i.threshold, q.value from unit_iou i
        join runs r on r.run_key = i.run_key
        join unit_quantiles q on q.run_key = i.run_key and q.layer = i.layer and q.unit = i.unit
        where r.name = 'dq' and q.q = 0.99""", path=db)
    assert len(df) > 0 and np.allclose(df["threshold"].to_numpy(), df["value"].to_numpy(), atol=1e-5)


def test_iqr_mode_and_null_baseline(computed) -> None:
    s, db = computed
    df = store.read("select u.iqr, u.iou, u.null_mean, u.z, u.p_value from unit_iou u join runs r using (run_key) "
                    "where r.name = 'diqr' and iou is not null", path=db)
    assert len(df) > 0
    assert df["iqr"].null_count() == 0 and df["iqr"].min() >= 0 and df["iqr"].max() <= 1
    assert df["p_value"].min() >= 0 and df["p_value"].max() <= 1
    null = store.read("select * from layer_null_iou", path=db)
    assert set(null["layer"].to_list()) == {"layer3", "layer8"} and (null["n_values"] > 0).all()
    params = store.read("select params from runs where name = 'diqr'", path=db)["params"][0]
    assert '"threshold":"iqr"' in params
    views = store.read("select * from unit_labels", path=db)
    assert len(views) > 0


@pytest.mark.parametrize("h", [1, 4, 8, 32])
def test_matmul_upsample_equals_interpolate(h: int) -> None:
    from compute.analyses.quantiles import upsample

    x = torch.randn(3, 5, h, h)
    want = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=True)
    assert torch.allclose(upsample(x, 64), want, atol=1e-5)


def test_non_finite_activations_name_the_layer_and_unit() -> None:
    from compute.analyses.quantiles import check_finite

    act = torch.randn(4, 6, 5, 5)
    check_finite(act, "layer3", "m")
    check_finite(torch.full((4, 6, 5, 5), 3e38), "layer3", "m")  # the sum overflows; every value is finite
    for bad in (float("nan"), float("inf"), -float("inf")):
        a = act.clone()
        a[2, 3, 1, 4] = bad
        with pytest.raises(FloatingPointError, match=r"model 'm' layer 'layer3' unit 3"):
            check_finite(a, "layer3", "m")
