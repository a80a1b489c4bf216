"""A whole `lab-train` process timed from outside, for benchmarks/bench.py and benchmarks/peers.py.

`time_lab_process` launches the command and polls the run's metrics.jsonl every 10 ms, reading only
the bytes appended since the last poll: re-reading the whole file every poll cost the measured run a
core's worth of CPU, slowing its training and its analysis alike. Standard library only (PyYAML when
the step count has to be read from the run's config.yaml).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Optional


@dataclass
class LaunchTiming:
    """Seconds from launch: to the first record with step > 0 in metrics.jsonl (the first training
    chunk, log_every steps, logged), to the record of the last step, and to the process's exit."""
    first: Optional[float]
    last: Optional[float]
    total: float
    returncode: int
    stderr: str                  # the last 2000 characters the process wrote to stderr
    last_record: Optional[dict]  # the last record of metrics.jsonl
    first_step: Optional[int] = None   # the step of the first record with step > 0 (the first chunk's length)
    steps: Optional[int] = None        # the run's last step

    @property
    def to_first_step(self) -> Optional[float]:
        """Seconds from launch to the start of the first training step: the first chunk's record, less
        that chunk's training at the rate the run then kept up to its last step (an estimate: the
        process says nothing when a step starts, and polling cannot see inside a compiled chunk)."""
        if not self.ok or not self.first_step or not self.steps or self.steps <= self.first_step:
            return None
        rate = (self.steps - self.first_step) / max(self.last - self.first, 1e-9)
        return self.first - self.first_step / rate

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.first is not None and self.last is not None

    def error(self) -> str:
        why = f"exit code {self.returncode}" if self.returncode else "no training records in metrics.jsonl"
        return f"{why}: {self.stderr[-300:].strip()}"


def time_lab_process(cmd: list[str], run_dir: str, steps: Optional[int] = None,
                     poll_s: float = 0.01, cwd: Optional[str] = None) -> LaunchTiming:
    """Run `cmd` (a lab-train command writing `run_dir`) to its exit. `steps`: the run's last step;
    None reads train.steps from <run_dir>/config.yaml once the run has written it; `cwd`: where it
    runs (`python -m lab` imports the lab found there first). stdout is
    discarded; stderr goes to a temporary file (a pipe nobody reads could fill and stall the run)."""
    metrics = os.path.join(run_dir, "metrics.jsonl")
    first = last = first_step = None
    seen, pending = 0, ""   # bytes of metrics.jsonl read so far; an unfinished last line
    last_line = None
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, cwd=cwd)
        while True:
            done = proc.poll() is not None   # read once more after the exit: the last records
            if os.path.exists(metrics) and os.path.getsize(metrics) > seen:
                with open(metrics, "rb") as f:
                    f.seek(seen)
                    chunk = f.read()
                seen += len(chunk)
                *lines, pending = (pending + chunk.decode()).split("\n")
                now = time.perf_counter() - t0
                if steps is None and os.path.exists(os.path.join(run_dir, "config.yaml")):
                    import yaml
                    with open(os.path.join(run_dir, "config.yaml")) as f:
                        steps = yaml.safe_load(f)["train"]["steps"]
                for line in lines:
                    if not line.strip():
                        continue
                    last_line = line
                    step = json.loads(line)["step"]
                    if first is None and step > 0:
                        first, first_step = now, step
                    if last is None and steps is not None and step >= steps:
                        last = now
            if done:
                break
            time.sleep(poll_s)
        total = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read()[-2000:]
    return LaunchTiming(first, last, total, proc.returncode, stderr,
                        json.loads(last_line) if last_line is not None else None, first_step, steps)
