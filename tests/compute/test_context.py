"""compute/jobs/context.py: `RunContext.cached` builds a value once per context (and is the only way into
the context's model cache), and `pass_name` gives distinct tuples of parts distinct checkpoint names, so
concepts or layers named like another pass ("pool", "k", "a.b") never share a checkpoint. The intervention
analyses (ace, insert, trace) name their passes with it (checked on a run of tiny models)."""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch

from compute.jobs import context
from compute.jobs.context import RunContext, pass_name
from tests.helpers import intervention_analyses, model, run_spec_in, segmenter, spec_text, write_spec

ROOT = Path(__file__).resolve().parents[2]


def test_cached_builds_once_per_key(tmp_path: Path) -> None:
    ctx = RunContext(device=torch.device("cpu"), store=str(tmp_path / "s.duckdb"))
    built: list[str] = []

    def build(v: str):
        return lambda: (built.append(v), v)[1]

    assert ctx.cached("a", build("x")) == "x" and ctx.cached("a", build("y")) == "x"
    assert ctx.cached("b", build("y")) == "y" and built == ["x", "y"]
    other = RunContext(device=torch.device("cpu"), store=str(tmp_path / "s.duckdb"))
    assert other.cached("a", build("z")) == "z"  # one cache per context


def test_no_module_outside_the_context_reaches_into_its_cache() -> None:
    offenders = [str(p.relative_to(ROOT)) for folder in ("compute", "dashboard", "ingest", "db")
                 for p in (ROOT / folder).rglob("*.py")
                 if p != ROOT / "compute/jobs/context.py" and re.search(r"\._models\b", p.read_text())]
    assert not offenders, f"use RunContext.cached instead of its private cache: {offenders}"


TRICKY = ["pool", "k", "pool-k", "a.b", "a", "b", "x/y", "%2E", "..", "é", "pool.change"]


def test_distinct_parts_give_distinct_names() -> None:
    tuples = [t for n in (1, 2, 3, 4) for t in itertools.product(TRICKY, repeat=n)]
    names = {pass_name(*t) for t in tuples}
    assert len(names) == len(tuples)
    assert all(re.fullmatch(r"[A-Za-z0-9_%\-][A-Za-z0-9_%.\-]*", n) for n in names)  # one file name: no "/", not "."


def test_the_collisions_the_review_found_are_gone() -> None:
    # trace's pool pass vs the changes of a concept named "pool"; a dotted layer vs a dotted concept
    assert pass_name("trace", "layer4", "pool") != pass_name("trace", "layer4", "pool", "change")
    assert pass_name("insert", "a.b", "c", "effects") != pass_name("insert", "a", "b.c", "effects")
    assert pass_name("ace", "g", "k", "alpha") != pass_name("ace", "g.k", "alpha")
    # plain parts keep the former names (a run in progress before this change resumes)
    assert pass_name("insert", "layer4", "tree", "effects") == "insert.layer4.tree.effects"


def test_long_names_end_in_a_hash_and_stay_distinct() -> None:
    a, b = pass_name("trace", "x" * 400, "pool"), pass_name("trace", "x" * 400, "pol")
    assert a != b and len(a) <= context._MAX_NAME and "~" in a
    assert "~" not in pass_name("trace", "x" * 100, "pool")
    for bad in [(), ("trace", "")]:
        with pytest.raises(ValueError):
            pass_name(*bad)


def test_ace_insert_and_trace_name_their_checkpoints_by_parts(tmp_path: Path, tiny_gan: Path, tiny_seg: Path,
                                                              checkpoint_names: list[str]) -> None:
    names = checkpoint_names
    text = spec_text(tmp_path / "store.duckdb", models=[model("tiny", tiny_gan)],
                     segmenters=[segmenter("tiny-seg", tiny_seg)],
                     analyses=intervention_analyses(
                         "tiny", "tiny-seg", "layer4", dissect=dict(samples=8, seed=2, batch_size=8),
                         ace=dict(samples=6, seed=2, concepts=["tree"], epochs=1, steps_per_epoch=1, batch=4,
                                  eval_items=4),
                         insert=dict(samples=2, seed=3, concepts=["tree"], units=2),
                         trace=dict(samples=2, seed=3, concepts=["tree"], units=2, location=[2, 3])))
    out = run_spec_in(tmp_path, write_spec(tmp_path, text))
    assert [o.state for o in out] == ["done"] * 4, [o.error for o in out]
    expected = {pass_name(*p) for p in [("ace", "layer4", "pool"), ("ace", "layer4", "tree", "alpha"),
                                        ("insert", "layer4", "k"), ("insert", "layer4", "tree", "effects"),
                                        ("trace", "layer4", "pool"), ("trace", "layer4", "tree", "change")]}
    assert expected <= set(names), sorted(set(names))
    assert not [n for n in names if n.startswith(("ace.", "insert.", "trace.")) and n not in expected]
