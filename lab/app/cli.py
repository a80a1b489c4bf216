"""Entry points: `lab-train` (a Hydra app; `python -m lab` is the same) and `lab-plot`.

The training path (lab.app.run) is imported inside the app, after the config is known and XLA's
CPU threading is set from `train.xla_cpu_threads`: the one deliberate function-local import of
the lab's own modules (ARCHITECTURE.md). It also keeps `lab-plot` and `--help` from loading it.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from lab.app.safety import precheck
from lab.config.compose import CONFIG_DIR, check_override_keys, register_configs
from lab.core import ConfigError, Interrupted, TrainingDiverged
from lab.plots.compare import plot_compare
from lab.plots.report import write_report
from lab.plots.run import plot_run
from lab.rundir import run_dirs_under
from lab.train.runtime import configure_xla_threads, place_on_gpus
log = logging.getLogger("lab")


def _raise_interrupt(signum, frame):
    raise Interrupted(signum)


def _hand_on_preemption(e: KeyboardInterrupt, run_dir: Path) -> None:
    """Under submitit on SLURM, SIGUSR2 means "time limit near" or "pre-empted": the trainer has stopped
    after its chunk and checkpointed; submitit's own handler (restored when training stopped) then
    requeues the job, which continues from that checkpoint in the same run directory, and exits."""
    usr2 = getattr(signal, "SIGUSR2", None)
    handler = signal.getsignal(usr2) if usr2 is not None and getattr(e, "signum", None) == usr2 else None
    if callable(handler):
        log.warning("pre-empted (SIGUSR2): checkpoint written in %s; requeueing the job", run_dir)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # SLURM's SIGTERM for the requeue: we are leaving anyway
        handler(usr2, None)


def _train_app(cfg) -> dict | None:
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)   # "no TPU" notices on every start
    configure_xla_threads(cfg.train)
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    place_on_gpus(cfg.train, hc.job.num if multirun else None)
    from lab.app.run import run   # after the XLA flags: see the module docstring

    # SIGTERM (SLURM's requeue, cancel and pre-emption, `kill`) stops like Ctrl-C: checkpoint, summary, exit;
    # a requeued job then continues from the checkpoint (lab.app.run continues unfinished runs).
    signal.signal(signal.SIGTERM, _raise_interrupt)
    run_dir = Path(hc.runtime.output_dir)
    try:
        result = run(cfg, run_dir)
    except (ConfigError, TrainingDiverged) as e:
        kind = "config error" if isinstance(e, ConfigError) else "training failed"
        msg = f"{kind}: {e}"
        if multirun:   # one bad job must not stop the sweep; its summary.json records the failure
            log.error("%s [%s]", msg, run_dir)
            return {"status": f"failed: {e}"}
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    except KeyboardInterrupt as e:
        _hand_on_preemption(e, run_dir)
        print(f"\ninterrupted; the checkpoint and metrics so far are in {run_dir}. Continue with:\n"
              f"  lab-train {' '.join(hc.overrides.task)} train.resume=true hydra.run.dir={run_dir}",
              file=sys.stderr)
        sys.exit(130)
    print(f"{result.summary.get('verdict', result.summary['status'])}\nrun directory: {run_dir}")
    return result.summary


def train_main() -> None:
    try:
        check_override_keys([a for a in sys.argv[1:] if not a.startswith("-")])
        precheck(str(CONFIG_DIR), sys.argv[1:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    register_configs()
    hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(_train_app)()


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
    try:
        path = plot_compare(runs, out or Path("compare.png"), metric=metric)
    except (ValueError, OSError) as e:
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
            for p in plot_run(run, out):
                print(p)
        if (d / "multirun.yaml").is_file():   # a sweep: also its table, figures and HTML report
            for p in write_report(d).values():
                print(p)
    sys.exit(status)
