"""ACE optimisation (paper section 3.2, eq. 5-6, supplement S-6.4): which units of a layer cause a concept.

Reads the job's generator and segmenter and the IoU of the dissection it depends on (`unit_iou`, for
the initialisation); writes `ace_alpha` (the final alpha per unit), `ace_epochs` (loss and effect after
every epoch) and `ace_trajectory` (alpha of every unit after every epoch). Resumable: the sample pool is
a resumable pass, and alpha with the optimiser's `state_dict()` is checkpointed by `tally` under
`.cache/<run_key>/` after every epoch.

Method, for each declared concept c and layer:

1. Sample pool: `samples` latents of `seed` (kept beside the featuremaps: `finish` on a non-sequential
   generator reruns the forward pass on them); the generator below the layer runs once per sample. The
   insertion constants k (`compute.core.pool.LayerPool.constants`) come from the same samples.
2. Locations P (single featuremap locations): removal candidates where c covers at least `presence` of
   the location's pixel block; insertion candidates where c is absent (coverage 0) but covers at least
   `presence` of it after setting ALL units to k_c there (`probe` random absent locations are tried per
   sample). Minibatches take half of each kind (all of one kind when the other has none).
3. Objective: s_c = the segmenter's differentiable probability of c averaged over the pixel block of the
   location intervened on. On a removal item the partial ablation x'_a (eq. 5, alpha * r at P set
   towards 0) is scored, on an insertion item the partial insertion x'_i (towards k_c):
       delta = [share_i * E(s_c(x'_i) - s_c(x)) + share_a * E(s_c(x) - s_c(x'_a))] / E[s_c(x)],
   the ACE of eq. 5 where x'_i ~ x at removal items and x'_a ~ x at insertion items, normalised by the
   pool's mean s_c(x) over the same location mixture (delta = 0 exactly when alpha = 0).
   loss = -delta + lambda * P(alpha); Adam (lr); alpha clamped to [0, 1] after every step;
   initialised alpha_u = IoU_{u,c} / max_v IoU_{v,c} from the dissection.
   P is `penalty`: "l2" (default) = ||alpha||_2, eq. 6 as printed in the paper; "l2sq" = ||alpha||_2^2,
   what the reference code (CSAILVision/gandissect `aceoptimize.py`, `l2_lambda * ablation.pow(2).sum()`)
   minimises. Both shrink each alpha_u in proportion to itself; they differ in scale: the norm's
   gradient lambda * alpha / ||alpha|| has length lambda wherever alpha is, so lambda means the same
   on a 64-unit and a 512-unit layer; the square's gradient 2 * lambda * alpha has length
   2 * lambda * ||alpha||, which grows with the number of units switched on. docs/ace.md argues the
   default (the paper's "l2") with measurements.
4. After every epoch, delta and the loss are evaluated on a fixed set of `eval_items` locations.

Parameters (spec keys; the example spec states them all): epochs, steps_per_epoch, batch, lr, l2 (lambda),
penalty ("l2" | "l2sq"), presence, probe, eval_items, batch_size. A run reads them from `job.config`
(`AceConfig.from_job`); their defaults are compute/analyses/params.py's, which `AceConfig`'s fields
take (code version, needs and tables in the registry, compute/analyses/__init__.py).

    gandissect run examples/intervene.toml --only ace
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from compute import analyses
from compute.analyses.params import defaults
from compute.core.intervene import (ConceptAbsentError, block_mean, concept_index, coverage, edit_featuremap, finish,
                                    location_masks)
from compute.core.pool import LayerPool
from compute.jobs.context import Checkpoint, Job, RunContext, pass_name
from compute.jobs.tally import tally

IOU_SQL = "select unit, iou from unit_iou where run_key = ? and layer = ? and concept = ? order by unit"


_D = defaults("ace")  # the parameter table's defaults (compute/analyses/params.py), the one place they live


@dataclass(frozen=True)
class AceConfig:
    """The optimiser's configuration: a run's is built from its `job.config` (`from_job`); benches and
    tests build their own. Defaults: the ace parameter table's."""

    epochs: int = _D["epochs"]
    steps_per_epoch: int = _D["steps_per_epoch"]
    batch: int = _D["batch"]          # locations per optimisation step (half removal, half insertion)
    lr: float = _D["lr"]              # Adam learning rate
    l2: float = _D["l2"]              # lambda of the L2 penalty on alpha (0.01 left most alphas saturated at 1)
    presence: float = _D["presence"]  # share of a location's pixel block the concept must cover to count as present
    probe: int = _D["probe"]          # absent locations per sample tried as insertion candidates
    eval_items: int = _D["eval_items"]  # fixed locations on which delta is evaluated after every epoch
    seed: int = 1                     # seed of the sample pool (and of the location sampling)
    batch_size: int = _D["batch_size"]  # generator batch of the pool pass
    penalty: str = _D["penalty"]      # "l2": lambda * ||alpha||_2 (eq. 6 as printed); "l2sq": lambda * ||alpha||_2^2 (reference code)

    def __post_init__(self) -> None:
        if self.penalty not in PENALTIES:
            raise ValueError(f"ace: penalty = {self.penalty!r}; allowed: {', '.join(map(repr, PENALTIES))}")

    @classmethod
    def from_job(cls, job: Job) -> "AceConfig":
        """The run's optimiser configuration: every field from `job.config`, cast to the field's type."""
        cfg = job.config
        kw = {f: type(getattr(cls, f))(getattr(cfg, f)) for f in cls.__dataclass_fields__ if f != "seed"}
        return cls(seed=int(cfg.seed), **kw)


