"""Your own classifiers: `family = "module"` and `family = "transformers"` with `role = "classifier"`.

Reads the checkpoint a spec entry names (a module factory's weights, or a local Hugging Face
`AutoModelForImageClassification` directory: config.json, weights, preprocessor_config.json); writes
nothing and never touches the network (`local_files_only=True`, no remote code). Both give a module with
the classifier interface (`ingest/models/classifier.py`): `classes`, `layers`, `resolution`,
`forward(images [N,3,H,W] in [-1,1]) -> logits [N, classes]`.

    [[models]]                               [[models]]
    name = "mine"                            name = "hf-resnet"
    role = "classifier"                      role = "classifier"
    family = "module"                        family = "transformers"
    factory = "mypkg.nets:make_classifier"   checkpoint = "models/resnet-tiny"   # a directory
    checkpoint = "mine.safetensors"          layers = ["model.resnet.encoder.stages.1"]   # optional
    classes = ["a", "b"]                     images = "photos/"                  # optional
    layers = ["block3"]
    resolution = 64

Module classifiers take images in [-1, 1] as they are; `classes`, `layers`, `resolution` may also be
attributes of the factory's module. Transformers classifiers: classes from `id2label`; images are mapped
to [0, 1], normalised with the processor's mean/std and resized to its size (bilinear); `layers`
defaults to every Conv2d of the model (paths start with `model.`); `resolution` defaults to the
processor's input height.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ingest.spec import ModelSpec, ZooError


def _check_layers(net: nn.Module, layers: list[str], where: str) -> list[str]:
    from ingest.models.module_family import available

    names = dict(net.named_modules())
    for name in layers:
        if not isinstance(name, str) or not name or name not in names:
            raise ZooError(f"{where}: has no layer {name!r}; available: {available(net)}")
    return layers


def load_module_classifier(m: "ModelSpec", device: torch.device) -> nn.Module:
    """A user's factory module with weights, given `classes`, `layers`, `resolution`."""
    from ingest.models.module_family import build_module, load_weights, thaw

    where = f"model {m.name!r}"
    if m.option("factory") is None:
        raise ZooError(f"{where}: family 'module' needs factory = 'package.module:function'")
    net = build_module(m.option("factory"), m.option("kwargs"), where)
    load_weights(net, m.checkpoint, m.option("state_key"), where)
    classes = thaw(m.option("classes")) or getattr(net, "classes", None)
    if not classes or not all(isinstance(c, str) for c in classes):
        raise ZooError(f"{where}: a module classifier needs classes = [\"name\", ...] (one per logit)")
    layers = thaw(m.option("layers")) or getattr(net, "layers", None)
    if not layers:
        raise ZooError(f"{where}: give layers = [...] (dotted module paths)")
    resolution = m.option("resolution") or getattr(net, "resolution", None)
    if not resolution:
        raise ZooError(f"{where}: give resolution = <image side the classifier expects>")
    net.classes, net.layers, net.resolution = tuple(classes), _check_layers(net, list(layers), where), int(resolution)
    net = net.to(device).eval().requires_grad_(False)
    with torch.no_grad():
        out = net(torch.zeros(1, 3, net.resolution, net.resolution, device=device))
    if not isinstance(out, Tensor) or out.shape != (1, len(net.classes)):
        raise ZooError(f"{where}: the module must return logits [N, {len(net.classes)}], "
                       f"got {getattr(out, 'shape', type(out).__name__)}")
    return net


class HFClassifier(nn.Module):
    """A transformers image classifier behind the classifier interface (see the module docstring)."""

    def __init__(self, model: nn.Module, classes: list[str], layers: list[str], input_size: tuple[int, int],
                 mean: list[float] | None, std: list[float] | None) -> None:
        super().__init__()
        self.model = model
        self.classes = tuple(classes)
        self.layers = layers
        self.input_size = tuple(input_size)
        self.resolution = int(input_size[0])
        self.register_buffer("mean", torch.tensor(mean or [0.0, 0.0, 0.0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or [1.0, 1.0, 1.0]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = (images + 1) / 2
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        return self.model(pixel_values=x).logits


def load_hf_classifier(m: "ModelSpec", device: torch.device) -> HFClassifier:
    """A local `AutoModelForImageClassification` directory as a classifier."""
    from ingest.models.hf_segmenter import EXTRA, read_preprocessor
    from ingest.models.module_family import thaw

    where = f"model {m.name!r}"
    d = Path(m.checkpoint)
    if not d.is_dir() or not (d / "config.json").is_file():
        raise ZooError(f"{where}: a transformers classifier's checkpoint must be a model directory with config.json")
    try:
        cfg = json.loads((d / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ZooError(f"{where}: {d / 'config.json'} is not valid JSON: {e}") from None
    id2label = cfg.get("id2label") or {}
    classes = [str(id2label[k]) for k in sorted(id2label, key=int)] if id2label else []
    pre = read_preprocessor(d, where)
    res = m.option("resolution")
    size = pre.get("input_size") or ((int(res), int(res)) if res else None)
    if size is None:
        raise ZooError(f"{where}: {d} has no preprocessor_config.json with a size; give resolution = <side>")
    try:
        from transformers import AutoModelForImageClassification
    except ImportError:
        raise ZooError(f"{where}: family 'transformers' needs the optional extra: {EXTRA}") from None
    try:
        model = AutoModelForImageClassification.from_pretrained(str(d), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise ZooError(f"{where}: cannot load {d} as AutoModelForImageClassification: "
                       f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    if not classes:
        classes = [f"class{i}" for i in range(int(model.config.num_labels))]
    wrapper_probe = nn.Module()
    wrapper_probe.model = model
    layers = thaw(m.option("layers")) or [n for n, mod in wrapper_probe.named_modules() if isinstance(mod, nn.Conv2d)]
    if not layers:
        raise ZooError(f"{where}: the model has no Conv2d layer; give layers = [\"model.<dotted path>\", ...]")
    net = HFClassifier(model.float(), classes, _check_layers(wrapper_probe, list(layers), where), size,
                       m.option("mean", pre.get("mean")), m.option("std", pre.get("std")))
    return net.to(device).eval().requires_grad_(False)
