"""The `gandissect` command line.

Reads a spec (default `gandissect.toml`) and the store; writes through the runner. Exit status:
0 success, 2 bad input (spec, arguments, files, refused SQL: every `db.errors.BadInput`), 1 anything
else (including a run being computed by another process: `--wait` waits for it). Errors are one line
unless `--debug`.

    gandissect run [SPEC] [--only NAME] [--force] [--wait] [--device auto|cpu|cuda] [--quiet]
                   [--engine local|ray] [--address ADDR] [--workers N]
    gandissect status [SPEC]
    gandissect plan [SPEC] [--json]
    gandissect watch [SPEC] [--every 10m] [--once] [--engine local|ray]   # compute/watch.py
    gandissect sql "QUERY" [--format table|csv|json] [--db PATH]
    gandissect dashboard [--port P] [--host H]
    gandissect train segmenter|gan|classifier|encoder [ARGS...]
    gandissect invert PHOTO... --model M [--layer L] [--out DIR] [--json]
    gandissect edit --model M --seed S --sample I --brush B --action draw|remove --region x0,y0,x1,y1
    gandissect edit --model M --photo PHOTO --brush B --action draw|remove --region x0,y0,x1,y1
    gandissect version
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from compute.bench.main import BENCHES
from compute.spec import store_path
from db.errors import BadInput, is_bad_input, one_line

BAD_INPUT = 2


class UsageError(BadInput):
    """Bad arguments: exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block): `error: gandissect run: ...`, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(BAD_INPUT, f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gandissect", description="GAN Dissection workbench")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="materialise every declared analysis whose run is missing")
    r.add_argument("spec", nargs="?", default="gandissect.toml")
    r.add_argument("--only", help="run one analysis (by name)")
    r.add_argument("--force", action="store_true", help="recompute even if done")
    r.add_argument("--wait", action="store_true",
                   help="when another process is computing a run, wait for it (default: skip it, exit 1)")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: this process (default); ray: passes sharded over Ray workers (the ray extra)")
    r.add_argument("--address", help="with --engine ray: an existing Ray cluster (default: start a local Ray)")
    r.add_argument("--workers", type=int, help="with --engine ray: shards per pass / local Ray CPUs (default: all)")

    s = sub.add_parser("status", help="each declared analysis with its state")
    s.add_argument("spec", nargs="?", default="gandissect.toml")

    pl = sub.add_parser("plan", help="the runs a spec declares, in run order, with run keys and parameters")
    pl.add_argument("spec", nargs="?", default="gandissect.toml")
    pl.add_argument("--json", action="store_true", help="one JSON object per run (params: runs.params)")

    q = sub.add_parser("sql", help="read-only SQL over the store")
    q.add_argument("query")
    q.add_argument("--format", default="table", choices=["table", "csv", "json"])
    q.add_argument("--db", help="store path (default: $GANDISSECT_DB, the spec's store, gandissect.duckdb)")
    q.add_argument("--spec", default="gandissect.toml")
    q.add_argument("--limit", type=int, default=10_000, help="row limit")
    q.add_argument("--timeout", type=float, default=60.0, help="time limit in seconds")

    d = sub.add_parser("dashboard", help="start the Streamlit app")
    d.add_argument("--port", type=int, default=8501)
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--db", help="store path")
    d.add_argument("--spec", default="gandissect.toml")
    d.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to this Host name (default: loopback names only)")

    t = sub.add_parser("train", help="train a bundled model: segmenter | gan | classifier | encoder")
    t.add_argument("what", choices=["segmenter", "gan", "classifier", "encoder"])
    t.add_argument("args", nargs=argparse.REMAINDER)

    b = sub.add_parser("bench", help="performance benchmarks (also written to the benchmarks table)")
    b.add_argument("--json", action="store_true")
    b.add_argument("--spec", default="gandissect.toml")
    b.add_argument("--only", choices=BENCHES, help="one bench (default: all)")
    b.add_argument("--samples", type=int, help="samples of the dissect bench (default $GANDISSECT_BENCH_N or 256)")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="device of the dissect bench (cuda: bench 'dissect-cuda', skipped without CUDA)")

    e = sub.add_parser("edit", help="paint one edit onto a generated sample (GANPaint)")
    e.add_argument("--model", required=True)
    e.add_argument("--layer", help="edited layer (default: the layer of the brush's causal units)")
    e.add_argument("--seed", type=int, help="sample set seed (required without --photo)")
    e.add_argument("--sample", type=int, help="sample index within the seed (required without --photo)")
    e.add_argument("--photo", help="paint on this photo instead: inverted, the generator adapted to it "
                                   "(compute.paint.photo), the edit composed into the photo")
    e.add_argument("--adapt-steps", type=int, default=150, help="with --photo: image-specific adaptation steps")
    e.add_argument("--brush", required=True, help="a concept (door, tree, ...) or flag:artifact, label:NOTE")
    e.add_argument("--action", required=True, choices=["draw", "remove"])
    e.add_argument("--region", required=True, help="x0,y0,x1,y1 in image pixels (x1, y1 exclusive)")
    e.add_argument("--strength", default="high", help="low | medium | high (or a number in (0, 1])")
    e.add_argument("--out", default="edited.png", help="PNG written at the generator's resolution")
    e.add_argument("--json", action="store_true", help='print {"before", "after", "ms"}')
    e.add_argument("--db", help="store path")
    e.add_argument("--spec", default="gandissect.toml")
    e.add_argument("--device", default="cpu")

    from compute.invert.cli import add_arguments as _invert_arguments

    _invert_arguments(sub.add_parser("invert", help="invert photos into a generator; what it cannot draw"))

    from compute.watch import add_arguments as _watch_arguments

    _watch_arguments(sub.add_parser("watch", help="re-plan the spec on an interval and run what is missing"))

    sub.add_parser("version", help="print the version")
    return p


