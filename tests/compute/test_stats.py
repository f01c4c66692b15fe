"""Every streaming Stat against an exact full-batch computation, plus safetensors round trips (through the
analyses' checkpoint file, `compute.jobs.context.Checkpoint`) and merges."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import torch

from compute.core.stats import ConditionalMean, IoUCounts, PermutationNull, Quantile, Stat, TopK, bh_qvalues
from compute.jobs.context import Checkpoint, flat_state, unflat_state

S = TypeVar("S", bound=Stat)


def save_stat(stat: Stat, path: Path) -> None:
    """A Stat's state in a checkpoint file, as an analysis saves it between batches."""
    Checkpoint(path.parent, path.stem).save(1, flat_state("stat", stat.state_dict()))


def load_stat(stat: S, path: Path) -> S:
    """`stat` with the state of a checkpoint file written by save_stat (resume)."""
    _, tensors, _ = Checkpoint(path.parent, path.stem).load()
    stat.load_state_dict(unflat_state("stat", tensors))
    return stat

QS = torch.tensor([0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98, 0.99, 0.995, 0.999], dtype=torch.float64)


def distributions(batches: int = 6, n: int = 8, length: int = 2048, seed: int = 0) -> list[torch.Tensor]:
    """Batches [n, 9, length]; each unit a different distribution, unit 8's range grows 4x per batch."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(batches):
        z = torch.randn(n, 9, length, generator=g)
        u = torch.rand(n, 9, length, generator=g)
        x = torch.empty_like(z)
        x[:, 0] = z[:, 0]                                                  # normal
        x[:, 1] = z[:, 1] / torch.sqrt(-torch.log(u[:, 1]))               # Student t, df = 2
        x[:, 2] = torch.tan(math.pi * (u[:, 2] - 0.5))                     # Cauchy
        x[:, 3] = torch.relu(z[:, 3] - 0.5)                                # ReLU: spike at 0 (69 %)
        x[:, 4] = torch.nn.functional.leaky_relu(z[:, 4], 0.2)            # leaky ReLU
        x[:, 5] = torch.exp(2 * z[:, 5]) * 1e6                            # lognormal, huge values
        x[:, 6] = 3.0 + 1e-3 * u[:, 6]                                     # narrow, offset
        x[:, 7] = torch.where(u[:, 7] < 0.3, torch.zeros_like(z[:, 7]), -1e-20 * z[:, 7].abs())  # tiny <= 0
        x[:, 8] = z[:, 8] * 4.0 ** b                                       # range grows over batches
        out.append(x)
    return out


def rank_error(data: torch.Tensor, values: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """data [C, M], values [C, Q] -> [C, Q]: distance of q from the rank interval [P(X < v), P(X <= v)]."""
    s = data.double().sort(dim=1).values.contiguous()
    m = s.shape[1]
    below = torch.searchsorted(s, values.contiguous(), right=False).double() / m
    upto = torch.searchsorted(s, values.contiguous(), right=True).double() / m
    q = qs.double()[None, :]
    return torch.clamp(below - q, min=0) + torch.clamp(q - upto, min=0)


def test_quantile_rank_error_against_exact() -> None:
    batches = distributions()
    q = Quantile()
    for b in batches:
        q.add(b)
    data = torch.cat(batches).transpose(0, 1).reshape(9, -1)
    est = q.quantiles(QS)
    err = rank_error(data, est, QS)
    at99 = err[:, QS.tolist().index(0.99)]
    assert at99.max() <= 1e-3, f"rank error at q=0.99 per unit: {at99.tolist()}"
    assert err[[0, 1, 2, 3, 4, 5, 7, 8]].max() <= 1e-3, err.max(dim=1).values.tolist()
    exact = torch.quantile(data.double(), QS.double(), dim=1).T
    assert torch.allclose(est[:, QS.tolist().index(0.5)][3], torch.tensor(0.0, dtype=torch.float64))
    rel = ((est - exact).abs() / exact.abs().clamp(min=1e-30))[[0, 1, 4, 5, 6, 8]]
    assert rel[:, 6:].max() < 0.01                                   # upper quantiles: < 1 % in value
    assert torch.equal(q.min(), data.min(1).values.double()) and torch.equal(q.max(), data.max(1).values.double())
    scale = data.double().abs().mean(1)
    assert ((q.mean() - data.double().mean(1)).abs() <= 1e-6 * scale).all()
    assert q.count == data.shape[1]
    ends = q.quantiles(torch.tensor([0.0, 1.0]))
    assert torch.equal(ends[:, 0], q.min()) and torch.equal(ends[:, 1], q.max())


def test_quantile_on_4d_featuremaps_and_small_chunks() -> None:
    g = torch.Generator().manual_seed(9)
    x = torch.randn(4, 3, 64, 64, generator=g) * torch.tensor([1.0, 10.0, 0.1]).view(1, 3, 1, 1)
    a, b = Quantile(), Quantile(chunk=1000)                           # chunk: many small blocks
    a.add(x)
    b.add(x)
    assert torch.equal(a.counts, b.counts)
    c = Quantile()
    c.add(x.clone().requires_grad_())                                 # statistics detach their input
    assert torch.equal(c.counts, a.counts)
    data = x.transpose(0, 1).reshape(3, -1)
    assert rank_error(data, a.quantiles(QS), QS).max() <= 1e-3


def test_quantile_window_growth_between_blocks_is_exact() -> None:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(16, 2, 512, generator=g) * (2.0 ** torch.arange(16.0)).view(16, 1, 1)
    one_block, many = Quantile(), Quantile(chunk=1024)              # many: one block per sample
    one_block.add(x)
    many.add(x)
    assert torch.equal(one_block.counts, many.counts) and torch.equal(one_block.g, many.g)
    data = x.transpose(0, 1).reshape(2, -1)
    q99 = torch.tensor([0.99], dtype=torch.float64)
    assert rank_error(data, many.quantiles(q99), q99).max() <= 1e-3


def _bins_one_by_one(x: torch.Tensor, q: Quantile) -> torch.Tensor:
    """Reference counts [C, 2R] for x [N, C, L] in q's final windows, value by value: magnitude bin
    m = float bits of |x| * 2**(octaves - 126 - g) >> (23 - bits); x >= 0 in bin m, x < 0 (sign bit
    set, -0.0 included) in bin 2R - 1 - m."""
    c, R = x.shape[1], q.half
    scale = torch.pow(2.0, (q.octaves - 126 - q.g).double())[:, None]                   # [C, 1]
    v = x.transpose(0, 1).reshape(c, -1).double()
    mag = (v.abs() * scale).float().view(torch.int32) >> (23 - q.bits)                  # exact: power of 2
    neg = v.float().view(torch.int32) < 0
    b = torch.where(neg, 2 * R - 1 - mag, mag).long()
    return torch.zeros(c, 2 * R, dtype=torch.int64).scatter_add_(1, b, torch.ones_like(b))


@pytest.mark.parametrize("bits, octaves, chunk", [(6, 31, None), (6, 31, 300), (7, 15, 1000), (4, 63, None)])
def test_quantile_counts_equal_binning_each_value(bits: int, octaves: int, chunk: int | None) -> None:
    """The flat per-batch counts (one offset per unit and sign, folded in _flush) land every value in its
    own unit's bin: negatives, -0.0, 0 and values that later fall below the window included."""
    g = torch.Generator().manual_seed(31)
    x = torch.randn(9, 4, 7, 5, generator=g) * torch.tensor([1.0, 1e-3, 1e4, 1.0]).view(1, 4, 1, 1)
    x[0, 0, 0, :4] = torch.tensor([0.0, -0.0, 1e-30, -1e-30])
    x[:, 3] = -x[:, 3].abs()                                                            # all negative
    q = Quantile(bits, octaves, chunk=chunk)
    q.add(x[:3])
    q.add(x[3:] * 8)                                                                    # the window grows
    ref = _bins_one_by_one(torch.cat([x[:3], x[3:] * 8]).flatten(2), q)
    assert torch.equal(q.counts, ref)


@pytest.mark.parametrize("bits, octaves", [(7, 15), (4, 63), (6, 31)])
def test_quantile_other_resolutions_and_2d_input(bits: int, octaves: int) -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.randn(20000, 3, generator=g) * torch.tensor([1.0, 1e3, 1e-3])   # [N, C]: one value each
    whole, a, b = Quantile(bits, octaves), Quantile(bits, octaves), Quantile(bits, octaves)
    whole.add(x)
    a.add(x[:7000])
    b.add(x[7000:] * 1.0)
    b.merge(a)
    assert torch.equal(b.counts, whole.counts) and torch.equal(b.g, whole.g)
    q99 = torch.tensor([0.99], dtype=torch.float64)
    assert rank_error(x.t(), whole.quantiles(q99), q99).max() <= 1e-3


def test_quantile_merge_equals_adding_everything() -> None:
    batches = distributions(seed=1)
    whole, first, second = Quantile(), Quantile(), Quantile()
    for i, b in enumerate(batches):
        whole.add(b)
        (first if i % 2 else second).add(b)                          # second has the smaller range
    first.merge(second)
    for key in ("counts", "g", "lo", "hi"):
        assert torch.equal(first.state_dict()[key], whole.state_dict()[key]), key
    assert torch.allclose(first.total, whole.total, rtol=1e-12) and first.n == whole.n
    assert torch.allclose(first.quantiles(QS), whole.quantiles(QS), rtol=1e-12)


