"""One base class decides exit status 2: every error class whose docstring promises exit status 2
subclasses db.errors.BadInput, and db.errors.is_bad_input (used by the CLI and the runner) is the one
test of it."""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from db.errors import BadInput, is_bad_input

ROOT = Path(__file__).resolve().parents[2]
PROMISE = re.compile(r"exit(s| status| with status)? (with )?(status )?2\b|exits 2\b", re.I)


def promised() -> list[tuple[str, str]]:
    """(module, class) of every exception class (a base named *Error, *Exception or BadInput) under db/
    ingest/ compute/ dashboard/ whose docstring says exit 2."""
    out = []
    for top in ("db", "ingest", "compute", "dashboard"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                bases = [ast.unparse(b).rpartition(".")[2] for b in getattr(node, "bases", [])]
                is_error = any(b.endswith(("Error", "Exception", "BadInput")) for b in bases)
                if isinstance(node, ast.ClassDef) and is_error and PROMISE.search(ast.get_docstring(node) or ""):
                    out.append((".".join(parts), node.name))
    return out


def test_the_walk_finds_the_known_promises() -> None:
    found = set(promised())
    assert {("db.errors", "BadInput"), ("ingest.spec", "ZooError"), ("compute.cli", "UsageError"),
            ("compute.analyses.unit_roles", "UnitRolesError")} <= found, found


@pytest.mark.parametrize("module, name", promised())
def test_a_promised_exit_2_is_a_bad_input(module: str, name: str) -> None:
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, BadInput), f"{module}.{name} promises exit status 2 but does not subclass BadInput"


@pytest.mark.parametrize("module, name", [
    ("ingest.spec", "SpecError"), ("ingest.spec", "ZooError"), ("ingest.real", "RealImagesError"),
    ("ingest.photos", "PhotoError"), ("compute.core.features", "FeatureError"),
    ("compute.core.intervene", "InterventionError"), ("compute.core.intervene", "UnitRangeError"),
    ("compute.analyses.repair", "RepairError"), ("compute.paint.engine", "EditError"),
    ("db.guard", "GuardError"), ("db.store", "StorePathError"),
])
def test_the_formerly_listed_errors_are_bad_inputs_and_still_value_errors(module: str, name: str) -> None:
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, BadInput) and issubclass(cls, ValueError)


def test_is_bad_input() -> None:
    assert is_bad_input(BadInput("x")) and is_bad_input(FileNotFoundError("x"))
    assert not is_bad_input(RuntimeError("x")) and not is_bad_input(ValueError("x"))
