"""Run every experiment, then regenerate the README's table: what `make experiments` does.

The experiments are the scripts in experiments/ with a main() (experiments.report.experiment_modules),
in the order of their module-level ORDER constants; each runs in its own process, as
`python -m experiments.<name> ARGS`, and the first that fails stops the rest. A new experiment is one
script (with ORDER and a PRESET in configs/experiment/) and needs no entry here or in the Makefile.

    python -m experiments                  # every experiment at default scale, then the table
    python -m experiments --full           # any other option goes to every script (--smoke, --seeds N, --retrain)
    python -m experiments --list           # the experiments, in order
    python -m experiments --smoke          # every script end to end in seconds; the README's table is kept
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.report import experiment_modules

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    names = experiment_modules()
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return 0
    if "--list" in argv:
        print("\n".join(names))
        return 0
    try:
        for name in names:
            print(f"==> python -m experiments.{name} {' '.join(argv)}".rstrip(), flush=True)
            rc = subprocess.call([sys.executable, "-m", f"experiments.{name}", *argv], cwd=ROOT)
            if rc:
                print(f"experiments.{name} failed (exit status {rc}); the experiments after it did not run",
                      file=sys.stderr)
                return rc
        if "--smoke" in argv:   # smoke verdicts check the scripts, not the claims: keep the README's table
            print("smoke runs: experiments/README.md's table of verdicts is left as it is")
            return 0
        return subprocess.call([sys.executable, "-m", "experiments.report"], cwd=ROOT)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
