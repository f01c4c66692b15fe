"""Bad inputs, table-driven: every case is answered with ONE line of output, exit status 2, and nothing
written (the case's directory is byte-for-byte unchanged: no store, no `.gate`, no `.cache/`, no PNG).

Each case names the files of its directory (a spec, a store, a checkpoint, ...), the `gandissect`
arguments and a fragment the message must hold. Runs in-process (`compute.cli.main`) in the case's
directory. Placeholders in file texts and arguments: {gan}, {seg} (tiny models of tests/conftest.py),
{evil} (a pickle that calls os.system).
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch

from compute.cli import main

DIR, SQLITE, DUCKDB, EVIL = object(), object(), object(), object()  # file sentinels

MODEL = '''
[[models]]
name = "tiny"
family = "progan"
checkpoint = "{gan}"
'''
SEG = '''
[[segmenters]]
name = "tiny-seg"
family = "village"
checkpoint = "{seg}"
'''
STORE = '[store]\npath = "store.duckdb"\n'


def q(extra: str = "", kind: str = "quantiles", name: str = "a") -> str:
    """One analysis entry of `kind` (a segmenter unless quantiles) with extra key lines."""
    seg = '' if kind == "quantiles" else 'segmenter = "tiny-seg"\n'
    return (f'\n[[analyses]]\nname = "{name}"\nkind = "{kind}"\nmodels = ["tiny"]\nlayers = ["layer3"]\n'
            f'{seg}samples = 8\nseed = 1\n{extra}\n')


def spec(analyses: str | None = None, models: str = MODEL, segs: str = SEG, store: str = STORE) -> dict[str, Any]:
    return {"spec.toml": store + models + segs + (q() if analyses is None else analyses)}


RUN = ["run", "--quiet", "spec.toml"]
SQL = ["sql", "--db", "store.duckdb"]
EDIT = ["edit", "--model", "tiny", "--seed", "1", "--sample", "0", "--brush", "tree", "--action", "draw"]


def edit(region: str = "0,0,8,8", out: str = "e.png", *extra: str) -> list[str]:
    return [*EDIT, "--region", region, "--out", out, *extra]


def sql(query: str, *extra: str) -> tuple[dict[str, Any], list[str]]:
    return {"store.duckdb": DUCKDB}, [*SQL, query, *extra]


# id -> (files, argv, fragment of the one-line message)
CASES: dict[str, tuple[dict[str, Any], list[str], str]] = {
    # ---- spec file and structure
    "spec missing": ({}, RUN, "not found"),
    "spec is a directory": ({"spec.toml": DIR}, RUN, "is a directory"),
    "spec not utf-8": ({"spec.toml": b"[store]\npath = \"\xff\xfe.duckdb\"\n"}, RUN, "not UTF-8"),
    "malformed toml": ({"spec.toml": "[[models]\nname = 1"}, RUN, "malformed TOML"),
    "store is a string": ({"spec.toml": 'store = "x"\n' + MODEL + q()}, RUN, "must be a table"),
    "analyses are numbers": ({"spec.toml": "analyses = [1, 2]\n" + STORE + MODEL}, RUN, "must be a table"),
    "models is a string": ({"spec.toml": 'models = "tiny"\n' + STORE}, RUN, "must be [[models]] tables"),
    "store path is a number": (spec(store="[store]\npath = 5\n"), RUN, "non-empty string"),
    "store path empty": (spec(store='[store]\npath = ""\n'), RUN, "non-empty string"),
    "store pth": (spec(store='[store]\npth = "x.duckdb"\n'), RUN, "did you mean 'path'"),
    "top-level analysis": ({"spec.toml": STORE + MODEL + '[[analysis]]\nkind = "quantiles"\n'}, RUN,
                           "did you mean 'analyses'"),
    "empty spec": ({"spec.toml": ""}, RUN, "declares no analyses"),
    "spec without analyses": (spec(analyses=""), RUN, "declares no analyses"),
    # ---- models
    "model checkpiont": (spec(models=MODEL.replace("checkpoint", "checkpiont")), RUN, "did you mean 'checkpoint'"),
    "model familly": (spec(models=MODEL.replace("family", "familly")), RUN, "did you mean 'family'"),
    "model nmae": (spec(models=MODEL.replace("name", "nmae")), RUN, "did you mean 'name'"),
    "model family progann": (spec(models=MODEL.replace('"progan"', '"progann"')), RUN, "did you mean 'progan'"),
    "progan with truncation": (spec(models=MODEL + "truncation = 0.7\n"), RUN, "belongs to family stylegan2"),
    "stylegan2 truncaton": (spec(models=MODEL.replace('"progan"', '"stylegan2"') + "truncaton = 0.7\n"), RUN,
                            "did you mean 'truncation'"),
    "stylegan2 input x": (spec(models=MODEL.replace('"progan"', '"stylegan2"') + 'input = "x"\n'), RUN,
                          "one of 'z', 'w'"),
    "stylegan2 truncation text": (spec(models=MODEL.replace('"progan"', '"stylegan2"') + 'truncation = "high"\n'),
                                  RUN, "not a finite number"),
    "module factroy": (spec(models=MODEL.replace('"progan"', '"module"') + 'factroy = "a:b"\n'), RUN,
                       "did you mean 'factory'"),
    "module factory without colon": (spec(models=MODEL.replace('"progan"', '"module"') + 'factory = "ab"\n'), RUN,
                                     "module:function"),
    "model z_dim negative": (spec(models=MODEL + "z_dim = -1\n"), RUN, "out of range"),
    "model dataset number": (spec(models=MODEL + "dataset = 5\n"), RUN, "must be a string"),
    "model checkpoint number": (spec(models=MODEL.replace('"{gan}"', "5")), RUN, "must be str"),
    "model checkpoint missing": (spec(models=MODEL.replace("{gan}", "nope.safetensors")), RUN, "file not found"),
    "model glob matches nothing": (spec(models=MODEL.replace("{gan}", "nope-*.safetensors")), RUN, "no file matches"),
    "model name duplicate": (spec(models=MODEL + MODEL), RUN, "duplicate model name"),
    "analyses key under models": (spec(models=MODEL + 'analyses = ["x"]\n'), RUN, "cannot sit inside"),
    "model pickle calls os.system": ({**spec(models=MODEL.replace("{gan}", "evil.pth")), "evil.pth": EVIL}, RUN,
                                     "needs code to load (posix.system)"),
    # ---- segmenters
    "analyses key under segmenters": (spec(segs=SEG + 'analyses = ["x"]\n'), RUN, "cannot sit inside"),
    "segmenter checkpiont": (spec(segs=SEG.replace("checkpoint", "checkpiont")), RUN, "did you mean 'checkpoint'"),
    "segmenter family vilage": (spec(segs=SEG.replace('"village"', '"vilage"')), RUN, "did you mean 'village'"),
    "village segmenter resolution": (spec(segs=SEG + "resolution = 64\n"), RUN, "belongs to family module"),
    "transformers inputsize": (spec(segs=SEG.replace('"village"', '"transformers"') + "inputsize = [4, 4]\n"), RUN,
                               "did you mean 'input_size'"),
    "module segmenter labels_fil": (spec(segs=SEG.replace('"village"', '"module"') + 'labels_fil = "x"\n'), RUN,
                                    "did you mean 'labels_file'"),
    "segmenter resolution zero": (spec(segs=SEG.replace('"village"', '"module"') + "resolution = 0\n"), RUN,
                                  "integer in [1, 8192]"),
    "segmenter name duplicate": (spec(segs=SEG + SEG), RUN, "duplicate segmenter name"),
    "segmenter checkpoint missing": (spec(segs=SEG.replace("{seg}", "nope.safetensors")), RUN, "file not found"),
    # ---- analyses: structure
    "treshold": (spec(q('treshold = "iqr"')), RUN, "did you mean 'threshold'"),
    "samplez": (spec(q("samplez = 10")), RUN, "did you mean 'samples'"),
    "kind disect": (spec(q(kind="disect")), RUN, "did you mean 'dissect'"),
    "kind missing": (spec(q().replace('kind = "quantiles"\n', "")), RUN, "key 'kind': missing"),
    "kidn": (spec(q().replace("kind =", "kidn =")), RUN, "did you mean 'kind'"),
    "model tinyy": (spec(q().replace('["tiny"]', '["tinyy"]')), RUN, "did you mean 'tiny'"),
    "models empty": (spec(q().replace('["tiny"]', "[]")), RUN, "at least one model"),
    "models number": (spec(q().replace('["tiny"]', "5")), RUN, "must be a model name"),
    "layers number": (spec(q().replace('["layer3"]', "5")), RUN, "must be \"all\" or a list"),
    "layer unknown": (spec(q().replace('["layer3"]', '["layer99"]')), RUN, "has no layer 'layer99'"),
    "dissect without segmenter": (spec(q(kind="dissect").replace('segmenter = "tiny-seg"\n', "")), RUN,
                                  "needs a segmenter"),
    "segmenter tiny-sge": (spec(q(kind="dissect").replace('"tiny-seg"', '"tiny-sge"')), RUN,
                           "did you mean 'tiny-seg'"),
    "samples negative": (spec(q().replace("samples = 8", "samples = -3")), RUN, "positive integer"),
    "samples 10^12": (spec(q().replace("samples = 8", "samples = 1000000000000")), RUN, "<= 10,000,000"),
    "samples text": (spec(q().replace("samples = 8", 'samples = "many"')), RUN, "positive integer"),
    "samples float": (spec(q().replace("samples = 8", "samples = 8.5")), RUN, "positive integer"),
    "seed negative": (spec(q().replace("seed = 1", "seed = -1")), RUN, "non-negative integer"),
    "threshold q1.5": (spec(q('threshold = "q1.5"')), RUN, "not a threshold mode"),
    "threshold median": (spec(q('threshold = "median"')), RUN, "not a threshold mode"),
    "batch_size zero": (spec(q("batch_size = 0")), RUN, "positive integer"),
    "concept unicorn": (spec(q('concepts = ["unicorn"]', kind="dissect")), RUN, "has no concept 'unicorn'"),
    "concepts number": (spec(q("concepts = 5", kind="dissect")), RUN, "must be a concept name"),
    "analysis name duplicate": (spec(q() + q()), RUN, "duplicate analysis name"),
    "analysis name number": (spec(q().replace('name = "a"', "name = 5")), RUN, "non-empty string"),
    # ---- analyses: each kind's parameters (compute/analyses/params.py)
    "dissect holdout_samples -3": (spec(q("holdout_samples = -3", kind="dissect")), RUN, "out of range"),
    "quantiles topk many": (spec(q('topk = "many"')), RUN, "not an integer"),
    "quantiles topk 0": (spec(q("topk = 0")), RUN, "out of range"),
    "dissect upsample bilinear": (spec(q('upsample = "bilinear"', kind="dissect")), RUN, "one of 'pnas'"),
    "dissect parts half": (spec(q('parts = "half"', kind="dissect")), RUN, "one of 'none', 'quad'"),
    "dissect iqr_threshold global": (spec(q('iqr_threshold = "global"', kind="dissect")), RUN, "'unit_concept'"),
    "dissect null_block 1": (spec(q("null_block = 1", kind="dissect")), RUN, "integer in [2, 64]"),
    "dissect upsampel": (spec(q('upsampel = "pnas"', kind="dissect")), RUN, "did you mean 'upsample'"),
    "ace penalty l1": (spec(q('penalty = "l1"', kind="ace")), RUN, "one of 'l2', 'l2sq'"),
    "ace lr 0": (spec(q("lr = 0", kind="ace")), RUN, "out of range"),
    "ace epochs 0": (spec(q("epochs = 0", kind="ace")), RUN, "out of range"),
    "ace epoch": (spec(q("epoch = 3", kind="ace")), RUN, "did you mean 'epochs'"),
    "topk on an ace analysis": (spec(q("topk = 3", kind="ace")), RUN, "a parameter of quantiles, dissect"),
    "realism top_fraction 5": (spec(q("top_fraction = 5", kind="realism")), RUN, "out of range"),
    "realism real_samples 0": (spec(q("real_samples = 0", kind="realism")), RUN, "out of range"),
    "realism features clip": (spec(q('features = "clip"', kind="realism")), RUN, "one of 'segmenter'"),
    "realism real_exclude number": (spec(q("real_exclude = 5", kind="realism")), RUN, "list of strings"),
    "repair manual auto": (spec(q('manual = "auto"', kind="repair")), RUN, '"concept:<name>"'),
    "repair manual_min_iou 2": (spec(q("manual_min_iou = 2", kind="repair")), RUN, "out of range"),
    "trace location one number": (spec(q("location = [1]", kind="trace")), RUN, "2 integers"),
    "ablate n_units text": (spec(q('n_units = ["a"]', kind="ablate")), RUN, "not a list of integers"),
    "insert radius -1": (spec(q("radius = -1", kind="insert")), RUN, "out of range"),
    # ---- run arguments
    "--only unknown": (spec(), [*RUN, "--only", "nosuch"], "no analysis named 'nosuch'"),
    "--only with an unfinished dependency": (spec(q(kind="dissect", name="d") + q(kind="ace", name="c")),
                                             [*RUN, "--only", "c"], "is not done"),
    "--device cuda without cuda": (spec(), [*RUN, "--device", "cuda"], "no CUDA device"),
    "--device tpu": (spec(), [*RUN, "--device", "tpu"], "invalid choice"),
    "unknown command": ({}, ["frobnicate"], "invalid choice"),
    # ---- store paths
    "store is sqlite": ({**spec(), "store.duckdb": SQLITE}, RUN, "a SQLite database"),
    "store is empty": ({**spec(), "store.duckdb": b""}, RUN, "an empty file"),
    "store is a directory": ({**spec(), "store.duckdb": DIR}, RUN, "is a directory"),
    "store is text": ({**spec(), "store.duckdb": "hello\n"}, RUN, "a text file"),
    "store under a file": ({**spec(store='[store]\npath = "f/store.duckdb"\n'), "f": "x"}, RUN, "is a file, not a directory"),
    "status of a sqlite store": ({**spec(), "store.duckdb": SQLITE}, ["status", "spec.toml"], "a SQLite database"),
    "sql on a sqlite store": ({"store.duckdb": SQLITE}, [*SQL, "select 1"], "a SQLite database"),
    "sql on a directory": ({"store.duckdb": DIR}, [*SQL, "select 1"], "is a directory"),
    "sql without a store": ({}, [*SQL, "select 1"], "no store at"),
    # ---- SQL
    "sql delete": sql("delete from runs", ) + ("DELETE writes",),
    "sql analyze": sql("analyze") + ("ANALYZE",),
    "sql checkpoint": sql("checkpoint") + ("CHECKPOINT",),
    "sql pivot without IN": sql("pivot runs on status using count(*)") + ("PIVOT",),
    "sql install": sql("install sqlite") + ("extensions",),
    "sql force install": sql("force install sqlite") + ("extensions",),
    "sql force checkpoint": sql("force checkpoint") + ("FORCE CHECKPOINT",),
    "sql read_csv": sql("select * from read_csv('/etc/passwd')") + ("external access",),
    "sql two statements": sql("select 1; select 2") + ("2 statements",),
    "sql syntax": sql("selec 1") + ("syntax error",),
    "sql timeout 0": sql("select 1", "--timeout", "0") + ("time limit",),
    "sql timeout -1": sql("select 1", "--timeout", "-1") + ("time limit",),
    "sql timeout nan": sql("select 1", "--timeout", "nan") + ("time limit",),
    "sql timeout inf": sql("select 1", "--timeout", "inf") + ("time limit",),
    "sql limit 0": sql("select 1", "--limit", "0") + ("row limit",),
    "sql format xml": sql("select 1", "--format", "xml") + ("invalid choice",),
    # ---- edit: every argument checked before anything is computed or written
    "edit region negative first": ({}, edit("-5,0,10,10"), "x0 and y0 must be >= 0"),
    "edit region three numbers": ({}, edit("1,2,3"), "four integers"),
    "edit region empty": ({}, edit("10,10,5,5"), "is empty"),
    "edit out txt": ({}, edit(out="x.txt"), "ending in .png"),
    "edit out directory": ({"outdir": DIR}, edit(out="outdir"), "is a directory"),
    "edit out in a missing directory": ({}, edit(out="nodir/e.png"), "does not exist"),
    "edit far sample": ({}, [*edit(), "--sample", "20000000"], "--sample in [0, 10,000,000)"),
    "edit negative sample": ({}, [*edit(), "--sample", "-1"], "--sample in [0"),
    "edit strength 5": ({}, [*edit(), "--strength", "5"], "out of range"),
    "edit action paint": ({}, [*EDIT[:-1], "paint", "--region", "0,0,8,8"], "invalid choice"),
    "edit without region": ({}, EDIT, "required"),
}


def _make(directory: Path, files: dict[str, Any], fill: dict[str, str]) -> None:
    for name, content in files.items():
        p = directory / name
        if content is DIR:
            p.mkdir()
        elif content is SQLITE:
            with sqlite3.connect(p) as con:
                con.execute("create table runs (run_key text)")
            con.close()
        elif content is DUCKDB:
            from db import store

            with store.session(str(p)) as c:
                store.ensure_schema(c)
            gate = Path(store.gate_path(str(p)))
            gate.unlink(missing_ok=True)
        elif content is EVIL:
            torch.save({"g": _Evil()}, p)
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            for k, v in fill.items():
                content = content.replace("{" + k + "}", v)
            p.write_text(content)


class _Evil:
    def __reduce__(self):  # never called by gandissect: the weights-only unpickler refuses it
        return (os.system, ("echo pwned > pwned.txt",))


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every path under `directory` with its size and modification time."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for n in dirs + files:
            p = Path(root) / n
            st = p.lstat()
            out[str(p.relative_to(directory))] = (st.st_size, st.st_mtime_ns)
    return out


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 60, len(CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case: str, tmp_path: Path, tiny_gan: Path, tiny_seg: Path, capsys, monkeypatch) -> None:
    files, argv, fragment = CASES[case]
    monkeypatch.delenv("GANDISSECT_DB", raising=False)
    monkeypatch.delenv("GANDISSECT_ALLOWED_HOSTS", raising=False)
    _make(tmp_path, files, {"gan": str(tiny_gan), "seg": str(tiny_seg)})
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    lines = [ln for ln in (out + err).splitlines() if ln.strip()]
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1, lines
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in lines[0] and "weights_only" not in lines[0]
    assert snapshot(tmp_path) == before, "a bad input wrote or changed a file"
