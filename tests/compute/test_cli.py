"""The CLI: exit statuses, one-line errors, the read-only SQL guard, status and up-to-date lines."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from compute.cli import main


@pytest.fixture
def computed_store(quantile_spec: Path, tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--quiet", str(quantile_spec)]) == 0
    return tmp_path / "store.duckdb"


REFUSED = [
    "copy (select 1) to '/tmp/x.csv'",
    "attach 'other.duckdb'",
    "select * from read_csv('/etc/hostname')",
    "drop table runs",
    "install httpfs",
    "load httpfs",
    "set enable_external_access = true",
    "select 1; drop table runs",
]


@pytest.mark.parametrize("query", REFUSED)
def test_sql_refuses_writes_and_file_access(computed_store: Path, query: str, capsys) -> None:
    assert main(["sql", "--db", str(computed_store), query]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert main(["sql", "--db", str(computed_store), "select count(*) as n from runs", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == [{"n": 1}]


def test_sql_formats(computed_store: Path, capsys) -> None:
    assert main(["sql", "--db", str(computed_store), "select status, count(*) n from runs group by 1",
                 "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["status,n", "done,1"]


def test_second_run_prints_up_to_date_and_status(quantile_spec: Path, computed_store: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["run", "--quiet", str(quantile_spec)]) == 0
    assert capsys.readouterr().out.startswith("up to date: tiny-quantiles [tiny]")
    assert main(["status", str(quantile_spec)]) == 0
    assert "done" in capsys.readouterr().out


def test_bad_arguments_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert main(["sql", "--db", str(tmp_path / "none.duckdb"), "select 1"]) == 2


def test_version(capsys) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("gandissect ")


def test_plan_prints_the_run_keys_and_writes_nothing(quantile_spec: Path, tmp_path: Path, capsys) -> None:
    from compute import runner, spec as specmod

    [job] = runner.plan(specmod.load(quantile_spec))
    assert main(["plan", str(quantile_spec)]) == 0
    assert capsys.readouterr().out == f"tiny-quantiles [tiny]  quantiles  {job.run_key[:12]}\n"
    assert main(["plan", "--json", str(quantile_spec)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["run_key"] == job.run_key and row["params"] == json.loads(job.params) and row["deps"] == []
    assert not (tmp_path / "store.duckdb").exists()
