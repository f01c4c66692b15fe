"""The fixes behind the bad-input table, one by one: the guarded connection's memory limit, SQL output
(truncation said on stderr, nested values in CSV), extensions never auto-installed, refused pickles in
our own words, far latents with today's values, markdown escaping and the Host check of the dashboard."""
from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from compute.cli import main
from db import guard, store


@pytest.fixture
def small_store(tmp_path: Path) -> Path:
    p = tmp_path / "s.duckdb"
    with store.session(str(p)) as c:
        store.ensure_schema(c)
    return p


def test_guarded_connection_has_a_locked_memory_and_thread_limit(small_store: Path) -> None:
    df = guard.guarded_query("select current_setting('memory_limit') as m, current_setting('threads') as t",
                             small_store)
    limit = df["m"][0]
    assert limit.endswith("MiB") and 900 <= float(limit.split()[0]) <= 1024, limit  # 1 GB = 953.6 MiB
    assert int(df["t"][0]) == guard.THREADS == 2
    with pytest.raises(guard.GuardError, match="refused"):
        guard.guarded_query("set memory_limit = '100GB'", small_store)


def test_a_query_over_the_memory_limit_fails_cleanly(small_store: Path) -> None:
    with pytest.raises(guard.GuardError, match=r"1GB memory limit.*Out of Memory") as e:
        guard.guarded_query("select length(list(x)) from range(300000000) t(x)", small_store, timeout_s=60)
    assert "\n" not in str(e.value)
    assert guard.guarded_query("select 1 as one", small_store)["one"][0] == 1  # the store is fine afterwards


def test_sql_says_when_rows_were_cut_and_writes_nested_csv_as_json(small_store: Path, capsys) -> None:
    assert main(["sql", "select * from range(5) t(x)", "--limit", "2", "--format", "csv", "--db", str(small_store)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["x", "0", "1"]
    assert "only the first 2 rows" in err
    assert main(["sql", "select [1, 2] as l, {'a': 'b'} as s, 3 as n", "--format", "csv", "--db", str(small_store)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    import csv
    import io

    row = list(csv.DictReader(io.StringIO(out)))[0]
    assert json.loads(row["l"]) == [1, 2] and json.loads(row["s"]) == {"a": "b"} and row["n"] == "3"


def test_every_connection_has_extension_autoinstall_off(small_store: Path) -> None:
    with store.session(str(small_store), read_only=True) as c:
        got = dict(c.execute("select name, value from duckdb_settings() where name in "
                             "('autoinstall_known_extensions', 'autoload_known_extensions')").fetchall())
    assert got == {"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}


def test_a_sqlite_store_never_reaches_duckdb(tmp_path: Path, monkeypatch) -> None:
    import sqlite3

    p = tmp_path / "s.duckdb"
    sqlite3.connect(p).execute("create table t (a)").connection.commit()
    calls = []
    monkeypatch.setattr(duckdb, "connect", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    with pytest.raises(store.StorePathError, match="SQLite"):
        store.connect(str(p))
    assert calls == [] and not Path(store.gate_path(str(p))).exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class _Custom:
    pass


@pytest.mark.parametrize("obj, fragment", [({"g": _Evil()}, "posix.system"),
                                           ({"g": _Custom()}, "_Custom"),
                                           (torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear")])
def test_refused_pickles_get_our_message(tmp_path: Path, obj, fragment: str) -> None:
    from ingest.models.checkpoints import read_checkpoint
    from ingest.zoo import ZooError

    p = tmp_path / "m.pth"
    torch.save(obj, p)
    with pytest.raises(ZooError) as e:
        read_checkpoint(str(p))
    msg = str(e.value)
    assert "refused" in msg and fragment in msg and "\n" not in msg
    assert "weights_only" not in msg and "Weights only" not in msg


def test_refusal_text_never_repeats_torchs_advice() -> None:
    from ingest.models.checkpoints import refusal

    text = ("Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely "
            "succeed.\n\nSomething else went wrong.\n\nCheck the documentation of torch.load")
    msg = refusal("m.pth", text)
    assert "weights_only" not in msg and "Something else went wrong" in msg


def _old_latents(seed: int, n: int, z_dim: int, start: int) -> torch.Tensor:
    """The original implementation: draw every earlier normal at once."""
    rng = np.random.Generator(np.random.PCG64(seed))
    if start:
        rng.standard_normal(start * z_dim)
    return torch.from_numpy(rng.standard_normal((n, z_dim), dtype=np.float64).astype(np.float32))


@pytest.mark.parametrize("seed, n, z_dim, start", [(1, 3, 8, 0), (1, 3, 8, 5), (2, 4, 7, 149), (2, 4, 7, 150),
                                                   (3, 2, 512, 17), (3, 2, 512, 2), (5, 6, 3, 333)])
def test_far_latents_keep_todays_values(seed, n, z_dim, start, monkeypatch) -> None:
    from ingest import samples

    monkeypatch.setattr(samples, "SKIP_CHUNK", 1000)  # many chunks and remembered states on small inputs
    monkeypatch.setattr(samples, "_STATES", {})
    for _ in range(2):  # the second call starts from a remembered state
        assert torch.equal(samples.latents(seed, n, z_dim, start), _old_latents(seed, n, z_dim, start))


def test_far_latents_have_a_stated_bound() -> None:
    from ingest.samples import MAX_SAMPLE_INDEX, latents

    with pytest.raises(ValueError, match="10,000,000"):
        latents(1, 1, 8, start=MAX_SAMPLE_INDEX)


@pytest.mark.parametrize("text", ["![x](https://evil.example/p.png)", "[click](https://evil.example/)",
                                  "https://evil.example/p.png", "www.evil.example", "a@evil.example",
                                  ":red[boom]", ":material/warning:", "<img src=x>", "`code`", "line\n# head"])
def test_md_escape_leaves_no_markdown(text: str) -> None:
    import markdown_it

    from dashboard.ui import md_escape

    html = markdown_it.MarkdownIt("commonmark", {"html": True}).render(md_escape(text))
    assert "<a " not in html and "<img" not in html and "<h1" not in html and "<code" not in html, html
    assert "://" not in md_escape(text) and ":red[" not in md_escape(text)


@pytest.mark.parametrize("host, ok", [("localhost:8501", True), ("127.0.0.1:8501", True), ("127.3.4.5", True),
                                      ("[::1]:8501", True), ("app.localhost:8501", True), ("LOCALHOST", True),
                                      ("evil.example:8501", False), ("evil.example", False), ("0.0.0.0:8501", False),
                                      ("192.168.1.5:8501", False), ("", False), (None, False),
                                      ("localhost.evil.example", False), ("box.lan:8501", "extra")])
def test_host_check(host, ok) -> None:
    from dashboard.hostcheck import host_allowed

    if ok == "extra":
        assert not host_allowed(host) and host_allowed(host, ["box.lan"])
    else:
        assert host_allowed(host) is ok


def test_latents_at_reads_scattered_samples_in_one_pass(monkeypatch) -> None:
    from ingest import samples

    monkeypatch.setattr(samples, "SKIP_CHUNK", 64)
    monkeypatch.setattr(samples, "_STATES", {})
    idx = [40, 3, 3, 17, 0, 95]
    got = samples.latents_at(4, idx, 6)
    assert got.shape == (6, 6) and got.dtype == torch.float32
    for j, i in enumerate(idx):
        assert torch.equal(got[j], _old_latents(4, 1, 6, i)[0])
    with pytest.raises(ValueError):
        samples.latents_at(4, [-1], 6)
