"""`lab-plot`: redraw every figure of a run (or of each run under a directory, and a sweep's report),
or compare runs (`--compare`). It imports only the JAX-free layers (lab.plots, lab.rundir, lab.core),
so it starts in about a second instead of the three JAX, Hydra and the tasks took through lab.app.cli."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lab.core import RunLoadError
from lab.plots.compare import plot_compare
from lab.plots.report import write_report
from lab.plots.parallel import draw_run_figures
from lab.rundir import load_run_config, load_summary, run_dirs_under


def _compare_main(dirs: list[Path], metric: str, out: Path | None) -> None:
    runs, missing = [], []
    for d in dirs:
        found = run_dirs_under(d)
        runs += found
        if not found:
            missing.append(str(d))
    if missing:
        print(f"error: not a run directory (no metrics.jsonl in it or in its subdirectories): {', '.join(missing)}",
              file=sys.stderr)
        sys.exit(2)
    out = out or Path("compare.png")
    try:
        for run in runs:   # a damaged summary.json or config.yaml is refused, not read as missing
            load_run_config(run, strict=True)
            load_summary(run, strict=True)
        path = plot_compare(runs, out, metric=metric)
    except OSError as e:   # reading is RunLoadError's; this is the figure or its .json
        print(f"error: cannot write {e.filename or out}: {e.strerror or e}; choose another --out", file=sys.stderr)
        sys.exit(2)
    except ValueError as e:   # RunLoadError (a damaged run), or a metric the runs do not log
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{path}\n{path.with_suffix('.json')}")
    sys.exit(0)


def plot_main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="lab-plot", description="Redraw every plot of a run from its saved metrics, or compare runs.",
        usage="%(prog)s RUN_DIR [RUN_DIR ...] [--out DIR]\n"
              "       %(prog)s --compare DIR DIR [DIR ...] [--metric loss_repeat] [--out compare.png]")
    parser.add_argument("run_dir", nargs="*", type=Path,
                        help="run directories (each holds metrics.jsonl), or multirun directories holding runs")
    parser.add_argument("--compare", nargs="+", type=Path, metavar="DIR",
                        help="overlay these runs (or every job of these multirun directories) in one figure, "
                             "labelled by how their configs differ; also writes <out>.json and prints a table")
    parser.add_argument("--metric", default=None,
                        help="with --compare: the per-seed metric to overlay (default: the task's main loss, e.g. loss_repeat)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the PNGs here instead of <run_dir>/plots; with --compare, the figure's path "
                             "(default compare.png in the current directory)")
    args = parser.parse_args(argv)
    if args.compare:
        _compare_main(args.compare + args.run_dir, args.metric, args.out)
    if args.metric is not None:
        parser.error("--metric applies only with --compare")
    if not args.run_dir:
        parser.error("give a run directory, or --compare DIR DIR ...")
    status = 0
    for d in args.run_dir:
        runs = run_dirs_under(d)
        if not runs:
            print(f"error: {d} is not a run directory (no metrics.jsonl in it or in its subdirectories)", file=sys.stderr)
            status = 2
        for run in runs:
            out = args.out / run.name if args.out and len(runs) > 1 else args.out
            target = out if out is not None else run / "plots"
            created = not target.exists()
            try:
                load_run_config(run, strict=True)   # damaged files: one line each, before anything is drawn
                load_summary(run, strict=True)
                if target.exists() and not target.is_dir():
                    raise NotADirectoryError(0, "it is a file, not a directory", str(target))
                target.mkdir(parents=True, exist_ok=True)
                paths, _ = draw_run_figures(run, out)   # on every core
            except RunLoadError as e:   # metrics.jsonl, summary.json or config.yaml empty, cut or damaged
                print(f"error: {e}", file=sys.stderr)
                status = 2
                if created and target.is_dir() and not any(target.iterdir()):
                    target.rmdir()
                continue
            except OSError as e:   # the output directory cannot be made or written
                print(f"error: cannot write the plots to {target}: {e.strerror or e}; choose another --out",
                      file=sys.stderr)
                status = 2
                continue
            for p in paths:
                print(p)
        if (d / "multirun.yaml").is_file():   # a sweep: also its table, figures and HTML report
            try:
                for p in write_report(d).values():
                    print(p)
            except OSError as e:
                print(f"error: cannot write the report of {d}: {e.strerror or e} ({e.filename})", file=sys.stderr)
                status = 2
    sys.exit(status)
