"""JointHist (one-pass dissection statistic) against exact batch computations: counts at every edge,
the null at every candidate equal to PermutationNull at that threshold, the threshold's rank error
against exact order statistics, quantiles, state round trip and merge."""
from __future__ import annotations

import pytest
import torch

from compute.core.joint_hist import JointHist
from compute.core.stats import PermutationNull


def _data(n: int = 24, c: int = 6, k: int = 5, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations [N, C, size, size] with ReLU zeros, a spatial trend and a concept link; overlapping
    bool masks [N, K, size, size]."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, k, size, size, generator=g)
    masks = base > 0.7                                                       # overlapping concepts
    a = torch.randn(n, c, size, size, generator=g) * torch.linspace(0.5, 3.0, c)[None, :, None, None]
    a[:, 0] = a[:, 0] + 2.0 * masks[:, 0].float()                            # unit 0 follows concept 0
    a[:, 1] = torch.relu(a[:, 1])                                            # many exact zeros
    return a, masks


def _exact_above_inter(a: torch.Tensor, m: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    above = (a > t[None, :, None, None]).double()
    return above.sum((0, 2, 3)), torch.einsum("nchw,nkhw->ck", above, m.double())


def test_counts_at_every_edge_are_exact() -> None:
    a, m = _data()
    jh = JointHist(bins=32, candidates=9, window=0.05, block=4)
    for s in range(0, 24, 8):
        jh.add(a[s:s + 8], m[s:s + 8])
    e = jh.edges.shape[1]
    pos = torch.arange(e)[None, :].expand(a.shape[1], -1).contiguous()
    above, inter = jh.counts_at(pos)
    for j in range(0, e, 5):
        t = jh.edges[:, j]
        ea, ei = _exact_above_inter(a, m, t)
        assert torch.equal(above[:, j].double(), ea)
        assert torch.equal(inter[:, j].double(), ei)
    assert torch.equal(jh.concept, m.sum((0, 2, 3)))
    assert jh.pixels == a.shape[0] * 16 * 16


@pytest.mark.parametrize("block", [4, 5])
def test_null_at_every_candidate_equals_permutation_null(block: int) -> None:
    a, m = _data(n=22)
    jh = JointHist(level=0.9, bins=16, candidates=7, window=0.05, block=block)
    batches = [(0, 10), (10, 22)]
    for s, e in batches:
        jh.add(a[s:e], m[s:e])
    for j in range(jh.candidates):
        idx = torch.full((a.shape[1],), j)
        got = jh.null_at(idx)
        ref = PermutationNull(got.thresholds, block=block)
        for s, e in batches:
            ref.add(a[s:e], m[s:e])
        for name in ("inter", "above", "concept"):
            assert torch.equal(getattr(got, name), getattr(ref, name)), (j, name)
        assert torch.allclose(got.null_mean, ref.null_mean, rtol=1e-12, atol=1e-9)
        assert torch.allclose(got.null_var, ref.null_var, rtol=1e-9, atol=1e-6)
        assert torch.allclose(got.p_value(), ref.p_value(), equal_nan=True)


def test_null_in_int64_on_large_images_equals_permutation_null() -> None:
    """112 x 112 images, blocks of 4, a low level and near-full masks: sum_ij c_ij^2 passes 2^31, so the
    null block must count in int64 (b^2 HW^2 >= 2^31), not int32."""
    a, _ = _data(n=8, c=2, k=3, size=112, seed=3)
    m = torch.ones(8, 3, 112, 112, dtype=torch.bool)
    m[:, 1, :4] = False
    jh = JointHist(level=0.02, bins=16, candidates=5, window=0.01, block=4)
    jh.add(a, m)
    for j in range(jh.candidates):
        got = jh.null_at(torch.full((a.shape[1],), j))
        assert float(got.inter.max()) ** 2 * 16 >= 2 ** 31                      # int32 would overflow
        ref = PermutationNull(got.thresholds, block=4)
        ref.add(a, m)
        assert torch.equal(got.inter, ref.inter) and torch.equal(got.above, ref.above)
        assert torch.allclose(got.null_mean, ref.null_mean, rtol=1e-12, atol=1e-9)
        assert torch.allclose(got.null_var, ref.null_var, rtol=1e-9, atol=1e-6)


def _halves_fresh(a: torch.Tensor, m: torch.Tensor) -> JointHist:
    """The reference for the cache tests: the two halves of a batch added with masks made fresh for each."""
    ref = JointHist(bins=16, candidates=5, window=0.05, block=4)
    ref.add(a[:8], m[:8].clone())
    ref.add(a[8:], m[8:].clone())
    return ref


def test_masks_changed_in_place_between_adds_are_not_taken_from_the_cache() -> None:
    """The per-batch masks cache (shared by the layers of a step) must see an edited masks tensor."""
    a, m = _data(n=16)
    m1 = m[:8].clone()
    jh = JointHist(bins=16, candidates=5, window=0.05, block=4)
    jh.add(a[:8], m1)
    m1.copy_(m[8:])                                                          # same tensor, new contents
    jh.add(a[8:], m1)
    _states_equal(jh, _halves_fresh(a, m))


def test_threshold_rank_error_within_the_bound_against_exact_order_statistics() -> None:
    a, m = _data(n=64, size=32, seed=3)
    jh = JointHist(level=0.99)                                               # defaults: the dissection's
    for s in range(0, 64, 16):
        jh.add(a[s:s + 16], m[s:s + 16])
    t, _ = jh.threshold()
    flat = a.transpose(0, 1).reshape(a.shape[1], -1)
    exact_rank = 1.0 - (flat > t[:, None]).double().mean(1)                  # exact order statistics
    err = (exact_rank - 0.99).abs()
    assert torch.allclose(err, jh.rank_error(), atol=1e-12)
    # the stated bound: half the widest gap between neighbouring candidates' exact ranks, when rank q lies
    # among them (nominally window / (candidates - 1) / 2 = 9.4e-5 here; wider where the warm-up widened
    # the window or fine cells merged candidates)
    above, _ = jh.counts_at(jh.cand)
    ranks = 1.0 - above.double() / jh.pixels                                  # [C, L] ascending
    assert bool(((ranks[:, 0] <= 0.99) & (ranks[:, -1] >= 0.99)).all())
    half_gap = 0.5 * (ranks[:, 1:] - ranks[:, :-1]).amax(1)
    assert bool((err <= half_gap + 1e-12).all()), (err, half_gap)
    assert float(err.max()) <= 1e-3


def test_quantiles_within_rank_0001_of_exact_order_statistics() -> None:
    a, m = _data(n=64, size=32, seed=5)
    jh = JointHist()
    for s in range(0, 64, 16):
        jh.add(a[s:s + 16], m[s:s + 16])
    qs = torch.tensor([0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 0.995, 0.999, 1.0], dtype=torch.float64)
    got = jh.quantiles(qs)
    flat = a.transpose(0, 1).reshape(a.shape[1], -1).double()
    n = flat.shape[1]
    for u in range(a.shape[1]):
        srt = flat[u].sort().values
        lo_rank = torch.searchsorted(srt, got[u], right=False).double() / n     # values strictly below
        hi_rank = torch.searchsorted(srt, got[u], right=True).double() / n      # values at or below
        dist = torch.maximum(lo_rank - qs, qs - hi_rank).clamp(min=0)
        assert float(dist.max()) <= 1e-3, (u, dist)
    assert torch.equal(got[:, 0], flat.amin(1)) and torch.equal(got[:, -1], flat.amax(1))


def test_state_round_trip_and_merge_equal_one_stat() -> None:
    a, m = _data(n=24)
    whole = JointHist(bins=32, candidates=5, window=0.05, block=4)
    whole.warm_up(a[:8])
    first, second = whole.with_edges(), whole.with_edges()
    for s in range(0, 24, 8):
        whole.add(a[s:s + 8], m[s:s + 8])
    first.add(a[:8], m[:8])
    second.add(a[8:16], m[8:16])
    second.add(a[16:], m[16:])
    restored = JointHist(bins=32, candidates=5, window=0.05, block=4)
    restored.load_state_dict(first.state_dict())
    restored.merge(second)
    for name, v in whole.state_dict().items():
        assert torch.allclose(restored.state_dict()[name].double(), v.double(), rtol=1e-12), name
    with pytest.raises(ValueError):
        JointHist(bins=16).load_state_dict(whole.state_dict())


def test_lift_per_unit_chunk_equals_lifting_everything() -> None:
    from compute.analyses.quantiles import upsample

    g = torch.Generator().manual_seed(2)
    a = torch.randn(8, 10, 4, 4, generator=g)
    m = torch.rand(8, 3, 16, 16, generator=g) > 0.6
    one = JointHist(bins=16, candidates=5, window=0.05, block=4, chunk=16 * 16 * 8 * 3)   # 3 units a chunk
    ref = JointHist(bins=16, candidates=5, window=0.05, block=4)
    one.add(a, m, lift=lambda x: upsample(x, 16))
    ref.add(upsample(a, 16), m)
    for name, v in ref.state_dict().items():
        assert torch.allclose(one.state_dict()[name].double(), v.double()), name


def _states_equal(x: JointHist, y: JointHist) -> None:
    sy = y.state_dict()
    for key, value in x.state_dict().items():
        assert torch.equal(sy[key], value), key


def test_masks_made_under_inference_mode_are_counted_and_never_cached() -> None:
    """Inference tensors have no version counter: add must not read it, and an in-place edit made under
    inference_mode between two adds must be seen."""
    a, m = _data(n=16)
    jh = JointHist(bins=16, candidates=5, window=0.05, block=4)
    with torch.inference_mode():
        m1 = m[:8].clone()
        jh.add(a[:8], m1)
        m1.copy_(m[8:])                                                      # same tensor, new contents
        jh.add(a[8:], m1)
    _states_equal(jh, _halves_fresh(a, m))


def test_masks_cache_is_keyed_on_the_tensor_passed_and_released_with_it() -> None:
    """Every layer of a step passing the same masks gets one _Masks (keyed on the tensor as passed, so
    masks on another device than the stat are moved once), and it is freed when the masks are."""
    import gc

    from compute.core import joint_hist

    a, m = _data(n=8)
    m = m.clone()
    cpu = torch.device("cpu")
    first = joint_hist._masks(m, 4, cpu)
    assert joint_hist._masks(m, 4, cpu) is first
    assert joint_hist._masks(m, 5, cpu) is not first                        # another block: rebuilt
    jh = JointHist(bins=16, candidates=5, window=0.05, block=4)
    jh.add(a, m)
    assert joint_hist._MASKS_CACHE and joint_hist._MASKS_CACHE[0][0]() is m
    del m
    gc.collect()
    assert joint_hist._MASKS_CACHE == []


@pytest.mark.parametrize("level", [0.99, 0.9, 0.5])
def test_dense_and_sparse_null_give_bit_equal_states_and_the_exact_null(level: float,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The null counted by scattering every value above the lowest candidate (sparse) and by one matmul
    per block for the values above every candidate (dense) give the same state, bit for bit, and at
    every candidate PermutationNull's counts and moments."""
    from compute.core import joint_hist

    a, m = _data(n=22, size=24, seed=7)
    states = []
    for share in (1.0, 0.0):                                                # always sparse, always dense
        monkeypatch.setattr(joint_hist, "SPARSE_SHARE", share)
        jh = JointHist(level=level, bins=16, candidates=7, window=0.05, block=4)
        jh.add(a[:10], m[:10])
        jh.add(a[10:], m[10:])
        states.append(jh)
    _states_equal(states[0], states[1])
    jh = states[1]
    for j in range(jh.candidates):
        got = jh.null_at(torch.full((a.shape[1],), j))
        ref = PermutationNull(got.thresholds, block=4)
        ref.add(a[:10], m[:10])
        ref.add(a[10:], m[10:])
        assert torch.equal(got.inter, ref.inter) and torch.equal(got.above, ref.above), j
        assert torch.allclose(got.null_mean, ref.null_mean, rtol=1e-12, atol=1e-9), j
        assert torch.allclose(got.null_var, ref.null_var, rtol=1e-9, atol=1e-6), j


def test_counts_exact_whatever_the_float32_matmul_precision() -> None:
    """The joint counts and the dense null are float matmuls of integers: they must not round when
    float32 matmuls may use TF32 / bfloat16 ("high", "medium"); float64 is used then."""
    from compute.core.joint_hist import _exact_float

    a, m = _data(n=16, size=32)
    ref = JointHist(level=0.5, bins=16, candidates=5, window=0.05, block=4)
    ref.add(a, m)
    before = torch.get_float32_matmul_precision()
    try:
        for precision in ("high", "medium"):
            torch.set_float32_matmul_precision(precision)
            assert _exact_float(torch.device("cpu"), 10) == torch.float64
            jh = JointHist(level=0.5, bins=16, candidates=5, window=0.05, block=4)
            jh.add(a, m)
            _states_equal(jh, ref)
    finally:
        torch.set_float32_matmul_precision(before)
    assert _exact_float(torch.device("cpu"), 2 ** 24 - 1) == torch.float32
    assert _exact_float(torch.device("cpu"), 2 ** 24) == torch.float64
    assert _exact_float(torch.device("cuda"), 10) == torch.float64
