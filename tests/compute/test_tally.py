"""tally: resume from a checkpoint equals an uninterrupted loop; LocalEngine equals a plain loop."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compute.core.stats import Quantile, TopK
from compute.jobs.tally import Checkpoint, LocalEngine, batches, load_stats, tally


def _data(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(0))


def _stats() -> dict:
    return {"q": Quantile(), "t": TopK(5)}


def _fold(stats: dict, x: torch.Tensor, start: int, count: int) -> None:
    b = x[start:start + count]
    stats["q"].add(b)
    stats["t"].add(b.flatten(2).amax(2), torch.arange(start, start + count))


def _same(a: dict, b: dict) -> None:
    for k in a:
        sa, sb = a[k].state_dict(), b[k].state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), (k, key)


def test_batches() -> None:
    assert batches(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert batches(10, 4, start=6) == [(6, 4)]
    assert batches(0, 4) == []
    with pytest.raises(ValueError):
        batches(3, 0)


def test_resume_after_kill_equals_uninterrupted(tmp_path: Path) -> None:
    x = _data(50)
    full = _stats()
    for s, k in tally(full, batches(50, 4)):
        _fold(full, x, s, k)

    cache = Checkpoint(tmp_path, "p")
    killed = _stats()
    seen = []
    for s, k in tally(killed, batches(50, 4), cache, every=3):
        _fold(killed, x, s, k)
        seen.append(s)
        if len(seen) == 7:  # killed after 7 batches: the checkpoint holds 6
            break
    assert cache.load()[0] == 6

    resumed = _stats()
    rest = []
    for s, k in tally(resumed, batches(50, 4), cache, every=3):
        _fold(resumed, x, s, k)
        rest.append(s)
    assert rest[0] == 24 and rest[-1] == 48  # batch 7 is redone, nothing before it
    _same(resumed, full)
    assert cache.load()[0] == 13
    again = _stats()
    assert load_stats(cache, again, 13) == 13
    _same(again, full)


def test_foreign_checkpoint_is_not_loaded(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A checkpoint of another pass (other length, other statistics, or an old file without the pass
    identity) starts the pass over instead of loading a state it does not hold."""
    x = _data(20)
    cache = Checkpoint(tmp_path, "p")
    st = _stats()
    for s, k in tally(st, batches(20, 4), cache):
        _fold(st, x, s, k)
    assert list(tally(_stats(), batches(20, 4), cache)) == []          # its own pass: nothing left to do
    short, redone = _stats(), []
    for s, k in tally(short, batches(8, 4), cache):                     # another length: from the start
        _fold(short, x, s, k)
        redone.append(s)
    assert redone == [0, 4]
    other = {"q": Quantile(), "u": TopK(5)}
    assert load_stats(Checkpoint(tmp_path, "p"), other, 5) == 0          # other statistics
    cache.save(3, {"q.x": torch.zeros(1)})                              # an old-format file
    fresh = _stats()
    assert load_stats(cache, fresh, 5) == 0
    assert "not a checkpoint of this pass" in capsys.readouterr().err


class _Ctx:
    checkpoint_every = 2
    device = torch.device("cpu")

    def __init__(self, root: Path) -> None:
        self.root = root

    def cache_dir(self, job) -> Path:
        d = self.root / job.run_key
        d.mkdir(parents=True, exist_ok=True)
        return d

    def progress(self, it=None, **kw):
        return it


class _Job:
    run_key = "k"

    class model:
        name = "m"


def test_local_engine_equals_plain_loop(tmp_path: Path) -> None:
    x = _data(30)
    plain = _stats()
    for s, k in batches(30, 8):
        _fold(plain, x, s, k)
    got = LocalEngine().run_pass(_Job(), _Ctx(tmp_path), "p", lambda c: _stats(),
                                 lambda c, st, s, k: _fold(st, x, s, k), 30, 8)
    _same(got, plain)
    assert Checkpoint(tmp_path / "k", "p").load()[0] == 4
