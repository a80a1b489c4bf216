"""`python -m lab` is `lab-train` (its console script calls `main` here).

Until the run starts (imports, Hydra's composition), a Ctrl-C or SIGTERM ends the process at once
with one line and exit 130: raising KeyboardInterrupt inside an import can crash a C extension or be
swallowed by one, and nothing has been trained yet. `lab.app.cli` takes over once the job starts.

When lab-train is done, the process ends without the interpreter's teardown (`exit_now`): freeing
JAX's, orbax's and matplotlib's modules one by one took a second after the verdict was printed.
"""
import atexit
import os
import signal
import sys
import threading


def _interrupted_during_start_up(signum, frame):
    sys.stderr.write("\ninterrupted during start-up, before training began\n")
    sys.stderr.flush()
    os._exit(130)


for _signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signum, _interrupted_during_start_up)

from lab.app.cli import train_main  # noqa: E402  (after the handlers, on purpose)


def exit_now(code=0) -> None:
    """End the process with `code` (as sys.exit takes it) the quick way: atexit's handlers run (logging
    flushes and closes its files), stdout and stderr are flushed, then os._exit skips freeing every
    module. Every file the lab writes is closed or flushed by then; a thread still working (not a
    daemon) gets the ordinary exit, which waits for it."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed pipe: nothing more can be said
            pass
    os._exit(code)


def main() -> None:
    """lab-train's console script."""
    try:
        train_main()
    except SystemExit as e:
        exit_now(e.code)
    exit_now(0)


if __name__ == "__main__":
    main()