def test_quantile_state_round_trip_through_safetensors(tmp_path) -> None:
    batches = distributions(seed=2)
    whole = Quantile()
    for b in batches:
        whole.add(b)
    part = Quantile()
    for b in batches[:3]:
        part.add(b)
    save_stat(part, tmp_path / "q.safetensors")
    resumed = load_stat(Quantile(), tmp_path / "q.safetensors")
    for b in batches[3:]:
        resumed.add(b)
    assert torch.equal(resumed.counts, whole.counts) and torch.equal(resumed.g, whole.g)
    assert torch.equal(resumed.quantiles(QS), whole.quantiles(QS))


def test_quantile_rejects_nan_naming_the_unit() -> None:
    x = torch.randn(2, 5, 8)
    x[1, 3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"unit\(s\) \[3\]"):
        Quantile().add(x)
    x[1, 3, 2] = float("inf")
    q = Quantile(chunk=16)                                            # blocks of 2 units: fails midway
    q.add(torch.randn(2, 5, 8))
    before = {k: v.clone() for k, v in q.state_dict().items()}
    with pytest.raises(ValueError, match=r"\[3\]"):
        q.add(x * 100)
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in before.items())   # state untouched


def test_topk_exact_merge_and_round_trip(tmp_path) -> None:
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(100, 6, generator=g)
    scores[10:14, 2] = 0.999                                          # ties: lower sample index first
    full_v, full_i = [], []
    for u in range(6):
        order = sorted(range(100), key=lambda i: (-scores[i, u].item(), i))[:7]
        full_i.append(order)
        full_v.append([scores[i, u].item() for i in order])
    whole, a, b = TopK(7), TopK(7), TopK(7)
    for start in range(0, 100, 16):
        idx = torch.arange(start, min(start + 16, 100))
        whole.add(scores[idx], idx)
        (a if start < 48 else b).add(scores[idx], idx)
    a.merge(b)
    for stat in (whole, a):
        values, indices = stat.result()
        assert indices.tolist() == full_i
        assert torch.allclose(values, torch.tensor(full_v, dtype=torch.float64))
    part = TopK(7)
    part.add(scores[:48], torch.arange(48))
    save_stat(part, tmp_path / "t.safetensors")
    back = load_stat(TopK(7), tmp_path / "t.safetensors")             # resume, then continue
    back.add(scores[48:], torch.arange(48, 100))
    assert torch.equal(back.result()[1], whole.result()[1]) and torch.equal(back.result()[0], whole.result()[0])
    few = TopK(7)
    few.add(scores[:3], torch.arange(3))
    assert few.result()[0].shape == (6, 3)                            # only the samples seen


