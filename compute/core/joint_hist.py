"""JointHist: one-pass dissection statistic. Per unit, a histogram of activations jointly with every
concept's presence at the pixel, plus the permutation null at candidate thresholds near a rank.

Reads nothing from disk, writes nothing (callers save `state_dict()`). A Stat like those of
`compute.core.stats`: `add(a, m)`, `state_dict`, `load_state_dict`, `merge`; tested against exact batch
computations in `tests/compute/test_onepass.py` (`python -m pytest -q tests/compute/test_onepass.py`).

    jh = JointHist(level=0.99, block=8)
    jh.add(acts, masks)                # acts [N, C, h, w] (lifted to the masks' grid by `lift`), masks bool [N, K, H, W]
    t, j = jh.threshold()              # [C] threshold (a candidate edge) nearest rank 0.99, its index
    null = jh.null_at(j)               # a filled stats.PermutationNull at those thresholds (iou, p, z, ...)
    jh.quantiles([0.5, 0.99])          # [C, Q] (linear inside a bin)
    jh.counts_at(pos)                  # above [C, T], inter [C, T, K] at any edge position

Binning (no threshold needed in advance). Values fall in 8192 uniform fine cells per unit spanning the
warm-up batch's range widened by a quarter on each side, plus two open-ended overflow cells; the cell
is 1 + floor((a - base) * scale) in float32, monotone in a, and every edge is the largest float of its
cell (found by bisection with the same arithmetic), so `a > edge` is exactly `cell(a) > cell(edge)`.
The first batch (warm-up) fixes, per unit, E sorted edges:
`bins - 1` equal-mass edges (the warm-up's i / bins quantiles) and `candidates` edges at ranks
level - w .. level + w (the thresholds the null is counted at; w = max(window, 2.5 standard errors of
the warm-up's estimate of the level, from its spread over the batch's images), at most MAX_WINDOW). Values below the first or
above the last edge fall in two overflow bins, bounded by the exact running min / max. Bin b of a
value = #{edges < value}, so |a > e_j| is a suffix sum and every count at an edge is an exact integer.

Accuracy (stated bound, tested against exact order statistics). The threshold is the candidate edge
whose exact rank 1 - |a > e| / n is nearest `level`: its rank error is at most half the largest mass
between neighbouring candidates, nominally w / (candidates - 1): 9.4e-5 (w = 0.003) to 6.25e-4 (w = 0.02)
and `rank_error()` reports the measured value; it exceeds the window only where the warm-up batch
misjudged the unit's level by more than w in rank (reported, never hidden). Quantiles at other
levels interpolate inside equal-mass bins of nominal mass 1 / bins (1024: 0.001, the bound the quantile
tests use). IoU, above, inter and the null are exact at the chosen edge (no interpolation).

The null. PermutationNull's moments are quadratic in the thresholded maps within a block (sum_ij c_ij^2),
so they cannot follow from a histogram summed over blocks at a threshold chosen after the pass; they are
counted exactly at every candidate edge instead. Only values above the lowest candidate edge take part
(1 - level + about window of them): per block each is scattered (index_add) with its pixel's masks into
win[image, unit, window bin], one running sum over the window bins gives c_ij(l) at every candidate l,
and the same mean and variance formula follows in exact integers (int32, int64 where that could
overflow). Where more than SPARSE_SHARE of the values are above the lowest candidate (low levels), the
scatter would cost more than a dense count: the values above every candidate are then counted by one
matmul per block and only those inside the window are scattered (the same integers, so the same state
bit for bit). At the chosen edge the result equals PermutationNull(thresholds=edge) exactly.

Exact float matmuls. The joint counts (pattern counts x pattern table) and the dense null are matmuls of
non-negative integers: float32 only on CPU at matmul precision "highest" and sums below 2^24, else
float64 (TF32 or bfloat16 inside a float32 matmul would round counts past 2^8 to 2^11).

Masks shared by layers. `add` keeps the last masks tensor's per-batch work (patterns, blocks, moved to
the stat's device) while that tensor is alive and its version counter unchanged, so every layer of a
step reuses it; it is freed with the tensor. Writes that bypass the version counter (`m.data`, a numpy
array behind `torch.from_numpy`) are not seen: pass edited masks as a new tensor.

Work per pixel and unit: min / max / zero counts, the fine cell (a few float ops and one conversion),
one table look-up (cell -> unit offset + bin; no search), one bincount (pattern x unit x bin: the set
of concepts present at a pixel is packed into one id, so overlapping masks cost one bincount; the
patterns and the null's masks are computed once per batch and shared by every layer), and one compare
against the lowest candidate; the null's work is on the few values above it. Units are processed in
chunks of `chunk` elements, so memory does not grow with the layer width beyond the [C, E+1, K] counts.
"""
from __future__ import annotations

