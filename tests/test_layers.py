"""The import rule of the project: no circles, and no import that runs up a layer.

Reads every .py file under compute/, ingest/, db/ and dashboard/ with `ast` (module-level imports and
the ones inside functions, `if TYPE_CHECKING:` blocks included: a circle that only a lazy import keeps
from failing is still a circle; a package whose __init__.py imports project modules is a dependency of
everything that imports one of its submodules, since Python runs that __init__ first); writes nothing;
imports none of them.

The top layers, lowest first: db < ingest < compute < dashboard. A module may import its own layer
and the layers below it; db never imports torch. Inside compute, lowest first (docs/layout.md):

    core      torch primitives (Tap, Stats, interventions, features, Frechet, the layer probe) and the
              inversion primitives (compute/invert/{encoder,optimise,omissions}.py)
    spec      the job file, the registry of analysis kinds and each kind's parameter table
              (compute/spec.py, analyses/__init__.py, analyses/params.py)
    jobs      one (analysis, model, layer) job's context: models, store, resume
    analyses  one module per analysis kind
    runner    plans and runs a spec's jobs
    tools     paint, train, reports, bench, the rest of invert, images: products built on the above
    cli       the `gandissect` command

    .venv/bin/python -m pytest -q tests/test_layers.py
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_LAYERS = ("db", "ingest", "compute", "dashboard")  # lowest first

# compute's layers, lowest first: module-name prefixes (the longest matching prefix decides)
COMPUTE_LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("compute.core", "compute.invert.encoder", "compute.invert.optimise", "compute.invert.omissions")),
    ("spec", ("compute.spec", "compute.analyses.params", "=compute.analyses")),  # =: the package face only
    ("jobs", ("compute.jobs",)),
    ("analyses", ("compute.analyses",)),
    ("runner", ("compute.runner",)),
    ("tools", ("compute.paint", "compute.train", "compute.reports", "compute.bench", "compute.invert",
               "compute.images", "compute.watch")),
    ("cli", ("compute.cli", "compute")),
)


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the four top packages."""
    out: dict[str, Path] = {}
    for top in TOP_LAYERS:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imported_names(path: Path, name: str) -> set[str]:
    """Every dotted name `path` imports anywhere in its body (`from a import b` gives a.b: the module
    a.b, or the name b of module a)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> project modules it imports, module -> every dotted name it imports)."""
    mods = modules()

    def owner(dotted: str) -> str | None:
        while dotted and dotted not in mods:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    edges: dict[str, set[str]] = {}
    raw: dict[str, set[str]] = {}
    for name, path in mods.items():
        raw[name] = imported_names(path, name)
        edges[name] = {o for n in raw[name] if (o := owner(n)) is not None and o != name}
    # importing a.b.c runs a/__init__.py and a/b/__init__.py first: a package face that imports project
    # modules itself is a dependency of every module importing one of its submodules
    faces = {m for m, p in mods.items() if p.name == "__init__.py" and edges[m]}
    for name in mods:
        edges[name] |= {f for d in list(edges[name]) for f in faces
                        if d.startswith(f + ".") and not name.startswith(f + ".") and f != name}
    return edges, raw


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_path_through(sorted(component), edges))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _path_through(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """One circle inside a component: a -> ... -> a (breadth-first back to the start)."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    return component


def top_rank(module: str) -> int:
    return TOP_LAYERS.index(module.split(".")[0])


def compute_layer(module: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(COMPUTE_LAYERS):
        for p in prefixes:
            exact = p.startswith("=") or p == "compute"  # the bare module only (a package face)
            p = p.lstrip("=")
            covers = module == p or (module.startswith(p + ".") and not exact)
            if exact and covers:
                return i
            if covers and len(p) > best:
                best, rank = len(p), i
    assert rank >= 0, f"{module} is in no compute layer: add it to COMPUTE_LAYERS (and docs/layout.md)"
    return rank


def test_no_import_circles() -> None:
    found = cycles(graph()[0])
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_import_runs_up_a_top_layer() -> None:
    edges, raw = graph()
    upward = [f"{m} -> {d}" for m, ds in sorted(edges.items()) for d in sorted(ds) if top_rank(d) > top_rank(m)]
    assert not upward, "imports that run up a layer (db < ingest < compute < dashboard):\n" + "\n".join(upward)
    torch_in_db = [m for m, names in sorted(raw.items())
                   if m.split(".")[0] == "db" and any(n == "torch" or n.startswith("torch.") for n in names)]
    assert not torch_in_db, f"db imports torch: {torch_in_db}"


def test_compute_layers() -> None:
    edges, _ = graph()
    for m in edges:
        if m.split(".")[0] == "compute":
            compute_layer(m)  # every module sits in a listed layer (a new folder is added to COMPUTE_LAYERS)
    names = [n for n, _ in COMPUTE_LAYERS]
    upward = [f"{m} ({names[compute_layer(m)]}) -> {d} ({names[compute_layer(d)]})"
              for m, ds in sorted(edges.items()) if m.split(".")[0] == "compute"
              for d in sorted(ds) if d.split(".")[0] == "compute" and compute_layer(d) > compute_layer(m)]
    assert not upward, f"compute imports that run up its layers ({' < '.join(names)}):\n" + "\n".join(upward)


def test_the_walk_sees_lazy_imports(tmp_path: Path) -> None:
    """The walker must see imports inside functions and TYPE_CHECKING blocks, and relative ones."""
    f = tmp_path / "m.py"
    f.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a.b import C\n"
                 "def f():\n    import x.y\n    from . import sibling\n")
    names = imported_names(f, "pkg.m")
    assert {"a.b.C", "x.y", "pkg.sibling"} <= names


def test_a_package_face_that_imports_counts(tmp_path: Path, monkeypatch) -> None:
    """`import p.m` runs p/__init__.py: when that imports q, the importer depends on q through p."""
    for rel, text in {"compute/__init__.py": "", "compute/p/__init__.py": "import compute.q\n",
                      "compute/p/m.py": "", "compute/q.py": "from compute.p import m\n",
                      "ingest/__init__.py": "", "db/__init__.py": "", "dashboard/__init__.py": ""}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    edges, _ = graph()
    assert "compute.p" in edges["compute.q"] and cycles(edges) == [["compute.p", "compute.q", "compute.p"]]


def test_layer_order_and_unlisted_folders() -> None:
    assert compute_layer("compute.core.tap") < compute_layer("compute.spec") < compute_layer("compute.jobs.context") \
        < compute_layer("compute.analyses.dissect") < compute_layer("compute.runner") \
        < compute_layer("compute.paint.engine") < compute_layer("compute.cli")
    assert compute_layer("compute.invert.encoder") == compute_layer("compute.core.tap")  # the longest prefix wins
    assert compute_layer("compute.analyses.params") == compute_layer("compute.spec")
    assert compute_layer("compute.analyses") == compute_layer("compute.spec")  # the registry: no torch, no modules
    with pytest.raises(AssertionError, match="no compute layer"):
        compute_layer("compute.newfolder.thing")


def test_cycles_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
