"""Scene classes, the village-cls classifier, the classifier image source and the village-truth segmenter."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compute.core.tap import Tap
from ingest.models.classifier import VillageClassifier, load_village_cls, save_village_cls
from ingest.models.image_source import ClassifierDissection, ImageFolder, VillageScenes, image_index
from ingest.models.village_truth import VillageTruth, remember
from ingest.samples import latents
from ingest.village import render
from ingest.village.scenes import CLASSES, MIN_PIXELS, RULES, balanced_split, class_of_labels, layout_class, scene_class
from ingest.zoo import ZooError


def _masks(**pixels: int) -> dict[str, np.ndarray]:
    out = {}
    for name in ("dome", "road", "tree"):
        m = np.zeros((64, 64), bool)
        m.flat[:pixels.get(name, 0)] = True
        out[name] = m
    return out


def test_rules_first_match_wins() -> None:
    idx = {c: k for k, c in enumerate(CLASSES)}
    assert class_of_labels(_masks(dome=MIN_PIXELS, road=500, tree=500)) == idx["church_square"]
    assert class_of_labels(_masks(dome=MIN_PIXELS - 1, road=MIN_PIXELS, tree=500)) == idx["town_street"]
    assert class_of_labels(_masks(road=MIN_PIXELS - 1, tree=MIN_PIXELS)) == idx["farm"]
    assert class_of_labels(_masks(tree=MIN_PIXELS - 1)) == idx["hamlet"]
    assert [c for c, _ in RULES] == list(CLASSES)


def test_layout_class_reads_render_contents() -> None:
    """layout_class re-seeds render's layout: where nothing is hidden it must agree with the render."""
    agree = 0
    for seed in range(60):
        scene = render(seed)
        expect = 0 if any(b.top == "dome" for b in scene.buildings) else 1 if scene.road else \
            2 if scene.trees else 3
        assert layout_class(seed) == expect
        agree += layout_class(seed) == scene_class(scene)
    assert agree >= 55  # differs only where a dome / road / tree is hidden


def test_balanced_split_is_balanced_deterministic_and_correct() -> None:
    a = balanced_split(1000, 3)
    assert np.bincount(a.labels, minlength=len(CLASSES)).tolist() == [3] * len(CLASSES)
    assert np.array_equal(a.seeds, balanced_split(1000, 3).seeds)
    for s, k in zip(a.seeds, a.labels):
        assert scene_class(render(int(s))) == k
    assert len(set(a.seeds.tolist())) == len(a)


def test_classifier_shapes_forward_from_and_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = VillageClassifier(CLASSES, (4, 4, 8, 8, 8)).eval()
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    logits = net(x)
    assert logits.shape == (3, len(CLASSES))
    assert net.layers == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    with Tap(net, ["conv3", "conv5"]) as tap:
        net(x)
        assert tap["conv3"].shape == (3, 8, 16, 16) and tap["conv5"].shape == (3, 8, 8, 8)
        for layer in ("conv3", "conv5"):
            assert torch.allclose(net.forward_from(layer, tap[layer]), logits, atol=1e-5)
    path = tmp_path / "c.safetensors"
    save_village_cls(net, str(path), {"note": "x"})
    back = load_village_cls(str(path))
    assert back.classes == CLASSES and torch.allclose(back(x), logits, atol=1e-6)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, len(CLASSES))  # other sizes are resized


def test_bundled_classifier_loads_and_is_small() -> None:
    from ingest.zoo import BUNDLED_CLASSIFIERS, load_classifier

    path = BUNDLED_CLASSIFIERS["village-cls"]
    assert path.stat().st_size < 1_000_000
    c = load_classifier("village-cls")
    assert c.classes == CLASSES and c.resolution == 64 and c.layers[-1] == "conv5"
    assert c(torch.zeros(1, 3, 64, 64)).shape == (1, len(CLASSES))


def test_image_index_is_fixed_and_spread() -> None:
    z = latents(1, 200, 2)
    h = image_index(z)
    assert h == image_index(z.clone()) and all(0 <= v < 2 ** 31 for v in h)
    assert len(set(h)) == 200
    assert image_index(latents(1, 1, 2, start=7)) == [h[7]]  # sample 7 is sample 7 whatever n
    from ingest.models.image_source import dataset_index

    assert dataset_index(1, 7) == h[7]


