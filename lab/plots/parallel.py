"""Drawing a run's figures on every core, and stopping within a fraction of a second.

Matplotlib draws on one core and holds the GIL, so threads do not help; the figures are independent,
so forked worker processes draw them side by side, each taking the next figure name from a queue
(the slow ones, the per-head grids, balance out). Fork, not spawn: a fresh interpreter would spend
seconds importing matplotlib before drawing anything. A worker touches only numpy and matplotlib,
never JAX, so forking a process whose JAX threads are running is safe here. Where fork is missing
(Windows), or with LAB_PLOT_WORKERS=0, the figures are drawn in this process, one by one.
"""
from __future__ import annotations

import builtins
import gc
import multiprocessing as mp
import multiprocessing.connection
import os
import queue
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

from lab.plots.run import FIGURES, RUN_FIGURES, plot_run

POLL_S = 0.1


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # macOS, Windows
        return os.cpu_count() or 1


def _worker(run_dir: Path, out_dir: Optional[Path], names: "mp.Queue", warned: "mp.Queue") -> None:
    while (name := names.get()) is not None:   # None: no figure left (get_nowait could miss queued names)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plot_run(run_dir, out_dir, figures=[name])
        for w in caught:   # told again by the parent, where callers (and pytest.warns) see them
            warned.put((str(w.message), w.category.__name__))


def _warn_again(warned: "mp.Queue", seen: set) -> None:
    while True:
        try:
            message, category = warned.get_nowait()
        except queue.Empty:
            return
        if (message, category) not in seen:   # each figure's reader warns alike about a file they share
            seen.add((message, category))
            kind = getattr(builtins, category, None)
            warnings.warn(message, kind if isinstance(kind, type) and issubclass(kind, Warning) else UserWarning,
                          stacklevel=3)


def plot_workers() -> int:
    """How many processes draw a run's figures: LAB_PLOT_WORKERS if set (0: in this process, one figure
    after another, where a stop signal waits for the figure being drawn), else one per usable core."""
    value = os.environ.get("LAB_PLOT_WORKERS", "").strip()
    if not value:
        return usable_cores()
    if not value.isdigit():
        raise ValueError(f"LAB_PLOT_WORKERS must be a whole number >= 0, not {value!r}")
    return int(value)


def draw_run_figures(run_dir, out_dir=None, figures: Optional[Sequence[str]] = None, workers: Optional[int] = None,
                     should_stop: Callable[[], bool] = lambda: False) -> tuple[list[Path], bool]:
    """plot_run(run_dir, out_dir, figures) drawn by `workers` forked processes (default: plot_workers(),
    at most one per figure). `should_stop()` is asked every POLL_S seconds; when it says yes, the
    workers are ended at once. Returns (the figures drawn, whether every figure was drawn)."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    names = list(FIGURES if figures is None else figures)
    started = time.time() - 1.0   # a figure file older than this is a stale one from an earlier drawing
    workers = min(plot_workers() if workers is None else workers, len(names))
    if workers <= 0 or "fork" not in mp.get_all_start_methods():
        written = []
        for name in names:
            if should_stop():
                return written, False
            written += plot_run(run_dir, out_dir, figures=[name])
        return written, True
    ctx = mp.get_context("fork")
    todo, warned, seen = ctx.Queue(), ctx.Queue(), set()
    for name in sorted(names, key=lambda n: -RUN_FIGURES[n].cost) + [None] * workers:   # the slowest first
        todo.put(name)
    with warnings.catch_warnings():   # JAX warns on every fork; its threads are not used in the workers
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        procs = [ctx.Process(target=_worker, args=(run_dir, out_dir, todo, warned), daemon=True)
                 for _ in range(workers)]
        # the workers' garbage collector leaves this process's objects alone: scanning lab-train's (JAX's,
        # Flax's) copied each page it touched, and the drawing took 1.15 s instead of 0.9 s
        gc.freeze()
        for p in procs:
            p.start()
        gc.unfreeze()
    finished = True
    while any(p.is_alive() for p in procs):
        _warn_again(warned, seen)
        if should_stop():
            for p in procs:
                p.kill()
            finished = False
            break
        # back at once when a worker ends (the ended ones left out: their sentinels stay ready)
        multiprocessing.connection.wait([p.sentinel for p in procs if p.is_alive()], timeout=POLL_S)
    for p in procs:
        p.join()
    _warn_again(warned, seen)
    for q in (todo, warned):
        q.close()
        q.cancel_join_thread()
    def drawn(name: str) -> bool:   # written by this drawing, not left by an earlier one
        path = out / f"{name}.png"
        return path.exists() and path.stat().st_mtime >= started

    failed = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if failed and finished:
        # a worker failed (a plotting bug): draw what is missing here, so the error surfaces as it would alone
        plot_run(run_dir, out_dir, figures=[n for n in names if not drawn(n)])
    return [out / f"{n}.png" for n in names if drawn(n)], finished