def cmd_run(a: argparse.Namespace) -> int:
    from compute import runner, spec

    outcomes = runner.run(spec.load(a.spec), only=a.only, force=a.force, device=a.device, quiet=a.quiet,
                          wait=a.wait, engine=a.engine, address=a.address, workers=a.workers)
    failed = [o for o in outcomes if o.state == "failed"]
    if failed and all(o.bad_input for o in failed):
        return 2  # bad input: every failure names what to change in the spec or its files
    return 1 if failed or any(o.state == "running elsewhere" for o in outcomes) else 0


def cmd_status(a: argparse.Namespace) -> int:
    from compute import runner, spec

    rows = runner.status(spec.load(a.spec))
    width = max((len(f"{j.analysis.name} [{j.model.name}]") for j, _, _ in rows), default=10)
    for job, state, error in rows:
        line = f"{job.analysis.name + ' [' + job.model.name + ']':<{width}}  {state:<8} {job.run_key[:12]}"
        if error:
            line += "  " + error.splitlines()[0]
        print(line)
    return 0


def cmd_plan(a: argparse.Namespace) -> int:
    """Every planned run in order: name [model], kind, run key, the runs it reads (nothing is written)."""
    import json

    from compute import runner, spec

    for job in runner.plan(spec.load(a.spec)):
        if a.json:
            print(json.dumps({"name": job.analysis.name, "model": job.model.name, "kind": job.analysis.kind,
                              "run_key": job.run_key, "code_version": job.code_version,
                              "deps": [{"kind": k, "run_key": key} for k, key in job.deps],
                              "params": json.loads(job.params)}))
        else:
            deps = ", ".join(f"{k} {key[:12]}" for k, key in job.deps)
            print(f"{job.analysis.name} [{job.model.name}]  {job.analysis.kind}  {job.run_key[:12]}"
                  + (f"  reads {deps}" if deps else ""))
    return 0


