"""`family = "module"`: a user's own generator or segmenter, built by a factory and loaded from a checkpoint.

Reads the checkpoint a spec entry names (safetensors, or a weights-only PyTorch pickle) and, for a
segmenter, optionally a JSON label file; writes nothing. The user's code is imported by its factory
reference `"package.module:function"` (called with the entry's `kwargs`) — the only code that runs is
code the user installed, never code from a checkpoint.

Generator entry keys (besides name, family, checkpoint, dataset):

    factory = "mypkg.nets:make_generator"   # required
    kwargs = { width = 64 }                 # passed to the factory
    layers = ["block1", "block2.conv"]      # dissectable layers: dotted module paths (required
                                            # unless the module has a `layers` list of its own)
    latent_shape = [128, 1, 1]              # what the module's forward takes per sample; z_dim is
                                            # its product (or give z_dim = 128 for a flat latent)
    output = "tanh"                         # map the output to [-1, 1]: clamp (default; already in
                                            # [-1, 1]), tanh, unit ([0, 1] -> 2x - 1), byte ([0, 255])
    output_index = 0                        # which element when the module returns a tuple
    state_key = "g_ema"                     # a sub-dict of the checkpoint (default: the whole file,
                                            # or its "state_dict" entry)
    resolution = 256                        # optional: checked against one forward pass

Segmenter entry keys: `factory`, `kwargs`, `state_key`, and

    labels = ["background", "sky", "tree"]  # one per output channel, or labels_file = "labels.json"
    background = "background"               # the channel meaning "no concept" (optional)
    categories = { sky = "object" }         # per-label category (default: category = "object")
    resolution = 256                        # side at which masks are compared (default: input_size)
    input_size = [256, 256]                 # resize images to this before the network (optional)
    input_range = "unit"                    # unit [0,1] | signed [-1,1] | byte [0,255]
    mean = [0.485, 0.456, 0.406]            # optional normalisation, after the range mapping
    std = [0.229, 0.224, 0.225]

    python -c "from ingest.spec import load_catalog; from ingest.zoo import load_model_spec; \
print(load_model_spec(next(m for m in load_catalog('my.toml').models if m.name == 'mine')).layers)"
"""
from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from ingest.models.checkpoints import key_mismatch, read_state_dict
from ingest.models.label_segmenter import LabelSegmenter, read_labels, read_labels_file
from ingest.spec import ModelSpec, SegmenterSpec, ZooError

OUTPUT_MAPS = ("clamp", "tanh", "unit", "byte")
MAX_LISTED = 40


def thaw(value: Any) -> Any:
    """A frozen spec value back to plain Python: tuples of (str, value) pairs -> dicts, tuples -> lists."""
    if isinstance(value, tuple):
        if value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value):
            return {k: thaw(v) for k, v in value}
        return [thaw(v) for v in value]
    return value


def as_lists(value: Any) -> Any:
    """A frozen spec list back to (nested) lists, keeping the order (no table detection)."""
    return [as_lists(v) for v in value] if isinstance(value, tuple) else value


