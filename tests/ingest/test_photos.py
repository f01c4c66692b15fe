"""Photo loading rules and the bad inputs of `gandissect invert` (issue 19): one line, exit 2, nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compute.cli import main
from ingest.photos import MAX_PIXELS, PhotoError, load_photo, load_photos, square


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(path)
    return path


def test_square_rule_crops_the_centre() -> None:
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, 5:15] = 200  # the centred 10 x 10 square
    out = square(img, 10)
    assert out.shape == (10, 10, 3) and (out == 200).all()


def test_conversions_are_stated(tmp_path: Path) -> None:
    g = _png(tmp_path / "g.png", np.full((32, 48), 128, np.uint8))
    p = load_photo(g, 16)
    assert p.image.shape == (16, 16, 3) and (p.image == 128).all()
    assert any("grayscale" in n for n in p.notes) and any("centre square" in n for n in p.notes)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent: white after compositing
    a = load_photo(_png(tmp_path / "a.png", rgba), 8)
    assert (a.image == 255).all() and any("alpha" in n for n in a.notes)
    deep = Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16))
    deep.save(tmp_path / "d.png")
    d = load_photo(tmp_path / "d.png", 8)
    assert any("16-bit" in n for n in d.notes)
    assert int(d.image[7, 7, 0]) == (63 * 1000) >> 8


def test_same_bytes_same_hash(tmp_path: Path) -> None:
    a = _png(tmp_path / "a.png", np.full((8, 8, 3), 9, np.uint8))
    (tmp_path / "b.png").write_bytes(a.read_bytes())
    pa, pb = load_photos([tmp_path], 8)
    assert pa.sha256 == pb.sha256 and len(pa.sha256) == 64


@pytest.mark.parametrize("case", ["not_image", "zero_bytes", "huge", "empty_folder", "missing", "gif"])
def test_bad_inputs_exit_2_and_write_nothing(case: str, tmp_path: Path, capsys) -> None:
    if case == "not_image":
        bad = tmp_path / "notes.png"
        bad.write_text("hello, not a png")
    elif case == "zero_bytes":
        bad = tmp_path / "empty.jpg"
        bad.write_bytes(b"")
    elif case == "huge":
        bad = tmp_path / "huge.png"
        Image.new("L", (4097, 4096)).save(bad)  # compresses to a few kB; refused from its header
        assert 4097 * 4096 > MAX_PIXELS
    elif case == "empty_folder":
        bad = tmp_path / "nothing"
        bad.mkdir()
        (bad / "readme.txt").write_text("no images")
    elif case == "missing":
        bad = tmp_path / "missing.png"
    else:
        bad = tmp_path / "anim.gif"
        Image.new("RGB", (8, 8)).save(bad)
    good = _png(tmp_path / "good.png", np.zeros((64, 64, 3), np.uint8))
    out = tmp_path / "out"
    rc = main(["invert", str(good), str(bad), "--model", "village-gan", "--out", str(out), "--segmenter", "none",
               "--z-steps", "1", "--layer-steps", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: ") and str(bad.name) in err[-1]
    assert not out.exists()


def test_invert_writes_reconstructions(tmp_path: Path, capsys) -> None:
    from ingest.village.render import render

    img = render(20000000, size=64).image
    _png(tmp_path / "scene.png", img)
    _png(tmp_path / "wide.png", np.concatenate([img, img], 1))  # 64 x 128: centre square is img
    out = tmp_path / "out"
    rc = main(["invert", str(tmp_path), "--model", "village-gan", "--out", str(out), "--json",
               "--z-steps", "4", "--layer-steps", "4"])
    assert rc == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
    assert [Path(d["photo"]).name for d in lines] == ["scene.png", "wide.png"]
    for d in lines:
        assert d["psnr"] > 0 and d["seconds"] > 0 and isinstance(d["omitted"], list)
        rec = Image.open(out / f"{Path(d['photo']).stem}-reconstruction.png")
        assert rec.size == (64, 64)
        assert (out / f"{Path(d['photo']).stem}-omissions.png").exists()
    assert lines[0]["sha256"] != lines[1]["sha256"]
    assert json.loads((out / "inversions.json").read_text())[0]["psnr"] == lines[0]["psnr"]
