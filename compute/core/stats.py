"""Streaming statistics (`Stat`): per-unit quantiles, top-k samples, IoU counts, a permutation null of
IoU, conditional means.

Reads nothing from disk, writes nothing (callers save `state_dict()` with safetensors, e.g.
`compute.jobs.context.flat_state`). Every Stat has `add(batch...)`, `state_dict() -> dict[str, Tensor]`
(plain tensors, safetensors-ready, metadata as small tensors), `load_state_dict(d)` and `merge(other)`,
and is tested against an exact full-batch computation (tests/compute/test_stats.py). All are vectorised
over units (channel dim 1 of a batch [N, C, ...]), keep their state on the data's device and use
memory independent of the number of samples.

    q = Quantile(); q.add(acts)                     # acts [N, C, H, W]
    t = q.quantiles(torch.tensor([0.99]))[:, 0]     # [C]
    iou = IoUCounts(t); iou.add(acts, masks)        # masks [N, K, H, W] bool
    iou.iou()                                       # [C, K], NaN where a concept never appears
    null = PermutationNull(t); null.add(acts, masks)
    null.p_value(); bh_qvalues(null.p_value())      # [C, K] permutation p and BH q

Quantile design: a per-unit histogram with log-spaced bins (2**bits per octave, `octaves` octaves below
the unit's max |x|, then 2**bits linear bins down to 0), for both signs: 2 * (octaves + 1) * 2**bits
int64 counts per unit (32 KiB by default). Bins are read from the float bits after an exact power-of-two
rescale, so binning is a few integer ops and one `index_add_`; the window only moves when the max
grows, and old bins map exactly into new ones, so the state depends only on the data (merge == adding
everything to one). Quantiles interpolate linearly inside a bin, clipped to the exact min/max; the two
bins next to 0 answer exactly 0 (ReLU spikes). Where a unit's values all fall in one bin (a spread
below ~1 % of the value) accuracy rests on that interpolation.
"""
from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Protocol, Self, Sequence, runtime_checkable

import torch

__all__ = ["Stat", "Quantile", "TopK", "IoUCounts", "PermutationNull", "bh_qvalues", "iqr_from_counts",
           "ConditionalMean"]

Device = torch.device | str | None


@runtime_checkable
class Stat(Protocol):
    """A streaming statistic: `add` batches (each Stat names its own: `Quantile.add(x [N, C, ...])`,
    `IoUCounts.add(a, masks)`, ...); the state round-trips through `state_dict` / `load_state_dict`
    (plain tensors), and `merge(other)` of two Stats of the same kind and settings equals adding
    both sets of batches to one."""

    add: Callable[..., None]

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None: ...

    def merge(self, other: Self) -> None: ...


_POOL: ThreadPoolExecutor | None = None


def _worker_pool() -> ThreadPoolExecutor:
    """Two worker threads for Quantile's binning on CPU (created on first use, inside
    `_one_torch_thread`, so their torch ops stay single-threaded)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(2, thread_name_prefix="quantile-bin")
    return _POOL


@contextmanager
def _one_torch_thread():
    """Run torch ops single-threaded inside the block (restored after): many small OpenMP regions
    are slow, very slow when the cores are shared, while two plain threads keep two cores busy."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _units(x: torch.Tensor, name: str) -> torch.Tensor:
    """[N, C, ...] -> [N, C, L] (L = 1 for [N, C]), detached: statistics never carry gradients."""
    if x.dim() < 2:
        raise ValueError(f"{name}: expected a batch [N, C, ...], got shape {tuple(x.shape)}")
    return x.detach().reshape(x.shape[0], x.shape[1], -1)


def _check_finite(x: torch.Tensor, name: str, first_unit: int = 0) -> None:
    """Raise naming the units (dim 1, numbered from first_unit) that hold NaN or infinite values."""
    bad = ~torch.isfinite(x.transpose(0, 1).reshape(x.shape[1], -1)).all(dim=1)
    if bad.any():
        units = (bad.nonzero().flatten() + first_unit).tolist()
        raise ValueError(f"{name}: NaN or infinite values in unit(s) {units[:20]}")