def import_factory(ref: Any, where: str) -> Any:
    """The callable named by "package.module:function" (nested attributes allowed after the colon)."""
    if not isinstance(ref, str) or ":" not in ref:
        raise ZooError(f"{where}: factory must look like 'package.module:function', got {ref!r}")
    mod_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as e:
        raise ZooError(f"{where}: cannot import factory {ref!r}: {e}") from None
    except AttributeError:
        raise ZooError(f"{where}: cannot import factory {ref!r}: module {mod_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise ZooError(f"{where}: factory {ref!r} is not callable")
    return obj


def build_module(ref: Any, kwargs: Any, where: str) -> nn.Module:
    factory = import_factory(ref, where)
    kw = thaw(kwargs) if kwargs else {}
    if not isinstance(kw, dict):
        raise ZooError(f"{where}: kwargs must be a table of keyword arguments, got {kw!r}")
    try:
        net = factory(**kw)
    except Exception as e:
        raise ZooError(f"{where}: factory {ref!r} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(net, nn.Module):
        raise ZooError(f"{where}: factory {ref!r} returned a {type(net).__name__}, not a torch.nn.Module")
    return net


def load_weights(net: nn.Module, checkpoint: str, state_key: str | None, where: str) -> None:
    """Load a checkpoint into `net`; every key of both must match (one-line error naming a few)."""
    state = read_state_dict(checkpoint, state_key)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ZooError(key_mismatch(f"{where}: {checkpoint}", "the factory's module", missing, unexpected))
    bad = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise ZooError(f"{where}: {checkpoint}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, the factory's "
                       f"module has {tuple(expected[bad[0]].shape)}")
    net.load_state_dict(state, strict=True)


def available(net: nn.Module) -> str:
    names = [n for n, _ in net.named_modules() if n]
    more = f" (+{len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


class ModuleGenerator(nn.Module):
    """A user's generator behind the generator interface: z [N, z_dim] -> images [N, 3, H, W] in [-1, 1].

    `named_modules()` is the user module's own (no prefix), so layer names are the user's dotted paths
    and hooks on them fire in `forward`; attributes not found here are looked up on the user module.
    """

    def __init__(self, net: nn.Module, latent_shape: tuple[int, ...], layers: list[str], output: str = "clamp",
                 output_index: int = 0) -> None:
        super().__init__()
        self.net = net
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self.z_dim = math.prod(self.latent_shape)
        self.layers = list(layers)
        self.output = output
        self.output_index = output_index
        self.resolution = 0

    def named_modules(self, memo: set | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Module]]:
        return self.net.named_modules(memo, prefix, remove_duplicate)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [N, z_dim] -> [N, 3, H, W] in [-1, 1]
        out = self.net(z.reshape(z.shape[0], *self.latent_shape))
        if isinstance(out, (tuple, list)):
            out = out[self.output_index]
        elif isinstance(out, Mapping):
            out = out["image"]
        if self.output == "tanh":
            return torch.tanh(out)
        if self.output == "unit":
            out = out * 2.0 - 1.0
        elif self.output == "byte":
            out = out / 127.5 - 1.0
        return out.clamp(-1.0, 1.0)


def _latent_shape(m: "ModelSpec", net: nn.Module, where: str) -> tuple[int, ...]:
    shape = m.option("latent_shape")
    z_dim = m.option("z_dim", getattr(net, "z_dim", None))
    if shape is None:
        if z_dim is None:
            raise ZooError(f"{where}: give latent_shape (e.g. [512] or [512, 1, 1]) or z_dim")
        shape = (z_dim,)
    shape = tuple(thaw(shape)) if isinstance(shape, (list, tuple)) else (shape,)
    if not shape or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise ZooError(f"{where}: latent_shape must be a list of positive integers, got {list(shape)}")
    if m.option("z_dim") is not None and m.option("latent_shape") is not None and math.prod(shape) != m.option("z_dim"):
        raise ZooError(f"{where}: latent size mismatch: z_dim = {m.option('z_dim')} but latent_shape "
                       f"{list(shape)} holds {math.prod(shape)} values")
    return shape


def load_module_generator(m: "ModelSpec", device: torch.device) -> ModuleGenerator:
    """Build, load and check a `family = "module"` generator (one probe forward pass on `device`)."""
    where = f"model {m.name!r}"
    if m.option("factory") is None:
        raise ZooError(f"{where}: family 'module' needs factory = 'package.module:function'")
    net = build_module(m.option("factory"), m.option("kwargs"), where)
    load_weights(net, m.checkpoint, m.option("state_key"), where)
    output = m.option("output", "clamp")
    if output not in OUTPUT_MAPS:
        raise ZooError(f"{where}: output must be one of {', '.join(OUTPUT_MAPS)}, got {output!r}")
    layers = m.option("layers", getattr(net, "layers", None))
    if not layers or isinstance(layers, str) or not all(isinstance(x, str) for x in thaw(layers)):
        raise ZooError(f"{where}: give layers = [...] (dotted module paths); available: {available(net)}")
    layers = list(thaw(layers))
    names = dict(net.named_modules())
    for name in layers:
        if name not in names or not name:
            raise ZooError(f"{where}: has no layer {name!r}; available: {available(net)}")
    gen = ModuleGenerator(net, _latent_shape(m, net, where), layers, output, int(m.option("output_index", 0)))
    gen = gen.to(device).eval().requires_grad_(False)
    gen.resolution = probe_resolution(gen, where, m.option("resolution"))
    return gen


@torch.no_grad()
def probe_resolution(gen: ModuleGenerator, where: str, declared: Any) -> int:
    """One forward pass on z #0 of seed 0: every layer must output [1, C, H, W] and the image must be
    [1, 3, R, R]; returns R."""
    from ingest.samples import latents

    device = next((p.device for p in gen.parameters()), torch.device("cpu"))
    z = latents(0, 1, gen.z_dim).to(device)
    shape = (1, *gen.latent_shape)
    seen: dict[str, Any] = {}
    modules = dict(gen.named_modules())
    handles = [modules[name].register_forward_hook(
        lambda _m, _i, out, name=name: seen.__setitem__(name, out)) for name in gen.layers]
    try:
        out = gen(z)
    except Exception as e:
        raise ZooError(f"{where}: latent size mismatch? the module fails on a latent of shape {shape}: "
                       f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        for h in handles:
            h.remove()
    for name in gen.layers:
        got = seen.get(name)
        if not isinstance(got, torch.Tensor) or got.dim() != 4:
            what = "never runs in forward()" if name not in seen else (
                f"returns {type(got).__name__}" if not isinstance(got, torch.Tensor) else f"returns shape {tuple(got.shape)}")
            raise ZooError(f"{where}: layer {name!r} {what}; a dissectable layer outputs a [N, C, H, W] tensor")
    if out.dim() != 4 or out.shape[1] != 3 or out.shape[2] != out.shape[3]:
        raise ZooError(f"{where}: the module returns {tuple(out.shape)} for a latent of shape {shape}; "
                       f"expected square RGB images [N, 3, R, R]")
    res = int(out.shape[-1])
    if declared is not None and int(declared) != res:
        raise ZooError(f"{where}: resolution = {declared} declared but the module makes {res}x{res} images")
    return res


def _call_module(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = net(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    elif isinstance(out, Mapping):
        out = out["out"] if "out" in out else out["logits"]
    elif hasattr(out, "logits"):
        out = out.logits
    return out


def load_module_segmenter(s: "SegmenterSpec", device: torch.device) -> LabelSegmenter:
    """Build, load and check a `family = "module"` segmenter (one probe forward pass)."""
    where = f"segmenter {s.name!r}"
    if s.option("factory") is None:
        raise ZooError(f"{where}: family 'module' needs factory = 'package.module:function'")
    if s.option("labels") is not None:  # a list: names or [name, category] pairs, in channel order
        labels = read_labels(as_lists(s.option("labels")), where)
    elif s.option("labels_file") is not None:
        labels = read_labels_file(s.option("labels_file"), Path(s.checkpoint).parent, where)
    else:
        raise ZooError(f"{where}: give labels = [...] (one name per output channel) or labels_file = 'labels.json'")
    net = build_module(s.option("factory"), s.option("kwargs"), where)
    load_weights(net, s.checkpoint, s.option("state_key"), where)
    seg = label_segmenter(net, _call_module, labels, s.option, where, default_input_size=None)
    return check_segmenter(seg.to(device).eval().requires_grad_(False), where)


def label_segmenter(net: nn.Module, call: Any, labels: list, opt: Callable[..., Any], where: str, *,
                    default_input_size: tuple[int, int] | None, input_range: str = "unit",
                    mean: Any = None, std: Any = None, features: Any = None) -> LabelSegmenter:
    """A `LabelSegmenter` with the entry's options (`opt(key, default)`) overriding the given defaults."""
    size = opt("input_size")
    if size is not None:
        size = thaw(size)
        size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    else:
        size = default_input_size
    resolution = opt("resolution", size[0] if size else None)
    if resolution is None:
        raise ZooError(f"{where}: give resolution = N (the side in pixels at which masks are compared) "
                       f"or input_size")
    mean = thaw(opt("mean")) if opt("mean") is not None else mean
    std = thaw(opt("std")) if opt("std") is not None else std
    try:
        return LabelSegmenter(net, call, labels, resolution=int(resolution), input_size=size,
                              input_range=opt("input_range", input_range), mean=mean, std=std,
                              background=opt("background"), default_category=opt("category", "object"),
                              categories=thaw(opt("categories")) if opt("categories") else None,
                              features=features)
    except ZooError as e:
        raise ZooError(f"{where}: {e}") from None


@torch.no_grad()
def check_segmenter(seg: LabelSegmenter, where: str) -> LabelSegmenter:
    """One forward pass on a grey image at the segmenter's resolution: one logit channel per label."""
    device = seg.mean.device
    try:
        seg(torch.zeros(1, 3, seg.resolution, seg.resolution, device=device))
    except ZooError as e:
        raise ZooError(f"{where}: {e}") from None
    except Exception as e:
        raise ZooError(f"{where}: the segmenter fails on a [1, 3, {seg.resolution}, {seg.resolution}] image: "
                       f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return seg
