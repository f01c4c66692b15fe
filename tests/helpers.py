"""What many tests share: spec files built from Python values, the bundled models' spec entries, and
running a spec in a folder.

Reads nothing; writes the spec files it is asked for (and, through the runner, the spec's store).

    write_spec_of(tmp_path, store=tmp_path / "s.duckdb", models=[model("tiny", tiny_gan)],
                  analyses=[analysis("q", "quantiles", "tiny", layers=["layer2"], samples=64)])
"""
from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path
from typing import Any, Iterable, Mapping

from compute.bench.specs import toml_value  # the one TOML value writer (the benches' spec files use it too)

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "ingest" / "zoo"
Entry = Mapping[str, Any]


def _tables(header: str, entries: Iterable[Entry]) -> list[str]:
    return [f"[[{header}]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in e.items()) for e in entries]


def spec_text(store: str | Path, models: Iterable[Entry] = (), segmenters: Iterable[Entry] = (),
              analyses: Iterable[Entry] = ()) -> str:
    """A spec file's text: [store] path, then [[models]], [[segmenters]] and [[analyses]] tables."""
    parts = [f"[store]\npath = {toml_value(store)}\n", *_tables("models", models),
             *_tables("segmenters", segmenters), *_tables("analyses", analyses)]
    return "\n".join(parts)


def write_spec(directory: Path, body: str, name: str = "spec.toml") -> Path:
    """Write a spec's text (dedented) as directory/name."""
    p = directory / name
    p.write_text(textwrap.dedent(body))
    return p


def write_spec_of(directory: Path, *, store: str | Path, models: Iterable[Entry] = (),
                  segmenters: Iterable[Entry] = (), analyses: Iterable[Entry] = (), name: str = "spec.toml") -> Path:
    """`spec_text(...)` written as directory/name."""
    return write_spec(directory, spec_text(store, models, segmenters, analyses), name)


def model(name: str, checkpoint: str | Path, family: str = "progan", **options: Any) -> dict[str, Any]:
    """A [[models]] entry."""
    return {"name": name, "family": family, "checkpoint": str(checkpoint), **options}


def segmenter(name: str, checkpoint: str | Path, family: str = "village", **options: Any) -> dict[str, Any]:
    """A [[segmenters]] entry."""
    return {"name": name, "family": family, "checkpoint": str(checkpoint), **options}


def analysis(name: str, kind: str, models: str | list[str], **keys: Any) -> dict[str, Any]:
    """An [[analyses]] entry (`models`: one name or a list)."""
    return {"name": name, "kind": kind, "models": [models] if isinstance(models, str) else list(models), **keys}


VILLAGE_GAN = model("village-gan", ZOO / "village-gan.safetensors", dataset="village")
VILLAGE_SEG = segmenter("village-seg", ZOO / "village-seg.safetensors")
VILLAGE_CLS = model("village-cls", ZOO / "village-cls.safetensors", family="village-cls", role="classifier")
VILLAGE_TRUTH = segmenter("village-truth", ROOT / "ingest" / "village" / "render.py", family="village-truth")


def run_spec_in(directory: Path, spec_path: Path) -> list:
    """Run every analysis of a spec with `directory` as the working directory (its `.cache/` lives there)."""
    from compute import runner, spec as specmod

    with contextlib.chdir(directory):
        return runner.run(specmod.load(spec_path), quiet=True, echo=lambda m: None)


INTERVENTION_NAMES = {"dissect": "d", "ace": "a", "ablate": "ab", "insert": "ins", "trace": "tr", "realism": "real",
                      "repair": "rep"}


def intervention_analyses(model_name: str, segmenter_name: str, layer: str, **kinds: Mapping[str, Any]
                          ) -> list[dict[str, Any]]:
    """The intervention chain of one model at one layer as [[analyses]] entries, in the order given: one
    entry per keyword (dissect, ace, ablate, insert, trace, realism, repair) named d, a, ab, ins, tr, real,
    rep, with that kind's keys, e.g. `intervention_analyses("tiny", "seg", "layer4", dissect={...}, ace={...})`."""
    return [analysis(INTERVENTION_NAMES[kind], kind, model_name, segmenter=segmenter_name, layers=[layer], **keys)
            for kind, keys in kinds.items()]
