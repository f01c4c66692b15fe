"""Canonical safetensors writing: the same tensors and metadata give the same bytes in any process.

`safetensors.torch.save_file` hands `metadata` to Rust as a HashMap, whose iteration order is seeded
per process, so the JSON header's `__metadata__` keys come out in a different order each run: equal
weights, different file, different sha256 -- and the checkpoint's sha256 is part of every run key
(compute/runner.py, ingest/register.py). `save_safetensors` lets safetensors serialise the tensors
(`safetensors.torch.save`, its own layout: tensors ordered by dtype alignment then name), then
rewrites the header with the metadata keys sorted, re-padded with spaces to a multiple of 8 bytes as
safetensors pads it, and writes the file atomically (a `.tmp` beside it, then `os.replace`).

Reads nothing; writes the one file it is given.

    python -c "import torch; from ingest.models.safetensors_io import save_safetensors; \
save_safetensors({'w': torch.zeros(2)}, '/tmp/w.safetensors', {'b': '1', 'a': '2'})"
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Mapping

import torch

_LEN = struct.Struct("<Q")  # the header's length: a little-endian u64 before the JSON
_ALIGN = 8  # safetensors pads the header with spaces to a multiple of 8 bytes
_META = "__metadata__"


def canonical_header(raw: bytes) -> bytes:
    """A safetensors file's bytes with its JSON header rewritten canonically: the `__metadata__`
    entries sorted by key, compact separators, padded with spaces to a multiple of 8. The tensor
    entries keep safetensors' own order and offsets, and the data after the header is unchanged."""
    (n,) = _LEN.unpack_from(raw, 0)
    header = json.loads(raw[_LEN.size:_LEN.size + n])
    if _META in header:
        header[_META] = dict(sorted(header[_META].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % _ALIGN)
    return _LEN.pack(len(text)) + text + raw[_LEN.size + n:]


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write `tensors` (name -> contiguous CPU tensor) and `metadata` (str -> str) to `path` as a
    canonical safetensors file (same inputs, same bytes, any process), atomically and world-readable.
    Returns the path."""
    from safetensors.torch import save

    path = Path(path)
    data = canonical_header(save(dict(tensors), metadata=dict(metadata) if metadata is not None else None))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)
    return path
