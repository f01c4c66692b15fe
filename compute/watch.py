"""`gandissect watch`: re-plan a spec on an interval and run what is missing.

Reads the spec on every tick (so a new `[[models]]` entry, a new analysis, or a new checkpoint file
matched by a model's glob `checkpoint = "runs/*.safetensors"` — one model per file, named
`<entry name>@<file stem>`, see ingest/spec.py — becomes new runs); writes what `gandissect run`
writes (the store, `.cache/<run_key>/` beside it) plus the watcher's lock,
`.cache/watch-<spec stem>-<hash of the spec's path>.lock` beside the store, holding "pid P since T".

One watcher per spec: the lock is an exclusive flock held for the watcher's life (the kernel frees it
when the process dies, so it is never stale); a second watcher of the same spec exits at once with
status 2 and a line naming the holder. Every run it starts prints one line (`done: ...`, `failed:
...`, `busy: ...`), time-stamped; runs already done print nothing.

SIGINT / SIGTERM stop it cleanly: while sleeping it exits at once; during a run it abandons the run
(the exception unwinds through the runner, which releases the run's lease; nothing is published; the
run's `runs` row says running with no lease holder, which `gandissect status` shows as stopped), and
the next tick or `gandissect run` resumes it from its last checkpoint under `.cache/<run_key>/`. It
exits 0 after a clean stop. A run that failed is retried on the next tick (its error may have been
transient); a spec that does not parse (mid-edit) is reported once per tick and the watcher waits.
With `--engine ray` the watcher starts Ray once, at its start, and every tick reuses it.

    gandissect watch [SPEC] [--every 10m] [--once] [--engine local|ray] [--address A] [--workers N]
    python -m compute.watch SPEC --once          # the same, without the CLI wrapper
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Callable, Iterator

from db.errors import BadInput

if TYPE_CHECKING:
    from compute.jobs.tally import Engine
    from compute.runner import Outcome

try:
    import fcntl
except ImportError:  # not POSIX: no lock (one watcher at a time is then the user's job)
    fcntl = None  # type: ignore[assignment]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
SHOWN = ("done:", "failed:", "busy:", "skipped:")  # the runner's lines a watcher prints (one per new run)


class WatchError(BadInput):
    """Bad watch arguments, or another watcher holds this spec: exit status 2."""


class WatchStop(BaseException):
    """Raised by the signal handler to abandon the current run (not an Exception: the runner's
    `except Exception` must not record it as the run's failure)."""


@dataclass(frozen=True)
class WatchConfig:
    """One watcher: which spec, how often, and how its runs are computed (passed to `runner.run`)."""

    spec: str
    every_s: float = 600.0
    once: bool = False
    device: str = "auto"
    engine: str = "local"
    address: str | None = None
    workers: int | None = None


def parse_interval(text: str) -> float:
    """'10m' -> 600.0; units s, m, h, d; a bare number is seconds. Must be > 0."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise WatchError(f"--every {text!r}: give a positive interval such as 30s, 10m, 1h or 1d")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def lock_path(spec_path: str | os.PathLike, store: str | os.PathLike) -> Path:
    """The watcher lock of a spec: in the store's `.cache/`, named after the spec file's absolute path."""
    from compute.jobs.context import cache_root_for

    spec_abs = os.path.abspath(os.fspath(spec_path))
    digest = hashlib.sha256(spec_abs.encode()).hexdigest()[:12]
    return cache_root_for(store) / f"watch-{Path(spec_abs).stem}-{digest}.lock"


class WatchLock:
    """An exclusive flock on the watcher's lock file, held until `release()` or the process's end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, spec: str) -> None:
        """Take the lock or raise WatchError naming the holder."""
        if fcntl is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                holder = self.path.read_text().strip() or "another process"
            except OSError:
                holder = "another process"
            raise WatchError(f"another watcher ({holder}) is already watching {spec} (lock {self.path}); "
                             f"stop it first, or let it do the work") from None
        since = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {since}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # frees the flock; the file stays (deleting it would race a new acquirer)
            self.fd = None


def _stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def start_engine(cfg: WatchConfig) -> str | Engine:
    """The engine every tick uses: "local" by name; for Ray one engine for the watcher's life, started
    now, before the watcher installs its signal handlers: `ray.init` installs its own SIGTERM handler
    (`sys.exit`), which would otherwise replace the watcher's clean stop in the middle of the first run."""
    if cfg.engine == "local":
        return "local"
    from compute.jobs.ray_engine import engine_for

    engine = engine_for(cfg.engine, cfg.address, cfg.workers)
    engine._init()  # type: ignore[attr-defined]  # RayEngine's start (ray.init once; later passes reuse it)
    return engine


