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



class RunLoadError(ValueError):
    """A run directory cannot be loaded; the message is one line."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (Ctrl-C, SIGTERM, or a scheduler's pre-emption signal such as
    SLURM's SIGUSR2 under submitit); `signum` says which, so the caller can hand the signal on."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum
