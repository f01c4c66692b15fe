"""The permutation null is calibrated on the bundled village-gan + village-seg (issue 15, item 1).

Three dissections of layer4 (64 units) against the masks of the same images (latents of seed 7):
- independent: the featuremaps come from the same generator fed *other* latents (seed 8), so the unit
  maps carry no information about the images segmented, yet keep the generator's spatial layout. At
  most 5 % of units may beat chance (BH q < 0.05 on the best concept; ~0 expected) and the raw
  p-values must be about uniform (a share near 5 % under 0.05);
- own: the same layer fed the images' own latents: most units beat chance;
- planted: the independent maps with unit 0 replaced, through a Tap edit, by the image's tree mask
  (average-pooled to the layer's 8x8) plus noise: q < 1e-3 and labelled tree.
(A generator with random weights would not be a null: its units still follow the image it draws.)
Thresholds are each unit's 0.99 quantile on a third latent set (seed 9). Measured numbers are in the
README; the bars asserted here are the issue's.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compute.analyses.dissect import fraction_beating_chance, layer_tests
from compute.analyses.quantiles import upsample
from compute.core.stats import PermutationNull, Quantile
from compute.core.tap import Edit, Tap
from ingest.samples import latents

ZOO = Path(__file__).resolve().parents[2] / "ingest" / "zoo"
LAYER, N, BATCH = "layer4", 320, 32


@pytest.fixture(scope="module")
def tests_by_case() -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    return calibration_tests()


def calibration_tests() -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """{case: layer_tests} for the three cases, and the concept names."""
    from ingest.models.progan import load_progan
    from ingest.models.village_seg import load_village_seg

    torch.manual_seed(0)
    gen = load_progan(ZOO / "village-gan.safetensors")
    seg = load_village_seg(str(ZOO / "village-seg.safetensors"))
    names = [c.name for c in seg.concepts][1:]
    tree = names.index("tree")
    size = int(seg.resolution)

    def layer(z: torch.Tensor, edit: dict | None = None) -> torch.Tensor:
        with torch.no_grad(), Tap(gen, [LAYER], edit=edit, stop_after=LAYER) as tap:
            tap.run(z)
            return tap[LAYER]

    q = Quantile()
    for s in range(0, 128, BATCH):
        q.add(upsample(layer(latents(9, BATCH, gen.z_dim, start=s)), size))
    t = q.quantiles([0.99])[:, 0].float()
    stats = {case: PermutationNull(t, block=8) for case in ("independent", "own", "planted")}
    noise = torch.Generator().manual_seed(1)
    for s in range(0, N, BATCH):
        z_img, z_feat = latents(7, BATCH, gen.z_dim, start=s), latents(8, BATCH, gen.z_dim, start=s)
        with torch.no_grad():
            masks = seg.concept_masks(gen(z_img))[:, 1:]
        indep = layer(z_feat)
        stats["independent"].add(upsample(indep, size), masks)
        stats["own"].add(upsample(layer(z_img), size), masks)
        h = indep.shape[-1]
        value = torch.zeros_like(indep)
        pooled = F.adaptive_avg_pool2d(masks[:, tree:tree + 1].float(), h)[:, 0]
        value[:, 0] = (pooled + 0.3 * torch.randn(pooled.shape, generator=noise)) * indep.std() * 4
        alpha = torch.zeros(indep.shape[1])
        alpha[0] = 1.0
        stats["planted"].add(upsample(layer(z_feat, {LAYER: Edit(alpha, value)}), size), masks)
    return {case: layer_tests(st) for case, st in stats.items()}, names


def test_independent_layer_rarely_beats_chance(tests_by_case) -> None:
    tests, _ = tests_by_case
    ind = tests["independent"]
    assert fraction_beating_chance(ind) <= 0.05
    p = ind["p"][~torch.isnan(ind["p"])]
    assert 0.01 <= float((p < 0.05).double().mean()) <= 0.12, "raw p-values about uniform under the null"


def test_own_latent_keeps_most_units(tests_by_case) -> None:
    tests, _ = tests_by_case
    assert fraction_beating_chance(tests["own"]) >= 0.5


def test_planted_tree_unit_is_found(tests_by_case) -> None:
    tests, names = tests_by_case
    planted = tests["planted"]
    best = int(torch.nan_to_num(planted["iou"][0], nan=-1.0).argmax())
    assert names[best] == "tree"
    assert float(planted["q"][0, best]) < 1e-3
    # the other 63 units are still the independent ones: they stay at chance
    others = {k: v[1:] for k, v in planted.items()}
    others["q"] = planted["q"][1:]
    assert fraction_beating_chance(others) <= 0.05


if __name__ == "__main__":  # the README's numbers: python -m tests.compute.test_null_calibration
    res, concept_names = calibration_tests()
    for case, t in res.items():
        p = t["p"][~torch.isnan(t["p"])]
        print(f"{case:12s} units beating chance (BH q < 0.05): {fraction_beating_chance(t):.3f}; "
              f"tests with raw p < 0.05: {float((p < 0.05).double().mean()):.3f} of {p.numel()}")
    pl = res["planted"]
    print(f"planted unit 0: best concept {concept_names[int(torch.nan_to_num(pl['iou'][0], nan=-1).argmax())]}, "
          f"q = {float(pl['q'][0].min()):.3g}, log10 p = {float(pl['log10_p'][0].min()):.1f}")
