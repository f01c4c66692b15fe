"""Interventions on a generator's featuremap: ablation, insertion, batched insertion maps, tracing.

Reads nothing from disk and writes nothing; the analyses `ace`, `ablate`, `insert` and `trace`
(`compute/analyses/`), the painting tools and `gandissect bench` (`compute/bench/ace.py`) build on these helpers.

An edit forces units U at featuremap locations P towards a value v (paper eq. 3 and 5):

    r <- r * (1 - a) + v * a,   a[n, u, y, x] = alpha[u] * pixels[n, y, x]

with `alpha` a per-unit weight in [0, 1] (a 0/1 indicator for a unit set U, or the optimised
continuous alpha), `pixels` a per-location weight (the set P), v = 0 for ablation and v = k_c for
insertion, k_c being the per-concept insertion constant (supplement S-6.4): each unit's mean
activation conditioned on concept c, each featuremap location weighted by the share of it that c
covers in the segmented output (`insertion_constants`).

Everything is batched so that the generator below the edited layer runs ONCE per sample: the layer's
featuremap `r` is computed with `Tap(stop_after=layer)` (`featuremap`, with `finish` and `coverage` defined
beside the `LayerPool` in `compute.core.pool` and re-exported here), edited copies are stacked
(many locations and samples per forward pass) and the rest of the generator runs on them (`finish`,
i.e. `compute.core.tap.forward_from`): on an nn.Sequential generator only the layers above run; on any
other generator (StyleGAN2, `family = "module"`) the whole forward runs on each copy's latent z with the
layer's output replaced, so every function that finishes a featuremap takes the latents z [N, z_dim]
of its samples alongside r [N, C, h, w] (row i of r came from row i of z).

    from compute.core.intervene import apply_units, insertion_constants
    k = insertion_constants(gen, seg, "layer4", z)                    # [K, C]
    images = apply_units(gen, "layer4", z, [3, 17, 40], k[INDEX["door"]], pixel_mask)
    r = featuremap(gen, "layer4", z)
    images = finish(gen, "layer4", edit_featuremap(r, alpha, 0.0, cells), z)

Bad input raises `InterventionError` subclasses (ValueError) with one clear line: unit indices out of
range, empty unit sets, masks of the wrong shape, a concept absent from every sample.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from compute.core.pool import LayerPool, coverage, featuremap, finish
from compute.core.probe import run_order
from compute.core.stats import ConditionalMean
from compute.core.tap import Edit, Tap, apply_edit
from db.errors import BadInput

__all__ = [
    "InterventionError", "UnitRangeError", "EmptyUnitSetError", "MaskShapeError", "ConceptAbsentError",
    "unit_alpha", "check_alpha", "pixel_mask", "edit_featuremap", "featuremap", "finish", "apply_units",
    "coverage", "concept_index", "insertion_constants", "constant_for", "location_masks", "block_mean",
    "window_sum", "insertion_effects", "cell_contexts", "map_context", "later_layers", "channel_scales",
    "trace_insertion",
]

# Which category names a location's single context in `insertion_maps` (the most specific first).
CONTEXT_PREFERENCE: tuple[str, ...] = ("part", "object", "material")


# ----------------------------------------------------------------------------------------- errors

class InterventionError(BadInput):
    """Bad input to an intervention (the message is one line, meant for the user)."""


class UnitRangeError(InterventionError):
    pass


class EmptyUnitSetError(InterventionError):
    pass


class MaskShapeError(InterventionError):
    pass


class ConceptAbsentError(InterventionError):
    pass


# ------------------------------------------------------------------------------------ unit sets

def unit_alpha(units: Sequence[int] | torch.Tensor, n_units: int, *, layer: str = "?",
               device: torch.device | str | None = None) -> torch.Tensor:
    """A unit set as a 0/1 per-unit weight [C] (float32). Indices must lie in [0, n_units)."""
    idx = torch.as_tensor(units if not isinstance(units, torch.Tensor) else units.detach().cpu())
    if idx.numel() == 0:
        raise EmptyUnitSetError(f"empty unit set for layer {layer!r}: give at least one unit index")
    if idx.dtype.is_floating_point and not bool((idx == idx.round()).all()):
        raise UnitRangeError(f"unit indices must be integers, got {idx.tolist()[:8]}")
    idx = idx.long().flatten()
    bad = idx[(idx < 0) | (idx >= n_units)]
    if bad.numel():
        raise UnitRangeError(f"unit index {int(bad[0])} is out of range for layer {layer!r} "
                             f"(it has {n_units} units: 0..{n_units - 1})")
    a = torch.zeros(n_units, dtype=torch.float32)
    a[idx] = 1.0
    return a.to(device) if device is not None else a


def check_alpha(alpha: torch.Tensor, n_units: int, layer: str = "?") -> torch.Tensor:
    """A continuous per-unit alpha [C] in [0, 1]; raises on a wrong length or values outside [0, 1]."""
    if alpha.dim() != 1 or alpha.shape[0] != n_units:
        raise MaskShapeError(f"alpha has shape {tuple(alpha.shape)}; layer {layer!r} needs [{n_units}]")
    if bool(((alpha < 0) | (alpha > 1) | torch.isnan(alpha)).any()):
        raise InterventionError(f"alpha for layer {layer!r} must lie in [0, 1]")
    return alpha


def _as_alpha(units: Sequence[int] | torch.Tensor, n_units: int, layer: str,
              device: torch.device) -> torch.Tensor:
    """Integer unit indices -> 0/1 alpha [C]; a floating-point tensor is taken as the alpha [C] itself."""
    if isinstance(units, torch.Tensor) and units.dtype.is_floating_point:
        return check_alpha(units.to(device), n_units, layer)
    return unit_alpha(units, n_units, layer=layer, device=device)


def pixel_mask(mask: torch.Tensor | None, n: int, h: int, w: int, layer: str = "?") -> torch.Tensor | None:
    """A location set P as a weight [N or 1, 1, h, w]; accepts [h, w], [N, h, w], [N|1, 1, h, w]."""
    if mask is None:
        return None
    m = torch.as_tensor(mask)
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m[:, None]
    if m.dim() != 4 or m.shape[1] != 1 or m.shape[2:] != (h, w) or m.shape[0] not in (1, n):
        raise MaskShapeError(f"pixel mask of shape {tuple(torch.as_tensor(mask).shape)} does not fit the "
                             f"{h}x{w} featuremap of layer {layer!r} for {n} sample(s) (use [{h}, {w}], "
                             f"[{n}, {h}, {w}] or [{n}|1, 1, {h}, {w}])")
    return m.float()


_pixels = pixel_mask  # (apply_units has a parameter of that name)


def edit_featuremap(r: torch.Tensor, alpha: torch.Tensor, value: torch.Tensor | float,
                    pixels: torch.Tensor | None = None, layer: str = "?") -> torch.Tensor:
    """r [N, C, h, w] -> r * (1 - a) + value * a with a = alpha[C] x pixels[N|1, 1, h, w] (all pixels if None).

    `value` is a float (0 = ablation) or a per-unit [C] tensor (k_c = insertion). Differentiable in r,
    alpha and value.
    """
    n, c, h, w = r.shape
    if alpha.dim() != 1 or alpha.shape[0] != c:
        raise MaskShapeError(f"alpha of shape {tuple(alpha.shape)} does not fit the {c} units of layer {layer!r}")
    if isinstance(value, torch.Tensor) and value.dim() == 1 and value.shape[0] != c:
        raise MaskShapeError(f"value of shape {tuple(value.shape)} does not fit the {c} units of layer {layer!r}")
    a = alpha.to(r.device, r.dtype).view(1, c, 1, 1)
    p = pixel_mask(pixels, n, h, w, layer)
    if p is not None:
        a = a * p.to(r.device, r.dtype)
    v = value.to(r.device, r.dtype).view(1, c, 1, 1) if isinstance(value, torch.Tensor) and value.dim() == 1 \
        else value
    return apply_edit(r, Edit(a, v), layer)


# ------------------------------------------------------- generator halves (compute.core.pool)

def apply_units(gen: torch.nn.Module, layer: str, z: torch.Tensor, units: Sequence[int] | torch.Tensor,
                value: torch.Tensor | float = 0.0, pixel_mask: torch.Tensor | None = None,
                batch_size: int = 64) -> torch.Tensor:
    """Images [N, 3, H, W] with `units` of `layer` forced to `value` at `pixel_mask` (all locations if None).

    units: integer indices (a list or integer tensor) or a floating-point per-unit alpha [C] in [0, 1]; value: 0.0 (ablate), a float, or a per-unit
    [C] tensor such as an insertion constant k_c; pixel_mask: [h, w], [N, h, w] or [N|1, 1, h, w].
    """
    pool = LayerPool(gen, layer, z=z, keep=False)
    out = []
    for s in range(0, z.shape[0], batch_size):
        b = pool.batch(s, min(batch_size, z.shape[0] - s))
        n, c, h, w = b.r.shape
        alpha = _as_alpha(units, c, layer, b.r.device)
        p = _pixels(pixel_mask, z.shape[0], h, w, layer)
        if p is not None and p.shape[0] > 1:
            p = p[s:s + batch_size]
        with torch.no_grad():
            out.append(pool.finish(edit_featuremap(b.r, alpha, value, p, layer), b.z))
    return torch.cat(out)


# ---------------------------------------------------------------------- concepts and constants

def concept_index(seg: Any, name: str) -> int:
    """The segmenter's channel of a concept name (0 is 'none' and is refused)."""
    names = [c.name for c in seg.concepts]
    if name not in names or names.index(name) == 0:
        raise InterventionError(f"unknown concept {name!r}; the segmenter knows: {', '.join(names[1:])}")
    return names.index(name)