def cmd_sql(a: argparse.Namespace) -> int:
    from db.guard import run_guarded

    from db.store import check_store_path

    path = store_path(a.db, a.spec)
    check_store_path(path)  # a directory, a foreign or empty file, a path under a file: exit 2
    if not Path(path).exists():
        raise UsageError(f"no store at {path}: run `gandissect run` first")
    res = run_guarded(a.query, path=path, row_limit=a.limit, timeout_s=a.timeout)
    df = res.frame
    if res.truncated:
        print(f"note: only the first {a.limit:,} rows are shown (--limit {a.limit}); more rows matched",
              file=sys.stderr)
    if a.format == "csv":
        sys.stdout.write(_json_nested(df).write_csv())
    elif a.format == "json":
        sys.stdout.write(df.write_json() + "\n")
    else:
        import polars as pl

        with pl.Config(tbl_rows=min(len(df), 200), tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200,
                       tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
            print(df)
    return 0


def _json_nested(df):  # type: ignore[no-untyped-def]
    """Nested columns (lists, structs, arrays) as JSON text, so CSV can hold them."""
    import json

    import polars as pl

    nested = [c for c, t in df.schema.items() if t.is_nested() or t == pl.Object]
    if not nested:
        return df
    return df.with_columns([pl.Series(c, [None if v is None else json.dumps(v, default=str) for v in df[c].to_list()],
                                      dtype=pl.String) for c in nested])


def cmd_dashboard(a: argparse.Namespace) -> int:
    app = Path(__file__).resolve().parent.parent / "dashboard" / "serve.py"  # app.py behind the Host check
    env = dict(os.environ, GANDISSECT_DB=os.path.abspath(store_path(a.db, a.spec)))
    if Path(a.spec).is_file():  # lets the image pages load models whose options live in the spec
        env["GANDISSECT_SPEC"] = os.path.abspath(a.spec)
    hosts = [*a.allow_host] + ([a.host] if a.host not in ("0.0.0.0", "::", "") else [])
    hosts += [h for h in os.environ.get("GANDISSECT_ALLOWED_HOSTS", "").split(",") if h.strip()]
    env["GANDISSECT_ALLOWED_HOSTS"] = ",".join(dict.fromkeys(h.strip() for h in hosts))  # Host check: dashboard/ui.py
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", a.host,
           "--server.port", str(a.port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "minimal"]
    print(f"dashboard: http://{a.host}:{a.port}  (store {env['GANDISSECT_DB']})", flush=True)
    return subprocess.call(cmd, env=env)


def cmd_train(a: argparse.Namespace) -> int:
    if a.what == "segmenter":
        from compute.train.seg import main as train
    elif a.what == "classifier":
        from compute.train.cls import main as train
    elif a.what == "encoder":
        from compute.invert.train import main as train
    else:
        from compute.train.gan import main as train
    return int(train(list(a.args)) or 0)


def cmd_bench(a: argparse.Namespace) -> int:
    from compute.bench.main import main as bench

    return int(bench(a) or 0)


def cmd_edit(a: argparse.Namespace) -> int:
    from compute.paint import engine as paint

    if a.photo:
        from compute.paint.photo import cmd_edit_photo

        return cmd_edit_photo(a, store_path(a.db, a.spec))
    if a.seed is None or a.sample is None:
        raise UsageError("gandissect edit: give --seed and --sample (a generated sample), or --photo PHOTO")
    return paint.cmd_edit(a, store_path(a.db, a.spec))


def cmd_watch(a: argparse.Namespace) -> int:
    from compute.watch import main as watch

    return watch(a)


def cmd_invert(a: argparse.Namespace) -> int:
    from compute.invert.cli import run

    return run(a)


def _glue_negative_values(argv: list[str]) -> list[str]:
    """`--region -5,0,10,10` as `--region=-5,0,10,10` (argparse takes a leading '-' for an option)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--region" and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1][1:2].isdigit():
            out.append(f"--region={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = _glue_negative_values(list(sys.argv[1:] if argv is None else argv))
    parser = _parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad arguments, 0 on --help
        return int(e.code or 0)
    if a.command == "version":
        from compute.runner import PACKAGE_VERSION

        print(f"gandissect {PACKAGE_VERSION}")
        return 0
    handlers = {"run": cmd_run, "status": cmd_status, "plan": cmd_plan, "sql": cmd_sql, "dashboard": cmd_dashboard,
                "train": cmd_train, "bench": cmd_bench, "edit": cmd_edit,
                "invert": cmd_invert, "watch": cmd_watch}
    try:
        return handlers[a.command](a)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line; the traceback only with --debug
        if a.debug:
            raise
        print(f"error: {one_line(str(e)) or type(e).__name__}", file=sys.stderr)
        return BAD_INPUT if is_bad_input(e) else 1


if __name__ == "__main__":
    sys.exit(main())
