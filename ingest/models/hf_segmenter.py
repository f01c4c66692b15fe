"""`family = "transformers"`: any Hugging Face `AutoModelForSemanticSegmentation` saved in a local directory.

Reads the directory a spec entry names as its `checkpoint` (`config.json`, the weights, and
`preprocessor_config.json`); writes nothing and never touches the network (`local_files_only=True`,
no remote code). Needs the optional extra `transformers` (`pip install 'gandissect[transformers]'`).

- labels: the model config's `id2label` (a label named by the entry's `background` is folded into
  "none"; categories from `categories = {...}` or `category`, default "object");
- input: images in [-1, 1] are mapped to [0, 1] (the processor's rescaled pixels), normalised with the
  processor's `image_mean` / `image_std` when `do_normalize`, and resized to its `size` when `do_resize`
  (bilinear, differentiable); logits come back at the images' own size;
- `probs` is the softmax of the logits (differentiable, for ACE); `features` averages the last hidden state.

Entry keys: `resolution` (side at which masks are compared; default the processor's input height),
and overrides `input_size`, `mean`, `std`, `background`, `category`, `categories`.

    HF_HUB_OFFLINE=1 python -c "from ingest.models.hf_segmenter import load_hf_segmenter; \
s = load_hf_segmenter('models/segformer-b0-ade-512'); print(len(s.concepts), s.resolution)"
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ingest.models.label_segmenter import LabelSegmenter, read_labels
from ingest.spec import ZooError

EXTRA = "pip install 'gandissect[transformers]'"


def _processor_size(cfg: Mapping[str, Any]) -> tuple[int, int] | None:
    """The processor's resize target (height, width) from its `size` entry, None without resizing."""
    if cfg.get("do_resize", True) is False:
        return None
    size = cfg.get("size")
    if isinstance(size, int):
        return size, size
    if isinstance(size, Mapping):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:  # generated images are square
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    return None


def read_preprocessor(directory: Path, where: str) -> dict[str, Any]:
    """input_size, mean, std from preprocessor_config.json (ImageNet statistics are not assumed)."""
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ZooError(f"{where}: {path} is not valid JSON: {e}") from None
    out: dict[str, Any] = {"input_size": _processor_size(cfg)}
    if cfg.get("do_normalize", True) and "image_mean" in cfg and "image_std" in cfg:
        out["mean"], out["std"] = list(cfg["image_mean"]), list(cfg["image_std"])
    return out


def _logits(net: nn.Module, x: Tensor) -> Tensor:
    return net(pixel_values=x).logits


def _features(net: nn.Module, x: Tensor) -> Tensor:
    hidden = net(pixel_values=x, output_hidden_states=True).hidden_states
    last = hidden[-1] if hidden else None
    if last is None:
        return net(pixel_values=x).logits.mean((2, 3))
    return last.mean((2, 3)) if last.dim() == 4 else last.mean(1)


def load_hf_segmenter(directory: str, device: torch.device | str = "cpu", options: Mapping[str, Any] | None = None,
                      name: str | None = None) -> LabelSegmenter:
    """Load a local transformers semantic-segmentation model behind the segmenter interface.

    `options` are the spec entry's extra keys (resolution, input_size, mean, std, background, ...)."""
    from ingest.models.module_family import check_segmenter, label_segmenter

    opt = dict(options or {}).get
    where = f"segmenter {name or Path(directory).name!r}"
    d = Path(directory)
    if not d.is_dir():
        raise ZooError(f"{where}: a transformers segmenter's checkpoint must be a model directory, got {directory}")
    if not (d / "config.json").is_file():
        raise ZooError(f"{where}: {d} has no config.json (save the model with save_pretrained, "
                       f"or point checkpoint at the directory that holds it)")
    try:
        cfg = json.loads((d / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ZooError(f"{where}: {d / 'config.json'} is not valid JSON: {e}") from None
    id2label = cfg.get("id2label")
    if not id2label:
        raise ZooError(f"{where}: {d / 'config.json'} has no id2label: the label names are needed")
    labels = read_labels(id2label, where)
    pre = read_preprocessor(d, where)
    if not pre and opt("input_size") is None:
        raise ZooError(f"{where}: {d} has no preprocessor_config.json (save the image processor beside the "
                       f"model) and the entry gives no input_size / mean / std")
    try:
        from transformers import AutoModelForSemanticSegmentation
    except ImportError:
        raise ZooError(f"{where}: family 'transformers' needs the optional extra: {EXTRA}") from None
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # gandissect shows its own progress
    try:
        net = AutoModelForSemanticSegmentation.from_pretrained(str(d), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise ZooError(f"{where}: cannot load {d} as AutoModelForSemanticSegmentation: "
                       f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    seg = label_segmenter(net.float(), _logits, labels, opt, where, default_input_size=pre.get("input_size"),
                          input_range="unit", mean=pre.get("mean"), std=pre.get("std"), features=_features)
    seg.model_type = cfg.get("model_type", "?")  # type: ignore[attr-defined]
    return check_segmenter(seg.to(torch.device(device)).eval().requires_grad_(False), where)
