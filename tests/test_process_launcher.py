"""hydra/launcher=lab (hydra_plugins/lab_launcher): each sweep job is its own process, so a job that
fails or is SIGKILLed ends alone while the others finish; the sweep then exits 1 with one line (no
traceback); SIGTERM of the sweep stops the running jobs (they checkpoint) and exits 130.

No wall-clock limits: the tests wait for observed events (a file appears, a process ends); the
timeouts are only a safety net for a hung sweep."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import HANG_S, TINY

SAFETY_S = HANG_S
BASE = [o for o in TINY if not o.startswith("model.n_heads=")]


def sweep_cmd(sweep: Path, *overrides: str, n_jobs: int = 2) -> list[str]:
    return [sys.executable, "-m", "lab", "-m", *BASE, *overrides, "hydra/launcher=lab",
            f"hydra.launcher.n_jobs={n_jobs}", f"hydra.sweep.dir='{sweep}'"]


def summary(job_dir: Path) -> dict:
    return json.loads((job_dir / "summary.json").read_text())


def lab_sweep(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from lab.app.sweep import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=SAFETY_S)


def wait_for(condition, proc: subprocess.Popen, what: str, err: Path) -> None:
    deadline = time.monotonic() + SAFETY_S
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (exit {proc.returncode}) before {what}:\n{err.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"safety net: no {what} after {SAFETY_S} s")
        time.sleep(0.2)


def started(job_dir: Path) -> bool:
    return (job_dir / "launcher.pid").is_file() and (job_dir / "launcher.pid").read_text().strip().isdigit()


def training(job_dir: Path) -> bool:
    metrics = job_dir / "metrics.jsonl"
    return started(job_dir) and metrics.is_file() and metrics.stat().st_size > 0


def pid_of(job_dir: Path) -> int:
    return int((job_dir / "launcher.pid").read_text())


def stop_sweep(proc: subprocess.Popen) -> None:
    """Clean-up after a failed assertion: SIGTERM the sweep (it stops its jobs), SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=SAFETY_S)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_failed_job_ends_alone_and_the_sweep_exits_1(tmp_path):
    from lab.analysis.sweep import collect
    sweep = tmp_path / "sweep dir"   # a space in every job's hydra.run.dir
    # an override value with a space and a quote reaches the child intact: a compile cache path
    # (a link to the shared one, so nothing compiles twice)
    cache = tmp_path / "it's a cache"
    cache.symlink_to(os.environ["LAB_TEST_COMPILE_CACHE"], target_is_directory=True)
    # n_heads=3 does not divide d_model=16: job 1 fails its config check (exit 2)
    p = subprocess.run(sweep_cmd(sweep, "model.n_heads=2,3,4", f'train.compile_cache="{cache}"'),
                       capture_output=True, text=True, timeout=SAFETY_S)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    for n, heads in ((0, 2), (2, 4)):
        assert summary(sweep / str(n))["status"] == "completed"
        assert f"[lab launcher] job {n} (model.n_heads={heads}) exited 0" in lines
        config = yaml.safe_load((sweep / str(n) / ".hydra" / "config.yaml").read_text())
        assert config["train"]["compile_cache"] == str(cache)
        assert config["model"]["n_heads"] == heads
    assert not (sweep / "1" / "summary.json").exists()
    assert "not divisible" in (sweep / "1" / "launcher.log").read_text()

    def at(pattern: str) -> list[int]:
        """Where the launcher printed lines matching `pattern`."""
        return [i for i, l in enumerate(lines) if re.match(re.escape("[lab launcher] ") + pattern, l)]
    assert at(r"job 1 \(model.n_heads=3\) failed \(exit 2\): .*not divisible")
    ended = at(r"job \d \([^)]*\) (exited 0$|failed \()")
    assert len(ended) == 3
    # two at a time: job 2 starts once job 0 or 1 has ended
    assert at(r"job 2 \(model.n_heads=4\) started")[0] > min(at(r"job [01] \([^)]*\) (exited 0$|failed \()"))
    # the summary and the one-line error come after every job has ended
    summary_at = at(r"1 of 3 jobs failed: job 1 ")[0]
    assert summary_at > max(ended)
    assert any(l.startswith("1 of 3 jobs failed (job 1)") for l in lines[summary_at + 1:])
    # each child was a single run in its job dir, its task overrides in .hydra/overrides.yaml (written
    # by the launcher for job 1, which lab-train refused before writing any)
    for n in range(3):
        overrides = yaml.safe_load((sweep / str(n) / ".hydra" / "overrides.yaml").read_text())
        assert f"model.n_heads={n + 2}" in overrides and not any(o.startswith("hydra") for o in overrides)
    assert (sweep / "multirun.yaml").is_file()

    rows = collect(sweep)
    status = {r["job"]: r["status"] for r in rows}
    assert status["0"] == status["2"] == "completed" and status["1"].startswith("failed") and len(rows) == 3
    out = lab_sweep(sweep)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 completed, 1 failed" in out.stdout
    assert re.search(r"^  1: exit 2: .*not divisible", out.stdout, re.M), out.stdout


