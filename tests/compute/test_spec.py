"""Every spec error is one line naming file, entry and key; the CLI exits 2 and writes nothing."""
from __future__ import annotations

from pathlib import Path

import pytest

from compute import spec as specmod
from compute.cli import main
from tests.conftest import write_spec

HEAD = """
[store]
path = "{store}"

[[models]]
name = "tiny"
family = "progan"
checkpoint = "{ckpt}"
"""


def _spec(tmp_path: Path, tiny_gan: Path, analyses: str, extra_models: str = "") -> Path:
    return write_spec(tmp_path, HEAD.format(store=tmp_path / "s.duckdb", ckpt=tiny_gan) + extra_models + analyses)


def test_valid_spec_parses(quantile_spec: Path) -> None:
    s = specmod.load(quantile_spec)
    a = s.analysis("tiny-quantiles")
    assert a.kind == "quantiles" and a.models == ("tiny",) and a.layers == ("layer2", "layer4")
    assert a.samples == 64 and a.seed == 3 and a.param("batch_size") == 16


CASES = {
    "unknown kind": ('[[analyses]]\nkind = "frobnicate"\nmodels = ["tiny"]\n', "kind", "allowed"),
    "unknown model": ('[[analyses]]\nkind = "quantiles"\nmodels = ["nope"]\n', "models", "unknown model"),
    "zero samples": ('[[analyses]]\nkind = "quantiles"\nmodels = ["tiny"]\nsamples = 0\n', "samples", "positive"),
    "negative samples": ('[[analyses]]\nkind = "quantiles"\nmodels = ["tiny"]\nsamples = -5\n', "samples", "positive"),
    "bad layer": ('[[analyses]]\nkind = "quantiles"\nmodels = ["tiny"]\nlayers = ["layer99"]\n', "layers",
                  "available: layer1"),
    "unknown segmenter": ('[[analyses]]\nkind = "dissect"\nmodels = ["tiny"]\nsegmenter = "nope"\n', "segmenter",
                          "unknown segmenter"),
    "bad threshold": ('[[analyses]]\nkind = "quantiles"\nmodels = ["tiny"]\nthreshold = "q2"\n', "threshold",
                      "allowed"),
    "duplicate analysis": ('[[analyses]]\nname="a"\nkind = "quantiles"\nmodels = ["tiny"]\n'
                           '[[analyses]]\nname="a"\nkind = "quantiles"\nmodels = ["tiny"]\n', "name", "duplicate"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_spec_errors_are_one_clear_line(tmp_path: Path, tiny_gan: Path, case: str, capsys) -> None:
    body, key, fragment = CASES[case]
    path = _spec(tmp_path, tiny_gan, body)
    with pytest.raises(specmod.SpecError) as e:
        specmod.load(path)
    msg = str(e.value)
    assert str(path) in msg and f"key '{key}'" in msg and fragment in msg and "\n" not in msg
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "s.duckdb").exists()  # nothing written


def test_duplicate_model_names(tmp_path: Path, tiny_gan: Path) -> None:
    dup = f'\n[[models]]\nname = "tiny"\nfamily = "progan"\ncheckpoint = "{tiny_gan}"\n'
    with pytest.raises(specmod.SpecError, match="duplicate model name"):
        specmod.load(_spec(tmp_path, tiny_gan, "", extra_models=dup))


def test_missing_checkpoint(tmp_path: Path, tiny_gan: Path) -> None:
    path = write_spec(tmp_path, '[[models]]\nname = "m"\nfamily = "progan"\ncheckpoint = "missing.safetensors"\n')
    with pytest.raises(specmod.SpecError, match=r"models\[0\] \(m\): key 'checkpoint': file not found"):
        specmod.load(path)


def test_unknown_family(tmp_path: Path) -> None:
    path = write_spec(tmp_path, '[[models]]\nname = "m"\nfamily = "vae"\ncheckpoint = "x"\n')
    with pytest.raises(specmod.SpecError, match="unknown family 'vae'; allowed: progan"):
        specmod.load(path)


def test_malformed_toml_names_the_line(tmp_path: Path) -> None:
    path = write_spec(tmp_path, '[store]\npath = "x.duckdb"\n\n[[models]\nname = 1\n')
    with pytest.raises(specmod.SpecError, match=r"malformed TOML: .*line 4"):
        specmod.load(path)


def test_glob_checkpoints_expand_to_models(tmp_path: Path, tiny_gan: Path) -> None:
    import shutil

    for step in (10, 20):
        shutil.copy(tiny_gan, tmp_path / f"run-step{step}.safetensors")
    path = write_spec(tmp_path, '[[models]]\nname = "run"\nfamily = "progan"\ncheckpoint = "run-step*.safetensors"\n'
                                '[[analyses]]\nkind = "quantiles"\nmodels = ["run"]\nsamples = 8\n')
    s = specmod.load(path)
    assert [m.name for m in s.models] == ["run@run-step10", "run@run-step20"]
    assert s.analyses[0].models == ("run@run-step10", "run@run-step20")
