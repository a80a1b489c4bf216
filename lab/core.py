"""The leaf every layer may import: the lab's error type, one-line validators and head names.
It imports nothing from `lab` and nothing heavy (no JAX), so the command-line entry points can use
it before XLA's flags are set."""
from __future__ import annotations

import math


class ConfigError(ValueError):
    """A config value the lab cannot run with; the message is one line naming the key."""


def choice(key: str, value, allowed) -> None:
    """Refuse `value` for `key` unless it is one of `allowed`."""
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def positive(key: str, value) -> None:
    """Refuse a missing, zero, negative or non-finite (NaN, inf) `value` for `key`."""
    if value is None or value <= 0:
        raise ConfigError(f"{key}={value!r} must be positive")
    if not math.isfinite(value):   # NaN passes `<= 0`; neither trains
        raise ConfigError(f"{key}={value!r} must be a finite number")


def head_name(layer: int, head: int) -> str:
    """The name of a head in summaries and tables: L<layer>H<head>, both from 0."""
    return f"L{layer}H{head}"


def first_line(e: Exception) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__



def failure_reason(e: BaseException) -> str:
    """One line for why a run failed: out of memory is named as such (XLA's RESOURCE_EXHAUSTED or
    Python's MemoryError) with the keys that shrink it; anything else is its type and first line."""
    text = str(e)
    if isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in text or "Out of memory" in text:
        return ("out of memory; lower train.batch_size, set train.microbatch, or use a smaller model "
                f"({first_line(e)[:200]})")
    return first_line(e)[:500]


class RunLoadError(ValueError):
    """A run directory cannot be loaded; the message is one line."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class AnalysisInterrupted(KeyboardInterrupt):
    """A stop signal during the analysis after a run had finished training: its checkpoint and
    summary.json are written, the plots (some or all) are not."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (Ctrl-C, SIGTERM, or a scheduler's pre-emption signal such as
    SLURM's SIGUSR2 under submitit); `signum` says which, so the caller can hand the signal on."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


# ---- stop requests (Ctrl-C, SIGTERM, SLURM's SIGUSR2) ----
# Signal handlers only count: raising KeyboardInterrupt from a handler lands wherever Python happens to be,
# inside an import, an XLA callback (where it is swallowed: "Exception ignored in ...") or a checkpoint
# write. The trainer looks at the count between chunks, where the step, the state and the records agree.
_stop_signals: list[int] = []
HARD_EXIT_AFTER = 3   # the third signal ends the process at once; the newest checkpoint on disk stays intact
_phase = ["training"]  # what a stop signal interrupts: "training" or "analysis" (summary, stages, plots)


def set_stop_phase(phase: str) -> None:
    """Say what a stop signal now interrupts: "training" (stop after the chunk, with a checkpoint) or
    "analysis" (after training: skip what is left of the stage report and the plots)."""
    _phase[0] = phase


def request_stop(signum: int, frame=None) -> None:
    """A signal handler: remember the request; the third ends the process now with exit 130."""
    import os
    import sys
    _stop_signals.append(signum)
    if _phase[0] == "analysis" and len(_stop_signals) < HARD_EXIT_AFTER:
        sys.stderr.write("\nstopping the analysis after training: summary.json is written, what is left of the "
                         "plots is skipped\n")
    elif len(_stop_signals) == 1:
        sys.stderr.write("\nstopping after the current chunk, with a checkpoint (again: skip the plots; "
                         f"{HARD_EXIT_AFTER} times: exit at once)\n")
    elif len(_stop_signals) == 2:
        sys.stderr.write("\nstopping after the current chunk; the plots will be skipped\n")
    else:
        sys.stderr.write("\nexiting at once; the newest checkpoint on disk is intact and the run continues "
                         "from it when rerun\n")
        sys.stderr.flush()
        os._exit(130)


def stop_requests() -> list[int]:
    """The signals received since the last `clear_stop_requests`, oldest first."""
    return list(_stop_signals)


def clear_stop_requests() -> None:
    _stop_signals.clear()
