"""The model zoo: bundled village models and loaders for models declared in a spec.

Reads safetensors checkpoints (bundled beside this file, or files a spec names); writes nothing.
Families: generators `progan` (bundled village-gan and its training checkpoints) and `module`
(a user's factory `pkg.mod:factory`); segmenters `village` and `module`.

    python -c "from ingest.zoo import load_generator; print(load_generator('village-gan'))"
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from compute.spec import ModelSpec, SegmenterSpec, Spec

ZOO_DIR = Path(__file__).resolve().parent
BUNDLED_GENERATORS = {"village-gan": ZOO_DIR / "village-gan.safetensors"}
BUNDLED_SEGMENTERS = {"village-seg": ZOO_DIR / "village-seg.safetensors"}


class ZooError(ValueError):
    """A model cannot be loaded: one clear line (the CLI exits with status 2)."""


@functools.lru_cache(maxsize=256)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint file (cached per path, mtime and size)."""
    st = os.stat(path)
    return _sha256_cached(str(path), st.st_mtime_ns, st.st_size)


def _bundled_generator_path(name: str) -> Path | None:
    if name in BUNDLED_GENERATORS:
        return BUNDLED_GENERATORS[name]
    candidate = ZOO_DIR / f"{name}.safetensors"  # e.g. village-gan-step2000
    return candidate if name.startswith("village-gan") and candidate.exists() else None


def _spec_entry(kind: str, name: str, spec: "str | os.PathLike | Spec | None") -> Any:
    from compute import spec as specmod

    if spec is None:
        if not Path(specmod.DEFAULT_SPEC).exists():
            return None
        spec = specmod.DEFAULT_SPEC
    s = spec if isinstance(spec, specmod.Spec) else specmod.load(spec, check_files=False)
    entries = s.models if kind == "model" else s.segmenters
    return next((e for e in entries if e.name == name), None)


def load_generator(name: str, spec: "str | os.PathLike | Spec | None" = None,
                   device: torch.device | str = "cpu") -> torch.nn.Module:
    """A generator by name: a spec's model entry if the spec declares it, else a bundled model."""
    entry = _spec_entry("model", name, spec)
    if entry is not None:
        return load_model_spec(entry, device)
    path = _bundled_generator_path(name)
    if path is None:
        raise ZooError(f"unknown generator {name!r}; bundled: {', '.join(BUNDLED_GENERATORS)}")
    if not path.exists():
        raise ZooError(f"bundled generator {name!r} has no weights at {path} (train it: gandissect train gan)")
    from ingest.models.progan import load_progan

    return load_progan(str(path), torch.device(device)).eval()


def load_segmenter(name: str, spec: "str | os.PathLike | Spec | None" = None,
                   device: torch.device | str = "cpu") -> torch.nn.Module:
    """A segmenter by name: a spec's entry if the spec declares it, else a bundled segmenter."""
    entry = _spec_entry("segmenter", name, spec)
    if entry is not None:
        return load_segmenter_spec(entry, device)
    if name not in BUNDLED_SEGMENTERS:
        raise ZooError(f"unknown segmenter {name!r}; bundled: {', '.join(BUNDLED_SEGMENTERS)}")
    path = BUNDLED_SEGMENTERS[name]
    if not path.exists():
        raise ZooError(f"bundled segmenter {name!r} has no weights at {path} (train it: gandissect train segmenter)")
    from ingest.models.village_seg import load_village_seg

    return load_village_seg(str(path), torch.device(device)).eval()


def _import_factory(ref: str) -> Any:
    mod_name, _, attr = ref.partition(":")
    if not mod_name or not attr:
        raise ZooError(f"factory must look like 'package.module:function', got {ref!r}")
    try:
        return getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise ZooError(f"cannot import factory {ref!r}: {e}") from None


def _load_state(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickled code objects are refused by weights_only
        raise ZooError(f"{path}: refused to unpickle (only tensors are loaded, weights_only=True): "
                       f"{str(e).splitlines()[0]}") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_model_spec(m: "ModelSpec", device: torch.device | str = "cpu") -> torch.nn.Module:
    """Instantiate the generator a spec entry declares."""
    device = torch.device(device)
    if not Path(m.checkpoint).exists():
        raise ZooError(f"checkpoint not found: {m.checkpoint}")
    if m.family == "progan":
        from ingest.models.progan import load_progan

        return load_progan(m.checkpoint, device).eval()
    if m.family == "module":
        factory = _import_factory(m.option("factory", ""))
        net = factory(**dict(m.option("kwargs", ())))
        missing, unexpected = net.load_state_dict(_load_state(m.checkpoint), strict=False)
        if missing or unexpected:
            raise ZooError(f"{m.checkpoint}: keys do not match the factory's module; missing {list(missing)[:5]}, "
                           f"unexpected {list(unexpected)[:5]}")
        net.z_dim = int(m.option("z_dim", getattr(net, "z_dim", 0)))
        net.resolution = int(m.option("resolution", getattr(net, "resolution", 0)))
        net.layers = list(m.option("layers", getattr(net, "layers", [])))
        names = dict(net.named_modules())
        bad = [x for x in net.layers if x not in names]
        if bad:
            raise ZooError(f"model {m.name!r} has no layer {bad[0]!r}; available: {', '.join(n for n in names if n)}")
        return net.to(device).eval()
    raise ZooError(f"model family {m.family!r} is not supported yet")


def load_segmenter_spec(s: "SegmenterSpec", device: torch.device | str = "cpu") -> torch.nn.Module:
    """Instantiate the segmenter a spec entry declares."""
    device = torch.device(device)
    if not Path(s.checkpoint).exists():
        raise ZooError(f"checkpoint not found: {s.checkpoint}")
    if s.family == "village":
        from ingest.models.village_seg import load_village_seg

        return load_village_seg(s.checkpoint, device).eval()
    raise ZooError(f"segmenter family {s.family!r} is not supported yet")


@functools.lru_cache(maxsize=64)
def _describe_model_cached(m: "ModelSpec") -> Any:
    return load_model_spec(m, "cpu")


def describe_model(m: "ModelSpec") -> Any:
    """The CPU instance of a declared generator (cached per process): `.layers`, `.z_dim`, `.resolution`."""
    try:
        return _describe_model_cached(m)
    except ZooError:
        raise
    except Exception as e:
        raise ZooError(f"{m.checkpoint}: cannot load as {m.family}: {str(e).splitlines()[0]}") from None


@functools.lru_cache(maxsize=16)
def describe_segmenter(s: "SegmenterSpec") -> Any:
    """The CPU instance of a declared segmenter (cached per process): `.concepts`, `.resolution`."""
    try:
        return load_segmenter_spec(s, "cpu")
    except ZooError:
        raise
    except Exception as e:
        raise ZooError(f"{s.checkpoint}: cannot load as {s.family}: {str(e).splitlines()[0]}") from None
