"""Image-specific adaptation and painting on a photo (compute.paint.photo) on a tiny generator."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from compute.invert.encoder import normalise_z
from compute.invert.optimise import psnr, split_generator
from compute.paint.engine import Brush, Catalog, Painter, to_uint8
from compute.paint.photo import PhotoPainter, Residual, adapt, compose_weight
from ingest.models.progan import Generator
from ingest.models.village_seg import VillageSegmenter


@pytest.fixture(scope="module")
def gen() -> Generator:
    torch.manual_seed(0)
    return Generator(z_dim=8, widths=(8,) * 8 + (4, 4)).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def seg() -> VillageSegmenter:
    torch.manual_seed(1)
    return VillageSegmenter(widths=(8, 8, 8, 8)).eval().requires_grad_(False)


def _z(seed: int = 3) -> torch.Tensor:
    return normalise_z(torch.randn(1, 8, generator=torch.Generator().manual_seed(seed)))


def test_residual_makes_g_reproduce_the_optimised_features(gen: Generator) -> None:
    z = _z()
    head, tail = split_generator(gen, "layer4")
    with torch.no_grad():
        h = head(z) + 0.3 * torch.randn(head(z).shape, generator=torch.Generator().manual_seed(1))
        want = tail(h)
    ad = adapt(gen, want, z, h, "layer4", steps=0)
    assert isinstance(ad.gen.layer4, Residual)
    with torch.no_grad():
        assert torch.allclose(ad.gen(z), want, atol=1e-5)
    assert not isinstance(gen.layer4, Residual)  # the caller's generator is untouched


def test_adaptation_fits_an_image_outside_the_range_and_tunes_only_the_upper_layers(gen: Generator) -> None:
    z = _z()
    with torch.no_grad():
        x = (0.7 * gen(z) + 0.2).clamp(-1, 1)  # a colour shift the generator cannot draw from this z
    before = {n: p.clone() for n, p in gen.named_parameters()}
    ad = adapt(gen, x, z, steps=60, lr=0.01, reg=0.0, perceptual=0.0, tune_after="layer6")
    with torch.no_grad():
        p0, p1 = float(psnr(gen(z), x)[0]), float(psnr(ad.gen(z), x)[0])
    assert ad.psnr_inverted == pytest.approx(p0, abs=1e-4) and ad.psnr_adapted == pytest.approx(p1, abs=1e-4)
    assert p1 > p0 + 1.0
    tuned = {n.split(".")[0] for n, p in ad.gen.named_parameters() if not torch.equal(p, before[n])}
    assert tuned and tuned <= {"layer7", "layer8", "layer9", "layer10", "output"}
    assert all(torch.equal(p, before[n]) for n, p in gen.named_parameters())


def test_compose_weight_is_one_inside_linear_outside_and_zero_beyond_the_feather() -> None:
    m = np.zeros((20, 20), bool)
    m[5:8, 5:8] = True
    w = compose_weight(m, 4)
    assert (w[m] == 1).all()
    assert w[6, 8] == pytest.approx(1 - 1 / 5) and w[6, 11] == pytest.approx(1 - 4 / 5)
    assert w[6, 12] == 0 and w[15:, :].max() == 0
    assert compose_weight(np.zeros((4, 4), bool), 4).max() == 0


def test_photo_painter_starts_at_the_photo_and_keeps_far_pixels(gen: Generator, seg: VillageSegmenter) -> None:
    z = _z()
    with torch.no_grad():
        x = (gen(z) + 0.1 * torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))).clamp(-1, 1)
    photo = to_uint8(x)[0]
    ad = adapt(gen, x, z, steps=5)
    brush = Brush("b", "layer6", (0, 1, 2, 3), "flag", None)
    base = Painter(gen, seg, "layer6", Catalog("t", "layer6", {"b": brush}, {}, None))
    painter = PhotoPainter.on(base, ad, photo, feather=2)
    s = painter.session(seed=99, sample=5)  # seed and sample are ignored: the photo
    assert np.array_equal(s.original.image, photo)
    res = s.apply(painter.stroke("b", "remove", (24, 24, 32, 32)))  # layer6: 16 x 16 cells of 4 px
    diff = np.abs(res.after.image.astype(int) - photo.astype(int)).max(2)
    assert diff[24:32, 24:32].max() > 0
    far = np.ones((64, 64), bool)
    far[24 - 3:32 + 3, 24 - 3:32 + 3] = False  # the feather (2 px) reaches < 3 px beyond the stroke
    assert diff[far].max() == 0
    two = s.apply(painter.stroke("b", "remove", (48, 48, 56, 56)))  # composed on the union of both strokes
    d2 = np.abs(two.after.image.astype(int) - photo.astype(int)).max(2)
    assert d2[24:32, 24:32].max() > 0 and d2[48:56, 48:56].max() > 0
    far[48 - 3:56 + 3, 48 - 3:56 + 3] = False
    assert d2[far].max() == 0
    raw = PhotoPainter.on(base, ad, photo, compose=False)
    r = raw.session().apply(raw.stroke("b", "remove", (24, 24, 32, 32)))
    with torch.no_grad():
        from compute.core.intervene import finish

        want = finish(ad.gen, "layer6", _edited(ad.gen, z), z)
    assert np.abs(r.after.image.astype(int) - to_uint8(want)[0].astype(int)).max() <= 1


def _edited(g: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    from compute.core.intervene import featuremap

    r = featuremap(g, "layer6", z).clone()
    r[:, :4, 6:8, 6:8] = 0
    return r


def test_edit_needs_a_sample_or_a_photo(tmp_path, capsys) -> None:
    from compute.cli import main

    out = tmp_path / "e.png"
    assert main(["edit", "--model", "village-gan", "--brush", "tree", "--action", "remove", "--region", "1,1,9,9",
                 "--out", str(out), "--db", str(tmp_path / "s.duckdb")]) == 2
    assert "--photo" in capsys.readouterr().err and not out.exists()


@pytest.fixture(scope="module")
def photo_store(tmp_path_factory, tiny_gan, tiny_seg):
    from tests.compute.test_paint import build_paint_store

    return build_paint_store(tmp_path_factory.mktemp("photo-paint"), tiny_gan, tiny_seg)


def test_edit_photo_command_writes_the_composed_edit(photo_store, tiny_gan, tmp_path, capsys) -> None:
    import json

    from PIL import Image

    from compute.cli import main
    from ingest.models.progan import load_progan
    from tests.compute.test_paint import ACE_LAYER, PAINT_MODEL

    g = load_progan(str(tiny_gan), "cpu").eval()
    with torch.no_grad():
        photo = to_uint8(g(_z()))[0]
    src = tmp_path / "photo.png"
    Image.fromarray(photo).save(src)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = tmp_path / "edited.png"
    args = ["edit", "--model", PAINT_MODEL, "--db", str(photo_store), "--layer", ACE_LAYER, "--brush", "tree",
            "--action", "remove", "--region", "8,8,24,24", "--out", str(out), "--adapt-steps", "5", "--json"]
    assert main(args + ["--photo", str(bad)]) == 2 and not out.exists()
    capsys.readouterr()
    assert main(args + ["--photo", str(src)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"before", "after", "psnr_inverted", "psnr_adapted", "adapt_seconds"} <= set(summary)
    edited = np.asarray(Image.open(out))
    diff = np.abs(edited.astype(int) - photo.astype(int)).max(2)
    assert diff[8:24, 8:24].max() > 0
    assert diff[28:, :].max() == 0 and diff[:, 28:].max() == 0  # >= 5 px from the stroke (pixels 8..23): the photo


def test_edit_photo_refuses_a_bad_photo_before_loading_the_model(tmp_path, capsys, monkeypatch) -> None:
    from PIL import Image

    import compute.paint.engine as engine
    from compute.cli import main

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the photo was checked")

    monkeypatch.setattr(engine, "open_painter", no_model)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("not an image")
    gif = tmp_path / "a.gif"
    Image.new("RGB", (8, 8)).save(gif)
    cases = {tmp_path / "missing.png": "no such file", tmp_path: "a folder", empty: "empty file",
             text: "not a PNG or JPEG", gif: "only PNG and JPEG"}
    out = tmp_path / "e.png"
    for photo, why in cases.items():
        args = ["edit", "--model", "no-such-model", "--db", str(tmp_path / "s.duckdb"), "--brush", "tree",
                "--action", "remove", "--region", "1,1,9,9", "--out", str(out), "--photo", str(photo)]
        assert main(args) == 2, photo
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0] and str(photo) in err[0], err
    assert not out.exists() and not (tmp_path / "s.duckdb").exists()
