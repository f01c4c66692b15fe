"""The three roles a model plays in gandissect, as Protocols: Generator, Segmenter, Classifier.

Reads nothing, writes nothing. Every loader in `ingest.zoo` returns an `nn.Module` that plays one of
these roles (whatever its family: progan, stylegan2, module, transformers, village-seg, village-truth,
village-cls); code that takes a model states the role in its signature instead of `Any`. The
Protocols are runtime-checkable: `isinstance(seg, Segmenter)` checks the members exist (not their
types). Images are float [N, 3, H, W] in [-1, 1] everywhere.

    python -c "from ingest.roles import Segmenter; from ingest.zoo import load_segmenter; \
print(isinstance(load_segmenter('village-seg'), Segmenter))"
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from torch import Tensor

from ingest.village.concepts import Concept


@runtime_checkable
class Generator(Protocol):
    """Latents z [N, z_dim] -> images [N, 3, resolution, resolution]; `layers` are the dotted module
    paths that can be dissected (a Tap registers on them)."""

    @property
    def layers(self) -> Sequence[str]: ...

    @property
    def z_dim(self) -> int: ...

    @property
    def resolution(self) -> int: ...

    def __call__(self, z: Tensor) -> Tensor: ...


@runtime_checkable
class Segmenter(Protocol):
    """Images -> per-pixel concepts. `concepts[0]` is "none"; `segment` gives label channels
    long [N, L, H, W] (value = concept index, one channel per category); `concept_masks` bool
    [N, len(concepts), H, W]. Masks come at the segmenter's `resolution`."""

    @property
    def concepts(self) -> Sequence[Concept]: ...

    @property
    def resolution(self) -> int: ...

    def segment(self, images: Tensor) -> Tensor: ...

    def concept_masks(self, images: Tensor) -> Tensor: ...


@runtime_checkable
class Classifier(Protocol):
    """Images [N, 3, resolution, resolution] -> logits [N, len(classes)]; `layers` as a Generator's."""

    @property
    def classes(self) -> Sequence[str]: ...

    @property
    def layers(self) -> Sequence[str]: ...

    @property
    def resolution(self) -> int: ...

    def __call__(self, images: Tensor) -> Tensor: ...
