"""Fixtures for the store tests: one audit-clean small store built once, copied for each test."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.db.fixture_store import build_small_store


@pytest.fixture(scope="session")
def small_store_master(tmp_path_factory) -> Path:
    return build_small_store(tmp_path_factory.mktemp("store") / "small.duckdb")


@pytest.fixture
def small_store(small_store_master: Path, tmp_path: Path) -> Path:
    """A private copy of the small store (tests may write to it)."""
    dst = tmp_path / "small.duckdb"
    shutil.copy(small_store_master, dst)
    return dst