import math
import weakref
from typing import Callable, Sequence

import torch

from compute.core.stats import PermutationNull, _check_finite

__all__ = ["JointHist"]

FINE_CELLS = 8192   # uniform fine cells per unit over the warm-up's range widened by HEADROOM each side
HEADROOM = 0.25
WARM_VALUES = 1 << 14  # values per unit whose order statistics place the edges (a fixed random subsample + min / max)
MAX_WINDOW = 0.02   # widest candidate window (rank half-width): 32 gaps of <= 1.25e-3, error <= 6.25e-4
SPARSE_SHARE = 0.02  # the null scatters every value above the lowest candidate while at most this share of
                     # values are, else counts those above every candidate densely: on one CPU thread,
                     # [32, 16, 64, 64], K = 40, the two paths take about the same time near level 0.98
                     # (2-3 % above); at 0.5 the scatter took 3.9 s and +393 MB, the dense path 0.35 s
Lift = Callable[[torch.Tensor], torch.Tensor]   # [N, c, h, w] -> [N, c, H, W] (e.g. bilinear upsampling)


class JointHist:
    """Per (unit, bin, concept) pixel counts, per unit histogram, and the permutation null at candidate
    thresholds around rank `level`; see the module docstring."""

    def __init__(self, level: float = 0.99, bins: int = 1024, candidates: int = 33, window: float = 0.003,
                 block: int = 8, device: torch.device | str | None = None, chunk: int = 1 << 22) -> None:
        if not 0.0 < level < 1.0 or bins < 2 or candidates < 2 or not 0.0 < window < 0.5 or block < 2:
            raise ValueError(f"JointHist: need 0 < level < 1, bins >= 2, candidates >= 2, 0 < window < 0.5, "
                             f"block >= 2 (got {level}, {bins}, {candidates}, {window}, {block})")
        self.level, self.bins, self.candidates, self.window = float(level), int(bins), int(candidates), float(window)
        self.block, self.chunk = int(block), int(chunk)
        self.device = torch.device(device) if device is not None else None
        self.cells = FINE_CELLS                     # uniform fine cells over the warm-up's range (+ headroom)
        self.edges: torch.Tensor | None = None      # [C, E] float32 sorted (tops of fine cells)
        self.edge_cells = self.grid = None          # [C, E] int64 fine cells of the edges, [C, 2] float32 (base, scale)
        self.zeros: torch.Tensor | None = None      # [C] int64 values exactly 0 (ReLU)
        self.cand: torch.Tensor | None = None       # [C, L] int64: positions of the candidate edges in `edges`
        self.hist = self.joint = self.concept = None  # [C, E+1], [C, E+1, K], [K] int64
        self.null_mean = self.null_var = None       # [C, L, K] float64
        self.lo = self.hi = None                    # [C] float64 exact min / max
        self.samples = self.pixels = 0

    # -- binning ----------------------------------------------------------------------------------
    def warm_up(self, a: torch.Tensor, lift: Lift | None = None) -> None:
        """Fix the edges from one batch a [N, C, h, w] (lifted by `lift`), without counting it: per unit
        the fine-cell grid (the batch's range widened by HEADROOM each side), then edges = the tops of the cells
        holding the batch's values at the equal-mass and candidate ranks. The candidate window is, per
        unit, the larger of `window` and 2.5 standard errors of the batch's rank-`level` value (from its
        spread over the batch's images), at most MAX_WINDOW."""
        a = a.detach()
        self.device = self.device or a.device
        n = a.shape[0]
        eq = torch.arange(1, self.bins, dtype=torch.float64) / self.bins
        unit = torch.linspace(-1.0, 1.0, self.candidates, dtype=torch.float64)
        grids, cells = [], []
        for _, v in self._chunks(a, lift):                                         # v [c, N HW]
            sub = v
            if v.shape[1] > WARM_VALUES:                                           # a fixed random subsample
                pick = torch.randperm(v.shape[1], generator=torch.Generator().manual_seed(0))[:WARM_VALUES]
                sub = v.index_select(1, pick.to(v.device))
            srt = torch.cat([sub, v.amin(1, keepdim=True), v.amax(1, keepdim=True)], 1).sort(dim=1).values
            last = srt.shape[1] - 1
            t0 = srt[:, min(last, int(self.level * last))]
            share = (v.view(v.shape[0], n, -1) > t0[:, None, None]).double().mean(2)           # [c, N]
            se = share.std(1) / math.sqrt(n) if n > 1 else torch.zeros(v.shape[0], dtype=torch.float64)
            w = (2.5 * se.cpu()).clamp(min=self.window, max=MAX_WINDOW)           # [c]
            cand = (self.level + w[:, None] * unit[None, :]).clamp(0.0, 1.0)       # [c, L]
            ranks = torch.cat([eq[None, :].expand(v.shape[0], -1), cand], 1)       # [c, E]
            idx = (ranks * last).round().long().clamp(0, last).to(srt.device)
            lo, hi = srt[:, 0].double(), srt[:, -1].double()
            span = torch.maximum(hi - lo, 1e-6 * torch.maximum(hi.abs(), lo.abs()).clamp(min=1.0))
            grid = torch.stack([lo - HEADROOM * span, self.cells / ((1 + 2 * HEADROOM) * span)], 1).float()
            grids.append(grid)
            cells.append(_cells(srt.gather(1, idx), grid, self.cells).long())
        cells_ = torch.cat(cells).to(self.device)                                  # [C, E]: equal-mass, candidates
        order = cells_.argsort(dim=1, stable=True)
        where = order.argsort(dim=1)                                               # old column -> position
        self._set_edges(torch.cat(grids).to(self.device), cells_.gather(1, order).contiguous(),
                        where[:, self.bins - 1:].contiguous())

    def _set_edges(self, grid: torch.Tensor, cells: torch.Tensor, cand: torch.Tensor) -> None:
        """Edges from their sorted fine cells [C, E], the candidates' positions among them [C, L] and the
        units' grids [C, 2]; the lookup tables fine cell -> bin and fine cell -> candidates below."""
        self.grid, self.edge_cells, self.cand = grid, cells, cand
        self.edges = _cell_top(cells, grid, self.cells)                            # [C, E] float32
        fine = torch.arange(self.cells + 2, device=self.device)
        fine = fine[None, :].expand(cells.shape[0], -1).contiguous()
        self._lut = torch.searchsorted(self.edge_cells, fine, side="left").to(torch.int16)     # #{edges < a}
        cand_cells = cells.gather(1, cand).contiguous()
        self._lutw = torch.searchsorted(cand_cells, fine, side="left").to(torch.int16)         # #{cands < a}

    def _chunks(self, a: torch.Tensor, lift: Lift | None):
        """Yield (units slice, values [c, N HW] float32) per chunk of units (lifted per chunk)."""
        n, c = a.shape[:2]
        hw = (a[:1, :1] if lift is None else lift(a[:1, :1]))[0, 0].numel()
        c0 = 0
        while c0 < c:
            step = max(1, min(c, self.chunk // max(1, n * hw)))
            part = a[:, c0:c0 + step]
            part = part if lift is None else lift(part)
            yield slice(c0, c0 + part.shape[1]), part.to(self.device, torch.float32).transpose(0, 1).reshape(
                part.shape[1], -1)
            c0 += part.shape[1]

    def _init(self, c: int, k: int) -> None:
        e, L, d = self.edges.shape[1], self.candidates, self.device
        self.hist = torch.zeros(c, e + 1, dtype=torch.int64, device=d)
        self.joint = torch.zeros(c, e + 1, k, dtype=torch.int64, device=d)
        self.concept = torch.zeros(k, dtype=torch.int64, device=d)
        self.null_mean = torch.zeros(c, L, k, dtype=torch.float64, device=d)
        self.null_var = torch.zeros(c, L, k, dtype=torch.float64, device=d)
        self.zeros = torch.zeros(c, dtype=torch.int64, device=d)
        self.lo = torch.full((c,), math.inf, dtype=torch.float64, device=d)
        self.hi = torch.full((c,), -math.inf, dtype=torch.float64, device=d)

    # -- add --------------------------------------------------------------------------------------
    def add(self, a: torch.Tensor, m: torch.Tensor, lift: Lift | None = None) -> None:
        """a [N, C, h, w] activations, lifted per unit chunk by `lift` to the masks' grid (None: a is
        already [N, C, H, W]); m bool [N, K, H, W] concept masks. The first call fixes the edges."""
        if a.dim() != 4 or m.dim() != 4 or m.shape[0] != a.shape[0] or m.dtype != torch.bool:
            raise ValueError(f"JointHist.add: need a [N, C, h, w] and bool m [N, K, H, W], got "
                             f"{tuple(a.shape)} and {tuple(m.shape)} {m.dtype}")
        if lift is None and a.shape[2:] != m.shape[2:]:
            raise ValueError(f"JointHist.add: activations {tuple(a.shape)} not on the masks' grid {tuple(m.shape)}")
        if not bool(torch.isfinite(a.sum())):
            _check_finite(a, "JointHist.add")
        if self.edges is None:
            self.warm_up(a, lift)
        n, c, k = a.shape[0], a.shape[1], m.shape[1]
        hw = m.shape[2] * m.shape[3]
        if hw >= 2 ** 24:
            raise ValueError("JointHist.add: 2**24 or more pixels per image would break exact counts")
        if c != self.edges.shape[0]:
            raise ValueError(f"JointHist.add: {c} units, this stat has {self.edges.shape[0]}")
        if self.hist is None:
            self._init(c, k)
        if k != self.concept.numel():
            raise ValueError(f"JointHist.add: {k} concepts, this stat has {self.concept.numel()}")
        masks = _masks(m, self.block, self.device)
        self.concept += masks.concept
        for units, v in self._lifted(a, lift):
            self._add_chunk(units, v, masks)
        self.samples += n
        self.pixels += n * hw

    def _lifted(self, a: torch.Tensor, lift: Lift | None):
        """Yield (units slice, values [N, c, HW] float32) per chunk of units (lifted per chunk), in the
        layer's own layout (no transposed copy)."""
        n, c = a.shape[:2]
        hw = (a[:1, :1] if lift is None else lift(a[:1, :1]))[0, 0].numel()
        step = max(1, min(c, self.chunk // max(1, n * hw)))
        for c0 in range(0, c, step):
            part = a[:, c0:c0 + step]
            part = part if lift is None else lift(part)
            yield slice(c0, c0 + part.shape[1]), part.to(self.device, torch.float32).reshape(n, part.shape[1], hw)

    def _add_chunk(self, units: slice, v: torch.Tensor, masks: "_Masks") -> None:
        """Count one chunk of units: v [N, c, HW] float32. Every count is an exact integer."""
        n, c, hw = v.shape
        e, half2, L = self.edges.shape[1], self.cells + 2, self.cand.shape[1]
        d = v.device
        lo, hi = torch.aminmax(v, dim=2)                                           # one pass, [N, c]
        lo, hi = lo.amin(0), hi.amax(0)
        self.lo[units] = torch.minimum(self.lo[units], lo.double())
        self.hi[units] = torch.maximum(self.hi[units], hi.double())
        self.zeros[units] += n * hw - torch.count_nonzero(v, dim=(0, 2))
        grid = self.grid[units]
        fine = _cells_units(v, grid, self.cells)                                    # [N, c, HW] int32, cell - 1
        fine += (torch.arange(c, device=d, dtype=torch.int32) * half2 + 1)[None, :, None]  # cell + unit * half2
        flat = fine.view(-1)
        # (unit, bin) key of every value: one gather from a table with the unit offset folded in, plus
        # the pixel's concept pattern (pattern-major), then one bincount
        lut = (self._lut[units].to(torch.int32) + (torch.arange(c, device=d, dtype=torch.int32) * (e + 1))[:, None])
        keys = lut.view(-1).index_select(0, flat).view(n, c, hw)
        if masks.table.shape[0] * c * (e + 1) >= 2 ** 31:
            keys = keys.long()
        keys += (masks.pattern * (c * (e + 1))).to(keys.dtype).view(n, 1, hw)
        p = masks.table.shape[0]
        counts = torch.bincount(keys.view(-1), minlength=p * c * (e + 1)).view(p, c * (e + 1))
        del keys
        self.hist[units] += counts.sum(0).view(c, e + 1)
        ftype = _exact_float(d, n * hw)                                               # sums stay exact integers
        joint = counts.t().to(ftype) @ masks.table.to(ftype)                          # [c (E+1), K]
        self.joint[units] += joint.round().long().view(c, e + 1, -1)
        del counts, joint
        # the null: only values above the lowest candidate edge take part; window bin wb in [1, L] (L:
        # above every candidate), a > e_cand[l] <=> l < wb. Sparse (each such value scattered with its
        # pixel's masks) while few are above; else the values above every candidate are counted densely
        # (one matmul per block, the old path) and only those inside the window are scattered
        off = torch.arange(c, device=d, dtype=torch.int32) * half2
        cand_cells = self.edge_cells[units].gather(1, self.cand[units, ::L - 1]).to(torch.int32)   # [c, 2]
        above = fine > (cand_cells[:, 0] + off)[None, :, None]                       # [N, c, HW]
        top = None
        if int(above.sum()) > SPARSE_SHARE * above.numel():
            top = fine > (cand_cells[:, 1] + off)[None, :, None]                     # above every candidate
            above &= ~top
        idx = above.view(-1).nonzero()[:, 0]                                        # flat (image, unit, px)
        del above
        lutw = self._lutw[units].reshape(-1)
        wb = lutw.index_select(0, flat.index_select(0, idx)).long()                  # [M] in [1, L]
        img = idx // (c * hw)
        unit = (idx // hw) % c
        px = idx % hw
        bounds = torch.searchsorted(img, torch.arange(0, n + 1, self.block, device=d)).tolist() + [idx.numel()]
        for bi, s in enumerate(range(0, n, self.block)):
            a0, a1 = bounds[bi], bounds[bi + 1]
            dense = None
            if top is not None:                                                     # [b c, b K] exact counts
                blk = top[s:s + self.block]
                dense = blk.reshape(-1, hw).to(ftype) @ masks.float_block(bi, ftype)
            self._null_block(units, c, img[a0:a1] - s, unit[a0:a1], px[a0:a1], wb[a0:a1], masks.blocks[bi], L,
                             dense)

    def _null_block(self, units: slice, c: int, img: torch.Tensor, unit: torch.Tensor, px: torch.Tensor,
                    wb: torch.Tensor, mrow: torch.Tensor, L: int, dense: torch.Tensor | None = None) -> None:
        """One block of b images: the values above the lowest candidate (their image in the block, unit,
        pixel and window bin wb in [1, L]) and the block's int32 masks mrow [HW, b K]. win[i, u, L - w] =
        the masks summed over the pixels of image i, unit u in window bin w (bins stored in reverse), so
        that its running sum over the bins, read at L - 1 - l, is c_ij(l) = |(a_i > e_l) & M_j| =
        sum_{w > l} win[w]; then
        PermutationNull's moments, in exact integers (int32 while b^2 HW^2 < 2^31, else int64). dense
        [b c, b K] (exact integer floats), when given: the masks summed over the pixels above every
        candidate, which are then not among the scattered values (window bin L, stored first)."""
        k = self.concept.numel()
        b, hw = mrow.shape[1] // k, mrow.shape[0]
        itype = torch.int32 if b * b * hw * hw < 2 ** 31 else torch.int64
        win = torch.zeros(b * c * L, b * k, dtype=itype, device=mrow.device)
        if px.numel():
            win.index_add_(0, (img * c + unit) * L + (L - wb), mrow.index_select(0, px).to(itype))
        if dense is not None:
            win.view(b * c, L, b * k)[:, 0] += dense.to(itype)
        cross = win.view(b, c, L, b, k).cumsum_(2)                  # [b_i, c, L (reversed), b_j, K] = c_ij(l)
        if b == 1:
            self.null_mean[units] += cross[0, :, :, 0].double().flip(1)
            return
        # sum_ij d_ij^2 = sum c^2 - sum_i r_i^2 / b - sum_j s_j^2 / b + g^2 / b^2: every sum exact
        r = cross.sum(3, dtype=itype).double()                                     # [b, c, L, K]
        col = cross.sum(0, dtype=itype).double()                                   # [c, L, b, K]
        g = r.sum(0)                                                               # [c, L, K]
        sq = cross.square_().sum((0, 3), dtype=itype).double()
        var = sq - (r * r).sum(0) / b - (col * col).sum(2) / b + g * g / b ** 2
        self.null_mean[units] += (g / b).flip(1)
        self.null_var[units] += (var / (b - 1)).flip(1)

    # -- answers ----------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.hist is None:
            raise ValueError("JointHist: empty (nothing added)")

    def counts_at(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact counts at edges: pos [C, T] positions into `edges` -> (above [C, T] = |a > e|,
        inter [C, T, K] = |(a > e) & M_k|), int64."""
        self._check()
        tail_h = self.hist.flip(1).cumsum(1).flip(1)                               # [C, E+1]: bins >= b
        tail_j = self.joint.flip(1).cumsum(1).flip(1)
        nxt = pos.to(self.device) + 1                                              # a > e_j <=> bin >= j + 1
        above = tail_h.gather(1, nxt)
        inter = tail_j.gather(1, nxt[:, :, None].expand(-1, -1, tail_j.shape[2]))
        return above, inter

    def threshold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(thresholds [C] float32, candidate index [C] int64): per unit the candidate edge whose exact
        rank 1 - |a > e| / n is nearest `level` (ties: the higher edge)."""
        above, _ = self.counts_at(self.cand)
        rank = 1.0 - above.double() / max(self.pixels, 1)                         # [C, L]
        err = (rank - self.level).abs()
        j = (err.flip(1).argmin(1))
        j = self.cand.shape[1] - 1 - j
        return self.edges.gather(1, self.cand.gather(1, j[:, None]))[:, 0], j

    def rank_error(self) -> torch.Tensor:
        """[C] float64 |exact rank of the chosen threshold - level| (the bound is checked on this)."""
        _, j = self.threshold()
        above, _ = self.counts_at(self.cand.gather(1, j[:, None]))
        return ((1.0 - above[:, 0].double() / max(self.pixels, 1)) - self.level).abs()

    def null_at(self, j: torch.Tensor) -> PermutationNull:
        """A PermutationNull filled with the exact counts and null moments at candidate j [C] of each
        unit: equal to PermutationNull(thresholds=edge).add(...) over the same batches."""
        self._check()
        t = self.edges.gather(1, self.cand.gather(1, j[:, None].to(self.device)))[:, 0]
        out = PermutationNull(t, block=self.block, device=self.device)
        above, inter = self.counts_at(self.cand.gather(1, j[:, None].to(self.device)))
        k = self.concept.numel()
        out.inter = inter[:, 0].clone()
        out.above = above[:, :1].expand(-1, k).clone()
        out.concept = self.concept.clone()
        pick = j.to(self.device)[:, None, None].expand(-1, 1, k)
        out.null_mean = self.null_mean.gather(1, pick)[:, 0].clone()
        out.null_var = self.null_var.gather(1, pick)[:, 0].clone()
        out.samples, out.pixels = self.samples, self.pixels
        return out

    def quantiles(self, qs: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """qs [Q] -> [C, Q] float64: linear inside the bin that holds rank q (overflow bins bounded by
        the exact min / max); 0 -> min, 1 -> max."""
        self._check()
        qs = torch.as_tensor(qs, dtype=torch.float64, device=self.device).flatten()
        counts = self.hist.double()                                                # [C, E+1]
        cum = torch.nn.functional.pad(counts.cumsum(1), (1, 0))                    # [C, E+2]
        target = (qs[None, :] * self.pixels).expand(counts.shape[0], -1).contiguous()
        b = (torch.searchsorted(cum, target, right=True) - 1).clamp(0, counts.shape[1] - 1)
        bounds = torch.cat([self.lo[:, None], self.edges.double(), self.hi[:, None]], 1)   # [C, E+2]
        lower = torch.maximum(bounds.gather(1, b), self.lo[:, None])
        upper = torch.minimum(bounds.gather(1, b + 1), self.hi[:, None])
        frac = ((target - cum.gather(1, b)) / counts.gather(1, b).clamp(min=1)).clamp(0, 1)
        value = lower + frac * (upper - lower).clamp(min=0)
        # no negative values: ranks up to the share of exact zeros answer 0 (ReLU)
        zero = (self.lo[:, None] >= 0) & (target <= self.zeros[:, None].double())
        value = torch.where(zero, torch.zeros_like(value), value)
        return torch.minimum(torch.maximum(value, self.lo[:, None]), self.hi[:, None])

    # -- state ------------------------------------------------------------------------------------
    def _config(self) -> torch.Tensor:
        return torch.tensor([self.level, self.bins, self.candidates, self.window, self.block], dtype=torch.float64)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check()
        return {"config": self._config(), "grid": self.grid, "zeros": self.zeros, "edge_cells": self.edge_cells,
                "cand": self.cand, "hist": self.hist,
                "joint": self.joint, "concept": self.concept, "null_mean": self.null_mean,
                "null_var": self.null_var, "lo": self.lo, "hi": self.hi,
                "samples": torch.tensor(self.samples), "pixels": torch.tensor(self.pixels)}

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        if not torch.equal(d["config"].double().cpu(), self._config()):
            raise ValueError("JointHist: state has another level, bins, candidates, window or block")
        dev = self.device or d["hist"].device
        self.device = torch.device(dev)
        self._set_edges(d["grid"].to(dev, torch.float32), d["edge_cells"].to(dev, torch.int64),
                        d["cand"].to(dev, torch.int64))
        for name in ("hist", "joint", "concept", "zeros"):
            setattr(self, name, d[name].to(dev, torch.int64))
        for name in ("null_mean", "null_var", "lo", "hi"):
            setattr(self, name, d[name].to(dev, torch.float64))
        self.samples, self.pixels = int(d["samples"]), int(d["pixels"])

    def merge(self, other: "JointHist") -> None:
        """Add other's counts (same config and edges, e.g. both from `load_state_dict` of one warm-up);
        equal to adding everything to one stat when blocks never span two add() calls."""
        if other.hist is None:
            return
        if not torch.equal(other._config(), self._config()) or self.edges is None \
                or not torch.equal(other.edges.to(self.device), self.edges):
            raise ValueError("JointHist.merge: different config or edges")
        if self.hist is None:
            self._init(*other.joint.shape[::2])
        for name in ("hist", "joint", "concept", "zeros", "null_mean", "null_var"):
            setattr(self, name, getattr(self, name) + getattr(other, name).to(self.device))
        self.lo = torch.minimum(self.lo, other.lo.to(self.device))
        self.hi = torch.maximum(self.hi, other.hi.to(self.device))
        self.samples += other.samples
        self.pixels += other.pixels

    def with_edges(self) -> "JointHist":
        """An empty stat with this one's config and edges (for merge)."""
        out = JointHist(self.level, self.bins, self.candidates, self.window, self.block, self.device, self.chunk)
        out.device = self.device
        out.edges, out.cand, out.edge_cells, out.grid = self.edges, self.cand, self.edge_cells, self.grid
        out._lut, out._lutw = self._lut, self._lutw
        return out


def _cells(v: torch.Tensor, grid: torch.Tensor, cells: int) -> torch.Tensor:
    """Fine cell [0, cells + 1] of every value, int32: v [c, M] float32, grid [c, 2] float32 (base,
    scale): 1 + floor((v - base) * scale) clamped, 0 and cells + 1 the open-ended overflow cells. Each
    step is a monotone float32 operation, so the cell never decreases with the value and
    `_cell_top` finds the exact threshold of every cell (a > top(c) <=> cell(a) > c)."""
    x = v - grid[:, :1]
    x *= grid[:, 1:]
    x = torch.floor_(x).clamp_(-1.0, float(cells))
    return x.to(torch.int32) + 1


def _cells_units(v: torch.Tensor, grid: torch.Tensor, cells: int) -> torch.Tensor:
    """`_cells` for v [N, c, M] (units in dim 1): the same float32 operations value by value, so the
    same cells; without the final + 1 (the caller adds it with the unit offset), int32 [N, c, M]."""
    x = v - grid[:, 0].view(1, -1, 1)
    x *= grid[:, 1].view(1, -1, 1)
    return torch.floor_(x).clamp_(-1.0, float(cells)).to(torch.int32)


def _cell_top(cell: torch.Tensor, grid: torch.Tensor, cells: int) -> torch.Tensor:
    """The largest float32 in each fine cell (cell [c, E] int, grid [c, 2]): found by bisection over the
    floats in order (their bits as order-preserving integers), with `_cells`' own arithmetic, so it is
    exact; +inf for the top overflow cell."""
    def to_float(k: torch.Tensor) -> torch.Tensor:
        k = k.to(torch.int32)
        return torch.where(k < 0, k ^ 0x7FFFFFFF, k).view(torch.float32)

    big = torch.tensor(3.4028234663852886e38, dtype=torch.float32)
    lo = torch.full(cell.shape, -int(big.view(torch.int32)), dtype=torch.int64, device=cell.device)  # -max
    hi = torch.full(cell.shape, int(big.view(torch.int32)) + 1, dtype=torch.int64, device=cell.device)
    expanded = lambda f: _cells(f.reshape(cell.shape[0], -1), grid, cells).long().view(cell.shape)  # noqa: E731
    for _ in range(34):
        mid = torch.div(lo + hi, 2, rounding_mode="floor")
        ok = expanded(to_float(mid)) <= cell
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    top = to_float(lo)
    return torch.where(cell >= cells + 1, torch.full_like(top, math.inf), top)


def _patterns(mf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The set of concepts present at each pixel as one id: mf bool [N, K, HW] -> (id [N HW] int64,
    table [P, K] int64 with table[id] = the concepts' presence)."""
    n, k, hw = mf.shape
    flat = mf.transpose(0, 1).reshape(k, n * hw)
    if k <= 62:
        bits = (flat.long() << torch.arange(k, device=mf.device)[:, None]).sum(0)
        uniq, inv = torch.unique(bits, return_inverse=True)
        table = (uniq[:, None] >> torch.arange(k, device=mf.device)[None, :]) & 1
        return inv, table
    uniq, inv = torch.unique(flat.t(), dim=0, return_inverse=True)              # many concepts: by rows
    return inv, uniq.long()


class _Masks:
    """What every unit's counting needs from one batch's masks m bool [N, K, HW], computed once per
    batch (the layers of one step share their masks): per-concept pixel counts [K], the concept pattern
    of every pixel [N HW] with its table [P, K], and per null block the int32 masks [HW, b K] (and, for
    the dense null, the same as floats, made on first use)."""

    def __init__(self, m: torch.Tensor, block: int) -> None:
        n, k = m.shape[:2]
        mf = m.reshape(n, k, -1)
        self.concept = mf.sum((0, 2))
        self.pattern, self.table = _patterns(mf)                                  # [N HW], [P, K] int64
        self.blocks = [mf[s:s + block].to(torch.int32).permute(2, 0, 1).reshape(mf.shape[2], -1)
                       for s in range(0, n, block)]
        self._floats: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def float_block(self, i: int, dtype: torch.dtype) -> torch.Tensor:
        """Block i's masks [HW, b K] as `dtype`, converted once per batch."""
        if (i, dtype) not in self._floats:
            self._floats[i, dtype] = self.blocks[i].to(dtype)
        return self._floats[i, dtype]


def _exact_float(device: torch.device, most: int) -> torch.dtype:
    """The float dtype in which a matmul of non-negative integers summing to at most `most` per output is
    exact: float32 only on CPU at "highest" matmul precision (no bfloat16 inside) and below 2^24;
    otherwise float64 (on CUDA TF32 or reduced-precision reductions would round counts past 2^11)."""
    if device.type == "cpu" and torch.get_float32_matmul_precision() == "highest" and most < 2 ** 24:
        return torch.float32
    return torch.float64


# The last batch's masks: (weak reference to the masks tensor as passed, its version, block, device, _Masks).
# Released when that tensor is freed (weakref.finalize), so a step's masks never outlive it here.
_MASKS_CACHE: list[tuple[weakref.ref, int, int, torch.device, _Masks]] = []


def _masks(m: torch.Tensor, block: int, device: torch.device) -> _Masks:
    """_Masks of m on `device`, reused while m is the same tensor at the same version (every layer of a
    step passes the same masks; masks on another device are moved once). Not reused for inference
    tensors (no version counter). The version counter sees every in-place torch op on m, but not
    writes that bypass it (`m.data[...] = ...`, a numpy array shared through `torch.from_numpy`): masks
    edited that way between two adds must be passed as a new tensor (e.g. `m.clone()`)."""
    if m.is_inference():
        return _Masks(m.to(device), block)
    if _MASKS_CACHE:
        ref, version, blk, dev, out = _MASKS_CACHE[0]
        if ref() is m and version == m._version and blk == block and dev == device:
            return out
    out = _Masks(m.to(device), block)
    ref = weakref.ref(m)
    _MASKS_CACHE[:] = [(ref, m._version, block, device, out)]
    weakref.finalize(m, _forget, ref).atexit = False
    return out


def _forget(ref: weakref.ref) -> None:
    """Drop the cached _Masks of a freed masks tensor (called by weakref.finalize)."""
    if _MASKS_CACHE and _MASKS_CACHE[0][0] is ref:
        _MASKS_CACHE.clear()