@dataclass
class Pool:
    """A sample set's featuremaps and segmentation at one layer (the generator below it ran once)."""
    r: torch.Tensor        # [N, C, h, w] featuremaps
    z: torch.Tensor        # [N, z_dim] the latents they came from (the rest of the generator may read them)
    cover: torch.Tensor    # [N, K, h, w] share of each location's pixel block per concept (hard masks)
    prob: torch.Tensor     # [N, K, h, w] mean soft probability per concept over each block
    k: torch.Tensor        # [K, C] insertion constants (NaN rows: concept never present)
    seed: int
    n: int


def build_pool(lp: LayerPool, n: int, cfg: AceConfig, ctx: RunContext | None = None, job: Job | None = None
               ) -> Pool:
    """Featuremaps, coverage, block probabilities and insertion constants of samples 0..n-1 of the layer
    pool's seed (a resumable pass of the job when ctx and job are given); the pool must segment with probs."""
    k = lp.constants(ctx, job, n, cfg.batch_size, pass_name("ace", lp.layer, "pool"))
    held = lp.all(n, cfg.batch_size)
    h, w = held.r.shape[2:]
    return Pool(held.r, held.z, coverage(held.masks, h, w), held.probs, k, int(lp.seed), n)


def candidates(gen: torch.nn.Module, seg: Any, layer: str, pool: Pool, c: int, cfg: AceConfig,
               chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Removal and insertion candidate locations of concept c: LongTensors [M, 3] of (sample, y, x)."""
    n, units, h, w = pool.r.shape
    removal = (pool.cover[:, c] >= cfg.presence).nonzero()
    g = torch.Generator().manual_seed(cfg.seed * 7919 + c)
    absent = pool.cover[:, c] == 0  # [N, h, w]
    probes = []
    for i in range(n):
        cells = absent[i].flatten().nonzero()[:, 0].cpu()
        pick = cells[torch.randperm(cells.numel(), generator=g)[:cfg.probe]]
        probes += [(i, int(p) // w, int(p) % w) for p in pick]
    if not probes:
        return removal, torch.zeros(0, 3, dtype=torch.long, device=removal.device)
    probe = torch.tensor(probes, device=pool.r.device)
    kc = pool.k[c].to(pool.r.device)
    ones = torch.ones(units, device=pool.r.device)
    keep = []
    with torch.no_grad():
        for s in range(0, probe.shape[0], chunk):
            p = probe[s:s + chunk]
            masks = location_masks(h, w, p[:, 1:], device=pool.r.device)
            images = finish(gen, layer, edit_featuremap(pool.r[p[:, 0]], ones, kc, masks, layer), pool.z[p[:, 0]])
            cov = coverage(seg.concept_masks(images)[:, c:c + 1], h, w)[:, 0]  # [B, h, w]
            keep.append(cov[torch.arange(p.shape[0]), p[:, 1], p[:, 2]] >= cfg.presence)
    return removal, probe[torch.cat(keep)]


@dataclass
class AlphaResult:
    alpha: torch.Tensor                 # [C] final alpha
    init: torch.Tensor                  # [C] initial alpha
    trajectory: list[torch.Tensor]      # alpha after epoch 0 (init), 1, ..., E
    epochs: list[dict[str, float]]      # epoch, loss, effect, alpha_l1, alpha_l2
    removal: int = 0                    # number of removal / insertion candidate locations
    insertion: int = 0
    norm: float = 0.0                   # E[s_c(x)] over the location mixture
    notes: list[str] = field(default_factory=list)


def _draw(cands: torch.Tensor, m: int, g: torch.Generator) -> torch.Tensor:
    if m == 0 or cands.shape[0] == 0:
        return cands[:0]
    return cands[torch.randint(cands.shape[0], (m,), generator=g).to(cands.device)]


def _split(batch: int, rem: torch.Tensor, ins: torch.Tensor) -> tuple[int, int, float, float]:
    """Items of each kind per batch and the kinds' shares (a kind with no candidates gets none)."""
    if rem.shape[0] and ins.shape[0]:
        m_rem = batch // 2
        return m_rem, batch - m_rem, 0.5, 0.5
    return (batch, 0, 1.0, 0.0) if rem.shape[0] else (0, batch, 0.0, 1.0)


def _scores(gen: torch.nn.Module, seg: Any, layer: str, pool: Pool, c: int, alpha: torch.Tensor,
            items: torch.Tensor, value: torch.Tensor | float) -> torch.Tensor:
    """s_c at each item's location after editing it: [M] (differentiable in alpha)."""
    if items.shape[0] == 0:
        return alpha.new_zeros(0)
    h, w = pool.r.shape[2:]
    masks = location_masks(h, w, items[:, 1:], device=pool.r.device)
    images = finish(gen, layer, edit_featuremap(pool.r[items[:, 0]], alpha, value, masks, layer), pool.z[items[:, 0]])
    p = block_mean(seg.probs(images)[:, c], h, w)  # [M, h, w]
    return p[torch.arange(items.shape[0]), items[:, 1], items[:, 2]]


def effect(gen: torch.nn.Module, seg: Any, layer: str, pool: Pool, c: int, alpha: torch.Tensor,
           rem: torch.Tensor, ins: torch.Tensor, share: tuple[float, float], norm: float) -> torch.Tensor:
    """The normalised ACE estimate delta of alpha on removal items `rem` and insertion items `ins`."""
    kc = pool.k[c].to(pool.r.device)
    total = alpha.new_zeros(())
    if rem.shape[0]:
        base = pool.prob[rem[:, 0], c, rem[:, 1], rem[:, 2]]
        total = total + share[0] * (base - _scores(gen, seg, layer, pool, c, alpha, rem, 0.0)).mean()
    if ins.shape[0]:
        base = pool.prob[ins[:, 0], c, ins[:, 1], ins[:, 2]]
        total = total + share[1] * (_scores(gen, seg, layer, pool, c, alpha, ins, kc) - base).mean()
    return total / norm


def _l2(alpha: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((alpha * alpha).sum() + 1e-12)


PENALTIES: tuple[str, ...] = ("l2", "l2sq")


def penalty(alpha: torch.Tensor, kind: str) -> torch.Tensor:
    """The penalty on alpha [C] (a scalar): "l2" = ||alpha||_2 (paper eq. 6), "l2sq" = ||alpha||_2^2 (reference code)."""
    if kind == "l2":
        return _l2(alpha)
    if kind == "l2sq":
        return (alpha * alpha).sum()
    raise ValueError(f"unknown ACE penalty {kind!r}; allowed: {', '.join(map(repr, PENALTIES))}")


EPOCH_KEYS: tuple[str, ...] = ("epoch", "loss", "effect", "alpha_l1", "alpha_l2")


class AlphaState:
    """The alpha optimisation's resumable state, checkpointed by `tally` after every epoch: alpha [C], the
    optimiser's `state_dict()`, alpha after every epoch so far and the per-epoch rows. `add` records one
    epoch's evaluation. The optimisation is sequential: two states do not merge."""

    def __init__(self, alpha: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        self.alpha, self.opt = alpha, opt
        self.trajectory: list[torch.Tensor] = []
        self.epochs: list[dict[str, float]] = []

    def add(self, row: dict[str, float]) -> None:
        self.epochs.append(row)
        self.trajectory.append(self.alpha.detach().cpu().clone())

    def state_dict(self) -> dict[str, torch.Tensor]:
        d = {"alpha": self.alpha.detach(), "trajectory": torch.stack(self.trajectory),
             "epochs": torch.tensor([[float(e[k]) for k in EPOCH_KEYS] for e in self.epochs], dtype=torch.float64)}
        for pid, st in self.opt.state_dict()["state"].items():
            d.update({f"opt.{pid}.{k}": torch.as_tensor(v) for k, v in st.items()})
        return d

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.alpha.copy_(d["alpha"].to(self.alpha.device))
        self.trajectory = list(d["trajectory"].unbind(0))
        self.epochs = [{k: (int(v) if k == "epoch" else float(v)) for k, v in zip(EPOCH_KEYS, row.tolist())}
                       for row in d["epochs"]]
        opt = self.opt.state_dict()
        opt["state"] = {}
        for key, v in d.items():
            if key.startswith("opt."):
                _, pid, name = key.split(".", 2)
                opt["state"].setdefault(int(pid), {})[name] = v
        self.opt.load_state_dict(opt)

    def merge(self, other: "AlphaState") -> None:
        raise TypeError("an ACE alpha optimisation is sequential: its states do not merge")


def optimise_alpha(gen: torch.nn.Module, seg: Any, layer: str, pool: Pool, c: int, init: torch.Tensor,
                   cfg: AceConfig, ckpt: Checkpoint | None = None, progress: Any = None,
                   cands: tuple[torch.Tensor, torch.Tensor] | None = None) -> AlphaResult:
    """Adam on -delta + lambda P(alpha) (P = cfg.penalty) with alpha clamped to [0, 1] after every step (eq. 6)."""
    name = seg.concepts[c].name
    if bool(torch.isnan(pool.k[c]).any()):
        raise ConceptAbsentError(f"concept {name!r} is absent from every one of the {pool.n} samples of seed "
                                 f"{pool.seed}: no alpha optimisation is possible")
    rem, ins = cands if cands is not None else candidates(gen, seg, layer, pool, c, cfg)
    if rem.shape[0] == 0 and ins.shape[0] == 0:
        raise ConceptAbsentError(f"concept {name!r} covers no location (presence >= {cfg.presence}) and cannot be "
                                 f"inserted anywhere in the {pool.n} samples of seed {pool.seed}: no alpha "
                                 f"optimisation is possible")
    m_rem, m_ins, s_rem, s_ins = _split(cfg.batch, rem, ins)
    norm = (s_rem * float(pool.prob[rem[:, 0], c, rem[:, 1], rem[:, 2]].mean()) if rem.shape[0] else 0.0) + \
           (s_ins * float(pool.prob[ins[:, 0], c, ins[:, 1], ins[:, 2]].mean()) if ins.shape[0] else 0.0)
    norm = max(norm, 1e-6)
    ge = torch.Generator().manual_seed(cfg.seed * 104_729 + c)
    e_rem, e_ins, _, _ = _split(cfg.eval_items, rem, ins)
    eval_rem, eval_ins = _draw(rem, e_rem, ge), _draw(ins, e_ins, ge)
    device = pool.r.device
    alpha = init.clone().float().to(device).clamp(0, 1).requires_grad_(True)
    state = AlphaState(alpha, torch.optim.Adam([alpha], lr=cfg.lr))

    def evaluate(epoch: int) -> None:
        with torch.no_grad():
            d = float(effect(gen, seg, layer, pool, c, alpha, eval_rem, eval_ins, (s_rem, s_ins), norm))
            l2 = float(_l2(alpha))
            pen = float(penalty(alpha, cfg.penalty))
        state.add({"epoch": epoch, "loss": -d + cfg.l2 * pen, "effect": d, "alpha_l1": float(alpha.detach().sum()),
                   "alpha_l2": l2})

    evaluate(0)  # replaced by the checkpoint's rows when `tally` resumes one
    for epoch in tally({"ace": state}, list(range(cfg.epochs)), ckpt, every=1, progress=progress, desc=f"ace {name}"):
        for step in range(cfg.steps_per_epoch):
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + c * 10_007 + epoch * cfg.steps_per_epoch + step)
            b_rem, b_ins = _draw(rem, m_rem, g), _draw(ins, m_ins, g)
            d = effect(gen, seg, layer, pool, c, alpha, b_rem, b_ins, (s_rem, s_ins), norm)
            loss = -d + cfg.l2 * penalty(alpha, cfg.penalty)
            (grad,) = torch.autograd.grad(loss, [alpha])  # no weight gradients of the generator or segmenter
            alpha.grad = grad
            state.opt.step()
            with torch.no_grad():
                alpha.clamp_(0.0, 1.0)
        evaluate(epoch + 1)
    trajectory, epochs = state.trajectory, state.epochs
    notes = []
    if not ins.shape[0]:
        notes.append(f"{name}: no insertion candidates (removal locations only)")
    if not rem.shape[0]:
        notes.append(f"{name}: no removal candidates (insertion locations only)")
    return AlphaResult(alpha.detach().cpu(), init.detach().cpu().float(), trajectory, epochs,
                       int(rem.shape[0]), int(ins.shape[0]), norm, notes)


def iou_init(ctx: RunContext, dissect_key: str, layer: str, concept: str, units: int) -> torch.Tensor:
    """alpha_u = IoU_{u,c} / max_v IoU_{v,c} from the dissection (NULL IoU counts as 0)."""
    df = ctx.read(IOU_SQL, [dissect_key, layer, concept])
    iou = torch.zeros(units)
    for u, v in zip(df["unit"].to_list(), df["iou"].to_list()):
        if v is not None and math.isfinite(v):
            iou[int(u)] = max(float(v), 0.0)
    top = float(iou.max())
    return iou / top if top > 0 else iou


def require_concepts(job: Job) -> tuple[str, ...]:
    if not job.analysis.concepts:
        raise ValueError(f"analysis {job.analysis.name!r} ({job.analysis.kind}) needs `concepts = [...]` in the spec")
    return job.analysis.concepts


def compute(job: Job, ctx: RunContext) -> dict[str, list[dict[str, Any]]]:
    gen, seg = ctx.generator(job), ctx.segmenter(job)
    cfg = AceConfig.from_job(job)
    concepts = require_concepts(job)
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in analyses.kind("ace").tables}
    base = {"run_key": job.run_key, "model": job.model.name}
    for layer in job.layers:
        pool = build_pool(LayerPool.of(job, ctx, layer, cfg.seed, probs=True), int(job.config.samples), cfg,
                          ctx, job)
        units = pool.r.shape[1]
        for name in concepts:
            c = concept_index(seg, name)
            init = iou_init(ctx, job.dep("dissect"), layer, name, units)
            ckpt = Checkpoint(ctx.cache_dir(job), pass_name("ace", layer, name, "alpha"))
            res = optimise_alpha(gen, seg, layer, pool, c, init, cfg, ckpt, ctx.progress)
            for note in res.notes:
                print(f"note: {job.analysis.name} [{job.model.name}] {layer}: {note}")
            row = {**base, "layer": layer, "concept": name}
            out["ace_alpha"] += [{**row, "unit": u, "alpha": float(res.alpha[u]), "alpha_init": float(res.init[u])}
                                 for u in range(units)]
            out["ace_epochs"] += [{**row, **e} for e in res.epochs]
            out["ace_trajectory"] += [{**row, "epoch": e, "unit": u, "alpha": float(a[u])}
                                      for e, a in enumerate(res.trajectory) for u in range(units)]
    return out


def describe(cfg: AceConfig) -> str:
    """The configuration as canonical JSON (for logs and reports)."""
    return json.dumps(asdict(cfg), sort_keys=True)
