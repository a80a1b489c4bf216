"""`python -m lab` is `lab-train` (its console script calls `main` here).

Until the run starts (imports, Hydra's composition), a Ctrl-C or SIGTERM ends the process at once
with one line and exit 130: raising KeyboardInterrupt inside an import can crash a C extension or be
swallowed by one, and nothing has been trained yet. `lab.app.cli` takes over once the job starts.
"""
import os
import signal
import sys


def _interrupted_during_start_up(signum, frame):
    sys.stderr.write("\ninterrupted during start-up, before training began\n")
    sys.stderr.flush()
    os._exit(130)


for _signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signum, _interrupted_during_start_up)

from lab.app.cli import train_main as main  # noqa: E402  (after the handlers, on purpose)

if __name__ == "__main__":
    main()
