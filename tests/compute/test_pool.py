"""LayerPool on tiny random models: a batch is the generator cut at the layer and the segmenter on its
finished images, batches are kept, the constants equal `insertion_constants`, a streamed pass killed
midway resumes to the uninterrupted statistics; Gather and Sum against the whole-batch computation."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compute.core import intervene as iv
from compute.core.pool import Gather, LayerPool, Sum
from compute.core.stats import ConditionalMean
from compute.jobs.tally import Checkpoint, LocalEngine
from ingest.models.progan import load_progan
from ingest.models.village_seg import load_village_seg
from ingest.samples import latents
from tests.compute.test_tally import _Ctx as _TallyCtx, _Job

LAYER = "layer4"


@pytest.fixture(scope="module")
def models(tiny_gan: Path, tiny_seg: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    return load_progan(str(tiny_gan)).eval(), load_village_seg(str(tiny_seg)).eval()


class _Ctx(_TallyCtx):
    """test_tally's run context with one model pair and an engine (what LayerPool.of and stream read)."""

    checkpoint_every = 1

    def __init__(self, root: Path, gen: torch.nn.Module, seg: torch.nn.Module) -> None:
        super().__init__(root)
        self.gen, self.seg, self.engine = gen, seg, LocalEngine()

    def generator(self, job) -> torch.nn.Module:
        return self.gen

    def segmenter(self, job) -> torch.nn.Module:
        return self.seg


def test_batch_is_the_cut_generator_and_the_segmenter(models) -> None:
    gen, seg = models
    pool = LayerPool(gen, LAYER, seg, seed=3, probs=True)
    b = pool.batch(2, 3)
    z = latents(3, 3, int(gen.z_dim), start=2)
    r = iv.featuremap(gen, LAYER, z)
    with torch.no_grad():
        images = gen(z)
    assert torch.equal(b.z, z) and torch.equal(b.r, r)
    assert torch.equal(b.masks, seg.concept_masks(images))
    assert torch.allclose(b.probs, torch.nn.functional.adaptive_avg_pool2d(seg.probs(images), r.shape[2:]))
    assert pool.batch(2, 3) is b  # kept
    fresh = LayerPool(gen, LAYER, seg, seed=3, keep=False)
    assert fresh.batch(2, 3) is not fresh.batch(2, 3)
    whole = pool.all(5, 2)
    assert whole.r.shape[0] == 5  # other batch sizes: equal up to float rounding of the convolutions
    assert torch.allclose(whole.r, iv.featuremap(gen, LAYER, latents(3, 5, int(gen.z_dim))), atol=1e-5)
    with pytest.raises(ValueError, match="exactly one of seed"):
        LayerPool(gen, LAYER, seg)


def test_constants_equal_insertion_constants(models) -> None:
    gen, seg = models
    z = latents(4, 10, int(gen.z_dim))
    want = iv.insertion_constants(gen, seg, LAYER, z, batch_size=4)
    got = LayerPool(gen, LAYER, seg, z=z).constants(None, None, 10, 4)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.allclose(got.nan_to_num(), want.nan_to_num(), atol=1e-6)


def test_stream_resumes_to_the_uninterrupted_pass(models, tmp_path: Path) -> None:
    gen, seg = models
    n, bs = 9, 2

    def make(_):
        return {"k": ConditionalMean(), "count": Sum(), "r": Gather()}

    def fold(p, st, b):
        p.fold_constants(st["k"], b)
        st["count"].add(b.masks.sum((0, 2, 3)).double())
        st["r"].add(b.r.amax((2, 3)))

    full_ctx = _Ctx(tmp_path / "full", gen, seg)
    full = LayerPool.of(_Job(), full_ctx, LAYER, seed=5).stream(full_ctx, _Job(), "p", make, fold, n, bs)

    ctx = _Ctx(tmp_path / "killed", gen, seg)
    calls = []

    def dying(p, st, b):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        fold(p, st, b)

    with pytest.raises(KeyboardInterrupt):
        LayerPool.of(_Job(), ctx, LAYER, seed=5).stream(ctx, _Job(), "p", make, dying, n, bs)
    assert Checkpoint(tmp_path / "killed" / "k", "p").load()[0] == 3
    got = LayerPool.of(_Job(), ctx, LAYER, seed=5).stream(ctx, _Job(), "p", make, fold, n, bs)
    assert torch.equal(got["k"].result().nan_to_num(), full["k"].result().nan_to_num())
    assert torch.equal(got["count"].result(), full["count"].result())
    assert torch.equal(got["r"].result(), full["r"].result())
    assert got["r"].result().shape[0] == n


def test_gather_and_sum_equal_the_whole_batch() -> None:
    x = torch.randn(11, 3, dtype=torch.float64)
    g, s = Gather(), Sum()
    for i in range(0, 11, 4):
        g.add(x[i:i + 4])
        s.add(x[i:i + 4].sum(0))
    assert torch.equal(g.result(), x)
    assert torch.allclose(s.result(), x.sum(0))
    a, b, sa, sb = Gather(), Gather(), Sum(), Sum()  # two shards merged in order
    a.add(x[:5])
    b.add(x[5:])
    sa.add(x[:5].sum(0))
    sb.add(x[5:].sum(0))
    a.merge(b)
    sa.merge(sb)
    assert torch.equal(a.result(), x) and torch.allclose(sa.result(), x.sum(0))
    g2, s2 = Gather(), Sum()  # the state round-trips
    g2.load_state_dict(g.state_dict())
    s2.load_state_dict(s.state_dict())
    assert torch.equal(g2.result(), x) and torch.equal(s2.result(), s.result())
    with pytest.raises(ValueError, match="nothing was added"):
        Sum().result()


class _WorkerEngine:
    """Runs every step on another run context (as an engine's remote worker would), merging nothing."""

    def __init__(self, worker: _Ctx) -> None:
        self.worker = worker

    def run_pass(self, job, ctx, name, make, step, n, batch_size):
        stats = make(self.worker)
        for s in range(0, n, batch_size):
            step(self.worker, stats, s, min(batch_size, n - s))
        return stats


def test_a_pass_on_another_context_uses_that_contexts_pool(models, tmp_path: Path) -> None:
    gen, seg = models
    ctx = _Ctx(tmp_path / "driver", gen, seg)
    worker = _Ctx(tmp_path / "worker", gen, seg)
    ctx.engine = _WorkerEngine(worker)
    pool = LayerPool.of(_Job(), ctx, LAYER, seed=5)
    assert LayerPool.of(_Job(), ctx, LAYER, seed=5) is pool  # the analysis's pool is found again while held
    seen = []

    def fold(p, st, b):
        seen.append(p)
        p.fold_constants(st["k"], b)

    got = pool.stream(ctx, _Job(), "p", lambda c: {"k": ConditionalMean()}, fold, 6, 4)["k"].result()
    assert seen and all(p is not pool and p.context is worker for p in seen)
    assert not pool._memo  # the driver's pool ran nothing
    want = LayerPool(gen, LAYER, seg, seed=5).constants(None, None, 6, 4)
    assert torch.equal(got.T.float().nan_to_num(), want.nan_to_num())
