"""The model zoo: bundled village models and loaders for models declared in a spec.

Reads checkpoints (bundled safetensors beside this file, or the files and directories a spec names;
PyTorch pickles only with `weights_only=True`); writes nothing. Families (see docs/own-models.md):

- generators: `progan` (the bundled village-gan format, or the paper's netdissect ProGAN `.pth`,
  `ingest.models.progan_paper`), `stylegan2` (rosinality `g_ema` checkpoints, `ingest.models.stylegan2`),
  `module` (a user's factory `pkg.mod:factory` + checkpoint, `ingest.models.module_family`);
- segmenters: `village` (bundled), `module` (a user's factory + labels), `transformers` (a local
  Hugging Face `AutoModelForSemanticSegmentation` directory, `ingest.models.hf_segmenter`),
  `village-truth` (the world's exact labels of rendered scenes, `ingest.models.village_truth`);
- classifiers (`role = "classifier"`, `load_classifier`): `village-cls` (bundled), `module`, `transformers`
  (`ingest.models.classifier_families`); as a spec model they are dissected through
  `ingest.models.image_source.ClassifierDissection` (images from a dataset instead of latents).

Every loading problem is one line in a `ZooError` (the CLI exits with status 2).

    python -c "from ingest.zoo import load_generator; print(load_generator('village-gan'))"
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from ingest.roles import Generator, Segmenter
from ingest.spec import DEFAULT_SPEC, Declarations, ModelSpec, SegmenterSpec, ZooError, load_catalog

ZOO_DIR = Path(__file__).resolve().parent
BUNDLED_GENERATORS = {"village-gan": ZOO_DIR / "village-gan.safetensors"}
# village-seg-parts: the same net trained with doors / windows pasted anywhere; part labels not masked to buildings
BUNDLED_SEGMENTERS = {"village-seg": ZOO_DIR / "village-seg.safetensors",
                      "village-seg-parts": ZOO_DIR / "village-seg-parts.safetensors"}
BUNDLED_CLASSIFIERS = {"village-cls": ZOO_DIR / "village-cls.safetensors"}


@functools.lru_cache(maxsize=256)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint file (cached per path, mtime and size); for a model directory (the
    transformers family), the sha256 of its files' relative paths and their own sha256, in order."""
    if os.path.isdir(path):
        h = hashlib.sha256()
        root = Path(path)
        for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
            h.update(f"{f.relative_to(root).as_posix()}\0{file_sha256(f)}\n".encode())
        return h.hexdigest()
    st = os.stat(path)
    return _sha256_cached(str(path), st.st_mtime_ns, st.st_size)


def _bundled_generator_path(name: str) -> Path | None:
    if name in BUNDLED_GENERATORS:
        return BUNDLED_GENERATORS[name]
    candidate = ZOO_DIR / f"{name}.safetensors"  # e.g. village-gan-step2000
    return candidate if name.startswith("village-gan") and candidate.exists() else None


def _spec_entry(kind: str, name: str, spec: "str | os.PathLike | Declarations | None") -> Any:
    """The entry named `name` among a spec's models (kind "model") or segmenters; None if it has none.
    No spec given: the default spec file in the working directory, when there is one."""
    if spec is None:
        if not Path(DEFAULT_SPEC).exists():
            return None
        spec = DEFAULT_SPEC
    s = load_catalog(spec) if isinstance(spec, (str, os.PathLike)) else spec
    entries = s.models if kind == "model" else s.segmenters
    return next((e for e in entries if e.name == name), None)


def _bundled_weights(role: str, name: str, bundled: dict[str, Path]) -> Path:
    """The weights file of a bundled segmenter or classifier; ZooError when unknown or not trained."""
    if name not in bundled:
        raise ZooError(f"unknown {role} {name!r}; bundled: {', '.join(bundled)}")
    path = bundled[name]
    if not path.exists():
        raise ZooError(f"bundled {role} {name!r} has no weights at {path} (train it: gandissect train {role})")
    return path


def load_generator(name: str, spec: "str | os.PathLike | Declarations | None" = None,
                   device: torch.device | str = "cpu") -> torch.nn.Module:
    """A generator by name: a spec's model entry if the spec declares it, else a bundled model."""
    entry = _spec_entry("model", name, spec)
    if entry is not None:
        return load_model_spec(entry, device)
    path = _bundled_generator_path(name)
    if path is None and name in BUNDLED_CLASSIFIERS:  # a bundled classifier over rendered village scenes
        from ingest.models.image_source import ClassifierDissection, VillageScenes

        return ClassifierDissection(load_classifier(name, spec, device), VillageScenes()).to(device).eval()
    if path is None:
        raise ZooError(f"unknown generator {name!r}; bundled: {', '.join(BUNDLED_GENERATORS)}")
    if not path.exists():
        raise ZooError(f"bundled generator {name!r} has no weights at {path} (train it: gandissect train gan)")
    from ingest.models.progan import load_progan

    return load_progan(str(path), torch.device(device)).eval()


