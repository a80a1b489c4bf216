"""`lab-sweep MULTIRUN_DIR`: a multirun's table (printed, CSV, JSON), figures and self-contained HTML
report, and the commands that rerun its failed or unfinished jobs."""
from __future__ import annotations

import argparse
import signal
import sys
import warnings
from pathlib import Path

from lab.analysis.sweep import (COMPLETED, FAILED, INCOMPLETE, SweepError, condition_table, multirun_command,
                                rerun_command, scan, text_table)
from lab.plots.report import write_report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="lab-sweep",
        description="Collect a multirun (lab-train -m ...) into one table (CSV, JSON), figures and a "
                    "self-contained HTML report; list failed jobs with the commands that rerun them.")
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR",
                        help="the multirun directory, e.g. multirun/<date>/<time> (one subdirectory per job)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="write the report here (default SWEEP_DIR/report)")
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
    bad = [j for j in sweep.jobs if j.category != COMPLETED]
    if bad:
        print(f"\nfailed or unfinished jobs ({len(bad)}):")
        for j in bad:
            print(f"  {j.name}: {j.error or j.status}")
        print("rerun them with:")
        for j in bad:
            print(f"  {rerun_command(j)}")
        combined = multirun_command([j for j in bad if j.category == FAILED], sweep.dir)
        if combined:
            print(f"or the failed ones as one multirun:\n  {combined}")
    print()
    for path in written.values():
        print(path)


if __name__ == "__main__":
    main()
