"""Kind "invert" through the runner on a tiny generator and segmenter: rows, view, audits, resume (issue 19)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from db import store
from tests.conftest import run_spec_in, write_spec


def _spec(tmp_path: Path, tiny_gan: Path, tiny_seg: Path, images: str) -> Path:
    return write_spec(tmp_path, f"""
        [store]
        path = "{tmp_path / 'store.duckdb'}"

        [[models]]
        name = "tiny"
        family = "progan"
        checkpoint = "{tiny_gan}"

        [[segmenters]]
        name = "tiny-seg"
        family = "village"
        checkpoint = "{tiny_seg}"

        [[analyses]]
        name = "inv"
        kind = "invert"
        models = ["tiny"]
        segmenter = "tiny-seg"
        images = "{images}"
        samples = 3
        seed = 0
        z_steps = 3
        layer_steps = 3
        batch_size = 2
        """)


def test_invert_village_rows_and_view(tmp_path: Path, tiny_gan: Path, tiny_seg: Path) -> None:
    spec = _spec(tmp_path, tiny_gan, tiny_seg, "village")
    outcomes = run_spec_in(tmp_path, spec)
    assert [o.state for o in outcomes] == ["done"], outcomes
    db = str(tmp_path / "store.duckdb")
    inv = store.read("SELECT image, village_seed, psnr, layer FROM inversions ORDER BY village_seed", path=db)
    assert inv.height == 3 and all(i.startswith("village:") for i in inv["image"])
    assert set(inv["layer"]) == {"layer4"}
    n = store.read("SELECT count(*) AS n FROM inversion_concepts", path=db)["n"][0]
    assert n > 0
    view = store.read("SELECT concept, images, dropped, pixel_recall FROM inversion_dropped", path=db)
    exact = store.read("""SELECT concept, count(*) AS images, 1 - sum(photo_share * recall) / sum(photo_share) AS d
                          FROM inversion_concepts WHERE present GROUP BY concept""", path=db)
    got = dict(zip(view["concept"], view["dropped"]))
    for c, d in zip(exact["concept"], exact["d"]):
        assert abs(got[c] - d) < 1e-9
    assert run_spec_in(tmp_path, spec)[0].state != "failed"  # second call: no new compute, no failure


def test_invert_folder_dedupes_by_hash(tmp_path: Path, tiny_gan: Path, tiny_seg: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(a).save(folder / "a.png")
    (folder / "copy.png").write_bytes((folder / "a.png").read_bytes())
    Image.fromarray(a[:, ::-1].copy()).save(folder / "b.jpg")
    spec = _spec(tmp_path, tiny_gan, tiny_seg, str(folder))
    assert [o.state for o in run_spec_in(tmp_path, spec)] == ["done"]
    inv = store.read("SELECT image, path, width, height FROM inversions ORDER BY path", path=str(tmp_path / "store.duckdb"))
    assert inv.height == 2 and set(inv["width"]) == {50} and set(inv["height"]) == {40}