def block_mean(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Mean of an image-resolution map over the pixel block of each featuremap location: [N, H, W] -> [N, h, w]."""
    return F.adaptive_avg_pool2d(x[:, None].float(), (h, w))[:, 0]


def window_sum(cells: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum over the (2r+1)^2 neighbourhood of each location (zero outside): [N, h, w] -> [N, h, w]."""
    if radius <= 0:
        return cells
    k = 2 * radius + 1
    return F.avg_pool2d(cells[:, None], k, stride=1, padding=radius, count_include_pad=True)[:, 0] * (k * k)


def insertion_constants(gen: torch.nn.Module, seg: Any, layer: str, z: torch.Tensor, batch_size: int = 32,
                        stat: ConditionalMean | None = None) -> torch.Tensor:
    """Per-concept insertion constants k [K, C] (S-6.4): each unit's mean activation at `layer` where the
    concept is present in the segmented output, each location weighted by the share the concept covers.

    Rows of concepts never present in the samples are NaN. Pass `stat` to keep accumulating into it.
    """
    stat = stat if stat is not None else ConditionalMean()
    LayerPool(gen, layer, seg, z=z, keep=False).fold_all(stat, z.shape[0], batch_size)
    return stat.result().T.float().contiguous()


def constant_for(k: torch.Tensor, seg: Any, name: str, where: str = "the samples") -> torch.Tensor:
    """k_c [C] of one concept from constants k [K, C]; raises ConceptAbsentError when it is undefined."""
    c = concept_index(seg, name)
    kc = k[c]
    if bool(torch.isnan(kc).any()):
        raise ConceptAbsentError(f"concept {name!r} is absent from every one of {where}: its insertion "
                                 f"constant is undefined and no intervention for it is possible")
    return kc


# ------------------------------------------------------------------ batched location insertion

def location_masks(h: int, w: int, locations: torch.Tensor | None = None, radius: int = 0,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """One mask per location: [L, 1, h, w] (locations [L, 2] as (y, x); all h*w locations if None).

    radius > 0 makes each P a (2r+1)^2 square around its location (clipped at the border).
    """
    if locations is None:
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        locations = torch.stack([ys.flatten(), xs.flatten()], 1)
    loc = torch.as_tensor(locations).long().reshape(-1, 2)
    if bool(((loc[:, 0] < 0) | (loc[:, 0] >= h) | (loc[:, 1] < 0) | (loc[:, 1] >= w)).any()):
        raise MaskShapeError(f"location outside the {h}x{w} featuremap: {loc.tolist()[:4]}")
    m = torch.zeros(loc.shape[0], 1, h, w, device=device)
    m[torch.arange(loc.shape[0]), 0, loc[:, 0], loc[:, 1]] = 1.0
    if radius > 0:
        m = (F.max_pool2d(m, 2 * radius + 1, stride=1, padding=radius) > 0).float()
    return m


def _edited_chunks(r: torch.Tensor, alpha: torch.Tensor, value: torch.Tensor | float, masks: torch.Tensor,
                   chunk: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Every (sample, location) edit of r [N, C, h, w] with location masks [L, 1, h, w], `chunk` at a time.

    Yields (first flat index, count, edited featuremaps [count, C, h, w]); flat index = n * L + l.
    """
    n, l = r.shape[0], masks.shape[0]
    total = n * l
    for s in range(0, total, chunk):
        idx = torch.arange(s, min(total, s + chunk), device=r.device)
        yield s, idx.numel(), edit_featuremap(r[idx // l], alpha, value, masks[idx % l])


def insertion_effects(gen: torch.nn.Module, seg: Any, layer: str, r: torch.Tensor, z: torch.Tensor,
                      before: torch.Tensor,
                      alpha: torch.Tensor, value: torch.Tensor | float, concept: int, *,
                      locations: torch.Tensor | None = None, radius: int = 0, neighbourhood: int = 1,
                      chunk: int = 256) -> torch.Tensor:
    """Added concept pixels near each insertion: [N, L] (L = h*w in row-major order when locations is None).

    r [N, C, h, w] unedited featuremaps (the generator below `layer` already ran) of the latents z [N, z_dim];
    before bool [N, H, W] the
    concept's mask in the unedited images. For each sample and location the units `alpha` are set to
    `value` at that location (a (2*radius+1)^2 square), the rest of the generator and the segmenter run
    (`chunk` edited copies per pass), and the effect is the number of pixels that show `concept` after
    the edit and did not before, inside the pixel block of the location's (2*neighbourhood+1)^2 cells.
    """
    n, c, h, w = r.shape
    z = z.to(r.device)
    if before.shape[0] != n or before.dim() != 3:
        raise MaskShapeError(f"`before` mask of shape {tuple(before.shape)} does not fit {n} samples")
    locs = None if locations is None else torch.as_tensor(locations).long().reshape(-1, 2)
    masks = location_masks(h, w, locs, radius, r.device)
    l = masks.shape[0]
    flat_loc = (locs[:, 0] * w + locs[:, 1]).to(r.device) if locs is not None else torch.arange(l, device=r.device)
    out = torch.empty(n * l, device=r.device)
    with torch.no_grad():
        for s, cnt, edited in _edited_chunks(r, alpha, value, masks, chunk):
            idx = torch.arange(s, s + cnt, device=r.device)
            after = seg.concept_masks(finish(gen, layer, edited, z[idx // l]))[:, concept]  # [cnt, H, W]
            added = after & ~before[idx // l]
            hh, ww = added.shape[-2:]
            cells = block_mean(added, h, w) * (hh * ww / (h * w))  # added pixels per cell [cnt, h, w]
            near = window_sum(cells, neighbourhood).flatten(1)  # [cnt, h*w]
            out[s:s + cnt] = near.gather(1, flat_loc[idx % l][:, None])[:, 0]
    return out.view(n, l)


# ----------------------------------------------------------------------------------- contexts

def _groups(seg: Any) -> list[tuple[str, list[int]]]:
    """(category, concept indices) of each segmenter category ('none' excluded)."""
    out: dict[str, list[int]] = {}
    for i, c in enumerate(seg.concepts):
        if i and c.category != "none":
            out.setdefault(c.category, []).append(i)
    return list(out.items())


def cell_contexts(seg: Any, masks: torch.Tensor, h: int, w: int) -> dict[str, torch.Tensor]:
    """What each featuremap location shows before an edit, per category: {category: LongTensor [N, h, w]}.

    masks bool [N, K, H, W] (the segmenter's concept masks); the value is the concept index covering the
    largest share of the location's pixel block among that category's concepts, or 0 when the share
    not covered by any of them is larger (ties go to the lower concept index).
    """
    cov = coverage(masks, h, w)  # [N, K, h, w]
    out = {}
    for cat, idx in _groups(seg):
        sub = cov[:, idx]  # [N, G, h, w]
        none = (1 - sub.sum(1, keepdim=True)).clamp_min(0)
        best = torch.cat([none, sub], 1).argmax(1)  # 0 = none
        table = torch.tensor([0] + idx, device=best.device)
        out[cat] = table[best]
    return out


def map_context(contexts: dict[str, torch.Tensor]) -> torch.Tensor:
    """One context per location [N, h, w]: the first non-none label in CONTEXT_PREFERENCE order."""
    order = [c for c in CONTEXT_PREFERENCE if c in contexts] + [c for c in contexts if c not in CONTEXT_PREFERENCE]
    out = torch.zeros_like(contexts[order[0]])
    for cat in reversed(order):
        out = torch.where(contexts[cat] > 0, contexts[cat], out)
    return out


# -------------------------------------------------------------------------------------- tracing

def later_layers(gen: torch.nn.Module, layer: str) -> list[str]:
    """The generator's dissectable layers that run after `layer` in a forward pass (in that order; on a
    generator with branches this may include layers that do not depend on `layer`: their change is 0)."""
    layers = list(getattr(gen, "layers", []))
    if layer not in layers:
        raise InterventionError(f"layer {layer!r} is not one of the generator's layers {layers}")
    order = run_order(gen, layers, next(gen.parameters()).device)
    return order[order.index(layer) + 1:]


def channel_scales(gen: torch.nn.Module, layer: str, r: torch.Tensor, z: torch.Tensor, targets: Sequence[str]
                   ) -> dict[str, torch.Tensor]:
    """Each later layer's per-channel mean |activation| [C_t] over the samples of r [N, C, h, w] (latents z)."""
    with torch.no_grad(), Tap(gen, list(targets)) as tap:
        finish(gen, layer, r, z)
        return {t: tap[t].abs().mean((0, 2, 3)) for t in targets}


def trace_insertion(gen: torch.nn.Module, layer: str, r: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor,
                    value: torch.Tensor | float, location: tuple[int, int], targets: Sequence[str],
                    scales: dict[str, torch.Tensor] | None = None, radius: int = 0) -> dict[str, torch.Tensor]:
    """The change one insertion causes at every later layer (S-6.5): {target: [N, h_t, w_t]}.

    r [N, C, h, w]: unedited featuremaps of `layer` (of the latents z [N, z_dim]); the units `alpha` are set to `value` at `location`
    (y, x). change = mean over channels of |edited - unedited| / the channel's mean |activation|
    (`scales`, by default measured on these samples); channels whose mean |activation| is 0 are left out.
    """
    n, c, h, w = r.shape
    if not targets:
        raise InterventionError(f"no later layer to trace after {layer!r}")
    y, x = int(location[0]), int(location[1])
    mask = location_masks(h, w, torch.tensor([[y, x]]), radius, r.device)  # [1, 1, h, w]
    with torch.no_grad():
        with Tap(gen, list(targets)) as tap:
            finish(gen, layer, r, z)
            base = {t: tap[t] for t in targets}
        with Tap(gen, list(targets)) as tap:
            finish(gen, layer, edit_featuremap(r, alpha, value, mask, layer), z)
            edited = {t: tap[t] for t in targets}
    out = {}
    for t in targets:
        scale = scales[t] if scales is not None else base[t].abs().mean((0, 2, 3))
        keep = scale > 0
        if not bool(keep.any()):
            raise InterventionError(f"every channel of layer {t!r} is zero on these samples: nothing to normalise by")
        diff = (edited[t] - base[t]).abs()[:, keep] / scale[keep].view(1, -1, 1, 1)
        out[t] = diff.mean(1)
    return out
