"""`gandissect train classifier` end to end on a tiny budget: weights, card (per-class accuracy, confusion
matrix, training time), and the card's numbers match a direct evaluation of the saved weights."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from compute.cli import main as cli
from compute.train.cls import confusion, load_split, predict
from ingest.models.classifier import load_village_cls
from ingest.village.scenes import CLASSES, HELDOUT_SEED_START


def test_train_classifier_writes_weights_and_a_truthful_card(tmp_path: Path) -> None:
    out = tmp_path / "cls.safetensors"
    rc = cli(["train", "classifier", "--epochs", "1", "--train", "3", "--eval", "2", "--widths", "4,4,8,8,8",
              "--threads", "1", "--out", str(out), "--pool-dir", str(tmp_path / "pool")])
    assert rc == 0 and out.exists() and out.stat().st_size < 1_000_000
    card = out.with_suffix(".md").read_text()
    net = load_village_cls(str(out))
    images, labels, _ = load_split(HELDOUT_SEED_START, 2, tmp_path / "pool")
    conf = confusion(labels, predict(net, images, torch.device("cpu")), len(CLASSES))
    assert conf.sum() == 2 * len(CLASSES) and (conf.sum(1) == 2).all()
    acc = float(np.trace(conf)) / conf.sum()
    assert f"**Held-out accuracy: {acc:.3f}**" in card
    for k, c in enumerate(CLASSES):
        assert f"| {c} | " + " | ".join(str(int(v)) for v in conf[k]) + " |" in card  # the confusion row
    assert re.search(r"training time: [0-9.]+ s on cpu \(1 threads\)", card)