def load_segmenter(name: str, spec: "str | os.PathLike | Declarations | None" = None,
                   device: torch.device | str = "cpu") -> torch.nn.Module:
    """A segmenter by name: a spec's entry if the spec declares it, else a bundled segmenter."""
    entry = _spec_entry("segmenter", name, spec)
    if entry is not None:
        return load_segmenter_spec(entry, device)
    path = _bundled_weights("segmenter", name, BUNDLED_SEGMENTERS)
    from ingest.models.village_seg import load_village_seg

    return load_village_seg(str(path), torch.device(device)).eval()


def load_classifier(name: str, spec: "str | os.PathLike | Declarations | None" = None,
                    device: torch.device | str = "cpu") -> torch.nn.Module:
    """A classifier by name: a spec's model entry with role = "classifier", else a bundled classifier.

    The module has `classes`, `layers`, `resolution` and `forward(images [N,3,H,W] in [-1,1]) -> logits`."""
    entry = _spec_entry("model", name, spec)
    if entry is not None and entry.option("role") == "classifier":
        return load_classifier_entry(entry, device)
    path = _bundled_weights("classifier", name, BUNDLED_CLASSIFIERS)
    from ingest.models.classifier import load_village_cls

    return load_village_cls(str(path), torch.device(device)).eval()


