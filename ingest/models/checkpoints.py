"""Safe checkpoint reading shared by the model adapters: tensors only, never code.

Reads `.safetensors` files (`safetensors.torch.load_file`) and PyTorch pickles (`torch.load(...,
weights_only=True)`); writes nothing. A pickle that needs code to load (a whole pickled `nn.Module`, a
custom class, a call like `os.system`) is refused with the class it asked for, in our own words (never
torch's advice to retry with weights_only=False); the only non-tensor global allowed is
`argparse.Namespace`, a plain attribute bag that StyleGAN2 training checkpoints carry as `args`.
Every problem is a one-line `ZooError` (the CLI exits with status 2).

    python -c "from ingest.models.checkpoints import read_checkpoint; print(list(read_checkpoint('g.pth'))[:5])"
"""
from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ingest.spec import ZooError

CheckpointError = ZooError  # one error type for the CLI (exit status 2)
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # "Unsupported global: GLOBAL x.y", "unsupported GLOBAL posix.system ..."
_UNPICKLER = re.compile(r"WeightsUnpickler error: ([^\n]+)")
_TORCH_ADVICE = re.compile(r"weights_only|Weights only load failed|documentation of torch\.load|pytorch\.org", re.I)


def refusal(path: str, text: str) -> str:
    """Our one-line message for a pickle the weights-only unpickler refused (never torch's advice to
    retry with weights_only=False, which would run the file's code)."""
    m = _GLOBAL.search(text)
    if m:
        return (f"{path}: refused: this pickle needs code to load ({m.group(1)}), and only tensors are read "
                f"from checkpoints. Save the model's state_dict() (or safetensors) instead of a pickled object")
    m = _UNPICKLER.search(text)
    detail = m.group(1) if m else next((ln.strip() for ln in text.splitlines()
                                         if ln.strip() and not _TORCH_ADVICE.search(ln)), "")
    detail = "" if _TORCH_ADVICE.search(detail) else detail
    return (f"{path}: refused: this pickle holds something other than tensors"
            + (f" ({detail.rstrip('.')})" if detail else "")
            + ". Save the model's state_dict() (or safetensors) instead")


def read_checkpoint(path: str) -> Any:
    """The object stored in a checkpoint: a dict of tensors (safetensors) or the weights-only unpickled object."""
    p = Path(path)
    if not p.is_file():
        raise ZooError(f"checkpoint not found: {path}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as e:  # a truncated or foreign file
            raise ZooError(f"{path}: not a readable safetensors file: {_first_line(e)}") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ZooError(refusal(path, str(e))) from None
    except Exception as e:  # not a torch file at all, truncated, ...
        raise ZooError(f"{path}: cannot read as a PyTorch checkpoint: {_first_line(e)}") from None


def read_state_dict(path: str, key: str | None = None) -> dict[str, torch.Tensor]:
    """A flat state dict {name: tensor} from a checkpoint.

    `key` picks a sub-dict (e.g. "g_ema"); without it a `{"state_dict": ...}` wrapper is unwrapped.
    Non-tensor entries (e.g. `args`) are only allowed beside the picked sub-dict, never inside it.
    """
    obj = read_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise ZooError(f"{path}: holds a {type(obj).__name__}, expected a dict of tensors (a state dict)")
    if key is not None:
        if key not in obj:
            raise ZooError(f"{path}: has no entry {key!r}; top-level entries: {', '.join(map(str, list(obj)[:8]))}")
        obj = obj[key]
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ZooError(f"{path}: entry {key!r} is a {type(obj).__name__}, expected a state dict")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ZooError(f"{path}: not a state dict: entries {', '.join(map(str, bad[:5]))} are not tensors "
                       f"(top-level entries: {', '.join(map(str, list(obj)[:8]))})")
    return dict(obj)


def key_mismatch(where: str, what: str, missing: Sequence[str], unexpected: Sequence[str], n: int = 5) -> str:
    """One line naming the first few missing and unexpected keys of a checkpoint."""
    def few(keys: Sequence[str]) -> str:
        keys = list(keys)
        more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
        return (", ".join(keys[:n]) or "none") + more

    return f"{where}: keys do not match {what}: missing {few(missing)}; unexpected {few(unexpected)}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