def test_sigkilled_job_ends_alone(tmp_path):
    sweep = tmp_path / "sweep"
    err = tmp_path / "sweep.err"
    # job 1 would train for long; it is SIGKILLed once it has logged metrics
    with open(tmp_path / "sweep.out", "w") as out, open(err, "w") as errf:
        proc = subprocess.Popen(sweep_cmd(sweep, "train.steps=60,100000,80"), stdout=out, stderr=errf)
    stopped = None
    try:
        # job 0 is held (SIGSTOP) while job 1 is killed, so it is certainly mid-run when that happens
        wait_for(lambda: started(sweep / "0"), proc, "job 0 started", err)
        stopped = pid_of(sweep / "0")
        os.kill(stopped, signal.SIGSTOP)
        assert not (sweep / "0" / "summary.json").exists()
        wait_for(lambda: training(sweep / "1"), proc, "job 1's metrics", err)
        victim = pid_of(sweep / "1")
        environ = Path(f"/proc/{victim}/environ")
        if environ.exists():
            assert b"LAB_JOB_NUM=1" in environ.read_bytes().split(b"\0")
        os.kill(victim, signal.SIGKILL)
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        rc = proc.wait(timeout=SAFETY_S)
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        stop_sweep(proc)
    stderr = err.read_text()
    assert rc == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "[lab launcher] job 1 (train.steps=100000) failed (killed by SIGKILL)" in stderr
    assert "[lab launcher] 1 of 3 jobs failed: job 1 (train.steps=100000): killed by SIGKILL" in stderr
    for n in (0, 2):
        assert summary(sweep / str(n))["status"] == "completed"
    assert not (sweep / "1" / "summary.json").exists()
    assert not (sweep / "1" / "launcher.pid").exists()

    out = lab_sweep(sweep)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 completed" in out.stdout
    assert re.search(r"^failed or unfinished jobs \(1\):\n  1: ", out.stdout, re.M), out.stdout
    status = lab_sweep("status", sweep)
    assert re.search(r"^1 .*failed .*killed by SIGKILL", status.stdout, re.M), status.stdout


def test_sigterm_stops_the_running_jobs_and_exits_130(tmp_path):
    sweep = tmp_path / "sweep"
    err = tmp_path / "sweep.err"
    with open(tmp_path / "sweep.out", "w") as out, open(err, "w") as errf:
        proc = subprocess.Popen(sweep_cmd(sweep, "train.steps=100000,100001", n_jobs=1), stdout=out, stderr=errf)
    try:
        wait_for(lambda: training(sweep / "0"), proc, "job 0's metrics", err)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=SAFETY_S)
    finally:
        stop_sweep(proc)
    stderr = err.read_text()
    assert rc == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "[lab launcher] job 0 (train.steps=100000) stopped (exit 130)" in stderr
    assert "1 running job(s) stopped, 1 not started" in stderr
    assert summary(sweep / "0")["status"].startswith("interrupted")   # it checkpointed and wrote its summary
    assert not (sweep / "1").exists()