def tick(cfg: WatchConfig, echo: Callable[[str], None], engine: str | Engine = "local") -> list[Outcome]:
    """Re-plan the spec and run what is missing; returns the runner's outcomes."""
    from compute import runner, spec as specmod

    def shown(line: str) -> None:  # the runner's lines about runs started here; not "up to date" / "running"
        if line.startswith(SHOWN):
            echo(f"{_stamp()} {line}")

    spec = specmod.load(cfg.spec)  # re-read every tick: new entries, new files behind a glob
    return runner.run(spec, device=cfg.device, quiet=True, echo=shown, engine=engine)


def exit_status(outcomes: list[Outcome]) -> int:
    """As `gandissect run`: 2 when every failure is bad input, 1 for other failures or a run busy elsewhere."""
    failed = [o for o in outcomes if o.state == "failed"]
    if failed and all(o.bad_input for o in failed):
        return 2
    return 1 if failed or any(o.state == "running elsewhere" for o in outcomes) else 0


class _Signals:
    """SIGINT / SIGTERM raise WatchStop once (in the main thread: between bytecodes, never inside a C
    call); a second signal while the watcher stops exits at once (status 128 + signal, as a shell
    reports it), so a hung clean-up never needs SIGKILL; the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.name is None:
            self.name = signal.Signals(signum).name
            raise WatchStop(self.name)
        raise SystemExit(128 + signum)

    def __enter__(self) -> "_Signals":
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)  # type: ignore[arg-type]


def _ticks(cfg: WatchConfig) -> Iterator[int]:
    """Tick numbers, sleeping `every_s` between them from the start of one tick to the start of the next."""
    i = 0
    while True:
        t0 = time.monotonic()
        yield i
        if cfg.once:
            return
        i += 1
        time.sleep(max(0.0, cfg.every_s - (time.monotonic() - t0)))


def watch(cfg: WatchConfig, echo: Callable[[str], None] = print) -> int:
    """Run the watcher; the exit status (0, or for --once the run's: 1 failed runs, 2 bad input)."""
    from compute import spec as specmod

    first = specmod.load(cfg.spec)  # a bad spec at start is bad input (exit 2), before any lock
    lock = WatchLock(lock_path(cfg.spec, first.store))
    lock.acquire(cfg.spec)
    status = 0
    try:
        engine = start_engine(cfg)
        with _Signals() as sig:
            try:
                if not cfg.once:
                    echo(f"{_stamp()} watching {cfg.spec} every {cfg.every_s:g} s (store {first.store}, "
                         f"pid {os.getpid()}); Ctrl-C or SIGTERM stops")
                for _ in _ticks(cfg):
                    try:
                        outcomes = tick(cfg, echo, engine)
                    except BadInput as e:  # the spec mid-edit, a missing file: say so, try again next tick
                        if cfg.once:
                            raise
                        echo(f"{_stamp()} error: {' '.join(str(e).split())} (retrying in {cfg.every_s:g} s)")
                        continue
                    except Exception as e:  # the store busy, a loader failing: the watcher survives it
                        if cfg.once:
                            raise
                        echo(f"{_stamp()} error: {type(e).__name__}: {' '.join(str(e).split())}")
                        continue
                    status = exit_status(outcomes)
            except WatchStop:
                echo(f"{_stamp()} stopped ({sig.name}): a run in progress was abandoned and resumes "
                     f"from its checkpoint on the next tick or `gandissect run`")
                return 0
    finally:
        lock.release()
    return status if cfg.once else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `watch` subcommand's arguments (compute/cli.py)."""
    p.add_argument("spec", nargs="?", default="gandissect.toml")
    p.add_argument("--every", default="10m", help="interval between re-plans: 30s, 10m (default), 1h, 1d")
    p.add_argument("--once", action="store_true", help="one tick, then exit with the run's status (cron, tests)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--engine", default="local", choices=["local", "ray"], help="how runs are computed")
    p.add_argument("--address", help="Ray cluster address (with --engine ray; default: a local Ray)")
    p.add_argument("--workers", type=int, help="Ray workers (with --engine ray)")


def config(a: argparse.Namespace) -> WatchConfig:
    if a.workers is not None and a.workers < 1:
        raise WatchError(f"--workers {a.workers}: give at least 1")
    if a.engine == "local" and (a.address is not None or a.workers is not None):
        raise WatchError("--address/--workers go with --engine ray")
    return WatchConfig(spec=a.spec, every_s=parse_interval(a.every), once=a.once, device=a.device,
                       engine=a.engine, address=a.address, workers=a.workers)


def main(a: argparse.Namespace) -> int:
    return watch(config(a), echo=lambda line: print(line, flush=True))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m compute.watch")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