def iou_exact(a: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Full-batch IoU [C, K] in float64 from the definitions."""
    above = (a > t.view(1, -1, 1, 1)).double()
    mf = m.double()
    inter = torch.einsum("nchw,nkhw->ck", above, mf)
    union = above.sum((0, 2, 3))[:, None] + mf.sum((0, 2, 3))[None, :] - inter
    return inter / union


def test_iou_counts_streaming_equals_full_batch(tmp_path) -> None:
    g = torch.Generator().manual_seed(4)
    a = torch.randn(24, 10, 12, 12, generator=g)
    m = torch.rand(24, 5, 12, 12, generator=g) < torch.tensor([0.02, 0.1, 0.3, 0.6, 0.0]).view(1, 5, 1, 1)
    m[:, 1] |= a[:, 0] > 1.0                                          # unit 0 matches concept 1 somewhat
    q = Quantile()
    q.add(a)
    t = q.quantiles(torch.tensor([0.99]))[:, 0].float()
    exact = iou_exact(a, t, m)
    whole, first, second = IoUCounts(t), IoUCounts(t), IoUCounts(t)
    for i in range(0, 24, 5):
        whole.add(a[i:i + 5], m[i:i + 5])
        (first if i < 10 else second).add(a[i:i + 5], m[i:i + 5])
    first.merge(second)
    for stat in (whole, first):
        got = stat.iou()
        assert torch.isnan(got[:, 4]).all() and not torch.isnan(got[:, :4]).any()   # concept 4 absent
        assert torch.allclose(got[:, :4], exact[:, :4], atol=1e-6, rtol=0)
        assert torch.equal(stat.above, (a > t.view(1, -1, 1, 1)).sum((0, 2, 3)))
        assert torch.equal(stat.concept, m.sum((0, 2, 3)))
    part = IoUCounts(t)
    part.add(a[:10], m[:10])
    save_stat(part, tmp_path / "i.safetensors")
    back = load_stat(IoUCounts(t), tmp_path / "i.safetensors")         # resume, then continue
    back.add(a[10:], m[10:])
    assert torch.equal(back.inter, whole.inter) and torch.equal(back.above, whole.above)
    assert torch.equal(back.concept, whole.concept) and back.samples == 24 and back.pixels == whole.pixels
    with pytest.raises(ValueError, match="masks"):
        whole.add(a[:2], m[:2, :, :6])
    with pytest.raises(ValueError, match="other thresholds"):
        load_stat(IoUCounts(t + 1), tmp_path / "i.safetensors")


def iqr_exact(a: np.ndarray, t: float, m: np.ndarray) -> float:
    """I(A; M) / H(A, M) for A = a > t and M = m over all pixels, from the 2x2 joint distribution."""
    above = (a > t).ravel()
    mask = m.ravel()
    p = np.array([[np.mean(above & mask), np.mean(above & ~mask)],
                  [np.mean(~above & mask), np.mean(~above & ~mask)]])
    h = lambda v: -sum(x * np.log(x) for x in np.ravel(v) if x > 0)   # noqa: E731
    joint = h(p)
    return (h(p.sum(0)) + h(p.sum(1)) - joint) / joint


def test_iou_counts_with_levels_and_iqr() -> None:
    g = torch.Generator().manual_seed(10)
    a = torch.randn(9, 4, 10, 10, generator=g)
    m = torch.rand(9, 3, 10, 10, generator=g) < 0.2
    m[:, 0] = a[:, 1] > 0.8
    m[:, 2] = False
    levels = torch.tensor([[0.0, 0.5, 1.0, 2.0]]).expand(4, 4) + 0.1 * torch.arange(4.0)[:, None]
    stat, chunked = IoUCounts(levels), IoUCounts(levels, chunk=500)
    for i in range(0, 9, 4):
        stat.add(a[i:i + 4], m[i:i + 4])
        chunked.add(a[i:i + 4], m[i:i + 4])
    assert torch.equal(stat.inter, chunked.inter) and stat.inter.shape == (4, 4, 3)
    iou, iqr = stat.iou(), stat.iqr()
    for level in range(4):
        single = IoUCounts(levels[:, level].contiguous())
        single.add(a, m)
        assert torch.equal(single.inter, stat.inter[:, level]) and torch.equal(single.above, stat.above[:, level])
        exact = iou_exact(a, levels[:, level], m)
        assert torch.allclose(iou[:, level, :2], exact[:, :2], atol=1e-12)
        for u in range(4):
            for k in range(2):
                want = iqr_exact(a[:, u].numpy(), float(levels[u, level]), m[:, k].numpy())
                assert abs(float(iqr[u, level, k]) - want) < 1e-9
    assert torch.isnan(iqr[..., 2]).all()
    assert float(iqr[1, 2, 0]) > float(iqr[1, 0, 0])                # level 1.2 fits a > 0.8 better than 0.2



def test_iou_counts_binned_levels_equal_thresholding() -> None:
    """Many levels are counted by bins (searchsorted + bincount): the same integers as thresholding,
    with ties (a value equal to a threshold is not above it) and unsorted levels."""
    g = torch.Generator().manual_seed(11)
    a = torch.randn(7, 5, 9, 9, generator=g).round(decimals=1)       # many ties with the levels below
    m = torch.rand(7, 4, 9, 9, generator=g) < 0.3
    m[:, 3] = False
    levels = torch.linspace(-2, 2, 41)[torch.randperm(41, generator=g)]
    thr = levels[None, :].expand(5, 41) + 0.1 * torch.arange(5.0)[:, None]
    binned, direct = IoUCounts(thr), IoUCounts(thr, binned_from=10 ** 6)
    for i in range(0, 7, 3):
        binned.add(a[i:i + 3], m[i:i + 3])
        direct.add(a[i:i + 3], m[i:i + 3])
    assert torch.equal(binned.inter, direct.inter) and torch.equal(binned.above, direct.above)
    assert torch.equal(binned.concept, direct.concept) and binned.pixels == direct.pixels
    assert int(binned.above[0, levels.argmin()]) == int((a[:, 0] > levels.min()).sum())


def _cross(a: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """c[i, u, j, k] = |(a_i,u > t_u) & m_j,k| for one block: a [b, C, H, W], t [C], m [b, K, H, W]."""
    above = (a > t[None, :, None, None]).double()
    return torch.einsum("iuhw,jkhw->iujk", above, m.double())


def test_permutation_null_moments_equal_every_pairing() -> None:
    """Within a block, mean and variance of sum_i c_i,pi(i) over all b! permutations are exact."""
    import itertools

    g = torch.Generator().manual_seed(12)
    b, c, k = 5, 3, 4
    a = torch.randn(b, c, 6, 6, generator=g)
    m = torch.rand(b, k, 6, 6, generator=g) < 0.4
    m[:, 0] = a[:, 0] > 0.3                                          # unit 0 detects concept 0
    t = torch.tensor([0.3, 0.0, 1.0])
    stat = PermutationNull(t, block=b)
    stat.add(a, m)
    cross = _cross(a, t, m)
    sums = torch.stack([sum(cross[i, :, p[i]] for i in range(b)) for p in itertools.permutations(range(b))])
    assert torch.allclose(stat.null_mean, sums.mean(0), atol=1e-9)
    assert torch.allclose(stat.null_var, sums.var(0, unbiased=False), atol=1e-9)
    assert torch.equal(stat.inter, torch.diagonal(cross, dim1=0, dim2=2).sum(-1).long())
    exact_p = (sums >= stat.inter.double()[None]).double().mean(0)  # the exact permutation p-value
    assert float(exact_p[0, 0]) <= 1 / 120 + 1e-12 and float(stat.p_value()[0, 0]) < 0.01
    assert float(stat.z()[0, 0]) > 3


def test_permutation_null_blocks_add_merge_round_trip(tmp_path) -> None:
    """Blocks are independent: moments add over blocks (uneven last block included); merge of stats
    that saw whole blocks equals one stat; per-concept thresholds [C, K] count concept k at t[:, k]."""
    g = torch.Generator().manual_seed(13)
    a = torch.randn(11, 4, 8, 8, generator=g)
    m = torch.rand(11, 3, 8, 8, generator=g) < 0.3
    t = torch.tensor([0.0, 0.5, 1.0, 1.5])
    one = PermutationNull(t, block=4)
    one.add(a, m)                                                   # blocks 0-3, 4-7, 8-10
    parts = [PermutationNull(t, block=4) for _ in range(2)]
    parts[0].add(a[:4], m[:4])
    parts[0].add(a[4:8], m[4:8])
    parts[1].add(a[8:], m[8:])
    parts[0].merge(parts[1])
    for name in ("inter", "above", "concept", "null_mean", "null_var"):
        assert torch.allclose(getattr(one, name).double(), getattr(parts[0], name).double(), atol=1e-9), name
    blocks = [PermutationNull(t, block=4) for _ in range(3)]
    for blk, s in zip(blocks, (0, 4, 8)):
        blk.add(a[s:s + 4], m[s:s + 4])
    assert torch.allclose(one.null_var, sum(x.null_var for x in blocks), atol=1e-9)
    save_stat(one, tmp_path / "p.safetensors")
    back = load_stat(PermutationNull(t, block=4), tmp_path / "p.safetensors")
    assert torch.equal(back.null_var, one.null_var) and torch.equal(back.inter, one.inter)
    with pytest.raises(ValueError):
        load_stat(PermutationNull(t, block=8), tmp_path / "p.safetensors")
    # observed counts and IoU equal the exact full-batch ones
    exact = iou_exact(a, t, m)
    assert torch.allclose(one.iou(), exact, atol=1e-12)
    # per-concept thresholds: concept k at t2[:, k] equals a [C] stat at that column
    t2 = torch.stack([t, t + 0.25, t - 0.25], 1)                    # [C, K]
    per = PermutationNull(t2, block=4)
    per.add(a, m)
    for j in range(3):
        col = PermutationNull(t2[:, j].contiguous(), block=4)
        col.add(a, m)
        assert torch.equal(per.inter[:, j], col.inter[:, j]) and torch.equal(per.above[:, j], col.above[:, j])
        assert torch.allclose(per.null_var[:, j], col.null_var[:, j], atol=1e-9)


def test_permutation_null_is_calibrated_on_independent_maps() -> None:
    """Maps independent of the masks (but spatially structured like them): p-values are ~uniform, so
    about 5 % fall under 0.05 and BH leaves ~no discoveries; a detector gets a tiny p."""
    g = torch.Generator().manual_seed(14)
    n, c, k = 400, 40, 5
    rows = torch.linspace(0, 1, 16)[None, None, :, None].expand(n, 1, 16, 16)
    m = (torch.rand(n, k, 16, 16, generator=g) * 0.6 + rows) > 0.9     # layout: more concept near the bottom
    a = torch.randn(n, c, 16, 16, generator=g) + 2 * rows                # unit maps share the layout
    a = torch.nn.functional.avg_pool2d(a, 3, 1, 1)
    a[:, 0] = m[torch.randperm(n, generator=g), 0].float() + 0.1 * torch.randn(n, 16, 16, generator=g)
    a[:, 1] = m[:, 1].float() + 0.1 * torch.randn(n, 16, 16, generator=g)  # a real detector of concept 1
    stat = PermutationNull(torch.full((c,), 1.0), block=8)
    for s in range(0, n, 32):
        stat.add(a[s:s + 32], m[s:s + 32])
    p = stat.p_value()
    q = bh_qvalues(p)
    null_p = p[2:].flatten()
    assert 0.01 <= float((null_p < 0.05).double().mean()) <= 0.10
    assert float(q[1, 1]) < 1e-6
    assert int((q[2:] < 0.05).sum()) <= 2
    assert float(q[0, 0]) > 0.05                                    # another image's mask: no association


def test_bh_qvalues_equal_scipy() -> None:
    from scipy.stats import false_discovery_control

    g = torch.Generator().manual_seed(15)
    p = torch.rand(6, 7, generator=g, dtype=torch.float64) ** 3
    p[0, 0] = p[1, 1] = float("nan")
    q = bh_qvalues(p)
    ok = ~torch.isnan(p)
    want = false_discovery_control(p[ok].numpy(), method="bh")
    assert np.allclose(q[ok].numpy(), want, atol=1e-12) and torch.isnan(q[~ok]).all()


def test_conditional_mean_exact_merge_round_trip(tmp_path) -> None:
    g = torch.Generator().manual_seed(5)
    a = torch.randn(12, 4, 6, 6, generator=g)
    w = torch.rand(12, 3, 6, 6, generator=g)
    w[:, 2] = 0.0                                                     # a concept with no coverage
    exact = torch.einsum("nchw,nkhw->ck", a.double(), w.double()) / w.double().sum((0, 2, 3))
    whole, first, second = ConditionalMean(), ConditionalMean(), ConditionalMean()
    for i in range(0, 12, 4):
        whole.add(a[i:i + 4], w[i:i + 4])
        (first if i == 0 else second).add(a[i:i + 4], w[i:i + 4])
    first.merge(second)
    for stat in (whole, first):
        k = stat.result()
        assert torch.allclose(k[:, :2], exact[:, :2], rtol=1e-12) and torch.isnan(k[:, 2]).all()
    save_stat(second, tmp_path / "c.safetensors")                      # second holds samples 4..11
    back = ConditionalMean()
    back.add(a[:4], w[:4])
    back.merge(load_stat(ConditionalMean(), tmp_path / "c.safetensors"))
    assert torch.allclose(back.num, whole.num, rtol=1e-12) and torch.allclose(back.den, whole.den, rtol=1e-12)
    part = ConditionalMean()
    part.add(a[:4], w[:4])
    save_stat(part, tmp_path / "c.safetensors")
    resumed = load_stat(ConditionalMean(), tmp_path / "c.safetensors")   # resume, then continue
    resumed.add(a[4:8], w[4:8])
    resumed.add(a[8:], w[8:])
    assert torch.allclose(resumed.result()[:, :2], whole.result()[:, :2], rtol=1e-12)


def test_every_stat_is_a_stat() -> None:
    """The Stat protocol: add, state_dict, load_state_dict, merge (Quantile's state is reloaded into a
    fresh one and merged, to use every member through the protocol's names)."""
    t = torch.zeros(3)
    for stat in (Quantile(), TopK(2), IoUCounts(t), PermutationNull(t), ConditionalMean()):
        assert isinstance(stat, Stat), type(stat).__name__
    assert not isinstance(torch.nn.Linear(1, 1), Stat)  # a module has state_dict but no add / merge
    x = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
    first: Stat = Quantile()
    first.add(x[:2])
    second: Stat = Quantile()
    second.load_state_dict(first.state_dict())
    second.merge(first)
    whole = Quantile()
    whole.add(x[:2])
    whole.add(x[:2])
    assert torch.equal(second.state_dict()["counts"], whole.state_dict()["counts"])


def test_permutation_null_int8_path_equals_float_path() -> None:
    """[C] thresholds on CPU count with int8 x int8 -> int32 matmuls (_add_int8); the counts and the
    null moments equal, bit for bit, those of the float32 path ([C, K] thresholds equal to t for every
    concept), over an uneven last block and with pixels on the threshold."""
    g = torch.Generator().manual_seed(21)
    a = torch.randn(13, 5, 9, 7, generator=g).round(decimals=1)                   # ties at t
    m = torch.rand(13, 4, 9, 7, generator=g) < 0.35
    t = torch.tensor([0.0, 0.5, -0.3, 1.0, 2.5])
    fast, ref = PermutationNull(t, block=4), PermutationNull(t[:, None].expand(5, 4).contiguous(), block=4)
    for s in (0, 6):                                                                # two adds, blocks 4+2, 4+3
        fast.add(a[s:s + 6 + (s > 0)], m[s:s + 6 + (s > 0)])
        ref.add(a[s:s + 6 + (s > 0)], m[s:s + 6 + (s > 0)])
    for name in ("inter", "above", "concept", "null_mean", "null_var"):
        x, y = getattr(fast, name), getattr(ref, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name
    assert int(fast.above[0, 0]) == int((a[:, 0] > 0).sum())
    assert torch.equal(fast.inter, sum(torch.diagonal(_cross(a[s:s + 1], t, m[s:s + 1]), dim1=0, dim2=2).sum(-1)
                                       for s in range(13)).long())


def test_quantile_refuses_more_units_than_its_int32_keys_hold() -> None:
    """bits=12, octaves=63: 2**19 bins per unit; 3000 units would overflow the flat int32 binning keys
    (refused before anything is allocated)."""
    import pytest

    with pytest.raises(ValueError, match="int32 binning keys"):
        Quantile(bits=12, octaves=63).add(torch.zeros(1, 3000, 1, 1))
