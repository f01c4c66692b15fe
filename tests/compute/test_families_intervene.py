"""Interventions on every generator family, end to end on tiny models built here (nothing downloaded):
a StyleGAN2 (`family = "stylegan2"`) and a module-factory generator with layers on two branches
(`family = "module"`) run dissect -> ace -> ablate / insert / trace and realism -> repair through the
runner with a spec, and
`gandissect edit --spec SPEC --model M` paints on each; the result equals the whole forward pass with
the edit applied by a hook. The two-branch generator also dissects with its layers listed in any order.
"""
from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compute import cli, spec as specmod
from compute.core.intervene import featuremap, finish
from compute.core.tap import Edit, Tap
from compute.paint import engine as paint
from db import store
from ingest.models.village_seg import load_village_seg
from ingest.samples import latents
from ingest.zoo import load_model_spec
from tests.conftest import run_spec_in, write_spec
from tests.helpers import Entry, analysis, intervention_analyses, model, segmenter, spec_text
from tests.ingest.test_adapters import narrow_stylegan2


# ------------------------------------------------------------------ a generator with two branches
class Branchy(nn.Module):
    """z [N, z, 1, 1] -> raw RGB [N, 3, 16, 16] (the spec maps it through tanh): a stem, then a side branch that runs FIRST but is
    registered AFTER the main branch `g` (so module order says `side.4` is deepest, the forward disagrees)."""

    def __init__(self, z: int = 8, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.ConvTranspose2d(z, width, 4)  # 1x1 -> 4x4
        self.g = nn.Sequential(OrderedDict([
            ("layer1", nn.Sequential(nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1))),
            ("layer2", nn.ReLU()),  # 8x8
            ("layer3", nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1))),
            ("layer4", nn.ReLU()),
            ("layer5", nn.Conv2d(width, width, 3, padding=1)),  # 16x16
        ]))
        self.side = nn.Sequential(nn.Upsample(scale_factor=4), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 1), nn.ReLU())  # side.4: 16x16
        self.rgb = nn.Conv2d(width, 3, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem(z)
        s = self.side(x)
        return 4.0 * self.rgb(self.g(x) + s)  # contrast enough for the tiny segmenter to see concepts


def make_branchy(z: int = 8, width: int = 8) -> nn.Module:
    return Branchy(z, width)


# ------------------------------------------------------------------ the two families
@pytest.fixture(scope="module")
def family_models(tmp_path_factory, tiny_seg: Path) -> dict[str, tuple[Entry, str]]:
    """model name -> (spec entry, intervened layer)."""
    d = tmp_path_factory.mktemp("families")
    narrow_stylegan2(d / "sg32.pt")
    torch.manual_seed(2)
    torch.save(make_branchy().state_dict(), d / "branchy.pth")
    return {
        "sg": (model("sg", d / "sg32.pt", family="stylegan2", dataset="village", truncation=0.7), "convs.1"),
        "branchy": (model("branchy", d / "branchy.pth", family="module", dataset="village",
                          factory="tests.compute.test_families_intervene:make_branchy", kwargs={"z": 8, "width": 8},
                          layers=["side.4", "g.layer5", "g.layer2"], latent_shape=[8, 1, 1], output="tanh"),
                    "g.layer2"),
    }


def _load(entry: Entry, name: str, tmp_path: Path) -> nn.Module:
    spec = write_spec(tmp_path, spec_text(tmp_path / "store.duckdb", models=[entry]), f"{name}-only.toml")
    return load_model_spec(specmod.load(spec, check_files=False).model(name))


def _common_concept(gen: nn.Module, seg: nn.Module) -> str:
    """The concept the tiny random segmenter sees most often in the tiny random generator's images."""
    with torch.no_grad():
        masks = seg.concept_masks(gen(latents(2, 8, int(gen.z_dim))))
    counts = masks.sum((0, 2, 3))
    counts[0] = -1
    return seg.concepts[int(counts.argmax())].name


def family_spec(db: Path, entry: Entry, seg: Path, model_name: str, layer: str, concept: str, real: Path) -> str:
    """The spec: dissect -> ace -> ablate / insert / trace and realism -> repair of one model at one layer."""
    return spec_text(db, models=[entry], segmenters=[segmenter("seg", seg)], analyses=intervention_analyses(
        model_name, "seg", layer,
        dissect=dict(samples=8, seed=2, batch_size=8),
        ace=dict(samples=6, seed=2, concepts=[concept], epochs=1, steps_per_epoch=1, batch=4, eval_items=4),
        ablate=dict(samples=4, seed=3, concepts=[concept], n_max=2, draws=2, effect_units=2, insert_locations=1),
        insert=dict(samples=1, seed=3, concepts=[concept], units=2),
        trace=dict(samples=2, seed=3, concepts=[concept], units=2, location=[1, 1]),
        realism=dict(samples=40, seed=4, top_fraction=0.5, real=real, real_samples=20, batch_size=20),
        repair=dict(samples=20, seed=5, n_units=2, draws=1, real=real, real_samples=20, batch_size=20)))


@pytest.mark.parametrize("model", ["sg", "branchy"])
def test_interventions_and_edit_on_the_family(model, family_models, tiny_seg, tmp_path, capsys, monkeypatch) -> None:
    entry, layer = family_models[model]
    gen = _load(entry, model, tmp_path)
    seg = load_village_seg(str(tiny_seg)).eval()
    concept = _common_concept(gen, seg)

    # the unedited round trip is the generator itself, and one z is one image (StyleGAN2: fixed noise)
    z = latents(5, 3, int(gen.z_dim))
    with torch.no_grad():
        full = gen(z)
        assert torch.equal(full, gen(z))
        r = featuremap(gen, layer, z)
        assert torch.allclose(finish(gen, layer, r, z), full, atol=1e-6)
        edited = r.clone()
        edited[:, :3, :2, :2] = 0.0
        with Tap(gen, [layer], edit={layer: Edit(1.0, edited)}):
            want = gen(z)
        got = finish(gen, layer, edited, z)
    assert torch.equal(got, want) and not torch.equal(got, full)

    db, real = tmp_path / "store.duckdb", tmp_path / "real.npy"  # "real" images: noise at the generator's size
    np.save(real, np.random.default_rng(0).integers(0, 256, (24, gen.resolution, gen.resolution, 3), dtype=np.uint8))
    spec = write_spec(tmp_path, family_spec(db, entry, tiny_seg, model, layer, concept, real))
    out = run_spec_in(tmp_path, spec)
    assert [o.state for o in out] == ["done"] * 7, [(o.job.analysis.name, o.error) for o in out]
    assert store.run_audits(str(db)) == []
    n = {t: int(store.read(f"select count(*) n from {t}", path=str(db))["n"][0])
         for t in ("ace_alpha", "ablation_curves", "causal_effects", "insertion_maps", "trace_effects",
                   "repair_effects")}
    h, w = r.shape[2:]
    assert n["ace_alpha"] == r.shape[1] and n["ablation_curves"] == 3 * 3 and n["causal_effects"] == 3
    assert n["insertion_maps"] == h * w and n["trace_effects"] > 0 and n["repair_effects"] == 2  # realism + random
    moved = store.read("select count(*) n from ace_alpha where alpha <> alpha_init", path=str(db))["n"][0]
    assert moved > 0  # the gradient reached alpha through the hooked forward pass
    curve = store.read("select remaining from ablation_curves where n_units = 0", path=str(db))["remaining"]
    assert curve.to_list() == [1.0] * 3  # nothing ablated: every baseline pixel remains

    png = tmp_path / "edited.png"
    args = ["edit", "--spec", str(spec), "--model", model, "--db", str(db), "--seed", "1", "--sample", "0",
            "--brush", concept, "--action", "remove", "--region", "0,0,12,12", "--layer", layer,
            "--out", str(png), "--json"]
    with contextlib.chdir(tmp_path):  # not the repository's gandissect.toml: only --spec declares the model
        code = cli.main(args)
    assert code == 0, capsys.readouterr().err
    assert png.exists() and set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])) == {"before", "after", "ms"}

    # the Paint page's loader: the spec `gandissect dashboard --spec` names, through $GANDISSECT_SPEC
    monkeypatch.setenv("GANDISSECT_SPEC", str(spec))
    with contextlib.chdir(tmp_path):
        paged, _ = paint.load_models(model, str(db))
    assert type(paged) is type(gen) and paged.layers == gen.layers

    # the painted image is the whole forward pass with the stroke's featuremap put in by a hook
    painter = paint.open_painter(model, str(db), layer, concept, str(spec))
    s = painter.session(1, 0)
    res = s.apply(painter.stroke(concept, "remove", (0, 0, 12, 12), "high"))
    with torch.no_grad(), Tap(painter.gen, [layer], edit={layer: Edit(1.0, s.featuremap)}):
        expect = paint.to_uint8(painter.gen(latents(1, 1, int(gen.z_dim))))[0]
    assert np.array_equal(res.after.image, expect)
    assert not torch.equal(s.featuremap, s.r0)