def test_classifier_dissection_renders_scenes_and_taps_classifier_layers() -> None:
    torch.manual_seed(0)
    net = VillageClassifier(CLASSES, (4, 4, 8, 8, 8)).eval()
    gen = ClassifierDissection(net, VillageScenes())
    assert gen.layers == net.layers and gen.z_dim == 2 and gen.resolution == 64
    z = latents(3, 4, gen.z_dim)
    with torch.no_grad(), Tap(gen, ["conv5"]) as tap:
        images = gen(z)
        feat = tap["conv5"]
    seeds = [gen.source.scene_seed(h) for h in image_index(z)]
    expect = np.stack([render(s).image for s in seeds])
    got = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(got, expect)
    with torch.no_grad():
        assert torch.allclose(gen.last_logits, net(images)) and feat.shape == (4, 8, 8, 8)
    # the truth of the scenes just rendered
    truth = VillageTruth().segment(images)
    assert np.array_equal(truth.numpy(), np.stack([render(s).label_maps for s in seeds]).astype(np.int64))
    masks = VillageTruth().concept_masks(images)
    from ingest.village.concepts import INDEX

    assert np.array_equal(masks[:, INDEX["dome"]].numpy(), np.stack([render(s).labels["dome"] for s in seeds]))


def test_village_truth_refuses_unseen_images() -> None:
    with pytest.raises(ZooError, match="village-truth"):
        VillageTruth().segment(torch.rand(1, 3, 64, 64) * 2 - 1)
    scene = render(5)
    remember(scene.image, scene.label_maps)
    x = torch.from_numpy(scene.image).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert np.array_equal(VillageTruth().segment(x)[0].numpy(), scene.label_maps)


def test_image_folder_source(tmp_path: Path) -> None:
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(tmp_path / f"im{i}.png")
    src = ImageFolder(tmp_path, 16)
    x = src.images([0, 4])
    assert x.shape == (2, 3, 16, 16)
    assert torch.allclose(x[1], torch.full((3, 16, 16), 40 / 127.5 - 1))  # 4 mod 3 = file 1
    with pytest.raises(ZooError):
        ImageFolder(tmp_path / "missing", 16)


def _tiny_hf_resnet(directory: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                    num_labels=3, id2label={0: "a", 1: "b", 2: "c"},
                                    label2id={"a": 0, "b": 1, "c": 2})
    torch.manual_seed(0)
    transformers.ResNetForImageClassification(cfg).save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"height": 32, "width": 32}, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))


def test_hf_classifier_offline(tmp_path: Path, monkeypatch) -> None:
    """A local AutoModelForImageClassification directory as a classifier model (no network)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = tmp_path / "resnet-tiny"
    _tiny_hf_resnet(d)
    from compute.spec import load
    from ingest.zoo import load_classifier, load_model_spec
    from tests.conftest import write_spec

    spec = write_spec(tmp_path, f"""
        [[models]]
        name = "hf"
        role = "classifier"
        family = "transformers"
        checkpoint = "{d}"
    """)
    clf = load_classifier("hf", spec)
    assert clf.classes == ("a", "b", "c") and clf.resolution == 32
    assert clf.layers and all(n.startswith("model.") for n in clf.layers)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    import transformers

    ref = transformers.ResNetForImageClassification.from_pretrained(str(d), local_files_only=True).eval()
    with torch.no_grad():
        expect = ref(pixel_values=(torch.nn.functional.interpolate((x + 1) / 2, size=(32, 32), mode="bilinear",
                                                                     align_corners=False) - 0.5) / 0.25).logits
        assert torch.allclose(clf(x), expect, atol=1e-5)
    gen = load_model_spec(load(spec).model("hf"))
    layer = clf.layers[-1]
    with torch.no_grad(), Tap(gen, [layer]) as tap:
        images = gen(latents(1, 2, gen.z_dim))
        assert images.shape == (2, 3, 64, 64) and tap[layer].dim() == 4  # village scenes at 64 px


def test_module_classifier_entry(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from compute.spec import SpecError, load
    from ingest.zoo import load_classifier
    from tests.conftest import write_spec

    torch.manual_seed(0)
    net = VillageClassifier(CLASSES, (4, 4, 8, 8, 8))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "m.safetensors"))
    spec = write_spec(tmp_path, f"""
        [[models]]
        name = "mine"
        role = "classifier"
        family = "module"
        factory = "ingest.models.classifier:VillageClassifier"
        kwargs = {{ classes = {json.dumps(list(CLASSES))}, widths = [4, 4, 8, 8, 8] }}
        checkpoint = "{tmp_path / 'm.safetensors'}"
        layers = ["conv4", "conv5"]
    """)
    clf = load_classifier("mine", spec)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(clf(x), net.eval()(x), atol=1e-6)
    assert clf.layers == ["conv4", "conv5"]
    bad = write_spec(tmp_path, f"""
        [[models]]
        name = "x"
        role = "classifier"
        family = "progan"
        checkpoint = "{tmp_path / 'm.safetensors'}"
    """, "bad.toml")
    with pytest.raises(SpecError, match="role"):
        load(bad)
