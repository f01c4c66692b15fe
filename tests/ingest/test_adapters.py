"""Adapters for real checkpoints and segmenters: each family's file is built here with random weights in
the exact real format, declared in a spec, and dissected end to end into a temporary store; the
`layers` table must match the architecture. Also the one-line errors (CLI exit status 2)."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compute import cli, runner, spec as specmod
from db import store
from ingest.zoo import ZooError, file_sha256, load_model_spec, load_segmenter_spec, resolution_record
from tests.conftest import write_spec



# ---------------------------------------------------------------- factories named by specs ("module" family)
class TinyGenerator(nn.Module):
    """A user's generator: z [N, z, 1, 1] -> images in [0, 1] (sigmoid), 16x16."""

    def __init__(self, z: int = 12, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.ConvTranspose2d(z, width, 4)  # 1x1 -> 4x4
        self.body = nn.Sequential(nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1),
                                  nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1),
                                  nn.ReLU())
        self.rgb = nn.Conv2d(width, 3, 1)
        self.spare = nn.Identity()  # never used in forward

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.rgb(self.body(self.stem(z))))


def make_generator(z: int = 12, width: int = 8) -> nn.Module:
    return TinyGenerator(z, width)


class TinySegNet(nn.Module):
    """A user's segmenter: images -> logits [N, labels, H/2, W/2]."""

    def __init__(self, labels: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, labels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_segmenter(labels: int = 4) -> nn.Module:
    return TinySegNet(labels)


# ---------------------------------------------------------------- helpers
def dissect(tmp_path: Path, entries: str, model: str, segmenter: str, layers: list[str], samples: int = 16,
            monkeypatch: pytest.MonkeyPatch | None = None) -> str:
    """Write a spec with `entries` and one dissect analysis, run it; returns the store path."""
    db = tmp_path / "store.duckdb"
    path = write_spec(tmp_path, f"""
        [store]
        path = "{db}"
        {entries}
        [[analyses]]
        name = "d"
        kind = "dissect"
        models = ["{model}"]
        segmenter = "{segmenter}"
        layers = {json.dumps(layers)}
        samples = {samples}
        seed = 1
        batch_size = 8
        """)
    if monkeypatch is not None:
        monkeypatch.chdir(tmp_path)
    out = runner.run(specmod.load(path), quiet=True, echo=lambda s: None)
    assert [o.state for o in out] == ["done"], [o.error for o in out]
    return str(db)


def layer_table(db: str, model: str) -> dict[str, tuple[int, int, int]]:
    df = store.read("select layer, units, height, width from layers where model = ? order by layer_index",
                    [model], path=db)
    return {r["layer"]: (r["units"], r["height"], r["width"]) for r in df.iter_rows(named=True)}


def model_spec(tmp_path: Path, body: str, name: str) -> specmod.ModelSpec:
    return specmod.load(write_spec(tmp_path, body, name=f"{name}.toml"), check_files=False).model(name)


def seg_spec(tmp_path: Path, body: str, name: str) -> specmod.SegmenterSpec:
    return specmod.load(write_spec(tmp_path, body, name=f"{name}.toml"), check_files=False).segmenter(name)


def cli_error(capsys: pytest.CaptureFixture, args: list[str]) -> tuple[int, str]:
    code = cli.main(args)
    err = capsys.readouterr().err.strip()
    return code, err


# ---------------------------------------------------------------- the paper's ProGAN
PAPER_256 = [512, 512, 512, 512, 256, 128, 64, 32]  # netdissect sizes: z, then widths at 4x4 ... 256x256


def paper_state(sizes: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the paper's format, written from the format description (not from our model)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    widths = [sizes[1], sizes[1]] + [w for w in sizes[2:] for _ in range(2)]
    cin = sizes[0]
    for i, w in enumerate(widths, start=1):
        k = 4 if i == 1 else 3
        state[f"layer{i}.conv.weight"] = torch.randn(w, cin, k, k, generator=g)
        state[f"layer{i}.wscale.b"] = torch.randn(w, generator=g) * 0.1
        cin = w
    res = 4 * 2 ** (len(widths) // 2 - 1)
    state[f"output_{res}x{res}.conv.weight"] = torch.randn(3, cin, 1, 1, generator=g)
    state[f"output_{res}x{res}.wscale.b"] = torch.zeros(3)
    return state


@pytest.fixture(scope="module")
def church_pth(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("paper") / "churchoutdoor_lsun.pth"
    torch.save({"state_dict": paper_state(PAPER_256)}, path)
    return path


def paper_entries(ckpt: Path, seg: Path) -> str:
    return f"""
        [[models]]
        name = "church"
        family = "progan"
        checkpoint = "{ckpt}"
        dataset = "lsun-church-outdoor"

        [[segmenters]]
        name = "seg"
        family = "village"
        checkpoint = "{seg}"
        """


def test_paper_progan_256_dissection(tmp_path, church_pth, tiny_seg, monkeypatch) -> None:
    db = dissect(tmp_path, paper_entries(church_pth, tiny_seg), "church", "seg", ["layer4"], 8, monkeypatch)
    layers = layer_table(db, "church")
    assert list(layers) == [f"layer{i}" for i in range(1, 15)]  # 14 layers
    assert layers["layer4"] == (512, 8, 8)
    assert layers["layer1"] == (512, 4, 4) and layers["layer6"] == (512, 16, 16)
    assert layers["layer7"] == (256, 32, 32) and layers["layer10"] == (128, 64, 64)
    assert layers["layer12"] == (64, 128, 128) and layers["layer14"] == (32, 256, 256)
    m = store.read("select family, resolution, z_dim from models where model = 'church'", path=db).row(0)
    assert m == ("progan", 256, 512)
    n = store.read("select count(*) n, count(distinct unit) u from unit_iou where layer = 'layer4'", path=db).row(0)
    assert n == (512 * 14, 512)  # 512 units x the 14 village concepts


@pytest.mark.slow
def test_paper_progan_256_dissection_64_samples(tmp_path, church_pth, tiny_seg, monkeypatch) -> None:
    db = dissect(tmp_path, paper_entries(church_pth, tiny_seg), "church", "seg", ["layer4"], 64, monkeypatch)
    assert store.read("select n_samples from runs", path=db)["n_samples"].to_list() == [64]
    assert layer_table(db, "church")["layer4"] == (512, 8, 8)


def test_paper_progan_forward_follows_the_format(tmp_path) -> None:
    """One block by hand: pixel norm -> nearest 2x -> conv (no bias) -> x*sqrt(2)/sqrt(fan_in) + b -> lrelu."""
    from ingest.models.progan_paper import load_progan_paper

    sizes = [16, 8, 8, 4]
    state = paper_state(sizes, seed=3)
    torch.save(state, tmp_path / "small.pth")
    g = load_progan_paper(tmp_path / "small.pth")
    assert g.layers == [f"layer{i}" for i in range(1, 7)] and g.resolution == 16 and g.z_dim == 16
    z = torch.randn(2, 16)

    def block(x, i, k, pad, up):
        x = x / torch.sqrt(x.pow(2).mean(1, keepdim=True) + 1e-8)
        if up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        w = state[f"layer{i}.conv.weight"]
        x = F.conv2d(x, w, padding=pad) * (math.sqrt(2) / math.sqrt(w.shape[1] * k * k))
        return F.leaky_relu(x + state[f"layer{i}.wscale.b"].view(1, -1, 1, 1), 0.2)

    x = block(z.view(2, 16, 1, 1), 1, 4, 3, False)
    for i in range(2, 7):
        x = block(x, i, 3, 1, i % 2 == 1)
    x = x / torch.sqrt(x.pow(2).mean(1, keepdim=True) + 1e-8)
    w = state["output_16x16.conv.weight"]
    expected = (F.conv2d(x, w) / math.sqrt(w.shape[1]) + state["output_16x16.wscale.b"].view(1, -1, 1, 1)).clamp(-1, 1)
    with torch.no_grad():
        assert torch.allclose(g(z), expected, atol=1e-5)


def test_paper_progan_resolution_and_naming_variants(tmp_path) -> None:
    from ingest.models.progan_paper import load_progan_paper

    narrow128 = [8, 8, 8, 8, 8, 4, 4]  # 128x128: 12 layers
    state = paper_state(narrow128)
    old = {}
    for k, v in state.items():  # the older netdissect naming, with its stored (ignored) wscale.scale
        if k.startswith("layer"):
            i, rest = k[5:].split(".", 1)
            old[f"features.{int(i) - 1}.{rest}"] = v
            old[f"features.{int(i) - 1}.wscale.scale"] = torch.ones(1)
        else:
            old["output." + k.split(".", 1)[1]] = v
    torch.save(old, tmp_path / "old.pth")
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "new.safetensors"))
    a, b = load_progan_paper(tmp_path / "old.pth"), load_progan_paper(tmp_path / "new.safetensors")
    assert len(a.layers) == 12 and a.resolution == 128 and "output_128x128" in dict(a.named_children())
    z = torch.randn(1, 8)
    with torch.no_grad():
        assert torch.equal(a(z), b(z))
    torch.save({"state_dict": paper_state([4, 4, 4, 4, 4, 4, 4, 4, 4, 4])}, tmp_path / "hd.pth")
    hd = load_progan_paper(tmp_path / "hd.pth")
    assert len(hd.layers) == 18 and hd.resolution == 1024


def test_paper_progan_errors(tmp_path, capsys) -> None:
    from ingest.models.progan_paper import load_progan_paper

    state = paper_state([8, 8, 8, 4])
    del state["layer3.wscale.b"]
    state["layer3.bias"] = torch.zeros(8)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ZooError, match=r"missing layer3\.wscale\.b; unexpected layer3\.bias"):
        load_progan_paper(tmp_path / "bad.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ZooError, match="not a ProGAN generator state dict.*fc.weight"):
        load_progan_paper(tmp_path / "other.pth")
    torch.save(make_generator(), tmp_path / "pickled.pth")  # a whole pickled module: needs code to load
    with pytest.raises(ZooError, match=r"refused: this pickle needs code to load \(tests\.ingest\.test_adapters"):
        load_progan_paper(tmp_path / "pickled.pth")
    spec = write_spec(tmp_path, f"""
        [[models]]
        name = "p"
        family = "progan"
        checkpoint = "{tmp_path / 'pickled.pth'}"
        [[analyses]]
        kind = "quantiles"
        models = ["p"]
        """)
    code, err = cli_error(capsys, ["status", str(spec)])
    assert code == 2 and "refused" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- StyleGAN2 (rosinality format)
def rosinality_g_ema_shapes(size: int = 256, style_dim: int = 512, n_mlp: int = 8,
                            channel_multiplier: int = 2) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of rosinality's Generator(size, style_dim, n_mlp, channel_multiplier).state_dict(),
    written out from the published architecture (independently of ingest.models.stylegan2)."""
    ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
          256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    out: dict[str, tuple[int, ...]] = {}
    for i in range(1, n_mlp + 1):
        out[f"style.{i}.weight"] = (style_dim, style_dim)
        out[f"style.{i}.bias"] = (style_dim,)
    out["input.input"] = (1, ch[4], 4, 4)

    def styled(prefix: str, cin: int, cout: int, up: bool) -> None:
        out[f"{prefix}.conv.weight"] = (1, cout, cin, 3, 3)
        if up:
            out[f"{prefix}.conv.blur.kernel"] = (4, 4)
        out[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        out[f"{prefix}.conv.modulation.bias"] = (cin,)
        out[f"{prefix}.noise.weight"] = (1,)
        out[f"{prefix}.activate.bias"] = (cout,)

    def to_rgb(prefix: str, cin: int, up: bool) -> None:
        out[f"{prefix}.bias"] = (1, 3, 1, 1)
        if up:
            out[f"{prefix}.upsample.kernel"] = (4, 4)
        out[f"{prefix}.conv.weight"] = (1, 3, cin, 1, 1)
        out[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        out[f"{prefix}.conv.modulation.bias"] = (cin,)

    styled("conv1", ch[4], ch[4], False)
    to_rgb("to_rgb1", ch[4], False)
    log_size = int(math.log2(size))
    for i in range((log_size - 2) * 2 + 1):
        r = 2 ** ((i + 5) // 2)
        out[f"noises.noise_{i}"] = (1, 1, r, r)
    cin = ch[4]
    for j, i in enumerate(range(3, log_size + 1)):
        cout = ch[2 ** i]
        styled(f"convs.{2 * j}", cin, cout, True)
        styled(f"convs.{2 * j + 1}", cout, cout, False)
        to_rgb(f"to_rgbs.{j}", cout, True)
        cin = cout
    return out


def rosinality_state(shapes: dict[str, tuple[int, ...]], random: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Zeros (random normal for the keys in `random`), and the FIR buffers' [1,3,3,1] kernel (outer product,
    normalised, times 4)."""
    t = torch.tensor([1.0, 3.0, 3.0, 1.0])
    state = {}
    for k, s in shapes.items():
        state[k] = (t[None] * t[:, None]) / 16 * 4 if k.endswith("kernel") else (
            torch.randn(*s) if k in random else torch.zeros(*s))
    return state


def test_stylegan2_published_256_config_consumes_every_key(tmp_path) -> None:
    from ingest.models.stylegan2 import load_stylegan2

    shapes = rosinality_g_ema_shapes(256)
    state = rosinality_state(shapes, random=("convs.5.conv.weight",))
    # a rosinality training checkpoint: g, d, g_ema, optimiser states and argparse args
    torch.save({"g": state, "d": {"convs.0.0.weight": torch.zeros(1)}, "g_ema": state,
                "g_optim": {"state": {}, "param_groups": [{"lr": 0.002, "params": [0, 1]}]},
                "args": argparse.Namespace(size=256, channel_multiplier=2, latent=512, n_mlp=8)},
               tmp_path / "550000.pt")
    g = load_stylegan2(tmp_path / "550000.pt")
    got = {k: tuple(v.shape) for k, v in g.state_dict().items()}
    assert got == shapes  # every key consumed, none missing, same shapes
    assert torch.equal(g.convs[5].conv.weight, state["convs.5.conv.weight"])
    assert g.resolution == 256 and g.z_dim == 512 and len(g.style) == 9
    assert g.layers == ["conv1"] + [f"convs.{i}" for i in range(12)]


def test_stylegan2_key_mismatch(tmp_path) -> None:
    from ingest.models.stylegan2 import load_stylegan2

    state = narrow_stylegan2(tmp_path / "sg.pt")
    for name in ("to_rgb1.extra.weight", "convs.3.noise.weight"):  # one key more, one key less
        bad = dict(state)
        if name in bad:
            del bad[name]
        else:
            bad[name] = torch.zeros(3)
        torch.save({"g_ema": bad}, tmp_path / "bad.pt")
        with pytest.raises(ZooError, match=rf"(unexpected|missing) {name.replace('.', r'[.]')}"):
            load_stylegan2(tmp_path / "bad.pt")
    torch.save({"g": state}, tmp_path / "nog.pt")
    with pytest.raises(ZooError, match="has no 'g_ema' state dict; top-level entries: g"):
        load_stylegan2(tmp_path / "nog.pt")
    assert load_stylegan2(tmp_path / "nog.pt", key="g").resolution == 32


@pytest.mark.slow
def test_stylegan2_published_256_config_forward(tmp_path) -> None:
    from ingest.models.stylegan2 import load_stylegan2

    torch.save({"g_ema": rosinality_state(rosinality_g_ema_shapes(256)), "latent_avg": torch.zeros(512)},
               tmp_path / "sg.pt")
    g = load_stylegan2(tmp_path / "sg.pt", truncation=0.5)
    with torch.no_grad():
        img = g(torch.randn(1, 512))
    assert img.shape == (1, 3, 256, 256) and bool(torch.isfinite(img).all())


def narrow_stylegan2(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A 32x32 StyleGAN2 with narrow widths, saved as a rosinality training checkpoint."""
    from ingest.models.stylegan2 import StyleGAN2Generator

    torch.manual_seed(seed)
    g = StyleGAN2Generator(32, style_dim=16, n_mlp=2, channels={4: 16, 8: 16, 16: 8, 32: 8})
    with torch.no_grad():
        for conv in [g.conv1, *g.convs]:
            conv.noise.weight.fill_(0.1)
    sd = g.state_dict()
    torch.save({"g": sd, "d": {}, "g_ema": sd, "args": argparse.Namespace(size=32, latent=16)}, path)
    return sd


def test_stylegan2_dissection(tmp_path, tiny_seg, monkeypatch) -> None:
    narrow_stylegan2(tmp_path / "sg32.pt")
    entries = f"""
        [[models]]
        name = "sg"
        family = "stylegan2"
        checkpoint = "{tmp_path / 'sg32.pt'}"
        truncation = 0.7

        [[segmenters]]
        name = "seg"
        family = "village"
        checkpoint = "{tiny_seg}"
        """
    db = dissect(tmp_path, entries, "sg", "seg", ["convs.1", "convs.3"], 16, monkeypatch)
    assert layer_table(db, "sg") == {"conv1": (16, 4, 4), "convs.0": (16, 8, 8), "convs.1": (16, 8, 8),
                                     "convs.2": (8, 16, 16), "convs.3": (8, 16, 16), "convs.4": (8, 32, 32),
                                     "convs.5": (8, 32, 32)}
    assert store.read("select distinct layer from unit_iou order by 1", path=db)["layer"].to_list() == ["convs.1",
                                                                                                     "convs.3"]


def test_stylegan2_latents_truncation_and_noise(tmp_path) -> None:
    from ingest.models.stylegan2 import load_stylegan2

    narrow_stylegan2(tmp_path / "sg.pt")
    g = load_stylegan2(tmp_path / "sg.pt")
    z = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(g(z), g(z))  # fixed noise: one z, one image
        w = g.mapping(z)
        gw = load_stylegan2(tmp_path / "sg.pt", input_space="w")
        assert torch.allclose(gw(w), g(z), atol=1e-6)
        g0 = load_stylegan2(tmp_path / "sg.pt", truncation=0.0)  # every w pulled to w_avg: one image
        img = g0(z)
        assert torch.allclose(img[0], img[1], atol=1e-6) and torch.allclose(img[0], img[2], atol=1e-6)
        assert torch.allclose(g0.w_avg, g.compute_w_avg(), atol=1e-6)
        gz = load_stylegan2(tmp_path / "sg.pt", noise="zero")
        assert not torch.allclose(gz(z), g(z))
    with pytest.raises(ZooError, match="truncation"):
        load_stylegan2(tmp_path / "sg.pt", truncation=1.5)


def test_stylegan2_modulated_conv_equals_per_sample_weights() -> None:
    """The batched (input-modulated) conv equals the definition: per sample, weights * style, demodulated,
    conv (or transposed conv with stride 2, then the FIR blur)."""
    from ingest.models.stylegan2 import ModulatedConv2d, make_kernel

    torch.manual_seed(0)
    for up in (False, True):
        m = ModulatedConv2d(6, 5, 3, 4, upsample=up)
        x, w = torch.randn(2, 6, 8, 8), torch.randn(2, 4)
        with torch.no_grad():
            got = m(x, w)
            outs = []
            for i in range(2):
                s = m.modulation(w[i:i + 1])[0]
                wt = m.scale * m.weight[0] * s.view(1, -1, 1, 1)
                wt = wt / torch.sqrt(wt.pow(2).sum((1, 2, 3), keepdim=True) + 1e-8)
                if up:
                    y = F.conv_transpose2d(x[i:i + 1], wt.transpose(0, 1), stride=2)
                    k = (make_kernel([1, 3, 3, 1]) * 4).flip(0, 1).view(1, 1, 4, 4).repeat(5, 1, 1, 1)
                    y = F.conv2d(F.pad(y, [1, 1, 1, 1]), k, groups=5)
                else:
                    y = F.conv2d(x[i:i + 1], wt, padding=1)
                outs.append(y)
        assert got.shape == (2, 5, 16, 16) if up else (2, 5, 8, 8)
        assert torch.allclose(got, torch.cat(outs), atol=1e-5)


def test_stylegan2_fir_upsampling_keeps_constants() -> None:
    from ingest.models.stylegan2 import Upsample

    y = Upsample([1, 3, 3, 1])(torch.full((1, 2, 6, 6), 0.7))
    assert y.shape == (1, 2, 12, 12)
    assert torch.allclose(y[..., 2:-2, 2:-2], torch.full_like(y[..., 2:-2, 2:-2], 0.7), atol=1e-6)


# ---------------------------------------------------------------- module family
def module_entry(ckpt: Path, extra: str = "") -> str:
    return f"""
        [[models]]
        name = "mine"
        family = "module"
        checkpoint = "{ckpt}"
        factory = "tests.ingest.test_adapters:make_generator"
        kwargs = {{ z = 12, width = 8 }}
        layers = ["stem", "body.2", "body.5"]
        latent_shape = [12, 1, 1]
        output = "unit"
        {extra}
        """


@pytest.fixture(scope="module")
def mine_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mine") / "mine.pth"
    torch.save({"state_dict": make_generator().state_dict(), "step": 5}, path)
    return path


def test_module_generator_dissection(tmp_path, mine_ckpt, tiny_seg, monkeypatch) -> None:
    entries = module_entry(mine_ckpt) + f"""
        [[segmenters]]
        name = "seg"
        family = "village"
        checkpoint = "{tiny_seg}"
        """
    db = dissect(tmp_path, entries, "mine", "seg", ["body.2", "body.5"], 16, monkeypatch)
    assert layer_table(db, "mine") == {"stem": (8, 4, 4), "body.2": (8, 8, 8), "body.5": (8, 16, 16)}
    assert store.read("select resolution, z_dim from models", path=db).row(0) == (16, 12)
    g = load_model_spec(model_spec(tmp_path, module_entry(mine_ckpt), "mine"))
    with torch.no_grad():
        img = g(torch.randn(4, 12))
    assert img.shape == (4, 3, 16, 16) and img.min() >= -1 and img.max() <= 1
    assert float(img.min()) < 0  # "unit" maps sigmoid output [0, 1] onto [-1, 1]


@pytest.mark.parametrize("extra, message", [
    ('factory = "tests.ingest.no_such_module:make"', "cannot import factory 'tests.ingest.no_such_module:make'"),
    ('factory = "tests.ingest.test_adapters:no_such_factory"', "has no 'no_such_factory'"),
    ('layers = ["body.9"]', r"has no layer 'body.9'; available: stem, body, body.0"),
    ('layers = ["spare"]', r"layer 'spare' never runs in forward\(\); a dissectable layer outputs"),
    ('latent_shape = [10, 1, 1]', r"latent size mismatch\? the module fails on a latent of shape \(1, 10, 1, 1\)"),
    ('z_dim = 10', "latent size mismatch: z_dim = 10 but latent_shape"),
    ('state_key = "g_ema"', "has no entry 'g_ema'"),
    ('kwargs = { z = 12, width = 4 }', r"stem.weight has shape \(12, 8, 4, 4\), the factory's module has \(12, 4, 4, 4\)"),
    ('output = "sigmoid"', "output must be one of clamp, tanh, unit, byte"),
])
def test_module_generator_errors(tmp_path, mine_ckpt, extra, message) -> None:
    body = module_entry(mine_ckpt)
    key = extra.split(" = ")[0]
    body = "\n".join(line for line in body.splitlines() if not line.strip().startswith(key + " ")) + "\n" + extra
    with pytest.raises(ZooError, match=message):
        load_model_spec(model_spec(tmp_path, body, "mine"))


def test_module_generator_key_mismatch(tmp_path, mine_ckpt) -> None:
    sd = make_generator().state_dict()
    sd["extra.weight"] = sd.pop("rgb.weight")
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ZooError, match=r"missing rgb\.weight; unexpected extra\.weight"):
        load_model_spec(model_spec(tmp_path, module_entry(tmp_path / "bad.pth"), "mine"))


def test_layer_and_latent_checks_for_every_family(tmp_path, tiny_gan, capsys) -> None:
    base = f"""
        [[models]]
        name = "g"
        family = "progan"
        checkpoint = "{tiny_gan}"
        """
    with pytest.raises(ZooError, match="has no layer 'layer99'; available: layer1, layer2"):
        load_model_spec(model_spec(tmp_path, base + 'layers = ["layer99"]', "g"))
    with pytest.raises(ZooError, match="latent size mismatch: the spec says z_dim = 100, the checkpoint's generator takes 8"):
        load_model_spec(model_spec(tmp_path, base + "z_dim = 100", "g"))
    assert load_model_spec(model_spec(tmp_path, base + 'layers = ["layer2", "layer4.conv"]', "g")).layers == [
        "layer2", "layer4.conv"]
    spec = write_spec(tmp_path, base + 'z_dim = 100\n[[analyses]]\nkind = "quantiles"\nmodels = ["g"]\n')
    code, err = cli_error(capsys, ["run", str(spec)])
    assert code == 2 and "latent size mismatch" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- segmenters: module, transformers
@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("myseg") / "seg.safetensors"
    from safetensors.torch import save_file

    save_file(make_segmenter(4).state_dict(), str(path))
    (path.parent / "labels.json").write_text(json.dumps(
        [{"name": "background", "category": "none"}, {"name": "sky", "category": "object"},
         {"name": "tree", "category": "object"}, {"name": "window", "category": "part"}]))
    return path


def module_seg_entries(tiny_gan: Path, seg_ckpt: Path) -> str:
    return f"""
        [[models]]
        name = "tiny"
        family = "progan"
        checkpoint = "{tiny_gan}"

        [[segmenters]]
        name = "small"
        family = "module"
        checkpoint = "{seg_ckpt}"
        factory = "tests.ingest.test_adapters:make_segmenter"
        kwargs = {{ labels = 4 }}
        labels = ["background", "sky", "tree", ["window", "part"]]
        background = "background"
        resolution = 32
        input_range = "signed"

        [[segmenters]]
        name = "big"
        family = "module"
        checkpoint = "{seg_ckpt}"
        factory = "tests.ingest.test_adapters:make_segmenter"
        labels_file = "{seg_ckpt.parent / 'labels.json'}"
        background = "background"
        resolution = 128
        mean = [0.5, 0.5, 0.5]
        std = [0.25, 0.25, 0.25]
        """


def test_module_segmenter_dissection_both_resize_directions(tmp_path, tiny_gan, seg_ckpt, monkeypatch) -> None:
    for name, res in (("small", 32), ("big", 128)):  # generator 64: images shrunk, then enlarged
        d = tmp_path / name
        d.mkdir()
        db = dissect(d, module_seg_entries(tiny_gan, seg_ckpt), "tiny", name, ["layer4"], 16, monkeypatch)
        assert store.read("select resolution from segmenters", path=db).row(0) == (res,)
        concepts = store.read("select concept, category from concepts order by concept_index", path=db).rows()
        assert concepts == [("sky", "object"), ("tree", "object"), ("window", "part")]
        assert store.read("select count(*) from unit_iou", path=db).row(0) == (8 * 3,)
        seg = load_segmenter_spec(seg_spec(d, module_seg_entries(tiny_gan, seg_ckpt), name))
        gen = load_model_spec(model_spec(d, module_seg_entries(tiny_gan, seg_ckpt), "tiny"))
        assert resolution_record(gen, seg) == {"generator_resolution": 64, "segmenter_resolution": res,
                                               "images": "downsampled" if res < 64 else "upsampled"}
    seg = load_segmenter_spec(seg_spec(tmp_path, module_seg_entries(tiny_gan, seg_ckpt), "small"))
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    p = seg.probs(images)
    assert p.shape == (2, 4, 64, 64) and torch.allclose(p.sum(1), torch.ones(2, 64, 64), atol=1e-5)
    masks = seg.concept_masks(images)
    assert masks.shape == (2, 4, 64, 64) and bool((masks.sum(1) == 1).all())
    assert torch.equal(masks.float().argmax(1), p.argmax(1))


def test_module_segmenter_errors(tmp_path, tiny_gan, seg_ckpt) -> None:
    entries = module_seg_entries(tiny_gan, seg_ckpt)
    wrong = entries.replace('labels = ["background", "sky", "tree", ["window", "part"]]', 'labels = ["background", "sky"]')
    with pytest.raises(ZooError, match=r"logits of shape \(1, 4, 16, 16\), expected \[N, 2, h, w\]"):
        load_segmenter_spec(seg_spec(tmp_path, wrong, "small"))
    none = entries.replace('labels = ["background", "sky", "tree", ["window", "part"]]', "")
    with pytest.raises(ZooError, match="give labels"):
        load_segmenter_spec(seg_spec(tmp_path, none, "small"))
    missing = entries.replace("labels.json", "nope.json")
    with pytest.raises(ZooError, match="labels file not found"):
        load_segmenter_spec(seg_spec(tmp_path, missing, "big"))


@pytest.fixture(scope="module")
def segformer_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised SegFormer saved the way the hub's models are (config, weights, processor)."""
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hf") / "segformer-tiny"
    names = ["wall", "building", "sky", "floor", "tree", "door"]
    cfg = transformers.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2], decoder_hidden_size=16,
        num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(0)
    transformers.SegformerForSemanticSegmentation(cfg).save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_reduce_labels": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "SegformerImageProcessor",
        "image_std": [0.229, 0.224, 0.225], "resample": 2, "rescale_factor": 1 / 255,
        "size": {"height": 48, "width": 48}}))
    return d


