"""`lab-sweep MULTIRUN_DIR`: a multirun's table (printed, CSV, JSON), figures and self-contained HTML
report, and the commands that rerun its failed or unfinished jobs; it reads whatever has finished, so it
can be run while the sweep runs, as often as wanted.
`lab-sweep submit <lab-train overrides>`: start a sweep and return once its jobs are queued.
`lab-sweep status MULTIRUN_DIR`: queued / running / done / failed per job (lab/app/submit.py)."""
from __future__ import annotations

import argparse
import signal
import sys
import warnings
from pathlib import Path

from lab.analysis.sweep import (COMPLETED, FAILED, INCOMPLETE, SweepError, condition_table, multirun_command,
                                rerun_command, scan, text_table)
from lab.app.submit import QUEUE_WAIT_S, job_statuses, status_table, submit
from lab.core import ConfigError
from lab.plots.report import write_report


def submit_main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: lab-sweep submit <lab-train overrides ...>\n\n"
              "Start `lab-train -m <overrides>` in the background (its own session: closing this terminal does not\n"
              "stop it), wait until the jobs are queued, write submission.json in the sweep directory and return.\n"
              "e.g. lab-sweep submit train.seed=0,1,2 hydra/launcher=submitit_slurm hydra.launcher.partition=gpu",
              file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    try:
        sweep, manifest = submit(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    jobs = manifest["jobs"]
    where = {True: "queued", False: f"still being submitted after {QUEUE_WAIT_S} s"}[manifest["queued"]]
    ids = [j["scheduler_id"] for j in jobs if j["scheduler_id"]]
    print(f"{len(jobs)} job(s) {where} ({manifest['launcher']} launcher"
          + (f"; SLURM ids {ids[0]}{' .. ' + ids[-1] if len(ids) > 1 else ''}" if ids else "") + f")\n"
          f"sweep directory: {sweep}\n"
          f"follow it:       lab-sweep status {sweep}\n"
          f"collect it:      lab-sweep {sweep}   (any time; it reads what has finished)\n"
          f"its log:         {sweep / manifest['log']}")


def status_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lab-sweep status",
                                     description="Where each job of a sweep stands: queued, running, requeued, "
                                                 "completed, failed, interrupted or lost.")
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir}: no such directory", file=sys.stderr)
        sys.exit(2)
    try:
        statuses = job_statuses(args.sweep_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if not statuses:
        print(f"error: {args.sweep_dir} holds no sweep (no submission.json, multirun.yaml or job directories)",
              file=sys.stderr)
        sys.exit(2)
    counts = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    print(f"{args.sweep_dir}: {len(statuses)} jobs; " + ", ".join(f"{n} {k}" for k, n in counts.items()) + "\n")
    print(status_table(statuses))
    if any(s.state in ("failed", "interrupted", "lost", "not started") for s in statuses):
        print(f"\nlab-sweep {args.sweep_dir} lists the commands that rerun or continue them")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "submit":
        return submit_main(argv[1:])
    if argv and argv[0] == "status":
        return status_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="lab-sweep",
        description="Collect a multirun (lab-train -m ...) into one table (CSV, JSON), figures and a "
                    "self-contained HTML report; list failed jobs with the commands that rerun them.")
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR",
                        help="the multirun directory, e.g. multirun/<date>/<time> (one subdirectory per job)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="write the report here (default SWEEP_DIR/report)")
    parser.epilog = "also: lab-sweep submit <overrides> (start a sweep and return), lab-sweep status SWEEP_DIR"
    args = parser.parse_args(argv)
    if hasattr(signal, "SIGPIPE"):   # `lab-sweep ... | head` ends quietly, like other Unix tools
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sweep = scan(args.sweep_dir)
            written = write_report(args.sweep_dir, args.out, sweep=sweep)
        except (SweepError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"warning: {message}", file=sys.stderr)

    c = sweep.counts()
    print(f"{sweep.dir}: {c['jobs']} jobs, {c['seeds']} seeds; {c[COMPLETED]} completed, {c[FAILED]} failed, "
          f"{c[INCOMPLETE]} unfinished; phase change in {c['seeds_with_phase_change']}/{c['seeds_completed']} "
          "completed seeds\n")
    print(text_table(sweep))
    per_condition = condition_table(sweep)
    if per_condition:
        print("\nper condition (mean ± sample std [bootstrap 95 % CI] over seeds; k/n with its exact binomial CI):")
        print(per_condition)
    active = {s.dir.name for s in job_statuses(args.sweep_dir) if s.active}
    bad = [j for j in sweep.jobs if j.category != COMPLETED and j.name not in active]
    if active:
        print(f"\n{len(active)} job(s) still queued or running (lab-sweep status {args.sweep_dir}); "
              "run lab-sweep again to collect them")
    if bad:
        print(f"\nfailed or unfinished jobs ({len(bad)}):")
        for j in bad:
            print(f"  {j.name}: {j.error or j.status}")
        print("rerun them with:")
        for j in bad:
            print(f"  {rerun_command(j)}")
        combined = multirun_command([j for j in bad if j.category == FAILED], sweep.dir, sweep.cluster_launcher)
        if combined:
            where = " on the sweep's launcher" if sweep.cluster_launcher else ""
            print(f"or the failed ones as one multirun{where}:\n  {combined}")
    print()
    for path in written.values():
        print(path)


if __name__ == "__main__":
    main()
