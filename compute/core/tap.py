"""Tap: read and edit the outputs of named layers of a torch module (baukit-style), hooks always removed.

Reads nothing from disk, writes nothing. A `Tap` is a context manager that registers forward hooks on
modules named by their dotted paths (`model.named_modules()`), keeps each layer's output in `tap[layer]`
and applies edits `x <- x * (1 - alpha) + value * alpha` (`Edit(alpha, value)`, broadcastable per unit
`[C]` / `[1, C, 1, 1]`, per pixel `[N or 1, 1, H, W]`, or full `[N, C, H, W]`; `Edit(1.0, x)` replaces
the output by x). `stop_after` (one layer or several) cuts the forward pass once every named layer ran.

"Run from a layer" (`forward_from(model, layer, x, z)`): the model's output when `layer` outputs x [N, ...]
instead of what the latent z [N, ...] gives there. It works on any module: the whole forward runs on z
under a Tap whose edit replaces the layer's output by x (`run_replaced`), so layers that read z again
(StyleGAN2's styles) or run on other branches see the same latent. When the model is an nn.Sequential
down to the layer, the fast path `run_from` runs only the children after it (z is not needed there).

    with Tap(gen, ["layer4"], edit={"layer4": Edit(alpha, 0.0)}) as tap:
        images = gen(z)           # layer4 ablated where alpha > 0
        feats = tap["layer4"]     # the (edited) featuremap, detached

    with Tap(gen, ["layer4"], stop_after="layer4") as tap:
        tap.run(z)                # layers after layer4 never run
    images = forward_from(gen, "layer4", tap["layer4"], z)

Retained outputs are taken after the edit (what the next layer sees). Edits keep autograd: `alpha` and
`value` may require grad, and with `detach=False` the retained outputs keep their graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

__all__ = ["Edit", "Tap", "StopForward", "run_from", "run_replaced", "forward_from", "sequential_path",
           "apply_edit"]


@dataclass(frozen=True)
class Edit:
    """x <- x * (1 - alpha) + value * alpha; alpha and value broadcast against the layer output [N, C, H, W].

    A 1-D tensor of length C means per unit. Floats are allowed (value = 0.0 is an ablation).
    """

    alpha: torch.Tensor | float
    value: torch.Tensor | float = 0.0


class StopForward(Exception):
    """Raised by a Tap after its `stop_after` layer to cut the forward pass short."""


def _per_unit(t: torch.Tensor | float, x: torch.Tensor, what: str, layer: str) -> torch.Tensor | float:
    """Reshape a 1-D [C] tensor to [1, C, 1, ...]; check that t broadcasts to x's shape without growing it."""
    if not isinstance(t, torch.Tensor):
        return float(t)
    if t.dim() == 1 and x.dim() >= 2 and t.shape[0] == x.shape[1]:
        t = t.view(1, -1, *([1] * (x.dim() - 2)))
    try:
        shape = torch.broadcast_shapes(t.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(f"edit {what} of shape {tuple(t.shape)} does not broadcast to the output "
                         f"{tuple(x.shape)} of layer {layer!r} (use [C], [1,C,1,1], [N|1,1,H,W] or full)")
    return t.to(device=x.device, dtype=x.dtype)


def apply_edit(x: torch.Tensor, edit: Edit, layer: str = "?") -> torch.Tensor:
    """x [N, C, ...] -> x * (1 - alpha) + value * alpha (differentiable in x, alpha and value).

    alpha = 1.0 (a float) with a tensor value replaces x: the value itself, broadcast to x's shape (exact,
    and x's non-finite entries do not leak in through 0 * x).
    """
    v = _per_unit(edit.value, x, "value", layer)
    if isinstance(v, torch.Tensor) and not isinstance(edit.alpha, torch.Tensor) and float(edit.alpha) == 1.0:
        return v.expand(x.shape)
    a = _per_unit(edit.alpha, x, "alpha", layer)
    return x * (1 - a) + v * a


def _modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    table = dict(model.named_modules())
    unknown = [n for n in names if n not in table or n == ""]
    if unknown:
        available = ", ".join(n for n in table if n)
        raise ValueError(f"unknown layer(s) {unknown}; available: {available}")
    return {n: table[n] for n in names}


class Tap:
    """Forward hooks on named layers: retain outputs, apply edits, optionally stop the pass early.

    `stop_after` is a layer or a list of layers: the pass is cut (StopForward, swallowed by `run` and by
    the `with` block) as soon as every one of them has run in this pass, whatever order the model runs
    them in (layers on parallel branches included). A layer that never runs never stops the pass.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], edit: Mapping[str, Edit] | None = None,
                 retain: bool = True, detach: bool = True, stop_after: str | Sequence[str] | None = None) -> None:
        if isinstance(layers, str):
            layers = [layers]
        self.model = model
        self.layers: list[str] = list(dict.fromkeys(layers))
        stops = [stop_after] if isinstance(stop_after, str) else list(stop_after or [])
        self.stop_after: frozenset[str] = frozenset(stops)
        self._modules = _modules(model, self.layers + [n for n in dict.fromkeys(stops) if n not in self.layers])
        self._ran: set[str] = set()  # stop layers that ran in the current pass
        self.retain, self.detach = retain, detach
        self.outputs: dict[str, torch.Tensor] = {}
        self._edits: dict[str, Edit] = {}
        for layer, e in (edit or {}).items():
            self.set_edit(layer, e)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- edits and outputs -------------------------------------------------------------------------
    def set_edit(self, layer: str, edit: Edit | None) -> None:
        """Set (or clear with None) the edit of a tapped layer; takes effect at the next forward pass."""
        if layer not in self.layers:
            raise ValueError(f"cannot edit {layer!r}: not one of the tapped layers {self.layers}")
        if edit is None:
            self._edits.pop(layer, None)
        else:
            self._edits[layer] = edit

    def __getitem__(self, layer: str) -> torch.Tensor:
        if layer not in self.outputs:
            raise KeyError(f"no output retained for {layer!r} (tapped: {self.layers}; retain={self.retain})")
        return self.outputs[layer]

    def __contains__(self, layer: object) -> bool:
        return layer in self.outputs

    def keys(self) -> list[str]:
        return [n for n in self.layers if n in self.outputs]

    # -- hooks ---------------------------------------------------------------------------------------
    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            if name in self.layers:
                if not isinstance(output, torch.Tensor):
                    raise TypeError(f"layer {name!r} returns {type(output).__name__}, Tap needs a Tensor")
                if name in self._edits:
                    output = apply_edit(output, self._edits[name], name)
                if self.retain:
                    self.outputs[name] = output.detach() if self.detach else output
            if name in self.stop_after:
                self._ran.add(name)
                if self._ran >= self.stop_after:
                    self._ran.clear()
                    raise StopForward(name)
            return output
        return hook

    def _new_pass(self, module: nn.Module, inputs: Any) -> None:
        self._ran.clear()

    def __enter__(self) -> "Tap":
        try:
            if self.stop_after:  # a pass that ends without reaching every stop layer must not count for the next
                self._handles.append(self.model.register_forward_pre_hook(self._new_pass))
            for name, module in self._modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Remove every hook this Tap registered (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return exc_type is not None and issubclass(exc_type, StopForward)

    def run(self, *inputs: Any, **kwargs: Any) -> Any:
        """model(*inputs, **kwargs); returns None when the pass stopped at `stop_after`."""
        try:
            return self.model(*inputs, **kwargs)
        except StopForward:
            return None


def sequential_path(model: nn.Module, layer: str) -> bool:
    """True when `run_from` can run the rest of `model` from `layer`: the model and every container on the
    layer's dotted path are nn.Sequential (their forward chains their children; a subclass may only reshape
    its input, as the ProGAN generator does) and each name on the path is a child there."""
    parts = layer.split(".")
    node = model
    for p in parts:
        if not isinstance(node, nn.Sequential) or p not in node._modules:
            return False
        node = node._modules[p]
    return True


def run_from(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Run the children of a sequential model that come after `layer` (dotted path) on its output x.

    Each container on the path must be an nn.Sequential (its children run in order); for "a.b" the
    children of `a` after `b` run first, then the children of the model after `a`. Any module: `forward_from`.
    """
    parts = layer.split(".")
    containers = [model]
    for p in parts[:-1]:
        containers.append(getattr(containers[-1], p, None))
    for depth in range(len(parts) - 1, -1, -1):
        parent, child = containers[depth], parts[depth]
        if not isinstance(parent, nn.Sequential):
            raise TypeError(f"run_from: {'.'.join(parts[:depth]) or 'the model'} is not an nn.Sequential "
                            f"(forward_from runs any module)")
        names = [n for n, _ in parent.named_children()]
        if child not in names:
            raise ValueError(f"run_from: unknown layer {layer!r}; children here: {names}")
        for n, m in list(parent.named_children())[names.index(child) + 1:]:
            x = m(x)
    return x


def run_replaced(model: nn.Module, layer: str, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """model(z) [N, ...] with the output of `layer` replaced by x [N, C, ...] (any module; keeps autograd in x).

    The layers before `layer` run on z too (their result is discarded), and everything after it sees x;
    a layer that runs several times in one pass is replaced every time.
    """
    if x.shape[0] != z.shape[0]:
        raise ValueError(f"run_replaced: {x.shape[0]} featuremaps of {layer!r} but {z.shape[0]} latents; "
                         f"pass the latent of each featuremap (index z as you index the featuremaps)")
    with Tap(model, [layer], edit={layer: Edit(1.0, x)}, retain=False) as tap:
        out = tap.model(z)
    return out


def forward_from(model: nn.Module, layer: str, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The model's output [N, ...] when `layer` outputs x [N, C, ...] for the latents z [N, ...].

    nn.Sequential down to the layer: only the children after it run (`run_from`, z unused); any other
    module: the whole forward on z with the layer's output replaced (`run_replaced`). Both keep autograd.
    """
    if sequential_path(model, layer):
        return run_from(model, layer, x)
    return run_replaced(model, layer, x, z)