def _dissect_spec(d: Path, entry: Entry, seg: Path, layers: list[str]) -> Path:
    """A spec with one model entry, the tiny segmenter and one dissection of `layers` of model "branchy"."""
    return write_spec(d, spec_text(d / "store.duckdb", models=[entry], segmenters=[segmenter("seg", seg)],
                                   analyses=[analysis("d", "dissect", "branchy", segmenter="seg", layers=layers,
                                                      samples=8, seed=1, batch_size=4)]))


def test_two_branch_layers_in_any_order_dissect(family_models, tiny_seg, tmp_path) -> None:
    entry, _ = family_models["branchy"]
    for i, layers in enumerate((["side.4", "g.layer5"], ["g.layer5", "side.4"], ["g.layer2", "side.4", "g.layer5"])):
        d = tmp_path / f"order{i}"
        d.mkdir()
        out = run_spec_in(d, _dissect_spec(d, entry, tiny_seg, layers))
        assert [o.state for o in out] == ["done"], [o.error for o in out]
        got = store.read("select distinct layer from unit_iou order by 1", path=str(d / "store.duckdb"))["layer"]
        assert got.to_list() == sorted(layers)


def test_a_run_that_never_started_reports_only_its_own_error(family_models, tiny_seg, tmp_path, monkeypatch) -> None:
    """A failure before the run's row exists is not followed by a failed attempt to record it ("no run ...")."""
    entry, _ = family_models["branchy"]
    spec = _dissect_spec(tmp_path, entry, tiny_seg, ["g.layer5"])

    def refuse(*args, **kwargs):
        raise RuntimeError("the store refused the run")

    monkeypatch.setattr(store, "start_run", refuse)
    out = run_spec_in(tmp_path, spec)
    assert [(o.state, o.error) for o in out] == [("failed", "RuntimeError: the store refused the run")]


