"""compute.train.seg: a tiny training run writes weights and a model card; augmentations keep labels aligned."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compute.train.seg import EVAL_SEED_START, augment, head_targets, main, to_input
from ingest.models.village_seg import load_village_seg
from ingest.village import render_batch


def test_tiny_training_run_writes_weights_and_card(tmp_path: Path) -> None:
    out = tmp_path / "seg.safetensors"
    rc = main(["--steps", "3", "--batch", "4", "--pool", "16", "--eval", "8", "--widths", "4,8,8,8",
               "--out", str(out), "--pool-dir", str(tmp_path / "pool"), "--threads", "1", "--log-every", "1"])
    assert rc == 0 and out.exists()
    card = out.with_suffix(".md").read_text()
    assert "| door | part |" in card and "Mean IoU (clean)" in card and f"seeds {EVAL_SEED_START}" in card
    seg = load_village_seg(str(out), "cpu")
    assert seg.segment(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    # --evaluate-only re-measures the same weights
    assert main(["--evaluate-only", "--eval", "8", "--out", str(out), "--pool-dir", str(tmp_path / "pool")]) == 0


def test_augment_moves_labels_only_by_flips() -> None:
    images, labels = render_batch(range(6))
    x, y = to_input(images), torch.from_numpy(labels)
    xa, ya = augment(x, y, torch.Generator().manual_seed(3))
    assert xa.shape == x.shape and xa.min() >= -1 and xa.max() <= 1
    for i in range(6):
        assert torch.equal(ya[i], y[i]) or torch.equal(ya[i], y[i].flip(-1))
    t = head_targets(y)
    assert [int(a.max()) < n for a, n in zip(t, (8, 6, 3))] == [True] * 3
    assert np.array_equal((t[1] > 0).numpy(), (labels[:, 1] > 0))


def test_paste_parts_puts_doors_and_windows_anywhere() -> None:
    from compute.train.seg import PASTE_PARTS, paste_parts
    from ingest.village import INDEX

    images, labels = render_batch(range(8))
    x, y = to_input(images), torch.from_numpy(labels)
    x0, y0 = paste_parts(x, y, torch.Generator().manual_seed(5), 0.0)
    assert torch.equal(x0, x) and torch.equal(y0, y)  # p = 0 changes nothing
    xp, yp = paste_parts(x, y, torch.Generator().manual_seed(5), 1.0)
    assert torch.equal(yp[:, 0], y[:, 0])  # the object channel describes the scene, unchanged
    changed_label = (yp != y).any(1)
    changed_pixel = (xp != x).any(1)
    pasted = torch.isin(yp[:, 1], torch.tensor(PASTE_PARTS, dtype=yp.dtype))
    assert not (changed_label & ~pasted).any() and not (changed_pixel & ~pasted).any()
    assert (yp[:, 2][pasted] == 0).all()  # no material on a door or window
    off_building = pasted & (yp[:, 0] != INDEX["building"])
    assert off_building.sum() > 0 and (pasted & ~torch.isin(y[:, 1], torch.tensor(PASTE_PARTS))).flatten(1).any(1).all()
    # a pasted pixel has the colour of a donor pixel that carries the same part label
    i, r, c = torch.nonzero(changed_pixel)[0].tolist()
    donors = torch.nonzero(y[:, 1] == yp[i, 1, r, c])
    colours = x[donors[:, 0], :, donors[:, 1], donors[:, 2]]
    assert (colours - xp[i, :, r, c]).abs().sum(1).min() < 1e-6


def test_parts_anywhere_run_is_marked_and_evaluated_with_pasted_parts(tmp_path: Path) -> None:
    out = tmp_path / "village-seg-parts.safetensors"
    assert main(["--steps", "2", "--batch", "4", "--pool", "16", "--eval", "8", "--widths", "4,8,8,8", "--paste", "0.5",
                 "--out", str(out), "--pool-dir", str(tmp_path / "pool"), "--threads", "1"]) == 0
    seg = load_village_seg(str(out), "cpu")
    assert seg.parts_anywhere
    card = out.with_suffix(".md").read_text()
    assert card.startswith("# village-seg-parts") and "IoU (parts pasted)" in card and "--paste 0.5" in card