def load_classifier_entry(m: ModelSpec, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The bare classifier of a spec entry with role = "classifier" (families: village-cls, module,
    transformers)."""
    device = torch.device(device)
    if not Path(m.checkpoint).exists():
        raise ZooError(f"checkpoint not found: {m.checkpoint}")
    if m.family == "village-cls":
        from ingest.models.classifier import load_village_cls

        try:
            return load_village_cls(m.checkpoint, device)
        except ValueError as e:
            raise ZooError(f"model {m.name!r}: {e}") from None
    if m.family in ("module", "transformers"):
        from ingest.models.classifier_families import load_hf_classifier, load_module_classifier

        loader = load_module_classifier if m.family == "module" else load_hf_classifier
        return loader(m, device)
    raise ZooError(f"model {m.name!r}: family {m.family!r} has no classifier loader; "
                   "classifier families: village-cls, module, transformers")


def _read_meta_format(path: str) -> str | None:
    """The `format` metadata of a safetensors file (None for any other file)."""
    if not path.endswith(".safetensors"):
        return None
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("format")
    except Exception:
        return None


def _load_progan(m: ModelSpec, device: torch.device) -> torch.nn.Module:
    """The bundled village format (safetensors with format metadata) or the paper's .pth state dicts."""
    from ingest.models.progan import FORMAT

    if _read_meta_format(m.checkpoint) == FORMAT:
        from ingest.models.progan import load_progan

        return load_progan(m.checkpoint, device)
    from ingest.models.progan_paper import load_progan_paper

    return load_progan_paper(m.checkpoint, device)


def _load_stylegan2(m: ModelSpec, device: torch.device) -> torch.nn.Module:
    from ingest.models.stylegan2 import load_stylegan2

    return load_stylegan2(m.checkpoint, device, key=m.option("key", "g_ema"), input_space=m.option("input", "z"),
                          truncation=float(m.option("truncation", 1.0)), noise=m.option("noise", "fixed"),
                          lr_mlp=float(m.option("lr_mlp", 0.01)))


def _load_module(m: ModelSpec, device: torch.device) -> torch.nn.Module:
    from ingest.models.module_family import load_module_generator

    return load_module_generator(m, device)


GENERATOR_LOADERS = {"progan": _load_progan, "stylegan2": _load_stylegan2, "module": _load_module}


def _check_generator(m: ModelSpec, net: torch.nn.Module) -> torch.nn.Module:
    """Entry options every family shares: `layers` (a subset / other module paths), `z_dim`, `resolution`."""
    where = f"model {m.name!r}"
    if m.family != "module" and m.option("layers") is not None:
        layers = m.option("layers")
        layers = [layers] if isinstance(layers, str) else list(layers)
        names = dict(net.named_modules())
        for name in layers:
            if not isinstance(name, str) or not name or name not in names:
                raise ZooError(f"{where}: has no layer {name!r}; available: {', '.join(net.layers)}")
        net.layers = layers
    z_dim = m.option("z_dim")
    if z_dim is not None and int(z_dim) != int(net.z_dim):
        raise ZooError(f"{where}: latent size mismatch: the spec says z_dim = {z_dim}, "
                       f"the checkpoint's generator takes {net.z_dim}")
    res = m.option("resolution")
    if res is not None and int(res) != int(net.resolution):
        raise ZooError(f"{where}: resolution = {res} declared, the checkpoint's generator makes "
                       f"{net.resolution}x{net.resolution} images")
    return net


def load_model_spec(m: ModelSpec, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Instantiate the generator a spec entry declares (families: progan, stylegan2, module); an entry
    with `role = "classifier"` gives its classifier with an image source, presented as a generator
    (`ingest.models.image_source.ClassifierDissection`)."""
    device = torch.device(device)
    if not Path(m.checkpoint).exists():
        raise ZooError(f"checkpoint not found: {m.checkpoint}")
    if m.option("role") == "classifier":
        from ingest.models.image_source import classifier_model

        return _check_generator(m, classifier_model(m, load_classifier_entry(m, device), device)).eval()
    loader = GENERATOR_LOADERS.get(m.family)
    if loader is None:
        raise ZooError(f"model family {m.family!r} is not supported; families: {', '.join(GENERATOR_LOADERS)}")
    return _check_generator(m, loader(m, device)).eval()


def _load_village(s: SegmenterSpec, device: torch.device) -> torch.nn.Module:
    from ingest.models.village_seg import load_village_seg

    return load_village_seg(s.checkpoint, device)


def _load_module_seg(s: SegmenterSpec, device: torch.device) -> torch.nn.Module:
    from ingest.models.module_family import load_module_segmenter

    return load_module_segmenter(s, device)


def _load_transformers(s: SegmenterSpec, device: torch.device) -> torch.nn.Module:
    from ingest.models.hf_segmenter import load_hf_segmenter

    return load_hf_segmenter(s.checkpoint, device, dict(s.options), s.name)


def _load_village_truth(s: SegmenterSpec, device: torch.device) -> torch.nn.Module:
    from ingest.models.village_truth import load_village_truth

    return load_village_truth(device)


SEGMENTER_LOADERS = {"village": _load_village, "module": _load_module_seg, "transformers": _load_transformers,
                     "village-truth": _load_village_truth}


def load_segmenter_spec(s: SegmenterSpec, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Instantiate the segmenter a spec entry declares (families: village, module, transformers)."""
    device = torch.device(device)
    if not Path(s.checkpoint).exists():
        raise ZooError(f"checkpoint not found: {s.checkpoint}")
    loader = SEGMENTER_LOADERS.get(s.family)
    if loader is None:
        raise ZooError(f"segmenter family {s.family!r} is not supported; families: {', '.join(SEGMENTER_LOADERS)}")
    return loader(s, device).eval()


def resolution_record(generator: Generator, segmenter: Segmenter) -> dict[str, Any]:
    """How generated images meet the segmenter: both resolutions and the resizing applied (for run records).

    Images are resized to the segmenter's resolution (bilinear, antialiased when shrinking) and
    featuremaps are upsampled to it; a segmenter with its own input size resizes again inside."""
    g, s = int(generator.resolution), int(segmenter.resolution)
    rec: dict[str, Any] = {"generator_resolution": g, "segmenter_resolution": s,
                           "images": "as generated" if g == s else ("downsampled" if g > s else "upsampled")}
    size = getattr(segmenter, "input_size", None)
    if size is not None:
        rec["segmenter_input_size"] = list(size)
    return rec


@functools.lru_cache(maxsize=64)
def _describe_model_cached(m: ModelSpec) -> Any:
    return load_model_spec(m, "cpu")


def describe_model(m: ModelSpec) -> Any:
    """The CPU instance of a declared generator (cached per process): `.layers`, `.z_dim`, `.resolution`."""
    try:
        return _describe_model_cached(m)
    except ZooError:
        raise
    except Exception as e:
        raise ZooError(f"{m.checkpoint}: cannot load as {m.family}: {str(e).splitlines()[0]}") from None


@functools.lru_cache(maxsize=16)
def describe_segmenter(s: SegmenterSpec) -> Any:
    """The CPU instance of a declared segmenter (cached per process): `.concepts`, `.resolution`."""
    try:
        return load_segmenter_spec(s, "cpu")
    except ZooError:
        raise
    except Exception as e:
        raise ZooError(f"{s.checkpoint}: cannot load as {s.family}: {str(e).splitlines()[0]}") from None