def hf_entries(tiny_gan: Path, d: Path) -> str:
    return f"""
        [[models]]
        name = "tiny"
        family = "progan"
        checkpoint = "{tiny_gan}"

        [[segmenters]]
        name = "ade"
        family = "transformers"
        checkpoint = "{d}"
        resolution = 96
        categories = {{ wall = "part", door = "part" }}
        """


def test_transformers_segmenter_dissection(tmp_path, tiny_gan, segformer_dir, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    db = dissect(tmp_path, hf_entries(tiny_gan, segformer_dir), "tiny", "ade", ["layer4"], 16, monkeypatch)
    concepts = store.read("select concept, category from concepts order by concept_index", path=db).rows()
    assert concepts == [("wall", "part"), ("building", "object"), ("sky", "object"), ("floor", "object"),
                        ("tree", "object"), ("door", "part")]
    assert store.read("select resolution from segmenters", path=db).row(0) == (96,)
    assert store.read("select count(*) from unit_iou", path=db).row(0) == (8 * 6,)
    seg = load_segmenter_spec(seg_spec(tmp_path, hf_entries(tiny_gan, segformer_dir), "ade"))
    assert seg.input_size == (48, 48)
    images = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    p = seg.probs(images)  # differentiable: ACE optimises through it
    assert p.shape == (2, 7, 64, 64) and torch.allclose(p[:, 1:].sum(1), torch.ones(2, 64, 64), atol=1e-5)
    p[:, 3].mean().backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0
    assert seg.segment(images.detach()).shape == (2, 1, 64, 64)
    assert seg.features(images.detach()).shape == (2, 16)


def test_transformers_segmenter_errors(tmp_path, tiny_gan, segformer_dir, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "empty-model"
    empty.mkdir()
    (empty / "model.safetensors").write_bytes(b"")
    spec = write_spec(tmp_path, hf_entries(tiny_gan, empty) + """
        [[analyses]]
        kind = "dissect"
        models = ["tiny"]
        segmenter = "ade"
        samples = 8
        """)
    code, err = cli_error(capsys, ["run", str(spec)])
    assert code == 2 and "has no config.json" in err and len(err.splitlines()) == 1
    # a directory hash follows its files
    before = file_sha256(segformer_dir)
    assert before == file_sha256(segformer_dir) and len(before) == 64