@pytest.mark.slow
def test_hook_path_gives_the_fast_path_rows_on_a_sequential_generator(tiny_gan, tiny_seg, tmp_path, monkeypatch) -> None:
    """The runner's intervention rows on a ProGAN (nn.Sequential: fast path) are those of the hook path."""
    from compute.core import tap as tapmod
    from ingest.models.progan import load_progan

    entry = model("tiny", tiny_gan, dataset="village")
    gen, seg = load_progan(str(tiny_gan)).eval(), load_village_seg(str(tiny_seg)).eval()
    concept = _common_concept(gen, seg)
    real = tmp_path / "real.npy"
    np.save(real, np.random.default_rng(0).integers(0, 256, (24, 64, 64, 3), dtype=np.uint8))
    tables = {"ace_alpha": "concept, unit", "ace_epochs": "concept, epoch", "ablation_curves": "concept, ranking, n_units",
              "causal_effects": "concept, unit_set", "insertion_maps": "concept, sample, y, x",
              "trace_effects": "concept, target_layer, y, x", "repair_effects": "unit_set, draw"}
    rows = {}
    for path in ("fast", "hook"):
        d = tmp_path / path
        d.mkdir()
        if path == "hook":
            monkeypatch.setattr(tapmod, "sequential_path", lambda model, layer: False)

            def no_fast_path(*args, **kwargs):
                raise AssertionError("run_from used on the hook path")
            monkeypatch.setattr(tapmod, "run_from", no_fast_path)
        spec = write_spec(d, family_spec(d / "store.duckdb", entry, tiny_seg, "tiny", "layer4", concept, real))
        out = run_spec_in(d, spec)
        assert [o.state for o in out] == ["done"] * 7, [(o.job.analysis.name, o.error) for o in out]
        rows[path] = {t: store.read(f"select * exclude (run_key) from {t} order by {k}", path=str(d / "store.duckdb"))
                      for t, k in tables.items()}
    for t in tables:
        fast, hook = rows["fast"][t], rows["hook"][t]
        assert fast.columns == hook.columns and fast.height == hook.height > 0, t
        for col in fast.columns:
            if fast[col].dtype.is_float():
                assert np.allclose(fast[col].to_numpy(), hook[col].to_numpy(), atol=1e-5, equal_nan=True), (t, col)
            else:
                assert fast[col].to_list() == hook[col].to_list(), (t, col)
