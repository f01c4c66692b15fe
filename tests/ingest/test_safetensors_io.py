"""save_safetensors writes the same bytes for the same tensors and metadata in any process.

Writes files under pytest's tmp_path only; starts a few short Python subprocesses.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/ingest/test_safetensors_io.py
"""
from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ingest.models.safetensors_io import canonical_header, save_safetensors

ROOT = Path(__file__).resolve().parents[2]

# many metadata keys, so that two processes' hash seeds all but never give the same HashMap order
_WRITE = """
import sys, torch
from ingest.models.safetensors_io import save_safetensors
g = torch.Generator().manual_seed(0)
tensors = {"b.weight": torch.randn(3, 4, generator=g).half(), "a.bias": torch.randn(5, generator=g),
           "c.count": torch.arange(7)}
meta = {f"key{i:02d}": f"value {i}" for i in range(16)}
save_safetensors(tensors, sys.argv[1], meta)
"""

_SEG = """
import sys, torch
from ingest.models.village_seg import VillageSegmenter, save_village_seg
torch.manual_seed(0)
save_village_seg(VillageSegmenter(widths=(8, 8, 8, 8)).eval(), sys.argv[1], {"steps": 3, "seed": 0})
"""


def _in_subprocess(script: str, path: Path, seed: int) -> str:
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, cwd=ROOT, env=env, timeout=120)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_bytes_across_processes(tmp_path: Path) -> None:
    hashes = {_in_subprocess(_WRITE, tmp_path / f"w{seed}.safetensors", seed) for seed in (1, 2, 3)}
    assert len(hashes) == 1, hashes


def test_village_seg_same_bytes_across_processes(tmp_path: Path) -> None:
    hashes = {_in_subprocess(_SEG, tmp_path / f"s{seed}.safetensors", seed) for seed in (1, 2)}
    assert len(hashes) == 1, hashes


def _header(raw: bytes) -> bytes:
    (n,) = struct.unpack_from("<Q", raw, 0)
    return raw[8:8 + n]


def test_round_trip_and_padding(tmp_path: Path) -> None:
    tensors = {"x": torch.randn(2, 3), "y": torch.arange(5, dtype=torch.int64), "z": torch.ones(1).half(),
               "é": torch.zeros(3, dtype=torch.bool)}
    meta = {"zeta": "1", "alpha": '["a", "b"]', "mid": "ünïcode \" \\ \n"}
    path = save_safetensors(tensors, tmp_path / "t.safetensors", meta)
    assert not (tmp_path / "t.safetensors.tmp").exists()
    raw = path.read_bytes()
    header = _header(raw)
    assert len(header) % 8 == 0
    assert header.index(b'"alpha"') < header.index(b'"mid"') < header.index(b'"zeta"')
    loaded = load_file(str(path))
    assert loaded.keys() == tensors.keys()
    for k, t in tensors.items():
        assert loaded[k].dtype == t.dtype and torch.equal(loaded[k], t)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == meta
        assert torch.equal(f.get_tensor("x"), tensors["x"])
    assert (path.stat().st_mode & 0o777) == 0o644


def test_only_the_header_order_differs_from_save_file(tmp_path: Path) -> None:
    """Canonicalising save_file's own output gives our bytes: the tensor data and layout are safetensors'."""
    tensors = {"w": torch.randn(4, 4), "b": torch.randn(4).half()}
    meta = {f"k{i}": str(i) for i in range(9)}
    save_file(tensors, str(tmp_path / "plain.safetensors"), metadata=meta)
    ours = save_safetensors(tensors, tmp_path / "ours.safetensors", meta).read_bytes()
    plain = (tmp_path / "plain.safetensors").read_bytes()
    assert canonical_header(plain) == ours
    assert len(plain) == len(ours) and plain[8 + len(_header(plain)):] == ours[8 + len(_header(ours)):]


def test_no_metadata(tmp_path: Path) -> None:
    for i, meta in enumerate((None, {})):
        path = save_safetensors({"a": torch.ones(3)}, tmp_path / f"n{i}.safetensors", meta)
        assert torch.equal(load_file(str(path))["a"], torch.ones(3))
        with safe_open(str(path), framework="pt") as f:
            assert not f.metadata()