# ------------------------------------------------------------------------------------------------
# Quantile
# ------------------------------------------------------------------------------------------------
class Quantile:
    """Per-unit streaming quantiles of all values (all samples, all positions) of [N, C, ...] batches."""

    def __init__(self, bits: int = 6, octaves: int = 31, device: Device = None,
                 chunk: int | None = None) -> None:
        if not 1 <= bits <= 12 or octaves not in (15, 31, 63):
            raise ValueError(f"Quantile: need bits in 1..12 and octaves in 15, 31, 63 (got {bits}, {octaves})")
        self.bits, self.octaves = bits, octaves     # 2**bits bins per octave, octaves under the max
        self.half = (octaves + 1) << bits           # bins per sign: R (a power of two)
        self.device = torch.device(device) if device is not None else None
        self.chunk = chunk                          # elements per block (None: by device)
        self.counts: torch.Tensor | None = None     # [C, 2R] int64: [0, R) x >= 0, [R, 2R) x < 0
        self.g: torch.Tensor | None = None          # [C] int64: max |x| < 2**g
        self.lo = self.hi = self.total = None       # [C] float64: min, max, sum
        self.n = 0                                  # values per unit

    # -- state ------------------------------------------------------------------------------------
    def _init(self, c: int, device: torch.device) -> None:
        self.device = self.device or device
        d = self.device
        if 3 * c * self.half + self._shift >= 2 ** 31:  # the flat int32 binning keys of `_count`
            raise ValueError(f"Quantile: {c} units x {2 * self.half} bins exceed the int32 binning keys; "
                             f"use fewer bits or octaves (bits={self.bits}, octaves={self.octaves})")
        self.counts = torch.zeros(c, 2 * self.half, dtype=torch.int64, device=d)
        self.g = torch.full((c,), -200, dtype=torch.int64, device=d)
        self.lo = torch.full((c,), math.inf, dtype=torch.float64, device=d)
        self.hi = torch.full((c,), -math.inf, dtype=torch.float64, device=d)
        self.total = torch.zeros(c, dtype=torch.float64, device=d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.counts is None:
            raise ValueError("Quantile: empty (nothing added)")
        return {"counts": self.counts, "g": self.g, "lo": self.lo, "hi": self.hi, "sum": self.total,
                "n": torch.tensor(self.n), "bits": torch.tensor(self.bits), "octaves": torch.tensor(self.octaves)}

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        if (int(d["bits"]), int(d["octaves"])) != (self.bits, self.octaves):
            raise ValueError(f"Quantile: state has bits, octaves = {int(d['bits'])}, {int(d['octaves'])}; "
                             f"this one {self.bits}, {self.octaves}")
        dev = self.device or d["counts"].device
        self.device = torch.device(dev)
        self.counts, self.g = d["counts"].to(dev, torch.int64), d["g"].to(dev, torch.int64)
        self.lo, self.hi = d["lo"].to(dev, torch.float64), d["hi"].to(dev, torch.float64)
        self.total, self.n = d["sum"].to(dev, torch.float64), int(d["n"])

    def merge(self, other: "Quantile") -> None:
        if (other.bits, other.octaves) != (self.bits, self.octaves):
            raise ValueError("Quantile.merge: different bits or octaves")
        if other.counts is None:
            return
        if self.counts is None:
            self._init(other.counts.shape[0], other.counts.device)
        if other.counts.shape != self.counts.shape:
            raise ValueError(f"Quantile.merge: {other.counts.shape[0]} units vs {self.counts.shape[0]}")
        g = torch.maximum(self.g, other.g.to(self.device))
        counts = self._rebinned(other.counts.to(self.device), other.g.to(self.device), g)
        self._grow(g)
        self.counts += counts
        self.lo = torch.minimum(self.lo, other.lo.to(self.device))
        self.hi = torch.maximum(self.hi, other.hi.to(self.device))
        self.total += other.total.to(self.device)
        self.n += other.n

    # -- binning ----------------------------------------------------------------------------------
    def _rebinned(self, counts: torch.Tensor, g_old: torch.Tensor, g_new: torch.Tensor) -> torch.Tensor:
        """Counts [C, 2R] binned with window g_old, mapped exactly to window g_new >= g_old."""
        d = (g_new - g_old).clamp(0, 60)[:, None]
        if not bool(d.any()):
            return counts
        m, R = self.bits, self.half
        j = torch.arange(R, device=counts.device)[None, :]
        be, t = j >> m, j & ((1 << m) - 1)          # octave (0 = linear bins) and slot of bin j
        shift = (d + 1 - be).clamp(0, 60)
        jn = torch.where(be == 0, j >> d, torch.where(be - d >= 1, j - (d << m), ((1 << m) + t) >> shift))
        out = torch.zeros_like(counts)
        out.scatter_add_(1, jn.expand_as(counts[:, :R]), counts[:, :R])               # x >= 0
        out.scatter_add_(1, (2 * R - 1 - jn).expand_as(counts[:, R:]), counts[:, R:].flip(1))  # x < 0
        return out

    def _grow(self, g: torch.Tensor) -> None:
        self.counts = self._rebinned(self.counts, self.g, g)
        self.g = g

    def _scales(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Power-of-two scales [C, 1] (float32) that map |x| < 2**g under 2**(octaves - 126); two
        factors where one would be below the smallest normal float."""
        k = self.octaves - 126 - g
        if bool((k >= -126).all()):
            return torch.pow(2.0, k.double()).float()[:, None], None
        return torch.pow(2.0, torch.div(k, 2, rounding_mode="floor").double()).float()[:, None], \
            torch.pow(2.0, (k - torch.div(k, 2, rounding_mode="floor")).double()).float()[:, None]

    def add(self, x: torch.Tensor) -> None:
        """x [N, C, ...] (any float dtype): every value of every unit."""
        x = _units(x, "Quantile.add")
        if not x.is_floating_point():
            raise ValueError(f"Quantile.add: expected floats, got {x.dtype}")
        n, c, length = x.shape
        if self.counts is None:
            self._init(c, x.device)
        if c != self.counts.shape[0]:
            raise ValueError(f"Quantile.add: {c} units, this stat has {self.counts.shape[0]}")
        x = x.to(self.device, torch.float32)
        if x.numel() == 0:
            return
        budget = self.chunk or (1 << 20 if x.device.type == "cpu" else 1 << 26)
        cs = max(1, min(c, budget // length))
        ns = max(1, budget // (cs * length))
        blocks = [(slice(c0, c0 + cs), x[n0:n0 + ns, c0:c0 + cs])
                  for c0 in range(0, c, cs) for n0 in range(0, n, ns)]
        wide = n * length >= 2 ** 31               # per-batch counts fit int32 unless
        before = [t.clone() for t in (self.counts, self.g, self.lo, self.hi, self.total)]
        try:
            if x.device.type == "cpu":
                with _one_torch_thread():
                    self._count(blocks, wide, _worker_pool())
            else:
                self._count(blocks, wide, None)
        except BaseException:                       # e.g. NaN in a later block: leave the state as it was
            self.counts, self.g, self.lo, self.hi, self.total = before
            raise
        self.n += n * length

    def _count(self, blocks: list[tuple[slice, torch.Tensor]], wide: bool,
               pool: ThreadPoolExecutor | None) -> None:
        """Observe each block [n, c, L] here, then bin it (keys + index_add_): inline, or with a pool in
        two lanes that run in parallel, each with its own buffers and flat batch counts."""
        device, lanes = blocks[0][1].device, 2 if pool else 1
        size = max(xb.numel() for _, xb in blocks)
        offsets = (torch.arange(self.counts.shape[0], device=device, dtype=torch.int32)
                   * (3 * self.half) + self._shift)[None, :, None]
        one = torch.ones(1, dtype=torch.int64 if wide else torch.int32, device=device).expand(size)
        bufs = [torch.empty(size, dtype=torch.int32, device=device) for _ in range(lanes)]
        batches = [torch.zeros(3 * self.counts.shape[0] * self.half + self._shift, dtype=one.dtype,
                               device=device) for _ in range(lanes)]
        pending: list[Future | None] = [None] * lanes

        def drain() -> None:
            for f in pending:
                if f is not None:
                    f.result()

        def fold() -> None:                         # all counts so far into self.counts
            drain()
            for b in batches:
                self._flush(b)

        def work(lane: int, xb: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor | None, units: slice) -> None:
            k = self._keys(xb, s1, s2, offsets[:, units], bufs[lane])
            batches[lane].index_add_(0, k, one[:k.numel()])

        try:
            for i, (units, xb) in enumerate(blocks):
                self._observe(xb, units, fold)
                s1, s2 = self._scales(self.g[units])
                lane = i % lanes
                if pool is None:
                    work(lane, xb, s1, s2, units)
                    continue
                if pending[lane] is not None:
                    pending[lane].result()              # the lane's buffers are free again
                pending[lane] = pool.submit(work, lane, xb, s1, s2, units)
        finally:
            drain()
        fold()

    @property
    def _shift(self) -> int:
        """W = 2**(8 + bits): a value's key (its float bits >> (23 - bits), arithmetic) is its magnitude
        bin m in [0, R) for x >= 0 and m - W for x < 0; W is a multiple of R by a power of two >= 4."""
        return 1 << (8 + self.bits)

    def _flush(self, batch: torch.Tensor) -> None:
        """Add flat batch counts [3 C R + W] into counts [C, 2R] and zero them. Unit u's keys are offset
        by 3 u R + W, so its x >= 0 fill block 3u + W/R (blocks of R) and its x < 0 block 3u, in
        ascending magnitude; W/R is not a multiple of 3, so no two (unit, sign) share a block. counts
        keep x < 0 in [R, 2R) by descending magnitude (ascending value)."""
        c, R = self.counts.shape[0], self.half
        flat = batch.view(3 * c + self._shift // R, R)
        self.counts[:, :R] += flat[self._shift // R:][:3 * c:3]
        self.counts[:, R:] += flat[:3 * c:3].flip(1)
        batch.zero_()

    def _observe(self, xb: torch.Tensor, units: slice, fold: Callable[[], None]) -> None:
        """Update min/max/sum of some units from a block [n, c, L]; where the max grew, move all
        counts so far into self.counts (`fold()`) and widen the windows (rebinning them)."""
        hi, lo = xb.amax(dim=(0, 2)), xb.amin(dim=(0, 2))
        if not bool(torch.isfinite(hi).all() & torch.isfinite(lo).all()):
            _check_finite(xb, "Quantile.add", units.start)
        self.hi[units] = torch.maximum(self.hi[units], hi.double())
        self.lo[units] = torch.minimum(self.lo[units], lo.double())
        self.total[units] += xb.sum(dim=2).double().sum(dim=0)
        g = torch.frexp(torch.maximum(hi.abs(), lo.abs())).exponent.long()
        if bool((g > self.g[units]).any()):         # the max grew: rebin everything counted so far
            fold()
            whole = self.g.clone()
            whole[units] = torch.maximum(whole[units], g)
            self._grow(whole)

    def _keys(self, xb: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor | None, offsets: torch.Tensor,
              buf: torch.Tensor) -> torch.Tensor:
        """Flat bin index (int32) of every value of block xb [n, c, L]: magnitude bin m in [0, R); x >= 0
        of unit u go to 3uR + W + m, x < 0 to 3uR + m (see _flush). Three passes: rescale, shift, offset."""
        key = buf[:xb.numel()].view(xb.shape)
        torch.mul(xb, s1, out=key.view(torch.float32))          # exact power-of-two rescale
        if s2 is not None:
            key.view(torch.float32).mul_(s2)
        key >>= 23 - self.bits                      # sign | exponent | top mantissa bits: m, or m - W if x < 0
        key += offsets
        return key.view(-1)

    # -- answers ----------------------------------------------------------------------------------
    def _edges(self) -> torch.Tensor:
        """Sorted bin edges [C, 2R + 1] in data units (float64), ascending."""
        m, R = self.bits, self.half
        j = torch.arange(R + 1, device=self.device, dtype=torch.float64)
        be, t = torch.floor(j / 2 ** m), j - torch.floor(j / 2 ** m) * 2 ** m
        pos = torch.where(be == 0, j * 2.0 ** (-126 - m), torch.pow(2.0, be - 127 - m) * (2 ** m + t))
        pos = pos[None, :] * torch.pow(2.0, (self.g - (self.octaves - 126)).double())[:, None]
        return torch.cat([-pos.flip(1), pos[:, 1:]], dim=1)

    def quantiles(self, qs: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """qs [Q] in [0, 1] -> [C, Q] float64 values (linear interpolation inside a bin)."""
        if self.counts is None or self.n == 0:
            raise ValueError("Quantile: empty (nothing added)")
        qs = torch.as_tensor(qs, dtype=torch.float64, device=self.device).flatten()
        R = self.half
        counts = torch.cat([self.counts[:, R:], self.counts[:, :R]], dim=1).double()   # ascending
        cum = torch.nn.functional.pad(counts.cumsum(1), (1, 0))
        target = (qs[None, :] * self.n).expand(counts.shape[0], -1).contiguous()
        b = (torch.searchsorted(cum, target, right=True) - 1).clamp(0, 2 * R - 1)
        edges = self._edges()
        lower = torch.maximum(edges.gather(1, b), self.lo[:, None])
        upper = torch.minimum(edges.gather(1, b + 1), self.hi[:, None])
        inbin = counts.gather(1, b)
        frac = ((target - cum.gather(1, b)) / inbin.clamp(min=1)).clamp(0, 1)
        value = lower + frac * (upper - lower).clamp(min=0)
        value = torch.where((b == R) | (b == R - 1), torch.zeros_like(value), value)    # bins at 0
        return torch.minimum(torch.maximum(value, self.lo[:, None]), self.hi[:, None])

    def min(self) -> torch.Tensor:
        return self.lo

    def max(self) -> torch.Tensor:
        return self.hi

    def mean(self) -> torch.Tensor:
        return self.total / max(self.n, 1)

    @property
    def count(self) -> int:
        return self.n


# ------------------------------------------------------------------------------------------------
# TopK
# ------------------------------------------------------------------------------------------------
class TopK:
    """Per unit, the k largest per-sample scores with their global sample indices (ties: lower index)."""

    def __init__(self, k: int = 20, device: Device = None) -> None:
        if k < 1:
            raise ValueError(f"TopK: k must be >= 1, got {k}")
        self.k = k
        self.device = torch.device(device) if device is not None else None
        self.values: torch.Tensor | None = None     # [C, k] float64, -inf where empty
        self.indices: torch.Tensor | None = None    # [C, k] int64, -1 where empty

    def _combine(self, values: torch.Tensor, indices: torch.Tensor) -> None:
        """Keep the top k of current state + candidates [C, M] (sorted by value desc, index asc)."""
        if self.values is not None:
            values = torch.cat([self.values, values], dim=1)
            indices = torch.cat([self.indices, indices], dim=1)
        empty = indices < 0                         # empty slots sort last
        order = torch.argsort(torch.where(empty, torch.iinfo(torch.int64).max, indices), dim=1, stable=True)
        values, indices = values.gather(1, order), indices.gather(1, order)
        order = torch.argsort(values, dim=1, descending=True, stable=True)[:, :self.k]
        self.values, self.indices = values.gather(1, order), indices.gather(1, order)
        if self.values.shape[1] < self.k:           # pad until k samples were seen
            pad = self.k - self.values.shape[1]
            self.values = torch.nn.functional.pad(self.values, (0, pad), value=-math.inf)
            self.indices = torch.nn.functional.pad(self.indices, (0, pad), value=-1)

    def add(self, scores: torch.Tensor, sample_index: torch.Tensor) -> None:
        """scores [N, C], sample_index [N] (global sample numbers)."""
        if scores.dim() != 2 or sample_index.shape != (scores.shape[0],):
            raise ValueError(f"TopK.add: need scores [N, C] and sample_index [N], got "
                             f"{tuple(scores.shape)} and {tuple(sample_index.shape)}")
        if not bool(torch.isfinite(scores).all()):
            _check_finite(scores, "TopK.add")
        self.device = self.device or scores.device
        if self.values is not None and scores.shape[1] != self.values.shape[0]:
            raise ValueError(f"TopK.add: {scores.shape[1]} units, this stat has {self.values.shape[0]}")
        values = scores.detach().to(self.device, torch.float64).t()
        indices = sample_index.to(self.device, torch.int64)[None, :].expand_as(values)
        self._combine(values, indices)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(values [C, k'], indices [C, k']) sorted desc, k' = min(k, samples seen)."""
        if self.values is None:
            raise ValueError("TopK: empty (nothing added)")
        seen = int((self.indices[0] >= 0).sum())
        return self.values[:, :seen], self.indices[:, :seen]

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.values is None:
            raise ValueError("TopK: empty (nothing added)")
        return {"values": self.values, "indices": self.indices, "k": torch.tensor(self.k)}

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        if int(d["k"]) != self.k:
            raise ValueError(f"TopK: state has k={int(d['k'])}, this one k={self.k}")
        self.device = self.device or d["values"].device
        self.values = d["values"].to(self.device, torch.float64)
        self.indices = d["indices"].to(self.device, torch.int64)

    def merge(self, other: "TopK") -> None:
        if other.values is None:
            return
        self.device = self.device or other.values.device
        self._combine(other.values.to(self.device), other.indices.to(self.device))


# ------------------------------------------------------------------------------------------------
# IoUCounts
# ------------------------------------------------------------------------------------------------
class IoUCounts:
    """Exact counts |a > t|, |m| and |(a > t) & m| per (unit, concept) over all samples and pixels.

    Thresholds are [C] (one per unit) or [C, T] (T levels per unit, e.g. IQR candidates); results then
    have shape [C, K] or [C, T, K]. From `binned_from` levels on, add() counts by bins (searchsorted +
    bincount) instead of thresholding at every level: the same integers, far less work for 100 levels.
    """

    def __init__(self, thresholds: torch.Tensor, device: Device = None, chunk: int = 1 << 25,
                 binned_from: int = 16) -> None:
        self.device = torch.device(device) if device is not None else thresholds.device
        if thresholds.dim() not in (1, 2):
            raise ValueError(f"IoUCounts: thresholds must be [C] or [C, T], got {tuple(thresholds.shape)}")
        self.thresholds = thresholds.detach().to(self.device, torch.float32)
        self._t = self.thresholds.reshape(self.thresholds.shape[0], -1)                   # [C, T]
        self.chunk = chunk                          # elements of the thresholded map per matmul
        self.binned_from = binned_from              # levels from which add() counts by bins
        self._above = torch.zeros(self._t.shape, dtype=torch.int64, device=self.device)  # [C, T]
        self.concept: torch.Tensor | None = None                                         # [K]
        self._inter: torch.Tensor | None = None                                           # [C, T, K]
        self.samples = self.pixels = 0
        self._scratch: dict[str, torch.Tensor] = {}   # reused buffers (fresh big ones page-fault)

    def _buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A float32 scratch tensor of this shape, reused across calls."""
        size = math.prod(shape)
        buf = self._scratch.get(name)
        if buf is None or buf.numel() < size:
            buf = self._scratch[name] = torch.empty(size, dtype=torch.float32, device=self.device)
        return buf[:size].view(shape)

    def add(self, a: torch.Tensor, m: torch.Tensor) -> None:
        """a [N, C, H, W] activations (upsampled), m [N, K, H, W] bool concept masks."""
        c, levels = self._t.shape
        if a.dim() < 3 or a.shape[1] != c:
            raise ValueError(f"IoUCounts.add: activations {tuple(a.shape)}, expected [N, {c}, H, W]")
        if m.dim() != a.dim() or m.shape[0] != a.shape[0] or m.shape[2:] != a.shape[2:]:
            raise ValueError(f"IoUCounts.add: masks {tuple(m.shape)} do not match activations "
                             f"{tuple(a.shape)} (need [N, K, H, W] with the same N, H, W)")
        if m.dtype != torch.bool:
            raise ValueError(f"IoUCounts.add: masks must be bool, got {m.dtype}")
        n, k, hw = a.shape[0], m.shape[1], a[0, 0].numel()
        if hw >= 2 ** 24:
            raise ValueError("IoUCounts.add: 2**24 or more pixels per image would break exact counts")
        if self._inter is None:
            self._inter = torch.zeros(c, levels, k, dtype=torch.int64, device=self.device)
            self.concept = torch.zeros(k, dtype=torch.int64, device=self.device)
        if k != self.concept.numel():
            raise ValueError(f"IoUCounts.add: {k} concepts, this stat has {self.concept.numel()}")
        a = _units(a.to(self.device), "IoUCounts.add")                                   # [N, C, HW]
        if levels >= self.binned_from:
            self._add_binned(a, m.to(self.device).reshape(n, k, hw))
            return
        masks = self._buffer("masks", (n, k + 1, hw))                                    # last: ones
        masks[:, k] = 1.0
        masks[:, :k] = m.to(self.device).reshape(n, k, hw)
        rows = c * levels
        step = max(1, self.chunk // ((rows + 1) * hw))
        for i in range(0, n, step):
            above = self._buffer("above", (min(step, n - i), rows + 1, hw))              # last: ones
            above[:, rows] = 1.0
            torch.gt(a[i:i + step, :, None, :], self._t[None, :, :, None],
                     out=above[:, :rows].view(above.shape[0], c, levels, hw))
            counts = torch.bmm(above, masks[i:i + step].transpose(1, 2))                # [n, CT+1, K+1]
            counts = counts.sum(0, dtype=torch.float64).round().long()                   # exact
            self._inter += counts[:rows, :k].view(c, levels, k)
            self._above += counts[:rows, k].view(c, levels)
            self.concept += counts[rows, :k]
        self.samples += n
        self.pixels += n * hw

    def _add_binned(self, a: torch.Tensor, m: torch.Tensor) -> None:
        """Many levels at once: each value's bin among the unit's sorted thresholds (searchsorted), then
        one bincount per concept over the pixels in its mask; counts above t_j are suffix sums of the
        bins. Exactly the counts of the thresholding path (a > t, float32), in O(C HW (1 + K')) for K'
        the mean number of concepts per pixel instead of O(C T K HW). a [N, C, HW], m bool [N, K, HW]."""
        c, levels = self._t.shape
        n, k, hw = m.shape
        order = torch.argsort(self._t, dim=1)                                            # ascending
        srt = self._t.gather(1, order).contiguous()                                      # [C, T]
        vals = a.transpose(0, 1).reshape(c, n * hw).contiguous()                         # [C, N HW]
        bins = torch.searchsorted(srt, vals, side="left")                                # #{t_j < a}
        keys = (bins + torch.arange(c, device=self.device)[:, None] * (levels + 1))      # [C, N HW]
        span = c * (levels + 1)

        def above_counts(flat_keys: torch.Tensor) -> torch.Tensor:
            """[C, T] in the original level order: pixels with a > t_j."""
            hist = torch.bincount(flat_keys, minlength=span).view(c, levels + 1)
            suffix = hist.flip(1).cumsum(1).flip(1)[:, 1:]                               # #{bin > j}
            out = torch.empty_like(suffix)
            out.scatter_(1, order, suffix)
            return out

        self._above += above_counts(keys.flatten())
        mflat = m.transpose(0, 1).reshape(k, n * hw)                                     # [K, N HW]
        for j in range(k):
            sel = mflat[j]
            self.concept[j] += int(sel.sum())
            if bool(sel.any()):
                self._inter[:, :, j] += above_counts(keys[:, sel].flatten())
        self.samples += n
        self.pixels += n * hw

    @property
    def above(self) -> torch.Tensor:
        """|a > t| per unit: [C] (or [C, T]) int64."""
        return self._above[:, 0] if self.thresholds.dim() == 1 else self._above

    @property
    def inter(self) -> torch.Tensor:
        """|(a > t) & m| per (unit, concept): [C, K] (or [C, T, K]) int64."""
        return self._shaped(self._inter)

    def _shaped(self, t: torch.Tensor) -> torch.Tensor:
        """[C, T, K] -> [C, K] when the thresholds were [C]."""
        return t[:, 0] if self.thresholds.dim() == 1 else t

    def _cells(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The 2x2 table per (unit, level, concept) as float64 [C, T, K]: (a>t & m, a>t & !m, ...)."""
        if self._inter is None:
            raise ValueError("IoUCounts: empty (nothing added)")
        both = self._inter.double()
        only_a = self._above[..., None].double() - both
        only_m = self.concept[None, None, :].double() - both
        return both, only_a, only_m, self.pixels - both - only_a - only_m

    def iou(self) -> torch.Tensor:
        """[C, K] (or [C, T, K]) float64: inter / (above + concept - inter); NaN where the concept
        never appears."""
        both, only_a, only_m, _ = self._cells()
        iou = both / (both + only_a + only_m).clamp(min=1)
        return self._shaped(torch.where(self.concept > 0, iou, torch.full_like(iou, math.nan)))

    def iqr(self) -> torch.Tensor:
        """Information quality ratio I(A; M) / H(A, M) of the 2x2 table (A = a > t, M = concept),
        [C, K] (or [C, T, K]) float64; NaN where the concept never appears."""
        self._cells()                                                                    # raises if empty
        iqr = iqr_from_counts(self._inter, self._above[..., None], self.concept[None, None, :], self.pixels)
        return self._shaped(torch.where(self.concept > 0, iqr, torch.full_like(iqr, math.nan)))

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self._inter is None:
            raise ValueError("IoUCounts: empty (nothing added)")
        return {"thresholds": self.thresholds, "above": self._above, "concept": self.concept,
                "inter": self._inter, "samples": torch.tensor(self.samples), "pixels": torch.tensor(self.pixels)}

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        if not torch.equal(d["thresholds"].to(self.device, torch.float32), self.thresholds):
            raise ValueError("IoUCounts: state was counted with other thresholds")
        self._above, self.concept = d["above"].to(self.device), d["concept"].to(self.device)
        self._inter, self.samples, self.pixels = d["inter"].to(self.device), int(d["samples"]), int(d["pixels"])

    def merge(self, other: "IoUCounts") -> None:
        if not torch.equal(other.thresholds.to(self.device), self.thresholds):
            raise ValueError("IoUCounts.merge: different thresholds")
        if other._inter is None:
            return
        if self._inter is None:
            self._inter = torch.zeros_like(other._inter, device=self.device)
            self.concept = torch.zeros_like(other.concept, device=self.device)
        self._inter += other._inter.to(self.device)
        self.concept += other.concept.to(self.device)
        self._above += other._above.to(self.device)
        self.samples += other.samples
        self.pixels += other.pixels


# ------------------------------------------------------------------------------------------------
# PermutationNull: exact permutation moments of the intersection count, per (unit, concept)
# ------------------------------------------------------------------------------------------------
def iqr_from_counts(inter: torch.Tensor, above: torch.Tensor, concept: torch.Tensor, pixels: int) -> torch.Tensor:
    """Information quality ratio I(A; M) / H(A, M) of the 2x2 table given by |A & M| (inter), |A|
    (above), |M| (concept) over `pixels` pixels; all broadcastable, float64 out, 0 where H = 0."""
    both = inter.double()
    only_a, only_m = above.double() - both, concept.double() - both
    cells = torch.stack(torch.broadcast_tensors(both, only_a, only_m, pixels - both - only_a - only_m))
    cells = cells / max(pixels, 1)
    plogp = torch.where(cells > 0, cells * torch.log(cells.clamp(min=1e-300)), torch.zeros_like(cells))
    joint = -plogp.sum(0)
    pa, pm = cells[0] + cells[1], cells[0] + cells[2]
    marg = sum(-torch.where(p > 0, p * torch.log(p.clamp(min=1e-300)), torch.zeros_like(p))
               for p in (pa, 1 - pa, pm, 1 - pm))
    iqr = (marg - joint) / joint.clamp(min=1e-300)
    return torch.where(joint > 0, iqr, torch.zeros_like(iqr))


def bh_qvalues(p: torch.Tensor) -> torch.Tensor:
    """Benjamini-Hochberg adjusted p-values (q-values) of a family of tests, any shape, float64;
    NaN entries are not tests (they stay NaN and do not count in the family size)."""
    p = p.double()
    flat = p.flatten()
    ok = ~torch.isnan(flat)
    v = flat[ok]
    m = v.numel()
    out = torch.full_like(flat, math.nan)
    if m:
        order = torch.argsort(v, descending=True)
        ranks = torch.arange(m, 0, -1, dtype=torch.float64)            # rank of each sorted value
        q = torch.cummin(v[order] * m / ranks, 0).values.clamp(max=1.0)
        res = torch.empty_like(v)
        res[order] = q
        out[ok] = res
    return out.view(p.shape)


class PermutationNull:
    """Per (unit, concept): the observed intersection count I = sum_n |A_n & M_n| and its exact mean and
    variance when each unit's maps are re-paired with the masks of other images, by a uniformly random
    permutation inside consecutive blocks of `block` samples (masks stay in place: no shift).

    A_n = a_n > t (the unit's thresholded map of image n), M_n = concept mask of image n. Within a block
    of b images, with c_ij = |A_i & M_j| (all b x b pairings, one matmul), the statistic sum_i c_i,pi(i)
    over a uniform permutation pi has mean g / b (g = sum_ij c_ij) and variance
    sum_ij d_ij^2 / (b - 1), d_ij = c_ij - r_i / b - s_j / b + g / b^2 (Hoeffding 1951; r, s row and
    column sums). Blocks are permuted independently, so means and variances add over blocks, and the
    one-sided p-value is the normal tail of (I - 1/2 - mean) / sd (continuity-corrected for the integer
    count; the normal approximation rests on the sum over many independent blocks). Under
    exchangeability (the unit's maps carry no information about the image's segmentation) the observed
    pairing is one uniform draw from the same distribution.
    |A| and |M| do not depend on the pairing, so a test on I is a test on IoU = I / (|A| + |M| - I).

    Thresholds are [C] (one per unit) or [C, K] (one per unit and concept: concept k is counted at
    t[:, k]). [C] on CPU counts with exact int8 matmuls (`_add_int8`), elsewhere with float32 matmuls
    of 0/1 maps (exact: counts <= HW < 2**24); both give the same integers. The observed counts (the diagonal pairing) are kept too: `inter`, `above`, `concept`,
    so iou() / iqr() need no other stat. merge() equals adding everything to one stat when the merged
    stats saw whole blocks (blocks never span two add() calls).
    """

    def __init__(self, thresholds: torch.Tensor, block: int = 8, device: Device = None) -> None:
        if thresholds.dim() not in (1, 2):
            raise ValueError(f"PermutationNull: thresholds must be [C] or [C, K], got {tuple(thresholds.shape)}")
        if block < 2:
            raise ValueError(f"PermutationNull: block must be >= 2, got {block}")
        self.device = torch.device(device) if device is not None else thresholds.device
        self.thresholds = thresholds.detach().to(self.device, torch.float32)
        self.block = int(block)
        self.inter = self.above = self.concept = self.null_mean = self.null_var = None
        self.samples = self.pixels = 0

    def _init(self, c: int, k: int) -> None:
        z = lambda dt: torch.zeros(c, k, dtype=dt, device=self.device)  # noqa: E731
        self.inter, self.above = z(torch.int64), z(torch.int64)       # [C, K]
        self.null_mean, self.null_var = z(torch.float64), z(torch.float64)
        self.concept = torch.zeros(k, dtype=torch.int64, device=self.device)

    def add(self, a: torch.Tensor, m: torch.Tensor) -> None:
        """a [N, C, H, W] activations (upsampled), m [N, K, H, W] bool concept masks."""
        c = self.thresholds.shape[0]
        if a.dim() < 3 or a.shape[1] != c:
            raise ValueError(f"PermutationNull.add: activations {tuple(a.shape)}, expected [N, {c}, H, W]")
        if m.dim() != a.dim() or m.shape[0] != a.shape[0] or m.shape[2:] != a.shape[2:] or m.dtype != torch.bool:
            raise ValueError(f"PermutationNull.add: masks {tuple(m.shape)} {m.dtype} do not match activations "
                             f"{tuple(a.shape)} (need bool [N, K, H, W])")
        n, k, hw = a.shape[0], m.shape[1], a[0, 0].numel()
        if self.thresholds.dim() == 2 and self.thresholds.shape[1] != k:
            raise ValueError(f"PermutationNull.add: {k} concepts, thresholds are {tuple(self.thresholds.shape)}")
        if hw >= 2 ** 24:
            raise ValueError("PermutationNull.add: 2**24 or more pixels per image would break exact counts")
        if self.inter is None:
            self._init(c, k)
        if k != self.concept.numel():
            raise ValueError(f"PermutationNull.add: {k} concepts, this stat has {self.concept.numel()}")
        a = _units(a.to(self.device), "PermutationNull.add")                              # [N, C, HW]
        if self.thresholds.dim() == 1 and a.device.type == "cpu" and hasattr(torch, "_int_mm"):
            self._add_int8(a, m.to(self.device).reshape(n, k, hw))
            return
        mf = m.to(self.device).reshape(n, k, hw).float()
        self.concept += mf.sum((0, 2)).round().long()
        for s in range(0, n, self.block):
            ab, mb = a[s:s + self.block], mf[s:s + self.block]
            b = ab.shape[0]
            if self.thresholds.dim() == 1:
                above = (ab > self.thresholds[None, :, None]).float()                       # [b, C, HW]
                cross = (above.reshape(b * c, hw) @ mb.reshape(b * k, hw).T).view(b, c, b, k)
                self.above += above.sum((0, 2)).round().long()[:, None]
            else:
                cross = torch.empty(b, c, b, k, device=self.device)
                for j in range(k):
                    above = (ab > self.thresholds[None, :, j, None]).float()
                    cross[..., j] = (above.reshape(b * c, hw) @ mb[:, j].T).view(b, c, b)
                    self.above[:, j] += above.sum((0, 2)).round().long()
            self._accumulate(cross.double().round())
        self.samples += n
        self.pixels += n * hw

    def _add_int8(self, a: torch.Tensor, m: torch.Tensor) -> None:
        """The CPU path for [C] thresholds: per block, `a > t` into a reused bool buffer read as int8 0/1,
        and one int8 x int8 -> int32 matmul (`torch._int_mm`) of [ones; A] against [ones; M] (a row of
        ones on each side), which gives every c_ij = |A_i & M_j|, |A_i| and |M_j| at once. Exact (integer
        products and sums; HW < 2**24), so the counts equal the float path's; several times faster on
        CPU than a float32 GEMM plus separate reductions. a [N, C, HW] float, m bool [N, K, HW]."""
        n, c, hw = a.shape
        k = m.shape[1]
        b0 = min(self.block, n)
        t = self.thresholds[None, :, None].expand(b0, c, hw)
        rows = torch.ones(1 + b0 * c, hw, dtype=torch.bool, device=self.device)    # row 0: ones
        cols = torch.ones(1 + b0 * k, hw, dtype=torch.bool, device=self.device)    # row 0: ones
        for s in range(0, n, self.block):
            b = min(self.block, n - s)
            torch.gt(a[s:s + b], t[:b], out=rows[1:1 + b * c].view(b, c, hw))
            cols[1:1 + b * k] = m[s:s + b].reshape(b * k, hw)
            counts = torch._int_mm(rows[:1 + b * c].view(torch.int8), cols[:1 + b * k].view(torch.int8).T)
            self.concept += counts[0, 1:].view(b, k).sum(0, dtype=torch.int64)            # |M_j|
            self.above += counts[1:, 0].view(b, c).sum(0, dtype=torch.int64)[:, None]     # |A_i|
            self._accumulate(counts[1:, 1:].reshape(b, c, b, k).double())                # c_ij
        self.samples += n
        self.pixels += n * hw

    def _accumulate(self, cross: torch.Tensor) -> None:
        """cross [b, C, b, K] float64: c_ij = |A_i & M_j| of one block."""
        b = cross.shape[0]
        self.inter += torch.diagonal(cross, dim1=0, dim2=2).sum(-1).long()               # sum_i c_ii
        if b == 1:                                                                        # one pairing only
            self.null_mean += cross[0, :, 0]
            return
        g = cross.sum((0, 2))                                                             # [C, K]
        r = cross.sum(2)                                                                  # [b, C, K]
        s = cross.sum(0)                                                                  # [C, b, K]
        d = cross - r[:, :, None] / b - s[None] / b + g[None, :, None] / b ** 2
        self.null_mean += g / b
        self.null_var += (d * d).sum((0, 2)) / (b - 1)

    # -- results ----------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.inter is None:
            raise ValueError("PermutationNull: empty (nothing added)")

    def iou(self) -> torch.Tensor:
        """[C, K] float64 observed IoU; NaN where the concept never appears."""
        self._check()
        i = self.inter.double()
        iou = i / (self.above + self.concept[None] - self.inter).double().clamp(min=1)
        return torch.where(self.concept[None] > 0, iou, torch.full_like(iou, math.nan))

    def iqr(self) -> torch.Tensor:
        """[C, K] float64 information quality ratio at the thresholds; NaN where the concept never appears."""
        self._check()
        v = iqr_from_counts(self.inter, self.above, self.concept[None], self.pixels)
        return torch.where(self.concept[None] > 0, v, torch.full_like(v, math.nan))

    def null_iou(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, sd) of the IoU under the permutation null, [C, K] float64 (delta method:
        IoU = I / (U0 - I) with U0 = |A| + |M| fixed); NaN where the concept never appears."""
        self._check()
        u0 = (self.above + self.concept[None]).double()
        mu = self.null_mean
        mean = mu / (u0 - mu).clamp(min=1)
        sd = self.null_var.clamp(min=0).sqrt() * u0 / ((u0 - mu).clamp(min=1) ** 2)
        nan = torch.full_like(mean, math.nan)
        keep = self.concept[None] > 0
        return torch.where(keep, mean, nan), torch.where(keep, sd, nan)

    def z(self) -> torch.Tensor:
        """[C, K] float64 z = (I - 1/2 - null mean) / null sd of the intersection count; NaN where the
        concept never appears, 0 where the permutation distribution is a point (every pairing gives the same count)."""
        self._check()
        sd = self.null_var.clamp(min=0).sqrt()
        dev = self.inter.double() - self.null_mean
        z = torch.where(sd > 0, (dev - 0.5) / sd.clamp(min=1e-300), torch.zeros_like(sd))
        return torch.where(self.concept[None] > 0, z, torch.full_like(z, math.nan))

    def p_value(self) -> torch.Tensor:
        """[C, K] float64 one-sided p-value P(I_null >= I) (normal tail; 1 where the null is a point);
        NaN where the concept never appears."""
        p = 0.5 * torch.erfc(self.z() / math.sqrt(2.0))
        return torch.where(self.null_var > 0, p, torch.where(torch.isnan(p), p, torch.ones_like(p)))

    def log10_p(self) -> torch.Tensor:
        """[C, K] float64 log10 of p_value, accurate far in the tail where p underflows to 0."""
        from scipy.special import log_ndtr
        z = self.z()
        lp = torch.from_numpy(log_ndtr(-z.cpu().numpy()) / math.log(10.0)).to(z.device)
        return torch.where(self.null_var > 0, lp, torch.where(torch.isnan(lp), lp, torch.zeros_like(lp)))

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check()
        return {"thresholds": self.thresholds, "block": torch.tensor(self.block), "inter": self.inter,
                "above": self.above, "concept": self.concept, "null_mean": self.null_mean,
                "null_var": self.null_var, "samples": torch.tensor(self.samples), "pixels": torch.tensor(self.pixels)}

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        if not torch.equal(d["thresholds"].to(self.device, torch.float32), self.thresholds) \
                or int(d["block"]) != self.block:
            raise ValueError("PermutationNull: state was counted with other thresholds or blocks")
        self.inter, self.above, self.concept = (d[x].to(self.device) for x in ("inter", "above", "concept"))
        self.null_mean, self.null_var = (d[x].to(self.device, torch.float64) for x in ("null_mean", "null_var"))
        self.samples, self.pixels = int(d["samples"]), int(d["pixels"])

    def merge(self, other: "PermutationNull") -> None:
        if not torch.equal(other.thresholds.to(self.device), self.thresholds) or other.block != self.block:
            raise ValueError("PermutationNull.merge: different thresholds or blocks")
        if other.inter is None:
            return
        if self.inter is None:
            self._init(*other.inter.shape)
        for name in ("inter", "above", "concept", "null_mean", "null_var"):
            setattr(self, name, getattr(self, name) + getattr(other, name).to(self.device))
        self.samples += other.samples
        self.pixels += other.pixels


# ------------------------------------------------------------------------------------------------
# ConditionalMean
# ------------------------------------------------------------------------------------------------
class ConditionalMean:
    """k[C, K] = sum(a * w) / sum(w): each unit's mean activation weighted by concept coverage w."""

    def __init__(self, device: Device = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.num: torch.Tensor | None = None        # [C, K] float64
        self.den: torch.Tensor | None = None        # [K] float64

    def add(self, a: torch.Tensor, w: torch.Tensor) -> None:
        """a [N, C, h, w] featuremap, w [N, K, h, w] coverage fractions in [0, 1] at that resolution."""
        if a.dim() < 3 or w.shape[0] != a.shape[0] or w.shape[2:] != a.shape[2:]:
            raise ValueError(f"ConditionalMean.add: weights {tuple(w.shape)} do not match "
                             f"activations {tuple(a.shape)} (need [N, K, h, w] with the same N, h, w)")
        self.device = self.device or a.device
        a = _units(a.to(self.device), "ConditionalMean.add").double()     # [N, C, L]
        w = _units(w.to(self.device), "ConditionalMean.add").double()     # [N, K, L]
        num = torch.bmm(a, w.transpose(1, 2)).sum(0)                      # [C, K]
        den = w.sum(dim=(0, 2))
        if self.num is None:
            self.num, self.den = num, den
        else:
            if num.shape != self.num.shape:
                raise ValueError(f"ConditionalMean.add: shape {tuple(num.shape)} vs {tuple(self.num.shape)}")
            self.num += num
            self.den += den

    def result(self) -> torch.Tensor:
        """[C, K] float64; NaN for concepts with zero total weight."""
        if self.num is None:
            raise ValueError("ConditionalMean: empty (nothing added)")
        k = self.num / self.den.clamp(min=1e-300)[None, :]
        return torch.where(self.den[None, :] > 0, k, torch.full_like(k, math.nan))

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.num is None:
            raise ValueError("ConditionalMean: empty (nothing added)")
        return {"num": self.num, "den": self.den}

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        self.device = self.device or d["num"].device
        self.num, self.den = d["num"].to(self.device, torch.float64), d["den"].to(self.device, torch.float64)

    def merge(self, other: "ConditionalMean") -> None:
        if other.num is None:
            return
        if self.num is None:
            self.device = self.device or other.num.device
            self.num, self.den = other.num.to(self.device).clone(), other.den.to(self.device).clone()
        else:
            self.num += other.num.to(self.device)
            self.den += other.den.to(self.device)
