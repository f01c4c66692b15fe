"""The role Protocols (ingest/roles.py) hold for the models the zoo loads and tell the roles apart; every
family a spec may declare has a loader."""
from __future__ import annotations

import torch

from ingest import zoo
from ingest.models.progan import load_progan
from ingest.models.village_truth import load_village_truth
from ingest.roles import Classifier, Generator, Segmenter


def test_loaded_models_play_their_roles(tiny_gan) -> None:
    gen = load_progan(str(tiny_gan), torch.device("cpu"))
    seg = zoo.load_segmenter("village-seg")
    truth = load_village_truth(torch.device("cpu"))
    clf = zoo.load_classifier("village-cls")
    assert isinstance(gen, Generator) and not isinstance(gen, Segmenter) and not isinstance(gen, Classifier)
    assert isinstance(seg, Segmenter) and isinstance(truth, Segmenter) and not isinstance(seg, Generator)
    assert isinstance(clf, Classifier) and not isinstance(clf, Segmenter)
    images = gen(torch.zeros(2, gen.z_dim))
    assert images.shape == (2, 3, gen.resolution, gen.resolution)
    masks = seg.concept_masks(images)
    assert masks.dtype == torch.bool and masks.shape[:2] == (2, len(seg.concepts))
    assert seg.concepts[0].name == "none"
    assert clf(torch.zeros(1, 3, clf.resolution, clf.resolution)).shape == (1, len(clf.classes))


def test_every_declared_family_has_a_loader() -> None:
    """The spec's families (ingest.spec, torch-free) and the zoo's loaders name the same families."""
    from ingest import spec

    assert set(spec.GENERATOR_FAMILIES) == set(zoo.GENERATOR_LOADERS)
    assert set(spec.SEGMENTER_FAMILIES) == set(zoo.SEGMENTER_LOADERS)
    assert set(spec.GENERATOR_FAMILIES) | set(spec.CLASSIFIER_FAMILIES) == set(spec.MODEL_FAMILIES)
